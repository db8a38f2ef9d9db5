"""Markdown and CSV of a report's paired comparisons: differences with intervals and verdicts, rankings,
and whether the controls separate (so whether a section's findings are decisive)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from p3bench.data.example import ORACLE_DATASETS
from p3bench.methods import is_control
from p3bench.report.comparisons import SectionComparisons, base_method
from p3bench.stats.paired import PairedComparison


def signed(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def interval(low: float, high: float, digits: int) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def digits_for(values: list[float]) -> int:
    """Enough decimals to show the smallest non-zero interval width of a table (3 to 5)."""
    finite = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0]
    if not finite:
        return 3
    smallest = min(finite)
    return max(3, min(5, 1 - int(math.floor(math.log10(smallest))) + 1))


def seeds_needed(c: PairedComparison) -> str:
    """The seeds an inconclusive difference would need at its observed size and spread: ``-`` when it is
    decisive, has fewer than 2 pairs, or is limited by the test set rather than by the seeds."""
    if c.verdict != "inconclusive" or c.n_pairs < 2 or c.test_set_limited:
        return "-"
    if c.seeds_needed is None:
        return "-" if not c.mean_diff else ">10,000"
    return str(c.seeds_needed)


def verdict_cell(c: PairedComparison, decisive: bool | None) -> str:
    """The verdict, bold when decisive; ``(test set)`` when the seeds agree but the test set cannot tell,
    ``(not decisive)`` when the section's controls do not separate."""
    if c.verdict == "inconclusive":
        return "inconclusive (test set)" if c.test_set_limited else "inconclusive"
    return f"**{c.verdict}**" + (" (not decisive)" if decisive is False else "")


def references_used(comparisons: SectionComparisons) -> list[str]:
    """The references that at least one row of the table was compared with, in the given order."""
    used = {base_method(c.reference or "") for _, c in comparisons.rows}
    return [r for r in comparisons.references if r in used]


def method_cell(label: str) -> str:
    """A method's label in a table, marked when it is a control (a selection whose answer is known)."""
    return f"{label} (control)" if is_control(base_method(label)) else label


def comparison_table(comparisons: SectionComparisons) -> list[str]:
    """One row per (method, budget, reference): pairs, mean difference (method - reference), its 95% t
    interval over seeds, the bootstrap interval over seeds and test examples, the verdict, the smallest
    detectable difference and the seeds an inconclusive difference would need."""
    if not comparisons.rows:
        return []
    widths = [c.t_high - c.t_low for _, c in comparisons.rows]
    d = digits_for([*widths, *(c.mean_diff for _, c in comparisons.rows)])
    lines = [
        "| method | budget | reference | pairs | difference | 95% CI (t, seeds) | 95% CI (bootstrap) "
        "| verdict | detectable (80% power) | seeds to resolve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, c in comparisons.rows:
        verdict = verdict_cell(c, comparisons.decisive)
        lines.append(
            f"| {method_cell(c.method or '')} | {budget} | {c.reference} | {c.n_pairs} | {signed(c.mean_diff, d)} "
            f"| {interval(c.t_low, c.t_high, d)} | {interval(c.boot_low, c.boot_high, d)} | {verdict} "
            f"| {'-' if math.isnan(c.mde) else f'{c.mde:.{d}f}'} | {seeds_needed(c)} |"
        )
    return lines


def multiplicity_note(comparisons: SectionComparisons, holm: bool) -> list[str]:
    """How many comparisons the table reads at once and how many stay decisive under Holm's correction."""
    rows = [c for _, c in comparisons.rows if c.n_pairs >= 2]
    if len(rows) < 2:
        return []
    decisive = sum(c.verdict != "inconclusive" for c in rows)
    after = sum((c.verdict_holm or "inconclusive") != "inconclusive" for c in rows)
    if holm:
        return [
            f"Verdicts are Holm-corrected over the table's {len(rows)} comparisons (family-wise 5%): "
            f"{after} decisive."
        ]
    return [
        f"{len(rows)} comparisons are read at once: {decisive} decisive at 5% each, {after} after Holm's "
        "correction for all of them (`p3bench report --holm` reads verdicts from it)."
    ]


def ranking_table(comparisons: SectionComparisons) -> list[str]:
    """Per budget column, each method's probability of ranking first under a bootstrap over shared seeds."""
    if not comparisons.rankings:
        return []
    lines = ["| budget | method | P(ranks first) | mean rank | seeds |", "|---|---|---|---|---|"]
    for budget, ranks in comparisons.rankings.items():
        ordered = sorted(ranks.items(), key=lambda kv: (-kv[1]["p_first"], kv[1]["mean_rank"]))
        for method, r in ordered:
            lines.append(
                f"| {budget} | {method} | {r['p_first']:.2f} | {r['mean_rank']:.2f} | {int(r['n_seeds'])} |"
            )
    return lines


def controls_lines(comparisons: SectionComparisons, dataset: str = "") -> list[str]:
    """The controls' verdicts against random, and whether the section's findings are decisive."""
    lines = [
        f"- control {name}: no `random` run at its budget to compare with (with the same settings)"
        for name in comparisons.unpaired_controls
    ]
    if not comparisons.controls:
        if lines or dataset in ORACLE_DATASETS:
            lines.append(
                "No control was compared with random in this section (`method=oracle_clean`, "
                "`method=oracle_defects` at a budget `random` ran at): whether this testbed can tell a good "
                "selection from a bad one is not checked here."
            )
        return lines
    for check in comparisons.controls:
        c = check.comparison
        if check.too_few_seeds:
            state = f"too few seeds to tell ({c.n_pairs} pair)"
        else:
            state = "separates" if check.separates else "does NOT separate"
        lines.append(
            f"- control {check.control} at budget {check.budget}: {signed(c.mean_diff, 4)} vs random "
            f"{interval(c.t_low, c.t_high, 4)}, {c.verdict} (expected {check.expected}): {state}"
        )
    if comparisons.decisive:
        lines.append("The controls separate: this section's verdicts are decisive findings.")
    else:
        lines.append(
            "**Not decisive**: a control does not separate from random on this metric, so this testbed cannot "
            "yet tell a good selection from a bad one; read its verdicts as not decisive."
        )
    return lines


COMPARISON_COLUMNS = [
    "section",
    "metric",
    "higher_is_better",
    "budget",
    "method",
    "reference",
    "n_pairs",
    "seeds",
    "mean_diff",
    "sd_diff",
    "t_low",
    "t_high",
    "method_mean",
    "reference_mean",
    "p_value",
    "p_holm",
    "boot_low",
    "boot_high",
    "bootstrap",
    "test_set_limited",
    "verdict",
    "verdict_holm",
    "mde",
    "seeds_needed",
    "control",
    "section_decisive",
]


def comparison_rows(title: str, comparisons: SectionComparisons) -> list[dict[str, Any]]:
    rows = []
    for budget, c in comparisons.rows:
        row = c.to_row()
        row.update(
            section=title,
            metric=comparisons.metric,
            higher_is_better=comparisons.higher_is_better,
            budget=budget,
            seeds=" ".join(str(s) for s in c.seeds),
            control=is_control(base_method(c.method or "")),
            section_decisive="" if comparisons.decisive is None else comparisons.decisive,
        )
        rows.append(row)
    return rows


def comparisons_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=COMPARISON_COLUMNS, restval="", extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
