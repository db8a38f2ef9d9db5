"""Summarise ERM / IR-DRO / MidRanking runs (arXiv 2402.14270): per method, mean ± sd over seeds of the
held-out metric (test perplexity for text, test accuracy otherwise), validation loss, the paired difference to
ERM (``full``) of the same seed, seconds per optimizer step, and the run means of the weight metrics
(effective sample size as a fraction of the batch, weight mass on planted noise next to its batch share).

    python experiments/irdro/summarize.py logs/irdro_sft_sweep/multiruns logs/irdro_cpt_cpu_sweep/multiruns
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

METHOD_ORDER = ("full", "irdro", "midranking")


def mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def headline(results: dict[str, Any]) -> tuple[str, float]:
    metrics = results["metrics"]
    if "test/perplexity" in metrics:
        return "test ppl", float(metrics["test/perplexity"])
    return "test acc", float(metrics["test/accuracy"])


def weight_cell(summaries: list[dict[str, Any]], key: str) -> str:
    found = [s[key] for s in summaries if key in s]
    return mean_sd(found) if found else "-"


def mass_cell(summaries: list[dict[str, Any]], kind: str) -> str:
    if not any(f"mean_mass_{kind}" in s for s in summaries):
        return "-"
    return f"{weight_cell(summaries, f'mean_mass_{kind}')} ({weight_cell(summaries, f'mean_share_{kind}')})"


def table(runs: list[dict[str, Any]]) -> str:
    by_method: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by_method[r["run"]["method"]][int(r["run"]["seed"])] = r
    name = headline(runs[0])[0]
    rows = [
        f"| method | seeds | {name} | vs ERM, same seed | val loss | s / step | ESS / batch | "
        "mass noisy (share) | mass junk (share) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    erm = by_method.get("full", {})
    order = [m for m in METHOD_ORDER if m in by_method] + sorted(set(by_method) - set(METHOD_ORDER))
    for method in order:
        seeds = by_method[method]
        values = [headline(r)[1] for r in seeds.values()]
        diffs = [
            headline(r)[1] - headline(erm[s])[1] for s, r in seeds.items() if s in erm and method != "full"
        ]
        per_step = [
            r["compute"]["seconds"]["train"] / max(1, r["compute"]["optimizer_steps"]) for r in seeds.values()
        ]
        val = [float(r["metrics"]["val/loss"]) for r in seeds.values() if "val/loss" in r["metrics"]]
        summaries = [r["selection"].get("reweighting") or {} for r in seeds.values()]

        weight = partial(weight_cell, summaries)
        mass = partial(mass_cell, summaries)
        rows.append(
            f"| {method} | {len(seeds)} | {mean_sd(values)} | {mean_sd(diffs) if diffs else '-'} | "
            f"{mean_sd(val)} | {mean_sd(per_step)} | {weight('mean_ess_fraction')} | {mass('noisy')} | "
            f"{mass('junk')} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+")
    args = parser.parse_args()
    for root in args.roots:
        runs = [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]
        if not runs:
            print(f"{root}: no results.json")
            continue
        experiments = sorted({r["run"]["experiment"] for r in runs})
        print(f"## {', '.join(experiments)} ({root})\n")
        print(table(runs))
        print()


if __name__ == "__main__":
    main()
