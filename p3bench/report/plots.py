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
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "MARKERS",
    "PALETTE",
    "MethodStyle",
    "format_tokens",
    "method_colors",
    "method_styles",
    "pareto_front",
    "plot_defect_shares",
    "plot_learning_curves",
    "plot_level_histograms",
    "plot_overlap",
    "plot_quality_vs_compute",
    "plot_quality_vs_fraction",
    "plot_round_histograms",
]

#: Qualitative palette (matplotlib's tab10) of the methods.
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Markers, line styles and hatches change with each pass through the palette, so that colour and marker
#: together stay unique for up to ``len(PALETTE) * len(MARKERS)`` (80) methods.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")
HATCHES: tuple[str, ...] = ("", "////", "....", "xxxx", "\\\\\\\\", "oo", "++", "----")
#: Line styles that tell budgets of one method apart in a single learning-curve panel.
_BUDGET_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))

DPI = 200
FORMATS: tuple[str, ...] = ("png", "svg")
WIDTH = 6.5  # in: double-column paper width, a little under
HEIGHT = 4.0
FONT = 9  # axis labels
SMALL = 8  # ticks, legends, annotations
TITLE = 10
LEGEND_MAX_HEIGHT = 7.0  # in: a legend taller than this takes more columns
WRAP = 28  # characters per line of a legend entry or tick label


# --------------------------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn: colour (hex), marker, line style and bar hatch."""

    color: str
    marker: str
    linestyle: str
    hatch: str


def method_styles(methods: Iterable[str]) -> dict[str, MethodStyle]:
    """A deterministic style per method, as stable as possible across subsets of methods.

    Each name prefers the palette colour given by a checksum of the name (the same in every process), so a
    method keeps its colour in figures that show different subsets of methods. Going through the names in
    sorted order, a name whose colour is taken gets the next free colour; once all colours are taken, the
    next pass through the palette comes with another marker, line style and hatch. Colour and marker
    together are unique for up to ``len(PALETTE) * len(MARKERS)`` (80) methods.
    """
    names = sorted(set(methods))
    n_colors = len(PALETTE)
    taken: set[tuple[int, int]] = set()
    styles = {}
    for i, name in enumerate(names):
        preferred = zlib.crc32(name.encode("utf-8")) % n_colors
        slot = next(
            (
                (k // n_colors, (preferred + k) % n_colors)
                for k in range(n_colors * len(MARKERS))
                if (k // n_colors, (preferred + k) % n_colors) not in taken
            ),
            (i // n_colors, i % n_colors),  # more methods than slots: styles repeat
        )
        taken.add(slot)
        cycle, color = slot
        styles[name] = MethodStyle(
            color=PALETTE[color],
            marker=MARKERS[cycle % len(MARKERS)],
            linestyle=LINESTYLES[cycle % len(LINESTYLES)],
            hatch=HATCHES[cycle % len(HATCHES)],
        )
    return styles


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """The colour (hex) of each method, as in :func:`method_styles`."""
    return {name: style.color for name, style in method_styles(methods).items()}


def _resolve_styles(
    styles: Mapping[str, MethodStyle] | None, methods: Iterable[str]
) -> dict[str, MethodStyle]:
    """The given styles, completed by :func:`method_styles` for the methods they lack."""
    resolved = dict(styles or {})
    missing = [m for m in methods if m not in resolved]
    if missing:
        extra = method_styles([*resolved, *missing])
        resolved.update({m: extra[m] for m in missing})
    return resolved


# ------------------------------------------------------------------------------------------- numbers


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any, default: float = math.nan) -> float:
    """``value`` as a float; ``default`` for None or what does not convert."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


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
            costs[i], qualities[i] = _float(point.get(x_key)), _float(point.get("quality"))
        else:
            costs[i], qualities[i] = _float(point[0]), _float(point[1])
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
    if not _finite(value) or value <= 0:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale * 0.9995:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _category_order(categories: Iterable[str]) -> list[str]:
    """Categories sorted numerically when all are numbers, else in order of first appearance."""
    seen = list(dict.fromkeys(str(c) for c in categories))
    if seen and all(_finite(c) for c in seen):
        return sorted(seen, key=float)
    return seen


# ------------------------------------------------------------------------------------------- figures


def _figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: float = WIDTH,
    height: float = HEIGHT,
    sharex: bool = False,
    sharey: bool = False,
) -> tuple[Figure, np.ndarray]:
    """A figure with an Agg canvas and constrained layout, and its axes as a 2-d array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    for ax in axes.flat:
        ax.tick_params(labelsize=SMALL)
        ax.grid(True, linewidth=0.5, alpha=0.35)
        ax.set_axisbelow(True)
    return fig, axes


def _wrap(text: str, width: int = WRAP) -> str:
    """``text`` on lines of at most ``width`` characters, broken after spaces, underscores, hyphens or
    slashes where possible (method names are often snake_case), else anywhere."""
    lines: list[str] = []
    line = ""
    for piece in re.split(r"(?<=[ _/-])", str(text)):
        while len(piece) > width:  # a piece longer than a line: split it hard
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece.rstrip()) > width and line:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(part.strip() for part in lines if part.strip())


def _legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str], *, title: str | None = None) -> None:
    """A figure legend outside the axes, to the right. The figure grows taller (up to 7 in) when the entries
    need it; beyond that the legend takes more columns."""
    if not handles:
        return
    labels = [_wrap(label) for label in labels]
    lines = sum(label.count("\n") + 1 for label in labels) + (title.count("\n") + 1 if title else 0)
    needed = 0.35 + 0.19 * lines  # in, at 8 pt with the default spacing
    if needed > fig.get_figheight():
        fig.set_figheight(min(LEGEND_MAX_HEIGHT, needed))
    ncols = max(1, math.ceil(needed / fig.get_figheight()))
    fig.legend(
        handles,
        labels,
        loc="outside right upper",
        ncols=ncols,
        fontsize=SMALL,
        title=title,
        title_fontsize=SMALL,
        frameon=False,
        alignment="left",
        handlelength=2.2,
        columnspacing=1.0,
    )


def _title(fig: Figure, title: str | None, *, panels: bool = False) -> None:
    """The title above a single panel, or (``panels``: a figure of titled panels) above the figure,
    left-aligned so that it never runs into the legend at the upper right."""
    if not title:
        return
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    if len(visible) == 1 and not panels:
        visible[0].set_title(title, fontsize=TITLE)
    else:
        fig.suptitle(title, fontsize=TITLE, x=0.02, ha="left")


def _save(fig: Figure, stem: Path | str, *, dpi: int, formats: Sequence[str]) -> list[Path]:
    """Write ``<stem>.<format>`` for each format (tight bounding box) and release the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            metadata = {"Date": None} if fmt in ("svg", "pdf") else None
            fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.05, metadata=metadata)
            paths.append(path)
    finally:
        fig.clear()
    return paths


def _seeds_note(ns: Iterable[Any]) -> str:
    """'mean ± sd over 3 seeds', with the range of seed counts when they differ."""
    counts = sorted({int(n) for n in ns if _finite(n)})
    if not counts:
        return "mean ± sd over seeds"
    if counts == [1]:
        return "1 seed (no error bars)"
    if len(counts) == 1:
        return f"mean ± sd over {counts[0]} seeds"
    return f"mean ± sd over {counts[0]}–{counts[-1]} seeds"


def _direction(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def _hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide the grid cells after the first ``used`` and show x tick labels on the panels above them."""
    nrows, ncols = axes.shape
    for k in range(used, nrows * ncols):
        axes.flat[k].set_visible(False)
        above = k - ncols
        if above >= 0:
            axes.flat[above].tick_params(labelbottom=True)
            axes.flat[above].xaxis.offsetText.set_visible(True)


def _grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


# ------------------------------------------------------------------------------------ quality plots


def _method_points(
    points: Sequence[Mapping[str, Any]], x_key: str, log_x: bool | None
) -> tuple[list[Mapping[str, Any]], bool]:
    """The points with finite x and quality (and x > 0 on a log axis), and whether x is logarithmic:
    ``log_x=None`` chooses log when the positive x values span more than one decade."""
    rows = [p for p in points if _finite(p.get(x_key)) and _finite(p.get("quality"))]
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
        yerr = _errors([_float(p.get("quality_sd")) for p in series])
        xerr = _errors([_float(p.get(x_sd_key)) for p in series]) if x_sd_key else None
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
    styles = _resolve_styles(styles, (str(p["method"]) for p in rows))
    fig, axes = _figure()
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
    note = f"{_seeds_note(p.get('n') for p in rows)}\n{_direction(higher_is_better)}"
    _legend(fig, handles, labels, title=note)
    _title(fig, title)
    return _save(fig, stem, dpi=dpi, formats=formats)


def _token_axis(ax: Axes, values: Sequence[float]) -> None:
    """A logarithmic x axis labelled in readable token counts (1M, 20M); finer ticks for narrow ranges."""
    ax.set_xscale("log")
    lo, hi = min(values), max(values)
    span = math.log10(hi / lo) if lo > 0 else 0.0
    if span < 2.5:  # under 2.5 decades, label 1-2-5 steps (200k, 500k, 1M, 2M), not only decades
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(np.arange(2, 10)), numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
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
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Quality against total compute (training + selection forward tokens), one series per method.

    ``points``: ``{"method", "budget", "compute", "compute_sd", "quality", "quality_sd", "n"}``. The x axis
    is logarithmic with token counts as 1M, 20M, ...; error bars show ±1 sd in both directions. Each point
    is labelled with its budget in small text in its method's colour when there are at most 30 points
    (``annotate`` forces either). Points with a non-positive or non-finite compute, or a non-finite quality,
    are left out; returns ``[]`` when none remain.
    """
    rows, _ = _method_points(points, "compute", log_x=True)
    if not rows:
        return []
    styles = _resolve_styles(styles, (str(p["method"]) for p in rows))
    fig, axes = _figure()
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
    _token_axis(ax, [float(p["compute"]) for p in rows])
    ax.set_xlabel("Total compute (tokens: training + selection forward passes)", fontsize=FONT)
    ax.set_ylabel(metric_label, fontsize=FONT)
    ax.margins(x=0.08, y=0.1)
    note = f"{_seeds_note(p.get('n') for p in rows)}\n{_direction(higher_is_better)}"
    if annotate:
        note += "\npoint labels: data budget"
    _legend(fig, handles, labels, title=note)
    _title(fig, title)
    return _save(fig, stem, dpi=dpi, formats=formats)


# ---------------------------------------------------------------------------------- learning curves


def _split_label(label: str) -> tuple[str, str] | None:
    """``"p3 @ 0.3"`` -> ``("p3", "0.3")``; None without an ``@``."""
    if "@" not in label:
        return None
    method, _, budget = label.rpartition("@")
    method, budget = method.strip(), budget.strip()
    return (method, budget) if method and budget else None


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
            split = _split_label(label)
            method, budget = split if split else (label, None)
            items.append({"label": label, "x": x, "y": y, "sd": sd, "method": method, "budget": budget})
    if not items:
        return []

    styles = _resolve_styles(styles, (item["method"] for item in items))
    budgets = _category_order(item["budget"] for item in items if item["budget"] is not None)
    references = [item for item in items if item["budget"] is None]
    if len(items) <= max_per_panel:
        panels = [("", items)]
    elif len(budgets) > 1:  # one panel per budget, curves without a budget (the whole pool) in each
        panels = [(f"budget {b}", [it for it in items if it["budget"] == b] + references) for b in budgets]
    else:
        panels = [("", items[i : i + max_per_panel]) for i in range(0, len(items), max_per_panel)]

    single = len(panels) == 1
    nrows, ncols = _grid_shape(len(panels), 3)
    if single:
        fig, axes = _figure()
    else:
        fig, axes = _figure(nrows, ncols, width=7.0, height=0.6 + 2.1 * nrows, sharex=True, sharey=True)
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
    _hide_unused(axes, len(panels))
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
    _legend(fig, list(legend.values()), list(legend), title="shaded: ±1 sd over seeds" if bands else None)
    _title(fig, title, panels=not single)
    return _save(fig, stem, dpi=dpi, formats=formats)


# ------------------------------------------------------------------------------------- distributions


def _grouped_bars(
    ax: Axes,
    categories: Sequence[str],
    values: Mapping[str, Sequence[float]],
    styles: Mapping[str, MethodStyle],
    *,
    group: float = 0.82,
    wrap: int = 14,
) -> tuple[list[Any], list[str], list[tuple[float, float]]]:
    """Bars grouped per category, one bar per method in the order of ``values``. A NaN value has no bar and
    no slot: the bars of a category are centred on it. Returns the legend handles and labels (methods with
    at least one bar) and each category's bar span (left, right) in data coordinates."""
    methods = list(values)
    heights = {m: np.asarray(values[m], dtype=float) for m in methods}
    present = [[m for m in methods if np.isfinite(heights[m][i])] for i in range(len(categories))]
    width = min(0.6, group / max(1, max(len(ms) for ms in present)))
    positions: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in methods}
    spans = []
    for i, ms in enumerate(present):
        left = i - width * max(1, len(ms)) / 2
        spans.append((left, left + width * max(1, len(ms))))
        for j, m in enumerate(ms):
            positions[m][0].append(left + width * (j + 0.5))
            positions[m][1].append(float(heights[m][i]))
    handles, labels = [], []
    thin = width < 0.06
    for m in methods:
        x, h = positions[m]
        if not x:
            continue
        style = styles[m]
        edge = to_hex(_darken(style.color)) if style.hatch else "white"
        ax.bar(
            x,
            h,
            width=width,
            color=style.color,
            hatch=style.hatch or None,
            edgecolor=edge,
            linewidth=0.2 if thin else 0.5,
            zorder=3,
        )
        handles.append(Patch(facecolor=style.color, hatch=style.hatch or None, edgecolor=edge, linewidth=0.5))
        labels.append(m)
    ax.set_xticks(np.arange(len(categories)), [_wrap(c, wrap) for c in categories])
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.grid(False, axis="x")
    return handles, labels, spans


def _darken(color: str, factor: float = 0.6) -> tuple[float, float, float]:
    r, g, b = to_rgb(color)
    return (r * factor, g * factor, b * factor)


def plot_level_histograms(
    shares: Mapping[str, Mapping[Any, float]],
    *,
    stem: Path | str,
    category_label: str = "Difficulty level",
    reference: Mapping[Any, float] | None = None,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Share of the selected examples per category (difficulty level, domain), grouped bars per category.

    ``shares``: ``{method: {category: share}}`` with shares as fractions (0..1, shown as percent); a category
    a method lacks counts as 0. ``reference``: the pool's own shares, drawn as a black step outline "pool".
    Categories sort numerically when all are numbers, else in order of first appearance (reference first).
    Returns ``[]`` when there are no methods or no categories.
    """
    shares = {str(m): {str(c): _float(v) for c, v in cats.items()} for m, cats in shares.items()}
    reference = {str(c): _float(v) for c, v in (reference or {}).items()}
    categories = _category_order([*reference, *(c for cats in shares.values() for c in cats)])
    if not shares or not categories:
        return []
    styles = _resolve_styles(styles, shares)
    methods = sorted(shares)
    values = {m: [shares[m].get(c, 0.0) for c in categories] for m in methods}
    fig, axes = _figure(width=max(WIDTH, min(10.0, 3.5 + 0.045 * len(categories) * len(methods))))
    ax = axes[0, 0]
    handles, labels, _ = _grouped_bars(ax, categories, values, styles)
    if reference:
        ref = np.asarray([reference.get(c, 0.0) for c in categories], dtype=float)
        edges = np.arange(len(categories) + 1, dtype=float) - 0.5
        ax.stairs(np.nan_to_num(ref), edges, baseline=None, color="black", linewidth=1.4, zorder=4)
        handles.append(Line2D([], [], color="black", linewidth=1.4))
        labels.append("pool")
    _percent_axis(ax)
    ax.set_xlabel(category_label, fontsize=FONT)
    ax.set_ylabel("Share of selected examples (%)", fontsize=FONT)
    _legend(fig, handles, labels)
    _title(fig, title)
    return _save(fig, stem, dpi=dpi, formats=formats)


def _category_colors(categories: Sequence[str]) -> dict[str, Any]:
    """Ordered numeric categories on a sequential map (light = low), others on a qualitative palette."""
    if categories and all(_finite(c) for c in categories):
        cmap = colormaps["viridis_r"]
        n = len(categories)
        return {c: cmap(0.12 + 0.8 * (i / max(1, n - 1))) for i, c in enumerate(categories)}
    palette = colormaps["tab20"] if len(categories) > 10 else colormaps["tab10"]
    return {c: palette(i % palette.N) for i, c in enumerate(categories)}


def _round_total(record: Mapping[str, Any]) -> float:
    return sum(max(0.0, v) for v in record["counts"].values() if math.isfinite(v))


def plot_round_histograms(
    rounds: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    stem: Path | str,
    category_label: str = "Difficulty level",
    title: str | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """How the category mix of a dynamic method's selection changes over rounds: one panel per method
    (shared axes), stacked bars of each category's share of the round's selection, with the round's total
    count written above its bar (left out when the bars are too narrow for it).

    ``rounds``: ``{method: [{"round": int, "counts": {category: int}}, ...]}``. Rounds with no selected
    examples are empty bars. Categories sort as in :func:`plot_level_histograms`; numeric levels go from
    light (low) to dark (high). Returns ``[]`` when no method has rounds.
    """
    data = {
        str(m): sorted(
            (
                {"round": int(r["round"]), "counts": {str(c): _float(v, 0.0) for c, v in r["counts"].items()}}
                for r in rs
            ),
            key=lambda r: r["round"],
        )
        for m, rs in rounds.items()
        if rs
    }
    if not data:
        return []
    categories = _category_order(c for rs in data.values() for r in rs for c in r["counts"])
    colors = _category_colors(categories)
    methods = sorted(data)
    nrows, ncols = _grid_shape(len(methods), 3)
    width = WIDTH if ncols > 1 else 5.0
    panel_height = 2.3
    fig, axes = _figure(
        nrows, ncols, width=width, height=0.7 + panel_height * nrows, sharex=True, sharey=True
    )
    all_rounds = sorted({r["round"] for rs in data.values() for r in rs})
    step = min((b - a for a, b in itertools.pairwise(all_rounds)), default=1)
    # the counts above the bars: horizontal when they fit the bar spacing, else vertical, else left out
    spacing = (width - 2.2) / ncols / max(1, (all_rounds[-1] - all_rounds[0]) / step + 1)  # in per bar
    longest = max(len(f"{_round_total(r):,.0f}") for rs in data.values() for r in rs)
    text_width = 0.075 * longest  # in, at 8 pt
    rotate = text_width > 0.9 * spacing
    # every round of every method the same size (a fixed per-round budget): said once in the legend instead
    distinct_totals = {round(_round_total(r), 6) for rs in data.values() for r in rs}
    same_size = len(distinct_totals) == 1
    annotate = spacing >= 0.13 and not same_size
    headroom = 0.16 if not rotate else 0.06 + text_width / (panel_height - 0.5)
    title_chars = max(12, int((width - 2.4) / ncols / 0.085))  # panel titles wrap within the panel, at 9 pt
    for k, method in enumerate(methods):
        ax = axes.flat[k]
        ax.grid(False, axis="x")
        rs = data[method]
        x = np.asarray([r["round"] for r in rs], dtype=float)
        totals = np.asarray([_round_total(r) for r in rs], dtype=float)
        bottom = np.zeros(len(rs))
        for c in categories:
            counts = np.asarray([max(0.0, r["counts"].get(c, 0.0)) for r in rs], dtype=float)
            share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
            ax.bar(
                x,
                share,
                bottom=bottom,
                width=0.8 * step,
                color=colors[c],
                edgecolor="white",
                linewidth=0.3,
                zorder=3,
            )
            bottom += share
        if annotate:
            for xi, total in zip(x, totals, strict=True):
                ax.text(
                    xi,
                    1.015,
                    f"{total:,.0f}",
                    ha="center",
                    va="bottom",
                    fontsize=SMALL,
                    rotation=90 if rotate else 0,
                    color="0.25",
                )
        ax.set_title(_wrap(method, title_chars), fontsize=FONT)
        ax.set_ylim(0, 1.0 + (headroom if annotate else 0.02))
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        if len(all_rounds) <= 12:
            ax.set_xticks(all_rounds)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    _hide_unused(axes, len(methods))
    fig.supxlabel("Selection round", fontsize=FONT)
    fig.supylabel("Share of round's selection (%)", fontsize=FONT)
    handles = [Patch(facecolor=colors[c]) for c in reversed(categories)]
    note = "above bars: examples selected" if annotate else None
    if same_size:
        note = f"{next(iter(distinct_totals)):,.0f} examples every round"
    _legend(
        fig, handles, list(reversed(categories)), title=f"{category_label}" + (f"\n({note})" if note else "")
    )
    _title(fig, title, panels=True)
    return _save(fig, stem, dpi=dpi, formats=formats)


# ------------------------------------------------------------------------------------------ overlap


def plot_overlap(
    matrix: Sequence[Sequence[float]],
    labels: Sequence[str],
    *,
    stem: Path | str,
    title: str | None = None,
    annotate: bool | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """A heatmap of pairwise Jaccard overlaps of the methods' selections (values in [0, 1]).

    ``matrix``: square, one row per label; NaN (missing pairs) is drawn grey with a dash. Values are written
    in the cells with 2 decimals for up to 25 labels (``annotate`` forces either), without the leading zero
    (".42", and "1" for 1.00) from 11 labels on so that they fit the cells at 8 pt; the figure grows with
    the number of labels. Raises ValueError when the shapes disagree; returns ``[]`` for no labels.
    """
    labels = [str(label) for label in labels]
    n = len(labels)
    if n == 0:
        return []
    values = np.asarray(matrix, dtype=float).reshape(-1, n) if len(matrix) else np.empty((0, n))
    if values.shape != (n, n):
        raise ValueError(f"overlap matrix has shape {values.shape}, expected ({n}, {n}) for {n} labels")
    if annotate is None:
        annotate = n <= 25
    # cells wide enough for the values at 8 pt; from 11 labels on, values drop the leading zero (".42")
    compact = n > 10
    cell = 0.28 if compact else 0.45
    longest = max(len(line) for label in labels for line in _wrap(label, 22).splitlines())
    label_room = 0.3 + 0.065 * longest  # in, at 8 pt
    fig, axes = _figure(
        width=max(3.0, label_room + n * cell + 1.0), height=max(2.5, label_room * 0.75 + n * cell + 0.3)
    )
    ax = axes[0, 0]
    ax.grid(False)
    cmap = colormaps["viridis"].with_extremes(bad="0.88")
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    if annotate:
        for i in range(n):
            for j in range(n):
                value = values[i, j]
                if math.isfinite(value):
                    r, g, b, _ = cmap(min(1.0, max(0.0, value)))
                    text_color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    text = f"{value:.2f}"
                    if compact:
                        text = "1" if text == "1.00" else text.replace("0.", ".", 1)
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=SMALL,
                        color=text_color,
                        in_layout=False,
                    )
                else:
                    missing = {"ha": "center", "va": "center", "color": "0.4", "in_layout": False}
                    ax.text(j, i, "–", fontsize=SMALL, **missing)
    wrapped = [_wrap(label, 22) for label in labels]
    ax.set_xticks(np.arange(n), wrapped, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(n), wrapped)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.tick_params(which="minor", length=0)
    ax.grid(True, which="minor", color="white", linewidth=0.8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8 if n >= 6 else 1.0, pad=0.02)
    colorbar.set_label("Jaccard overlap of selections", fontsize=FONT)
    colorbar.ax.tick_params(labelsize=SMALL)
    _title(fig, title)
    return _save(fig, stem, dpi=dpi, formats=formats)


# ------------------------------------------------------------------------------------------ defects

#: The planted defect kinds, in the order they are shown; other keys follow in order of appearance.
DEFECTS: tuple[str, ...] = ("noisy", "junk", "duplicate")
#: Where runs without a budget in their label (``"full"`` rather than ``"p3 @ 0.3"``) go on a budget axis.
WHOLE_POOL_LABEL = "whole pool"
_REFERENCE_STYLES: tuple[str, ...] = ("--", ":", "-.")


def _pool_references(pool: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{kind: share}`` as ``{"pool": {kind: share}}``; ``{label: {kind: share}}`` as it is."""
    if not pool:
        return {}
    if all(isinstance(v, Mapping) for v in pool.values()):
        return {str(label): {str(k): _float(v) for k, v in kinds.items()} for label, kinds in pool.items()}
    return {"pool": {str(k): _float(v) for k, v in pool.items()}}


def plot_defect_shares(
    shares: Mapping[str, Mapping[str, float]],
    *,
    stem: Path | str,
    pool: Mapping[str, Any] | None = None,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Share of the training exposures that fall on planted defective examples, per defect kind and method.

    ``shares``: ``{method: {"noisy": share, "junk": share, "duplicate": share}}`` (fractions 0..1, shown as
    percent; any subset of kinds); a kind a method lacks (or NaN) has no bar. When the keys are run labels
    ``"method @ budget"`` there is one panel per defect kind with the budgets on the x axis and one colour
    per method (keys without a budget, such as ``"full"``, form a "whole pool" group at the right); otherwise
    one panel groups the bars by defect kind. ``pool``: the pool's own shares, as ``{kind: share}`` or
    ``{label: {kind: share}}``, drawn as black dashed lines (what uniform training over the pool sees).
    Returns ``[]`` when there are no methods or no kinds.
    """
    shares = {str(m): {str(k): _float(v) for k, v in kinds.items()} for m, kinds in shares.items()}
    references = _pool_references(pool)
    seen = list(
        dict.fromkeys(
            [*(k for kinds in shares.values() for k in kinds), *(k for r in references.values() for k in r)]
        )
    )
    kinds = [k for k in DEFECTS if k in seen] + [k for k in seen if k not in DEFECTS]
    if not shares or not kinds:
        return []
    split = {label: _split_label(label) for label in shares}
    if any(split.values()):
        return _defects_by_budget(shares, split, kinds, references, stem, title, styles, dpi, formats)

    styles = _resolve_styles(styles, shares)
    methods = sorted(shares)
    values = {m: [shares[m].get(k, math.nan) for k in kinds] for m in methods}
    fig, axes = _figure(width=max(WIDTH, min(10.0, 3.5 + 0.06 * len(kinds) * len(methods))))
    ax = axes[0, 0]
    handles, labels, spans = _grouped_bars(ax, kinds, values, styles)
    for r, (label, reference) in enumerate(references.items()):
        linestyle = _REFERENCE_STYLES[r % len(_REFERENCE_STYLES)]
        drawn = False
        for (left, right), kind in zip(spans, kinds, strict=True):
            value = reference.get(kind, math.nan)
            if math.isfinite(value):
                ax.hlines(
                    value, left - 0.03, right + 0.03, colors="black", linestyles=linestyle, lw=1.3, zorder=4
                )
                drawn = True
        if drawn:
            handles.append(Line2D([], [], color="black", linestyle=linestyle, linewidth=1.3))
            labels.append(label)
    _percent_axis(ax)
    ax.set_xlabel("Planted defect", fontsize=FONT)
    ax.set_ylabel("Share of training exposures (%)", fontsize=FONT)
    _legend(fig, handles, labels)
    _title(fig, title)
    return _save(fig, stem, dpi=dpi, formats=formats)


def _percent(value: float, _pos: Any = None) -> str:
    """A share (0..1) as a percent tick label: 5%, 12.5%."""
    return f"{round(value * 100, 6):g}%"


def _percent_axis(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(_percent))
    ax.set_ylim(bottom=0)
    ax.margins(y=0.08)


def _defects_by_budget(
    shares: dict[str, dict[str, float]],
    split: Mapping[str, tuple[str, str] | None],
    kinds: list[str],
    references: dict[str, dict[str, float]],
    stem: Path | str,
    title: str | None,
    styles: Mapping[str, MethodStyle] | None,
    dpi: int,
    formats: Sequence[str],
) -> list[Path]:
    """:func:`plot_defect_shares` for run labels: a panel per kind, budgets on x, a colour per method."""
    cell = {}  # (method, budget) -> label
    for label, parts in split.items():
        method, budget = parts if parts else (label, WHOLE_POOL_LABEL)
        cell[method, budget] = label
    budgets = _category_order(b for _, b in cell if b != WHOLE_POOL_LABEL)
    if any(b == WHOLE_POOL_LABEL for _, b in cell):
        budgets.append(WHOLE_POOL_LABEL)
    methods = sorted({m for m, _ in cell})
    styles = _resolve_styles(styles, methods)
    nrows, ncols = _grid_shape(len(kinds), 3)
    slots = max(sum(1 for m in methods if (m, b) in cell) for b in budgets)
    width = max(WIDTH, min(10.0, 2.5 + 0.05 * ncols * len(budgets) * slots))
    fig, axes = _figure(nrows, ncols, width=width, height=0.9 + 2.6 * nrows, sharex=True)
    legend: dict[str, Any] = {}
    for k, kind in enumerate(kinds):
        ax = axes.flat[k]
        values = {
            m: [shares[cell[m, b]].get(kind, math.nan) if (m, b) in cell else math.nan for b in budgets]
            for m in methods
        }
        handles, labels, _ = _grouped_bars(ax, budgets, values, styles, wrap=6)
        legend.update({label: handle for handle, label in zip(handles, labels, strict=True)})
        for r, (label, reference) in enumerate(references.items()):
            value = reference.get(kind, math.nan)
            if math.isfinite(value):
                linestyle = _REFERENCE_STYLES[r % len(_REFERENCE_STYLES)]
                ax.axhline(value, color="black", linestyle=linestyle, linewidth=1.2, zorder=4)
                legend.setdefault(label, Line2D([], [], color="black", linestyle=linestyle, linewidth=1.2))
        ax.set_title(kind, fontsize=FONT)
        _percent_axis(ax)
    _hide_unused(axes, len(kinds))
    fig.supxlabel("Data budget (fraction of pool)", fontsize=FONT)
    fig.supylabel("Share of training exposures (%)", fontsize=FONT)
    ordered = [m for m in methods if m in legend] + [r for r in references if r in legend]
    _legend(fig, [legend[name] for name in ordered], ordered)
    _title(fig, title, panels=True)
    return _save(fig, stem, dpi=dpi, formats=formats)
