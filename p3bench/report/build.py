"""``p3bench report``: from run directories to a CSV of every run, a Markdown summary, plots and selection
diagnostics. The same :func:`build_report` serves the command line and the analysis notebook."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p3bench.report import agent_plots, agent_tables, comparison_tables, diagnostics, round_diagnostics
from p3bench.report.aggregate import WHOLE_POOL, Group, Section, group_runs
from p3bench.report.comparisons import DEFAULT_REFERENCES, SectionComparisons, base_method, compare_section
from p3bench.report.run_status import run_status_table
from p3bench.report.runs import NOT_EXPANDED, NOT_STARTED, RUN_ELSEWHERE, RunRecord, load_runs
from p3bench.utils.io import atomic_write_text

CSV_NAME = "runs.csv"
COMPARISONS_NAME = "comparisons.csv"
SUMMARY_NAME = "summary.md"
IDENTITY_COLUMNS = [
    "run_dir",
    "status",
    "problem",
    "experiment",
    "dataset",
    "method",
    "control",
    "budget",
    "seed",
]


@dataclass
class Report:
    """What a report read and wrote: every run record, the aggregated sections, the Markdown summary, and
    the written files by name (``runs.csv``, ``summary.md`` and, per section, each figure's PNG and SVG)."""

    runs: list[RunRecord]
    sections: list[Section]
    markdown: str
    out_dir: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    #: per section (by slug): the paired comparisons on its headline metric, then on its second metric and
    #: the metrics after it
    comparisons: dict[str, list[SectionComparisons]] = field(default_factory=dict)

    @property
    def problems(self) -> list[RunRecord]:
        """Runs that did not finish (failed, unfinished, corrupt, never started), not counting sweep jobs
        that finished in another given directory."""
        return [r for r in self.runs if not r.ok and r.status != RUN_ELSEWHERE]

    def figures(self, kind: str | None = None) -> list[Path]:
        """The PNG figures written, optionally only those of one kind (``quality_vs_fraction``, ...)."""
        return [
            p
            for name, paths in self.files.items()
            for p in paths
            if p.suffix == ".png" and (kind is None or kind in name)
        ]


def build_report(
    paths: list[str | Path],
    out_dir: str | Path,
    metric: str | None = None,
    make_plots: bool = True,
    higher_is_better: bool | None = None,
    references: tuple[str, ...] | None = None,
    holm: bool = False,
) -> Report:
    """Read every run under ``paths``, aggregate over seeds and write the report into ``out_dir``.
    ``metric`` (a key of results.json's metrics) replaces the headline quality; its direction is read from
    its name unless ``higher_is_better`` is given (ValueError when neither says). Every method is compared
    with each of ``references`` (paired by seed, :mod:`p3bench.report.comparisons`); ``holm`` reads the
    verdicts from Holm-corrected p-values."""
    records = load_runs(paths)
    sections = group_runs(records, metric, higher_is_better)
    if references is None:
        references = DEFAULT_REFERENCES
    else:
        check_references(references, sections)
    out = Path(out_dir)
    comparisons = {s.slug: section_comparisons(s, references, holm) for s in sections}
    files: dict[str, list[Path]] = {
        CSV_NAME: [atomic_write_text(out / CSV_NAME, runs_csv(records))],
    }
    rows = [
        row
        for s in sections
        for c in comparisons[s.slug]
        for row in comparison_tables.comparison_rows(s.title, c)
    ]
    files[COMPARISONS_NAME] = [
        atomic_write_text(out / COMPARISONS_NAME, comparison_tables.comparisons_csv(rows))
    ]
    if make_plots:
        for section in sections:
            files.update(section_figures(section, out / "figures" / section.slug, comparisons[section.slug]))
    markdown = summary_markdown(records, sections, paths, files, out, comparisons, holm)
    files[SUMMARY_NAME] = [atomic_write_text(out / SUMMARY_NAME, markdown)]
    return Report(records, sections, markdown, out, files, comparisons)


def check_references(references: tuple[str, ...], sections: list[Section]) -> None:
    """A ValueError (one line) for a reference method that no finished run of the report has."""
    if isinstance(references, str) or not references:
        raise ValueError(f"references={references!r}: expected one or more method names")
    methods = sorted({base_method(g.method) for s in sections for g in s.groups})
    for name in references:
        if name not in methods:
            raise ValueError(
                f"--reference {name!r}: no finished run of that method in the given directories (methods: "
                f"{', '.join(methods) or 'none'})"
            )


def section_comparisons(
    section: Section, references: tuple[str, ...], holm: bool
) -> list[SectionComparisons]:
    """The section's comparisons on its headline metric and, when it has them, on its second metric and the
    metrics after it (``section.also``)."""
    found = [compare_section(section, references=references, holm=holm)]
    beside = ([section.second] if section.second is not None else []) + list(section.also)
    for name, higher in beside:
        found.append(compare_section(section, name, higher, references=references, holm=holm))
    return found


# --- the CSV of all runs -------------------------------------------------------------------------------------
def run_row(record: RunRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_dir": str(record.path),
        "status": record.status,
        "problem": record.problem or "",
        "experiment": record.experiment,
        "dataset": record.dataset,
        "method": record.method,
        "control": comparison_tables.is_control(record.method),
        "budget": record.budget,
        "seed": record.seed,
    }
    if record.ok and record.results is not None:
        row["budget_label"] = record.budget_label
        row.update(record.summary)
        row["ids_sha256"] = record.results["selection"].get("ids_sha256")
        row.update(round_diagnostics.run_columns(record))
        row.update({k: v for k, v in record.results["metrics"].items()})
    return row


def runs_csv(records: list[RunRecord]) -> str:
    rows = [run_row(r) for r in records]
    columns = list(IDENTITY_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- the Markdown summary ------------------------------------------------------------------------------------
METRIC_LABELS = {
    "test/accuracy": "Test accuracy (fraction of problems solved)",
    "test/perplexity": "Held-out perplexity (exp of mean NLL per token)",
    "val/loss": "Validation loss (nats/token)",
    "val/perplexity": "Validation perplexity (exp of mean NLL per token)",
    "train/loss": "Training loss (nats/token)",
    "test/rouge_l": "Test ROUGE-L F1 of the generated response",
    "test/embedding_similarity": "Test embedding similarity (cosine, response vs reference)",
    "test/response_bpb": "Reference response bits per byte (teacher-forced)",
    "test/judge_score": "Test LLM-judge score (1-5)",
}


def metric_label(name: str) -> str:
    """An axis label with units for a metric of results.json."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    if name.startswith("test/accuracy_level_"):
        return f"Test accuracy, level {name.rsplit('_', 1)[-1]} (fraction solved)"
    return name


def metric_title(name: str, higher: bool) -> str:
    return f"{name} ({'higher' if higher else 'lower'} is better)"


def quality_table(section: Section, metric: str | None = None, higher: bool | None = None) -> list[str]:
    """Methods x budgets: mean ± sd over seeds of ``metric`` (the section's headline by default), the best
    mean of each column in bold."""
    metric = metric or section.metric
    if metric != section.metric:
        section = Section(
            section.experiment,
            section.dataset,
            metric,
            section.higher_is_better if higher is None else higher,
            section.groups,
        )
    budgets = section.budgets
    header = (
        "| method | " + " | ".join(f"budget {b}" if b != WHOLE_POOL else "whole pool" for b in budgets) + " |"
    )
    lines = [header, "|---" * (len(budgets) + 1) + "|"]
    best = {b: section.best_in_column(b) for b in budgets}
    digits = 2 if "perplexity" in section.metric else 3
    for method in section.methods:
        cells = []
        for budget in budgets:
            group = section.group(method, budget)
            text = "" if group is None else group.metric(section.metric).format(digits)
            cells.append(f"**{text}**" if method in best[budget] else text)
        lines.append(f"| {method_cell(method)} | " + " | ".join(cells) + " |")
    return lines


method_cell = comparison_tables.method_cell


def mean_of(group: Group, key: str) -> float:
    values = group.per_seed(lambda r: r.summary.get(key))
    return statistics.fmean(values) if values else math.nan


def fixed(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def details_table(section: Section) -> list[str]:
    defects = diagnostics.planted_kinds(section)
    header = [
        "method",
        "budget",
        "seeds",
        "data fraction",
        "train tokens",
        "selection tokens",
        "train FLOPs",
        "selection FLOPs",
        "total FLOPs",
    ]
    header += ["time (s)"] + [f"trained on {d} (%)" for d in defects]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for group in section.groups:
        shares = diagnostics.defect_shares(group)
        cells = [
            method_cell(group.method),
            group.budget,
            ", ".join(str(s) for s in group.seeds),
            fixed(mean_of(group, "data_fraction"), 3),
            tokens(mean_of(group, "train_tokens")),
            tokens(mean_of(group, "selection_forward_tokens")),
            flops(mean_of(group, "train_flops")),
            flops(mean_of(group, "selection_flops")),
            flops(mean_of(group, "total_compute_flops")),
            fixed(mean_of(group, "seconds_total"), 0),
        ] + [f"{100 * shares[d]:.1f}" if d in shares else "-" for d in defects]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def tokens(value: float) -> str:
    if math.isnan(value):
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.2f}{suffix}"
    return f"{value:.0f}"


def flops(value: float) -> str:
    """A FLOP count in a table cell (``1.23e+15``); ``-`` for runs written before FLOPs were recorded."""
    return "-" if math.isnan(value) else f"{value:.3g}"


def compute_measure(section: Section) -> tuple[str, str]:
    """The summary key and unit the quality-vs-compute figure draws: total FLOPs when any run of the section
    recorded them (runs without are left out of the figure), else total tokens (every run written before
    FLOPs were recorded), which the figure's axis then names."""
    if any(r.summary.get("total_compute_flops") is not None for g in section.groups for r in g.runs):
        return "total_compute_flops", "flops"
    return "total_compute_tokens", "tokens"


def problems_table(records: list[RunRecord]) -> list[str]:
    bad = [r for r in records if not r.ok and r.status != RUN_ELSEWHERE]
    elsewhere: dict[Path, int] = {}
    for r in records:
        if r.status == RUN_ELSEWHERE:
            elsewhere[r.path.parent] = elsewhere.get(r.path.parent, 0) + 1
    if not records:
        lines = ["No run directory was found."]
    elif not bad:
        lines = ["Every run finished."]
    else:
        lines = [
            "| run | status | experiment | dataset | method | budget | seed | reason |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in bad:
        reason = (r.problem or "").replace("|", "\\|")
        lines.append(
            f"| {r.path} | {r.status} | {r.experiment} | {r.dataset} | {r.method} | {r.budget} | {r.seed} "
            f"| {reason} |"
        )
    for sweep, count in elsewhere.items():
        lines += [
            "",
            f"{count} jobs of the sweep {sweep} never started there; a run with the same experiment, dataset, "
            "method, budget and seed finished in another given directory (each is a row of runs.csv).",
        ]
    return lines


def summary_markdown(
    records: list[RunRecord],
    sections: list[Section],
    paths: list[str | Path],
    files: dict[str, list[Path]],
    out: Path,
    comparisons: dict[str, list[SectionComparisons]] | None = None,
    holm: bool = False,
) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    directories = sum(n for s, n in counts.items() if s not in (RUN_ELSEWHERE, NOT_STARTED, NOT_EXPANDED))
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [
        "# p3bench report",
        "",
        f"{plural(directories, 'run directory', 'run directories')} and "
        f"{plural(len(records) - directories, 'sweep entry', 'sweep entries')} without one "
        f"({status or 'none'}) from {', '.join(str(p) for p in paths)}.",
        "Cells: mean ± sample standard deviation over seeds (n = seeds; repeats of a seed are averaged); "
        "the best mean of each column is in bold. Differences are paired by seed (method minus reference); a "
        "verdict is read from the 95% t interval over seeds, the bootstrap interval resamples seeds and test "
        "examples together.",
    ]
    for section in sections:
        lines += ["", f"## {section.title}: {metric_title(section.metric, section.higher_is_better)}", ""]
        lines += quality_table(section)
        if section.lacking_metric:
            lines += [
                "",
                f"Finished runs without {section.metric} (not in the table): "
                + ", ".join(str(r.path) for r in section.lacking_metric),
            ]
        lines += comparison_sections(section, (comparisons or {}).get(section.slug, []), holm)
        lines += [
            "",
            "Data fraction (distinct examples trained on over all rounds / pool), compute (tokens: training, "
            "selection forward passes; FLOPs: training, the selection's models, their total, "
            "docs/results.md), time, and the share of training on planted defects:",
            "",
        ]
        lines += details_table(section)
        pace, diversity = round_diagnostics.pace_table(section), round_diagnostics.diversity_tables(section)
        for table in (pace, diversity, agent_tables.console_table(section)):
            lines += ["", *table] if table else []
        figures = [p for name, ps in files.items() if name.startswith(section.slug + "/") for p in ps]
        pngs = [p for p in figures if p.suffix == ".png"]
        if pngs:
            lines += ["", "Figures: " + ", ".join(f"[{p.stem}]({p.relative_to(out)})" for p in pngs)]
    lines += ["", "## Failed, unfinished and missing runs", ""] + problems_table(records)
    repeats = repeated_settings(records)
    if repeats:
        lines += ["", "## Settings that finished more than once (averaged as one seed)", ""]
        lines += [f"- {', '.join(str(r.path) for r in runs)}" for runs in repeats]
    lines += ["", "## Run directories: finished, failed, unfinished", "", *run_status_table(records)]
    return "\n".join(lines) + "\n"


def comparison_sections(section: Section, found: list[SectionComparisons], holm: bool) -> list[str]:
    """The paired differences, the rankings and the controls of the headline metric, then the second
    metric's table and differences."""
    lines: list[str] = []
    for position, comparisons in enumerate(found):
        if position > 0:
            lines += [
                "",
                f"### Also: {metric_title(comparisons.metric, comparisons.higher_is_better)}",
                "",
                *quality_table(section, comparisons.metric, comparisons.higher_is_better),
            ]
        table = comparison_tables.comparison_table(comparisons)
        if table:
            lines += [
                "",
                f"Paired differences on {comparisons.metric} against "
                f"{' and '.join(comparison_tables.references_used(comparisons))}:",
                "",
                *table,
            ]
            note = comparison_tables.multiplicity_note(comparisons, holm)
            lines += ["", *note] if note else []
        if position == 0:
            ranks = comparison_tables.ranking_table(comparisons)
            if ranks:
                lines += ["", "Ranking under the bootstrap over seeds:", "", *ranks]
        lines += ["", *comparison_tables.controls_lines(comparisons, section.dataset)]
    return lines


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def repeated_settings(records: list[RunRecord]) -> list[list[RunRecord]]:
    """Finished runs that share all their settings, seed included (a job run again in another sweep)."""
    by_settings: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        if record.ok:
            by_settings.setdefault(record.settings(), []).append(record)
    return [runs for runs in by_settings.values() if len(runs) > 1]


# --- figures -------------------------------------------------------------------------------------------------
def section_figures(
    section: Section, folder: Path, comparisons: list[SectionComparisons] | None = None
) -> dict[str, list[Path]]:
    """Every figure of one section, keyed ``<section slug>/<figure>``."""
    from p3bench.report import plots  # matplotlib only when plotting

    written: dict[str, list[Path]] = {}

    def add(name: str, paths: list[Path]) -> None:
        if paths:
            written[f"{section.slug}/{name}"] = paths

    label = metric_label(section.metric)
    styles = plots.method_styles(section.methods)  # one colour and marker per method in every figure
    points = []
    compute_key, compute_unit = compute_measure(section)
    for g in section.groups:
        quality = g.metric(section.metric)
        fraction = mean_of(g, "data_fraction")
        compute = g.stat(lambda r: r.summary.get(compute_key))
        points.append((g, quality, fraction, compute))
    add(
        "quality_vs_fraction",
        plots.plot_quality_vs_fraction(
            [
                {"method": g.method, "fraction": f, "quality": q.mean, "quality_sd": q.sd, "n": q.n}
                for g, q, f, _ in points
                if q.n
            ],
            metric_label=label,
            higher_is_better=section.higher_is_better,
            stem=folder / "quality_vs_fraction",
            styles=styles,
            title=section.title,
        ),
    )
    add(
        "quality_vs_compute",
        plots.plot_quality_vs_compute(
            [
                {
                    "method": g.method,
                    "budget": g.budget,
                    "compute": c.mean,
                    "compute_sd": c.sd,
                    "quality": q.mean,
                    "quality_sd": q.sd,
                    "n": q.n,
                }
                for g, q, _, c in points
                if q.n and c.n
            ],
            metric_label=label,
            higher_is_better=section.higher_is_better,
            stem=folder / "quality_vs_compute",
            styles=styles,
            title=section.title,
            unit=compute_unit,
        ),
    )
    from p3bench.report.comparison_plots import paired_difference_figures

    written.update(paired_difference_figures(section, folder, comparisons or [], method_cell))
    curves = [c for c in (mean_curve(g) for g in section.groups) if c is not None]
    add(
        "learning_curves",
        plots.plot_learning_curves(
            curves, stem=folder / "learning_curves", title=section.title, styles=styles
        ),
    )

    kind = diagnostics.category_kind(section)
    for budget in section.budgets:
        groups = [g for g in section.groups if g.budget == budget]
        if kind is not None and budget != WHOLE_POOL:
            shares = {g.method: diagnostics.selected_shares(g, kind) for g in groups}
            add(
                f"selected_by_{kind}_b{budget}",
                plots.plot_level_histograms(
                    {m: s for m, s in shares.items() if s},
                    stem=folder / f"selected_by_{kind}_b{budget}",
                    category_label=diagnostics.CATEGORY_LABELS[kind],
                    reference=diagnostics.pool_shares(section, kind),
                    styles=styles,
                    title=f"{section.title}, budget {budget}",
                ),
            )
        dynamic = [g for g in groups if diagnostics.is_dynamic(g)]
        if kind is not None and dynamic:
            add(
                f"rounds_by_{kind}_b{budget}",
                plots.plot_round_histograms(
                    {g.method: diagnostics.round_counts(g, kind) for g in dynamic},
                    stem=folder / f"rounds_by_{kind}_b{budget}",
                    category_label=diagnostics.CATEGORY_LABELS[kind],
                    title=f"{section.title}, budget {budget}",
                ),
            )
        paced = [g for g in dynamic if round_diagnostics.has_pace(g)]
        if paced:
            add(
                f"pace_admitted_b{budget}",
                plots.plot_admitted_share(
                    {g.method: round_diagnostics.pace_series(g) for g in paced},
                    stem=folder / f"pace_admitted_b{budget}",
                    budget_fraction=round_diagnostics.budget_share(paced),
                    title=f"{section.title}, budget {budget}",
                    styles=styles,
                ),
            )
        diverse = [g for g in groups if round_diagnostics.has_diversity(g)]
        if diverse:
            add(
                f"dpp_diversity_b{budget}",
                plots.plot_diversity(
                    round_diagnostics.diversity_panels(diverse),
                    stem=folder / f"dpp_diversity_b{budget}",
                    title=f"{section.title}, budget {budget}",
                    styles=styles,
                    variants=list(round_diagnostics.VARIANTS.values()),
                    seeds=round_diagnostics.seeds_note(diverse),
                ),
            )
        if len(groups) >= 2 and budget != WHOLE_POOL:
            add(
                f"overlap_b{budget}",
                plots.plot_overlap(
                    diagnostics.overlap_matrix(groups),
                    [g.method for g in groups],
                    stem=folder / f"overlap_b{budget}",
                    title=f"{section.title}, budget {budget}",
                ),
            )
    kinds = diagnostics.planted_kinds(section)
    defects = {
        g.label: {k: v for k, v in diagnostics.defect_shares(g).items() if k in kinds} for g in section.groups
    }
    defects = {k: v for k, v in defects.items() if v}
    if defects:
        pool = diagnostics.pool_defect_shares(section)
        add(
            "planted_defects",
            plots.plot_defect_shares(
                defects,
                stem=folder / "planted_defects",
                pool={k: v for k, v in pool.items() if k in kinds} if pool else None,
                title=section.title,
                styles=styles,
            ),
        )
    written.update(agent_plots.agent_figures(section, folder))  # multi-agent weights and shares
    return written


def mean_curve(group: Group) -> dict[str, Any] | None:
    """The group's validation-loss curve: mean and standard deviation over seeds at the steps every seed
    logged (None when no run of the group has a CSV log)."""
    curves = [r.curve for r in group.runs if r.curve]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
    if not steps:
        return None
    values = [[dict(zip(c["step"], c["val_loss"], strict=True))[s] for c in curves] for s in steps]
    return {
        "label": group.label,
        "x": steps,
        "y": [statistics.fmean(v) for v in values],
        "y_sd": [statistics.stdev(v) if len(v) > 1 else math.nan for v in values]
        if len(curves) > 1
        else None,
    }


def default_out_dir(paths: list[str | Path]) -> Path:
    """``<DIR>/report`` for one directory, else ``./report``."""
    return Path(paths[0]) / "report" if len(paths) == 1 else Path("report")
