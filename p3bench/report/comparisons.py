"""Paired comparisons of a report's methods against references, with intervals and verdicts.

A difference without an interval is not a finding. For each method of a section and each reference (by
default ``random`` at the same budget and ``full``), the runs are paired by seed (the same seed gives the same
split and the same initial model), and the per-seed differences give a mean, a 95% t interval over seeds (the
interval a verdict is read from), a bootstrap interval that resamples seeds and test examples together, the
smallest difference the sweep could have detected and, for an inconclusive difference, how many seeds would
resolve it (:mod:`p3bench.stats`). The controls (``oracle_clean``, ``oracle_defects``) say whether a testbed
can tell a good selection from a bad one at all: a section whose controls do not separate from ``random`` has
no decisive findings (motivation: DataDecide, Magnusson et al., arXiv 2504.11393).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from p3bench.methods import is_control
from p3bench.report.aggregate import WHOLE_POOL, Group, Section, seed_sort_key
from p3bench.report.runs import RunRecord
from p3bench.results import PREDICTIONS_FILE
from p3bench.stats.paired import PairedComparison, compare_paired, with_holm
from p3bench.stats.power import POWER, seeds_needed
from p3bench.stats.ranking import rank_probabilities

#: the references a method is compared against unless the report is told otherwise
DEFAULT_REFERENCES = ("random", "full")
#: positive and negative controls: the direction each must differ from ``random`` in
CONTROL_EXPECTATIONS = {"oracle_clean": "better", "oracle_defects": "worse"}
CONTROL_REFERENCE = "random"
#: bootstrap replicates of the intervals and rankings of a report
N_BOOT = 2000


@dataclass
class ControlCheck:
    """Whether one control separates from ``random`` at one budget in its expected direction."""

    control: str
    budget: str
    expected: str
    comparison: PairedComparison

    @property
    def separates(self) -> bool:
        return self.comparison.verdict == self.expected

    @property
    def too_few_seeds(self) -> bool:
        return self.comparison.n_pairs < 2


@dataclass
class SectionComparisons:
    """The paired comparisons of one section on one metric, its rankings and its controls."""

    metric: str
    higher_is_better: bool
    references: tuple[str, ...]
    #: (budget, comparison) in table order
    rows: list[tuple[str, PairedComparison]] = field(default_factory=list)
    #: budget -> method -> {"p_first", "mean_rank", "n_seeds"}
    rankings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    controls: list[ControlCheck] = field(default_factory=list)
    #: controls that ran without a ``random`` run at their budget to be compared with
    unpaired_controls: list[str] = field(default_factory=list)

    @property
    def controls_run(self) -> bool:
        return bool(self.controls)

    @property
    def decisive(self) -> bool | None:
        """True when every control run separates from random in its expected direction, False when one does
        not, None when the section has no control to tell."""
        if not self.controls:
            return None
        return all(c.separates for c in self.controls)


def base_method(label: str) -> str:
    """The method name of a group label (``"p3 [method.dpp.kernel=cosine]"`` -> ``"p3"``)."""
    return label.split(" [", 1)[0]


def per_seed_values(group: Group, metric: str) -> dict[Any, float]:
    """The group's metric by seed (repeats of a seed averaged, as the tables do)."""
    return group.by_seed(lambda run: (run.results or {}).get("metrics", {}).get(metric))


def record_field(metric: str) -> str | None:
    """The per-example field of predictions.jsonl whose mean is ``metric`` (``test/accuracy`` ->
    ``correct``, ``test/answer_bpb`` -> ``answer_bpb``); None for metrics that are not a test-example mean."""
    if not metric.startswith("test/"):
        return None
    name = metric.removeprefix("test/")
    if name == "accuracy":
        return "correct"
    if name in ("perplexity", "loss", "n_examples", "n_tokens") or name.endswith(
        ("_se", "_ci_low", "_ci_high")
    ):
        return None
    return name


@lru_cache(maxsize=4096)
def _example_values(path: Path, field_name: str) -> dict[str, float] | None:
    values: dict[str, float] = {}
    try:
        with (path / PREDICTIONS_FILE).open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = json.loads(line)
                value = row.get(field_name)
                if isinstance(value, (bool, int, float)) and not (
                    isinstance(value, float) and math.isnan(value)
                ):
                    values[str(row["id"])] = float(value)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return values or None


def example_values(run: RunRecord, metric: str) -> dict[str, float] | None:
    """The run's per-test-example values of ``metric`` by example id (from predictions.jsonl), or None."""
    field_name = record_field(metric)
    return None if field_name is None else _example_values(run.path, field_name)


def paired_examples(
    group: Group, reference: Group, metric: str, seeds: list[Any]
) -> tuple[dict[Any, tuple[np.ndarray, np.ndarray]], bool] | None:
    """For each seed, the two runs' per-example values on the test examples both scored (aligned by id), and
    whether every seed was scored on the same examples (one test set); None when any seed lacks them (the
    bootstrap then resamples seeds only)."""
    paired: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    id_lists: set[tuple[str, ...]] = set()
    for seed in seeds:
        mine = next((r for r in group.runs if r.seed == seed), None)
        theirs = next((r for r in reference.runs if r.seed == seed), None)
        if mine is None or theirs is None:
            return None
        a, b = example_values(mine, metric), example_values(theirs, metric)
        if a is None or b is None:
            return None
        ids = sorted(set(a) & set(b))
        if not ids:
            return None
        paired[seed] = (np.array([a[i] for i in ids]), np.array([b[i] for i in ids]))
        id_lists.add(tuple(ids))
    return paired, len(id_lists) == 1


def variant_of(label: str) -> str:
    """The settings of a group label other than the method's own options, as a label suffix: ``"p3
    [method.dpp.kernel=cosine dataset.params.n_train=5000]"`` -> ``" [dataset.params.n_train=5000]"``;
    ``""`` when there are none. Runs are compared only with references that share these settings."""
    inside = label[len(base_method(label)) :].strip()
    if not (inside.startswith("[") and inside.endswith("]")):
        return ""
    kept = [o for o in inside[1:-1].split() if not o.lstrip("+~").startswith("method.")]
    return f" [{' '.join(kept)}]" if kept else ""


def reference_group(section: Section, reference: str, budget: str, variant: str = "") -> Group | None:
    """The group a method at ``budget`` with other settings ``variant`` (:func:`variant_of`) is compared
    with: the reference run with the same settings, at the same budget or trained on the whole pool
    (``full``); None when there is none (never a reference run with other settings)."""
    name = reference + variant
    return section.group(name, budget) or section.group(name, WHOLE_POOL)


def compare_groups(
    group: Group, reference: Group, metric: str, higher_is_better: bool, rng_seed: int = 0
) -> PairedComparison:
    """``group`` minus ``reference`` on ``metric``, paired by seed."""
    mine, theirs = per_seed_values(group, metric), per_seed_values(reference, metric)
    seeds = sorted(set(mine) & set(theirs), key=seed_sort_key)
    found = paired_examples(group, reference, metric, seeds) if len(seeds) >= 2 else None
    examples, shared = found if found is not None else (None, None)
    return compare_paired(
        mine,
        theirs,
        higher_is_better=higher_is_better,
        per_example=examples,
        shared_test_set=shared,
        n_boot=N_BOOT,
        rng_seed=rng_seed,
        method=group.method,
        reference=reference.method,
    )


def mirrored(method: str, reference: str, references: tuple[str, ...]) -> bool:
    """Whether ``method`` vs ``reference`` repeats a comparison the table already has the other way round:
    of two references, only the later one (``full``) is compared with the earlier (``random``)."""
    a, b = base_method(method), base_method(reference)
    return a in references and b in references and references.index(a) < references.index(b)


def compare_section(
    section: Section,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    references: tuple[str, ...] = DEFAULT_REFERENCES,
    holm: bool = False,
) -> SectionComparisons:
    """Every method of ``section`` against each reference present, the ranking of each budget column
    under the bootstrap (methods only: the controls are not ranked), and the controls' separation from
    ``random``. ``holm``: verdicts read from Holm-adjusted p-values over all the section's comparisons (the
    adjusted values are computed either way)."""
    if isinstance(references, str):
        raise TypeError(f"references must be a tuple of method names, not the string {references!r}")
    metric = metric or section.metric
    higher = section.higher_is_better if higher_is_better is None else higher_is_better
    result = SectionComparisons(metric, higher, tuple(references))
    rows: list[tuple[str, PairedComparison]] = []
    whole = sorted((g for g in section.groups if g.budget == WHOLE_POOL), key=lambda g: g.method)
    for budget in section.budgets:
        here = sorted((g for g in section.groups if g.budget == budget), key=lambda g: g.method)
        # a whole-pool run (full) is compared with each budget's reference too
        candidates = here if budget == WHOLE_POOL else here + whole
        for group in candidates:
            for name in references:
                ref = reference_group(section, name, budget, variant_of(group.method))
                if ref is None or ref is group or mirrored(group.method, ref.method, result.references):
                    continue
                if budget != WHOLE_POOL and group.budget == WHOLE_POOL and ref.budget == WHOLE_POOL:
                    continue  # two whole-pool runs: compared once, in the whole-pool column
                rows.append((budget, compare_groups(group, ref, metric, higher)))
    adjusted = with_holm([c for _, c in rows]) if rows else []
    if holm:
        adjusted = [_holm_verdict(c) for c in adjusted]
    result.rows = [(budget, c) for (budget, _), c in zip(rows, adjusted, strict=True)]
    for budget in section.budgets:
        groups = [g for g in section.groups if g.budget == budget and not is_control(base_method(g.method))]
        for variant in sorted({variant_of(g.method) for g in groups}):  # runs with other settings apart
            values = {g.method: per_seed_values(g, metric) for g in groups if variant_of(g.method) == variant}
            values = {k: v for k, v in values.items() if v}
            if len(values) >= 2:
                ranks = rank_probabilities(values, higher_is_better=higher, n_boot=N_BOOT)
                if all(r.get("n_seeds", 0) >= 2 for r in ranks.values()):
                    result.rankings[budget + variant] = ranks
    for group in section.groups:
        expected = CONTROL_EXPECTATIONS.get(base_method(group.method))
        if expected is None or group.budget == WHOLE_POOL:
            continue
        ref = section.group(CONTROL_REFERENCE + variant_of(group.method), group.budget)
        if ref is not None:
            comparison = compare_groups(group, ref, metric, higher)
            result.controls.append(ControlCheck(group.method, group.budget, expected, comparison))
        else:
            result.unpaired_controls.append(f"{group.method} @ {group.budget}")
    return result


def _holm_verdict(comparison: PairedComparison) -> PairedComparison:
    """The comparison read at its Holm verdict. One that is decisive alone but not over the family gets the
    seeds it would need at the level Holm holds it to (``alpha * p / p_holm``), not none."""
    verdict = comparison.verdict_holm or comparison.verdict
    needed = comparison.seeds_needed
    c = comparison
    if (
        verdict == "inconclusive"
        and c.verdict != "inconclusive"
        and c.n_pairs >= 2
        and not c.test_set_limited
        and c.p_holm is not None
        and c.p_value is not None
        and c.p_holm > 0
    ):
        alpha = (1 - c.confidence) * c.p_value / c.p_holm
        needed = seeds_needed(c.mean_diff, c.sd_diff, power=POWER, alpha=alpha) if alpha > 0 else None
    return replace(comparison, verdict=verdict, seeds_needed=needed)
