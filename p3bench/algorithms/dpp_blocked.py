"""Blocked fast greedy MAP for a DPP whose kernel is computed in column blocks, array in, array out.

The fast greedy MAP of Chen, Zhang & Zhou (NeurIPS 2018, arXiv 1709.05135, Alg. 1) is the partial Cholesky
decomposition of ``L`` with diagonal (greedy) pivoting: after ``t`` picks, ``d_i^2 = L_ii - ||c_i||^2`` is
the diagonal of the Schur complement and the next pick is its argmax. Written as in the paper it costs one
``O(N t)`` matrix-vector product per pick, ``O(N k^2)`` in all, at matrix-vector speed.

This module computes the same picks with matrix-matrix products, as blocked (left-looking) Cholesky
factorisations do (LAPACK's pivoted ``?pstrf`` blocks the same way), which matters once ``k`` is in the
thousands (a full-rank kernel, where the budget may exceed the embedding dimension):

- **Lazy pivoting.** ``d_i^2`` only decreases, so values from the start of a block are upper bounds.
  Within a block of up to ``block`` picks, exact gains are kept only for a window of the items with the
  largest bounds, grown until its best exact gain beats every bound outside it (the argmax is exact; ties
  go to the lowest index). The window's own Schur complement ``A = L_WW - C_W C_W^T`` is formed once per
  block (and extended when the window grows) with one matrix product, so each pick in the block costs
  ``O(|W| p)`` for its ``p`` pending picks.
- **Blocked update.** At the end of a block the kernel columns of its ``p`` picks ``J`` are computed for
  every live item at once, ``R = L[:, J] - C C_J^T``, and the block's factor columns are
  ``E = R T^{-T}``, ``T`` being the lower-triangular factor of the picks among themselves; then
  ``d_i^2 -= ||E_i||^2``. That is ``O(N t p)`` in one matrix product instead of ``p`` matrix-vector
  products.
- **Compaction.** Rows of the factor are kept only for items that can still be picked; once a quarter of
  the stored rows belong to picked or forced items they are dropped, so later blocks shrink with the
  candidate set (about 40% less work when ``k`` is two thirds of ``N``).

Forced ("preselected") items are added first, in order, a block at a time through the same update; one
whose conditional gain is below ``eps`` (in the span of those before it, e.g. a duplicate) is skipped, as
in :func:`p3bench.algorithms.dpp.greedy_map_rows`. The rest is then exactly the greedy MAP of the
conditional DPP (the Schur complement).

Precision. The factor is held in ``dtype`` (float32 by default: half the memory and about twice the
speed of float64); the gains ``d_i^2`` are accumulated in float64, and a gain within ``16`` machine epsilons
of ``dtype`` of the item's own ``L_ii`` counts as zero (the item is in the span of the picks: without this
an exact duplicate keeps a float32 rounding residual of about ``1e-8 L_ii`` and could be picked before the
greedy stops). In float64 the picks are those of
:func:`~p3bench.algorithms.dpp.greedy_map` (up to rounding on near-ties); in float32 they agree except
where two gains are within float32 rounding of each other (see ``tests/test_dpp_blocked.py``).

Cost: ``O(N (|forced| + k)^2 / 2)`` multiply-adds in matrix products plus the kernel columns
(``O(N (|forced| + k) d)`` for an RBF kernel on ``d``-dimensional features), ``N (|forced| + k)`` numbers
of memory for the factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from scipy.linalg import solve_triangular

from p3bench.algorithms.dpp_common import DPPResult, check_greedy_inputs, one_blas_thread
from p3bench.utils.progress import progress_bar

__all__ = ["ColumnsFn", "greedy_map_blocked"]

#: ``columns(rows, cols)``: the kernel block ``L[rows][:, cols]`` (``rows=None``: every item), any float dtype.
ColumnsFn = Callable[[NDArray[np.int64] | None, NDArray[np.int64]], NDArray[np.floating]]


class _Factor:
    """The partial Cholesky factor ``C`` (rows: live items, columns: steps so far) with compaction."""

    def __init__(self, n: int, steps: int, dtype: np.dtype) -> None:
        self.data = np.empty((n, max(steps, 1)), dtype=dtype)
        self.items = np.arange(n)  # the item of each stored row
        self.slot = np.arange(n)  # the stored row of each item (-1: dropped)
        self.rows = n  # stored rows
        self.dead = 0  # stored rows of items that can no longer be picked
        self.t = 0  # steps (columns) so far

    def of(self, items: NDArray[np.int64]) -> NDArray[np.floating]:
        """``C[items, :t]`` (a copy)."""
        return self.data[self.slot[items], : self.t]

    @property
    def live(self) -> NDArray[np.floating]:
        return self.data[: self.rows, : self.t]

    def compact(self, alive: NDArray[np.bool_]) -> None:
        """Drop the stored rows of items not ``alive``. Rows move up only, so a chunked in-place copy is
        safe and needs no second copy of the factor."""
        keep = np.flatnonzero(alive[self.items[: self.rows]])
        chunk = 1024
        for start in range(0, keep.size, chunk):
            src = keep[start : start + chunk]
            self.data[start : start + src.size, : self.t] = self.data[src, : self.t]
        self.slot[self.items[: self.rows]] = -1
        self.items[: keep.size] = self.items[keep]
        self.slot[self.items[: keep.size]] = np.arange(keep.size)
        self.rows = keep.size
        self.dead = 0


def greedy_map_blocked(
    diag: ArrayLike,
    columns: ColumnsFn,
    k: int,
    *,
    n_candidates: int | None = None,
    forced: Sequence[int] | NDArray[np.integer] = (),
    eps: float = 1e-10,
    block: int = 64,
    dtype: DTypeLike = np.float32,
    progress: bool = False,
) -> DPPResult:
    """Fast greedy MAP (arXiv 1709.05135) with blocked updates, on a kernel given by its diagonal and a
    column-block callback (see the module docstring).

    Args:
        diag: ``L_ii`` for all ``n`` items.
        columns: ``columns(rows, cols)`` returns ``L[rows][:, cols]`` (``rows=None``: all ``n`` items);
            it must agree with ``diag`` on the diagonal.
        k: number of candidates to pick.
        n_candidates: items ``0 .. n_candidates-1`` are candidates; the rest must all be in ``forced``.
            Default: all ``n``.
        forced: items added first, in this order, to condition on; not returned nor counted in ``k``.
        eps: stop when the best gain ``d_i^2`` is below ``eps`` (``stopped_early``).
        block: picks between two full updates (speed only); the window of exact gains grows to at most
            ``8 * block`` items before a block is cut short.
        dtype: of the factor (float32 or float64); the gains are accumulated in float64.
        progress: a progress bar over the forced items and the picks, updated once per block.
    """
    d2, n, n_cand, forced_idx, k, eps = check_greedy_inputs(diag, k, n_candidates, forced, eps)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block={block!r} is invalid: expected an integer >= 1")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype={dt} is not supported: expected float32 or float64")
    block = int(block)
    max_window = 8 * block

    # A residual within rounding of the item's own diagonal is zero: the item is in the span of the picks
    # (an exact duplicate, say). In float32 such residuals are about 1e-8 instead of 0.
    floor = 16 * float(np.finfo(dt).eps)
    diag0 = d2.copy()

    def clamp(gains: NDArray[np.float64], items: NDArray[np.int64]) -> NDArray[np.float64]:
        return np.where(gains > floor * diag0[items], gains, np.minimum(gains, 0.0))

    factor = _Factor(n, np.unique(forced_idx).size + k, dt)
    alive = np.ones(n, dtype=bool)  # can still be picked (or forced)

    def schur(rows: NDArray[np.int64] | None, cols: NDArray[np.int64]) -> NDArray[np.floating]:
        """``L[rows, cols] - C[rows] C[cols]^T`` in the factor's dtype (``rows=None``: the stored rows)."""
        out = np.asarray(columns(factor.items[: factor.rows] if rows is None else rows, cols), dtype=dt)
        if factor.t:
            out -= (factor.live if rows is None else factor.of(rows)) @ factor.of(cols).T
        return out

    def commit(picked: NDArray[np.int64], tri: NDArray[np.float64]) -> None:
        """Append the factor columns of ``picked`` (lower-triangular ``tri`` among themselves) for all."""
        p = picked.size
        e = solve_triangular(tri.astype(dt), schur(None, picked).T, lower=True, check_finite=False).T
        factor.data[: factor.rows, factor.t : factor.t + p] = e
        rows = factor.items[: factor.rows]
        d2[rows] -= np.einsum("ij,ij->i", e, e, dtype=np.float64)
        d2[rows] = clamp(d2[rows], rows)
        factor.t += p
        alive[picked] = False
        factor.dead += p
        d2[picked] = -math.inf
        if 4 * factor.dead >= factor.rows:
            factor.compact(alive)

    def resolved(gain: float, size: int, order: NDArray[np.int64], pending_picks: int) -> bool:
        """Whether the window's best exact ``gain`` is the argmax over all live items: it beats the upper
        bound of every item outside the window (with no pick pending the bounds are exact, and an equal
        bound outside belongs to a higher index)."""
        if size == order.size:
            return True
        bound = float(d2[order[size]])
        return gain > bound or (pending_picks == 0 and gain >= bound)

    total = forced_idx.size + k
    # One BLAS thread: most products are small, where threads only add synchronisation, and on two busy
    # cores even the large ones ran no faster with two (the whole greedy took 1.3-4x longer).
    with (
        one_blas_thread(),
        progress_bar(total=total, desc="DPP greedy", unit="item", enabled=progress) as bar,
    ):
        # Forced items: a block at a time, a small sequential Cholesky of their Schur complement.
        for start in range(0, forced_idx.size, block):
            chunk = forced_idx[start : start + block]
            # not yet added (a repeated item conditions nothing more), first occurrences in order
            fresh = np.asarray(list(dict.fromkeys(chunk[alive[chunk]].tolist())), dtype=np.int64)
            if fresh.size:
                a = schur(fresh, fresh).astype(np.float64)
                kept: list[int] = []
                tri = np.zeros((fresh.size, fresh.size))
                for pos in range(fresh.size):
                    m = len(kept)
                    e = solve_triangular(tri[:m, :m], a[pos, kept], lower=True) if m else np.zeros(0)
                    gain = float(a[pos, pos] - e @ e)
                    if gain >= eps and gain > floor * diag0[fresh[pos]]:
                        tri[m, :m] = e
                        tri[m, m] = math.sqrt(gain)
                        kept.append(pos)
                dropped = np.setdiff1d(fresh, fresh[kept])
                alive[dropped] = False
                d2[dropped] = -math.inf
                if kept:
                    commit(fresh[kept], tri[: len(kept), : len(kept)])
            bar.update(chunk.size)
        alive[n_cand:] = False
        d2[~alive] = -math.inf
        factor.compact(alive)  # only candidates are stored from here on

        picks: list[int] = []
        gains: list[float] = []
        stopped = False
        shown = forced_idx.size  # items counted on the bar
        window0 = 2 * block
        while len(picks) < k:
            # Start of a block: d2 is exact for every live item. Ties: the lowest index first.
            live = np.flatnonzero(alive)
            n_live = live.size
            order = live[np.argsort(-d2[live], kind="stable")]
            size = min(window0, n_live)
            window = order[:size]
            a = schur(window, window)
            win_gain = d2[window].copy()
            pending = np.zeros((size, block), dtype=dt)  # the block's factor entries of the window
            tri = np.zeros((block, block))
            picked_pos: list[int] = []
            while len(picks) < k:
                # Exact argmax: grow the window until its best exact gain beats every bound outside it.
                pos = int(np.argmax(win_gain))
                gain = float(win_gain[pos])
                while not resolved(gain, size, order, len(picked_pos)):
                    new_size = min(2 * size, n_live)
                    if new_size > max_window and picked_pos:
                        break  # cut the block short: a full update is cheaper than a huge window
                    grown = order[:new_size]
                    new = order[size:new_size]
                    cross = schur(grown, new)
                    a_new = np.empty((new_size, new_size), dtype=dt)
                    a_new[:size, :size] = a
                    a_new[:, size:] = cross
                    a_new[size:, :size] = cross[:size].T
                    a = a_new
                    new_pending = np.zeros((new.size, block), dtype=dt)
                    new_gain = d2[new].copy()
                    p = len(picked_pos)
                    if p:
                        rhs = a[size:, picked_pos].T
                        e_new = solve_triangular(
                            tri[:p, :p].astype(dt), rhs, lower=True, check_finite=False
                        ).T
                        new_pending[:, :p] = e_new
                        new_gain -= np.einsum("ij,ij->i", e_new, e_new, dtype=np.float64)
                        new_gain = clamp(new_gain, new)
                    window = grown
                    win_gain = np.concatenate([win_gain, new_gain])
                    pending = np.concatenate([pending, new_pending])
                    size = new_size
                    pos = int(np.argmax(win_gain))
                    gain = float(win_gain[pos])
                if not resolved(gain, size, order, len(picked_pos)):
                    break  # the window limit was hit: commit the pending picks, start a new block
                ties = np.flatnonzero(win_gain == gain)
                if ties.size > 1:
                    pos = int(ties[np.argmin(window[ties])])
                if not gain >= eps:
                    stopped = True
                    break
                j = int(window[pos])
                picks.append(j)
                gains.append(gain)
                if len(picks) == k:
                    break
                p = len(picked_pos)
                r = a[:, pos].astype(dt, copy=True)
                if p:
                    r -= np.einsum("ij,j->i", pending[:, :p], pending[pos, :p])
                root = math.sqrt(gain)
                e = r / dt.type(root)
                tri[p, :p] = pending[pos, :p]
                tri[p, p] = root
                pending[:, p] = e
                win_gain -= np.square(e, dtype=np.float64)
                win_gain = clamp(win_gain, window)
                win_gain[pos] = -math.inf
                picked_pos.append(pos)
                if len(picked_pos) == block or 4 * size > n_live:
                    break
            bar.update(forced_idx.size + len(picks) - shown)  # once per block, not per pick
            shown = forced_idx.size + len(picks)
            if stopped or len(picks) == k:
                break
            p = len(picked_pos)
            commit(window[picked_pos], tri[:p, :p])
            window0 = max(2 * block, size // 2)
    return DPPResult(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), stopped)
