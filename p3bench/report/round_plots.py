"""Figures of the rounds of dynamic methods (``p3bench report``): how the mix of each round's selection
moves, how much of the pool the pace admits each round, and how diverse the DPP's pick is against a top-k
and a random pick of the same size. Conventions (plain data in, ``<stem>.png`` and ``<stem>.svg`` out, ``[]``
when there is nothing to draw) as in :mod:`p3bench.report.plots`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

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
    is_finite,
    new_figure,
    percent_label,
    resolve_styles,
    save_figure,
    to_float,
    wrap_text,
)

__all__ = ["plot_admitted_share", "plot_diversity", "plot_round_histograms"]


def _category_colors(categories: Sequence[str]) -> dict[str, Any]:
    """Ordered numeric categories on a sequential map (light = low), others on a qualitative palette."""
    if categories and all(is_finite(c) for c in categories):
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
                {
                    "round": int(r["round"]),
                    "counts": {str(c): to_float(v, 0.0) for c, v in r["counts"].items()},
                }
                for r in rs
            ),
            key=lambda r: r["round"],
        )
        for m, rs in rounds.items()
        if rs
    }
    if not data:
        return []
    categories = category_order(c for rs in data.values() for r in rs for c in r["counts"])
    colors = _category_colors(categories)
    methods = sorted(data)
    nrows, ncols = grid_shape(len(methods), 3)
    width = WIDTH if ncols > 1 else 5.0
    panel_height = 2.3
    fig, axes = new_figure(
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
        ax.set_title(wrap_text(method, title_chars), fontsize=FONT)
        ax.set_ylim(0, 1.0 + (headroom if annotate else 0.02))
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.yaxis.set_major_formatter(FuncFormatter(percent_label))
        if len(all_rounds) <= 12:
            ax.set_xticks(all_rounds)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    hide_unused(axes, len(methods))
    fig.supxlabel("Selection round", fontsize=FONT)
    fig.supylabel("Share of round's selection (%)", fontsize=FONT)
    handles = [Patch(facecolor=colors[c]) for c in reversed(categories)]
    note = "above bars: examples selected" if annotate else None
    if same_size:
        note = f"{next(iter(distinct_totals)):,.0f} examples every round"
    add_legend(
        fig, handles, list(reversed(categories)), title=f"{category_label}" + (f"\n({note})" if note else "")
    )
    add_title(fig, title, panels=True)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


# ---------------------------------------------------------------------------------------------- pace


def _round_axis(ax: Axes, rounds: Sequence[int]) -> None:
    """Integer round ticks: every round up to 12 rounds, else about 8 ticks."""
    if len(rounds) <= 12:
        ax.set_xticks(sorted(rounds))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.margins(x=0.04)


def _mean_note(ns: Iterable[Any], bands: bool) -> str:
    """'mean over 3 seeds', with the range of seed counts when they differ, and the bands' meaning."""
    counts = sorted({int(n) for n in ns if is_finite(n)})
    if not counts:
        note = "mean over seeds"
    elif counts == [1]:
        note = "1 seed"
    else:
        note = f"mean over {counts[0]}{'' if len(counts) == 1 else '–' + str(counts[-1])} seeds"
    return note + ("\nshaded: ±1 sd over seeds" if bands else "")


def plot_admitted_share(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    stem: Path | str,
    budget_fraction: float | None = None,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """The share of the pool a self-paced schedule admits in each round, one line per method.

    ``series``: ``{method: [{"round", "admitted", "admitted_sd", "scheduled", "floor_seeds", "n"}, ...]}``
    with shares as fractions (0..1, shown as percent): ``admitted`` the mean over ``n`` seeds of the share
    admitted (a solid line with the method's marker, shaded ±1 sd where ``admitted_sd`` is finite);
    ``scheduled`` (optional) the share the schedule alone would admit, before the floor that keeps enough
    candidates for the budget (a dashed line in the method's colour); ``floor_seeds`` (optional) how many
    seeds had that floor raise the admitted count in the round (a ring around the point when any did).
    ``budget_fraction``: the round's budget as a share of the pool (a dotted black line: the least a round
    can admit). Rounds without a finite ``admitted`` are left out; returns ``[]`` when no method has one.
    """
    data = {
        str(m): sorted((r for r in rows if is_finite(r.get("admitted"))), key=lambda r: int(r["round"]))
        for m, rows in series.items()
    }
    data = {m: rows for m, rows in data.items() if rows}
    if not data:
        return []
    styles = resolve_styles(styles, data)
    fig, axes = new_figure()
    ax = axes[0, 0]
    handles: list[Any] = []
    labels: list[str] = []
    scheduled_drawn = floor_drawn = bands = False
    for method in sorted(data):
        rows, style = data[method], styles[method]
        x = np.asarray([int(r["round"]) for r in rows], dtype=float)
        y = np.asarray([float(r["admitted"]) for r in rows])
        (line,) = ax.plot(x, y, color=style.color, marker=style.marker, markersize=4, linewidth=1.4, zorder=3)
        sd = np.asarray([to_float(r.get("admitted_sd")) for r in rows])
        if np.any(np.isfinite(sd) & (sd > 0)):
            sd = np.nan_to_num(sd, nan=0.0)
            ax.fill_between(x, y - sd, y + sd, color=style.color, alpha=0.15, linewidth=0, zorder=2)
            bands = True
        scheduled = [
            (xi, float(r["scheduled"]))
            for xi, r in zip(x, rows, strict=True)
            if is_finite(r.get("scheduled"))
        ]
        if scheduled:
            sx, sy = zip(*scheduled, strict=True)
            ax.plot(sx, sy, color=style.color, linestyle="--", linewidth=1.0, zorder=3)
            scheduled_drawn = True
        floor = [
            (xi, yi) for xi, yi, r in zip(x, y, rows, strict=True) if to_float(r.get("floor_seeds"), 0.0) > 0
        ]
        if floor:
            fx, fy = zip(*floor, strict=True)
            ax.scatter(fx, fy, s=70, facecolors="none", edgecolors=style.color, linewidths=1.0, zorder=4)
            floor_drawn = True
        handles.append(line)
        labels.append(method)
    if budget_fraction is not None and is_finite(budget_fraction):
        ax.axhline(float(budget_fraction), color="black", linestyle=":", linewidth=1.1, zorder=2)
        handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.1))
        labels.append("budget (share of the pool per round)")
    if scheduled_drawn:
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.0))
        labels.append("scheduled share (before the floor)")
    if floor_drawn:
        handles.append(
            Line2D([], [], color="0.3", marker="o", markersize=8, markerfacecolor="none", linestyle="none")
        )
        labels.append("floor raised the admitted count (some seed)")
    _round_axis(ax, sorted({int(r["round"]) for rows in data.values() for r in rows}))
    ax.set_ylim(0, 1.04)
    ax.yaxis.set_major_formatter(FuncFormatter(percent_label))
    ax.set_xlabel("Selection round", fontsize=FONT)
    ax.set_ylabel("Pool admitted by the pace (%)", fontsize=FONT)
    add_legend(
        fig, handles, labels, title=_mean_note([r.get("n") for rows in data.values() for r in rows], bands)
    )
    add_title(fig, title, panels=True)
    return save_figure(fig, stem, dpi=dpi, formats=formats)


# ----------------------------------------------------------------------------------------- diversity

#: Line styles of the variants of a diversity panel, in the order they are first named.
VARIANT_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.")


def plot_diversity(
    panels: Sequence[Mapping[str, Any]],
    *,
    stem: Path | str,
    title: str | None = None,
    styles: Mapping[str, MethodStyle] | None = None,
    variants: Sequence[str] = (),
    seeds: str | None = None,
    dpi: int = DPI,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Per-round diversity statistics of a DPP's pick next to reference picks of the same size: a panel
    per statistic (shared round axis), a colour per method, a line style per variant.

    ``panels``: ``[{"title": str, "series": {method: {variant: {round: value}}}}, ...]``, e.g. the mean
    pairwise cosine with variants ``"DPP pick"``, ``"top-k by quality"``, ``"uniform random"``. A variant
    keeps its line style in every panel: solid, dashed, dotted, dash-dot in the order of ``variants``, then
    of first appearance. ``seeds``: a note for the legend (e.g. "mean over 3 seeds"). Non-finite values
    are left out; panels without values are dropped; returns ``[]`` when none remains.
    """
    kept = []
    for panel in panels:
        series = {
            str(m): {
                str(v): sorted((int(r), float(y)) for r, y in points.items() if is_finite(y))
                for v, points in variants.items()
            }
            for m, variants in (panel.get("series") or {}).items()
        }
        series = {m: {v: p for v, p in vs.items() if p} for m, vs in series.items()}
        series = {m: vs for m, vs in series.items() if vs}
        if series:
            kept.append((str(panel.get("title", "")), series))
    if not kept:
        return []
    methods = sorted({m for _, series in kept for m in series})
    styles = resolve_styles(styles, methods)
    present = {v for _, series in kept for vs in series.values() for v in vs}
    named = [v for v in variants if v in present]
    named += list(
        dict.fromkeys(v for _, series in kept for vs in series.values() for v in vs if v not in named)
    )
    linestyle = {v: VARIANT_LINESTYLES[i % len(VARIANT_LINESTYLES)] for i, v in enumerate(named)}
    nrows, ncols = grid_shape(len(kept), 3)
    width = 7.5 if ncols > 2 else WIDTH if ncols > 1 else 5.0
    fig, axes = new_figure(nrows, ncols, width=width, height=0.7 + 2.2 * nrows, sharex=True)
    rounds = sorted({r for _, series in kept for vs in series.values() for p in vs.values() for r, _ in p})
    title_chars = max(12, int((width - 2.4) / ncols / 0.085))
    for k, (panel_title, series) in enumerate(kept):
        ax = axes.flat[k]
        for method in sorted(series):
            style = styles[method]
            for variant, points in series[method].items():
                x, y = zip(*points, strict=True)
                ax.plot(
                    x,
                    y,
                    color=style.color,
                    linestyle=linestyle[variant],
                    marker=style.marker,
                    markersize=3.5 if len(points) > 1 else 5,
                    linewidth=1.2,
                    zorder=3,
                )
        ax.set_title(wrap_text(panel_title, title_chars), fontsize=FONT)
        ax.margins(y=0.1)
        _round_axis(ax, rounds)
    hide_unused(axes, len(kept))
    fig.supxlabel("Selection round", fontsize=FONT)
    handles: list[Any] = [
        Line2D([], [], color=styles[m].color, marker=styles[m].marker, markersize=4, linewidth=1.2)
        for m in methods
    ]
    handles += [Line2D([], [], color="0.3", linestyle=linestyle[v], linewidth=1.2) for v in named]
    add_legend(fig, handles, [*methods, *named], title=seeds)
    add_title(fig, title, panels=True)
    return save_figure(fig, stem, dpi=dpi, formats=formats)
