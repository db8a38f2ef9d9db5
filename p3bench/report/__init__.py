"""Reports over run directories: ``p3bench report DIR...`` on the command line, :func:`build_report` in a
notebook. Reads results.json, selection.jsonl and csv/metrics.csv of each run (schema in docs/results.md)."""

from p3bench.report.aggregate import Group, Section, Stat, group_runs
from p3bench.report.build import Report, build_report, default_out_dir
from p3bench.report.runs import RunRecord, load_runs

__all__ = [
    "Group",
    "Report",
    "RunRecord",
    "Section",
    "Stat",
    "build_report",
    "default_out_dir",
    "group_runs",
    "load_runs",
]
