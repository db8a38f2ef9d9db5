"""Figures of what methods selected (``p3bench report``): the share of each difficulty level or domain
against the pool, the Jaccard overlap of methods' selections, and the share of training on planted defects.
Conventions (plain data in, ``<stem>.png`` and ``<stem>.svg`` out, ``[]`` when there is nothing to draw) as
in :mod:`p3bench.report.plots`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from p3bench.report.plot_style import (
    DPI,
    FONT,
    FORMATS,
    SMALL,
    WIDTH,
    MethodStyle,
    add_legend,
    add_title,
    category_order,
    grid_shape,
    hide_unused,
    new_figure,
    percent_axis,
    resolve_styles,
    save_figure,
    split_run_label,
    to_float,
    wrap_text,
)

__all__ = ["plot_defect_shares", "plot_level_histograms", "plot_overlap"]


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
    ax.set_xticks(np.arange(len(categories)), [wrap_text(c, wrap) for c in categories])
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
    shares = {str(m): {str(c): to_float(v) for c, v in cats.items()} for m, cats in shares.items()}
    reference = {str(c): to_float(v) for c, v in (reference or {}).items()}
    categories = category_order([*reference, *(c for cats in shares.values() for c in cats)])
    if not shares or not categories:
        return []
    styles = resolve_styles(styles, shares)
    methods = sorted(shares)
    values = {m: [shares[m].get(c, 0.0) for c in categories] for m in methods}
    fig, axes = new_figure(width=max(WIDTH, min(10.0, 3.5 + 0.045 * len(categories) * len(methods))))
    ax = axes[0, 0]
    handles, labels, _ = _grouped_bars(ax, categories, values, styles)
    if reference:
        ref = np.asarray([reference.get(c, 0.0) for c in categories], dtype=float)
        edges = np.arange(len(categories) + 1, dtype=float) - 0.5
        ax.stairs(np.nan_to_num(ref), edges, baseline=None, color="black", linewidth=1.4, zorder=4)
        handles.append(Line2D([], [], color="black", linewidth=1.4))
        labels.append("pool")
    percent_axis(ax)
    ax.set_xlabel(category_label, fontsize=FONT)
    ax.set_ylabel("Share of selected examples (%)", fontsize=FONT)
    add_legend(fig, handles, labels)
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


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
    longest = max(len(line) for label in labels for line in wrap_text(label, 22).splitlines())
    label_room = 0.3 + 0.065 * longest  # in, at 8 pt
    fig, axes = new_figure(
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
    wrapped = [wrap_text(label, 22) for label in labels]
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
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


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
        return {str(label): {str(k): to_float(v) for k, v in kinds.items()} for label, kinds in pool.items()}
    return {"pool": {str(k): to_float(v) for k, v in pool.items()}}


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
    shares = {str(m): {str(k): to_float(v) for k, v in kinds.items()} for m, kinds in shares.items()}
    references = _pool_references(pool)
    seen = list(
        dict.fromkeys(
            [*(k for kinds in shares.values() for k in kinds), *(k for r in references.values() for k in r)]
        )
    )
    kinds = [k for k in DEFECTS if k in seen] + [k for k in seen if k not in DEFECTS]
    if not shares or not kinds:
        return []
    split = {label: split_run_label(label) for label in shares}
    if any(split.values()):
        return _defects_by_budget(shares, split, kinds, references, stem, title, styles, dpi, formats)

    styles = resolve_styles(styles, shares)
    methods = sorted(shares)
    values = {m: [shares[m].get(k, math.nan) for k in kinds] for m in methods}
    fig, axes = new_figure(width=max(WIDTH, min(10.0, 3.5 + 0.06 * len(kinds) * len(methods))))
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
    percent_axis(ax)
    ax.set_xlabel("Planted defect", fontsize=FONT)
    ax.set_ylabel("Share of training exposures (%)", fontsize=FONT)
    add_legend(fig, handles, labels)
    add_title(fig, title)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


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
    budgets = category_order(b for _, b in cell if b != WHOLE_POOL_LABEL)
    if any(b == WHOLE_POOL_LABEL for _, b in cell):
        budgets.append(WHOLE_POOL_LABEL)
    methods = sorted({m for m, _ in cell})
    styles = resolve_styles(styles, methods)
    nrows, ncols = grid_shape(len(kinds), 3)
    slots = max(sum(1 for m in methods if (m, b) in cell) for b in budgets)
    width = max(WIDTH, min(10.0, 2.5 + 0.05 * ncols * len(budgets) * slots))
    fig, axes = new_figure(nrows, ncols, width=width, height=0.9 + 2.6 * nrows, sharex=True)
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
        percent_axis(ax)
    hide_unused(axes, len(kinds))
    fig.supxlabel("Data budget (fraction of pool)", fontsize=FONT)
    fig.supylabel("Share of training exposures (%)", fontsize=FONT)
    ordered = [m for m in methods if m in legend] + [r for r in references if r in legend]
    add_legend(fig, [legend[name] for name in ordered], ordered)
    add_title(fig, title, panels=True)
    return save_figure(fig, stem, dpi=dpi, formats=formats)
