"""Paired comparisons of a method against a reference over seeds: the difference, its intervals, a verdict,
what the sweep could have detected, and Holm's correction when many comparisons are read at once.

Two runs with the same seed share the initial model and the batch order (and the test split, which p3bench
takes from ``dataset.params`` for every seed), so a method is compared with a reference seed by seed: the
per-seed differences (method minus reference, in the metric's own units)
are the sample. Seed variance is often as large as the differences a paper reports (Dror et al., arXiv
1809.01448; Bouthillier et al., arXiv 2103.03098), and DataDecide (Magnusson et al., arXiv 2504.11393) shows
how often small experiments decide a data choice wrongly; every comparison p3bench prints therefore carries
an interval and a verdict rather than a bare mean.

- The **t interval** over seeds (a one-sample t interval of the per-seed differences, which is the paired t
  test's interval) decides the verdict. It treats the test set as fixed and asks whether the difference is
  larger than seed noise, with the small-sample correction that a bootstrap over a handful of seeds lacks.
- The **bootstrap** interval (percentile; Efron & Tibshirani 1993, ch. 13) is shown beside it. It resamples
  seeds and, when per-example values are given, the test examples too (a two-level bootstrap; Davison &
  Hinkley 1997, sec. 3.8), so that it also carries the sampling error of a finite test set, which the
  spread over seeds does not see when every seed is scored on the same examples. See :func:`hierarchical_bootstrap` for the two designs it supports and how each behaves.
- **Power**: the smallest difference the sweep could have detected and, for an inconclusive difference, the
  number of seeds that would resolve the observed one (:mod:`p3bench.stats.power`).
- **Holm** (1979) step-down adjusted p-values for a family of comparisons (:func:`holm_adjust`,
  :func:`with_holm`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import ttest_1samp

from p3bench.stats.intervals import CONFIDENCE
from p3bench.stats.power import POWER, minimum_detectable_difference, seeds_needed

__all__ = [
    "BETTER",
    "INCONCLUSIVE",
    "WORSE",
    "PairedComparison",
    "compare_paired",
    "hierarchical_bootstrap",
    "holm_adjust",
    "with_holm",
]

BETTER = "better"
WORSE = "worse"
INCONCLUSIVE = "inconclusive"

#: gathered elements per chunk of the bootstrap (bounds its memory to a few tens of MB)
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PairedComparison:
    """A method against a reference over the seeds both have, in the metric's own units.

    ``mean_diff``, ``t_low``/``t_high`` and ``boot_low``/``boot_high`` are method minus reference;
    ``verdict`` reads them in the metric's direction (``higher_is_better``). Fields that cannot be computed
    (fewer than 2 pairs) are NaN or None. ``p_holm``/``verdict_holm`` are filled by :func:`with_holm`.
    """

    #: the compared method and the reference, when named
    method: str | None
    reference: str | None
    #: the seeds both have a finite value for, sorted
    seeds: tuple[Hashable, ...]
    n_pairs: int
    #: means over the paired seeds of the method's and the reference's values
    method_mean: float
    reference_mean: float
    #: mean and sample standard deviation (ddof=1) of the per-seed differences
    mean_diff: float
    sd_diff: float
    #: the t interval of the mean difference over seeds at ``confidence``: decides the verdict
    t_low: float
    t_high: float
    #: two-sided paired t test of "no difference"
    p_value: float
    #: the percentile bootstrap interval (NaN when not computable) and what it resampled: "seeds",
    #: "seeds x examples (shared)" or "seeds x examples (nested)" (see :func:`hierarchical_bootstrap`)
    boot_low: float
    boot_high: float
    bootstrap: str
    #: "better", "worse" or "inconclusive"
    verdict: str
    #: the smallest |difference| detectable with 80% power at this sd and seed count (two-sided,
    #: alpha = 1 - confidence)
    mde: float
    #: for an inconclusive difference, the seeds at which the observed difference would be detected with
    #: 80% power at the observed sd; None when decisive, or not computable (zero effect, < 2 pairs)
    seeds_needed: int | None
    higher_is_better: bool
    confidence: float
    #: Holm-adjusted p-value and the verdict at the family-wise level (see :func:`with_holm`)
    p_holm: float | None = None
    verdict_holm: str | None = None
    #: the t interval over seeds is decisive but the bootstrap over seeds and test examples is not: the
    #: difference is within the test set's sampling error, so the verdict is inconclusive
    test_set_limited: bool = False

    def to_row(self) -> dict[str, Any]:
        """A flat dict for CSV and Markdown tables (seeds joined by spaces)."""
        row = dataclasses.asdict(self)
        row["seeds"] = " ".join(str(s) for s in self.seeds)
        return row


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return INCONCLUSIVE


def _sorted_seeds(seeds: set[Hashable]) -> list[Hashable]:
    try:
        return sorted(seeds)  # type: ignore[type-var]
    except TypeError:
        return sorted(seeds, key=repr)


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(float(x))


def hierarchical_bootstrap(
    diffs_by_seed: Sequence[np.ndarray],
    *,
    shared_test_set: bool = False,
    n_boot: int = 2000,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bootstrap replicates of the mean over seeds of the per-seed mean differences, resampling seeds and
    test examples together (Davison & Hinkley 1997, sec. 3.8; Efron & Tibshirani 1993).

    ``diffs_by_seed[i]`` holds seed i's per-example differences (method minus reference on the same test
    examples, so both are resampled with the same indices). Each replicate draws ``k`` seeds with
    replacement from the ``k`` given, and test examples with replacement:

    - ``shared_test_set=False`` (nested design: each seed has its own test sample, lengths may differ): every
      drawn seed draws its own examples. The spread of the seed means already contains the example noise,
      so resampling examples again counts it twice; the interval is then conservative (wider than it should
      be) when example noise is large against seed noise, and close to the seed-only bootstrap otherwise.
    - ``shared_test_set=True`` (crossed design: every seed was scored on the same examples in the same
      order, as in p3bench, whose test split depends on ``dataset.params`` and not on the run's seed): one
      draw of example indices per replicate is used for all its seeds, so an example that favours the method
      in every seed is resampled as one example, and the interval carries the sampling error of the test
      set, which the spread over seeds does not see. Departure from a plain two-stage bootstrap: a design
      with examples crossed with seeds needs the same example draw across seeds (Davison & Hinkley treat
      nested designs only).

    What each design estimates, with ``k`` seeds, ``n_i`` examples in seed i, ``c_i`` the times seed i is
    drawn (``E[c_i] = 1``, ``E[c_i^2] = 2 - 1/k``, ``E[c_i c_j] = 1 - 1/k``) and ``C`` the covariance (ddof
    0) over examples of the seeds' differences: the replicates' variance is ``var(seed means) / k`` (ddof 0)
    plus ``sum_i C_ii / (n_i k^2)`` (nested) or ``sum_ij E[c_i c_j] C_ij / (n k^2)`` (crossed); the tests
    check both. In the simulations of ``tests/test_stats.py`` (5 seeds, the test set's sampling error
    dominating) the 95% percentile interval covers the truth about 95% of the time for the crossed design on
    crossed data and at least 95% for the nested design on nested data, and far less for the nested design
    on crossed data, where independent draws per seed average the shared examples' effect away. With few
    seeds and seed noise dominating, any percentile bootstrap over seeds is too narrow (it has no
    small-sample correction): the t interval, not this one, decides the verdict.

    Returns ``n_boot`` replicates. Vectorised: replicates are generated in chunks by gathering with index
    arrays, one seed (nested) or one chunk of replicates (crossed) at a time.
    """
    k = len(diffs_by_seed)
    if k == 0:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    diffs = [np.asarray(d, dtype=np.float64) for d in diffs_by_seed]
    for d in diffs:
        if d.ndim != 1 or d.size == 0:
            raise ValueError(f"per-example differences must be non-empty 1-D arrays, got shape {d.shape}")
    # seed draws: counts[b, i] = how many times replicate b drew seed i
    drawn = rng.integers(0, k, size=(n_boot, k))
    counts = np.zeros((n_boot, k), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), k), drawn.ravel()), 1)
    totals = np.zeros(n_boot)
    if shared_test_set:
        n = diffs[0].size
        if any(d.size != n for d in diffs):
            raise ValueError(
                "shared_test_set=True needs the same number of test examples for every seed, got "
                f"{sorted({d.size for d in diffs})}"
            )
        matrix = np.stack(diffs)  # (k, n)
        chunk = max(1, _CHUNK_ELEMENTS // (n * k))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            idx = rng.integers(0, n, size=(stop - start, n))
            seed_means = matrix[:, idx].mean(axis=2)  # (k, chunk)
            totals[start:stop] = (counts[start:stop] * seed_means.T).sum(axis=1)
    else:
        for i, d in enumerate(diffs):
            n = d.size
            replicate_of_draw = np.repeat(np.arange(n_boot), counts[:, i])
            means = np.empty(replicate_of_draw.size)
            chunk = max(1, _CHUNK_ELEMENTS // n)
            for start in range(0, means.size, chunk):
                stop = min(means.size, start + chunk)
                means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
            totals += np.bincount(replicate_of_draw, weights=means, minlength=n_boot)
    return totals / k


def compare_paired(
    method_values: Mapping[Hashable, float],
    reference_values: Mapping[Hashable, float],
    *,
    higher_is_better: bool,
    per_example: Mapping[Hashable, tuple[np.ndarray, np.ndarray]] | None = None,
    shared_test_set: bool | None = None,
    confidence: float = CONFIDENCE,
    n_boot: int = 2000,
    rng_seed: int = 0,
    method: str | None = None,
    reference: str | None = None,
) -> PairedComparison:
    """Compare a method with a reference seed by seed.

    ``method_values`` and ``reference_values`` map a seed to that run's metric value. The pairs are the seeds
    present in both with finite values: a seed missing (or NaN) on either side drops that pair, never the
    method. Differences are method minus reference.

    Verdict (from the t interval at ``confidence``): "better" when it excludes 0 on the good side (above 0
    when ``higher_is_better``, below 0 otherwise), "worse" when it excludes 0 on the bad side, else
    "inconclusive". With fewer than 2 pairs everything but the means is NaN and the verdict "inconclusive".
    When all differences are equal up to the rounding of the subtraction (zero variance), the t interval is
    the point itself: a non-zero difference is decisive (p = 0, verdict by its sign), a zero one is
    "inconclusive" (p = 1). When the bootstrap resampled test examples too, a decisive t verdict stands only
    if the bootstrap interval agrees (excludes 0 on the same side); otherwise the difference is within the
    test set's sampling error, which the spread over seeds on a shared test set cannot see: the verdict is
    "inconclusive", ``test_set_limited`` is True and ``seeds_needed`` None (more seeds do not shrink it; a
    larger test set does).

    ``per_example`` (optional) maps each paired seed to ``(method_array, reference_array)``: per-example
    values on the test set, the same examples in the same order for both. With it the bootstrap resamples
    seeds and examples (:func:`hierarchical_bootstrap`), without it seeds only. ``shared_test_set`` picks the
    design: True when every seed was scored on the same test examples in the same order (p3bench's splits),
    False when each seed has its own test sample; None (default) takes True when all paired seeds have the
    same number of examples and False otherwise. The crossed design is the safe choice whenever it applies:
    on crossed data the nested one undercovers badly, on nested data the crossed one is conservative.
    The bootstrap interval is the percentile interval of ``n_boot`` replicates drawn from
    ``np.random.default_rng(rng_seed)``; NaN with fewer than 2 pairs.

    ``mde`` and ``seeds_needed`` use 80% power and alpha = 1 - ``confidence`` (:mod:`p3bench.stats.power`).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    common = {
        s
        for s in method_values.keys() & reference_values.keys()
        if _finite(method_values[s]) and _finite(reference_values[s])
    }
    seeds = _sorted_seeds(common)
    m = np.array([float(method_values[s]) for s in seeds], dtype=np.float64)
    r = np.array([float(reference_values[s]) for s in seeds], dtype=np.float64)
    diffs = m - r
    n = len(seeds)
    nan = math.nan
    method_mean = float(m.mean()) if n else nan
    reference_mean = float(r.mean()) if n else nan
    mean_diff = float(diffs.mean()) if n else nan
    sd_diff = float(diffs.std(ddof=1)) if n >= 2 else nan
    alpha = 1.0 - confidence
    example_diffs = [_example_diffs(per_example, s) for s in seeds] if per_example is not None else None
    if example_diffs is None:
        kind = "seeds"
    else:
        if shared_test_set is None:
            shared_test_set = len({d.size for d in example_diffs}) <= 1
        kind = "seeds x examples (shared)" if shared_test_set else "seeds x examples (nested)"

    if n < 2:
        t_low = t_high = p_value = boot_low = boot_high = nan
    else:
        # equal differences up to the rounding of the subtraction: zero variance, the interval is the point
        rounding = 16 * np.finfo(np.float64).eps * max(float(np.abs(m).max()), float(np.abs(r).max()))
        if np.ptp(diffs) <= rounding:
            sd_diff = 0.0
            if abs(mean_diff) <= rounding:
                mean_diff = 0.0
            t_low = t_high = mean_diff
            p_value = 1.0 if mean_diff == 0.0 else 0.0
        else:
            test = ttest_1samp(diffs, 0.0)
            ci = test.confidence_interval(confidence)
            t_low, t_high, p_value = float(ci.low), float(ci.high), float(test.pvalue)
        rng = np.random.default_rng(rng_seed)
        if example_diffs is None:
            replicates = diffs[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        else:
            replicates = hierarchical_bootstrap(
                example_diffs,
                shared_test_set=bool(shared_test_set),
                n_boot=n_boot,
                rng=rng,
            )
        boot_low, boot_high = (float(q) for q in np.quantile(replicates, [alpha / 2, 1 - alpha / 2]))

    verdict = _verdict(t_low, t_high, higher_is_better)
    # the t interval over seeds does not see the test set's sampling error when every seed is scored on the
    # same examples; a bootstrap over seeds and test examples does: a verdict needs both to agree
    test_set_limited = (
        kind != "seeds"
        and verdict != INCONCLUSIVE
        and _verdict(boot_low, boot_high, higher_is_better) != verdict
    )
    if test_set_limited:
        verdict = INCONCLUSIVE
    mde = minimum_detectable_difference(sd_diff, n, power=POWER, alpha=alpha) if n >= 2 else nan
    needed = None
    if verdict == INCONCLUSIVE and n >= 2 and not test_set_limited:
        needed = seeds_needed(mean_diff, sd_diff, power=POWER, alpha=alpha)
    return PairedComparison(
        method=method,
        reference=reference,
        seeds=tuple(seeds),
        n_pairs=n,
        method_mean=method_mean,
        reference_mean=reference_mean,
        mean_diff=mean_diff,
        sd_diff=sd_diff,
        t_low=t_low,
        t_high=t_high,
        p_value=p_value,
        boot_low=boot_low,
        boot_high=boot_high,
        bootstrap=kind,
        verdict=verdict,
        mde=mde,
        seeds_needed=needed,
        higher_is_better=higher_is_better,
        confidence=confidence,
        test_set_limited=test_set_limited,
    )


def _example_diffs(
    per_example: Mapping[Hashable, tuple[np.ndarray, np.ndarray]], seed: Hashable
) -> np.ndarray:
    if seed not in per_example:
        raise ValueError(
            f"per_example has no arrays for paired seed {seed!r} (pass per_example=None to bootstrap seeds only)"
        )
    method_arr, reference_arr = (np.asarray(a, dtype=np.float64) for a in per_example[seed])
    if method_arr.shape != reference_arr.shape or method_arr.ndim != 1:
        raise ValueError(
            f"per_example[{seed!r}]: method and reference need 1-D arrays of the same length (the same test "
            f"examples), got shapes {method_arr.shape} and {reference_arr.shape}"
        )
    d = method_arr - reference_arr
    if not np.isfinite(d).all():
        raise ValueError(f"per_example[{seed!r}] has non-finite values")
    return d


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of p_(j) is
    max over i <= j of min(1, (m - i + 1) p_(i)): monotone in the raw p-values and capped at 1. Rejecting
    where the adjusted value is below alpha controls the family-wise error rate at alpha. NaN entries pass
    through as NaN and do not count towards m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m:
        if ((p[finite] < 0) | (p[finite] > 1)).any():
            raise ValueError(f"p-values must lie in [0, 1], got {p_values}")
        order = finite[np.argsort(p[finite], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


def with_holm(comparisons: Sequence[PairedComparison], alpha: float = 0.05) -> list[PairedComparison]:
    """The comparisons, as one family, with ``p_holm`` (Holm-adjusted p-values) and ``verdict_holm``: "better"
    or "worse" (by the sign of the mean difference and the metric's direction) where ``p_holm < alpha``,
    else "inconclusive". For a comparison read alone ``verdict`` is the answer; when a reader scans many
    rows for any difference, ``verdict_holm`` keeps the chance of even one false "better"/"worse" at alpha.
    """
    adjusted = holm_adjust([c.p_value for c in comparisons])
    out = []
    for c, p in zip(comparisons, adjusted, strict=True):
        if math.isnan(p) or p >= alpha or c.mean_diff == 0 or c.test_set_limited:
            verdict = INCONCLUSIVE
        else:
            verdict = _verdict(c.mean_diff, c.mean_diff, c.higher_is_better)
        out.append(dataclasses.replace(c, p_holm=p, verdict_holm=verdict))
    return out
