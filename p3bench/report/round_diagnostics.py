"""Per-round diagnostics of dynamic methods, as results.json records them in
``selection.rounds[r].diagnostics``: the pace's admitted share of the pool (``admitted_fraction``, with
``pace_scheduled_fraction``, the share the schedule alone would admit, and ``pace_floor_applied``, whether the
floor that keeps enough candidates for the budget raised it) and, for rounds that ran a DPP, its diversity
against a top-k-by-quality pick and a uniform random pick of the same size (every numeric ``diversity_*``
key). P3 (arXiv 2408.05541) records them; runs without them (other methods, older runs) simply have none.

Aggregation: per round, the mean over seeds (repeats of a seed averaged first, as everywhere in a report);
over rounds, the mean over seeds of each run's mean over the rounds that recorded the key. This module
reads and tables; the figures are :func:`p3bench.report.round_plots.plot_admitted_share` and
:func:`~p3bench.report.round_plots.plot_diversity`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable
from typing import Any

from p3bench.report.aggregate import Group, Section, Stat, as_number
from p3bench.report.diagnostics import is_dynamic
from p3bench.report.runs import RunRecord

ADMITTED = "admitted_fraction"
SCHEDULED = "pace_scheduled_fraction"
FLOOR = "pace_floor_applied"
DIVERSITY_PREFIX = "diversity_"
OVERLAP = "diversity_overlap_topk_quality"
OVERLAP_RANDOM = "diversity_overlap_random_expected"
#: the reference picks a diversity statistic is computed for, as key suffixes, and their labels
VARIANTS = {"pick": "DPP pick", "topk": "top-k by quality", "random": "uniform random"}
#: the variants' names in a table header
SHORT_VARIANTS = {"pick": "pick", "topk": "top-k", "random": "random"}
#: readable names of the statistics of the known diversity keys; others are named from their key
STATISTIC_LABELS = {
    "overlap": "overlap with the top-k by quality",
    "mean_cosine": "mean pairwise cosine",
    "logdet": "log-det of the kernel",
    "mean_quality": "mean quality",
    "effective_rank": "effective rank of the embeddings",
}
#: the order of the known statistics in tables and figures; other statistics follow in name order
STATISTIC_ORDER = ("overlap", "mean_cosine", "logdet", "mean_quality", "effective_rank")
#: more rounds than this in a per-round table: an evenly spaced subset of them, the first and last included
MAX_ROUND_COLUMNS = 12
_VARIANT_KEY = re.compile(rf"^{DIVERSITY_PREFIX}(?P<statistic>.+)_(?P<variant>{'|'.join(VARIANTS)})$")


# --- reading ---------------------------------------------------------------------------------------------
def rounds_of(run: RunRecord) -> dict[int, dict[str, Any]]:
    """``{round: diagnostics}`` of a finished run; rounds without a usable number or dict are skipped."""
    found: dict[int, dict[str, Any]] = {}
    for record in ((run.results or {}).get("selection") or {}).get("rounds") or []:
        if not isinstance(record, dict) or not isinstance(record.get("diagnostics"), dict):
            continue
        index = as_number(record.get("round"))
        if index is not None and index == int(index):
            found[int(index)] = record["diagnostics"]
    return found


def round_value(run: RunRecord, key: str, round_index: int) -> float | None:
    """The run's numeric ``key`` in round ``round_index`` (None when absent or not a number)."""
    return as_number(rounds_of(run).get(round_index, {}).get(key))


def run_round_mean(run: RunRecord, key: str) -> float | None:
    """Mean of the run's numeric ``key`` over the rounds that recorded it (None when none did)."""
    values = [v for v in (as_number(d.get(key)) for d in rounds_of(run).values()) if v is not None]
    return statistics.fmean(values) if values else None


def floor_flag(diagnostics: dict[str, Any]) -> bool | None:
    """Whether the pace's floor raised the admitted count in a round (true/false or 1/0; None if unsaid)."""
    value = diagnostics.get(FLOOR)
    if isinstance(value, bool):
        return value
    flag = as_number(value)
    return None if flag not in (0.0, 1.0) else flag == 1.0


def floor_rounds(run: RunRecord) -> int | None:
    """In how many rounds the pace's floor raised the admitted count (None when no round says)."""
    flags = [f for f in (floor_flag(d) for d in rounds_of(run).values()) if f is not None]
    return sum(flags) if flags else None


def diversity_rounds(run: RunRecord) -> int:
    """How many rounds recorded a numeric diversity statistic (the rounds that ran the DPP)."""
    return sum(bool(numeric_diversity_keys(d)) for d in rounds_of(run).values())


def numeric_diversity_keys(diagnostics: dict[str, Any]) -> list[str]:
    return [k for k, v in diagnostics.items() if k.startswith(DIVERSITY_PREFIX) and as_number(v) is not None]


def runs_keys(runs: Iterable[RunRecord]) -> set[str]:
    return {k for run in runs for d in rounds_of(run).values() for k in numeric_diversity_keys(d)}


def has_pace(group: Group) -> bool:
    """A dynamic group that records the pace's admitted share in some round."""
    return is_dynamic(group) and any(round_value_present(run, ADMITTED) for run in group.runs)


def round_value_present(run: RunRecord, key: str) -> bool:
    return any(as_number(d.get(key)) is not None for d in rounds_of(run).values())


def group_rounds(group: Group, key: str) -> list[int]:
    """The rounds in which some run of the group recorded a numeric ``key``."""
    return sorted(
        {r for run in group.runs for r, d in rounds_of(run).items() if as_number(d.get(key)) is not None}
    )


def per_round(group: Group, key: str) -> dict[int, Stat]:
    """``{round: Stat}`` of ``key`` over the group's seeds."""
    return {r: group.stat(lambda run, r=r: round_value(run, key, r)) for r in group_rounds(group, key)}


def over_rounds(group: Group, key: str) -> Stat:
    """Mean over seeds of each run's mean of ``key`` over its rounds."""
    return group.stat(lambda run: run_round_mean(run, key))


# --- the pace ----------------------------------------------------------------------------------------------
def pace_series(group: Group) -> list[dict[str, Any]]:
    """Per round: the admitted share (mean, sd, seeds), the scheduled share (mean, when recorded) and how
    many runs had the floor raise the admitted count: the rows of
    :func:`~p3bench.report.round_plots.plot_admitted_share`."""
    scheduled = per_round(group, SCHEDULED)
    rows = []
    for r, admitted in per_round(group, ADMITTED).items():
        floors = [floor_flag(rounds_of(run).get(r, {})) for run in group.runs]
        rows.append(
            {
                "round": r,
                "admitted": admitted.mean,
                "admitted_sd": admitted.sd,
                "n": admitted.n,
                "scheduled": scheduled[r].mean if r in scheduled else None,
                "floor_seeds": sum(f is True for f in floors),
            }
        )
    return rows


def budget_share(groups: Iterable[Group]) -> float | None:
    """The per-round budget as a share of the pool (``budget_size / pool_size``), when the runs agree."""
    shares = set()
    for group in groups:
        for run in group.runs:
            selection = (run.results or {}).get("selection") or {}
            size, pool = as_number(selection.get("budget_size")), as_number(selection.get("pool_size"))
            if size is not None and pool:
                shares.add(round(size / pool, 9))
    return shares.pop() if len(shares) == 1 else None


def shown_rounds(rounds: list[int], limit: int = MAX_ROUND_COLUMNS) -> list[int]:
    """All of ``rounds`` up to ``limit``, else ``limit`` of them evenly spaced, first and last included."""
    if len(rounds) <= limit:
        return rounds
    picks = {round(i * (len(rounds) - 1) / (limit - 1)) for i in range(limit)}
    return [rounds[i] for i in sorted(picks)]


def share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def pace_table(section: Section) -> list[str]:
    """Markdown: per method and budget, the admitted share in each round (mean over seeds), with a row of
    the scheduled share where runs record it; a dagger marks rounds where the floor raised the count in
    some seed. Empty when no dynamic group records the pace."""
    groups = [g for g in section.groups if has_pace(g)]
    if not groups:
        return []
    rounds = shown_rounds(sorted({r for g in groups for r in group_rounds(g, ADMITTED)}))
    lines = [
        "Pace: share of the pool admitted in each round (mean over seeds; `scheduled`: the share the "
        "schedule alone admits, before the floor that keeps enough candidates for the budget; † the floor "
        "raised the admitted count in at least one seed):",
        "",
        "| method | budget | seeds | share | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "|---" * (4 + len(rounds)) + "|",
    ]
    for group in groups:
        seeds = ", ".join(str(s) for s in group.seeds)
        rows = {row["round"]: row for row in pace_series(group)}
        cells = []
        for r in rounds:
            row = rows.get(r)
            floor = "†" if row is not None and row["floor_seeds"] else ""
            cells.append("" if row is None else share(row["admitted"]) + floor)
        lines.append(f"| {group.method} | {group.budget} | {seeds} | admitted | " + " | ".join(cells) + " |")
        if any(row["scheduled"] is not None for row in rows.values()):
            scheduled = [
                "" if rows.get(r) is None or rows[r]["scheduled"] is None else share(rows[r]["scheduled"])
                for r in rounds
            ]
            lines.append(
                f"| {group.method} | {group.budget} | {seeds} | scheduled | " + " | ".join(scheduled) + " |"
            )
    return lines


# --- the DPP's diversity -----------------------------------------------------------------------------------
def statistic_of(key: str) -> tuple[str, str]:
    """``(statistic, variant)`` of a diversity key: ``diversity_logdet_topk`` -> ``("logdet", "topk")``;
    the overlap keys are the statistic ``overlap`` (the pick's, and the random pick's expectation); a key
    without a variant suffix is a statistic of the pick."""
    if key == OVERLAP:
        return "overlap", "pick"
    if key == OVERLAP_RANDOM:
        return "overlap", "random"
    match = _VARIANT_KEY.match(key)
    if match:
        return match["statistic"], match["variant"]
    return key.removeprefix(DIVERSITY_PREFIX), "pick"


def statistics_of(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{statistic: {variant: key}}`` in table order: the known statistics first, then by name."""
    found: dict[str, dict[str, str]] = {}
    for key in sorted(keys):
        statistic, variant = statistic_of(key)
        found.setdefault(statistic, {})[variant] = key
    known = [s for s in STATISTIC_ORDER if s in found]
    ordered = known + sorted(s for s in found if s not in STATISTIC_ORDER)
    return {s: {v: found[s][v] for v in VARIANTS if v in found[s]} for s in ordered}


def statistic_label(statistic: str) -> str:
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def number(value: float) -> str:
    """A diversity number in a table cell: 3 decimals below 10, fewer for larger magnitudes."""
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.3f}"


def has_diversity(group: Group) -> bool:
    """Some run of the group recorded a numeric diversity statistic (ran the DPP) in some round."""
    return bool(runs_keys(group.runs))


def diversity_cell(variants: dict[str, str], value: Callable[[str], float]) -> str:
    """``pick / top-k / random`` (the variants present); the overlap as ``pick (random: expected)``."""
    if set(variants) == {"pick", "random"} and variants["pick"] == OVERLAP:
        return f"{number(value(variants['pick']))} (random: {number(value(variants['random']))})"
    return " / ".join(number(value(key)) for key in variants.values())


def diversity_header(statistic: str, variants: dict[str, str]) -> str:
    if statistic == "overlap" and variants.get("pick") == OVERLAP:
        return statistic_label(statistic) + (" (random: expected)" if "random" in variants else "")
    if list(variants) == ["pick"]:
        return statistic_label(statistic)
    return f"{statistic_label(statistic)}: " + " / ".join(SHORT_VARIANTS[v] for v in variants)


def diversity_tables(section: Section) -> list[str]:
    """Markdown: per method and budget, each diversity statistic (mean over seeds of each run's mean over
    the rounds that ran the DPP) for the DPP's pick, the top-k by quality and a random pick of the same
    size; then the overlap with the top-k per round. Empty when no run records diversity."""
    groups = [g for g in section.groups if has_diversity(g)]
    if not groups:
        return []
    found = statistics_of(runs_keys(r for g in groups for r in g.runs))
    header = ["method", "budget", "seeds", "DPP rounds"] + [diversity_header(s, v) for s, v in found.items()]
    lines = [
        "DPP diversity against a top-k-by-quality pick and a uniform random pick of the same size, from the "
        "same admitted candidates (mean over seeds of each run's mean over the rounds that ran the DPP; "
        "`a / b / c`: DPP pick / top-k / random; an overlap near the random expectation means the DPP "
        "picks unlike the top-k):",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for group in groups:
        means = {key: over_rounds(group, key).mean for v in found.values() for key in v.values()}
        dpp_rounds = group.stat(diversity_rounds)
        cells = [group.method, group.budget, ", ".join(str(s) for s in group.seeds), f"{dpp_rounds.mean:g}"]
        cells += [diversity_cell(v, means.__getitem__) for v in found.values()]
        lines.append("| " + " | ".join(cells) + " |")
    if OVERLAP in runs_keys(r for g in groups for r in g.runs):
        lines += ["", *overlap_by_round_table(groups)]
    return lines


def overlap_by_round_table(groups: list[Group]) -> list[str]:
    """Markdown: the DPP pick's overlap with the top-k in each round (mean over seeds), the random
    expectation in parentheses."""
    groups = [g for g in groups if group_rounds(g, OVERLAP)]
    rounds = shown_rounds(sorted({r for g in groups for r in group_rounds(g, OVERLAP)}))
    lines = [
        "Overlap of the DPP's pick with the top-k by quality in each round (mean over seeds; in parentheses "
        "the overlap a uniform random pick of the same size has on average):",
        "",
        "| method | budget | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "|---" * (2 + len(rounds)) + "|",
    ]
    for group in groups:
        overlap, expected = per_round(group, OVERLAP), per_round(group, OVERLAP_RANDOM)
        cells = []
        for r in rounds:
            if r not in overlap:
                cells.append("")
                continue
            cell = number(overlap[r].mean)
            cells.append(cell + (f" ({number(expected[r].mean)})" if r in expected else ""))
        lines.append(f"| {group.method} | {group.budget} | " + " | ".join(cells) + " |")
    return lines


def diversity_panels(groups: list[Group]) -> list[dict[str, Any]]:
    """The panels of :func:`~p3bench.report.round_plots.plot_diversity`: one per statistic, each method's
    per-round means over seeds for each variant (in the overlap panel, the random variant is the overlap
    a uniform random pick has on average)."""
    found = statistics_of(runs_keys(r for g in groups for r in g.runs))
    panels = []
    for statistic, variants in found.items():
        series = {}
        for group in groups:
            lines = {}
            for variant, key in variants.items():
                label = VARIANTS[variant]
                points = {r: s.mean for r, s in per_round(group, key).items()}
                if points:
                    lines[label] = points
            if lines:
                series[group.method] = lines
        panels.append({"title": statistic_label(statistic).capitalize(), "series": series})
    return panels


def seeds_note(groups: Iterable[Group]) -> str:
    """'mean over 3 seeds' (or '2–3 seeds' when groups differ; '1 seed') for a figure's legend."""
    counts = sorted({len(g.seeds) for g in groups})
    if not counts or counts == [1]:
        return "1 seed" if counts else ""
    spread = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean over {spread} seeds"


# --- runs.csv ---------------------------------------------------------------------------------------------
def run_columns(run: RunRecord) -> dict[str, Any]:
    """The run's per-round diagnostics as one-row columns (means over its rounds): ``admitted_fraction``,
    ``pace_scheduled_fraction`` and each numeric ``diversity_*`` key as ``<key>_round_mean``, with
    ``pace_floor_rounds`` and ``dpp_rounds`` (rounds that recorded diversity). Empty for runs without them."""
    columns: dict[str, Any] = {}
    for key in (ADMITTED, SCHEDULED):
        mean = run_round_mean(run, key)
        if mean is not None:
            columns[f"{key}_round_mean"] = mean
    floors = floor_rounds(run)
    if floors is not None:
        columns["pace_floor_rounds"] = floors
    keys = runs_keys([run])
    if keys:
        columns["dpp_rounds"] = diversity_rounds(run)
        for key in sorted(keys):
            columns[f"{key}_round_mean"] = run_round_mean(run, key)
    return columns
