"""Selection diagnostics (``p3bench.algorithms.diversity``) against brute-force ``m x m`` computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p3bench.algorithms.diversity import (
    DIVERSITY_KEYS,
    DIVERSITY_RIDGE,
    cosine_effective_rank,
    cosine_logdet,
    effective_dimension,
    kernel_effective_rank,
    mean_pairwise_cosine,
    selection_diversity,
)
from p3bench.algorithms.dpp import rbf_bandwidth
from p3bench.algorithms.dpp_kernels import RBF_BLOCKED_BANDWIDTH_SCALE
from tests.test_dpp import rbf_kernel


def unit_rows(F: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.where(norms > 0, norms, 1.0)


def brute_mean_cosine(F: np.ndarray) -> float:
    U = unit_rows(F)
    G = U @ U.T
    m = len(U)
    return float((G.sum() - np.trace(G)) / (m * (m - 1)))


def brute_logdet(F: np.ndarray, ridge: float) -> float:
    U = unit_rows(F)
    sign, value = np.linalg.slogdet(U @ U.T + ridge * np.eye(len(U)))
    assert sign > 0
    return float(value / len(U))


def brute_effective_rank(K: np.ndarray, ridge: float) -> float:
    lam = np.linalg.eigvalsh(K)
    return float(np.trace(K @ np.linalg.inv(K + ridge * np.eye(len(K))))) if lam.min() > -1e-9 else math.nan


@pytest.mark.parametrize("seed", range(10))
def test_statistics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, d = int(rng.integers(2, 80)), int(rng.integers(2, 40))  # m below and above d
    F = rng.standard_normal((m, d)) * rng.uniform(0.1, 5.0, (m, 1)) + rng.standard_normal(d)  # a common part
    if seed % 3 == 0:
        F[0] = 0.0  # a zero row stays zero
    ridge = float(rng.choice([1e-3, 0.1]))
    assert mean_pairwise_cosine(F) == pytest.approx(brute_mean_cosine(F), abs=1e-12)
    assert cosine_logdet(F, ridge=ridge) == pytest.approx(brute_logdet(F, ridge), rel=1e-9)
    U = unit_rows(F)
    assert cosine_effective_rank(F, ridge) == pytest.approx(brute_effective_rank(U @ U.T, ridge), rel=1e-8)


def test_statistics_on_known_sets() -> None:
    same = np.tile([[3.0, 4.0]], (10, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    assert cosine_effective_rank(same) == pytest.approx(10 / (10 + DIVERSITY_RIDGE))  # one direction
    basis = np.eye(6)
    assert mean_pairwise_cosine(basis) == 0.0
    assert cosine_effective_rank(basis) == pytest.approx(6 / (1 + DIVERSITY_RIDGE))
    assert cosine_logdet(basis) == pytest.approx(math.log(1 + DIVERSITY_RIDGE))
    assert cosine_logdet(same) < cosine_logdet(np.eye(10))  # a spread set has the higher log-det
    assert mean_pairwise_cosine(np.ones((1, 3))) == 0.0  # no pairs
    assert cosine_logdet(np.empty((0, 3))) == 0.0
    assert effective_dimension([1.0, 1.0, 0.0, -1e-12], ridge=1.0) == pytest.approx(1.0)


def brute_diversity(F, picked, q, candidates, seed, ridge):
    m = len(picked)
    order = sorted(candidates.tolist(), key=lambda i: (-q[i], i))
    topk = np.asarray(order[:m])
    random = np.random.default_rng(seed).choice(candidates, size=m, replace=False)
    U = unit_rows(F)
    out = {
        "overlap_topk_quality": len(set(picked.tolist()) & set(topk.tolist())) / m,
        "overlap_random_expected": m / len(candidates),
    }
    for name, idx in (("pick", picked), ("topk", topk), ("random", random)):
        out[f"mean_cosine_{name}"] = brute_mean_cosine(F[idx])
        out[f"logdet_{name}"] = brute_logdet(F[idx], ridge)
        out[f"mean_quality_{name}"] = float(np.mean(q[idx]))
    out["effective_rank"] = brute_effective_rank(U[picked] @ U[picked].T, ridge)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_selection_diversity_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, d = 150, int(rng.integers(4, 30))
    F = rng.standard_normal((n, d)) + 0.5 * rng.standard_normal(d)
    q = rng.uniform(0.0, 1.0, n)
    q[rng.choice(n, 20)] = 0.5  # ties in quality
    candidates = np.sort(rng.choice(n, size=int(rng.integers(60, n)), replace=False))
    picked = rng.choice(candidates, size=int(rng.integers(2, 50)), replace=False)
    stats = selection_diversity(F, picked, q, candidates, seed=seed)
    assert tuple(stats) == DIVERSITY_KEYS
    assert all(isinstance(v, float) for v in stats.values())
    expected = brute_diversity(F, picked, q, candidates, seed, DIVERSITY_RIDGE)
    for key in DIVERSITY_KEYS:
        assert stats[key] == pytest.approx(expected[key], rel=1e-8, abs=1e-12), key


def test_selection_diversity_reference_subsets() -> None:
    rng = np.random.default_rng(7)
    F = rng.standard_normal((100, 8))
    q = rng.uniform(0.0, 1.0, 100)
    candidates = np.arange(100)
    topk = np.argsort(-q)[:30]
    stats = selection_diversity(F, topk, q, seed=0)  # candidates default to all rows
    assert stats["overlap_topk_quality"] == 1.0
    assert stats["mean_cosine_pick"] == stats["mean_cosine_topk"]
    assert stats["logdet_pick"] == stats["logdet_topk"]
    assert stats["mean_quality_pick"] == stats["mean_quality_topk"] >= stats["mean_quality_random"]
    assert stats["overlap_random_expected"] == 0.3
    same = selection_diversity(F, topk, q, candidates, seed=0)
    other = selection_diversity(F, topk, q, candidates, seed=1)
    assert same == stats  # seeded
    assert other["mean_cosine_random"] != stats["mean_cosine_random"]
    worst = np.argsort(q)[:30]
    assert selection_diversity(F, worst, q, seed=0)["overlap_topk_quality"] == 0.0


def test_selection_diversity_errors() -> None:
    F = np.random.default_rng(8).standard_normal((20, 3))
    q = np.ones(20)
    with pytest.raises(ValueError, match="empty"):
        selection_diversity(F, [], q)
    with pytest.raises(ValueError, match="repeated"):
        selection_diversity(F, [1, 1], q)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        selection_diversity(F, [3, 20], q)
    with pytest.raises(ValueError, match="not among candidates"):
        selection_diversity(F, [1, 2], q, candidates=[2, 3, 4])
    with pytest.raises(ValueError, match=r"\(20,\)"):
        selection_diversity(F, [1, 2], np.ones(19))
    with pytest.raises(ValueError, match="NaN"):
        selection_diversity(F, [1, 2], np.r_[np.ones(19), np.nan])
    with pytest.raises(ValueError, match="integer"):
        selection_diversity(F, [1.5, 2.0], q)
    with pytest.raises(ValueError, match="ridge"):
        selection_diversity(F, [1, 2], q, ridge=0.0)


def test_kernel_effective_rank() -> None:
    rng = np.random.default_rng(9)
    F = unit_rows(rng.standard_normal((120, 6)))
    # cosine: the pick's own effective rank, at most d
    assert kernel_effective_rank(F, kernel="cosine") == pytest.approx(cosine_effective_rank(F))
    assert kernel_effective_rank(F, kernel="cosine") <= 6
    # rbf kernels: the explicit kernel's, full rank
    for kernel, scale in (("rbf", 1.0), ("rbf_blocked", RBF_BLOCKED_BANDWIDTH_SCALE)):
        h = scale * rbf_bandwidth(F)
        expected = brute_effective_rank(rbf_kernel(F, np.ones(120), 0.0, h), DIVERSITY_RIDGE)
        assert kernel_effective_rank(F, kernel=kernel) == pytest.approx(expected, rel=1e-8)
        assert kernel_effective_rank(F, kernel=kernel) > 6
    # a narrower bandwidth keeps more directions apart
    assert kernel_effective_rank(F, bandwidth=0.3) > kernel_effective_rank(F, bandwidth=1.5)
    # on a seeded sample when there are more rows than `sample`
    sampled = kernel_effective_rank(F, sample=50, seed=3)
    assert sampled == kernel_effective_rank(F, sample=50, seed=3) and sampled <= 50
    assert kernel_effective_rank(np.empty((0, 6))) == 0.0
    with pytest.raises(ValueError, match="cosine, rbf, rbf_blocked"):
        kernel_effective_rank(F, kernel="linear")
    with pytest.raises(ValueError, match="sample"):
        kernel_effective_rank(F, sample=1)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel_effective_rank(F, bandwidth=0.0)
