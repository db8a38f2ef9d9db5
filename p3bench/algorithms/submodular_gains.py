"""Marginal gains of the coverage function behind every objective of :mod:`p3bench.algorithms.submodular`,
for many candidates at once.

After the checks there, each objective is a function of a kernel ``K`` (rows: the items to cover, columns:
the candidates) of the form

    f(A) = sum_i max(0, max_{j in A} min(K[i, j], cap_i) - base_i) + sum_{j in A} bonus_j

with a per-row ``cap`` (FLMI's min form; none otherwise), a per-row ``base`` (FLCG's coverage by the
private data; 0 otherwise) and a per-candidate ``bonus`` (the additive FLMI's query relevance; 0 otherwise).
With ``cur_i`` the coverage of row ``i`` so far (``base_i`` at the start) the marginal gain of candidate
``j`` is

    gain_j = sum_i max(min(K[i, j], cap_i) - cur_i, 0) + bonus_j

and adding ``j`` raises ``cur_i`` to ``max(cur_i, min(K[i, j], cap_i))`` (clipping ``cur`` at the cap
changes no gain: a row covered up to its cap gives 0 either way).

How the gains are computed
--------------------------
Each term is a float32 difference, as submodlib computes it; the terms of one candidate are summed in
float64 by one fixed reduction, so a candidate's gain is the same number whichever batch computes it, and
it never grows as ``cur`` grows (every step is monotone). That is what lets lazy greedy make exactly the
picks of naive greedy.

- Dense phase: the kernel is read one candidate per row (:func:`candidate_major`: no copy for a
  Fortran-ordered or a symmetric kernel, else a float32 transposed copy) and each candidate's terms are
  summed by NumPy's pairwise sum of a contiguous row.
- Pruned phase: an entry with ``min(K[i, j], cap_i) <= cur_i`` contributes 0 now and forever, since ``cur``
  only grows. After a few picks most entries are such: on the benchmark's kernel (``python
  benchmarks/submodular_fl.py --live-share --no-submodlib --no-apricot``: n = 10,000, clustered
  embeddings) 41% of the entries can still count after 1 pick, 6.4% after 10, 0.19% after 100, 0.05%
  after 1,000. So at picks 1, 2, 4, 8, ... the entries that still count are kept, in CSC order, and the
  rest dropped for good: once from the dense kernel, when a sample of 64 candidates says less than
  :data:`PRUNE_SHARE` of its entries still count, then at every later power of two. A candidate's terms
  are then summed in row order by ``np.bincount``. Dropping zero terms from that sequential sum changes
  no bit, so only the switch from the dense phase changes how gains are summed (``add`` says so; lazy
  greedy then refreshes every bound).

A sparse kernel (missing entries 0, which contribute nothing) starts in the pruned phase.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["PRUNE_SHARE", "PRUNE_START", "CoverageGains", "candidate_major", "is_symmetric"]

#: The first pick count at which entries that can no longer count are dropped (then every power of two).
PRUNE_START = 1
#: The dense kernel is pruned once less than this share of its entries can still count (estimated on a
#: sample of :data:`_PRUNE_SAMPLE` candidates). A kept entry costs 8 bytes (float32 value, int32 row) and
#: several times a dense entry's time to sum, and pruning costs about one pass over every candidate. On
#: the benchmark's kernel (``python benchmarks/submodular_fl.py --repeat 3 --no-submodlib --no-apricot
#: --prune-share S``, 2 busy cores) the greedy took 3.56 s never pruned (S = 0), 3.08 s at 2%, 3.35 s at
#: 5%, 3.97 s at 10% and 10.27 s at 50%.
PRUNE_SHARE = 0.02
_PRUNE_SAMPLE = 64
#: Bytes of the float32 work buffer (the float64 one is twice this); at most :data:`_MAX_BLOCK` candidates.
_BLOCK_BYTES = 1 << 23
_MAX_BLOCK = 128
#: Rows per block when a kernel is transposed or compared with its transpose.
_TILE_ROWS = 512


def is_symmetric(kernel: NDArray[Any]) -> bool:
    """Whether a square array equals its transpose, compared in ``_TILE_ROWS``-square tiles on and above
    the diagonal (stops at the first tile that differs)."""
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        return False
    n = kernel.shape[0]
    for top in range(0, n, _TILE_ROWS):
        for left in range(top, n, _TILE_ROWS):
            upper = kernel[top : top + _TILE_ROWS, left : left + _TILE_ROWS]
            if not np.array_equal(upper, kernel[left : left + _TILE_ROWS, top : top + _TILE_ROWS].T):
                return False
    return True


def candidate_major(kernel: NDArray[Any]) -> NDArray[Any]:
    """The dense kernel with one C-contiguous row per candidate (``K.T``), as the dense phase reads it: a
    view when ``kernel`` is Fortran-ordered, ``kernel`` itself when it is symmetric (a C-ordered float32
    square kernel equal to its transpose, such as a cosine kernel), otherwise a float32 copy made
    ``_TILE_ROWS`` rows at a time (``4 n_rows n_candidates`` bytes, dropped when the entries are pruned)."""
    if kernel.flags.f_contiguous and not kernel.flags.c_contiguous:
        return kernel.T
    if kernel.dtype == np.float32 and kernel.flags.c_contiguous and is_symmetric(kernel):
        return kernel
    n_rows, n_candidates = kernel.shape
    out = np.empty((n_candidates, n_rows), dtype=np.float32)
    for start in range(0, n_rows, _TILE_ROWS):
        np.copyto(out[:, start : start + _TILE_ROWS], kernel[start : start + _TILE_ROWS].T, casting="unsafe")
    return out


class CoverageGains:
    """Marginal gains of the coverage function in the module docstring; the coverage ``cur`` is the state.

    Args:
        kernel: ``(n_rows, n_candidates)``: a dense array of any real dtype, read as float32 and never
            written (see :func:`candidate_major` for when it is copied), or a ``scipy.sparse`` matrix.
            Assumed finite and ``>= 0`` (checked by the caller).
        cap: per-row cap (``n_rows``, float32) or None.
        base: per-row starting coverage (``n_rows``, float32, ``>= 0``) or None for 0.
        bonus: per-candidate modular term (``n_candidates``, float64, ``>= 0``) or None.
    """

    def __init__(
        self,
        kernel: Any,
        *,
        cap: NDArray[np.float32] | None = None,
        base: NDArray[np.float32] | None = None,
        bonus: NDArray[np.float64] | None = None,
    ) -> None:
        self.n_rows, self.n_candidates = kernel.shape
        self._cap = cap
        self._bonus = bonus
        self.cur = np.zeros(self.n_rows, dtype=np.float32) if base is None else base.copy()
        if self._cap is not None:
            np.minimum(self.cur, self._cap, out=self.cur)
        self.n_picked = 0
        self._dense: Any = None
        if sp.issparse(kernel):
            csc = sp.csc_matrix(kernel, dtype=np.float32)
            csc.sum_duplicates()
            csc.sort_indices()
            values = csc.data
            if cap is not None:
                values = np.minimum(values, cap[csc.indices])
            self._set_pruned(np.diff(csc.indptr), csc.indices.astype(np.int32), values.astype(np.float32))
            return
        self._dense = candidate_major(kernel)
        self._block = max(1, min(_MAX_BLOCK, _BLOCK_BYTES // (4 * max(1, self.n_rows))))
        self._terms32 = np.empty((self._block, self.n_rows), dtype=np.float32)
        self._terms64 = np.empty((self._block, self.n_rows), dtype=np.float64)

    @property
    def pruned(self) -> bool:
        """Whether the gains come from the pruned (sparse) entries."""
        return self._dense is None

    # ----------------------------------------------------------------------------------------------------
    # Dense phase

    def _read(self, candidates: NDArray[np.int64] | slice) -> NDArray[np.float32]:
        """``min(K[:, candidates], cap).T`` as float32 rows in the work buffer (a block at most)."""
        count = candidates.stop - candidates.start if isinstance(candidates, slice) else candidates.shape[0]
        out = self._terms32[:count]
        np.copyto(out, self._dense[candidates], casting="unsafe")
        if self._cap is not None:
            np.minimum(out, self._cap, out=out)
        return out

    def _dense_sums(self, rows: NDArray[np.float32]) -> NDArray[np.float64]:
        """Each row's ``sum_i max(rows[i] - cur_i, 0)``: float32 differences widened to float64 (exactly)
        and summed by NumPy's pairwise sum of the contiguous row. ``rows`` (a work buffer) is overwritten."""
        np.subtract(rows, self.cur, out=rows)
        np.maximum(rows, np.float32(0.0), out=rows)
        wide = self._terms64[: rows.shape[0]]
        np.copyto(wide, rows)
        return wide.sum(axis=1)

    def _live_share(self) -> float:
        """The share of the entries of an evenly spread sample of candidates that can still count."""
        sample = np.unique(
            np.linspace(0, self.n_candidates - 1, min(self.n_candidates, _PRUNE_SAMPLE)).astype(np.int64)
        )
        live = 0
        for start in range(0, sample.shape[0], self._block):
            rows = self._read(sample[start : start + self._block])
            live += int(np.count_nonzero(rows > self.cur))
        return live / (sample.shape[0] * max(1, self.n_rows))

    def _prune_dense(self) -> None:
        """Keep the entries ``min(K[i, j], cap_i) > cur_i`` in CSC order and leave the dense phase."""
        counts, rows, values = [], [], []
        for start in range(0, self.n_candidates, self._block):
            block = self._read(slice(start, min(start + self._block, self.n_candidates)))
            live = block > self.cur
            flat = np.flatnonzero(live)
            counts.append(np.count_nonzero(live, axis=1))
            rows.append((flat % self.n_rows).astype(np.int32))
            values.append(block.reshape(-1)[flat])
        self._dense = None
        self._terms32 = self._terms64 = np.zeros((0, 0))
        self._set_pruned(np.concatenate(counts), np.concatenate(rows), np.concatenate(values))

    # ----------------------------------------------------------------------------------------------------
    # Pruned phase

    def _set_pruned(
        self, counts: NDArray[np.integer], rows: NDArray[np.int32], values: NDArray[np.float32]
    ) -> None:
        self._indptr = np.zeros(self.n_candidates + 1, dtype=np.int64)
        np.cumsum(counts, out=self._indptr[1:])
        self._rows = rows
        self._values = values

    def _segments(self) -> NDArray[np.int32]:
        """The candidate of every kept entry."""
        return np.repeat(np.arange(self.n_candidates, dtype=np.int32), np.diff(self._indptr))

    def _prune_sparse(self) -> None:
        keep = self._values > self.cur[self._rows]
        if keep.all():
            return
        column = self._segments()[keep]
        self._rows, self._values = self._rows[keep], self._values[keep]
        self._set_pruned(np.bincount(column, minlength=self.n_candidates), self._rows, self._values)

    def _sparse_sums(
        self, positions: NDArray[np.int64] | slice, segment: NDArray[Any], n: int
    ) -> NDArray[np.float64]:
        """The same sums over the kept entries at ``positions`` (``segment``: their candidate's slot), added
        in row order by ``np.bincount``."""
        terms = self._values[positions] - self.cur[self._rows[positions]]
        np.maximum(terms, np.float32(0.0), out=terms)
        sums = np.bincount(segment, weights=terms.astype(np.float64), minlength=n)
        return sums.astype(np.float64, copy=False)  # bincount gives integers when nothing is kept

    # ----------------------------------------------------------------------------------------------------

    def gains(self, candidates: NDArray[np.int64]) -> NDArray[np.float64]:
        """The marginal gains (float64) of ``candidates`` (distinct indices) given the current coverage."""
        n = candidates.shape[0]
        if self.pruned:
            starts = self._indptr[candidates]
            lengths = self._indptr[candidates + 1] - starts
            segment = np.repeat(np.arange(n), lengths)
            offsets = np.cumsum(lengths) - lengths
            positions = np.arange(segment.shape[0]) - offsets[segment] + starts[segment]
            out = self._sparse_sums(positions, segment, n)
        else:
            out = np.empty(n)
            for start in range(0, n, self._block):
                chunk = candidates[start : start + self._block]
                out[start : start + chunk.shape[0]] = self._dense_sums(self._read(chunk))
        if self._bonus is not None:
            out += self._bonus[candidates]
        return out

    def all_gains(self) -> NDArray[np.float64]:
        """The marginal gains of every candidate (the same numbers :meth:`gains` gives for each)."""
        if self.pruned:
            out = self._sparse_sums(slice(None), self._segments(), self.n_candidates)
        else:
            out = np.empty(self.n_candidates)
            for start in range(0, self.n_candidates, self._block):
                stop = min(start + self._block, self.n_candidates)
                out[start:stop] = self._dense_sums(self._read(slice(start, stop)))
        if self._bonus is not None:
            out += self._bonus
        return out

    def add(self, j: int) -> bool:
        """Add candidate ``j``. True when the gains are summed differently from now on (the switch to the
        pruned phase), so that gains computed before are no longer upper bounds to the last bit."""
        if self.pruned:
            lo, hi = self._indptr[j], self._indptr[j + 1]
            rows = self._rows[lo:hi]
            self.cur[rows] = np.maximum(self.cur[rows], self._values[lo:hi])
        else:
            np.maximum(self.cur, self._read(np.array([j]))[0], out=self.cur)
        self.n_picked += 1
        t = self.n_picked
        if t < PRUNE_START or t & (t - 1):
            return False
        if self.pruned:
            self._prune_sparse()
            return False
        if self._live_share() < PRUNE_SHARE:
            self._prune_dense()
            return True
        return False
