"""Spherical k-means, SemDeDup and SSL Prototypes (``p3bench.algorithms.clusters``) against naive
references: an O(n^2) loop for SemDeDup's ``M``, a plain sort for Prototypes, planted near-duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from p3bench.algorithms.clusters import (
    MAX_DEFAULT_CLUSTERS,
    KMeansResult,
    default_n_clusters,
    prototypes,
    semdedup,
    semdedup_at_threshold,
    semdedup_scores,
    spherical_kmeans,
)
from p3bench.errors import ConfigError, DataError

# ----------------------------------------------------------------------------------------------------------
# Data and references


def unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def blobs(rng: np.random.Generator, n: int, d: int, k: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around ``k`` random directions; returns the points and their true blob."""
    centres = unit(rng.standard_normal((k, d)))
    truth = rng.integers(0, k, n)
    X = centres[truth] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return X.astype(np.float32), truth


def naive_centroids(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    Xn = unit(X)
    C = np.stack([Xn[labels == c].sum(0) for c in range(labels.max() + 1)])
    return unit(C)


def naive_order(
    X: np.ndarray, labels: np.ndarray, centroids: np.ndarray, cluster: int, keep: str
) -> list[int]:
    """Members of ``cluster`` sorted by cosine to the centroid (farthest or nearest first; ties: index)."""
    Xn = unit(X)
    members = [i for i in range(len(X)) if labels[i] == cluster]
    cos = {i: float(Xn[i] @ centroids[cluster]) for i in members}
    sign = 1.0 if keep == "farthest" else -1.0
    return sorted(members, key=lambda i: (sign * cos[i], i))


def naive_M(X: np.ndarray, labels: np.ndarray, centroids: np.ndarray, keep: str) -> np.ndarray:
    """For every point, the max cosine to the points before it in its cluster's order; -1 for the first."""
    Xn = unit(X)
    M = np.full(len(X), -1.0)
    for c in np.unique(labels):
        order = naive_order(X, labels, centroids, c, keep)
        for pos, i in enumerate(order):
            for j in order[:pos]:
                M[i] = max(M[i], float(Xn[i] @ Xn[j]))
    return M


def planted(
    seed: int, d: int, n_base: int = 300, n_dup: int = 60, n_blobs: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_base`` distinct points in a few blobs plus 1-4 tiny perturbations of ``n_dup`` of them.
    Returns the points (shuffled), the group id of every point (its base point) and a mask of the copies."""
    rng = np.random.default_rng(seed)
    base, _ = blobs(rng, n_base, d, n_blobs, spread=1.5)
    base = unit(base)
    dup_of = rng.choice(n_base, size=n_dup, replace=False)
    rows, group, copy = list(base), list(range(n_base)), [False] * n_base
    for b in dup_of:
        for _ in range(int(rng.integers(1, 5))):
            rows.append(base[b] + 1e-3 * rng.standard_normal(d) / np.sqrt(d))
            group.append(int(b))
            copy.append(True)
    perm = rng.permutation(len(rows))
    X = np.asarray(rows, dtype=np.float32)[perm]
    return X, np.asarray(group)[perm], np.asarray(copy)[perm]


# ----------------------------------------------------------------------------------------------------------
# Spherical k-means


def test_kmeans_is_deterministic_and_spherical() -> None:
    rng = np.random.default_rng(0)
    X, _ = blobs(rng, 600, 32, 6, spread=2.0)
    a = spherical_kmeans(X, 6, seed=3)
    b = spherical_kmeans(X, 6, seed=3)
    assert isinstance(a, KMeansResult) and a.algorithm == "kmeans"
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.n_iter == b.n_iter and a.mean_cosine == b.mean_cosine
    assert a.labels.dtype == np.int64 and a.centroids.dtype == np.float32 and a.centroids.shape == (6, 32)
    assert a.n_clusters == 6 and a.sizes.sum() == 600 and (a.sizes > 0).all()
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-6)
    # Centroids are the normalised means of their members; every point is with its most similar centroid.
    np.testing.assert_allclose(a.centroids, naive_centroids(X, a.labels), atol=1e-5)
    cos = unit(X) @ a.centroids.T.astype(np.float64)
    assert (np.argmax(cos, axis=1) == a.labels).mean() == 1.0
    np.testing.assert_allclose(a.mean_cosine, cos[np.arange(600), a.labels].mean(), atol=1e-6)


def test_kmeans_recovers_separated_blobs() -> None:
    rng = np.random.default_rng(1)
    X, truth = blobs(rng, 500, 64, 5, spread=0.5)
    X = X * rng.uniform(0.1, 10.0, size=(500, 1)).astype(np.float32)  # norms do not matter
    labels = spherical_kmeans(X, 5, seed=0).labels
    # Same partition up to renaming: each true blob maps to exactly one cluster and vice versa.
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 5


def test_kmeans_minibatch_path_and_edge_sizes() -> None:
    rng = np.random.default_rng(2)
    X, _ = blobs(rng, 300, 16, 4, spread=1.0)
    a = spherical_kmeans(X, 4, seed=1, minibatch=True, batch_size=64)
    b = spherical_kmeans(X, 4, seed=1, minibatch=True, batch_size=64)
    assert a.algorithm == "minibatch"
    np.testing.assert_array_equal(a.labels, b.labels)
    one = spherical_kmeans(X, 1)
    assert (one.labels == 0).all()
    np.testing.assert_allclose(one.centroids[0], naive_centroids(X, one.labels)[0], atol=1e-5)
    each = spherical_kmeans(X[:20], 20)
    assert sorted(each.labels.tolist()) == list(range(20))
    assert spherical_kmeans(X).n_clusters == default_n_clusters(300) == 17


def test_kmeans_with_fewer_distinct_points_than_clusters() -> None:
    X = np.repeat(np.random.default_rng(0).standard_normal((5, 8)), 4, axis=0)
    cl = spherical_kmeans(X, 8)
    assert sorted(cl.sizes.tolist()) == [0, 0, 0, 4, 4, 4, 4, 4]
    assert semdedup(X, cl, 5).kept.tolist() == [0, 4, 8, 12, 16]
    assert semdedup_at_threshold(X, cl, 1e-4).kept.tolist() == [0, 4, 8, 12, 16]
    assert len(semdedup_at_threshold(X, cl, 0.0)) == 20  # epsilon = 0 removes nothing
    assert prototypes(X, cl, 5, cut="per_cluster").kept_per_cluster.max() == 1


@pytest.mark.parametrize("bad", [0, -1, 301, 2.5, True, "3", None])
def test_kmeans_bad_n_clusters_is_one_line(bad: object) -> None:
    X = np.random.default_rng(0).standard_normal((300, 8))
    if bad is None:  # None is the default rule, not an error
        assert spherical_kmeans(X, bad).n_clusters == 17
        return
    with pytest.raises(ConfigError) as err:
        spherical_kmeans(X, bad)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and f"n_clusters={bad!r}" in msg and "300" in msg


def test_default_n_clusters_rule() -> None:
    assert default_n_clusters(1) == 1
    assert default_n_clusters(3) == 2
    assert default_n_clusters(100) == 10
    assert default_n_clusters(100_000) == 316
    assert default_n_clusters(364_000_000) == MAX_DEFAULT_CLUSTERS == 10_000
    for bad in (0, -5, 2.0, True):
        with pytest.raises(ConfigError):
            default_n_clusters(bad)  # type: ignore[arg-type]


def test_bad_embeddings_are_data_errors() -> None:
    X = np.random.default_rng(0).standard_normal((10, 4))
    X[3] = 0.0
    with pytest.raises(DataError, match="row 3"):
        spherical_kmeans(X, 2)
    X[3] = np.nan
    with pytest.raises(DataError, match="row 3"):
        prototypes(X, np.zeros(10, dtype=int), 5)
    with pytest.raises(DataError):
        semdedup(np.ones(5), np.zeros(5, dtype=int), 2)


# ----------------------------------------------------------------------------------------------------------
# SemDeDup: M against the naive reference


@pytest.mark.parametrize("keep", ["farthest", "nearest"])
@pytest.mark.parametrize("seed", range(4))
def test_semdedup_M_matches_naive(keep: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, _ = blobs(rng, 150, 24, 4, spread=2.0)
    X[rng.integers(0, 150, 10)] = X[rng.integers(0, 150, 10)]  # some exact duplicates
    cl = spherical_kmeans(X, 5, seed=seed)
    ref = naive_M(X, cl.labels, cl.centroids.astype(np.float64), keep)
    for block_size in (1, 2, 3, 7, 64, 4096):
        s = semdedup_scores(X, cl, keep=keep, block_size=block_size)
        np.testing.assert_allclose(s.max_similarity, ref, atol=2e-6)
        np.testing.assert_array_equal(s.scores, -s.max_similarity)
        assert s.keep == keep
    # rank is the position in the cluster's order; rank 0 has no earlier point (M = -1)
    for c in range(cl.n_clusters):
        order = naive_order(X, cl.labels, cl.centroids.astype(np.float64), c, keep)
        assert s.rank[order].tolist() == list(range(len(order)))
    assert (s.max_similarity[s.rank == 0] == -1.0).all()


def test_semdedup_accepts_label_array() -> None:
    rng = np.random.default_rng(5)
    X, _ = blobs(rng, 120, 16, 3, spread=1.5)
    cl = spherical_kmeans(X, 3, seed=0)
    a = semdedup_scores(X, cl)
    b = semdedup_scores(X, cl.labels.tolist())
    np.testing.assert_allclose(a.max_similarity, b.max_similarity, atol=1e-6)
    ref = naive_M(X, cl.labels, naive_centroids(X, cl.labels), "farthest")
    np.testing.assert_allclose(b.max_similarity, ref, atol=2e-6)


def test_kmeans_result_from_arrays() -> None:
    rng = np.random.default_rng(6)
    X, _ = blobs(rng, 100, 8, 3, spread=1.5)
    cl = spherical_kmeans(X, 3, seed=0)
    back = KMeansResult.from_arrays(cl.labels.tolist(), cl.centroids)
    np.testing.assert_array_equal(back.labels, cl.labels)
    assert back.n_clusters == 3 and back.n_iter == 0 and np.isnan(back.mean_cosine)
    np.testing.assert_array_equal(semdedup(X, back, 60).kept, semdedup(X, cl, 60).kept)
    with pytest.raises(ConfigError, match="label"):
        KMeansResult.from_arrays(cl.labels + 1, cl.centroids)


def test_semdedup_singleton_clusters_keep_everything() -> None:
    X = np.random.default_rng(0).standard_normal((12, 5))
    s = semdedup_scores(X, np.arange(12))
    assert (s.max_similarity == -1.0).all() and (s.rank == 0).all()
    assert semdedup_at_threshold(X, np.arange(12), 1.0).kept.tolist() == list(range(12))


# ----------------------------------------------------------------------------------------------------------
# SemDeDup: planted near-duplicates


@pytest.mark.parametrize(("seed", "d"), [(0, 64), (1, 128), (2, 384)])
def test_semdedup_finds_planted_duplicates(seed: int, d: int) -> None:
    X, group, copy = planted(seed, d)
    cl = spherical_kmeans(X, 4, seed=seed)
    n_groups = len(np.unique(group))
    assert n_groups == 300 and copy.sum() >= 60
    dup_groups = np.unique(group[copy])

    def check(mask: np.ndarray) -> None:
        kept_per_group = np.bincount(group[mask], minlength=300)
        assert (kept_per_group == 1).mean() >= 0.95
        removed = ~mask
        # every removed point is a member of a duplicated group, and the copies are (nearly) all removed
        assert np.isin(group[removed], dup_groups).all()
        assert removed.sum() >= 0.95 * copy.sum()

    for keep in ("farthest", "nearest"):
        res = semdedup(X, cl, n_groups, keep=keep)
        assert len(res) == n_groups
        check(res.mask)
        # the removed copies sit far above the threshold the budget chose (the largest kept M)
        assert res.threshold < 0.99 < res.max_similarity[~res.mask].min()
        check(semdedup_at_threshold(X, cl, 0.01, keep=keep).mask)


def test_keep_farthest_or_nearest_member() -> None:
    rng = np.random.default_rng(7)
    d = 16
    X = unit(rng.standard_normal((40, d)) + 3.0 * unit(rng.standard_normal((1, d))))
    labels = np.zeros(len(X), dtype=int)
    centroid = naive_centroids(X, labels)[0]
    # a near-duplicate of point 0, moved slightly towards (index 40) and away from (index 41) the centroid
    near = unit((X[0] + 2e-3 * (centroid - X[0]))[None])[0]
    far = unit((X[0] - 2e-3 * (centroid - X[0]))[None])[0]
    Y = np.vstack([X[1:], near, far])  # the pair is the last two rows
    labels = np.zeros(len(Y), dtype=int)
    c = naive_centroids(Y, labels)[0]
    i_near, i_far = len(Y) - 2, len(Y) - 1
    assert Y[i_near] @ c > Y[i_far] @ c
    for keep, kept, dropped in (("farthest", i_far, i_near), ("nearest", i_near, i_far)):
        res = semdedup_at_threshold(Y, labels, 0.001, keep=keep)
        assert kept in res.kept and dropped not in res.kept
        assert len(res) == len(Y) - 1
        assert semdedup(Y, labels, len(Y) - 1, keep=keep).kept.tolist() == res.kept.tolist()


# ----------------------------------------------------------------------------------------------------------
# SemDeDup: budgets and thresholds


def test_semdedup_budget_is_exact_and_threshold_is_consistent() -> None:
    rng = np.random.default_rng(3)
    X, _ = blobs(rng, 160, 12, 3, spread=2.0)
    X[100:130] = X[0:30]  # exact duplicates: ties at M = 1
    s = semdedup_scores(X, spherical_kmeans(X, 4, seed=0))
    M = s.max_similarity
    for budget in range(161):
        res = s.select(budget)
        assert len(res) == budget and np.all(np.diff(res.kept) > 0)
        mask = res.mask
        if budget > 0:
            assert M[mask].max() == res.threshold
            assert res.epsilon == 1.0 - res.threshold
        if budget < 160:
            assert M[~mask].min() >= res.threshold
        assert res.n_tied_removed == int(np.sum(M[~mask] == res.threshold))
        assert s.kept_at(res.threshold) == budget + res.n_tied_removed
    assert s.select(0).threshold == -np.inf
    # ties at M = 1 are broken towards the earlier position in the cluster order
    res = s.select(140)
    tied = np.flatnonzero(M == 1.0)
    kept_tied, dropped_tied = tied[np.isin(tied, res.kept)], tied[~np.isin(tied, res.kept)]
    if kept_tied.size and dropped_tied.size:
        assert s.rank[kept_tied].max() <= s.rank[dropped_tied].min()


def test_semdedup_kept_is_monotone_in_threshold() -> None:
    rng = np.random.default_rng(4)
    X, _ = blobs(rng, 200, 16, 4, spread=1.0)
    cl = spherical_kmeans(X, 4, seed=0)
    s = semdedup_scores(X, cl)
    ts = np.linspace(-1.0, 1.0, 101)
    kept = [s.kept_at(t) for t in ts]
    assert all(a <= b for a, b in zip(kept, kept[1:], strict=False)) and kept[-1] == 200
    eps_kept = [len(s.select_epsilon(e)) for e in np.linspace(0.0, 2.0, 41)]
    assert all(a >= b for a, b in zip(eps_kept, eps_kept[1:], strict=False))
    for e in (0.0, 0.05, 0.2, 0.5):
        res = semdedup_at_threshold(X, cl, e)
        np.testing.assert_array_equal(res.kept, np.flatnonzero(s.max_similarity <= 1.0 - e))
        assert res.threshold == 1.0 - e and res.n_tied_removed == 0
        # the budget form at that count keeps the same points
        assert semdedup(X, cl, len(res)).kept.tolist() == res.kept.tolist()


def test_semdedup_rejects_bad_arguments() -> None:
    X = np.random.default_rng(0).standard_normal((10, 4))
    labels = np.zeros(10, dtype=int)
    for call in (
        lambda: semdedup(X, labels, 11),
        lambda: semdedup(X, labels, -1),
        lambda: semdedup(X, labels, 2.0),  # type: ignore[arg-type]
        lambda: semdedup(X, labels, 3, keep="random"),
        lambda: semdedup(X, labels, 3, block_size=0),
        lambda: semdedup_at_threshold(X, labels, -0.1),
        lambda: semdedup_at_threshold(X, labels, float("nan")),
        lambda: semdedup(X, labels[:5], 3),
        lambda: semdedup(X, labels - 1, 3),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# Prototypes


def own_similarity(X: np.ndarray, cl: KMeansResult) -> np.ndarray:
    return np.einsum("ij,ij->i", unit(X), cl.centroids[cl.labels].astype(np.float64))


@pytest.mark.parametrize("seed", range(3))
def test_prototypes_global_keeps_the_farthest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, _ = blobs(rng, 400, 32, 5, spread=2.0)
    cl = spherical_kmeans(X, 6, seed=seed)
    sim = own_similarity(X, cl)
    for budget in (0, 1, 37, 200, 399, 400):
        res = prototypes(X, cl, budget)
        assert len(res) == budget and res.cut == "global"
        np.testing.assert_allclose(res.similarity, sim, atol=1e-6)
        np.testing.assert_array_equal(res.scores, -res.similarity)
        assert sorted(res.kept.tolist()) == sorted(np.argsort(sim, kind="stable")[:budget].tolist())
        assert res.kept_per_cluster.sum() == budget
        np.testing.assert_array_equal(res.kept_per_cluster, np.bincount(cl.labels[res.kept], minlength=6))


@pytest.mark.parametrize("seed", range(3))
def test_prototypes_per_cluster_is_proportional(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, _ = blobs(rng, 401, 16, 7, spread=1.5)
    cl = spherical_kmeans(X, 7, seed=seed)
    sizes = cl.sizes
    sim = own_similarity(X, cl)
    for budget in (0, 1, 13, 100, 250, 400, 401):
        res = prototypes(X, cl, budget, cut="per_cluster")
        assert len(res) == budget and res.kept_per_cluster.sum() == budget
        share = budget * sizes / sizes.sum()
        assert np.all(np.abs(res.kept_per_cluster - share) < 1.0)
        mask = np.zeros(len(X), dtype=bool)
        mask[res.kept] = True
        for c in range(cl.n_clusters):
            inside = cl.labels == c
            if mask[inside].any() and (~mask[inside]).any():
                assert sim[inside & mask].max() <= sim[inside & ~mask].min() + 1e-9


def test_prototypes_one_cluster_cuts_agree_and_bad_cut() -> None:
    rng = np.random.default_rng(9)
    X, _ = blobs(rng, 50, 8, 1, spread=1.0)
    labels = np.zeros(50, dtype=int)
    a = prototypes(X, labels, 20)
    b = prototypes(X, labels, 20, cut="per_cluster")
    np.testing.assert_array_equal(a.kept, b.kept)
    with pytest.raises(ConfigError, match="cut"):
        prototypes(X, labels, 20, cut="local")
    with pytest.raises(ConfigError, match="budget=51"):
        prototypes(X, labels, 51)
