"""What every figure of ``p3bench report`` shares: one style per method (colour, marker, line style, hatch)
that stays the same across figures, sizes and fonts for double-column paper width, and the scaffolding of a
figure (an Agg canvas without ``pyplot``, a legend outside the axes, titles, saving PNG and SVG).

The plotting modules (:mod:`p3bench.report.plots` for quality and learning curves,
:mod:`p3bench.report.selection_plots` for what was selected, :mod:`p3bench.report.round_plots` for the
rounds of dynamic methods) build on these helpers; :mod:`p3bench.report.plots` re-exports every figure
function, so ``plots.plot_<name>`` reaches them all.
"""

from __future__ import annotations

import math
import re
import textwrap
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter

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


def resolve_styles(
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


def is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def to_float(value: Any, default: float = math.nan) -> float:
    """``value`` as a float; ``default`` for None or what does not convert."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def category_order(categories: Iterable[str]) -> list[str]:
    """Categories sorted numerically when all are numbers, else in order of first appearance."""
    seen = list(dict.fromkeys(str(c) for c in categories))
    if seen and all(is_finite(c) for c in seen):
        return sorted(seen, key=float)
    return seen


def split_run_label(label: str) -> tuple[str, str] | None:
    """``"p3 @ 0.3"`` -> ``("p3", "0.3")``; None without an ``@``."""
    if "@" not in label:
        return None
    method, _, budget = label.rpartition("@")
    method, budget = method.strip(), budget.strip()
    return (method, budget) if method and budget else None


# ------------------------------------------------------------------------------------------- figures


def new_figure(
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


def wrap_text(text: str, width: int = WRAP) -> str:
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


def add_legend(
    fig: Figure, handles: Sequence[Any], labels: Sequence[str], *, title: str | None = None
) -> None:
    """A figure legend outside the axes, to the right. The figure grows taller (up to 7 in) when the entries
    need it; beyond that the legend takes more columns."""
    if not handles:
        return
    labels = [wrap_text(label) for label in labels]
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


def add_title(fig: Figure, title: str | None, *, panels: bool = False) -> None:
    """The title above a single panel, or (``panels``: a figure of titled panels) above the figure,
    left-aligned; wrapped to the width the legend at the upper right leaves, so that it never runs into it.
    Call it after :func:`add_legend`."""
    if not title:
        return
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    over_axes = len(visible) == 1 and not panels
    # centred over the axes: their labels and ticks on the left take about 0.8 in; from the figure's edge
    title = fit_title(fig, title, margin=0.8 if over_axes else 0.3)
    if over_axes:
        visible[0].set_title(title, fontsize=TITLE)
    else:
        fig.suptitle(title, fontsize=TITLE, x=0.02, ha="left")


def fit_title(fig: Figure, title: str, margin: float = 0.8) -> str:
    """``title`` wrapped at spaces to fit beside the figure's legends at the title's size, leaving ``margin``
    inches of the width to what stands left of the title and the gap to the legend."""
    renderer = fig.canvas.get_renderer()
    legends = sum(legend.get_window_extent(renderer).width for legend in fig.legends) / fig.dpi
    available = fig.get_figwidth() - legends - margin
    width = renderer.get_text_width_height_descent(title, FontProperties(size=TITLE), ismath=False)[0]
    width /= renderer.points_to_pixels(72)  # pixels to inches
    if width <= available:
        return title
    return "\n".join(
        textwrap.wrap(title, max(20, int(len(title) * available / width)), break_on_hyphens=False)
    )


def save_figure(fig: Figure, stem: Path | str, *, dpi: int, formats: Sequence[str]) -> list[Path]:
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


def seeds_note(ns: Iterable[Any]) -> str:
    """'mean ± sd over 3 seeds', with the range of seed counts when they differ."""
    counts = sorted({int(n) for n in ns if is_finite(n)})
    if not counts:
        return "mean ± sd over seeds"
    if counts == [1]:
        return "1 seed (no error bars)"
    if len(counts) == 1:
        return f"mean ± sd over {counts[0]} seeds"
    return f"mean ± sd over {counts[0]}–{counts[-1]} seeds"


def hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide the grid cells after the first ``used`` and show x tick labels on the panels above them."""
    nrows, ncols = axes.shape
    for k in range(used, nrows * ncols):
        axes.flat[k].set_visible(False)
        above = k - ncols
        if above >= 0:
            axes.flat[above].tick_params(labelbottom=True)
            axes.flat[above].xaxis.offsetText.set_visible(True)


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


def percent_label(value: float, _pos: Any = None) -> str:
    """A share (0..1) as a percent tick label: 5%, 12.5%."""
    return f"{round(value * 100, 6):g}%"


def percent_axis(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(percent_label))
    ax.set_ylim(bottom=0)
    ax.margins(y=0.08)
