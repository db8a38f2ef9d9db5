"""A full-rank DPP kernel for budgets beyond the embedding dimension: the ``rbf_blocked`` kernel of
:func:`p3bench.algorithms.dpp.dpp_select`.

Why. P3 (arXiv 2408.05541) picks with the kernel ``L = diag(q) S diag(q)``. With the cosine similarity of
``d``-dimensional embeddings, ``S = F F^T`` has rank ``d`` (384 for MiniLM); a ridge makes ``L`` full rank,
but past ``d`` picks every candidate's log-det gain is ``log q_i^2 + log(ridge + r_i)`` with a residual
``r_i`` of order ``ridge * d / t``, so the greedy ranks by quality alone: at ``k = 5,000`` of 7,500 admitted
it picks almost exactly the ``k`` easiest (``benchmarks/dpp_diversity.py``). The public P3 code picks 1,000
a round with a 7B model's hidden states (thousands of dimensions), below the rank.

What. ``S_ij = exp(-||f_i - f_j||^2 / (2 h^2))`` on the L2-normalised embeddings (for unit vectors
``exp((cos_ij - 1) / h^2)``: every power of the cosine, so full rank), plus a ridge on the diagonal
(:data:`RBF_BLOCKED_RIDGE` unless given), with ``h`` = :data:`RBF_BLOCKED_BANDWIDTH_SCALE` times the
median pairwise distance (:func:`~p3bench.algorithms.dpp.rbf_bandwidth`) unless given. Its greedy is
:func:`p3bench.algorithms.dpp_blocked.greedy_map_blocked` (blocked partial Cholesky, kernel columns
computed a block at a time in float32): 0.7-1.3 s for ``k = 1,000`` of 10,000 candidates and 3-8 s for
``k = 5,000`` of 7,500 on two busy cores, where the greedy written row at a time takes 18 s and 100 s
(``benchmarks/dpp_greedy.py``).

Choice. Measured on MiniLM embeddings of the synthetic_math pool with likelihood scores of a briefly
trained model (``benchmarks/dpp_diversity.py``; tables in ``benchmarks/README.md``): at every budget the
bench runs, this kernel's pick has a lower mean pairwise cosine and a higher cosine log-det than both the
top-k by quality and a random subset, overlaps the top-k far less than the cosine kernel's pick (0.34
against 0.58 at 1,000 of 10,000, 0.68 against 0.98 at 5,000 of 7,500; a random subset: 0.10 and 0.67),
picks almost none of the pool's planted near-duplicate pairs, and leans easier than random (except at
3,000 of 4,000, where it matches it). The public code's restarts (``fill="restart"``) are diverse by
cosine but forget earlier picks and pick near-duplicate pairs as often as random. Random Fourier features of the same kernel (Rahimi & Recht 2007) need more
features than picks, which at ``k = 5,000`` costs more than the exact kernel; a k-nearest-neighbour
sparsified kernel is not positive semi-definite in general (no DPP); a quality exponent on the cosine
kernel (the trade-off ``theta`` of arXiv 1709.05135, Sec. 4) must be retuned for every ``k / d``; a
partitioned greedy is diverse within parts only. Departure from P3: the similarity (the paper's and the
public code's is the cosine); the quality term is the same.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from p3bench.algorithms.dpp_blocked import greedy_map_blocked
from p3bench.algorithms.dpp_common import DPPResult, as_matrix, normalise_rows, rbf_bandwidth

__all__ = [
    "RBF_BLOCKED_BANDWIDTH_SCALE",
    "RBF_BLOCKED_RIDGE",
    "RBFColumns",
    "rbf_blocked_bandwidth",
    "rbf_blocked_greedy",
]

#: The default ``rbf_blocked`` bandwidth is this times the median pairwise distance, and its default ridge
#: (against 1 and 3 x and a ridge of 1e-3 in ``benchmarks/dpp_diversity.py``: at 1 x the pick's cosine
#: log-det falls below a random subset's at ``k = 1,000`` of 10,000; at 3 x the later gains shrink towards
#: float32 rounding; a ridge of 1e-3 is a quality-only term as large as the kernel's own residuals after a
#: few thousand picks, which brings back part of the top-k overlap).
RBF_BLOCKED_BANDWIDTH_SCALE = 2.0
RBF_BLOCKED_RIDGE = 1e-4
#: ``RBFColumns`` keeps the gathered features of the last call with at least this many rows (the greedy asks
#: for the same stored rows block after block until its factor is next compacted).
GATHER_CACHE_ROWS = 4096


class RBFColumns:
    """Blocks of ``L = diag(q) (S + ridge I) diag(q)``, ``S_ij = exp(-||x_i - x_j||^2 / (2 h^2))``, computed
    on demand in ``dtype``: ``cols(rows, cols)`` is ``L[rows][:, cols]`` (``rows=None``: all rows)."""

    def __init__(
        self,
        X: NDArray[np.floating],
        q: NDArray[np.floating],
        *,
        ridge: float,
        bandwidth: float,
        dtype: DTypeLike = np.float32,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.sq = np.einsum("ij,ij->i", self.X, self.X)
        self.q = np.asarray(q, dtype=self.dtype)
        self.ridge = float(ridge)
        self.inv_h2 = self.dtype.type(1.0 / bandwidth**2)
        self.diagonal = np.asarray(q, dtype=np.float64) ** 2 * (1.0 + self.ridge)
        # the features of the last large set of rows asked for, kept for the next call with the same rows
        self._rows: NDArray[np.int64] | None = None
        self._gathered: tuple[NDArray[np.floating], ...] = ()

    def __call__(self, rows: NDArray[np.int64] | None, cols: NDArray[np.int64]) -> NDArray[np.floating]:
        span = _contiguous(rows, self.X.shape[0])
        if span is not None:  # a run of consecutive items (all of them before any is dropped): views, no copy
            Xr, sr, qr = self.X[span], self.sq[span], self.q[span]
        elif self._rows is not None and rows.size == self._rows.size and np.array_equal(rows, self._rows):
            Xr, sr, qr = self._gathered  # the same rows as the last large call (the greedy's stored rows)
        else:
            Xr, sr, qr = self.X[rows], self.sq[rows], self.q[rows]
            if rows.size >= GATHER_CACHE_ROWS:
                self._rows, self._gathered = rows.copy(), (Xr, sr, qr)
        out = Xr @ self.X[cols].T  # -||x_i - x_j||^2 / 2 = <x_i, x_j> - |x_i|^2 / 2 - |x_j|^2 / 2
        out -= 0.5 * sr[:, None]
        out -= 0.5 * self.sq[cols][None, :]
        np.minimum(out, 0.0, out=out)
        out *= self.inv_h2  # -||x_i - x_j||^2 / (2 h^2)
        np.exp(out, out=out)
        out *= qr[:, None]
        out *= self.q[cols][None, :]
        # the diagonal exactly (no rounding of a zero distance), ridge included
        if span is not None:
            c = np.flatnonzero((cols >= span.start) & (cols < span.stop))
            out[cols[c] - span.start, c] = self.diagonal[cols[c]]
        else:
            r, c = np.nonzero(rows[:, None] == cols[None, :])
            out[r, c] = self.diagonal[rows[r]]
        return out


def _contiguous(rows: NDArray[np.int64] | None, n: int) -> slice | None:
    """``rows`` as a slice when it is ``None`` (every row) or the consecutive items ``a, a+1, ..., b-1``
    (the greedy's stored rows until it first drops picked ones), else ``None``. Reading those rows as a view
    instead of gathering a copy of them saves a copy of the features per kernel block; the values and the
    products are the same."""
    if rows is None:
        return slice(0, n)
    if rows.size == 0 or int(rows[-1]) - int(rows[0]) != rows.size - 1:
        return None
    if rows.size > 1 and not bool(np.all(np.diff(rows) == 1)):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1)


def rbf_blocked_bandwidth(features: ArrayLike, *, scale: float = RBF_BLOCKED_BANDWIDTH_SCALE) -> float:
    """The default ``rbf_blocked`` bandwidth: ``scale`` times :func:`rbf_bandwidth` of the L2-normalised
    ``features`` (the median pairwise distance of a seeded sample)."""
    return float(scale) * rbf_bandwidth(normalise_rows(as_matrix(features, "features")))


def rbf_blocked_greedy(
    X: NDArray[np.float64],
    q: NDArray[np.float64],
    k: int,
    *,
    ridge: float,
    bandwidth: float,
    P: NDArray[np.float64],
    qp: NDArray[np.float64],
    eps: float,
    dtype: DTypeLike = np.float32,
    progress: bool = False,
) -> DPPResult:
    """Greedy MAP on the RBF kernel of ``X`` (candidates) with the preselected rows ``P`` forced first,
    by :func:`greedy_map_blocked`. Inputs are checked by :func:`~p3bench.algorithms.dpp.dpp_select`."""
    n = X.shape[0]
    Z = np.concatenate([X, P]) if P.shape[0] else X
    qz = np.concatenate([q, qp]) if P.shape[0] else q
    kernel = RBFColumns(Z, qz, ridge=ridge, bandwidth=bandwidth, dtype=dtype)
    return greedy_map_blocked(
        kernel.diagonal,
        kernel,
        k,
        n_candidates=n,
        forced=np.arange(n, Z.shape[0]),
        eps=eps,
        dtype=dtype,
        progress=progress,
    )
