"""DPP greedy MAP inference (``p3bench.algorithms.dpp``) against a brute-force greedy that evaluates
``slogdet`` of the kernel restricted to picked + candidate for every candidate at every step."""

from __future__ import annotations

import numpy as np
import pytest

from p3bench.algorithms.dpp import (
    DPPResult,
    dpp_select,
    greedy_map,
    greedy_map_lowrank,
    log_det,
    rbf_bandwidth,
)

SEEDS = range(30)


# ----------------------------------------------------------------------------------------------------------
# Reference and kernels


def naive_greedy(L: np.ndarray, k: int, forced: list[int] | tuple[int, ...] = ()) -> list[int]:
    """Greedy MAP by brute force: at each step the candidate maximising log det(L[S + i, S + i]).
    Ties (exact): the lowest index."""
    picked = list(forced)
    out: list[int] = []
    n = L.shape[0]
    for _ in range(k):
        cand = np.setdiff1d(np.arange(n), picked)
        idx = np.concatenate([np.tile(np.asarray(picked, dtype=int), (cand.size, 1)), cand[:, None]], axis=1)
        sign, value = np.linalg.slogdet(L[idx[:, :, None], idx[:, None, :]])
        value = np.where(sign > 0, value, -np.inf)
        j = int(cand[np.argmax(value)])
        picked.append(j)
        out.append(j)
    return out


def unit(F: np.ndarray) -> np.ndarray:
    return F / np.linalg.norm(F, axis=1, keepdims=True)


def lowrank_kernel(F: np.ndarray, q: np.ndarray, ridge: float) -> np.ndarray:
    return q[:, None] * (F @ F.T + ridge * np.eye(len(F))) * q[None, :]


def rbf_kernel(F: np.ndarray, q: np.ndarray, ridge: float, h: float) -> np.ndarray:
    d2 = ((F[:, None, :] - F[None, :, :]) ** 2).sum(-1)
    return q[:, None] * (np.exp(-d2 / (2 * h**2)) + ridge * np.eye(len(F))) * q[None, :]


def random_psd(rng: np.random.Generator, n: int) -> np.ndarray:
    X = rng.standard_normal((n, n + int(rng.integers(0, 5))))
    return X @ X.T / X.shape[1]


def naive_gains(L: np.ndarray, picks: list[int], forced: list[int] | tuple[int, ...] = ()) -> np.ndarray:
    sets = [list(forced) + picks[:i] for i in range(len(picks) + 1)]
    return np.exp(np.diff([log_det(L, s) for s in sets]))


# ----------------------------------------------------------------------------------------------------------
# Same selection as the brute-force greedy


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_map_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    k = int(rng.integers(1, min(n, 12) + 1))
    L = random_psd(rng, n)
    res = greedy_map(L, k)
    expected = naive_greedy(L, k)
    assert res.indices.tolist() == expected
    assert not res.stopped_early
    np.testing.assert_allclose(res.gains, naive_gains(L, expected), rtol=1e-8)
    assert res.log_det == pytest.approx(log_det(L, res.indices), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_lowrank_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(10, 150))
    d = int(rng.integers(2, 20))
    F = rng.standard_normal((n, d))
    q = rng.uniform(0.3, 1.5, n)
    block = int(rng.choice([1, 3, 64]))
    # ridge > 0: beyond the rank of F too
    ridge = float(rng.choice([1e-3, 0.05]))
    k = int(min(n, d + rng.integers(1, 9)))
    L = lowrank_kernel(F, q, ridge)
    res = greedy_map_lowrank(F, k, quality=q, ridge=ridge, block=block)
    expected = naive_greedy(L, k)
    assert res.indices.tolist() == expected
    assert greedy_map(L, k).indices.tolist() == expected
    np.testing.assert_allclose(res.gains, naive_gains(L, expected), rtol=1e-7)
    # ridge = 0: up to the rank
    k0 = int(rng.integers(1, d + 1))
    L0 = lowrank_kernel(F, q, 0.0)
    res0 = greedy_map_lowrank(F, k0, quality=q, ridge=0.0, block=block)
    assert res0.indices.tolist() == naive_greedy(L0, k0)
    assert not res0.stopped_early


@pytest.mark.parametrize("seed", range(4))
def test_lowrank_lazy_window_matches_explicit(seed: int) -> None:
    """Large enough N for the lazy window and blocked updates to matter; any block size, same picks."""
    rng = np.random.default_rng(200 + seed)
    n, d, k = 2500, [8, 24, 48, 64][seed], 160
    F = unit(rng.standard_normal((n, d)))
    q = 1.0 - rng.uniform(0.0, 0.5, n)
    for ridge in (1e-3, 0.0):
        explicit = greedy_map(lowrank_kernel(F, q, ridge), k)
        for block in (1, 16, 64):
            res = greedy_map_lowrank(F, k, quality=q, ridge=ridge, block=block)
            assert res.indices.tolist() == explicit.indices.tolist()
            assert res.stopped_early == explicit.stopped_early == (ridge == 0.0 and k > d)
            np.testing.assert_allclose(res.gains, explicit.gains, rtol=1e-9, atol=1e-12)
    # many preselected items (more than a block, possibly more than the rank)
    P = unit(rng.standard_normal((100, d)))
    Z, qz = np.concatenate([F, P]), np.concatenate([q, np.ones(100)])
    explicit = greedy_map(lowrank_kernel(Z, qz, 1e-3), k, preselected=range(n, n + 100))
    for block in (16, 64):
        res = greedy_map_lowrank(F, k, quality=q, ridge=1e-3, preselected_features=P, block=block)
        assert res.indices.tolist() == explicit.indices.tolist()
        np.testing.assert_allclose(res.gains, explicit.gains, rtol=1e-9, atol=1e-12)


def test_exact_ties_take_the_lowest_index() -> None:
    """One-hot features in 10 classes, equal quality: items of a class tie exactly at every step (all the
    arithmetic is exact), so the greedy takes the lowest index each time: 0, 1, ..., 9 (one per class),
    then 10, ..., 19 (second members, equal ridge-driven gains), and so on."""
    n, classes, k = 2000, 10, 30
    F = np.eye(classes)[np.arange(n) % classes]
    for block in (1, 64):
        res = greedy_map_lowrank(F, k, ridge=1e-3, block=block)
        assert res.indices.tolist() == list(range(k))
    assert greedy_map(lowrank_kernel(F[:200], np.ones(200), 1e-3), k).indices.tolist() == list(range(k))
    assert greedy_map(np.diag([1.0, 2.0, 2.0, 1.0, 2.0]), 5).indices.tolist() == [1, 2, 4, 0, 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_rbf_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(10, 250))
    d = int(rng.integers(3, 10))
    k = int(rng.integers(1, min(n, 12) + 1))
    F = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, (n, 1))  # normalised inside
    q = rng.uniform(0.5, 1.0, n)
    ridge = float(rng.choice([0.0, 1e-3]))
    h = None if seed % 2 else float(rng.uniform(0.5, 2.0))
    res = dpp_select(F, k, quality=q, kernel="rbf", ridge=ridge, bandwidth=h)
    hh = rbf_bandwidth(unit(F)) if h is None else h
    L = rbf_kernel(unit(F), q, ridge, hh)
    expected = naive_greedy(L, k)
    assert res.indices.tolist() == expected
    np.testing.assert_allclose(res.gains, naive_gains(L, expected), rtol=1e-7)


@pytest.mark.parametrize("seed", range(10))
def test_dpp_select_cosine_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    n, d = int(rng.integers(20, 120)), int(rng.integers(2, 12))
    F = rng.standard_normal((n, d)) * rng.uniform(0.1, 5.0, (n, 1))  # normalised inside
    q = rng.uniform(0.5, 1.0, n)
    k = int(min(n, d + 6))
    res = dpp_select(F, k, quality=q, ridge=1e-3)
    assert res.indices.tolist() == naive_greedy(lowrank_kernel(unit(F), q, 1e-3), k)
    assert not res.stopped_early


def test_rbf_bandwidth_is_the_median_pairwise_distance() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    dist = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))[np.triu_indices(50, k=1)]
    assert rbf_bandwidth(X) == pytest.approx(np.median(dist))
    big = rng.standard_normal((3000, 4))
    assert rbf_bandwidth(big) == rbf_bandwidth(big)  # seeded sample
    assert rbf_bandwidth(np.ones((5, 3))) == 1.0  # all identical: fallback


# ----------------------------------------------------------------------------------------------------------
# Conditioning on preselected items


@pytest.mark.parametrize("seed", range(10))
def test_preselected_is_exact_conditioning(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(20, 120))
    L = random_psd(rng, n)
    pre = rng.choice(n, size=int(rng.integers(1, 6)), replace=False).tolist()
    k = int(rng.integers(1, 10))
    res = greedy_map(L, k, preselected=pre)
    # greedy on the full kernel with the forced items first
    assert res.indices.tolist() == naive_greedy(L, k, forced=pre)
    assert not set(res.indices.tolist()) & set(pre)
    # greedy on the Schur complement (the conditional DPP's kernel)
    rest = np.setdiff1d(np.arange(n), pre)
    schur = L[np.ix_(rest, rest)] - L[np.ix_(rest, pre)] @ np.linalg.solve(
        L[np.ix_(pre, pre)], L[np.ix_(pre, rest)]
    )
    cond = greedy_map(schur, k)
    assert rest[cond.indices].tolist() == res.indices.tolist()
    np.testing.assert_allclose(cond.gains, res.gains, rtol=1e-8)
    assert res.log_det == pytest.approx(log_det(L, pre + res.indices.tolist()) - log_det(L, pre))
    # a repeated forced item conditions nothing more
    assert greedy_map(L, k, preselected=pre + pre[:1]).indices.tolist() == res.indices.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_preselected_features(seed: int) -> None:
    rng = np.random.default_rng(600 + seed)
    n, m, d = int(rng.integers(30, 120)), int(rng.integers(1, 5)), int(rng.integers(3, 12))
    F, P = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    q, qp = rng.uniform(0.5, 1.0, n), rng.uniform(0.5, 1.0, m)
    forced = list(range(n, n + m))
    k = int(min(n, d + 4))
    # low-rank: candidates + forced rows in one explicit kernel
    Z, qz = np.concatenate([F, P]), np.concatenate([q, qp])
    res = greedy_map_lowrank(F, k, quality=q, ridge=1e-2, preselected_features=P, preselected_quality=qp)
    assert res.indices.tolist() == naive_greedy(lowrank_kernel(Z, qz, 1e-2), k, forced=forced)
    # the preselected items' quality cannot change the selection
    res1 = greedy_map_lowrank(F, k, quality=q, ridge=1e-2, preselected_features=P)
    assert res1.indices.tolist() == res.indices.tolist()
    np.testing.assert_allclose(res1.gains, res.gains, rtol=1e-9)
    # entry point, both kernels
    Zu = unit(Z)
    cos = dpp_select(F, k, quality=q, ridge=1e-3, preselected_features=P, preselected_quality=qp)
    assert cos.indices.tolist() == naive_greedy(lowrank_kernel(Zu, qz, 1e-3), k, forced=forced)
    rbf = dpp_select(
        F, min(k, 8), quality=q, kernel="rbf", bandwidth=1.0, preselected_features=P, preselected_quality=qp
    )
    assert rbf.indices.tolist() == naive_greedy(rbf_kernel(Zu, qz, 1e-3, 1.0), min(k, 8), forced=forced)


# ----------------------------------------------------------------------------------------------------------
# Quality of the selection, budgets beyond the rank, near-duplicates


def test_greedy_log_det_beats_random_subsets() -> None:
    rng = np.random.default_rng(7)
    n, d, k = 200, 32, 15
    F = unit(rng.standard_normal((n, d)))
    q = rng.uniform(0.5, 1.0, n)
    L = lowrank_kernel(F, q, 1e-3)
    res = dpp_select(F, k, quality=q)
    greedy = log_det(L, res.indices)
    assert greedy == pytest.approx(res.log_det, rel=1e-9)
    random = [log_det(L, rng.choice(n, size=k, replace=False)) for _ in range(200)]
    assert np.mean(greedy > np.asarray(random)) >= 0.95


def test_budget_beyond_rank() -> None:
    rng = np.random.default_rng(8)
    n, d, k = 300, 6, 40
    F = rng.standard_normal((n, d))
    q = rng.uniform(0.5, 1.0, n)
    Fu = unit(F)
    # ridge = 0: stops at the rank, explicit and low-rank alike
    lr = greedy_map_lowrank(Fu, k, quality=q, ridge=0.0)
    ex = greedy_map(lowrank_kernel(Fu, q, 0.0), k)
    assert lr.stopped_early and ex.stopped_early and len(lr) == len(ex) == d
    assert lr.indices.tolist() == ex.indices.tolist()
    sel0 = dpp_select(F, k, quality=q, ridge=0.0)
    assert sel0.stopped_early and sel0.indices.tolist() == lr.indices.tolist()
    # ridge fill: one greedy on the ridged kernel meets the budget
    ridge = dpp_select(F, k, quality=q, ridge=1e-3)
    assert len(ridge) == k and not ridge.stopped_early
    assert len(set(ridge.indices.tolist())) == k
    assert ridge.indices.tolist() == greedy_map(lowrank_kernel(Fu, q, 1e-3), k).indices.tolist()
    # restart: rerun on what is left after each early stop, without the ridge
    rs = dpp_select(F, k, quality=q, fill="restart")
    assert len(rs) == k and not rs.stopped_early and len(set(rs.indices.tolist())) == k
    assert rs.indices[:d].tolist() == lr.indices.tolist()
    rest = np.setdiff1d(np.arange(n), lr.indices)
    second = greedy_map_lowrank(Fu[rest], k - d, quality=q[rest], ridge=0.0)
    assert rs.indices[d : 2 * d].tolist() == rest[second.indices].tolist()
    assert rs.n_fill == k - d
    rs_rbf = dpp_select(F, k, quality=q, kernel="rbf", fill="restart")
    assert len(set(rs_rbf.indices.tolist())) == k


def test_rank_exhausted_fill_sorts_by_quality() -> None:
    rng = np.random.default_rng(9)
    n, k = 50, 20
    q = rng.uniform(0.5, 1.0, n)
    # no similarity at all: L = ridge diag(q^2), the greedy takes the best quality first (exact)
    res = greedy_map_lowrank(np.zeros((n, 4)), k, quality=q, ridge=1e-3)
    assert res.indices.tolist() == np.argsort(-q, kind="stable")[:k].tolist()
    assert res.n_fill == k and not res.stopped_early
    np.testing.assert_allclose(res.gains, 1e-3 * q[res.indices] ** 2)
    assert res.indices.tolist() == greedy_map(1e-3 * np.diag(q**2), k).indices.tolist()
    # ridge = 0 and nothing to pick: stops at once
    empty = greedy_map_lowrank(np.zeros((n, 4)), k, quality=q, ridge=0.0)
    assert len(empty) == 0 and empty.stopped_early


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
def test_near_duplicates_rarely_picked_together(kernel: str) -> None:
    collisions = 0
    for seed in range(5):
        rng = np.random.default_rng(1000 + seed)
        n_base, copies, d = 25, 4, 64
        base = unit(rng.standard_normal((n_base, d)))
        F = np.repeat(base, copies, axis=0) + 1e-3 * rng.standard_normal((n_base * copies, d))
        cluster = np.repeat(np.arange(n_base), copies)
        perm = rng.permutation(len(F))
        F, cluster = F[perm], cluster[perm]
        q = rng.uniform(0.5, 1.0, len(F))
        res = dpp_select(F, n_base, quality=q, kernel=kernel)
        collisions += n_base - np.unique(cluster[res.indices]).size
    assert collisions <= 1


# ----------------------------------------------------------------------------------------------------------
# Results and errors


def test_result_shapes_and_empty_budget() -> None:
    rng = np.random.default_rng(10)
    F = rng.standard_normal((30, 5))
    res = dpp_select(F, 0)
    assert isinstance(res, DPPResult) and len(res) == 0 and not res.stopped_early
    assert res.log_det == 0.0
    res = dpp_select(F, 5)
    assert res.indices.dtype == np.int64 and res.gains.dtype == np.float64
    assert np.all(np.diff(res.gains) <= 1e-12)  # gains of a greedy run never increase
    assert log_det(np.eye(3), []) == 0.0
    assert log_det(np.zeros((3, 3)), [0, 1]) == -np.inf


def test_errors() -> None:
    rng = np.random.default_rng(11)
    F = rng.standard_normal((20, 4))
    with pytest.raises(ValueError, match=r"k=21.*\b20\b"):
        dpp_select(F, 21)
    with pytest.raises(ValueError, match="negative"):
        dpp_select(F, -1)
    with pytest.raises(ValueError, match="cosine, rbf"):
        dpp_select(F, 3, kernel="linear")
    with pytest.raises(ValueError, match="ridge, restart"):
        dpp_select(F, 3, fill="pad")
    with pytest.raises(ValueError, match="> 0"):
        dpp_select(F, 3, quality=np.r_[np.ones(19), 0.0])
    with pytest.raises(ValueError, match="> 0"):
        dpp_select(F, 3, quality=-np.ones(20))
    with pytest.raises(ValueError, match=r"\(20,\)"):
        dpp_select(F, 3, quality=np.ones(19))
    with pytest.raises(ValueError, match="ridge"):
        dpp_select(F, 3, ridge=-1e-3)
    with pytest.raises(ValueError, match="bandwidth"):
        dpp_select(F, 3, kernel="rbf", bandwidth=0.0)
    with pytest.raises(ValueError, match="columns"):
        dpp_select(F, 3, preselected_features=np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        dpp_select(np.full((3, 2), np.nan), 1)
    with pytest.raises(ValueError, match="square"):
        greedy_map(np.ones((3, 4)), 1)
    with pytest.raises(ValueError, match=r"k=3.*\(2\)"):
        greedy_map(np.eye(4), 3, preselected=[0, 1])
    with pytest.raises(ValueError, match="indices"):
        greedy_map(np.eye(4), 1, preselected=[4])
    with pytest.raises(ValueError, match="preselected_quality"):
        greedy_map_lowrank(F, 2, preselected_features=np.ones((2, 4)), preselected_quality=np.ones(3))
