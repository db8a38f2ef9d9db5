"""Figures of ``p3bench report``: pure plotting functions over plain Python data.

Every function takes lists and dicts of numbers and strings (no project classes), an output path stem (a
:class:`~pathlib.Path` without suffix) and writes ``<stem>.png`` (200 dpi) and ``<stem>.svg``. It returns
the written paths. When there is nothing to draw (empty input, or no finite values) it writes nothing and
returns ``[]``.

The figures are built on :class:`matplotlib.figure.Figure` objects with an Agg canvas, never through
``pyplot``: nothing is registered in a global figure manager, no window opens, the backend a notebook chose
is left alone, and functions may run in several threads at once. Sizes (about 6.5 x 4 in) and fonts (8 pt
and up) are chosen to stay readable at double-column paper width, and legends sit outside the axes.

Each method keeps one colour, marker, line style and hatch across figures: :func:`method_styles` derives
the colour from the method's name where it can, so figures that show different subsets of methods mostly
agree; to make them agree always, compute :func:`method_styles` once over every method of a report and pass
it as ``styles=`` to each function that draws methods.

This module draws quality against data and compute and the learning curves, and re-exports the figures of
:mod:`p3bench.report.selection_plots` (what was selected) and :mod:`p3bench.report.round_plots` (the rounds
of dynamic methods: their selections, the pace's admitted share, the DPP's diversity); the shared style
lives in :mod:`p3bench.report.plot_style`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from p3bench.report.plot_style import (
    DPI,
    FONT,
    FORMATS,
    HATCHES,
    LINESTYLES,
    MARKERS,
    PALETTE,
    SMALL,
    MethodStyle,
    add_legend,
    add_title,
    category_order,
    grid_shape,
    hide_unused,
    is_finite,
    method_colors,
    method_styles,
    new_figure,
    resolve_styles,
    save_figure,
    seeds_note,
    split_run_label,
    to_float,
)
from p3bench.report.round_plots import plot_admitted_share, plot_diversity, plot_round_histograms
from p3bench.report.selection_plots import plot_defect_shares, plot_level_histograms, plot_overlap

__all__ = [
    "DPI",
    "FORMATS",
    "HATCHES",
    "LINESTYLES",
    "MARKERS",
    "PALETTE",
    "MethodStyle",
    "format_flops",
    "format_tokens",
    "method_colors",
    "method_styles",
    "pareto_front",
    "plot_admitted_share",
    "plot_defect_shares",
    "plot_diversity",
    "plot_learning_curves",
    "plot_level_histograms",
    "plot_overlap",
    "plot_quality_vs_compute",
    "plot_quality_vs_fraction",
    "plot_round_histograms",
]

#: Line styles that tell budgets of one method apart in a single learning-curve panel.
_BUDGET_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


# ------------------------------------------------------------------------------------------- numbers


def _errors(values: Sequence[float]) -> np.ndarray | None:
    """Error-bar half widths with NaN (unknown sd, e.g. one seed) as 0; None when all are 0."""
    array = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    array = np.abs(array)
    return array if np.any(array > 0) else None


def pareto_front(points: Sequence[Any], higher_is_better: bool, *, x_key: str = "fraction") -> list[int]:
    """Indices (ascending) of the points on the Pareto front of cost (less is better) against quality.

    A point is on the front when no other point has less-or-equal cost and better-or-equal quality with at
    least one of the two strict; identical points are therefore all on the front. A point is either a
    mapping with keys ``x_key`` and ``"quality"`` or a pair ``(cost, quality)``. Points with a non-finite
    cost or quality are never on the front and dominate nothing. O(n log n).
    """
    costs = np.full(len(points), np.nan)
    qualities = np.full(len(points), np.nan)
    for i, point in enumerate(points):
        if isinstance(point, Mapping):
            costs[i], qualities[i] = to_float(point.get(x_key)), to_float(point.get("quality"))
        else:
            costs[i], qualities[i] = to_float(point[0]), to_float(point[1])
    if not higher_is_better:
        qualities = -qualities
    valid = np.flatnonzero(np.isfinite(costs) & np.isfinite(qualities))
    order = valid[np.argsort(costs[valid], kind="stable")]
    front: list[int] = []
    best_before = -math.inf  # best quality among strictly cheaper points
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and costs[order[stop]] == costs[order[start]]:
            stop += 1
        group = order[start:stop]
        group_best = qualities[group].max()
        if group_best > best_before:
            front.extend(int(i) for i in group if qualities[i] == group_best)
        best_before = max(best_before, group_best)
        start = stop
    return sorted(front)


def format_tokens(value: float, _pos: Any = None) -> str:
    """A token count for a tick label: 500, 20k, 1M, 2.5B, 1T."""
    if not is_finite(value) or value <= 0:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale * 0.9995:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def format_flops(value: float, _pos: Any = None) -> str:
    """A FLOP count for a tick label, in powers of ten: 1e12, 2e15, 2.5e18."""
    if not is_finite(value) or value <= 0:
        return ""
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    if round(mantissa, 2) >= 10:  # 9.999e14 shows as 1e15
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.3g}e{exponent}"


#: the x axis of :func:`plot_quality_vs_compute` by what a run's compute is counted in
COMPUTE_AXES: dict[str, tuple[str, Any]] = {
    "flops": ("Total compute (FLOPs: training + selection)", format_flops),
    "tokens": ("Total compute (tokens: training + selection forward passes)", format_tokens),
}


def _direction(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


# ------------------------------------------------------------------------------------ quality plots


def _method_points(
    points: Sequence[Mapping[str, Any]], x_key: str, log_x: bool | None
) -> tuple[list[Mapping[str, Any]], bool]:
    """The points with finite x and quality (and x > 0 on a log axis), and whether x is logarithmic:
    ``log_x=None`` chooses log when the positive x values span more than one decade."""
    rows = [p for p in points if is_finite(p.get(x_key)) and is_finite(p.get("quality"))]
    positive = [float(p[x_key]) for p in rows if float(p[x_key]) > 0]
    if log_x is None:
        log_x = len(positive) >= 2 and max(positive) / min(positive) > 10
    if log_x:
        rows = [p for p in rows if float(p[x_key]) > 0]
    return rows, bool(log_x)


def _draw_series(
    ax: Axes,
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    styles: Mapping[str, MethodStyle],
    *,
    x_sd_key: str | None = None,
) -> tuple[list[Any], list[str]]:
    """One error-bar series per method, points sorted by x; returns legend handles and labels."""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(str(row["method"]), []).append(row)
    handles, labels = [], []
    for method in sorted(by_method):
        series = sorted(by_method[method], key=lambda p: float(p[x_key]))
        style = styles[method]
        x = [float(p[x_key]) for p in series]
        y = [float(p["quality"]) for p in series]
        yerr = _errors([to_float(p.get("quality_sd")) for p in series])
        xerr = _errors([to_float(p.get(x_sd_key)) for p in series]) if x_sd_key else None
        container = ax.errorbar(
            x,
            y,
            yerr=yerr,
            xerr=xerr,
            color=style.color,
            marker=style.marker,
            linestyle=style.linestyle if len(series) > 1 else "none",
            linewidth=1.4,
            markersize=5,
            markeredgecolor="white",
            markeredgewidth=0.5,
            elinewidth=0.9,
            capsize=2.5,
            zorder=3,
        )
        handles.append(container)
        labels.append(method)
    return handles, labels


def plot_quality_vs_fraction(
    points: Sequence[Mapping[str, Any]],
    *,
    metric_label: str,
    higher_is_better: bool,
    stem: Path | str,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    log_x: bool | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Quality against the fraction of the pool trained on, one series per method, with the Pareto front.

    ``points``: ``{"method", "fraction", "quality", "quality_sd", "n"}`` (means over ``n`` seeds). Each
    method is a line through its points sorted by fraction, with ±1 sd error bars (none where the sd is NaN);
    a method with a single point (e.g. the whole pool, fraction 1.0) is a lone marker. Points on the Pareto
    front over all methods (:func:`pareto_front`) get a black outline joined by a step line. The x axis is
    linear from 0, or logarithmic when the fractions span more than a decade (``log_x`` forces either).
    Points with a non-finite fraction or quality are left out; returns ``[]`` when none remain.
    """
    rows, log_x = _method_points(points, "fraction", log_x)
    if not rows:
        return []
    styles = resolve_styles(styles, (str(p["method"]) for p in rows))
    fig, axes = new_figure()
    ax = axes[0, 0]
    handles, labels = _draw_series(ax, rows, "fraction", styles)

    front = sorted(
        (rows[i] for i in pareto_front(rows, higher_is_better)),
        key=lambda p: (
            float(p["fraction"]),
            -float(p["quality"]) if higher_is_better else float(p["quality"]),
        ),
    )
    fx = [float(p["fraction"]) for p in front]
    fy = [float(p["quality"]) for p in front]
    ax.plot(fx, fy, drawstyle="steps-post", color="black", linewidth=0.9, alpha=0.7, zorder=2)
    ax.scatter(fx, fy, s=95, facecolors="none", edgecolors="black", linewidths=1.1, zorder=4)
    handles.append(
        Line2D(
            [], [], color="black", linewidth=0.9, marker="o", markersize=9, markerfacecolor="none", alpha=0.9
        )
    )
    labels.append("Pareto front (no other point has less data and better quality)")

    fractions = [float(p["fraction"]) for p in rows]
    if log_x:
        ax.set_xscale("log")
        span = math.log10(max(fractions) / min(fractions))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 2.5 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, max(max(fractions) * 1.06, 0.05))
    ax.set_xlabel("Training data (fraction of pool)", fontsize=FONT)
    ax.set_ylabel(metric_label, fontsize=FONT)
    ax.margins(y=0.08)
    note = f"{seeds_note(p.get('n') for p in rows)}\n{_direction(higher_is_better)}"
    add_legend(fig, handles, labels, title=note)
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


def _token_axis(ax: Axes, values: Sequence[float], formatter: Any = format_tokens) -> None:
    """A logarithmic x axis labelled in readable token counts (1M, 20M; or another ``formatter``, such as
    :func:`format_flops`); finer ticks for narrow ranges."""
    ax.set_xscale("log")
    lo, hi = min(values), max(values)
    span = math.log10(hi / lo) if lo > 0 else 0.0
    if span < 2.5:  # under 2.5 decades, label 1-2-5 steps (200k, 500k, 1M, 2M), not only decades
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(np.arange(2, 10)), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(formatter))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if span < 0.3:  # a single point or a very narrow range: widen so that at least one tick shows
        centre = math.sqrt(lo * hi)
        ax.set_xlim(centre / 2.2, centre * 2.2)


def plot_quality_vs_compute(
    points: Sequence[Mapping[str, Any]],
    *,
    metric_label: str,
    higher_is_better: bool,
    stem: Path | str,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    annotate: bool | None = None,
    unit: str = "flops",
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Quality against total compute (the FLOPs of training and of the selection's models,
    :mod:`p3bench.compute`), one series per method.

    ``points``: ``{"method", "budget", "compute", "compute_sd", "quality", "quality_sd", "n"}``, the compute
    in ``unit``: ``flops`` (default), or ``tokens`` (training + selection forward tokens) for runs written
    before FLOPs were recorded, which the axis label then says. The x axis is logarithmic (FLOPs as 1e12,
    2e15, ...; tokens as 1M, 20M, ...); error bars show ±1 sd in both directions. Each point
    is labelled with its budget in small text in its method's colour when there are at most 30 points
    (``annotate`` forces either). Points with a non-positive or non-finite compute, or a non-finite quality,
    are left out; returns ``[]`` when none remain.
    """
    if unit not in COMPUTE_AXES:
        raise ValueError(f"compute unit {unit!r} is unknown: expected one of {', '.join(COMPUTE_AXES)}")
    rows, _ = _method_points(points, "compute", log_x=True)
    if not rows:
        return []
    styles = resolve_styles(styles, (str(p["method"]) for p in rows))
    fig, axes = new_figure()
    ax = axes[0, 0]
    handles, labels = _draw_series(ax, rows, "compute", styles, x_sd_key="compute_sd")
    if annotate is None:
        annotate = len(rows) <= 30
    if annotate:
        for row in rows:
            budget = row.get("budget")
            if budget is None or str(budget) == "":
                continue
            ax.annotate(
                str(budget),
                (float(row["compute"]), float(row["quality"])),
                # quality mostly improves with compute: the free corner is to the lower right when higher
                # is better, to the upper right when lower is better
                xytext=(5, -4 if higher_is_better else 4),
                textcoords="offset points",
                va="top" if higher_is_better else "bottom",
                fontsize=SMALL,
                color=styles[str(row["method"])].color,
                bbox={
                    "boxstyle": "square,pad=0.05",
                    "facecolor": "white",
                    "edgecolor": "none",
                    "alpha": 0.75,
                },
                zorder=5,
            )
    x_label, formatter = COMPUTE_AXES[unit]
    _token_axis(ax, [float(p["compute"]) for p in rows], formatter)
    ax.set_xlabel(x_label, fontsize=FONT)
    ax.set_ylabel(metric_label, fontsize=FONT)
    ax.margins(x=0.08, y=0.1)
    note = f"{seeds_note(p.get('n') for p in rows)}\n{_direction(higher_is_better)}"
    if annotate:
        note += "\npoint labels: data budget"
    add_legend(fig, handles, labels, title=note)
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


# ---------------------------------------------------------------------------------- learning curves


def _or_empty(values: Any) -> Any:
    return [] if values is None else values


def plot_learning_curves(
    curves: Sequence[Mapping[str, Any]],
    *,
    stem: Path | str,
    x_label: str = "Optimizer step",
    y_label: str = "Validation loss (nats/token)",
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    max_per_panel: int = 8,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Curves (mean line with a shaded ±1 sd band) of a metric over training.

    ``curves``: ``{"label", "x", "y", "y_sd"}`` with ``y_sd`` a list or None; labels of the form
    ``"method @ budget"`` are coloured by method, other labels (e.g. the whole pool, ``"full"``) are methods
    of their own. Up to ``max_per_panel`` curves share one panel, where a method shown at several budgets
    keeps its colour and changes line style per budget. More curves are split into small multiples with
    shared axes: one panel per budget when the labels carry several budgets (curves without a budget are
    repeated in each panel as the reference), else panels of ``max_per_panel`` curves. Curves without
    points are skipped; NaN in ``y`` or ``y_sd`` leaves a gap, and points left without a neighbour (a
    single point) are markers. Raises ValueError when ``x``, ``y`` and ``y_sd`` differ in length; returns
    ``[]`` when no curve has points.
    """
    items = []
    for curve in curves:
        x = np.asarray(_or_empty(curve.get("x")), dtype=float)
        y = np.asarray(_or_empty(curve.get("y")), dtype=float)
        sd = curve.get("y_sd")
        sd = None if sd is None else np.asarray(sd, dtype=float)
        label = str(curve.get("label", ""))
        if len(x) != len(y) or (sd is not None and len(sd) != len(y)):
            raise ValueError(
                f"learning curve {label!r}: x, y and y_sd differ in length "
                f"({len(x)}, {len(y)}, {None if sd is None else len(sd)})"
            )
        if len(x) and np.any(np.isfinite(y)):
            split = split_run_label(label)
            method, budget = split if split else (label, None)
            items.append({"label": label, "x": x, "y": y, "sd": sd, "method": method, "budget": budget})
    if not items:
        return []

    styles = resolve_styles(styles, (item["method"] for item in items))
    budgets = category_order(item["budget"] for item in items if item["budget"] is not None)
    references = [item for item in items if item["budget"] is None]
    if len(items) <= max_per_panel:
        panels = [("", items)]
    elif len(budgets) > 1:  # one panel per budget, curves without a budget (the whole pool) in each
        panels = [(f"budget {b}", [it for it in items if it["budget"] == b] + references) for b in budgets]
    else:
        panels = [("", items[i : i + max_per_panel]) for i in range(0, len(items), max_per_panel)]

    single = len(panels) == 1
    nrows, ncols = grid_shape(len(panels), 3)
    if single:
        fig, axes = new_figure()
    else:
        fig, axes = new_figure(nrows, ncols, width=7.0, height=0.6 + 2.1 * nrows, sharex=True, sharey=True)
    legend: dict[str, Any] = {}
    for k, (panel_title, panel_items) in enumerate(panels):
        ax = axes.flat[k]
        crowded = len(panel_items) > 12  # thinner lines, fainter bands
        for item in panel_items:
            style = styles[item["method"]]
            linestyle: Any = style.linestyle
            if single and len(budgets) > 1 and item["budget"] is not None:
                # in one panel, the budgets of a method differ by line style
                linestyle = _BUDGET_LINESTYLES[budgets.index(item["budget"]) % len(_BUDGET_LINESTYLES)]
            x, y, sd = item["x"], item["y"], item["sd"]
            (line,) = ax.plot(
                x,
                y,
                color=style.color,
                linestyle=linestyle,
                linewidth=1.0 if crowded else 1.3,
                marker=None if single else style.marker,
                markevery=max(1, len(x) // 5),
                markersize=3 if crowded else 3.5,
                zorder=3,
            )
            # points without a finite neighbour draw no line: show them as markers
            finite = np.isfinite(x) & np.isfinite(y)
            before = np.concatenate([[False], finite[:-1]])
            after = np.concatenate([finite[1:], [False]])
            isolated = finite & ~before & ~after
            if isolated.any():
                ax.plot(
                    x[isolated],
                    y[isolated],
                    color=style.color,
                    marker=style.marker,
                    markersize=4,
                    linestyle="none",
                    zorder=3,
                )
                if single and isolated.sum() == finite.sum():
                    line.set_marker(style.marker)  # the legend shows the marker of a curve of lone points
            if sd is not None and np.any(np.isfinite(sd)):
                alpha = 0.08 if crowded else 0.16
                ax.fill_between(x, y - sd, y + sd, color=style.color, alpha=alpha, linewidth=0, zorder=2)
            legend.setdefault(item["label"] if single else item["method"], line)
        if panel_title:
            ax.set_title(panel_title, fontsize=FONT)
    hide_unused(axes, len(panels))
    if single:
        axes[0, 0].set_xlabel(x_label, fontsize=FONT)
        axes[0, 0].set_ylabel(y_label, fontsize=FONT)
    else:
        fig.supxlabel(x_label, fontsize=FONT)
        fig.supylabel(y_label, fontsize=FONT)
    if not single:  # methods by name, then the curves repeated in every panel
        reference_names = {it["method"] for it in references}
        order = sorted(name for name in legend if name not in reference_names)
        legend = {name: legend[name] for name in order + [n for n in legend if n in reference_names]}
    bands = any(it["sd"] is not None and np.any(np.isfinite(it["sd"])) for it in items)
    add_legend(fig, list(legend.values()), list(legend), title="shaded: ±1 sd over seeds" if bands else None)
    add_title(fig, title, panels=not single)
    return save_figure(fig, stem, dpi=dpi, formats=formats)
