"""Greedy MAP inference for determinantal point processes (DPPs), array in, array out.

P3 (arXiv 2408.05541) picks a diverse, high-quality subset with a DPP whose kernel is
``L = diag(q) S diag(q)``: ``q`` is a per-example quality (positive) and ``S`` a similarity between
L2-normalised embeddings. The subset is the greedy MAP estimate, computed with the fast greedy algorithm
of Chen, Zhang & Zhou, "Fast Greedy MAP Inference for Determinantal Point Process to Improve
Recommendation Diversity", NeurIPS 2018 (arXiv 1709.05135).

The algorithm (arXiv 1709.05135, Alg. 1) keeps, for every item ``i``, the row ``c_i`` of the incremental
Cholesky factor of ``L`` restricted to the picked set ``Y`` and the squared residual
``d_i^2 = L_ii - ||c_i||^2``, which is the log-det marginal gain in exponential form::

    log det(L_{Y + i}) - log det(L_Y) = log d_i^2.

After picking ``j`` every item is updated with ``e_i = (L_ji - <c_j, c_i>) / d_j``, ``c_i <- [c_i, e_i]``,
``d_i^2 <- d_i^2 - e_i^2``, and the next pick is ``argmax_i d_i^2`` (ties: the lowest index).

Entry points
------------
- :func:`greedy_map`: explicit ``N x N`` PSD kernel.
- :func:`greedy_map_rows`: the same greedy when rows of ``L`` are produced on demand by a callback (what
  :func:`greedy_map` and the RBF kernel of :func:`dpp_select` run on).
- :func:`greedy_map_lowrank`: ``L = diag(q) (F F^T + ridge I) diag(q)`` without forming ``L`` and
  without the ``N x k`` factor: at most ``O(N d)`` per pick instead of ``O(N t)``, with lazy blocked
  updates that make most picks much cheaper (same picks).
- :func:`~p3bench.algorithms.dpp_blocked.greedy_map_blocked` (its own module): the same greedy with
  blocked matrix-matrix updates on kernel columns computed a block at a time, for full-rank kernels and
  budgets of thousands (the ``rbf_blocked`` kernel, :mod:`p3bench.algorithms.dpp_kernels`).
- :func:`dpp_select`: what selection methods call (``kernel``: cosine, rbf or rbf_blocked similarity;
  budget fill policy). With MiniLM's 384 dimensions the cosine kernel's rank is used up after a few
  hundred picks and the rest go by quality alone; ``rbf_blocked`` stays diverse at any budget the bench
  runs (``benchmarks/dpp_diversity.py``).

Conditioning
------------
Forced ("preselected") items are added first, through the same update, and are neither returned nor
counted in the budget. Continuing the greedy after them is exactly the greedy MAP of the conditional DPP,
whose kernel on the remaining items is the Schur complement ``L_AA - L_AP L_PP^{-1} L_PA``: after the
forced steps the ``d_i^2`` are the diagonal of that Schur complement and the next ``e_i`` are the rows
of its Cholesky factor. A forced item whose conditional gain is already below ``eps`` (it lies in the span
of the items forced before it, for example a duplicate) is skipped: conditioning on it changes nothing.

Progress
--------
With ``progress=True`` the greedy shows a bar (:func:`p3bench.utils.progress.progress_bar`): the row-callback
path counts every forced item and pick (each costs a kernel row and ``O(n t)``), the low-rank path counts the
picks, updated once per block of picks, so the bar stays out of the per-pick loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from p3bench.algorithms.dpp_common import (
    BANDWIDTH_SAMPLE,
    DPPResult,
    as_matrix,
    as_quality,
    check_eps,
    check_greedy_inputs,
    check_k,
    check_ridge,
    log_det,
    normalise_rows,
    rbf_bandwidth,
)
from p3bench.algorithms.dpp_kernels import RBF_BLOCKED_BANDWIDTH_SCALE, RBF_BLOCKED_RIDGE, rbf_blocked_greedy
from p3bench.utils.progress import progress_bar

__all__ = [
    "BANDWIDTH_SAMPLE",
    "DEFAULT_RIDGE",
    "FILLS",
    "KERNELS",
    "DPPResult",
    "dpp_select",
    "greedy_map",
    "greedy_map_lowrank",
    "greedy_map_rows",
    "log_det",
    "rbf_bandwidth",
]

KERNELS: tuple[str, ...] = ("cosine", "rbf", "rbf_blocked")
FILLS: tuple[str, ...] = ("ridge", "restart")
#: :func:`dpp_select`'s ridge when none is given. rbf_blocked's is smaller: its kernel is full rank, and a
#: larger ridge is a quality-only term that decides the later picks (benchmarks/dpp_diversity.py).
DEFAULT_RIDGE: dict[str, float] = {"cosine": 1e-3, "rbf": 1e-3, "rbf_blocked": RBF_BLOCKED_RIDGE}

RowFn = Callable[[int], NDArray[np.float64]]


# --------------------------------------------------------------------------------------------------------
# Explicit kernel (rows on demand)


def greedy_map_rows(
    diag: ArrayLike,
    row: RowFn,
    k: int,
    *,
    n_candidates: int | None = None,
    forced: Sequence[int] = (),
    eps: float = 1e-10,
    progress: bool = False,
) -> DPPResult:
    """Fast greedy MAP (arXiv 1709.05135, Alg. 1) on a kernel given by its diagonal and a row callback.

    Args:
        diag: ``L_ii`` for all ``n`` items (float64).
        row: ``row(j)`` returns ``L[j, :]`` over all ``n`` items (may be a reused buffer: it is copied).
        k: number of candidates to pick.
        n_candidates: items ``0 .. n_candidates-1`` are candidates; the rest must all be in ``forced``
            (used for preselected items that are not candidates). Default: all ``n``.
        forced: items added first, in this order, to condition on; not returned nor counted in ``k``.
        eps: stop when the best gain ``d_i^2`` is below ``eps``.
        progress: a progress bar over the forced items and the picks.

    Cost: ``O(n (|forced| + k))`` memory for the factor and ``O(n t)`` per pick plus the row callback.
    """
    d2, n, n_cand, forced_idx, k, eps = check_greedy_inputs(diag, k, n_candidates, forced, eps)

    cand = d2[:n_cand]  # view: picked and forced items are set to -inf
    factor = np.empty((forced_idx.size + k, n))  # row t: e over all items at step t (C transposed)
    buf = np.empty(n)
    t = 0

    def update(j: int, gain: float) -> None:
        nonlocal t
        e = factor[t]
        e[:] = row(j)
        if t:
            np.dot(factor[:t, j], factor[:t], out=buf)  # <c_j, c_i> for all i
            e -= buf
        e /= math.sqrt(gain)
        np.square(e, out=buf)
        d2[:] -= buf
        d2[j] = -math.inf
        t += 1

    picks: list[int] = []
    gains: list[float] = []
    stopped = False
    with progress_bar(total=forced_idx.size + k, desc="DPP greedy", unit="item", enabled=progress) as bar:
        for j in forced_idx.tolist():
            gain = float(d2[j])
            if gain >= eps:
                update(j, gain)
            else:
                d2[j] = -math.inf
            bar.update(1)

        while len(picks) < k:
            j = int(np.argmax(cand))
            gain = float(cand[j])
            if not gain >= eps:
                stopped = True
                break
            picks.append(j)
            gains.append(gain)
            if len(picks) < k:
                update(j, gain)
            bar.update(1)
    return DPPResult(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), stopped)


def greedy_map(
    kernel: ArrayLike,
    k: int,
    *,
    preselected: Sequence[int] = (),
    eps: float = 1e-10,
    progress: bool = False,
) -> DPPResult:
    """Fast greedy MAP inference (Chen et al., arXiv 1709.05135) on an explicit ``N x N`` PSD kernel.

    ``preselected`` items (indices into ``kernel``) are added first, which makes the rest exactly the
    greedy MAP of the conditional DPP (the Schur complement); they are not returned nor counted in ``k``.
    Stops early, returning fewer than ``k`` items with ``stopped_early=True``, when the best gain
    ``d_i^2`` falls below ``eps``. Only ``kernel[j, :]`` rows are read (the kernel is assumed symmetric).
    ``progress``: a progress bar (see :func:`greedy_map_rows`).
    """
    mat = as_matrix(kernel, "kernel")
    if mat.shape[0] != mat.shape[1]:
        raise ValueError(f"kernel has shape {mat.shape}: expected a square N x N matrix")
    return greedy_map_rows(
        np.diagonal(mat), mat.__getitem__, k, forced=preselected, eps=eps, progress=progress
    )


# --------------------------------------------------------------------------------------------------------
# Low-rank kernel


class _Projector:
    """``M = U^T U = sum_s u_s u_s^T`` for the picked directions ``u_s`` (rows of ``U``), kept as a committed
    ``d x d`` matrix plus a block of pending rows, so that ``M b`` costs ``O(d^2 + s d)`` per call and the
    pending block can be applied to all items with one matrix product."""

    def __init__(self, dim: int, block: int) -> None:
        self.committed = np.zeros((dim, dim))
        self.pending = np.empty((block, dim))
        self.size = 0  # pending rows
        self.empty = True  # committed is zero

    @property
    def rows(self) -> NDArray[np.float64]:
        return self.pending[: self.size]

    def apply(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        """``M b`` (= ``U^T c`` with ``c = U b``)."""
        out = np.zeros_like(b) if self.empty else self.committed @ b
        if self.size:
            out += (self.rows @ b) @ self.rows
        return out

    def add(self, u: NDArray[np.float64]) -> None:
        self.pending[self.size] = u
        self.size += 1

    def commit(self) -> None:
        if self.size:
            self.committed += self.rows.T @ self.rows
            self.size = 0
            self.empty = False


def greedy_map_lowrank(
    features: ArrayLike,
    k: int,
    *,
    quality: ArrayLike | None = None,
    ridge: float = 0.0,
    preselected_features: ArrayLike | None = None,
    preselected_quality: ArrayLike | None = None,
    eps: float = 1e-10,
    rank_tol: float = 1e-10,
    block: int = 64,
    progress: bool = False,
) -> DPPResult:
    """Fast greedy MAP on ``L = diag(q) (F F^T + ridge I) diag(q)`` without forming the ``N x N`` kernel.

    The same picks as :func:`greedy_map` on the explicit kernel (arXiv 1709.05135, up to floating-point
    rounding on near-ties), with ``O(N d + d^2)`` memory instead of ``N x N + N x k``.

    Derivation. With ``B = diag(q) F`` the kernel is the Gram matrix of ``phi_i = (b_i, sqrt(ridge) q_i
    e_i)`` in ``R^{d+N}``. The Cholesky rows are ``c_i[s] = <phi_i, w_s>`` with ``w_s`` the Gram-Schmidt
    basis of the picked ``phi``. The ridge part of every ``w_s`` lives on picked items' coordinates, so for
    an unpicked item ``<phi_i, w_s> = <b_i, u_s>``, ``u_s`` being the first ``d`` coordinates of ``w_s``.
    Picking ``j`` at step ``t`` thus needs ``u_t = (b_j - U^T U b_j) / d_j`` (``U`` stacks ``u_0..u_{t-1}``;
    ``M = U^T U`` is kept as a ``d x d`` matrix), then ``e = B u_t`` and ``d_i^2 -= e_i^2``, starting
    from ``d_i^2 = q_i^2 (||f_i||^2 + ridge)``; equivalently ``d_i^2 = q_i^2 (||f_i||^2 + ridge) -
    b_i^T M b_i``.

    Lazy blocked updates. ``d_i^2`` only decreases, so stale values are upper bounds. ``e = B u`` is
    applied to all items once per ``block`` picks (one ``N x d x block`` matrix product instead of
    ``block`` matrix-vector products); in between, exact gains are kept only for a window of the items
    with the largest stale values, grown until its best exact gain beats every stale value outside it.
    The argmax is therefore exact (ties: lowest index), as in the non-lazy algorithm.

    Preselected items (``preselected_features``, ``(M, d)``, not candidates) are added first through the
    same update (``O(d^2)`` each). Their quality only rescales their ``phi`` and so cannot change the
    selection (the conditional kernel depends on their span only); it defaults to 1.

    Rank-exhausted fill. Write ``d_i^2 = ridge q_i^2 + r_i`` with ``r_i = ||b_i||^2 - b_i^T M b_i >= 0``.
    With ``ridge=0`` the rank of ``B`` is used up when the best gain is ``<= rank_tol * max_i ||b_i||^2``
    (candidates); the run then stops early, as :func:`greedy_map` would at ``eps``. With ``ridge > 0`` the
    ``r_i`` decay as picks accumulate (about ``ridge q_i^2 d / t`` for isotropic features) but do not
    vanish, so the greedy keeps trading quality against diversity after ``d`` picks. Only when every
    candidate's ``r_i`` is below ``rank_tol * max_i ||b_i||^2`` (checked with the stale upper bounds, once
    per block) are the remaining picks filled by one sort on ``ridge q_i^2`` (ties: lowest index), which
    changes each later gain by at most that bound; with the default tolerance this does not happen for
    non-degenerate data.

    Args:
        features: ``F``, ``(N, d)`` (not normalised here).
        k: number of candidates to pick.
        quality: ``q``, positive, ``(N,)``; default all ones.
        ridge: ``>= 0``, added to the diagonal of ``F F^T``.
        preselected_features: ``(M, d)`` items to condition on.
        preselected_quality: ``(M,)``, positive; default all ones.
        eps: stop when the best gain falls below ``eps``.
        rank_tol: relative tolerance of the rank-exhausted test (see above).
        block: picks between two full updates (speed only; the picks do not depend on it).
        progress: a progress bar over the picks, updated once per block.
    """
    F = as_matrix(features, "features")
    n, dim = F.shape
    k = check_k(k, n)
    eps = check_eps(eps)
    ridge = check_ridge(ridge)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block={block!r} is invalid: expected an integer >= 1")
    q = as_quality(quality, n)
    if preselected_features is None:
        if preselected_quality is not None:
            raise ValueError("preselected_quality is given without preselected_features")
        P = np.empty((0, dim))
    else:
        P = as_matrix(preselected_features, "preselected_features")
        if P.shape[1] != dim:
            raise ValueError(
                f"preselected_features has {P.shape[1]} columns: expected {dim}, as many as features"
            )
    qp = as_quality(preselected_quality, P.shape[0], "preselected_quality")

    B = F * q[:, None]
    norms2 = np.einsum("ij,ij->i", B, B)
    ridge_q2 = ridge * q**2
    proj = _Projector(dim, int(block))

    # Preselected items: O(d^2) each, exact gain q_p^2 (||f_p||^2 + ridge) - b_p^T M b_p.
    for fp, qq in zip(P, qp, strict=True):
        b = fp * qq
        mb = proj.apply(b)
        gain = float(b @ b) + ridge * qq**2 - float(b @ mb)
        if gain >= eps:
            proj.add((b - mb) / math.sqrt(gain))
            if proj.size == block:
                proj.commit()
    proj.commit()

    base2 = norms2 + ridge_q2  # upper bounds of the gains: exact at the start of each block
    if not proj.empty:
        base2 -= np.einsum("ij,ij->i", B @ proj.committed, B)
    tol = rank_tol * float(norms2.max()) if n else 0.0
    picked = np.zeros(n, dtype=bool)
    picks: list[int] = []
    gains: list[float] = []
    stopped = False
    n_fill = 0
    window0 = 128
    win_b = np.empty((n, dim))  # rows of B for the window (the first `size` items of `order`)
    win_gain = np.empty(n)  # their exact gains at the current step
    e_buf = np.empty(n)
    shown = 0  # picks counted on the bar
    with progress_bar(total=k, desc="DPP greedy", unit="pick", enabled=progress) as bar:
        while len(picks) < k:
            # Start of a block: the base2 are exact; look for the rank-exhausted case.
            if ridge > 0.0 and float(np.max(base2 - ridge_q2)) <= tol:
                rest = np.flatnonzero(~picked)
                order = rest[np.argsort(-ridge_q2[rest], kind="stable")[: k - len(picks)]]
                fill_gains = ridge_q2[order]
                low = np.flatnonzero(fill_gains < eps)
                keep = int(low[0]) if low.size else order.size
                stopped = keep < order.size
                picks.extend(order[:keep].tolist())
                gains.extend(fill_gains[:keep].tolist())
                n_fill = keep
                bar.update(keep)
                break
            order = np.argsort(-base2, kind="stable")  # picked items (-inf) last
            size = min(window0, n)
            np.take(B, order[:size], axis=0, out=win_b[:size])
            np.take(base2, order[:size], out=win_gain[:size])
            while len(picks) < k:
                # Exact argmax: grow the window until its best exact gain beats every bound outside it.
                while True:
                    pos = int(np.argmax(win_gain[:size]))
                    gain = float(win_gain[pos])
                    if size == n or gain > float(base2[order[size]]):
                        break
                    new_size = min(2 * size, n)
                    new_b = win_b[size:new_size]
                    np.take(B, order[size:new_size], axis=0, out=new_b)
                    new_gain = win_gain[size:new_size]
                    np.take(base2, order[size:new_size], out=new_gain)
                    if proj.size:
                        e_new = new_b @ proj.rows.T
                        new_gain -= np.einsum("ij,ij->i", e_new, e_new)
                    size = new_size
                ties = np.flatnonzero(win_gain[:size] == gain)
                if ties.size > 1:
                    pos = int(ties[np.argmin(order[ties])])
                j = int(order[pos])
                if not gain >= eps or (ridge == 0.0 and gain <= tol):
                    stopped = True
                    break
                picks.append(j)
                gains.append(gain)
                picked[j] = True
                if len(picks) == k:
                    break
                b = B[j]
                u = (b - proj.apply(b)) / math.sqrt(gain)
                proj.add(u)
                # einsum, not BLAS: a multi-threaded matrix-vector product per pick stalls when the cores
                # are busy
                e = np.einsum("ij,j->i", win_b[:size], u, out=e_buf[:size])
                e *= e
                win_gain[:size] -= e
                win_gain[pos] = -math.inf
                if proj.size == block or 4 * size > n:
                    break
            bar.update(len(picks) - shown)  # once per block, not per pick
            shown = len(picks)
            if stopped or len(picks) == k:
                break
            # End of the block: apply the pending directions to every item.
            e_blk = B @ proj.rows.T
            base2 -= np.einsum("ij,ij->i", e_blk, e_blk)
            base2[picked] = -math.inf
            proj.commit()
            window0 = max(128, size // 2)
    return DPPResult(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), stopped, n_fill)


# --------------------------------------------------------------------------------------------------------
# RBF kernel and the entry point


def _rbf_greedy(
    X: NDArray[np.float64],
    q: NDArray[np.float64],
    k: int,
    *,
    ridge: float,
    bandwidth: float,
    P: NDArray[np.float64],
    qp: NDArray[np.float64],
    eps: float,
    progress: bool = False,
) -> DPPResult:
    """Greedy MAP on ``L = diag(q) (S + ridge I) diag(q)``, ``S_ij = exp(-||x_i - x_j||^2 / (2 h^2))``,
    rows computed on the fly; the preselected rows ``P`` are appended and forced."""
    n = X.shape[0]
    Z = np.concatenate([X, P]) if P.shape[0] else X
    qz = np.concatenate([q, qp]) if P.shape[0] else q
    sq = np.einsum("ij,ij->i", Z, Z)
    diag = qz**2 * (1.0 + ridge)
    scale = -0.5 / bandwidth**2
    buf = np.empty(Z.shape[0])

    def row(j: int) -> NDArray[np.float64]:
        np.dot(Z, Z[j], out=buf)  # ||z_i - z_j||^2 = |z_i|^2 + |z_j|^2 - 2 <z_i, z_j>
        np.multiply(buf, -2.0, out=buf)
        np.add(buf, sq, out=buf)
        np.add(buf, sq[j], out=buf)
        np.maximum(buf, 0.0, out=buf)
        np.multiply(buf, scale, out=buf)
        np.exp(buf, out=buf)
        np.multiply(buf, qz, out=buf)
        np.multiply(buf, qz[j], out=buf)
        buf[j] = diag[j]
        return buf

    return greedy_map_rows(
        diag, row, k, n_candidates=n, forced=range(n, Z.shape[0]), eps=eps, progress=progress
    )


def dpp_select(
    features: ArrayLike,
    k: int,
    *,
    quality: ArrayLike | None = None,
    kernel: str = "cosine",
    ridge: float | None = None,
    bandwidth: float | None = None,
    fill: str = "ridge",
    preselected_features: ArrayLike | None = None,
    preselected_quality: ArrayLike | None = None,
    eps: float = 1e-10,
    progress: bool = False,
) -> DPPResult:
    """Select ``k`` diverse, high-quality candidates: the greedy MAP of the DPP with kernel
    ``L = diag(q) (S + ridge I) diag(q)`` (P3, arXiv 2408.05541; fast greedy of arXiv 1709.05135).

    Features (and preselected features) are L2-normalised here (all-zero rows stay zero).

    Args:
        features: ``(N, d)`` candidate embeddings.
        k: budget, ``0 <= k <= N``.
        quality: ``(N,)`` positive per-example quality ``q``; default all ones.
        kernel: ``"cosine"``: ``S = F F^T`` (low-rank path, :func:`greedy_map_lowrank`, ``O(N d)`` per
            pick). ``"rbf"``: ``S_ij = exp(-||f_i - f_j||^2 / (2 bandwidth^2))``, full rank, rows computed
            from the features on the fly (:func:`greedy_map_rows`, ``O(N k (k + d))`` time and an
            ``N x k`` factor in memory: fine up to a few thousand candidates). ``"rbf_blocked"``: the same
            RBF similarity with its own defaults (bandwidth ``RBF_BLOCKED_BANDWIDTH_SCALE`` = 2 x the
            median distance, ridge 1e-4), computed in column blocks in float32 by the blocked greedy
            (:mod:`p3bench.algorithms.dpp_kernels`, :func:`~p3bench.algorithms.dpp_blocked.greedy_map_blocked`):
            ``O(N k^2 / 2)`` in matrix products, diverse at budgets far beyond the embedding dimension
            (0.7-1.3 s at ``N = 10,000, k = 1,000``, 3-8 s at ``N = 7,500, k = 5,000`` on two busy cores,
            ``benchmarks/README.md``). Its picks agree with the float64 greedy except on near-ties within
            float32 rounding.
        ridge: ``>= 0`` added to the diagonal of ``S``; ``None``: the kernel's default,
            ``DEFAULT_RIDGE[kernel]`` (1e-3 for cosine and rbf, 1e-4 for rbf_blocked). It keeps the kernel
            full rank, so a budget larger than the rank of the embeddings is met (cosine: the picks beyond
            the rank are the remaining candidates by decreasing quality, see :func:`greedy_map_lowrank`).
            With ``ridge=0`` and ``fill="ridge"`` the result may have fewer than ``k`` items
            (``stopped_early``).
        bandwidth: RBF bandwidth; default :func:`rbf_bandwidth` of the normalised candidates (median
            pairwise distance of a seeded sample of up to ``BANDWIDTH_SAMPLE`` rows), times
            ``RBF_BLOCKED_BANDWIDTH_SCALE`` for ``"rbf_blocked"``.
        fill: ``"ridge"``: one greedy run on the ridged kernel. ``"restart"``: the P3 public code's
            behaviour when the budget exceeds the kernel's rank: ``ridge`` is not used; when the greedy
            stops early the picked items are removed and the greedy reruns on the rest (unconditioned),
            concatenating until ``k``. Preselected items condition the first run only.
        preselected_features, preselected_quality: items to condition on (e.g. earlier rounds' picks);
            not candidates, not returned, not counted in ``k``.
        eps: stop a greedy run when the best gain falls below ``eps``.
        progress: a progress bar over each greedy run (the RBF paths also count the preselected items, whose
            kernel rows they compute).

    Raises:
        ValueError: unknown ``kernel`` or ``fill``, ``k`` larger than the number of candidates,
            non-positive quality, negative ridge or bandwidth, shape mismatches.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r} is unknown: expected one of {', '.join(KERNELS)}")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is unknown: expected one of {', '.join(FILLS)}")
    F = normalise_rows(as_matrix(features, "features"))
    n, dim = F.shape
    k = check_k(k, n)
    q = as_quality(quality, n)
    ridge = check_ridge(DEFAULT_RIDGE[kernel] if ridge is None else ridge)
    eps = check_eps(eps)
    if preselected_features is None:
        if preselected_quality is not None:
            raise ValueError("preselected_quality is given without preselected_features")
        P = np.empty((0, dim))
    else:
        P = normalise_rows(as_matrix(preselected_features, "preselected_features"))
        if P.shape[1] != dim:
            raise ValueError(
                f"preselected_features has {P.shape[1]} columns: expected {dim}, as many as features"
            )
    qp = as_quality(preselected_quality, P.shape[0], "preselected_quality")
    if kernel in ("rbf", "rbf_blocked"):
        if bandwidth is None:
            bandwidth = rbf_bandwidth(F) * (RBF_BLOCKED_BANDWIDTH_SCALE if kernel == "rbf_blocked" else 1.0)
        elif not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth={bandwidth} is invalid: expected a finite value > 0")

    def run(idx: NDArray[np.int64] | None, budget: int, conditioned: bool, r: float) -> DPPResult:
        X = F if idx is None else F[idx]
        qx = q if idx is None else q[idx]
        Px = P if conditioned else P[:0]
        qpx = qp if conditioned else qp[:0]
        if kernel == "cosine":
            return greedy_map_lowrank(
                X,
                budget,
                quality=qx,
                ridge=r,
                preselected_features=Px,
                preselected_quality=qpx,
                eps=eps,
                progress=progress,
            )
        rbf = rbf_blocked_greedy if kernel == "rbf_blocked" else _rbf_greedy
        return rbf(
            X, qx, budget, ridge=r, bandwidth=float(bandwidth), P=Px, qp=qpx, eps=eps, progress=progress
        )

    if fill == "ridge":
        return run(None, k, True, ridge)

    # fill == "restart": rerun on what is left whenever a run stops early, without the ridge.
    remaining = np.arange(n)
    picks: list[NDArray[np.int64]] = []
    gains: list[NDArray[np.float64]] = []
    count = 0
    first_size = 0
    first = True
    while count < k:
        res = run(None if first else remaining, k - count, first, 0.0)
        chosen = res.indices if first else remaining[res.indices]
        picks.append(chosen)
        gains.append(res.gains)
        count += chosen.size
        if first:
            first_size = chosen.size
        if not res.stopped_early:
            break
        if chosen.size == 0 and not first:
            # Every remaining candidate has L_ii < eps (all-zero embeddings): take them by L_ii.
            diag = q[remaining] ** 2 * np.einsum("ij,ij->i", F[remaining], F[remaining])
            order = np.argsort(-diag, kind="stable")[: k - count]
            picks.append(remaining[order])
            gains.append(diag[order])
            count += order.size
            break
        remaining = np.setdiff1d(remaining, chosen, assume_unique=True)
        first = False
    indices = np.concatenate(picks).astype(np.int64)
    return DPPResult(indices, np.concatenate(gains), False, int(indices.size - first_size))
