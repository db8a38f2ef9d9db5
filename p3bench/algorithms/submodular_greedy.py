"""The greedy maximisers behind :func:`p3bench.algorithms.submodular.maximize`: naive, lazy and stochastic
greedy over :class:`~p3bench.algorithms.submodular_gains.CoverageGains`, which computes the marginal gains
of many candidates at once. Ties go to the lowest candidate index in all three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from p3bench.algorithms.submodular_gains import CoverageGains
from p3bench.utils.progress import progress_bar

__all__ = [
    "LAZY_BATCH",
    "LAZY_FRONTIER",
    "GreedyTrace",
    "lazy_greedy",
    "naive_greedy",
    "stochastic_greedy",
    "stochastic_sample_size",
]

#: Candidates re-evaluated at once by :func:`lazy_greedy` when the stalest upper bound is not enough; the
#: batch doubles within a step until the pick is certain.
LAZY_BATCH = 8
#: Candidates in :func:`lazy_greedy`'s frontier (the highest bounds, searched first).
LAZY_FRONTIER = 512


@dataclass(frozen=True)
class GreedyTrace:
    """What an optimiser returns: the picks in order, their marginal gains when picked, and how many
    single-candidate gain evaluations it made (``n`` for the first step of naive or lazy greedy)."""

    indices: NDArray[np.int64]
    gains: NDArray[np.float64]
    n_evaluations: int


# --------------------------------------------------------------------------------------------------------
# Optimisers


def naive_greedy(cov: CoverageGains, budget: int, *, progress: bool = False) -> GreedyTrace:
    """Naive greedy: every step evaluates every remaining candidate and adds the best (lowest index on
    ties). ``budget`` steps of ``O(n_candidates x n_rows)``."""
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget)
    taken = np.zeros(cov.n_candidates, dtype=bool)
    with progress_bar(total=budget, desc="greedy (naive)", unit="pick", enabled=progress) as bar:
        for t in range(budget):
            g = cov.all_gains()
            g[taken] = -math.inf
            j = int(np.argmax(g))
            picks[t], gains[t] = j, g[j]
            taken[j] = True
            cov.add(j)
            bar.update(1)
    return GreedyTrace(picks, gains, budget * cov.n_candidates - budget * (budget - 1) // 2)


def lazy_greedy(
    cov: CoverageGains,
    budget: int,
    *,
    lower: NDArray[np.float64] | None = None,
    batch: int = LAZY_BATCH,
    frontier: int = LAZY_FRONTIER,
    progress: bool = False,
) -> GreedyTrace:
    """Lazy greedy (Minoux 1978, "Accelerated greedy algorithms for maximizing submodular set functions"):
    the same picks as :func:`naive_greedy`, ties included.

    Every candidate keeps its last computed gain, an upper bound on its gain now (submodularity, and the
    monotone arithmetic of :class:`CoverageGains`). A step re-evaluates the ``batch`` candidates with the
    highest bounds at once (vectorised), doubling the batch until the best fresh gain beats every stale
    bound; a stale bound equal to the best fresh gain at a lower index is re-evaluated too (naive greedy's
    lowest-index tie rule), unless it equals the candidate's ``lower`` bound (its ``bonus``: such a bound
    is exact). The first step evaluates every candidate.

    To keep a step's bookkeeping off the full candidate array, the search runs on a frontier: the
    ``frontier`` candidates with the highest bounds when it was built, with ``tau`` the highest bound
    outside it (bounds only fall, so ``tau`` stays an upper bound for every candidate outside). A step the
    frontier cannot decide (its best gain does not beat ``tau``) is searched over all candidates, and the
    frontier is rebuilt. When :meth:`CoverageGains.add` says the gains are summed differently from then
    on (the switch to pruned entries), every bound is computed afresh.
    """
    n = cov.n_candidates
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget)
    if budget == 0:
        return GreedyTrace(picks, gains, 0)
    with progress_bar(total=budget, desc="greedy (lazy)", unit="pick", enabled=progress) as bar:
        search = _LazySearch(cov, np.zeros(n) if lower is None else lower, batch, frontier)
        for t in range(budget):
            j = search.step()
            picks[t], gains[t] = j, search.bound[j]
            search.bound[j] = -math.inf
            if cov.add(j) and t + 1 < budget:
                search.refresh()
            bar.update(1)
    return GreedyTrace(picks, gains, search.evaluations)


class _LazySearch:
    """The state of :func:`lazy_greedy`: every candidate's bound (``-inf`` once picked), the frontier and
    ``tau``."""

    def __init__(self, cov: CoverageGains, floor: NDArray[np.float64], batch: int, frontier: int) -> None:
        self.cov, self.floor, self.batch, self.size = cov, floor, batch, frontier
        self.bound = np.zeros(cov.n_candidates)
        self.evaluations = 0
        self.front = np.zeros(0, dtype=np.int64)
        self.tau = -math.inf
        self.refresh()

    def refresh(self) -> None:
        """Every remaining candidate's gain computed afresh (at the start, and when the way gains are
        summed changes): the next pick is their argmax."""
        live = self.bound > -math.inf
        self.bound[live] = self.cov.all_gains()[live]
        self.evaluations += int(np.count_nonzero(live))
        self.all_fresh = True

    def _rebuild(self) -> None:
        live = np.flatnonzero(self.bound > -math.inf)
        if live.shape[0] <= self.size:
            self.front, self.tau = live, -math.inf
            return
        values = self.bound[live]
        top = np.argpartition(values, live.shape[0] - self.size)
        self.front = live[top[live.shape[0] - self.size :]]
        self.tau = float(values[top[: live.shape[0] - self.size]].max())

    def step(self) -> int:
        """The next pick (its fresh gain is in ``bound``)."""
        if self.all_fresh:
            self.all_fresh = False
            self.front = np.zeros(0, dtype=np.int64)
            return int(np.argmax(self.bound))
        if self.front.shape[0] == 0:
            self._rebuild()
        stale = self.bound[self.front]
        decided, best, best_j = self._search(self.front, stale, self.tau, -math.inf, -1)
        if decided:
            return best_j
        fresh = self.front[stale == -math.inf]  # refreshed in this step (or picked before)
        live = np.flatnonzero(self.bound > -math.inf)
        stale = self.bound[live]
        stale[np.isin(live, fresh, assume_unique=True)] = -math.inf
        decided, best, best_j = self._search(live, stale, -math.inf, best, best_j)
        self.front = np.zeros(0, dtype=np.int64)
        return best_j

    def _search(
        self, cands: NDArray[np.int64], stale: NDArray[np.float64], tau: float, best: float, best_j: int
    ) -> tuple[bool, float, int]:
        """Refresh the highest stale bounds among ``cands`` until the pick is certain or, with ``tau`` the
        bound of everything outside ``cands``, cannot be decided within them. ``stale`` holds the bounds of
        ``cands`` not refreshed in this step (``-inf`` otherwise) and is updated in place; ``best`` and
        ``best_j``: the best fresh gain so far and its (lowest) index."""
        n_stale = int(np.count_nonzero(stale > -math.inf))
        size = self.batch
        todo: NDArray[np.int64] | None = None
        while True:
            if todo is None:
                if n_stale > size:
                    todo = np.argpartition(stale, stale.shape[0] - size)[stale.shape[0] - size :]
                else:
                    todo = np.flatnonzero(stale > -math.inf)
            if todo.shape[0]:
                picked = cands[todo]
                g = self.cov.gains(picked)
                self.evaluations += todo.shape[0]
                self.bound[picked] = g
                stale[todo] = -math.inf
                n_stale -= todo.shape[0]
                top = float(g.max())
                top_j = int(picked[g == top].min())
                if top > best or (top == best and top_j < best_j):
                    best, best_j = top, top_j
            todo = None
            inside = float(stale.max()) if n_stale else -math.inf
            rest = max(inside, tau)
            if rest < best:
                return True, best, best_j
            if rest == best and tau < best:
                ties = np.flatnonzero(stale == best)
                ties = ties[cands[ties] < best_j]
                if ties.shape[0] == 0:
                    return True, best, best_j
                ties = ties[np.argsort(cands[ties])]
                exact = best <= self.floor[cands[ties]]  # a bound at its floor is the gain
                if exact[0]:
                    return True, best, int(cands[ties[0]])
                todo = ties[~exact]
            elif inside > best:
                size *= 2
            else:
                return False, best, best_j


def stochastic_sample_size(n_candidates: int, budget: int, epsilon: float) -> int:
    """``ceil(n / k * log(1 / epsilon))``, at least 1 (Mirzasoleiman et al., arXiv 1409.7938)."""
    return max(1, math.ceil(n_candidates / max(budget, 1) * math.log(1.0 / epsilon)))


def stochastic_greedy(
    cov: CoverageGains,
    budget: int,
    *,
    epsilon: float,
    rng: np.random.Generator,
    progress: bool = False,
) -> GreedyTrace:
    """Stochastic greedy (Mirzasoleiman, Badanidiyuru, Karbasi, Vondrak & Krause, "Lazier Than Lazy Greedy",
    AAAI 2015, arXiv 1409.7938): every step draws ``s = ceil(n / k * log(1 / epsilon))`` of the remaining
    candidates uniformly without replacement (from ``rng``) and adds the best of them (lowest index on ties).
    ``(1 - 1/e - epsilon)`` of the optimum in expectation for monotone submodular ``f``."""
    n = cov.n_candidates
    size = stochastic_sample_size(n, budget, epsilon)
    picks = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget)
    remaining = np.ones(n, dtype=bool)
    evaluations = 0
    with progress_bar(total=budget, desc="greedy (stochastic)", unit="pick", enabled=progress) as bar:
        for t in range(budget):
            left = np.flatnonzero(remaining)
            sample = np.sort(rng.choice(left, size=min(size, left.shape[0]), replace=False))
            g = cov.gains(sample)
            evaluations += sample.shape[0]
            best = int(np.argmax(g))
            j = int(sample[best])
            picks[t], gains[t] = j, g[best]
            remaining[j] = False
            cov.add(j)
            bar.update(1)
    return GreedyTrace(picks, gains, evaluations)
