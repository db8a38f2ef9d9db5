"""Density sampling: LSH kernel-sum sketch scores and inverse propensity sampling, array in, array out.

Sachdeva et al., "How to Train Data-Efficient LLMs" (arXiv 2402.09668, v1), §3.2-3.3, Algorithm 2,
App. A.2 and B.2. Every example ``y`` is scored by the kernel sum ``score(y) = sum_x k(x, y)`` over the pool
(an unnormalised kernel density estimate in embedding space), and ``k`` examples are then drawn without
replacement with probability proportional to ``1 / score``, which flattens the sample towards the uniform
distribution over the occupied part of the embedding space (their Theorem A.2).

The sketch
----------
The kernel sums come from a RACE sketch (Coleman & Shrivastava, "Sub-linear RACE Sketches for Approximate
Kernel Density Estimation on Streaming Data", WWW 2020, arXiv 1912.02283): ``R`` independent LSH functions
``h_1..h_R`` with range ``B`` and an ``R x B`` array of counts ``S``.

- Pass 1: every point ``x`` adds 1 to ``S[r, h_r(x)]`` for every row ``r``.
- Pass 2: ``score(y) = (1/R) sum_r S[r, h_r(y)]``.

The count ``S[r, h_r(y)]`` is an unbiased estimate of ``sum_x P[h(x) = h(y)]``, so ``score(y)`` estimates
the kernel sum for the kernel ``k(x, y) = P[h(x) = h(y)]``, the family's collision probability. The family
here is the Gaussian p-stable L2 hash of Datar, Immorlica, Indyk & Mirrokni (SoCG 2004): ``g(x) = floor((a.x
+ b) / w)`` with ``a ~ N(0, I)``, ``b ~ U[0, w)`` and bandwidth (bin width) ``w``. Its collision probability
at distance ``d`` is :func:`pstable_collision_probability`. A row concatenates ``K = hashes_per_row``
independent such hashes, so its kernel is ``p(d)^K``. The row's code (an integer, or a K-tuple) is mapped
to one of ``B`` buckets in three steps: a seeded vector multiply-add hash mod ``2^64`` of the codes taken
mod ``2^32`` (Dietzfelbinger 1996; Thorup, "High Speed Hashing for Integers and Strings", arXiv
1504.06804, §3), under which two distinct codes get the same 64-bit word with probability at most
``2^-32``; MurmurHash3's 64-bit finaliser, a bijection that scrambles the word (on its own the linear hash
spreads runs of small integers along a lattice: too evenly for most rows and very unevenly for a few);
and the top 32 bits scaled to ``[0, B)``. Two distinct codes then share a bucket with probability ``1/B``
up to the finaliser's quality (``tests/test_density.py`` checks the spread with a chi-square test). These
bucket collisions add about ``(n - s) / B`` to the expected count of a point whose kernel sum is ``s``;
``debias=True`` subtracts that (the paper does not).

The table is a :class:`~p3bench.algorithms.density_sketch.RaceSketch`: ``update(X_shard)`` adds a shard's
points, ``merge`` (or an all-reduce of the counts) sums two shards' tables exactly, and ``query`` reads the
scores, so a pool split across processes gets the scores of one pass over the whole pool
(:func:`p3bench.sharded.sharded_lsh_kernel_sums`).

Sizes and cost
--------------
Hashing costs ``n * dim * R * K`` multiply-adds per pass (a float32 matmul, in chunks of ``chunk_size``
rows), and the bucket ids of pass 1 are kept (``n * R`` uint16) so that pass 2 only reads the sketch. The
defaults are ``R = 128`` rows of ``K = 8`` hashes and ``B = 20,000`` buckets (:data:`DEFAULT_ROWS`,
:data:`DEFAULT_HASHES_PER_ROW`, :data:`DEFAULT_BUCKETS`): on 2,000 clustered 384-dimensional unit vectors
the sketch's scores have a Spearman rank correlation of about 0.95 with the exact sums of ``p(d)^8``
(0.97 with ``R = 256``, 0.98 with ``R = 512``), and 1,000,000 x 384 float32 embeddings take 12-16 s on
2 busy CPU cores, 32 s when pass 2 hashes again, with about 360 MiB of working memory
(``benchmarks/density_sketch.py``). The sketch itself is ``R x B`` int64 counts (20 MB), read as int32. The matmul uses the BLAS
threads the caller allows (``threadpoolctl``); nothing else is threaded.

Where this departs from the paper, and why
------------------------------------------
- **Sampling probability.** Algorithm 2 as printed ends "select k elements with probability p = S / ΣS",
  but the prose of §3.3 ("proportional to their reweighted and normalized inverse score") and Theorem A.2
  ("with probability proportional to 1/S(x)") say ``1 / score``. :func:`inverse_propensity_sample` draws
  ``∝ score^-power``, ``power = 1`` by default: the prose and the theorem.
- **Sketch size.** The paper's sketch is "[1,000 x 20,000]" (read as R = 1,000 rows, B = 20,000 buckets)
  for 364M examples. The defaults here keep B and use ``R * K = 1,024`` hash evaluations per point, chosen
  for pools of 10^4-10^6 examples on a CPU; any size can be passed.
- **Bandwidth.** The paper reports none. :func:`default_bandwidth` takes the median distance between random
  pairs of examples (see there).
- **Hashes per row.** The paper does not say how many p-stable hashes a row concatenates. With one,
  ``p(d)`` falls off only like ``w / d``, and between two distances it can never differ by more than their
  ratio; on 384-dimensional embeddings, where almost every pair is at a similar distance, the scores then
  barely separate dense regions from sparse ones and inverse propensity sampling stays close to uniform
  sampling. ``K = 8`` makes the kernel local enough to matter (``tests/test_density.py`` has a pool where
  one cluster holds half the points: with ``K = 1`` the sample keeps about 40% of that cluster, with
  ``K = 8`` about 5%, uniform over clusters would be 2%).
- **Sampling scheme.** The sequential draws without replacement are made in one pass with exponential keys
  (Efraimidis & Spirakis 2006), which gives exactly the distribution of sequential draws.

:func:`exact_kernel_sums` computes the kernel sums exactly in ``O(n^2)`` (blocked), for the p-stable kernel
the sketch estimates and for the Gaussian kernel, to validate the sketch on small pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erf

from p3bench.algorithms.density_sketch import (
    DEFAULT_CHUNK_SIZE,
    PStableHash,
    RaceSketch,
    _as_matrix,
    _check_count,
    _check_positive,
)
from p3bench.errors import ConfigError
from p3bench.utils.progress import progress_bar

__all__ = [
    "BANDWIDTH_QUANTILE",
    "BANDWIDTH_SAMPLE",
    "CACHE_LIMIT_BYTES",
    "DEFAULT_BUCKETS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_HASHES_PER_ROW",
    "DEFAULT_ROWS",
    "EXACT_KERNELS",
    "DensityResult",
    "PStableHash",
    "RaceSketch",
    "default_bandwidth",
    "density_sample",
    "exact_kernel_sums",
    "inverse_propensity_sample",
    "lsh_kernel_sums",
    "pstable_collision_probability",
]

#: Sketch rows ``R``.
DEFAULT_ROWS = 128
#: Buckets per row ``B`` (the paper's).
DEFAULT_BUCKETS = 20_000
#: p-stable hashes concatenated per row ``K``: the sketch estimates sums of ``p(d)^K``.
DEFAULT_HASHES_PER_ROW = 8
#: :func:`default_bandwidth` uses the pairs of a seeded sample of this many rows ...
BANDWIDTH_SAMPLE = 1000
#: ... and this quantile of their distances (the median).
BANDWIDTH_QUANTILE = 0.5
#: ``cache_buckets=None`` keeps pass 1's bucket ids when they take at most this many bytes.
CACHE_LIMIT_BYTES = 2**30
EXACT_KERNELS: tuple[str, ...] = ("pstable", "gaussian")


# --------------------------------------------------------------------------------------------------------
# The kernel


def pstable_collision_probability(distance: ArrayLike, bandwidth: float) -> NDArray[np.float64]:
    """``P[g(x) = g(y)]`` for the Gaussian p-stable hash ``g(x) = floor((a.x + b) / w)`` at ``||x - y|| = d``
    (Datar et al. 2004, §3.2, with ``c = d / w`` written as ``t = w / d``)::

        p(d) = 1 - 2 Phi(-t) - 2 / (sqrt(2 pi) t) * (1 - exp(-t^2 / 2)),    p(0) = 1.

    ``p`` decreases from 1 at ``d = 0`` and behaves like ``w / (sqrt(2 pi) d)`` for ``d >> w``. The sketch
    of :func:`lsh_kernel_sums` with ``K`` hashes per row estimates sums of ``p(d)^K``. Returns an array of
    the shape of ``distance`` (a 0-d array for a scalar)."""
    w = _check_positive("bandwidth", bandwidth)
    d = np.asarray(distance, dtype=np.float64)
    bad = ~np.isfinite(d) | (d < 0)
    if np.any(bad):
        raise ValueError(f"distance={d[bad].flat[0]} is invalid: expected finite distances >= 0")
    out = np.ones_like(d)
    pos = d > 0
    t = w / d[pos]
    # 1 - 2 Phi(-t) = erf(t / sqrt 2)
    out[pos] = erf(t / math.sqrt(2.0)) - 2.0 / (math.sqrt(2.0 * math.pi) * t) * (-np.expm1(-(t**2) / 2.0))
    return out


def default_bandwidth(
    X: ArrayLike, *, quantile: float = BANDWIDTH_QUANTILE, sample: int = BANDWIDTH_SAMPLE, seed: int = 0
) -> float:
    """A data-driven bandwidth, since arXiv 2402.09668 reports none: the ``quantile`` of the Euclidean
    distances between all pairs of distinct rows of a seeded sample of ``sample`` rows (all rows when there
    are fewer). Falls back to 1.0 when that is 0 or there are fewer than two rows.

    The default, the median, sets the p-stable bin width to the typical distance between two examples
    (about 1.35-1.41 for sentence embeddings on the unit sphere), where ``p = 0.37`` and ``p^8 = 4e-4``;
    the locality of the kernel is then set by ``hashes_per_row``. A smaller bandwidth also sharpens the
    kernel but makes the counts smaller and noisier, and bucket collisions relatively larger."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"quantile={quantile} is out of range: expected 0 < quantile <= 1")
    # checked in its own precision (float32 embeddings are not copied to float64: 3 GB at 10^6 x 384); only
    # the sampled rows are converted, to the same float64 values a whole conversion would give
    given = np.asarray(X)
    A = _as_matrix(given, np.float32 if given.dtype == np.float32 else np.float64)
    n = A.shape[0]
    if n < 2:
        return 1.0
    if n > sample:
        A = A[np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))]
    A = A.astype(np.float64, copy=False)
    dist = np.sqrt(_sq_dists(A, A)[np.triu_indices(A.shape[0], k=1)])
    w = float(np.quantile(dist, quantile))
    return w if w > 0 else 1.0


# --------------------------------------------------------------------------------------------------------
# Kernel sums


def lsh_kernel_sums(
    X: ArrayLike,
    *,
    rows: int = DEFAULT_ROWS,
    buckets: int = DEFAULT_BUCKETS,
    bandwidth: float | None = None,
    hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    debias: bool = False,
    cache_buckets: bool | None = None,
    progress: bool = False,
) -> NDArray[np.float64]:
    """RACE sketch estimate of ``sum_x p(||x - y||)^K`` for every row ``y`` of ``X`` (Algorithm 2 of
    arXiv 2402.09668 up to its last line): two passes over ``X`` in chunks of ``chunk_size`` rows.

    Args:
        X: ``(n, dim)`` embeddings (used in float32).
        rows, buckets: the sketch size ``R x B``.
        bandwidth: ``w``; ``None`` means :func:`default_bandwidth` of ``X``.
        hashes_per_row: ``K``.
        seed: seeds the hash functions; the same seed gives the same scores on a given machine (a different
            BLAS may round a projection differently and move a point across a bin edge, rarely).
        chunk_size: rows of ``X`` hashed at a time (memory about ``chunk_size * R * K * 12`` bytes, plus
            ``max(B, chunk_size) * R * 8`` bytes of pending ids).
        debias: subtract the expected bucket collisions, ``(n - s) / B`` per row for a raw count ``s``, so
            that the result estimates the kernel sum without bias: ``(s - n/B) / (1 - 1/B)``, floored at 1
            (the point's own term, a lower bound of the exact sum).
        cache_buckets: keep pass 1's bucket ids (``n * R`` uint16, uint32 when ``B > 65,536``) for pass 2
            instead of hashing again (same scores, pass 2 about 10x faster). ``None``: keep them when they
            take at most :data:`CACHE_LIMIT_BYTES` (1 GiB).
        progress: a progress bar over the chunks of both passes (:func:`p3bench.utils.progress.progress_bar`).

    Returns:
        ``(n,)`` float64 scores, each in ``[1, n]`` (raw: every point collides with itself in every row).
    """
    A = _as_matrix(X, np.float32)
    n = A.shape[0]
    chunk_size = _check_count("chunk_size", chunk_size)
    w = default_bandwidth(A) if bandwidth is None else bandwidth
    sketch = RaceSketch.create(
        A.shape[1], rows=rows, buckets=buckets, bandwidth=w, hashes_per_row=hashes_per_row, seed=seed
    )
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if cache_buckets is None:
        cache_buckets = n * sketch.rows * np.dtype(sketch.id_dtype).itemsize <= CACHE_LIMIT_BYTES
    n_chunks = -(-n // min(chunk_size, n))
    with progress_bar(total=2 * n_chunks, desc="density sketch", unit="chunk", enabled=progress) as bar:
        ids = sketch.update(A, chunk_size=chunk_size, keep_ids=bool(cache_buckets), bar=bar)
        if ids is None:
            return sketch.query(A, chunk_size=chunk_size, debias=debias, bar=bar)
        return sketch.query(ids=ids, chunk_size=chunk_size, debias=debias, bar=bar)


def exact_kernel_sums(
    X: ArrayLike,
    *,
    kernel: str = "pstable",
    bandwidth: float | None = None,
    hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
    block_size: int = 1024,
    progress: bool = False,
) -> NDArray[np.float64]:
    """The exact kernel sums ``sum_x k(x, y)`` (including ``x = y``) for every row ``y`` of ``X``, in
    ``O(n^2 dim)`` time and ``O(block_size^2)`` memory, for validating the sketch on small pools.

    ``kernel="pstable"``: ``k = p(d)^K``, the kernel :func:`lsh_kernel_sums` estimates (bandwidth ``w``,
    ``K = hashes_per_row``). ``kernel="gaussian"``: ``k = exp(-d^2 / (2 h^2))`` with ``h = bandwidth``
    (``hashes_per_row`` is ignored). ``bandwidth=None`` means :func:`default_bandwidth` of ``X``.
    ``progress``: a progress bar over the rows, updated once per block of ``block_size`` rows."""
    if kernel not in EXACT_KERNELS:
        raise ConfigError(f"kernel={kernel!r} is unknown: expected one of {', '.join(EXACT_KERNELS)}")
    block_size = _check_count("block_size", block_size)
    K = _check_count("hashes_per_row", hashes_per_row)
    A = _as_matrix(X, np.float64)
    w = default_bandwidth(A) if bandwidth is None else _check_positive("bandwidth", bandwidth)
    n = A.shape[0]
    out = np.zeros(n, dtype=np.float64)
    with progress_bar(total=n, desc="exact kernel sums", unit="row", enabled=progress) as bar:
        for i in range(0, n, block_size):
            Ai = A[i : i + block_size]
            for j in range(0, n, block_size):
                d2 = _sq_dists(Ai, A[j : j + block_size])
                if i == j:
                    np.fill_diagonal(d2, 0.0)  # exactly, not up to the rounding of the expanded square
                if kernel == "gaussian":
                    k = np.exp(-d2 / (2.0 * w * w))
                else:
                    k = pstable_collision_probability(np.sqrt(d2), w) ** K
                out[i : i + block_size] += k.sum(axis=1)
            bar.update(Ai.shape[0])
    return out


# --------------------------------------------------------------------------------------------------------
# Sampling


def inverse_propensity_sample(
    scores: ArrayLike, k: int, rng: np.random.Generator | int, *, power: float = 1.0
) -> NDArray[np.int64]:
    """Draw ``k`` distinct indices without replacement, each draw choosing among the remaining examples
    with probability ``∝ scores^-power`` (``power = 1``: the inverse propensity sampling of arXiv
    2402.09668, §3.3 and Theorem A.2).

    Efraimidis & Spirakis (2006): give example ``i`` the key ``E_i / wt_i`` with ``E_i ~ Exp(1)`` and
    ``wt_i = scores_i^-power``, and take the ``k`` smallest keys in increasing order. The first key is the
    minimum of independent exponentials with rates ``wt_i``, so it is example ``i`` with probability
    ``wt_i / sum wt``; by memorylessness the remaining keys, shifted, are again independent exponentials
    with the same rates, so the next smallest key is a draw from the remaining examples. The ordered result
    therefore has exactly the distribution of ``k`` sequential weighted draws without replacement.

    Args:
        scores: ``(n,)`` finite scores ``> 0`` (kernel sums).
        k: how many to draw, ``0 <= k <= n``.
        rng: a Generator, or a seed for one; the same seed gives the same indices.
        power: the exponent: ``0`` is uniform sampling, negative values favour high scores.

    Returns:
        The ``k`` indices in draw order (the first is the first draw), int64; sort them for a subset.

    Raises:
        ConfigError: ``k`` out of range or not an integer, or ``power`` not finite.
        ValueError: ``scores`` not 1-d, or an entry not finite or ``<= 0``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores has shape {s.shape}: expected a 1-d array")
    n = s.shape[0]
    k = _check_k(k, n)
    if not math.isfinite(power):
        raise ConfigError(f"power={power} is not finite: expected a finite exponent")
    if n:
        bad = np.flatnonzero(~np.isfinite(s) | (s <= 0))
        if bad.size:
            raise ValueError(f"scores[{bad[0]}]={s[bad[0]]}: expected finite scores > 0")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    # log key = log E - log wt = log E + power * log s; compared in logs so that no weight under/overflows
    log_keys = np.log(gen.standard_exponential(n)) + power * np.log(s)
    part = np.argpartition(log_keys, k - 1)[:k] if k < n else np.arange(n)
    return part[np.argsort(log_keys[part], kind="stable")].astype(np.int64)


@dataclass(frozen=True)
class DensityResult:
    """The outcome of :func:`density_sample`.

    Attributes:
        indices: the picked examples in draw order (int64).
        scores: the sketch's kernel sums of every example (float64, ``(n,)``).
        bandwidth: the bandwidth used.
        rows, buckets, hashes_per_row: the sketch size.
    """

    indices: NDArray[np.int64]
    scores: NDArray[np.float64]
    bandwidth: float
    rows: int
    buckets: int
    hashes_per_row: int

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def density_sample(
    X: ArrayLike,
    k: int,
    *,
    rows: int = DEFAULT_ROWS,
    buckets: int = DEFAULT_BUCKETS,
    bandwidth: float | None = None,
    hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
    power: float = 1.0,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> DensityResult:
    """Algorithm 2 of arXiv 2402.09668 end to end: :func:`lsh_kernel_sums` (raw counts, as in the paper)
    then :func:`inverse_propensity_sample` (``∝ score^-power``). ``bandwidth=None`` means
    :func:`default_bandwidth`. ``seed`` seeds both the hashes and the draw."""
    A = _as_matrix(X, np.float32)
    _check_k(k, A.shape[0])
    w = default_bandwidth(A) if bandwidth is None else _check_positive("bandwidth", bandwidth)
    scores = lsh_kernel_sums(
        A,
        rows=rows,
        buckets=buckets,
        bandwidth=w,
        hashes_per_row=hashes_per_row,
        seed=seed,
        chunk_size=chunk_size,
        progress=progress,
    )
    indices = inverse_propensity_sample(scores, k, np.random.default_rng([seed, 1]), power=power)
    return DensityResult(indices, scores, w, rows, buckets, hashes_per_row)


# --------------------------------------------------------------------------------------------------------
# Helpers


def _sq_dists(A: NDArray[np.float64], B: NDArray[np.float64]) -> NDArray[np.float64]:
    d2 = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d2, 0.0, out=d2)


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k={k!r} is not an integer: expected a sample size 0 <= k <= {n}")
    if not 0 <= k <= n:
        raise ConfigError(f"k={k} is out of range: expected a sample size 0 <= k <= {n}")
    return int(k)
