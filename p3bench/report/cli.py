"""``p3bench report DIR... [--out OUT] [--metric NAME] [--reference METHOD] [--holm] [--no-plots]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p3bench.report.build import build_report, default_out_dir


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="p3bench report",
        description="Aggregate run directories (single runs, multiruns, or folders of them) over seeds: a CSV of "
        "every run, a Markdown summary (methods x budgets, best per column, failed and missing runs), plots "
        "and selection diagnostics.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run, multirun or any directories holding them")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: DIR/report for one DIR)"
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="metric to compare (a key of results.json metrics, e.g. val/loss); default: test accuracy, or "
        "held-out perplexity on language-modelling data",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--higher-is-better", dest="higher", action="store_true", default=None, help="for --metric"
    )
    direction.add_argument("--lower-is-better", dest="higher", action="store_false", help="for --metric")
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="METHOD",
        help="compare every method with METHOD, paired by seed (at the same budget, or its whole-pool run); "
        "repeat or separate by commas for several; default: random and full",
    )
    parser.add_argument(
        "--holm",
        action="store_true",
        help="read verdicts from Holm-corrected p-values over all the comparisons of a section",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the CSV and the summary only")
    return parser.parse_args(argv)


def references(given: list[str] | None) -> tuple[str, ...] | None:
    """The reference methods from ``--reference`` options (repeated or comma-separated), in order; None for
    the default (:data:`p3bench.report.comparisons.DEFAULT_REFERENCES`, those present)."""
    if not given:
        return None
    names = [name.strip() for value in given for name in value.split(",") if name.strip()]
    return tuple(dict.fromkeys(names)) or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out if args.out is not None else default_out_dir(args.dirs)
    try:
        report = build_report(
            args.dirs,
            out,
            metric=args.metric,
            make_plots=not args.no_plots,
            higher_is_better=args.higher,
            references=references(args.reference),
            holm=args.holm,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"p3bench report: error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown)
    print(f"report written to {report.out_dir}:")
    for name in ("runs.csv", "comparisons.csv", "summary.md"):
        print(f"  {name}: {report.files[name][0]}")
    folders: dict[Path, list[str]] = {}
    for name, paths in report.files.items():
        if name not in ("runs.csv", "comparisons.csv", "summary.md"):
            folders.setdefault(paths[0].parent, []).append(paths[0].stem)
    for folder, stems in folders.items():
        print(f"  figures (.png and .svg) in {folder}: {', '.join(stems)}")
    if not report.sections:
        print("p3bench report: no finished run found", file=sys.stderr)
        return 1
    if args.metric and all(s.group_count_with_metric() == 0 for s in report.sections):
        print(f"p3bench report: error: no finished run has metric {args.metric!r}", file=sys.stderr)
        return 2
    return 0
