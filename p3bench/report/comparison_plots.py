"""The paired differences of a section as a forest plot: each method's mean difference from a reference
with its 95% t interval over seeds (thick) and its bootstrap interval over seeds and test examples (thin),
coloured by verdict, and zero marked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p3bench.report.plot_style import DPI, FONT, FORMATS, SMALL, add_title, new_figure, save_figure

VERDICT_COLORS = {"better": "#2ca02c", "worse": "#d62728", "inconclusive": "#7f7f7f"}


def plot_paired_differences(
    rows: Sequence[dict[str, Any]],
    *,
    metric_label: str,
    higher_is_better: bool,
    stem: Path | str,
    title: str | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """``rows``: ``{"label", "mean", "t_low", "t_high", "boot_low", "boot_high", "verdict"}`` (one per
    comparison, top to bottom). Rows without a finite mean are left out; returns ``[]`` when none is left."""
    rows = [r for r in rows if isinstance(r.get("mean"), (int, float)) and math.isfinite(r["mean"])]
    if not rows:
        return []
    fig, axes = new_figure(height=max(2.0, 0.8 + 0.32 * len(rows)))
    ax = axes[0, 0]
    for y, row in enumerate(reversed(rows)):
        color = VERDICT_COLORS.get(str(row.get("verdict")), "#7f7f7f")
        for low_key, high_key, width in (("boot_low", "boot_high", 1.0), ("t_low", "t_high", 3.0)):
            low, high = row.get(low_key), row.get(high_key)
            if isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low + high):
                ax.hlines(y, low, high, colors=color, linewidth=width, zorder=3)
        ax.plot([row["mean"]], [y], marker="o", color=color, markersize=5, zorder=4)
    ax.axvline(0.0, color="black", linewidth=0.8, zorder=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r["label"]) for r in reversed(rows)], fontsize=SMALL)
    better = "right" if higher_is_better else "left"
    ax.set_xlabel(f"Difference in {metric_label} (method − reference; better to the {better})", fontsize=FONT)
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


def paired_difference_figures(
    section: Any, folder: Path, found: Sequence[Any], method_cell: Callable[[str], str]
) -> dict[str, list[Path]]:
    """The forest plot of each metric's comparisons of a section (``paired_differences`` for the headline,
    ``paired_differences_<metric>`` for the second), keyed by figure name."""
    written: dict[str, list[Path]] = {}
    for comparisons in found:
        suffix = "" if comparisons.metric == section.metric else "_" + comparisons.metric.replace("/", "_")
        rows = [
            {
                "label": f"{method_cell(c.method or '')} @ {budget} vs {c.reference}",
                "mean": c.mean_diff,
                "t_low": c.t_low,
                "t_high": c.t_high,
                "boot_low": c.boot_low,
                "boot_high": c.boot_high,
                "verdict": c.verdict,
            }
            for budget, c in comparisons.rows
        ]
        paths = plot_paired_differences(
            rows,
            metric_label=comparisons.metric,
            higher_is_better=comparisons.higher_is_better,
            stem=folder / f"paired_differences{suffix}",
            title=section.title,
        )
        if paths:
            written[f"{section.slug}/paired_differences{suffix}"] = paths
    return written
