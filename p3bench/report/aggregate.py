"""Group runs by experiment, dataset, method and budget, and aggregate a metric over seeds."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from p3bench.report.runs import RunRecord
from p3bench.results import quality_metric

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


def stat(values: Iterable[float | None]) -> Stat:
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
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
        return sorted({r.seed for r in self.runs}, key=str)

    def per_seed(self, value: Callable[[RunRecord], float | None]) -> list[float]:
        """One value per seed: repeats of a seed (the same whole-pool run at several budgets) are averaged,
        so that the spread is over seeds."""
        by_seed: dict[Any, list[float]] = defaultdict(list)
        for run in self.runs:
            v = value(run)
            if v is not None and not math.isnan(float(v)):
                by_seed[run.seed].append(float(v))
        return [statistics.fmean(vs) for _, vs in sorted(by_seed.items(), key=lambda kv: str(kv[0]))]

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

    @property
    def title(self) -> str:
        return f"{self.experiment} / {self.dataset}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.experiment}__{self.dataset}")

    @property
    def methods(self) -> list[str]:
        return sorted({g.method for g in self.groups})

    @property
    def budgets(self) -> list[str]:
        return sorted({g.budget for g in self.groups}, key=budget_sort_key)

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


def metric_direction(name: str) -> bool:
    """Whether higher is better for a metric named ``name``: losses and perplexities are lower-is-better."""
    lowered = name.lower()
    return not any(word in lowered for word in ("loss", "perplexity", "ppl", "seconds", "tokens"))


def group_runs(records: list[RunRecord], metric: str | None = None) -> list[Section]:
    """Sections (experiment x dataset) of groups (method x budget) of the finished runs. The compared metric
    is ``metric`` when given, else the runs' headline quality (test accuracy, or held-out perplexity on
    language-modelling data)."""
    cells: dict[tuple[str, str], dict[tuple[str, str], Group]] = defaultdict(dict)
    for run in records:
        if not run.ok:
            continue
        key = (run.method, run.budget_label)
        section = cells[(run.experiment, run.dataset)]
        if key not in section:
            section[key] = Group(run.experiment, run.dataset, run.method, run.budget_label)
        section[key].runs.append(run)
    sections = []
    for (experiment, dataset), groups in sorted(cells.items()):
        first = next(iter(groups.values())).runs[0]
        if metric is None:
            name, higher = quality_metric(first.results or {})
        else:
            name, higher = metric, metric_direction(metric)
        ordered = sorted(groups.values(), key=lambda g: (g.method, budget_sort_key(g.budget)))
        sections.append(Section(experiment, dataset, name, higher, ordered))
    return sections
