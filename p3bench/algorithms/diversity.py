"""How diverse a selection is, next to the obvious alternatives: array in, flat dict of floats out.

A DPP (P3, arXiv 2408.05541; greedy MAP of arXiv 1709.05135) is meant to pick a diverse, high-quality
subset of the candidates. :func:`selection_diversity` says whether it did, by comparing the pick with the
two subsets it should beat or differ from, each of the pick's size ``m`` and drawn from the same
candidates: the top-``m`` by quality (what the DPP degenerates to when its kernel cannot tell candidates
apart) and a seeded uniform random subset. Every statistic is computed for all three.

Keys (all floats; the report reads them as ``diversity_<key>``):

``overlap_topk_quality``
    share of the pick that is also among the top-``m`` candidates by quality (ties: the lower index).
``overlap_random_expected``
    ``m / |candidates|``, the expected overlap of a uniform random pick.
``mean_cosine_pick``, ``mean_cosine_topk``, ``mean_cosine_random``
    mean pairwise cosine similarity of the L2-normalised features over the ``m (m - 1)`` ordered pairs of
    distinct items (:func:`mean_pairwise_cosine`, ``O(m d)``); lower is more diverse.
``logdet_pick``, ``logdet_topk``, ``logdet_random``
    ``log det(F F^T + ridge I) / m`` for the normalised features ``F`` of the subset
    (:func:`cosine_logdet`, through the ``d x d`` dual); higher is more diverse. Per item, so that
    subsets of the same size compare; with ``m > d`` it is ``log(ridge) (m - d) / m`` plus the spread of
    the subset over the ``d`` directions.
``mean_quality_pick``, ``mean_quality_topk``, ``mean_quality_random``
    mean quality of each subset (for P3, the score: higher is easier).
``effective_rank``
    the effective dimension of the pick's cosine Gram matrix ``G = F F^T`` at the ridge,
    ``tr(G (G + ridge I)^{-1}) = sum_i lambda_i / (lambda_i + ridge)`` over its eigenvalues (the effective
    degrees of freedom of Zhang, Neural Computation 2005; :func:`effective_dimension`): how many directions
    of the kernel stand above the ridge, i.e. how many of the ``m`` items a DPP with this kernel and ridge
    can still keep apart. At most ``min(m, d)`` (384 for MiniLM): when it is far below ``m``, the later
    picks of a cosine-kernel DPP are decided by the ridge, i.e. by quality. A full-rank kernel's own value
    is :func:`kernel_effective_rank`. (The entropy effective rank of Roy & Vetterli 2007 was not used: the
    common direction of sentence embeddings, a mean cosine of about 0.5, holds most of the spectrum's
    mass, which puts it near 15 for any subset.)

Cost: three ``d x d`` Gram matrices, their log-determinants and one eigendecomposition, on one BLAS thread:
0.14 s at ``m = 5,000, d = 384`` on a busy core (``diagnostics_seconds`` in the JSON lines of
``benchmarks/dpp_diversity.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from p3bench.algorithms.dpp_common import as_matrix, normalise_rows, one_blas_thread, rbf_bandwidth
from p3bench.algorithms.dpp_kernels import RBF_BLOCKED_BANDWIDTH_SCALE, RBFColumns

__all__ = [
    "DIVERSITY_KEYS",
    "DIVERSITY_RIDGE",
    "KERNEL_RANK_SAMPLE",
    "cosine_effective_rank",
    "cosine_logdet",
    "effective_dimension",
    "kernel_effective_rank",
    "mean_pairwise_cosine",
    "selection_diversity",
]

#: The ridge of :func:`cosine_logdet` in :func:`selection_diversity` (the DPP's default ridge).
DIVERSITY_RIDGE = 1e-3
#: The keys of :func:`selection_diversity`, in order.
DIVERSITY_KEYS: tuple[str, ...] = (
    "overlap_topk_quality",
    "overlap_random_expected",
    "mean_cosine_pick",
    "mean_cosine_topk",
    "mean_cosine_random",
    "logdet_pick",
    "logdet_topk",
    "logdet_random",
    "mean_quality_pick",
    "mean_quality_topk",
    "mean_quality_random",
    "effective_rank",
)
#: Items (a seeded sample) on which :func:`kernel_effective_rank` computes a full-rank kernel's spectrum.
KERNEL_RANK_SAMPLE = 1000


def _unit_rows(features: ArrayLike) -> NDArray[np.float64]:
    return normalise_rows(as_matrix(features, "features"))


def mean_pairwise_cosine(features: ArrayLike) -> float:
    """Mean cosine similarity over ordered pairs of distinct rows, ``(||sum_i f_i||^2 - sum_i ||f_i||^2) /
    (m (m - 1))`` for the L2-normalised rows ``f_i`` (all-zero rows stay zero): ``O(m d)``, no ``m x m``
    matrix. 0.0 for fewer than two rows."""
    F = _unit_rows(features)
    m = F.shape[0]
    if m < 2:
        return 0.0
    total = F.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", F, F)) / (m * (m - 1)))


def cosine_logdet(features: ArrayLike, *, ridge: float = DIVERSITY_RIDGE) -> float:
    """``log det(F F^T + ridge I_m) / m`` for the L2-normalised rows ``F`` (``m x d``), by Sylvester's
    identity ``det(ridge I_m + F F^T) = ridge^m det(I_d + F^T F / ridge)``: ``O(m d^2)``, no ``m x m``
    matrix. 0.0 for no rows."""
    if not (math.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge={ridge} is invalid: expected a finite value > 0")
    F = _unit_rows(features)
    m, d = F.shape
    if m == 0:
        return 0.0
    _, value = np.linalg.slogdet(np.eye(d) + (F.T @ F) / ridge)  # positive definite: sign 1
    return float((m * math.log(ridge) + value) / m)


def effective_dimension(eigenvalues: ArrayLike, ridge: float = DIVERSITY_RIDGE) -> float:
    """``sum_i lambda_i / (lambda_i + ridge)`` over the eigenvalues of a PSD matrix ``K`` (negative
    rounding clipped to 0): ``tr(K (K + ridge I)^{-1})``, the number of its directions above ``ridge``
    (between 0 and its rank; ``r`` eigenvalues far above the ridge count about ``r``)."""
    if not (math.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge={ridge} is invalid: expected a finite value > 0")
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64).reshape(-1), 0.0, None)
    return float(np.sum(lam / (lam + ridge)))


def cosine_effective_rank(features: ArrayLike, ridge: float = DIVERSITY_RIDGE) -> float:
    """:func:`effective_dimension` of the cosine Gram ``F F^T`` of the L2-normalised rows, from the
    eigenvalues of the ``d x d`` dual ``F^T F`` (the same nonzero ones; the zero ones add nothing)."""
    F = _unit_rows(features)
    return effective_dimension(np.linalg.eigvalsh(F.T @ F), ridge)


def _check_indices(indices: ArrayLike, n: int, name: str) -> NDArray[np.int64]:
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(
            f"{name} must be a 1-d array of integer row indices: got shape {idx.shape}, {idx.dtype}"
        )
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(
            f"{name} must be row indices in [0, {n}): got values from {idx.min()} to {idx.max()}"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{name} contains repeated indices: expected each row at most once")
    return idx


def selection_diversity(
    features: ArrayLike,
    picked: ArrayLike,
    quality: ArrayLike,
    candidates: ArrayLike | None = None,
    *,
    seed: int = 0,
    ridge: float = DIVERSITY_RIDGE,
) -> dict[str, float]:
    """The diversity of the pick against the top-``m`` by quality and a random subset of the candidates,
    all of the pick's size ``m`` (the keys and their meaning: the module docstring).

    Args:
        features: ``(N, d)`` embeddings (normalised here).
        picked: row indices of the pick, distinct, all among ``candidates``.
        quality: ``(N,)`` finite quality of every row (higher = better; for P3 the score).
        candidates: row indices the pick was made from (the admitted examples); default all rows.
        seed: of the random subset.
        ridge: of :func:`cosine_logdet`, ``> 0``.

    Raises:
        ValueError: an empty pick, indices out of range or repeated, a pick outside the candidates, a
            quality of the wrong shape or not finite.
    """
    F = as_matrix(features, "features")
    n = F.shape[0]
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise ValueError(f"quality has shape {q.shape}: expected ({n},), one value per row of features")
    if not np.all(np.isfinite(q)):
        raise ValueError("quality contains NaN or infinite values")
    pick = _check_indices(picked, n, "picked")
    cand = np.arange(n) if candidates is None else _check_indices(candidates, n, "candidates")
    m = pick.size
    if m == 0:
        raise ValueError("picked is empty: expected at least one index")
    if not np.isin(pick, cand).all():
        raise ValueError("picked contains rows that are not among candidates: expected a subset")
    # top-m by quality, ties by the lower index; a seeded uniform subset
    by_quality = cand[np.lexsort((cand, -q[cand]))]
    topk = by_quality[:m]
    random = np.random.default_rng(seed).choice(cand, size=m, replace=False)
    subsets = {"pick": pick, "topk": topk, "random": random}
    out: dict[str, float] = {
        "overlap_topk_quality": float(np.isin(pick, topk).sum() / m),
        "overlap_random_expected": m / cand.size,
    }
    with one_blas_thread():  # d x d products: twice as fast as with two threads on two busy cores
        for name, idx in subsets.items():
            out[f"mean_cosine_{name}"] = mean_pairwise_cosine(F[idx])
        for name, idx in subsets.items():
            out[f"logdet_{name}"] = cosine_logdet(F[idx], ridge=ridge)
        for name, idx in subsets.items():
            out[f"mean_quality_{name}"] = float(q[idx].mean())
        out["effective_rank"] = cosine_effective_rank(F[pick], ridge)
    return out


def kernel_effective_rank(
    features: ArrayLike,
    *,
    kernel: str = "rbf_blocked",
    bandwidth: float | None = None,
    ridge: float = DIVERSITY_RIDGE,
    sample: int = KERNEL_RANK_SAMPLE,
    seed: int = 0,
) -> float:
    """:func:`effective_dimension` at ``ridge`` of the similarity ``S`` that
    :func:`~p3bench.algorithms.dpp.dpp_select`'s ``kernel`` builds on ``features`` (L2-normalised here),
    without the quality: how many of these items the kernel can keep apart above the ridge.

    ``"cosine"``: ``S = F F^T`` through the ``d x d`` dual (exact for any ``m``, at most ``d``; the same as
    :func:`selection_diversity`'s ``effective_rank``). ``"rbf"`` and ``"rbf_blocked"``:
    ``S_ij = exp(-||f_i - f_j||^2 / (2 h^2))`` with the given ``bandwidth`` or the kernel's default (the
    median pairwise distance, times ``RBF_BLOCKED_BANDWIDTH_SCALE`` for ``rbf_blocked``), on a seeded
    sample of ``sample`` rows when there are more: an ``m x m`` spectrum costs ``O(m^3)``, so the value is
    that of ``min(m, sample)`` items and compares with ``min(m, sample)``, not ``m``. About 0.3 s at the
    default sample.
    """
    if kernel not in ("cosine", "rbf", "rbf_blocked"):
        raise ValueError(f"kernel={kernel!r} is unknown: expected one of cosine, rbf, rbf_blocked")
    if not (math.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge={ridge} is invalid: expected a finite value > 0")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 2:
        raise ValueError(f"sample={sample!r} is invalid: expected an integer >= 2")
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth={bandwidth} is invalid: expected a finite value > 0")
    F = _unit_rows(features)
    m = F.shape[0]
    if m == 0:
        return 0.0
    if kernel == "cosine":
        return cosine_effective_rank(F, ridge)
    if bandwidth is None:
        scale = RBF_BLOCKED_BANDWIDTH_SCALE if kernel == "rbf_blocked" else 1.0
        bandwidth = scale * rbf_bandwidth(F)
    if m > sample:
        F = F[np.sort(np.random.default_rng(seed).choice(m, size=int(sample), replace=False))]
    size = F.shape[0]
    S = RBFColumns(F, np.ones(size), ridge=0.0, bandwidth=float(bandwidth), dtype=np.float64)(
        None, np.arange(size)
    )
    return effective_dimension(np.linalg.eigvalsh(S), ridge)


def standardized_columns(features: np.ndarray) -> np.ndarray:
    """Each column centred and scaled to unit standard deviation over the rows (a constant column stays 0),
    float32."""
    x = np.asarray(features, dtype=np.float64)
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return z.astype(np.float32)
