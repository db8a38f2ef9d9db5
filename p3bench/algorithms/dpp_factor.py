"""The partial Cholesky factor of the blocked DPP greedy (:mod:`p3bench.algorithms.dpp_blocked`), and the
rows it sets aside.

``Factor`` holds ``C`` (one row per item still in play, one column per step: a forced item or a pick), the
item of each step, and, once rows may be set aside, the factor rows of the steps themselves from then on
(lower-triangular, ``steps[s, s] = sqrt(gain_s)``).

``SetAside`` holds rows the greedy has stopped updating: items whose gain bound ``d_i^2`` is far below the
current best gain. ``d_i^2`` only decreases, so a set-aside item's stored ``d_i^2`` stays an upper bound of
its gain; while it is below the best gain the item cannot be the argmax and its row is not needed. When the
best gain falls to its bound, the row is brought up to date from ``steps`` (the columns it missed, in one
matrix product and one triangular solve, the same arithmetic the per-block updates would have done) and
goes back into the factor. An item whose bound stays below the last pick's gain is never updated again:
with the RBF kernel and ``k = N / 10`` most items are in that case after a fraction of the picks, which
is where the saving comes from (``benchmarks/README.md``, DPP at N = 100,000).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular

__all__ = ["Factor", "SetAside"]

#: Rows brought up to date per matrix product (bounds the temporary ``rows x missed steps`` block; below
#: ``dpp_kernels.GATHER_CACHE_ROWS``, so that a catch-up does not replace the stored rows' cached features).
CHUNK_ROWS = 4000


class Factor:
    """The partial Cholesky factor ``C`` (rows: items in play, columns: steps so far) with compaction, and
    the factor rows of the steps (``steps``, ``step_items``)."""

    def __init__(self, n: int, steps: int, dtype: np.dtype) -> None:
        width = max(steps, 1)
        self.dtype = dtype
        self.data = np.empty((n, width), dtype=dtype)
        self.items = np.arange(n)  # the item of each stored row
        self.slot = np.arange(n)  # the stored row of each item (-1: not stored)
        self.rows = n  # stored rows
        self.t = 0  # steps (columns) so far
        # the factor rows of the steps from ``steps_from`` on (kept once rows may be set aside)
        self.steps: NDArray[np.floating] | None = None
        self.steps_from = 0
        self.step_items = np.empty(width, dtype=np.int64)

    def keep_steps(self, last: int) -> None:
        """From now on keep the factor rows of the steps up to ``last`` (exclusive): what rows set aside
        later need to catch up. Allocated lazily (calloc): only the rows' first ``t`` columns are written."""
        self.steps_from = self.t
        self.steps = np.zeros((max(last - self.t, 1), self.data.shape[1]), dtype=self.dtype)

    def step_rows(self, span: slice) -> NDArray[np.floating]:
        """The kept factor rows of the steps in ``span`` (all columns)."""
        assert self.steps is not None and span.start >= self.steps_from, "steps before keep_steps"
        return self.steps[span.start - self.steps_from : span.stop - self.steps_from]

    def of(self, items: NDArray[np.int64]) -> NDArray[np.floating]:
        """``C[items, :t]`` (a copy)."""
        return self.data[self.slot[items], : self.t]

    @property
    def live(self) -> NDArray[np.floating]:
        return self.data[: self.rows, : self.t]

    def append(self, picked: NDArray[np.int64], tri: NDArray[np.floating], e: NDArray[np.floating]) -> None:
        """Add the steps ``picked`` (lower-triangular ``tri`` among themselves) with their factor columns
        ``e`` for every stored row."""
        t, p = self.t, picked.size
        if self.steps is not None:
            rows = self.steps[t - self.steps_from : t - self.steps_from + p]
            rows[:, :t] = self.of(picked)
            rows[:, t : t + p] = tri
        self.step_items[t : t + p] = picked
        self.data[: self.rows, t : t + p] = e
        self.t += p

    def insert(self, items: NDArray[np.int64], rows: NDArray[np.floating]) -> None:
        """Store ``items`` (not stored now) with their up-to-date rows ``rows`` (``len(items) x t``)."""
        start, m = self.rows, items.size
        self.data[start : start + m, : self.t] = rows
        self.items[start : start + m] = items
        self.slot[items] = np.arange(start, start + m)
        self.rows += m

    def compact(self, keep_item: NDArray[np.bool_]) -> None:
        """Drop the stored rows of items not in ``keep_item``. Rows move up only, so a chunked in-place copy
        is safe and needs no second copy of the factor."""
        keep = np.flatnonzero(keep_item[self.items[: self.rows]])
        chunk = 1024
        for start in range(0, keep.size, chunk):
            src = keep[start : start + chunk]
            self.data[start : start + src.size, : self.t] = self.data[src, : self.t]
        self.slot[self.items[: self.rows]] = -1
        self.items[: keep.size] = self.items[keep]
        self.slot[self.items[: keep.size]] = np.arange(keep.size)
        self.rows = keep.size


@dataclass
class _Group:
    """Items set aside together: their factor rows as they were after ``t`` steps."""

    items: NDArray[np.int64]
    rows: NDArray[np.floating]
    t: int
    waiting: NDArray[np.bool_]  # still set aside (False: brought back)


class SetAside:
    """Items whose factor rows are not being kept up to date (see the module docstring). An item set aside
    keeps its stored row, still updated, until the factor is next compacted; then its row is parked here
    as it is, and updates stop. ``mask``: set aside (stored or parked)."""

    def __init__(self, n: int) -> None:
        self.mask = np.zeros(n, dtype=bool)
        self.groups: list[_Group] = []

    def park(self, items: NDArray[np.int64], factor: Factor) -> None:
        """Copy the rows of the set-aside ``items`` (stored in ``factor``) out, as they are now; the caller
        then compacts the factor."""
        self.groups.append(_Group(items.copy(), factor.of(items), factor.t, np.ones(items.size, dtype=bool)))

    def bring_back(
        self,
        chosen: NDArray[np.bool_],
        factor: Factor,
        columns: Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.floating]],
        d2: NDArray[np.float64],
        clamp: Callable[[NDArray[np.float64], NDArray[np.int64]], NDArray[np.float64]],
    ) -> tuple[int, int]:
        """Take the items in ``chosen`` out of the set-aside ones: a stored one as it is (its row is up to
        date), a parked one brought up to date and stored in ``factor`` again: for the steps ``s >= t0`` it
        missed, ``E T^T = L[items, J] - X P^T`` with ``T = steps[S, S]``,
        ``P = steps[S, :t0]``, ``X`` their rows after ``t0`` steps, ``J`` the steps' items; then
        ``d_i^2 -= ||E_i||^2``. Returns the parked items brought back and the multiply-adds it took."""
        kept: list[_Group] = []
        parked_back, multiply_adds = 0, 0
        for group in self.groups:
            sel = np.flatnonzero(group.waiting & chosen[group.items])
            for start in range(0, sel.size, CHUNK_ROWS):
                part = sel[start : start + CHUNK_ROWS]
                items = group.items[part]
                x = group.rows[part]
                t0, t = group.t, factor.t
                if t > t0:
                    span = slice(t0, t)
                    steps = factor.step_rows(span)
                    r = np.asarray(columns(items, factor.step_items[span]), dtype=factor.dtype)
                    if t0:
                        r -= x @ steps[:, :t0].T
                    e = solve_triangular(steps[:, span], r.T, lower=True, check_finite=False).T
                    d2[items] -= np.einsum("ij,ij->i", e, e, dtype=np.float64)
                    d2[items] = clamp(d2[items], items)
                    x = np.concatenate([x, e], axis=1)
                    multiply_adds += items.size * (t0 * (t - t0) + (t - t0) ** 2 // 2)
                factor.insert(items, x)
            parked_back += sel.size
            group.waiting[sel] = False
            n_waiting = int(group.waiting.sum())
            if n_waiting == 0:
                continue
            if 4 * n_waiting < 3 * group.items.size:  # drop the rows brought back
                group = _Group(
                    group.items[group.waiting], group.rows[group.waiting], group.t, np.ones(n_waiting, bool)
                )
            kept.append(group)
        self.groups = kept
        self.mask[chosen] = False
        return parked_back, multiply_adds
