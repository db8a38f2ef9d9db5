"""The RACE sketch of :mod:`p3bench.algorithms.density` as a mergeable object: the p-stable LSH family,
its bucket hashing, and the ``R x B`` table of counts that pass 1 fills and pass 2 reads.

Coleman & Shrivastava, "Sub-linear RACE Sketches for Approximate Kernel Density Estimation on Streaming
Data" (WWW 2020, arXiv 1912.02283), used by Sachdeva et al. (arXiv 2402.09668, Algorithm 2) for the
DENSITY sampler. Pass 1 adds 1 to ``S[r, h_r(x)]`` for every point ``x`` and row ``r``; pass 2 reads
``score(y) = (1/R) sum_r S[r, h_r(y)]``. The table is a sum over points, so a pool split into shards gives
the table of the whole pool as the sum of the shards' tables::

    sketch = RaceSketch.create(dim, rows=128, buckets=20_000, bandwidth=w, hashes_per_row=8, seed=0)
    ids = sketch.update(X_shard, keep_ids=True)     # pass 1 on this shard
    sketch = sketch.merge(other_shard_sketch)       # or an all-reduce of ``sketch.counts`` and ``sketch.n``
    scores = sketch.query(ids=ids)                  # pass 2 for this shard's rows

The counts are integers, so the merge is exact and does not depend on how the pool was split or in which
order the shards are summed: the scores of a sharded pass equal those of one pass over the whole pool
(``tests/test_sharded_selection.py``). Hashing a point does not depend on the other points of its chunk;
a BLAS that rounded one row's projection differently inside a differently shaped product could move it
across a bin edge, which the tests have not seen happen.

The family, the bucket hash and their costs are described in :mod:`p3bench.algorithms.density`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from p3bench.errors import ConfigError

__all__ = ["DEFAULT_CHUNK_SIZE", "PStableHash", "RaceSketch"]

#: Rows of ``X`` hashed at a time (memory about ``chunk_size * R * K * 12`` bytes).
DEFAULT_CHUNK_SIZE = 4096

_SHIFT32 = np.uint64(32)
_SHIFT33 = np.uint64(33)
_LOW32 = np.uint64(0xFFFFFFFF)
_FMIX_MULTIPLIERS = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


class _Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


# --------------------------------------------------------------------------------------------------------
# The LSH family


@dataclass(frozen=True)
class PStableHash:
    """``R`` rows of ``K`` Gaussian p-stable hashes each, and the universal hash of each row's code into
    ``B`` buckets. Built deterministically from ``seed`` by :meth:`create`.

    Attributes:
        projections: ``(dim, K*R)`` float32, ``a / w`` with ``a ~ N(0, I)`` (column ``j*R + r`` is hash
            ``j`` of row ``r``).
        offsets: ``(K*R,)`` float32, ``b / w`` with ``b ~ U[0, w)``, i.e. uniform in ``[0, 1)``.
        multipliers: ``(K, R)`` uint64, the multipliers of the multiply-add hash.
        increments: ``(R,)`` uint64, its increments.
        buckets: ``B``.
        bandwidth: ``w``.
    """

    projections: NDArray[np.float32]
    offsets: NDArray[np.float32]
    multipliers: NDArray[np.uint64]
    increments: NDArray[np.uint64]
    buckets: int
    bandwidth: float

    @classmethod
    def create(
        cls, dim: int, *, rows: int, buckets: int, bandwidth: float, hashes_per_row: int = 1, seed: int = 0
    ) -> PStableHash:
        """Draw the hash functions from ``np.random.default_rng(seed)``."""
        dim = _check_count("dim", dim)
        rows = _check_count("rows", rows)
        buckets = _check_count("buckets", buckets)
        if buckets > 2**32:
            raise ConfigError(f"buckets={buckets} is too large: expected at most 2**32")
        hashes_per_row = _check_count("hashes_per_row", hashes_per_row)
        w = _check_positive("bandwidth", bandwidth)
        rng = np.random.default_rng(seed)
        m = rows * hashes_per_row
        projections = (rng.standard_normal((dim, m)) / w).astype(np.float32)
        offsets = rng.random(m).astype(np.float32)
        multipliers = rng.integers(0, 2**64, size=(hashes_per_row, rows), dtype=np.uint64, endpoint=False)
        increments = rng.integers(0, 2**64, size=rows, dtype=np.uint64, endpoint=False)
        return cls(projections, offsets, multipliers, increments, buckets, w)

    @property
    def rows(self) -> int:
        return int(self.multipliers.shape[1])

    @property
    def hashes_per_row(self) -> int:
        return int(self.multipliers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.projections.shape[0])

    def codes(self, X: ArrayLike) -> NDArray[np.int64]:
        """The raw p-stable codes ``floor((a.x + b) / w)``, ``(n, R, K)`` int64 (no chunking; for tests
        and small inputs)."""
        A = _as_matrix(X, np.float32)
        proj = A @ self.projections
        proj += self.offsets
        codes = np.floor(proj).astype(np.int64).reshape(A.shape[0], self.hashes_per_row, self.rows)
        return codes.transpose(0, 2, 1).copy()

    def bucket_ids(self, X: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> NDArray[np.int64]:
        """``h_r(x)`` in ``[0, B)`` for every row of ``X`` and every sketch row, ``(n, R)`` int64."""
        A = _as_matrix(X, np.float32)
        out = np.empty((A.shape[0], self.rows), dtype=np.int64)
        hasher = _ChunkHasher(self, chunk_size)
        for start, ids in hasher.iterate(A):
            out[start : start + ids.shape[0]] = ids
        return out


class _ChunkHasher:
    """Hashes row chunks into preallocated buffers (large temporaries are slow to allocate)."""

    def __init__(self, lsh: PStableHash, chunk_size: int) -> None:
        self.lsh = lsh
        self.chunk_size = chunk_size
        m = lsh.projections.shape[1]
        self.proj = np.empty((chunk_size, m), dtype=np.float32)
        self.word = np.empty((chunk_size, m), dtype=np.uint64)
        self.ids = np.empty((chunk_size, lsh.rows), dtype=np.uint64)
        self.tmp = np.empty((chunk_size, lsh.rows), dtype=np.uint64)

    def hash(self, chunk: NDArray[np.float32]) -> NDArray[np.int64]:
        """Bucket ids ``(c, R)`` int64 of a ``(c, dim)`` float32 chunk, a view into a reused buffer."""
        lsh = self.lsh
        c, R, K = chunk.shape[0], lsh.rows, lsh.hashes_per_row
        proj = self.proj[:c]
        np.matmul(chunk, lsh.projections, out=proj)
        proj += lsh.offsets
        np.floor(proj, out=proj)
        word = self.word[:c]
        np.copyto(word.view(np.int64), proj, casting="unsafe")
        word &= _LOW32  # the code as a 32-bit word: code mod 2^32
        # vector multiply-add: (sum_j m_j * word_j + inc) mod 2^64, finalised, top 32 bits scaled to [0, B)
        word3 = word.reshape(c, K, R)
        word3 *= lsh.multipliers[None, :, :]
        ids = self.ids[:c]
        np.add(word3[:, 0, :], lsh.increments, out=ids)
        for j in range(1, K):
            ids += word3[:, j, :]
        # MurmurHash3's 64-bit finaliser, a bijection: it keeps the universal collision probability and
        # breaks up the lattice structure a linear hash leaves on runs of small integer codes
        tmp = self.tmp[:c]
        for multiplier in _FMIX_MULTIPLIERS:
            np.right_shift(ids, _SHIFT33, out=tmp)
            ids ^= tmp
            ids *= multiplier
        np.right_shift(ids, _SHIFT33, out=tmp)
        ids ^= tmp
        ids >>= _SHIFT32
        ids *= np.uint64(lsh.buckets)
        ids >>= _SHIFT32
        return ids.view(np.int64)

    def iterate(self, X: NDArray[np.float32]) -> Iterator[tuple[int, NDArray[np.int64]]]:
        for start in range(0, X.shape[0], self.chunk_size):
            yield start, self.hash(X[start : start + self.chunk_size])


@dataclass
class RaceSketch:
    """The ``R x B`` counts of a RACE sketch over the points added so far, and the hashes that fill them.

    Attributes:
        lsh: the hash functions (the same seed and sizes on every shard: :meth:`create`).
        counts: ``(R, B)`` int64, ``counts[r, b]`` = number of points added with ``h_r(x) = b``.
        n: number of points added.
    """

    lsh: PStableHash
    counts: NDArray[np.int64]
    n: int = 0

    @classmethod
    def create(
        cls, dim: int, *, rows: int, buckets: int, bandwidth: float, hashes_per_row: int = 1, seed: int = 0
    ) -> RaceSketch:
        """An empty sketch with the hash functions :meth:`PStableHash.create` draws from ``seed``."""
        lsh = PStableHash.create(
            dim, rows=rows, buckets=buckets, bandwidth=bandwidth, hashes_per_row=hashes_per_row, seed=seed
        )
        return cls(lsh, np.zeros((lsh.rows, lsh.buckets), dtype=np.int64), 0)

    @property
    def rows(self) -> int:
        return self.lsh.rows

    @property
    def buckets(self) -> int:
        return self.lsh.buckets

    @property
    def id_dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned type that holds a bucket id (what :meth:`update` keeps)."""
        return np.uint16 if self.buckets <= 2**16 else np.uint32

    def update(
        self,
        X: ArrayLike,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        keep_ids: bool = False,
        bar: _Progress | None = None,
    ) -> NDArray[np.unsignedinteger] | None:
        """Pass 1: add every row of ``X`` (``(m, dim)``, used in float32) to the counts, in chunks of
        ``chunk_size`` rows. With ``keep_ids``, returns the rows' bucket ids (``(m, R)``, :attr:`id_dtype`)
        for :meth:`query`, which then need not hash again. ``bar`` is told of every chunk."""
        A = _as_matrix(X, np.float32)
        if A.shape[1] != self.lsh.dim:
            raise ValueError(f"X has {A.shape[1]} columns: expected the sketch's dim={self.lsh.dim}")
        m = A.shape[0]
        R, B = self.rows, self.buckets
        kept = np.empty((m, R), dtype=self.id_dtype) if keep_ids else None
        if m == 0:
            return kept
        chunk_size = min(_check_count("chunk_size", chunk_size), m)
        hasher = _ChunkHasher(self.lsh, chunk_size)
        row_offsets = (np.arange(R, dtype=np.int64) * B)[None, :]
        # np.bincount costs O(R B) per call on top of the ids it counts: the ids of at least B rows of X are
        # gathered before each call
        block_rows = min(m, -(-max(B, chunk_size) // chunk_size) * chunk_size)
        pending = np.empty((block_rows, R), dtype=np.int64)
        self.counts = np.ascontiguousarray(self.counts, dtype=np.int64)
        flat = self.counts.reshape(-1)  # a view: the counts are updated in place
        filled = 0
        for start, ids in hasher.iterate(A):
            c = ids.shape[0]
            if kept is not None:
                kept[start : start + c] = ids
            np.add(ids, row_offsets, out=pending[filled : filled + c])
            filled += c
            if filled + chunk_size > block_rows or start + c == m:
                flat += np.bincount(pending[:filled].ravel(), minlength=R * B)
                filled = 0
            if bar is not None:
                bar.update(1)
        self.n += m
        return kept

    def same_hashes(self, other: RaceSketch) -> bool:
        """Whether ``other`` hashes with the same functions (the same seed, sizes and bandwidth)."""
        a, b = self.lsh, other.lsh
        return (
            a.buckets == b.buckets
            and a.bandwidth == b.bandwidth
            and all(
                np.array_equal(x, y)
                for x, y in (
                    (a.projections, b.projections),
                    (a.offsets, b.offsets),
                    (a.multipliers, b.multipliers),
                    (a.increments, b.increments),
                )
            )
        )

    def merge(self, other: RaceSketch) -> RaceSketch:
        """The sketch of the points of both (a new object): the counts and the point counts summed.

        Raises:
            ValueError: ``other`` hashes with different functions (another seed, size or bandwidth).
        """
        if not self.same_hashes(other):
            raise ValueError(
                "cannot merge RACE sketches with different hash functions: expected the same seed, rows, "
                "buckets, hashes_per_row and bandwidth"
            )
        return RaceSketch(self.lsh, self.counts + other.counts, self.n + other.n)

    __add__ = merge

    def query(
        self,
        X: ArrayLike | None = None,
        *,
        ids: NDArray[np.unsignedinteger] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        debias: bool = False,
        bar: _Progress | None = None,
    ) -> NDArray[np.float64]:
        """Pass 2: ``(1/R) sum_r S[r, h_r(y)]`` for every row ``y`` of ``X``, or of the rows whose bucket ids
        :meth:`update` kept (``ids``). With ``debias``, subtracts the expected bucket collisions of the
        :attr:`n` points added: ``(s - n/B) / (1 - 1/B)``, floored at 1. ``bar`` is told of every chunk."""
        if (X is None) == (ids is None):
            raise ValueError("query needs exactly one of X (rows to hash) and ids (their bucket ids)")
        A = None if X is None else _as_matrix(X, np.float32)
        m = int(ids.shape[0]) if ids is not None else int(A.shape[0])  # type: ignore[union-attr]
        R, B = self.rows, self.buckets
        scores = np.empty(m, dtype=np.float64)
        if m == 0:
            return scores
        chunk_size = min(_check_count("chunk_size", chunk_size), m)
        table = self.counts.reshape(-1)
        if self.n < 2**31:  # a smaller table to gather from: the same sums
            table = table.astype(np.int32)
        hasher = _ChunkHasher(self.lsh, chunk_size) if A is not None else None
        row_offsets = (np.arange(R, dtype=np.int64) * B)[None, :]
        gathered = np.empty((chunk_size, R), dtype=table.dtype)
        flat = np.empty((chunk_size, R), dtype=np.int64)
        for start in range(0, m, chunk_size):
            c = min(chunk_size, m - start)
            if hasher is None:
                idx = flat[:c]
                np.add(ids[start : start + c], row_offsets, out=idx)  # type: ignore[index]
            else:
                idx = hasher.hash(A[start : start + c])  # type: ignore[index]
                idx += row_offsets
            np.take(table, idx, out=gathered[:c])
            np.sum(gathered[:c], axis=1, dtype=np.float64, out=scores[start : start + c])
            if bar is not None:
                bar.update(1)
        scores /= R
        if debias:
            scores = np.maximum((scores - self.n / B) / (1.0 - 1.0 / B), 1.0)
        return scores


# --------------------------------------------------------------------------------------------------------
# Helpers


def _as_matrix(X: ArrayLike, dtype: type[np.floating]) -> NDArray:
    A = np.ascontiguousarray(X, dtype=dtype)
    if A.ndim != 2:
        raise ValueError(f"X has shape {A.shape}: expected a 2-d array (n, dim)")
    # a finite float64 sum means every entry is finite (cheap for 10^6 x 384); otherwise look for the culprit
    if A.size and not math.isfinite(float(A.sum(dtype=np.float64))):
        bad = np.argwhere(~np.isfinite(A))
        if bad.size:
            i, j = (int(v) for v in bad[0])
            raise ValueError(f"X[{i}, {j}]={A[i, j]} is not finite: expected finite embeddings")
    return A


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid: expected a positive integer")
    return int(value)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name}={value!r} is invalid: expected a positive number")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r} is invalid: expected a finite number > 0")
    return float(value)
