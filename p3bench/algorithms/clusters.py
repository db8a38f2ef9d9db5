"""Clustering-based coverage samplers on unit-norm embeddings: SemDeDup and SSL Prototypes.

Both samplers are the cluster-based coverage baselines of Sachdeva et al., "How to Train Data-Efficient
LLMs" (arXiv 2402.09668, App. B.3 and B.4). There they share one k-means clustering (10,000 clusters of
364M Sentence-T5-Base embeddings); here the same :class:`KMeansResult` is passed to both.

Entry points
------------
- :func:`spherical_kmeans`: k-means on L2-normalised vectors (scikit-learn), unit-norm centroids, labels
  refined so that every point belongs to its most cosine-similar centroid, or the spherical Lloyd
  iterations of :func:`lloyd_kmeans`, which give the same clustering on any number of processes.
  :func:`default_n_clusters` is the default number of clusters. Both live in
  :mod:`p3bench.algorithms.kmeans` and are re-exported here.
- :func:`semdedup_scores`, :func:`semdedup`, :func:`semdedup_at_threshold`: SemDeDup (Abbas et al.,
  "SemDeDup: Data-efficient learning at web-scale through semantic deduplication", arXiv 2303.09540).
- :func:`prototypes`: SSL Prototypes (Sorscher et al., "Beyond neural scaling laws: beating power law
  scaling via data pruning", arXiv 2206.14486).

SemDeDup
--------
Within each cluster the points are put in an order by their cosine similarity to the cluster centroid:
``keep="farthest"`` (default) puts the farthest point first, ``keep="nearest"`` the nearest first (ties:
the lower index first). Each point gets::

    M_i = max { cos(x_i, x_j) : j before i in the order of i's cluster }     (M_i = -1 for the first point)

A point is removed at threshold ``t`` when ``M_i > t``, i.e. when it is a near-duplicate (cosine above
``t``) of a point earlier in the order. Thresholding at ``t = 1 - epsilon`` is exactly what the SemDeDup
reference procedure does (the upper triangle of the ordered within-cluster similarity matrix, maximum over
each column, removal when above ``1 - epsilon``): of each group of mutual near-duplicates, only the first
member in the order survives. Within a group, ``keep="farthest"`` therefore keeps the member farthest from
the centroid and ``keep="nearest"`` the nearest one.

- Which member to keep. Abbas et al. (arXiv 2303.09540, Sec. 3 and their released code's default) keep
  the point with the *lowest* cosine similarity to the centroid (farthest; the default here). Sachdeva et
  al. (arXiv 2402.09668, Sec. 2.1) describe SemDeDup as preferring "points close to the centroid", which is
  ``keep="nearest"``. Neither paper reports an ablation that would settle this, so both are offered.
- Budget. The SemDeDup paper fixes ``epsilon`` and keeps whatever survives (:func:`semdedup_at_threshold`).
  Sachdeva et al. sample at a fixed rate and do not report ``epsilon``. Since the number kept,
  ``kept(t) = #{i : M_i <= t}``, is non-decreasing in ``t``, :func:`semdedup` keeps exactly ``budget``
  points: the ``budget`` smallest ``M`` (ties: the lower position in the cluster order, then the lower
  index) and reports the threshold ``t`` (the largest kept ``M``) and ``epsilon = 1 - t``.
- Score. Sachdeva et al. (Fig. 9) plot "negated maximum cosine similarity of a datapoint to all other
  datapoints in its respective cluster". The score exposed here is ``-M_i``, the negated maximum over the
  points *before* ``i`` in the order: this is the quantity the selection thresholds (a maximum over *all*
  other points would give both members of a duplicate pair the same score and could not say which one to
  keep).
- Cost. ``M`` is computed cluster by cluster in square tiles of ``block_size`` rows, so no cluster needs
  its full ``n_c x n_c`` similarity matrix in memory; the work is ``sum_c n_c^2 d / 2``.

SSL Prototypes
--------------
The score of a point is the negated cosine similarity to its own cluster centroid; :func:`prototypes`
keeps the ``budget`` points with the highest score (farthest from their centroid) and so "removes the points
closest to cluster centroids" (arXiv 2402.09668, App. B.4). Sachdeva et al. do not say whether the cut is
one global cut or the same fraction from every cluster: ``cut="global"`` (default) ranks all points
together; ``cut="per_cluster"`` keeps ``budget * n_c / n`` points of each cluster, rounded by largest
remainder so that the total is exactly ``budget``. (Sorscher et al. recommend keeping the *easy*, near
points instead when the kept fraction is small; that variant is not what Sachdeva et al. evaluate and is
not implemented.)

Conventions
-----------
Inputs are ``(n, d)`` arrays of real vectors; every function L2-normalises rows itself (a zero or
non-finite row is a :class:`~p3bench.errors.DataError`). Cosine similarities are computed in float32 and
reported as float64 values clipped to ``[-1, 1]``. Kept indices are returned in increasing order. Every
function is deterministic: there is no randomness outside the seeded k-means. The long steps take
``progress`` (off by default): a progress bar (:func:`p3bench.utils.progress.progress_bar`) over the stages
of :func:`spherical_kmeans` and over the clusters of :func:`semdedup_scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from p3bench.algorithms.kmeans import (
    KMEANS_ALGORITHMS,
    MAX_DEFAULT_CLUSTERS,
    MINIBATCH_THRESHOLD,
    KMeansResult,
    _check_positive_int,
    _normalised_means,
    _unit_rows,
    default_n_clusters,
    lloyd_kmeans,
    spherical_kmeans,
)
from p3bench.errors import ConfigError
from p3bench.utils.progress import progress_bar

__all__ = [
    "CUTS",
    "DEFAULT_BLOCK_SIZE",
    "KEEPS",
    "KMEANS_ALGORITHMS",
    "MAX_DEFAULT_CLUSTERS",
    "MINIBATCH_THRESHOLD",
    "KMeansResult",
    "PrototypesResult",
    "SemDeDupResult",
    "SemDeDupScores",
    "default_n_clusters",
    "lloyd_kmeans",
    "prototypes",
    "semdedup",
    "semdedup_at_threshold",
    "semdedup_scores",
    "spherical_kmeans",
]

#: Which member of a near-duplicate group SemDeDup keeps.
KEEPS: tuple[str, ...] = ("farthest", "nearest")
#: How Prototypes spreads the budget over the clusters.
CUTS: tuple[str, ...] = ("global", "per_cluster")
#: Tile size (rows) of the blockwise within-cluster similarity computation.
DEFAULT_BLOCK_SIZE = 2048
#: M of a point with no earlier point in its cluster (the lowest possible cosine similarity).
_NO_EARLIER = -1.0


# --------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class SemDeDupScores:
    """Per-point SemDeDup quantities, from which any budget or epsilon is selected without recomputing.

    Attributes:
        max_similarity: ``(n,)`` float64 ``M_i``, the maximum cosine similarity of point ``i`` to the points
            before it in its cluster's order (``-1`` for the first point of a cluster).
        rank: ``(n,)`` int64 position of each point in its cluster's order (0 = first, always kept).
        keep: ``"farthest"`` or ``"nearest"``, the order used.
    """

    max_similarity: NDArray[np.float64]
    rank: NDArray[np.int64]
    keep: str

    @property
    def scores(self) -> NDArray[np.float64]:
        """``-M``: higher is more unique (the plotted score of arXiv 2402.09668, Fig. 9)."""
        return -self.max_similarity

    def kept_at(self, threshold: float) -> int:
        """``#{i : M_i <= threshold}``, the number of points kept at ``threshold`` (non-decreasing)."""
        return int(np.count_nonzero(self.max_similarity <= threshold))

    def select(self, budget: int) -> SemDeDupResult:
        """Keep exactly ``budget`` points: the smallest ``M`` (ties: lower rank, then lower index)."""
        n = self.max_similarity.shape[0]
        budget = _check_budget(budget, n)
        order = np.lexsort((np.arange(n), self.rank, self.max_similarity))
        kept = np.sort(order[:budget]).astype(np.int64)
        threshold = -math.inf if budget == 0 else float(self.max_similarity[order[budget - 1]])
        n_tied = int(np.count_nonzero(self.max_similarity[order[budget:]] == threshold))
        return self._result(kept, threshold, n_tied)

    def select_epsilon(self, epsilon: float) -> SemDeDupResult:
        """Keep every point with ``M <= 1 - epsilon`` (the fixed-epsilon form of arXiv 2303.09540)."""
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
            raise ConfigError(f"epsilon={epsilon!r} is not a number: expected a float in [0, 2]")
        if not math.isfinite(epsilon) or not 0.0 <= epsilon <= 2.0:
            raise ConfigError(f"epsilon={epsilon} is out of range: expected a float in [0, 2]")
        threshold = 1.0 - float(epsilon)
        kept = np.flatnonzero(self.max_similarity <= threshold).astype(np.int64)
        return self._result(kept, threshold, 0)

    def _result(self, kept: NDArray[np.int64], threshold: float, n_tied: int) -> SemDeDupResult:
        return SemDeDupResult(
            kept=kept,
            max_similarity=self.max_similarity,
            rank=self.rank,
            threshold=threshold,
            epsilon=1.0 - threshold,
            keep=self.keep,
            n_tied_removed=n_tied,
        )


@dataclass(frozen=True)
class SemDeDupResult:
    """The outcome of SemDeDup at one budget or epsilon.

    Attributes:
        kept: indices of the kept points, increasing (int64).
        max_similarity: ``(n,)`` ``M`` of every point (see :class:`SemDeDupScores`).
        rank: ``(n,)`` position of every point in its cluster's order.
        threshold: ``t``: every kept point has ``M <= t`` and every removed point ``M >= t`` (``M > t``
            for the fixed-epsilon form). ``-inf`` for an empty budget.
        epsilon: ``1 - t``.
        keep: ``"farthest"`` or ``"nearest"``.
        n_tied_removed: removed points whose ``M`` equals ``t`` (removed by the tie rule, not by the
            threshold); 0 when the threshold separates kept from removed, and for the fixed-epsilon form.
    """

    kept: NDArray[np.int64]
    max_similarity: NDArray[np.float64]
    rank: NDArray[np.int64]
    threshold: float
    epsilon: float
    keep: str
    n_tied_removed: int = 0

    def __len__(self) -> int:
        return int(self.kept.shape[0])

    @property
    def scores(self) -> NDArray[np.float64]:
        """``-M`` of every point (higher is more unique)."""
        return -self.max_similarity

    @property
    def mask(self) -> NDArray[np.bool_]:
        """``(n,)`` True for kept points."""
        out = np.zeros(self.max_similarity.shape[0], dtype=bool)
        out[self.kept] = True
        return out


@dataclass(frozen=True)
class PrototypesResult:
    """The outcome of SSL Prototypes.

    Attributes:
        kept: indices of the kept points, increasing (int64).
        similarity: ``(n,)`` float64 cosine similarity of every point to its own centroid.
        cut: ``"global"`` or ``"per_cluster"``.
        kept_per_cluster: ``(n_clusters,)`` int64 number of kept points in each cluster.
    """

    kept: NDArray[np.int64]
    similarity: NDArray[np.float64]
    cut: str
    kept_per_cluster: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.kept.shape[0])

    @property
    def scores(self) -> NDArray[np.float64]:
        """``-similarity`` (arXiv 2402.09668, Fig. 9): higher is farther from the centroid, kept first."""
        return -self.similarity


# --------------------------------------------------------------------------------------------------------
# Validation helpers


def _check_budget(budget: int, n: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ConfigError(f"budget={budget!r} is not an integer: expected a count 0 <= budget <= {n}")
    if not 0 <= budget <= n:
        raise ConfigError(f"budget={budget} is out of range: expected a count 0 <= budget <= {n}")
    return int(budget)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: expected one of {', '.join(choices)}")
    return value


def _resolve_clusters(
    Xn: NDArray[np.float32], clusters: KMeansResult | ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Labels and unit centroids from a :class:`KMeansResult` or from a plain label array (whose centroids
    are then the normalised cluster means)."""
    n, d = Xn.shape
    if isinstance(clusters, KMeansResult):
        labels, centroids = clusters.labels, np.asarray(clusters.centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != d:
            raise ConfigError(
                f"centroids have shape {centroids.shape}: expected (n_clusters, {d}) for {d}-dim embeddings"
            )
    else:
        labels, centroids = clusters, None
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"cluster labels have shape {labels.shape} and dtype {labels.dtype}: expected ({n},) ints"
        )
    labels = labels.astype(np.int64, copy=False)
    if n and labels.min() < 0:
        raise ConfigError(f"cluster label {int(labels.min())} is negative: expected labels >= 0")
    k = int(labels.max()) + 1
    if centroids is None:
        centroids = _normalised_means(Xn, labels, k)
    elif k > centroids.shape[0]:
        raise ConfigError(f"cluster label {k - 1} has no centroid: expected labels < {centroids.shape[0]}")
    return labels, centroids


# --------------------------------------------------------------------------------------------------------
# SemDeDup


def _cluster_order(
    labels: NDArray[np.int64], key: NDArray[np.float64], k: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Points grouped by cluster and sorted by ``key`` inside each (ties: lower index) and the cluster
    boundaries into that order (``bounds[c]:bounds[c + 1]`` is cluster ``c``)."""
    n = labels.shape[0]
    order = np.lexsort((np.arange(n), key, labels)).astype(np.int64)
    bounds = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=k), out=bounds[1:])
    return order, bounds


def _max_earlier_similarity(Y: NDArray[np.float32], block_size: int) -> NDArray[np.float32]:
    """``out[i] = max_{j < i} <Y_i, Y_j>`` (``-inf`` for ``i = 0``), in ``block_size`` square tiles."""
    m = Y.shape[0]
    out = np.full(m, -np.inf, dtype=np.float32)
    for a in range(0, m, block_size):
        b = min(a + block_size, m)
        rows = Y[a:b]
        best = out[a:b]
        for c in range(0, b, block_size):
            d = min(c + block_size, b)
            T = rows @ Y[c:d].T
            if d > a:  # diagonal tile: keep only columns j < i
                T[np.arange(a, b)[:, None] <= np.arange(c, d)[None, :]] = -np.inf
            np.maximum(best, T.max(axis=1), out=best)
    return out


def semdedup_scores(
    X: ArrayLike,
    clusters: KMeansResult | ArrayLike,
    *,
    keep: str = "farthest",
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: bool = False,
) -> SemDeDupScores:
    """SemDeDup's per-point ``M`` (maximum cosine similarity to the earlier points of the cluster's order).

    Args:
        X: ``(n, d)`` embeddings (normalised here), the ones that were clustered.
        clusters: a :class:`KMeansResult`, or ``(n,)`` integer labels (centroids = normalised means).
        keep: ``"farthest"`` (default, Abbas et al.) orders each cluster farthest-from-centroid first, so
            the farthest member of a duplicate group is kept; ``"nearest"`` the reverse (the reading of
            Sachdeva et al., Sec. 2.1).
        block_size: tile size; a cluster never needs more than ``block_size^2`` similarities at once.
        progress: a progress bar over the points, updated once per cluster.
    """
    _check_choice("keep", keep, KEEPS)
    block_size = _check_positive_int("block_size", block_size)
    Xn = _unit_rows(X)
    labels, centroids = _resolve_clusters(Xn, clusters)
    n = Xn.shape[0]
    k = centroids.shape[0]
    cos = np.einsum("ij,ij->i", Xn, centroids[labels], dtype=np.float64)
    order, bounds = _cluster_order(labels, cos if keep == "farthest" else -cos, k)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64) - bounds[labels[order]]
    M = np.full(n, _NO_EARLIER, dtype=np.float64)
    sizes = np.diff(bounds)
    with progress_bar(total=n, desc="SemDeDup", unit="example", enabled=progress) as bar:
        bar.update(int(n - sizes[sizes > 1].sum()))  # the points of singleton clusters: nothing to compare
        for c in np.flatnonzero(sizes > 1):
            members = order[bounds[c] : bounds[c + 1]]
            M[members[1:]] = _max_earlier_similarity(Xn[members], block_size)[1:]
            bar.update(len(members))
    np.clip(M, -1.0, 1.0, out=M)
    return SemDeDupScores(max_similarity=M, rank=rank, keep=keep)


def semdedup(
    X: ArrayLike,
    clusters: KMeansResult | ArrayLike,
    budget: int,
    *,
    keep: str = "farthest",
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: bool = False,
) -> SemDeDupResult:
    """SemDeDup keeping exactly ``budget`` points: those with the ``budget`` smallest ``M`` (ties: earlier
    in the cluster order, then lower index). Reports the threshold ``t`` (the largest kept ``M``) and
    ``epsilon = 1 - t``. See :func:`semdedup_scores` for the arguments."""
    return semdedup_scores(X, clusters, keep=keep, block_size=block_size, progress=progress).select(budget)


def semdedup_at_threshold(
    X: ArrayLike,
    clusters: KMeansResult | ArrayLike,
    epsilon: float,
    *,
    keep: str = "farthest",
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: bool = False,
) -> SemDeDupResult:
    """SemDeDup at a fixed ``epsilon`` (arXiv 2303.09540): keep every point with ``M <= 1 - epsilon``.
    ``epsilon`` in ``[0, 2]``: 0 removes nothing (a cosine similarity never exceeds 1), a small positive
    value removes exact and near-exact duplicates, 2 keeps only the first point of every cluster. See :func:`semdedup_scores` for the other arguments."""
    return semdedup_scores(X, clusters, keep=keep, block_size=block_size, progress=progress).select_epsilon(
        epsilon
    )


# --------------------------------------------------------------------------------------------------------
# SSL Prototypes


def _largest_remainder(budget: int, sizes: NDArray[np.int64]) -> NDArray[np.int64]:
    """Integer shares of ``budget`` proportional to ``sizes`` that sum to ``budget``: the floors, plus one
    for the clusters with the largest remainders (ties: the lower cluster id). Exact integer arithmetic."""
    n = int(sizes.sum())
    num = sizes * budget
    quota = num // n
    rem = num % n
    extra = budget - int(quota.sum())
    if extra:
        idx = np.lexsort((np.arange(sizes.shape[0]), -rem))[:extra]
        quota[idx] += 1
    return quota.astype(np.int64)


def prototypes(
    X: ArrayLike,
    clusters: KMeansResult | ArrayLike,
    budget: int,
    *,
    cut: str = "global",
) -> PrototypesResult:
    """SSL Prototypes: keep the ``budget`` points least cosine-similar to their own centroid.

    Args:
        X: ``(n, d)`` embeddings (normalised here), the ones that were clustered.
        clusters: a :class:`KMeansResult`, or ``(n,)`` integer labels (centroids = normalised means).
        budget: number of points kept, ``0 <= budget <= n``.
        cut: ``"global"`` (default) keeps the ``budget`` smallest similarities over all points;
            ``"per_cluster"`` keeps the farthest ``q_c`` points of each cluster, ``q_c`` the
            largest-remainder rounding of ``budget * n_c / n``. Sachdeva et al. do not say which they use.

    Ties in similarity: the lower index is kept.
    """
    _check_choice("cut", cut, CUTS)
    Xn = _unit_rows(X)
    labels, centroids = _resolve_clusters(Xn, clusters)
    n = Xn.shape[0]
    k = centroids.shape[0]
    budget = _check_budget(budget, n)
    sim = np.clip(np.einsum("ij,ij->i", Xn, centroids[labels], dtype=np.float64), -1.0, 1.0)
    if cut == "global":
        kept = np.lexsort((np.arange(n), sim))[:budget]
    else:
        quota = _largest_remainder(budget, np.bincount(labels, minlength=k).astype(np.int64))
        order, bounds = _cluster_order(labels, sim, k)
        within = np.arange(n, dtype=np.int64) - bounds[labels[order]]
        kept = order[within < quota[labels[order]]]
    kept = np.sort(kept).astype(np.int64)
    return PrototypesResult(
        kept=kept,
        similarity=sim,
        cut=cut,
        kept_per_cluster=np.bincount(labels[kept], minlength=k).astype(np.int64),
    )
