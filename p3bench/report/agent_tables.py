"""The multi-agent table of ``p3bench report`` (Bai et al., arXiv 2410.08102): whether the console's mixing
weights moved, and what each agent came to prefer, read from the per-round diagnostics of
:mod:`p3bench.methods.multi_agent` (``console.theta.<agent>``, ``console.theta_spread``,
``agents.<agent>.weight.<category>``, ``agents.<agent>.selected_share.<category>`` and ``pool_share``).

It is the check that a run does what the method's name says: a console whose ``theta`` stays within
:data:`MOVED` of equal is fixed mixing in effect (``multi_agent`` then selects as ``multi_agent_fixed``),
and an agent whose favourite category is not over-represented in the selection is not steering it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from p3bench.report.agent_plots import AGENTS, CONSOLE, SELECTED, THETA, WEIGHT, has_agents, round_steps
from p3bench.report.aggregate import Group, Section, Stat
from p3bench.report.runs import RunRecord

#: the spread of theta (largest minus smallest agent weight) from which the console counts as having moved
MOVED = 0.01


def last_round(run: RunRecord) -> dict[str, float]:
    """The flat diagnostics of the run's last round (empty when it recorded none)."""
    steps = round_steps(run)
    return steps[max(steps)] if steps else {}


def theta_spread(flat: dict[str, float]) -> float | None:
    """Largest minus smallest ``console.theta.<agent>`` of one round (its recorded spread if present)."""
    if f"{CONSOLE}.theta_spread" in flat:
        return flat[f"{CONSOLE}.theta_spread"]
    thetas = [v for k, v in flat.items() if k.startswith(f"{CONSOLE}.{THETA}.")]
    return max(thetas) - min(thetas) if thetas else None


def favourites(run: RunRecord) -> dict[str, tuple[str, float, float]]:
    """``{agent: (category, selected share, pool share)}`` of each agent's highest-weighted category at the
    run's last round."""
    flat = last_round(run)
    weights: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        parts = key.split(".", 3)
        if len(parts) == 4 and parts[0] == AGENTS and parts[2] == WEIGHT:
            weights.setdefault(parts[1], {})[parts[3]] = value
    out = {}
    for agent, by_category in sorted(weights.items()):
        best = max(by_category, key=lambda c: (by_category[c], c))
        selected = flat.get(f"{AGENTS}.{agent}.{SELECTED}.{best}", float("nan"))
        pool = flat.get(f"{AGENTS}.{agent}.pool_share.{best}", float("nan"))
        out[agent] = (best, selected, pool)
    return out


def favourite_cell(group: Group, agent: str) -> str:
    """The category most seeds' ``agent`` weighted highest at the last round, how many seeds did, and its mean
    share of the selection against its share of the pool."""
    picks = [f[agent] for f in (favourites(run) for run in group.runs) if agent in f]
    if not picks:
        return "-"
    category, count = Counter(p[0] for p in picks).most_common(1)[0]
    same = [p for p in picks if p[0] == category]
    selected = sum(p[1] for p in same) / len(same)
    pool = sum(p[2] for p in same) / len(same)
    of_pool = "" if math.isnan(pool) else f", {pool:.0%} of the pool"
    return f"{category} ({count}/{len(picks)} seeds; {selected:.0%} of the selection{of_pool})"


def console_table(section: Section) -> list[str]:
    """A row per multi-agent group: rounds, the console's theta at the last round, whether it moved, and each
    agent's favourite category; empty when no group records agent weights."""
    groups = [g for g in section.groups if has_agents(g)]
    if not groups:
        return []
    agents = sorted(
        {
            f.split(".")[2]
            for g in groups
            for r in g.runs
            for f in last_round(r)
            if f.startswith(f"{CONSOLE}.{THETA}.")
        }
    )
    every = sorted({a for g in groups for r in g.runs for a in favourites(r)})
    header = ["method", "budget", "rounds", "theta spread"] + [f"theta {a}" for a in agents]
    header += [f"{a}: favourite category" for a in every]
    lines = [
        "Multi-agent selection at the last round (mean ± sd over seeds): the spread of the console's weights "
        f"theta (largest minus smallest; below {MOVED} the console has not moved from equal mixing, and the "
        "method selects as fixed mixing), theta per agent, and each agent's highest-weighted category:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for g in groups:
        rounds = g.stat(lambda r: float(len(round_steps(r))) or None)
        spread = g.stat(lambda r: theta_spread(last_round(r)))
        moved = "" if spread.n == 0 else (" (moved)" if spread.mean >= MOVED else " (not moved)")
        cells: list[Any] = [g.method, g.budget]
        cells += [f"{rounds.mean:.0f}" if rounds.n else "-", _fmt(spread, 5) + moved]
        cells += [_fmt(g.stat(lambda r, a=a: last_round(r).get(f"{CONSOLE}.{THETA}.{a}")), 3) for a in agents]
        cells += [favourite_cell(g, a) for a in every]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _fmt(stat: Stat, digits: int) -> str:
    if stat.n == 0:
        return "-"
    spread = "" if math.isnan(stat.sd) else f" ± {stat.sd:.{digits}f}"
    return f"{stat.mean:.{digits}f}{spread}"
