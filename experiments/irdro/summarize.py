"""Summarise ERM / IR-DRO / MidRanking runs (arXiv 2402.14270): per method and batching
(``length_grouping``: 1 = random batches, k > 1 = length-grouped), mean ± sd over seeds of the held-out metric
(test perplexity for text, test accuracy otherwise), validation loss, the paired difference to ERM (``full``)
of the same seed and batching, seconds per optimizer step, and the run means of the weight metrics
(effective sample size as a fraction of the batch, weight mass on planted noise next to its batch share).
``--per-seed`` adds one row per run: the final loss of its warm start (continual pre-training) and its test
perplexity per domain (text corpora).

    python experiments/irdro/summarize.py logs/irdro_sft_sweep/multiruns logs/irdro_cpt_cpu_sweep/multiruns
    python experiments/irdro/summarize.py --per-seed logs/irdro_cpt_cpu_sweep/multiruns
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


def length_grouping(results: dict[str, Any]) -> int | None:
    """The batching a run trained with: the in-batch methods' own (``selection.reweighting``), else the
    loader's (runs written before the in-batch methods had their own batching used the loader's too)."""
    own = (results["selection"].get("reweighting") or {}).get("length_grouping")
    if own is not None:
        return int(own)
    loader = results.get("config", {}).get("loader", {}).get("length_grouping")
    return None if loader is None else int(loader)


def method_order(keys: set[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(keys, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1] if k[1] is not None else -1))


def table(runs: list[dict[str, Any]]) -> str:
    by_method: dict[tuple[str, int | None], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by_method[(r["run"]["method"], length_grouping(r))][int(r["run"]["seed"])] = r
    name = headline(runs[0])[0]
    rows = [
        f"| method | length_grouping | seeds | {name} | vs ERM, same seed | val loss | s / step | "
        "ESS / batch | mass noisy (share) | mass junk (share) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, grouping in method_order(set(by_method)):
        seeds = by_method[(method, grouping)]
        erm = by_method.get(("full", grouping), {})
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
            f"| {method} | {grouping if grouping is not None else '-'} | {len(seeds)} | {mean_sd(values)} | "
            f"{mean_sd(diffs) if diffs else '-'} | "
            f"{mean_sd(val)} | {mean_sd(per_step)} | {weight('mean_ess_fraction')} | {mass('noisy')} | "
            f"{mass('junk')} |"
        )
    return "\n".join(rows)


def per_seed_table(runs: list[dict[str, Any]]) -> str:
    """One row per run: seed, method, batching, held-out metric, the warm start's final train loss and the
    test perplexity of every domain."""
    domains = sorted({k for r in runs for k in r["metrics"] if k.startswith("test/perplexity_domain_")})
    name = headline(runs[0])[0]
    columns = [d.removeprefix("test/perplexity_domain_") for d in domains]
    header = ["seed", "method", "length_grouping", name, "warm-start final loss", *columns]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    for r in sorted(runs, key=lambda r: (int(r["run"]["seed"]), rank.get(r["run"]["method"], len(rank)))):
        warm = (r.get("model") or {}).get("warm_start") or {}
        loss = f"{warm['final_train_loss']:.2f}" if "final_train_loss" in warm else "-"
        cells = [f"{r['metrics'][d]:.1f}" if d in r["metrics"] else "-" for d in domains]
        grouping = length_grouping(r)
        row = [str(r["run"]["seed"]), r["run"]["method"], "-" if grouping is None else str(grouping)]
        row += [f"{headline(r)[1]:.3f}", loss, *cells]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--per-seed", action="store_true", help="also one row per run (warm start, domains)")
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
        if args.per_seed:
            print(per_seed_table(runs))
            print()


if __name__ == "__main__":
    main()
