"""What every DPP greedy of :mod:`p3bench.algorithms.dpp` shares: the result type, log-det, input checks and
the RBF bandwidth heuristic, and a one-thread BLAS limit. :mod:`p3bench.algorithms.dpp` re-exports the public names (``DPPResult``,
``log_det``, ``rbf_bandwidth``, ``BANDWIDTH_SAMPLE``); the checks raise one-line ``ValueError``s that name the
argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from threadpoolctl import ThreadpoolController

#: Number of candidates sampled (seeded, without replacement) for the default RBF bandwidth.
BANDWIDTH_SAMPLE = 1000


@dataclass(frozen=True)
class DPPResult:
    """The outcome of a greedy MAP run.

    Attributes:
        indices: the picked candidates, in pick order (int64). Preselected items are not included.
        gains: ``d_i^2`` of each pick when it was picked, i.e. ``exp`` of the log-det increment
            ``log det(L_{Y+i}) - log det(L_Y)`` (conditional on the preselected items).
        stopped_early: True when fewer than ``k`` items were returned because the best gain fell below
            ``eps`` (the kernel's rank, conditional on the preselected items, is used up).
        n_fill: how many trailing picks did not come from the greedy iteration proper: the rank-exhausted
            ridge fill of :func:`greedy_map_lowrank` (only when every residual is below ``rank_tol``, see
            there; 0 for non-degenerate data) or the picks made after the first restart with
            ``fill="restart"`` (their gains are relative to their own restart).
        work: what the factor updates of :func:`~p3bench.algorithms.dpp_blocked.greedy_map_blocked` cost
            (empty for the other greedies): ``update_multiply_adds`` (block updates of the stored rows),
            ``catch_up_multiply_adds`` (bringing set-aside rows up to date), ``all_rows_multiply_adds``
            (the block updates had every item still in play been updated), ``items_set_aside`` and
            ``items_brought_back`` (set-aside items whose parked rows were brought up to date; an item
            counts each time).
    """

    indices: NDArray[np.int64]
    gains: NDArray[np.float64]
    stopped_early: bool
    n_fill: int = 0
    work: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def log_det(self) -> float:
        """``sum(log(gains))``: ``log det(L_{P+Y}) - log det(L_P)`` for picks ``Y`` given preselected ``P``
        (``log det(L_Y)`` when nothing was preselected). Not meaningful across restarts."""
        return float(np.sum(np.log(self.gains)))


def log_det(kernel: ArrayLike, indices: Sequence[int] | NDArray[np.integer]) -> float:
    """``log det(kernel[indices][:, indices])`` by ``np.linalg.slogdet``; ``-inf`` when it is singular or
    not positive. The empty set has log-det 0."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return 0.0
    sub = np.asarray(kernel, dtype=np.float64)[np.ix_(idx, idx)]
    sign, value = np.linalg.slogdet(sub)
    return float(value) if sign > 0 else -math.inf


# --------------------------------------------------------------------------------------------------------
# Input checks


def check_k(k: int, n_candidates: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k={k!r} is not an integer: expected a budget 0 <= k <= {n_candidates}")
    if k < 0:
        raise ValueError(f"k={k} is negative: expected a budget 0 <= k <= {n_candidates}")
    if k > n_candidates:
        raise ValueError(
            f"budget k={k} exceeds the number of candidates ({n_candidates}): expected k <= {n_candidates}"
        )
    return int(k)


def check_eps(eps: float) -> float:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps} is invalid: expected a finite value >= 0")
    return float(eps)


def check_greedy_inputs(
    diag: ArrayLike, k: int, n_candidates: int | None, forced: Sequence[int] | NDArray[np.integer], eps: float
) -> tuple[NDArray[np.float64], int, int, NDArray[np.int64], int, float]:
    """The checked inputs of a greedy MAP run over items ``0..n-1`` with kernel diagonal ``diag``: a float64
    copy of the diagonal (the gains ``d_i^2`` the greedy updates), ``n``, the number of candidates, the forced
    items, ``k`` (at most the candidates that are not forced) and ``eps``; one-line errors otherwise."""
    d2 = np.array(diag, dtype=np.float64, copy=True)
    if d2.ndim != 1:
        raise ValueError(f"diag has shape {d2.shape}: expected a 1-d array")
    n = d2.shape[0]
    n_cand = n if n_candidates is None else int(n_candidates)
    if not 0 <= n_cand <= n:
        raise ValueError(f"n_candidates={n_candidates} is out of range: expected 0..{n}")
    forced_idx = np.asarray(forced, dtype=np.int64).reshape(-1)
    if forced_idx.size and (forced_idx.min() < 0 or forced_idx.max() >= n):
        raise ValueError(f"forced items must be indices in [0, {n}): got {forced_idx.tolist()}")
    if n_cand < n and not np.isin(np.arange(n_cand, n), forced_idx).all():
        raise ValueError("items at or beyond n_candidates must all be forced")
    n_available = n_cand - np.unique(forced_idx[forced_idx < n_cand]).size
    return d2, n, n_cand, forced_idx, check_k(k, n_available), check_eps(eps)


def as_matrix(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}: expected a 2-d array")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def as_quality(quality: ArrayLike | None, n: int, name: str = "quality") -> NDArray[np.float64]:
    if quality is None:
        return np.ones(n)
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise ValueError(f"{name} has shape {q.shape}: expected ({n},), one value per row")
    if not np.all(np.isfinite(q)) or (n and q.min() <= 0):
        bad = q[~(np.isfinite(q) & (q > 0))][0]
        raise ValueError(f"{name} must be finite and > 0: got {bad}")
    return q


def check_ridge(ridge: float) -> float:
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge={ridge} is invalid: expected a finite value >= 0")
    return float(ridge)


# --------------------------------------------------------------------------------------------------------
# Embeddings and the RBF bandwidth


def normalise_rows(F: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.where(norms > 0, norms, 1.0)


def sq_dists(X: NDArray[np.float64], Y: NDArray[np.float64]) -> NDArray[np.float64]:
    sx = np.einsum("ij,ij->i", X, X)
    sy = np.einsum("ij,ij->i", Y, Y)
    return np.maximum(sx[:, None] + sy[None, :] - 2.0 * (X @ Y.T), 0.0)


def rbf_bandwidth(features: ArrayLike, *, sample: int = BANDWIDTH_SAMPLE, seed: int = 0) -> float:
    """The median heuristic: the median Euclidean distance between distinct rows of ``features``, over
    all pairs of a seeded sample of ``sample`` rows (all rows when there are fewer). Falls back to 1.0
    when it is 0 or there are fewer than two rows. :func:`dpp_select` calls it on the L2-normalised
    candidates."""
    X = np.asarray(features, dtype=np.float64)
    n = X.shape[0]
    if n < 2:
        return 1.0
    if n > sample:
        X = X[np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))]
    dist = np.sqrt(sq_dists(X, X)[np.triu_indices(X.shape[0], k=1)])
    h = float(np.median(dist))
    return h if h > 0 else 1.0


# --------------------------------------------------------------------------------------------------------
# BLAS threads


_blas: ThreadpoolController | None = None


def one_blas_thread() -> Any:
    """A context manager limiting BLAS to one thread, for code made of many small matrix products, where
    threads only add synchronisation (on two busy cores they made the blocked DPP greedy 1.3-4x slower).
    The thread pools are looked up on the first call; each limit then costs a few microseconds."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")
