"""The ranking of several methods with its uncertainty: how often each method ranks first, and its mean rank,
under a bootstrap over seeds.

A table sorted by mean hides how fragile its order is when a few seeds decide it. Following the
"probability of improvement" and bootstrap rankings of rliable (Agarwal et al., NeurIPS 2021, arXiv
2108.13264), each bootstrap replicate resamples the shared seeds with replacement (Efron & Tibshirani 1993),
ranks the methods by their mean over the drawn seeds, and the ranks are tallied over replicates. Methods are
resampled with the same seeds in a replicate, which keeps the pairing by seed.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["rank_probabilities"]


def rank_probabilities(
    values: Mapping[str, Mapping[Hashable, float]],
    *,
    higher_is_better: bool,
    n_boot: int = 2000,
    rng_seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per method: ``{"p_first", "mean_rank", "mean", "n_seeds"}``.

    ``values[method][seed]`` is a run's metric value. Only the seeds that every method has, with a finite
    value, are used (a method missing a seed would otherwise be ranked on other seeds than its rivals), and
    ``n_seeds`` says how many; the others are ignored. Each of ``n_boot`` replicates (drawn from
    ``np.random.default_rng(rng_seed)``) resamples those seeds with replacement and ranks the methods by
    their mean over them, rank 1 the best (highest when ``higher_is_better``). Tied means (equal up to
    rounding) share the first place equally and get the average of their ranks.

    ``p_first`` is the share of replicates in which the method ranks first, ``mean_rank`` its mean rank,
    ``mean`` its mean over the shared seeds. With fewer than 2 shared seeds ``p_first`` and ``mean_rank`` are
    NaN (a bootstrap over one seed would claim a certainty it has not earned).
    """
    methods = list(values)
    if not methods:
        return {}
    shared = set.intersection(
        *({s for s, v in values[m].items() if v is not None and math.isfinite(float(v))} for m in methods)
    )
    try:
        seeds = sorted(shared)  # type: ignore[type-var]
    except TypeError:
        seeds = sorted(shared, key=repr)
    k = len(seeds)
    table = np.array([[float(values[m][s]) for s in seeds] for m in methods], dtype=np.float64).reshape(
        len(methods), k
    )
    means = table.mean(axis=1) if k else np.full(len(methods), np.nan)
    if k < 2:
        return {
            m: {"p_first": math.nan, "mean_rank": math.nan, "mean": float(means[i]), "n_seeds": k}
            for i, m in enumerate(methods)
        }
    rng = np.random.default_rng(rng_seed)
    drawn = rng.integers(0, k, size=(n_boot, k))
    boot_means = table[:, drawn].mean(axis=2).T  # (n_boot, methods)
    score = boot_means if higher_is_better else -boot_means
    # means equal up to rounding are ties: compare them at 12 significant digits of the replicate's scale
    scale = np.abs(score).max(axis=1, keepdims=True)
    score = np.round(score / np.where(scale > 0, scale, 1.0), 12)
    is_best = score == score.max(axis=1, keepdims=True)
    p_first = (is_best / is_best.sum(axis=1, keepdims=True)).mean(axis=0)
    ranks = rankdata(-score, method="average", axis=1)
    mean_rank = ranks.mean(axis=0)
    return {
        m: {
            "p_first": float(p_first[i]),
            "mean_rank": float(mean_rank[i]),
            "mean": float(means[i]),
            "n_seeds": k,
        }
        for i, m in enumerate(methods)
    }
