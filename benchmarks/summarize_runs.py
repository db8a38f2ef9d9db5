"""Summarise run directories: mean and standard deviation over seeds of test accuracy (overall and per
level) and wall time, grouped by method and budget.

    python benchmarks/summarize_runs.py logs/synthetic_budgets/multiruns/<time>
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(roots: list[str]) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for root in roots:
        for path in sorted(Path(root).rglob("results.json")):
            results = json.loads(path.read_text())
            run = results["run"]
            budget = "-" if run["method"] == "full" else run["budget"]
            groups[(run["method"], budget)].append(results)
    keys = ["test/accuracy"] + [f"test/accuracy_level_{k}" for k in range(1, 6)]
    print("| method | budget | seeds | accuracy | L1 | L2 | L3 | L4 | L5 | train tokens | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (method, budget), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        cells = []
        for key in keys:
            values = [r["metrics"].get(key, float("nan")) for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        tokens = statistics.mean(r["compute"]["train_tokens"] for r in runs)
        seconds = [r["compute"]["seconds"]["total"] for r in runs]
        time_cell = (
            f"{statistics.mean(seconds):.0f} ± {statistics.stdev(seconds) if len(seconds) > 1 else 0:.0f}"
        )
        print(
            f"| {method} | {budget} | {len(runs)} | "
            + " | ".join(cells)
            + f" | {tokens:,.0f} | {time_cell} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["logs"])
