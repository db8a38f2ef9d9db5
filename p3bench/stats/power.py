"""Power of the two-sided paired t test over seeds: the smallest difference a sweep can detect, and how many
seeds would detect a given one.

A comparison of two methods over ``n`` shared seeds is a one-sample t test on the ``n`` per-seed
differences. With a true mean difference ``delta`` and a seed standard deviation ``sd`` of the differences,
the test statistic follows a noncentral t distribution with ``n - 1`` degrees of freedom and noncentrality
``delta / sd * sqrt(n)``, so its power is exact (Cohen 1988, ch. 2; the same formula as statsmodels'
``TTestPower``, which the tests compare against). Bouthillier et al. (arXiv 2103.03098) and Dror et al.
(arXiv 1809.01448) argue that comparisons of learning methods must account for this seed variance; this module
says how large a difference a given number of seeds can resolve.

Both the noncentral t distribution (:data:`scipy.stats.nct`) and the root find (:func:`scipy.optimize.brentq`)
come from scipy. The number of seeds is treated as continuous inside the root find and rounded up.
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.stats import nct
from scipy.stats import t as student_t

#: the power p3bench asks of a comparison when it says what a sweep could have detected
POWER = 0.8
#: the two-sided significance level matching the 95% intervals p3bench reports
ALPHA = 0.05

__all__ = ["ALPHA", "POWER", "minimum_detectable_difference", "paired_t_power", "seeds_needed"]


def _power(effect_size: float, n: float, alpha: float) -> float:
    """Power of the two-sided one-sample t test at standardised effect ``effect_size`` (delta / sd) and
    ``n`` observations (continuous ``n`` allowed, ``n > 1``)."""
    df = n - 1.0
    crit = float(student_t.ppf(1.0 - alpha / 2.0, df))
    nc = effect_size * math.sqrt(n)
    # the tail on the far side of the effect: scipy's nct returns NaN for some far-tail values, which are
    # then below 1e-15 and count as 0
    far_tail = float(nct.cdf(-crit, df, nc))
    return float(nct.sf(crit, df, nc)) + (0.0 if math.isnan(far_tail) else far_tail)


def _check_levels(power: float, alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must lie in (0, 1)")
    if not alpha < power < 1.0:
        raise ValueError(f"power={power} must lie in (alpha={alpha}, 1)")


def paired_t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """The probability that a two-sided paired t test at level ``alpha`` over ``n`` seeds rejects "no
    difference" when the true mean difference is ``effect`` and the per-seed differences have standard
    deviation ``sd``. NaN when ``n < 2`` or ``effect`` or ``sd`` is NaN; ``sd = 0`` gives 1 for a non-zero
    effect and ``alpha`` for a zero one."""
    if n < 2 or math.isnan(effect) or math.isnan(sd):
        return math.nan
    if sd < 0:
        raise ValueError(f"sd={sd} must be >= 0")
    if sd == 0:
        return alpha if effect == 0 else 1.0
    return _power(abs(effect) / sd, float(n), alpha)


def minimum_detectable_difference(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest absolute mean difference that a two-sided paired t test at level ``alpha`` over ``n``
    seeds detects with probability ``power``, when the per-seed differences have standard deviation ``sd``.

    In the metric's own units (``sd`` times the standardised effect solved for). NaN when ``n < 2`` or ``sd``
    is NaN; 0 when ``sd`` is 0 (any difference is then decisive)."""
    _check_levels(power, alpha)
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd < 0:
        raise ValueError(f"sd={sd} must be >= 0")
    if sd == 0:
        return 0.0
    upper = 1.0
    while _power(upper, float(n), alpha) < power:
        upper *= 2.0
    effect_size = brentq(lambda d: _power(d, float(n), alpha) - power, 0.0, upper, xtol=1e-12, rtol=1e-12)
    return float(effect_size) * sd


def seeds_needed(
    effect: float, sd: float, power: float = POWER, alpha: float = ALPHA, max_seeds: int = 10_000
) -> int | None:
    """The smallest number of seeds (at least 2) at which a two-sided paired t test at level ``alpha``
    detects a true mean difference ``effect`` with probability ``power``, when the per-seed differences have
    standard deviation ``sd``.

    None when it cannot be computed (``effect`` or ``sd`` NaN, ``effect`` 0) or when more than ``max_seeds``
    would be needed. ``sd = 0`` with a non-zero effect gives 2 (two seeds show a constant difference)."""
    _check_levels(power, alpha)
    if math.isnan(effect) or math.isnan(sd) or effect == 0:
        return None
    if sd < 0:
        raise ValueError(f"sd={sd} must be >= 0")
    if sd == 0:
        return 2
    effect_size = abs(effect) / sd
    if _power(effect_size, 2.0, alpha) >= power:
        return 2
    if _power(effect_size, float(max_seeds), alpha) < power:
        return None
    n_real = brentq(lambda n: _power(effect_size, n, alpha) - power, 2.0, float(max_seeds), xtol=1e-9)
    n = max(2, math.ceil(n_real))
    # the root is found to a tolerance: step to the smallest integer that truly reaches the power
    while n > 2 and _power(effect_size, float(n - 1), alpha) >= power:
        n -= 1
    while _power(effect_size, float(n), alpha) < power:
        n += 1
    return n if n <= max_seeds else None
