"""Spherical k-means on L2-normalised embeddings, in one process or sharded across processes.

The clustering that SemDeDup and SSL Prototypes share (:mod:`p3bench.algorithms.clusters`; Sachdeva et al.,
"How to Train Data-Efficient LLMs", arXiv 2402.09668, App. B.3-B.4: 10,000 clusters of 364M Sentence-T5
embeddings) and the topic agent of multi-agent selection (arXiv 2410.08102, §3.3) clusters with.

Two algorithms (``algorithm=``), with the same seeding: k-means++ (Arthur & Vassilvitskii 2007,
``sklearn.cluster.kmeans_plusplus``) on a seeded subsample of the points.

- ``"sklearn"`` (default): Lloyd iterations of ``sklearn.cluster.KMeans`` (``MiniBatchKMeans`` from
  :data:`MINIBATCH_THRESHOLD` points on), then spherical refinement passes (:func:`spherical_kmeans`). One
  process holds all the points.
- ``"lloyd"``: spherical Lloyd iterations written here (:func:`lloyd_kmeans`) that run on shards of the
  points: each process assigns its rows to the nearest unit centroid and sums them per cluster, the sums
  and counts are added over processes (``reduce``), and every process computes the same new centroids.
  The sums are taken in fixed point, each coordinate counted as ``round(x * 2**32)`` in int64
  (:func:`fixed_point_sums`; a quantum of 2.3e-10, below float32's resolution of a unit vector's
  coordinates, and no overflow below 2**31 points in a cluster), so they are the same integers however the
  points are split and in whatever order the shards are added: 1, 2 or 64 processes give bitwise the same
  centroids and labels (``tests/test_sharded_selection.py``). Not the same clustering as ``"sklearn"``
  (scikit-learn's float sums run in an order of its own); choose one per experiment.

Assignment assumes the BLAS computes each row's similarities independently of the other rows of its chunk
(true of OpenBLAS and MKL matrix products, which do not split the inner dimension).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from p3bench.errors import ConfigError, DataError
from p3bench.utils.progress import progress_bar

__all__ = [
    "FIXED_POINT_SCALE",
    "KMEANS_ALGORITHMS",
    "MAX_DEFAULT_CLUSTERS",
    "MINIBATCH_THRESHOLD",
    "KMeansResult",
    "Reduce",
    "default_n_clusters",
    "fixed_point_sums",
    "kmeans_plusplus_init",
    "lloyd_kmeans",
    "spherical_kmeans",
]

#: ``algorithm=`` of :func:`spherical_kmeans`.
KMEANS_ALGORITHMS: tuple[str, ...] = ("sklearn", "lloyd")
#: Cap of :func:`default_n_clusters`: the 10,000 clusters of Sachdeva et al. (arXiv 2402.09668, App. B.3).
MAX_DEFAULT_CLUSTERS = 10_000
#: From this many points on, :func:`spherical_kmeans` uses ``MiniBatchKMeans`` instead of ``KMeans``.
MINIBATCH_THRESHOLD = 500_000
#: k-means++ seeding runs on a seeded subsample of ``max(INIT_SAMPLE_MIN, INIT_SAMPLE_PER_CLUSTER * k)``
#: points (all points when there are fewer): seeding on all points costs ``O(n k d log k)`` and dominated
#: the run time of the fit at ``n = 1e5``.
INIT_SAMPLE_MIN = 10_000
INIT_SAMPLE_PER_CLUSTER = 32
#: A coordinate ``x`` enters :func:`fixed_point_sums` as the integer ``round(x * FIXED_POINT_SCALE)``.
FIXED_POINT_SCALE = 2**32
#: Rows per chunk when assigning points to centroids (bounds the ``chunk x k`` similarity block).
_ASSIGN_CHUNK = 8192

#: Sums an array over the shards of a sharded run (every process gets the total); the identity in one.
Reduce = Callable[[NDArray], NDArray]


# --------------------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class KMeansResult:
    """A spherical k-means clustering (what :func:`spherical_kmeans` returns).

    Attributes:
        labels: ``(n,)`` int64 cluster id of every point, in ``[0, n_clusters)``.
        centroids: ``(n_clusters, d)`` float32 unit-norm centroids: the normalised mean of the cluster's
            (normalised) points. A cluster can only be empty when there are fewer distinct points than
            clusters; it then has a zero row (or the last centroid it had) and ``sizes`` shows it.
        n_iter: k-means iterations run by scikit-learn plus the spherical refinement passes.
        mean_cosine: mean cosine similarity of the points to their own centroid (the spherical k-means
            objective, higher is tighter).
        algorithm: ``"kmeans"`` or ``"minibatch"`` (scikit-learn), or ``"lloyd"`` (:func:`lloyd_kmeans`).
    """

    labels: NDArray[np.int64]
    centroids: NDArray[np.float32]
    n_iter: int
    mean_cosine: float
    algorithm: str = "kmeans"

    @classmethod
    def from_arrays(cls, labels: ArrayLike, centroids: ArrayLike) -> KMeansResult:
        """A result rebuilt from saved ``labels`` and ``centroids`` (for example a cache). The embeddings are
        not at hand, so ``n_iter`` is 0 and ``mean_cosine`` is NaN."""
        lab = np.asarray(labels)
        cen = np.asarray(centroids, dtype=np.float32)
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer) or cen.ndim != 2:
            raise ConfigError(
                f"labels of shape {lab.shape} and centroids of shape {cen.shape}: expected (n,) ints and (k, d)"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= cen.shape[0]):
            raise ConfigError(
                f"cluster labels span [{int(lab.min())}, {int(lab.max())}]: expected 0 <= label < {cen.shape[0]}"
            )
        return cls(
            labels=lab.astype(np.int64),
            centroids=np.ascontiguousarray(cen),
            n_iter=0,
            mean_cosine=math.nan,
        )

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sizes(self) -> NDArray[np.int64]:
        """``(n_clusters,)`` number of points in each cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Helpers


def _unit_rows(X: ArrayLike) -> NDArray[np.float32]:
    """Rows of ``X`` L2-normalised, float32, C-contiguous (norms accumulated in float64)."""
    A = np.asarray(X)
    if A.ndim != 2 or A.shape[0] == 0 or A.shape[1] == 0:
        raise DataError(f"embeddings have shape {A.shape}: expected a non-empty 2-D array (n, d)")
    if A.dtype == np.bool_ or not np.issubdtype(A.dtype, np.number) or np.iscomplexobj(A):
        raise DataError(f"embeddings have dtype {A.dtype}: expected real numbers")
    if A.dtype != np.float64:
        A = A.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", A, A, dtype=np.float64))
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise DataError(
            f"embedding row {int(bad[0])} is zero or not finite ({bad.size} such rows): "
            "expected finite non-zero vectors"
        )
    if A.dtype == np.float64:
        return np.ascontiguousarray(A / norms[:, None], dtype=np.float32)
    return np.ascontiguousarray(A / norms.astype(np.float32)[:, None])


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid: expected a positive integer")
    return int(value)


def _normalised_means(Xn: NDArray[np.float32], labels: NDArray[np.int64], k: int) -> NDArray[np.float32]:
    """Normalised mean of each cluster's rows; an empty cluster gets a zero row."""
    sums = np.zeros((k, Xn.shape[1]), dtype=np.float64)
    _segment_sums(Xn, labels, sums)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0).astype(np.float32)


def _segment_sums(Xn: NDArray[np.float32], labels: NDArray[np.int64], out: NDArray[np.float64]) -> None:
    """``out[c] += sum of rows with label c`` by sorting the labels (faster than ``np.add.at``)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    # float32 sums: a float64 reduceat is several times slower and the direction of a mean of unit
    # vectors does not need the extra precision.
    out[sorted_labels[starts]] += np.add.reduceat(Xn[order], starts, axis=0)


# --------------------------------------------------------------------------------------------------------
# Spherical k-means


def default_n_clusters(n: int) -> int:
    """The default number of clusters for ``n`` points: ``round(sqrt(n))``, at least 1, at most
    :data:`MAX_DEFAULT_CLUSTERS` (10,000).

    ``sqrt(n)`` clusters of about ``sqrt(n)`` points each balance the two costs: the k-means assignment
    (``n k d`` per iteration) and SemDeDup's within-cluster similarities (``n n_c d / 2``), both
    ``O(n^1.5 d)``. At the scale of Sachdeva et al. (364M points) the cap gives their 10,000 clusters; their
    ratio of ~36,000 points per cluster would leave a pool below that size with a single cluster.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n={n!r} is invalid: expected a number of points >= 1")
    return int(min(MAX_DEFAULT_CLUSTERS, max(1, round(math.sqrt(int(n))))))


def _assign(Xn: NDArray[np.float32], centroids: NDArray[np.float32]) -> NDArray[np.int64]:
    """Most cosine-similar centroid of every row (ties: the lower id); zero centroids never win."""
    n = Xn.shape[0]
    dead = ~np.any(centroids != 0, axis=1)
    labels = np.empty(n, dtype=np.int64)
    for a in range(0, n, _ASSIGN_CHUNK):
        S = Xn[a : a + _ASSIGN_CHUNK] @ centroids.T
        S[:, dead] = -np.inf
        labels[a : a + _ASSIGN_CHUNK] = np.argmax(S, axis=1)
    return labels


def _prepared(X: ArrayLike, n_clusters: int | None, seed: int) -> tuple[NDArray[np.float32], int]:
    """The unit rows of ``X`` and the checked number of clusters (and a checked seed)."""
    Xn = _unit_rows(X)
    n = Xn.shape[0]
    k = default_n_clusters(n) if n_clusters is None else n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ConfigError(f"n_clusters={k!r} is out of range: expected an integer 1 <= n_clusters <= {n}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer")
    return Xn, int(k)


def kmeans_plusplus_init(Xn: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.float32], int]:
    """k-means++ centres of a seeded subsample of ``max(INIT_SAMPLE_MIN, INIT_SAMPLE_PER_CLUSTER * k)`` unit
    rows (all rows when there are fewer), ``(k, d)`` float32, and the scikit-learn seed drawn after the
    subsample (which the ``"sklearn"`` fit goes on with). The same ``Xn``, ``k`` and ``seed`` give the same
    centres in every process."""
    n = Xn.shape[0]
    rng = np.random.default_rng(seed)
    n_init_sample = min(n, max(INIT_SAMPLE_MIN, INIT_SAMPLE_PER_CLUSTER * k))
    sample = np.sort(rng.choice(n, size=n_init_sample, replace=False)) if n_init_sample < n else slice(None)
    sk_seed = int(rng.integers(0, 2**31 - 1))
    with warnings.catch_warnings():
        # Fewer distinct points than clusters: scikit-learn warns and leaves duplicate centres; the
        # iterations then leave the surplus clusters empty, which the result reports in ``sizes``.
        warnings.simplefilter("ignore", ConvergenceWarning)
        with threadpool_limits(limits=1, user_api="blas"):
            # Seeding runs thousands of tiny matrix products; BLAS threads only add synchronisation.
            init, _ = kmeans_plusplus(Xn[sample].astype(np.float64), k, random_state=sk_seed)
    return init.astype(np.float32), sk_seed


def spherical_kmeans(
    X: ArrayLike,
    n_clusters: int | None = None,
    seed: int = 0,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    refine_iter: int = 10,
    minibatch: bool | None = None,
    batch_size: int = 4096,
    algorithm: str = "sklearn",
    progress: bool = False,
) -> KMeansResult:
    """k-means on the L2-normalised rows of ``X`` with unit-norm centroids.

    Steps: (1) k-means++ seeding (``sklearn.cluster.kmeans_plusplus``) on a seeded subsample of
    ``max(INIT_SAMPLE_MIN, INIT_SAMPLE_PER_CLUSTER * k)`` points; (2) Lloyd iterations of
    ``sklearn.cluster.KMeans`` on all normalised points, or ``MiniBatchKMeans`` (``batch_size``) when
    ``minibatch`` is True or, by default, when ``n >= MINIBATCH_THRESHOLD`` (500,000); (3) up to
    ``refine_iter`` spherical Lloyd passes: centroids = normalised cluster means, each point reassigned to
    its most cosine-similar centroid, until no label changes. Euclidean k-means on the unit sphere nearly
    optimises the same objective, so the refinement usually changes few labels; it makes the labels agree
    with the unit centroids that SemDeDup and Prototypes measure against. The returned centroids are the
    normalised means of the returned labels.

    Args:
        X: ``(n, d)`` embeddings (normalised here).
        n_clusters: ``1 <= k <= n``; None uses :func:`default_n_clusters`.
        seed: seeds the subsample and scikit-learn; the same inputs and seed give the same clustering.
        max_iter, tol: passed to scikit-learn.
        refine_iter: maximum spherical refinement passes (0 disables them).
        minibatch: force (True) or forbid (False) ``MiniBatchKMeans``; None picks by size.
        batch_size: ``MiniBatchKMeans`` batch size.
        algorithm: ``"sklearn"`` (the steps above) or ``"lloyd"``: :func:`lloyd_kmeans` (the same seeding,
            then spherical Lloyd iterations in fixed point that give the same result on any number of
            processes; ``tol``, ``refine_iter``, ``minibatch`` and ``batch_size`` do not apply).
        progress: a progress bar over the steps: seeding, the scikit-learn fit, each refinement pass.
    """
    Xn, k = _prepared(X, n_clusters, seed)
    n = Xn.shape[0]
    max_iter = _check_positive_int("max_iter", max_iter)
    batch_size = _check_positive_int("batch_size", batch_size)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tol={tol!r} is invalid: expected a finite number >= 0")
    if isinstance(refine_iter, bool) or not isinstance(refine_iter, (int, np.integer)) or refine_iter < 0:
        raise ConfigError(f"refine_iter={refine_iter!r} is invalid: expected an integer >= 0")
    if algorithm not in KMEANS_ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}: expected one of {', '.join(KMEANS_ALGORITHMS)}")
    if algorithm == "lloyd":
        if minibatch:
            raise ConfigError("minibatch=True is a scikit-learn option: expected algorithm='sklearn' with it")
        return lloyd_kmeans(Xn, k, seed, max_iter=max_iter, progress=progress)
    use_minibatch = n >= MINIBATCH_THRESHOLD if minibatch is None else bool(minibatch)

    steps = 2 + int(refine_iter)
    with progress_bar(total=steps, desc=f"k-means (k={k})", unit="step", enabled=progress) as bar:
        bar.set_postfix_str("seeding", refresh=False)
        init, sk_seed = kmeans_plusplus_init(Xn, k, seed)
        with warnings.catch_warnings():
            # Fewer distinct points than clusters: scikit-learn warns and leaves duplicate centres; the
            # refinement below then leaves the surplus clusters empty, which the result reports in ``sizes``.
            warnings.simplefilter("ignore", ConvergenceWarning)
            bar.set_postfix_str("fitting", refresh=False)
            bar.update(1)
            common = dict(n_clusters=k, init=init, n_init=1, max_iter=max_iter, tol=tol)
            if use_minibatch:
                est = MiniBatchKMeans(**common, batch_size=batch_size, random_state=sk_seed)
            else:
                est = KMeans(**common, random_state=sk_seed)
            est.fit(Xn)
        bar.set_postfix_str("refining", refresh=False)
        bar.update(1)
        labels = est.labels_.astype(np.int64)
        n_iter = int(est.n_iter_)
        centroids = _normalised_means(Xn, labels, k)
        for _ in range(refine_iter):
            # A cluster emptied by a pass keeps its previous centroid and may win points back in the next.
            new_labels = _assign(Xn, centroids)
            n_iter += 1
            bar.update(1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            means = _normalised_means(Xn, labels, k)
            filled = np.bincount(labels, minlength=k) > 0
            centroids = np.where(filled[:, None], means, centroids)
    sims = np.einsum("ij,ij->i", Xn, centroids[labels], dtype=np.float64)
    return KMeansResult(
        labels=labels,
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        n_iter=n_iter,
        mean_cosine=float(sims.mean()),
        algorithm="minibatch" if use_minibatch else "kmeans",
    )


# --------------------------------------------------------------------------------------------------------
# Sharded spherical Lloyd


def fixed_point_sums(
    Xn: NDArray[np.float32], labels: NDArray[np.int64], k: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per-cluster sums of the rows of ``Xn`` (``(k, d)`` int64, every coordinate counted as
    ``round(x * FIXED_POINT_SCALE)``) and per-cluster counts (``(k,)`` int64). Integer sums: the sums of
    any split of the rows add up to the sums of all of them, exactly."""
    sums = np.zeros((k, Xn.shape[1]), dtype=np.int64)
    for a in range(0, Xn.shape[0], _ASSIGN_CHUNK):
        chunk = _to_fixed_point(Xn[a : a + _ASSIGN_CHUNK])
        chunk_labels = labels[a : a + _ASSIGN_CHUNK]
        order = np.argsort(chunk_labels, kind="stable")
        sorted_labels = chunk_labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        sums[sorted_labels[starts]] += np.add.reduceat(chunk[order], starts, axis=0)
    return sums, np.bincount(labels, minlength=k).astype(np.int64)


def _to_fixed_point(values: NDArray[np.floating]) -> NDArray[np.int64]:
    return np.rint(values.astype(np.float64) * FIXED_POINT_SCALE).astype(np.int64)


def _centroids_from_sums(sums: NDArray[np.int64], previous: NDArray[np.float32]) -> NDArray[np.float32]:
    """Unit centroids of fixed-point cluster sums; a cluster with a zero sum keeps ``previous``."""
    means = sums.astype(np.float64)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    unit = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0).astype(np.float32)
    return np.where(norms > 0, unit, previous)


def _identity(array: NDArray) -> NDArray:
    return array


def lloyd_kmeans(
    X: ArrayLike,
    n_clusters: int | None = None,
    seed: int = 0,
    *,
    rows: ArrayLike | None = None,
    reduce: Reduce | None = None,
    max_iter: int = 100,
    progress: bool = False,
) -> KMeansResult:
    """Spherical Lloyd k-means that runs on shards (``algorithm="lloyd"`` of :func:`spherical_kmeans`).

    Seeding is :func:`kmeans_plusplus_init` on all of ``X`` (every process passes the whole array, so all
    start from the same centroids). Each iteration assigns the process's ``rows`` to their most
    cosine-similar centroid (ties: the lower id), sums them per cluster in fixed point
    (:func:`fixed_point_sums`), adds the sums and counts over processes with ``reduce``, and sets every
    centroid with members to the normalised sum (an emptied cluster keeps its centroid). It stops when no
    label changes on any process, or after ``max_iter`` iterations; the returned centroids are the normalised
    means of the returned labels.

    Args:
        X: ``(n, d)`` embeddings (normalised here).
        n_clusters: ``1 <= k <= n``; None uses :func:`default_n_clusters`.
        seed: seeds the subsample and the k-means++ seeding.
        rows: the rows this process assigns (all when None); the shards of all processes partition
            ``range(n)``.
        reduce: sums an array over the processes (:func:`p3bench.sharded.all_reduce_array`); None in one
            process.
        max_iter: maximum Lloyd iterations.
        progress: a progress bar over the iterations.

    Returns:
        The clustering, with the labels of ``rows`` (in their order) and ``mean_cosine`` over all points.
    """
    Xn, k = _prepared(X, n_clusters, seed)
    max_iter = _check_positive_int("max_iter", max_iter)
    reduce = _identity if reduce is None else reduce
    local = Xn if rows is None else Xn[np.asarray(rows, dtype=np.int64)]
    centroids, _ = kmeans_plusplus_init(Xn, k, seed)
    labels = _assign(local, centroids)
    n_iter, changed = 0, 1
    with progress_bar(total=max_iter, desc=f"k-means lloyd (k={k})", unit="step", enabled=progress) as bar:
        for _ in range(max_iter):
            sums, _counts = fixed_point_sums(local, labels, k)
            centroids = _centroids_from_sums(reduce(sums), centroids)
            new_labels = _assign(local, centroids)
            n_iter += 1
            bar.update(1)
            changed = int(reduce(np.array([np.count_nonzero(new_labels != labels)], dtype=np.int64))[0])
            labels = new_labels
            if changed == 0:
                break
    if changed:  # stopped by max_iter: the centroids of the final labels
        centroids = _centroids_from_sums(reduce(fixed_point_sums(local, labels, k)[0]), centroids)
    sims = np.einsum("ij,ij->i", local, centroids[labels], dtype=np.float64)
    total = int(reduce(np.array([_to_fixed_point(sims).sum()], dtype=np.int64))[0])
    return KMeansResult(
        labels=labels,
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        n_iter=n_iter,
        mean_cosine=total / FIXED_POINT_SCALE / Xn.shape[0],
        algorithm="lloyd",
    )
