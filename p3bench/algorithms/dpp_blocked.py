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
- **Setting aside** (``set_aside``, on from :data:`SET_ASIDE_FROM` candidates). The update of item ``i`` matters only while ``i`` could still be
  the argmax, and the gains picked only decrease: an item whose bound ``d_i^2`` is below the gain of the
  last pick will never be picked. That gain is not known in advance, so it is predicted from the trend of
  the gains so far (a power law through the last tenth of the picks, times :data:`LEVEL_MARGIN`), and
  items below the prediction stop being updated (their rows are parked, :mod:`p3bench.algorithms.dpp_factor`).
  The prediction decides the speed only: before a pick is taken its gain must beat every set-aside bound,
  and set-aside items whose bound comes within the last block's fall of the best gain are brought up to
  date (the steps they missed, in one matrix product and one triangular solve) and compete again.
  Minoux's lazy greedy does the same for one item at a time. The catch-up rounds differently from the
  block updates, so two gains equal but for rounding (exact duplicates) may be taken in the other order;
  otherwise the picks are the same. With the RBF kernel most items fall below the last gain long before
  the end: at ``N = 100,000``, ``k = 10,000`` the update work falls to about a fifth
  (``benchmarks/README.md``).
- **Compaction.** Rows of the factor are kept only for items that can still be picked and are not set
  aside; once an eighth of the stored rows belong to picked, forced or set-aside items they are dropped,
  so later blocks shrink with the candidate set.

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

Cost: at most ``O(N (|forced| + k)^2 / 2)`` multiply-adds in matrix products (setting aside removes the
rows of items from the point where they fall below the last pick's gain) plus the kernel columns
(``O(N (|forced| + k) d)`` for an RBF kernel on ``d``-dimensional features); memory: ``N (|forced| + k)``
numbers for the factor, and with setting aside up to as much again for the parked rows (copies; the
factor's rows stay allocated), ``k (|forced| + k)`` for the picks' own rows (half of it written), and
``RBFColumns``' copy of the stored rows' features (``N d``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from scipy.linalg import solve_triangular

from p3bench.algorithms.dpp_common import DPPResult, check_greedy_inputs, one_blas_thread
from p3bench.algorithms.dpp_factor import Factor, SetAside
from p3bench.utils.progress import progress_bar

__all__ = ["ColumnsFn", "greedy_map_blocked"]

#: The set-aside level is the last pick's gain extrapolated by the trend of the gains over the last
#: ``1 - TREND_SPAN`` of the picks so far, ...
TREND_SPAN = 0.9
#: ... times this margin: an item set aside above the last pick's gain is brought back late, after a long
#: stretch of steps to catch up on, while one set aside a little too low is only updated a little longer.
#: Tried at N = 100,000, k = 10,000 (``benchmarks/growth.py --point dpp_rbf_blocked``): at 1.0 thousands
#: of items came back near the end and the greedy was slower than at 0.95; at 0.9 none came back but more
#: rows stayed updated.
LEVEL_MARGIN = 0.95
#: Nothing is set aside before ``k / SET_ASIDE_AFTER`` picks (the gains' early trend does not last).
SET_ASIDE_AFTER = 8
#: Set-aside items come back when their bound is within the last block's fall of the best gain, but never
#: earlier than at this fraction of it.
BRING_BACK_FLOOR = 0.5
#: ``set_aside`` is on by default from this many candidates: on smaller pools the catch-up of items brought
#: back costs about what setting aside saves (the growth benchmark's data at k = N / 10: a little slower at
#: 6,000, even at 10,000, faster from 20,000).
SET_ASIDE_FROM = 10_000
#: At least this many blocks' worth of candidates stay stored (so that windows stay a small part of them).
KEEP_STORED = 32
#: The factor is compacted once ``1 / COMPACT_AT`` of its stored rows belong to items picked, forced or set
#: aside (updated for nothing).
COMPACT_AT = 8

#: ``columns(rows, cols)``: the kernel block ``L[rows][:, cols]`` (``rows=None``: every item), any float dtype.
ColumnsFn = Callable[[NDArray[np.int64] | None, NDArray[np.int64]], NDArray[np.floating]]


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
    set_aside: bool | None = None,
    keep_stored: int | None = None,
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
        set_aside: stop updating the rows of items whose gain bound is below the predicted gain of the
            last pick, and bring them up to date when the best gain comes near their bound (speed only;
            see the module docstring). Default: from :data:`SET_ASIDE_FROM` candidates on.
        keep_stored: at least this many candidates stay stored, never set aside (default
            ``KEEP_STORED * block``, so that the window of exact gains stays a small part of them).
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
    if keep_stored is None:
        keep_stored = KEEP_STORED * block
    if set_aside is None:
        set_aside = n_cand >= SET_ASIDE_FROM
    if isinstance(keep_stored, bool) or not isinstance(keep_stored, (int, np.integer)) or keep_stored < 1:
        raise ValueError(f"keep_stored={keep_stored!r} is invalid: expected an integer >= 1")

    # A residual within rounding of the item's own diagonal is zero: the item is in the span of the picks
    # (an exact duplicate, say). In float32 such residuals are about 1e-8 instead of 0.
    floor = 16 * float(np.finfo(dt).eps)
    diag0 = d2.copy()

    def clamp(gains: NDArray[np.float64], items: NDArray[np.int64]) -> NDArray[np.float64]:
        return np.where(gains > floor * diag0[items], gains, np.minimum(gains, 0.0))

    factor = Factor(n, np.unique(forced_idx).size + k, dt)
    alive = np.ones(n, dtype=bool)  # can still be picked (or forced)
    aside = SetAside(n)
    work = dict.fromkeys(
        (
            "update_multiply_adds",
            "catch_up_multiply_adds",
            "all_rows_multiply_adds",
            "items_set_aside",
            "items_brought_back",
        ),
        0,
    )

    def schur(rows: NDArray[np.int64] | None, cols: NDArray[np.int64]) -> NDArray[np.floating]:
        """``L[rows, cols] - C[rows] C[cols]^T`` in the factor's dtype (``rows=None``: the stored rows)."""
        out = np.asarray(columns(factor.items[: factor.rows] if rows is None else rows, cols), dtype=dt)
        if factor.t:
            out -= (factor.live if rows is None else factor.of(rows)) @ factor.of(cols).T
        return out

    def commit(picked: NDArray[np.int64], tri: NDArray[np.float64]) -> None:
        """Append the factor columns of ``picked`` (lower-triangular ``tri`` among themselves) for all."""
        work["update_multiply_adds"] += factor.rows * factor.t * picked.size
        work["all_rows_multiply_adds"] += int(alive.sum()) * factor.t * picked.size
        e = solve_triangular(tri.astype(dt), schur(None, picked).T, lower=True, check_finite=False).T
        factor.append(picked, tri, e)
        rows = factor.items[: factor.rows]
        d2[rows] -= np.einsum("ij,ij->i", e, e, dtype=np.float64)
        d2[rows] = clamp(d2[rows], rows)
        alive[picked] = False
        d2[picked] = -math.inf
        compact_if_wasteful()

    def compact_if_wasteful() -> None:
        """Once ``1 / COMPACT_AT`` of the stored rows belong to items picked, forced or set aside, drop them (rows
        of set-aside items are parked first: updates to them stop there)."""
        stored = factor.items[: factor.rows]
        idle = ~alive[stored] | aside.mask[stored]
        if COMPACT_AT * int(idle.sum()) < factor.rows:
            return
        parked = stored[alive[stored] & aside.mask[stored]]
        if parked.size:
            aside.park(parked, factor)
        factor.compact(alive & ~aside.mask)

    def resolved(gain: float, size: int, order: NDArray[np.int64], pending_picks: int) -> bool:
        """Whether the window's best exact ``gain`` is the argmax over all live items: it beats the upper
        bound of every item outside the window (with no pick pending the bounds are exact, and an equal
        bound outside belongs to a higher index)."""
        if size == order.size:
            return True
        bound = float(d2[order[size]])
        return gain > bound or (pending_picks == 0 and gain >= bound)

    aside_bound = -math.inf  # the largest gain bound among the items set aside

    def block_ratio(gains: list[float]) -> float:
        """How far the gain fell over the last block of picks (1 before one): set-aside items whose bound is
        within this ratio of the best gain come back together, so that the next block is not cut short."""
        if len(gains) <= block or gains[-1] <= 0:
            return 1.0
        return min(1.0, max(BRING_BACK_FLOOR, gains[-1] / gains[-1 - block]))

    def set_aside_level(best: float, gains: list[float], ratio: float) -> float:
        """The gain below which items are set aside: the last pick's gain as extrapolated from the recent
        picks (a power law through the gains at :data:`TREND_SPAN` of the picks so far and now), kept below
        the bring-back level. A level above the last pick's gain only brings items back, a level far below
        it keeps them updated: its accuracy decides the speed, never the picks."""
        m = len(gains)
        start = int(TREND_SPAN * m)
        if m < max(2 * block, k // SET_ASIDE_AFTER) or start < 1 or gains[start - 1] <= 0 or gains[-1] <= 0:
            return -math.inf
        alpha = math.log(gains[start - 1] / gains[-1]) / math.log(m / start)
        return min(LEVEL_MARGIN * best * (m / k) ** min(max(alpha, 0.0), 4.0), ratio**2 * best)

    def settle(gains: list[float]) -> None:
        """At the start of a block (every stored gain exact): bring back every set-aside item whose bound
        is within the last block's fall of the best gain (repeated, as those can raise the best), then set
        aside the stored items below :func:`set_aside_level`, keeping ``keep_stored`` stored."""
        nonlocal aside_bound
        ratio = block_ratio(gains)
        while aside.mask.any():
            stored = alive & ~aside.mask
            best = float(d2[stored].max()) if stored.any() else float(d2[aside.mask].max())
            level = best * ratio if best > 0 else best
            chosen = aside.mask & (d2 >= level)
            if not chosen.any():
                break
            parked_back, multiply_adds = aside.bring_back(chosen, factor, columns, d2, clamp)
            work["items_brought_back"] += parked_back
            work["catch_up_multiply_adds"] += multiply_adds
        stored_items = np.flatnonzero(alive & ~aside.mask)
        best = float(d2[stored_items].max()) if stored_items.size else -math.inf
        if set_aside and best > 0:
            low = stored_items[d2[stored_items] < set_aside_level(best, gains, ratio)]
            room = stored_items.size - keep_stored
            if low.size > room:
                low = low[np.argpartition(d2[low], room - 1)[:room]] if room > 0 else low[:0]
            if low.size:
                aside.mask[low] = True
                work["items_set_aside"] += low.size
                compact_if_wasteful()
        aside_bound = float(d2[aside.mask].max()) if aside.mask.any() else -math.inf

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
        if set_aside:
            factor.keep_steps(factor.t + k)

        picks: list[int] = []
        gains: list[float] = []
        stopped = False
        shown = forced_idx.size  # items counted on the bar
        window0 = 2 * block
        while len(picks) < k:
            # Start of a block: d2 is exact for every live item. Ties: the lowest index first.
            settle(gains)
            live = np.flatnonzero(alive & ~aside.mask)
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
                if gain <= aside_bound:
                    break  # an item set aside may beat it: commit, bring it back, start a new block
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
            if p:
                commit(window[picked_pos], tri[:p, :p])
            window0 = max(2 * block, size // 2)
    return DPPResult(
        np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), stopped, work=work
    )
