"""Group runs by experiment, dataset, method and budget, and aggregate a metric over seeds."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from p3bench.report.runs import RunRecord
from p3bench.results import CONTINUOUS_HEADLINES, INSTRUCTION_BESIDE_HEADLINE, TASK_HEADLINES, quality_metric

WHOLE_POOL = "all"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (NaN for one seed) and count of seeds."""

    mean: float
    sd: float
    n: int

    def format(self, digits: int = 3) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "-"
        spread = "" if math.isnan(self.sd) else f" ± {self.sd:.{digits}f}"
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def as_number(value: Any) -> float | None:
    """``value`` as a finite-or-infinite float, or None for missing, NaN and non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def seed_sort_key(seed: Any) -> tuple[int, float, str]:
    number = as_number(seed)
    return (0, number, "") if number is not None else (1, 0.0, str(seed))


def stat(values: Iterable[float | None]) -> Stat:
    clean = [v for v in (as_number(x) for x in values) if v is not None]
    if not clean:
        return Stat(math.nan, math.nan, 0)
    sd = statistics.stdev(clean) if len(clean) > 1 else math.nan
    return Stat(statistics.fmean(clean), sd, len(clean))


@dataclass
class Group:
    """The finished runs of one (experiment, dataset, method, budget) cell."""

    experiment: str
    dataset: str
    method: str
    budget: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.method if self.budget == WHOLE_POOL else f"{self.method} @ {self.budget}"

    @property
    def seeds(self) -> list[Any]:
        return sorted({r.seed for r in self.runs}, key=seed_sort_key)

    def by_seed(self, value: Callable[[RunRecord], float | None]) -> dict[Any, float]:
        """One value per seed, keyed by seed in seed order: repeats of a seed (the same whole-pool run at
        several budgets) are averaged, so that the spread is over seeds and pairs are by seed."""
        values: dict[Any, list[float]] = defaultdict(list)
        for run in self.runs:
            v = as_number(value(run))
            if v is not None:
                values[run.seed].append(v)
        return {
            seed: statistics.fmean(vs)
            for seed, vs in sorted(values.items(), key=lambda kv: seed_sort_key(kv[0]))
        }

    def per_seed(self, value: Callable[[RunRecord], float | None]) -> list[float]:
        """One value per seed (:meth:`by_seed`), in seed order."""
        return list(self.by_seed(value).values())

    def stat(self, value: Callable[[RunRecord], float | None]) -> Stat:
        return stat(self.per_seed(value))

    def metric(self, name: str) -> Stat:
        return self.stat(lambda r: (r.results or {}).get("metrics", {}).get(name))


@dataclass
class Section:
    """One experiment on one dataset: its groups and the metric its table compares."""

    experiment: str
    dataset: str
    metric: str
    higher_is_better: bool
    groups: list[Group]
    model: str = "?"
    regime: str = "?"
    #: finished runs of the section that do not have its metric (counted out of its cells)
    lacking_metric: list[RunRecord] = field(default_factory=list)
    #: the metric reported beside the headline (accuracy beside a continuous one, and the reverse)
    second: tuple[str, bool] | None = None
    #: further metrics reported after the second, each with its table and comparisons (instructions)
    also: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.experiment} / {self.dataset} ({self.model}, {self.regime})"

    @property
    def slug(self) -> str:
        name = f"{self.experiment}__{self.dataset}__{self.model}__{self.regime}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    @property
    def methods(self) -> list[str]:
        return sorted({g.method for g in self.groups})

    @property
    def budgets(self) -> list[str]:
        return sorted({g.budget for g in self.groups}, key=budget_sort_key)

    def group_count_with_metric(self) -> int:
        """How many groups have at least one run with the section's metric."""
        return sum(g.metric(self.metric).n > 0 for g in self.groups)

    def group(self, method: str, budget: str) -> Group | None:
        for g in self.groups:
            if g.method == method and g.budget == budget:
                return g
        return None

    def best_in_column(self, budget: str) -> set[str]:
        """Methods whose mean is the best of the column (ties all marked); none when the column has fewer
        than two methods with a value or all of them tie."""
        means = {}
        for g in self.groups:
            if g.budget == budget:
                s = g.metric(self.metric)
                if s.n:
                    means[g.method] = round(s.mean, 12)
        if len(means) < 2:
            return set()
        best = max(means.values()) if self.higher_is_better else min(means.values())
        marked = {m for m, v in means.items() if v == best}
        return set() if len(marked) == len(means) else marked


def budget_sort_key(label: str) -> tuple[int, float, str]:
    if label == WHOLE_POOL:
        return (2, 0.0, label)
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "nll", "bpb", "error", "seconds", "tokens", "flops")
HIGHER_IS_BETTER = (
    "accuracy",
    "pass@",
    "test_case_average",
    "exact_match",
    "f1",
    "prob",
    "rouge",
    "similarity",
    "judge_score",
)


def metric_direction(name: str) -> bool | None:
    """Whether higher is better for a metric named ``name`` (losses, perplexities, errors, time and tokens
    are lower-is-better; accuracies and pass@k higher-is-better); None when the name does not say."""
    lowered = name.lower()
    if lowered.endswith("_se") or "_ci_low" in lowered or "_ci_high" in lowered:
        return None  # an uncertainty, not a quality
    if any(word in lowered for word in LOWER_IS_BETTER):
        return False
    if any(word in lowered for word in HIGHER_IS_BETTER):
        return True
    return None


#: the mean test accuracy (over a section's runs) from which accuracy heads the section's table: below it the
#: continuous metric does (DataDecide, arXiv 2504.11393: near the floor, accuracy ranks data choices far less
#: reliably than the likelihood of the correct answer)
ACCURACY_HEADLINE_FROM = 0.2


def _share_with(runs: list[RunRecord], name: str) -> float:
    return sum(as_number((r.results or {}).get("metrics", {}).get(name)) is not None for r in runs) / max(
        1, len(runs)
    )


def headline_metric(runs: list[RunRecord]) -> tuple[str, bool]:
    """The metric that heads a section's table when none is asked for, and whether higher is better.

    Held-out perplexity for language modelling, ROUGE-L for instructions; for tasks with a checkable answer,
    test accuracy when the section's mean accuracy is at least :data:`ACCURACY_HEADLINE_FROM` (far from the
    floor), else the first continuous metric of :data:`CONTINUOUS_HEADLINES` most runs have; the per-run
    default (:func:`p3bench.results.quality_metric`) otherwise. The other of the two is the section's second metric
    (:func:`second_metric`), reported beside it."""
    name, higher = Counter(quality_metric(r.results or {}) for r in runs).most_common(1)[0][0]
    if name != "test/accuracy":
        return name, higher
    accuracies = [as_number((r.results or {}).get("metrics", {}).get(name)) for r in runs]
    accuracies = [a for a in accuracies if a is not None]
    if accuracies and statistics.fmean(accuracies) >= ACCURACY_HEADLINE_FROM:
        return name, higher
    for continuous, higher_is_better in CONTINUOUS_HEADLINES.items():
        if _share_with(runs, continuous) > 0.5:
            return continuous, higher_is_better
    return name, higher


def _instruction_beside(runs: list[RunRecord]) -> list[tuple[str, bool]]:
    return [
        (name, higher)
        for name, higher in INSTRUCTION_BESIDE_HEADLINE.items()
        if _share_with(runs, name) > 0.5
    ]


def second_metric(runs: list[RunRecord], headline: str) -> tuple[str, bool] | None:
    """The metric shown beside the headline: accuracy beside a continuous headline and the reverse (the
    first continuous metric most runs have); beside ROUGE-L the first of
    :data:`p3bench.results.INSTRUCTION_BESIDE_HEADLINE` most runs have; None when there is no such pair."""
    if headline == TASK_HEADLINES["instruction"][0]:
        beside = _instruction_beside(runs)
        return beside[0] if beside else None
    if headline in CONTINUOUS_HEADLINES:
        return ("test/accuracy", True) if _share_with(runs, "test/accuracy") > 0.5 else None
    if headline == "test/accuracy":
        for continuous, higher_is_better in CONTINUOUS_HEADLINES.items():
            if _share_with(runs, continuous) > 0.5:
                return continuous, higher_is_better
    return None


def also_metrics(runs: list[RunRecord], headline: str) -> list[tuple[str, bool]]:
    """The metrics shown after the second one: for a ROUGE-L headline the rest of
    :data:`p3bench.results.INSTRUCTION_BESIDE_HEADLINE` that most runs have; none for other headlines."""
    if headline == TASK_HEADLINES["instruction"][0]:
        return _instruction_beside(runs)[1:]
    return []


def group_runs(
    records: list[RunRecord], metric: str | None = None, higher_is_better: bool | None = None
) -> list[Section]:
    """Sections (experiment x dataset x model x regime) of groups (method x budget, and the other settings a
    run was given on the command line) of the finished runs. The compared metric is ``metric`` when given,
    else the runs' headline quality (test accuracy, held-out perplexity on language-modelling data, ROUGE-L
    on instructions; the one most of the section's runs have). Runs whose settings differ beyond seed are
    never averaged together: when a section holds several such variants, each group's label names the
    settings it differs by."""
    cells: dict[tuple[str, ...], list[RunRecord]] = defaultdict(list)
    for run in records:
        if run.ok:
            key = (
                run.experiment,
                run.dataset,
                str(run.identity.get("model")),
                str(run.identity.get("regime")),
            )
            cells[key].append(run)
    sections = []
    for (experiment, dataset, model, regime), runs in sorted(cells.items()):
        common = set.intersection(*(set(r.variant) for r in runs))
        groups: dict[tuple[Any, ...], Group] = {}
        for run in runs:
            extra = [o for o in run.variant if o not in common]
            label = run.method + (f" [{' '.join(extra)}]" if extra else "")
            key = (label, run.budget_label)
            if key not in groups:
                groups[key] = Group(experiment, dataset, label, run.budget_label)
            groups[key].runs.append(run)
        if metric is None:
            name, higher = headline_metric(runs)
        else:
            name = metric
            higher = metric_direction(metric) if higher_is_better is None else higher_is_better
            if higher is None:
                raise ValueError(
                    f"--metric {metric!r}: cannot tell whether higher is better; add --higher-is-better or "
                    "--lower-is-better"
                )
        lacking = [r for r in runs if as_number((r.results or {}).get("metrics", {}).get(name)) is None]
        ordered = sorted(groups.values(), key=lambda g: (g.method, budget_sort_key(g.budget)))
        section = Section(experiment, dataset, name, higher, ordered, model, regime, lacking)
        section.second = second_metric(runs, name) if metric is None else None
        section.also = also_metrics(runs, name) if metric is None else []
        sections.append(section)
    return sections
