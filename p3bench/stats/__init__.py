"""Uncertainty for every number p3bench reports: intervals of one run's metrics over its test examples, and
paired comparisons of methods over seeds (differences, intervals, verdicts, power, rankings).

- :mod:`p3bench.stats.intervals`: Wilson intervals and standard errors of one run's metrics.
- :mod:`p3bench.stats.paired`: a method against a reference by seed (t and two-level bootstrap intervals,
  verdict, detectable difference, seeds needed) and Holm's correction over a family of comparisons.
- :mod:`p3bench.stats.power`: power, minimum detectable difference and seeds needed of the paired t test.
- :mod:`p3bench.stats.ranking`: how often each method ranks first under a bootstrap over seeds.
"""

from p3bench.stats.intervals import mean_and_se, wilson_interval
from p3bench.stats.paired import PairedComparison, compare_paired, holm_adjust, with_holm
from p3bench.stats.power import minimum_detectable_difference, seeds_needed
from p3bench.stats.ranking import rank_probabilities

__all__ = [
    "PairedComparison",
    "compare_paired",
    "holm_adjust",
    "mean_and_se",
    "minimum_detectable_difference",
    "rank_probabilities",
    "seeds_needed",
    "wilson_interval",
    "with_holm",
]
