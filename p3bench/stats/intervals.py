"""Intervals of one run's metrics over its test examples: Wilson for an accuracy, the standard error of a
mean for any other per-example metric."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import norm

#: the confidence level of every interval p3bench reports unless told otherwise
CONFIDENCE = 0.95


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001 recommend
    it over the normal interval for small counts and proportions near 0 or 1). ``(nan, nan)`` when n = 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} is outside [0, n={n}]")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample sd / sqrt(n)); se is NaN for fewer than 2
    values, both NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
