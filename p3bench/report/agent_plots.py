"""Figures of multi-agent collaborative selection (Bai et al., arXiv 2410.08102) in ``p3bench report``: how
each agent's category weights, the console's agent weights and the agents' rewards move over training, and
the category share of each round's selection.

The method records, per selection round in ``selection.rounds[r].diagnostics`` of results.json (flat keys
with dots, or the same as nested dicts):

- ``agents.<agent>.weight.<category>``: the agent's weight of the category after the round's update (Eq. 5);
- ``agents.<agent>.selected_share.<category>``: the category's share of the round's selection
  (and ``pool_share``: its share of the pool);
- ``console.theta.<agent>``: the console's weight of the agent (Eq. 8);
- ``console.agent_reward.<agent>``: the agent's reward (Eq. 7).

x axis: the round's ``global_step`` (the optimiser step it starts training at; the round index when a run
does not record it). At each step: the mean over seeds (repeats of a seed averaged first, as everywhere in a
report) and a band of ± one standard deviation where two or more seeds recorded it.

Figures, one pair per (method, budget) group that records agent weights, in the section's folder:

- ``agents_<method>_b<budget>``: one panel per agent (a line per category), then the console's ``theta``
  (a line per agent) and the agents' rewards;
- ``agent_shares_<method>_b<budget>``: one panel per agent, stacked bars of each category's share of the
  round's selection.

Conventions (plain data in, ``<stem>.png`` and ``<stem>.svg`` out, nothing when there is nothing to draw)
as in :mod:`p3bench.report.plots`; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p3bench.report.aggregate import Group, Section, Stat, as_number
from p3bench.report.runs import RunRecord

__all__ = [
    "agent_figures",
    "agent_panels",
    "flat_diagnostics",
    "has_agents",
    "plot_agent_shares",
    "plot_agent_weights",
    "round_steps",
    "share_panels",
]

AGENTS = "agents"
CONSOLE = "console"
WEIGHT, SELECTED = "weight", "selected_share"
THETA, REWARD = "theta", "agent_reward"


# --- reading ---------------------------------------------------------------------------------------------
def flat_diagnostics(diagnostics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a round's diagnostics with nested dicts flattened with ``.``."""
    flat: dict[str, float] = {}
    for key, value in diagnostics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flat_diagnostics(value, name))
        else:
            number = as_number(value)
            if number is not None:
                flat[name] = number
    return flat


def round_steps(run: RunRecord) -> dict[int, dict[str, float]]:
    """``{global_step: flat numeric diagnostics}`` of a run's rounds (the round index stands in for a
    missing step)."""
    found: dict[int, dict[str, float]] = {}
    for record in ((run.results or {}).get("selection") or {}).get("rounds") or []:
        if not isinstance(record, dict) or not isinstance(record.get("diagnostics"), dict):
            continue
        step = as_number(record.get("global_step"))
        if step is None:
            step = as_number(record.get("round"))
        if step is not None and step == int(step):
            found[int(step)] = flat_diagnostics(record["diagnostics"])
    return found


def _names(runs: Sequence[RunRecord], head: str, kind: str) -> dict[str, list[str]]:
    """``{first part: [second parts]}`` of the keys ``<head>.<first>.<kind>.<rest>`` (agents) or, for
    ``head=console``, ``{kind: [agents]}`` of ``console.<kind>.<agent>``."""
    found: dict[str, set[str]] = {}
    for run in runs:
        for flat in round_steps(run).values():
            for key in flat:
                parts = key.split(".", 3)
                if head == AGENTS and len(parts) == 4 and parts[0] == AGENTS and parts[2] == kind:
                    found.setdefault(parts[1], set()).add(parts[3])
                elif head == CONSOLE and len(parts) >= 3 and parts[0] == CONSOLE and parts[1] == kind:
                    found.setdefault(kind, set()).add(".".join(parts[2:]))
    return {k: sorted(v, key=_natural) for k, v in sorted(found.items())}


def _natural(name: str) -> list[Any]:
    """Sort key that puts ``q2`` before ``q10`` and ``cluster_2`` before ``cluster_10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def has_agents(group: Group) -> bool:
    """Some run of the group recorded an agent's category weight in some round."""
    return bool(_names(group.runs, AGENTS, WEIGHT))


def series(group: Group, key: str) -> dict[int, Stat]:
    """``{global_step: Stat over seeds}`` of ``key``, at the steps where some run recorded it."""
    steps = sorted({s for run in group.runs for s, flat in round_steps(run).items() if key in flat})
    return {s: group.stat(lambda run, s=s: round_steps(run).get(s, {}).get(key)) for s in steps}


def _lines(group: Group, keys: Mapping[str, str]) -> dict[str, dict[str, list[float]]]:
    """``{label: {"x", "y", "sd", "n"}}`` of each key's series."""
    out = {}
    for label, key in keys.items():
        points = series(group, key)
        if points:
            out[label] = {
                "x": [float(s) for s in points],
                "y": [p.mean for p in points.values()],
                "sd": [p.sd for p in points.values()],
                "n": [float(p.n) for p in points.values()],
            }
    return out


def agent_panels(group: Group) -> list[dict[str, Any]]:
    """The panels of :func:`plot_agent_weights`: per agent its categories' weights, then the console's
    theta and the agents' rewards (each a panel when recorded)."""
    panels = []
    for agent, categories in _names(group.runs, AGENTS, WEIGHT).items():
        keys = {c: f"{AGENTS}.{agent}.{WEIGHT}.{c}" for c in categories}
        panels.append({"title": f"{agent}: category weights w", "lines": _lines(group, keys)})
    for kind, title in ((THETA, "console: agent weights θ"), (REWARD, "console: agent rewards R_A")):
        agents = _names(group.runs, CONSOLE, kind).get(kind, [])
        lines = _lines(group, {a: f"{CONSOLE}.{kind}.{a}" for a in agents})
        if lines:
            panels.append({"title": title, "lines": lines})
    return [p for p in panels if p["lines"]]


def share_panels(group: Group) -> list[dict[str, Any]]:
    """The panels of :func:`plot_agent_shares`: per agent, ``{category: {step: mean share over seeds}}``."""
    panels = []
    for agent, categories in _names(group.runs, AGENTS, SELECTED).items():
        shares = {
            c: {s: p.mean for s, p in series(group, f"{AGENTS}.{agent}.{SELECTED}.{c}").items()}
            for c in categories
        }
        shares = {c: v for c, v in shares.items() if v}
        if shares:
            panels.append({"title": f"{agent}: share of the selection", "shares": shares})
    return panels


def _seeds(group: Group) -> str:
    n = len(group.seeds)
    return "1 seed" if n == 1 else f"mean ± sd over {n} seeds"


# --- figures ---------------------------------------------------------------------------------------------
def _panel_legend(ax: Any, n: int) -> None:
    from p3bench.report.plot_style import SMALL

    ax.legend(
        fontsize=SMALL - 1,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncols=max(1, math.ceil(n / 10)),
        frameon=False,
        borderaxespad=0.0,
    )


def plot_agent_weights(
    panels: Sequence[Mapping[str, Any]],
    *,
    stem: Path | str,
    title: str | None = None,
    dpi: int | None = None,
    formats: Sequence[str] | None = None,
) -> list[Path]:
    """One panel per entry of ``panels`` (``{"title", "lines": {label: {"x", "y", "sd"}}}``), stacked, a
    line per label (with a ± sd band where ``sd`` is finite) against the global step, and each panel's
    legend to its right. Returns ``[]`` when there is nothing to draw."""
    from p3bench.report import plot_style as ps

    panels = [p for p in panels if p.get("lines")]
    if not panels:
        return []
    fig, axes = ps.new_figure(len(panels), 1, width=ps.WIDTH, height=0.6 + 2.0 * len(panels), sharex=True)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        lines = panel["lines"]
        for k, (label, line) in enumerate(lines.items()):
            color = _color(k, len(lines))
            ax.plot(line["x"], line["y"], marker="o", markersize=2.5, linewidth=1.2, color=color, label=label)
            low = [y - s if ps.is_finite(s) else y for y, s in zip(line["y"], line["sd"], strict=True)]
            high = [y + s if ps.is_finite(s) else y for y, s in zip(line["y"], line["sd"], strict=True)]
            if any(h != lo for h, lo in zip(high, low, strict=True)):
                ax.fill_between(line["x"], low, high, color=color, alpha=0.15, linewidth=0)
        ax.set_title(panel["title"], fontsize=ps.FONT, loc="left")
        _panel_legend(ax, len(lines))
    axes[-1, 0].set_xlabel("global step (start of the round)", fontsize=ps.FONT)
    ps.add_title(fig, title, panels=True)
    return ps.save_figure(fig, stem, dpi=dpi or ps.DPI, formats=formats or ps.FORMATS)


def plot_agent_shares(
    panels: Sequence[Mapping[str, Any]],
    *,
    stem: Path | str,
    title: str | None = None,
    dpi: int | None = None,
    formats: Sequence[str] | None = None,
) -> list[Path]:
    """One panel per agent (``{"title", "shares": {category: {step: share}}}``), stacked bars of each
    category's share of the round's selection, each bar starting at the round's global step and spanning
    the steps to the next round. Returns ``[]`` when there is nothing to draw."""
    from p3bench.report import plot_style as ps

    panels = [p for p in panels if p.get("shares")]
    if not panels:
        return []
    fig, axes = ps.new_figure(len(panels), 1, width=ps.WIDTH, height=0.6 + 2.0 * len(panels), sharex=True)
    steps = sorted({s for p in panels for v in p["shares"].values() for s in v})
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    width = 0.9 * (min(gaps) if gaps else 1.0)  # each bar spans the steps its round trains
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        shares = panel["shares"]
        bottom = dict.fromkeys(steps, 0.0)
        for k, (category, values) in enumerate(shares.items()):
            heights = [values.get(s, 0.0) for s in steps]
            ax.bar(
                steps,
                heights,
                width=width,
                bottom=[bottom[s] for s in steps],
                color=_color(k, len(shares)),
                label=category,
                linewidth=0,
                align="edge",
            )
            for s, h in zip(steps, heights, strict=True):
                bottom[s] += h
        ax.set_ylim(0, max(1.0, *bottom.values()))
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.set_title(panel["title"], fontsize=ps.FONT, loc="left")
        _panel_legend(ax, len(shares))
    axes[-1, 0].set_xlabel("global step (a bar spans the steps its round trains)", fontsize=ps.FONT)
    ps.add_title(fig, title, panels=True)
    return ps.save_figure(fig, stem, dpi=dpi or ps.DPI, formats=formats or ps.FORMATS)


def _percent_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    from p3bench.report.plot_style import percent_label

    return FuncFormatter(percent_label)


def _color(k: int, n: int) -> Any:
    from matplotlib import colormaps

    palette = colormaps["tab20"] if n > 10 else colormaps["tab10"]
    return palette(k % palette.N)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def agent_figures(section: Section, folder: Path) -> dict[str, list[Path]]:
    """The agent figures of every group of ``section`` that records agent weights, keyed
    ``<section slug>/<figure>`` (:func:`p3bench.report.build.section_figures` adds them)."""
    written: dict[str, list[Path]] = {}
    for group in section.groups:
        if not has_agents(group):
            continue
        name = f"{_safe(group.method)}_b{group.budget}"
        title = f"{section.title}: {group.label} ({_seeds(group)})"
        for figure, paths in (
            (
                f"agents_{name}",
                plot_agent_weights(agent_panels(group), stem=folder / f"agents_{name}", title=title),
            ),
            (
                f"agent_shares_{name}",
                plot_agent_shares(share_panels(group), stem=folder / f"agent_shares_{name}", title=title),
            ),
        ):
            if paths:
                written[f"{section.slug}/{figure}"] = paths
    return written
