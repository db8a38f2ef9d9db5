"""APPS metrics (Hendrycks et al., 2021, arXiv 2105.09938) and pass@k (Chen et al., 2021, arXiv 2107.03374).

- test-case average: per problem, the fraction of its tests passed; averaged over problems;
- strict accuracy: the fraction of problems whose every test passed;
- pass@k: the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` from ``n`` samples of which ``c`` are
  correct, computed as a product so it neither overflows nor loses precision.

Each is reported per difficulty (``introductory``, ``interview``, ``competition``) and over all problems.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

from p3bench.errors import ConfigError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"pass_at_k {name}={value!r} is not an integer: expected a count")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigError(
            f"pass_at_k(n={n}, c={c}, k={k}) is out of range: expected n >= 1, 0 <= c <= n, 1 <= k <= n"
        )
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _by_group(groups: Sequence[Hashable] | None, n: int) -> dict[Hashable, list[int]]:
    if groups is not None and len(groups) != n:
        raise ConfigError(f"got {len(groups)} difficulties for {n} problems: expected one per problem")
    indices: dict[Hashable, list[int]] = defaultdict(list)
    for i in range(n):
        indices[groups[i] if groups is not None else "all"].append(i)
        if groups is not None:
            indices["all"].append(i)
    return indices


def apps_scores(
    results: Sequence[Any], difficulties: Sequence[Hashable] | None = None
) -> dict[str, dict[str, float]]:
    """Test-case average and strict accuracy, per difficulty and over ``"all"`` problems.

    ``results`` holds one :class:`~p3bench.execution.apps.ProgramResult` (or anything with
    ``test_case_average`` and ``strict``) per problem; ``difficulties`` one label per problem.
    """
    out: dict[str, dict[str, float]] = {}
    for group, members in sorted(_by_group(difficulties, len(results)).items(), key=lambda kv: str(kv[0])):
        out[str(group)] = {
            "n_problems": float(len(members)),
            "test_case_average": _mean([results[i].test_case_average for i in members]),
            "strict_accuracy": _mean([float(results[i].strict) for i in members]),
        }
    return out


def pass_at_k_scores(
    correct: Sequence[Sequence[bool]],
    ks: Sequence[int] = (1, 5, 10),
    difficulties: Sequence[Hashable] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean pass@k per difficulty and over ``"all"``; ``correct[p]`` lists the verdicts (strict) of
    problem ``p``'s samples. A k larger than some problem's sample count is left out."""
    if not correct:
        return {}
    smallest = min(len(samples) for samples in correct)
    usable = [k for k in ks if 1 <= k <= smallest]
    out: dict[str, dict[str, float]] = {}
    for group, members in sorted(_by_group(difficulties, len(correct)).items(), key=lambda kv: str(kv[0])):
        row = {"n_problems": float(len(members))}
        for k in usable:
            row[f"pass@{k}"] = _mean(
                [pass_at_k(len(correct[i]), sum(map(bool, correct[i])), k) for i in members]
            )
        out[str(group)] = row
    return out
