"""Summarise run directories: mean and standard deviation over seeds of test accuracy (overall and per
level), validation loss, training tokens and wall time, grouped by method and budget; with ``--defects``,
the share of training exposures that fell on planted noisy, duplicate and junk examples (synthetic_math
runs: the pool is regenerated from the run's config and joined with its selection file (selection.jsonl or .parquet), one row per
round and example, so a dynamic method's examples count once per round they were trained in).

    python benchmarks/summarize_runs.py logs/synthetic_budgets/multiruns/<time>
    python benchmarks/summarize_runs.py --defects logs/p3_synthetic_sweep/multiruns
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from functools import cache
from pathlib import Path

from p3bench.selection_files import read_selection


def mean_sd(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


@cache
def synthetic_meta(params_json: str) -> dict[str, dict]:
    from p3bench.data.synthetic_math import load_synthetic_math

    splits = load_synthetic_math(**json.loads(params_json))
    return {ex.id: ex.meta for ex in splits.train}


def defect_shares(run_dir: Path, results: dict) -> dict[str, float]:
    """Shares of (round, example) training exposures on noisy, duplicate copies and junk."""
    dataset = results["config"]["dataset"]
    if dataset["name"] != "synthetic_math":
        return {}
    meta = synthetic_meta(json.dumps(dataset["params"], sort_keys=True))
    rows = read_selection(run_dir)  # selection.jsonl, or selection.parquet for a large selection
    if not rows:
        return {}
    shares = {
        "noisy": sum(bool(meta[r["id"]]["is_noisy"]) for r in rows) / len(rows),
        "dup": sum(bool(meta[r["id"]]["is_duplicate"]) for r in rows) / len(rows),
        "junk": sum(bool(meta[r["id"]]["is_junk"]) for r in rows) / len(rows),
    }
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["logs"])
    parser.add_argument("--defects", action="store_true", help="planted-defect shares (synthetic_math)")
    args = parser.parse_args()
    groups: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for root in args.roots:
        for path in sorted(Path(root).rglob("results.json")):
            results = json.loads(path.read_text())
            run = results["run"]
            # "-": the method trains on the whole pool whatever the budget (full, irdro, midranking)
            whole_pool = results["selection"]["budget_size"] == results["selection"]["pool_size"]
            budget = "-" if whole_pool else run["budget"]
            groups[(run["method"], budget)].append((path.parent, results))
    keys = ["test/accuracy"] + [f"test/accuracy_level_{k}" for k in range(1, 6)]
    header = ["method", "budget", "seeds", "accuracy", "L1", "L2", "L3", "L4", "L5", "val loss"]
    if args.defects:
        header += ["noisy", "dup copies", "junk"]
    header += ["train tokens", "time (s)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (method, budget), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        cells = [mean_sd([r["metrics"].get(key, float("nan")) for _, r in runs]) for key in keys]
        cells.append(mean_sd([r["metrics"].get("val/loss", float("nan")) for _, r in runs]))
        if args.defects:
            shares = [defect_shares(d, r) for d, r in runs]
            for kind in ("noisy", "dup", "junk"):
                cells.append(mean_sd([s.get(kind, float("nan")) for s in shares]))
        tokens = statistics.mean(r["compute"]["train_tokens"] for _, r in runs)
        seconds = [r["compute"]["seconds"]["total"] for _, r in runs]
        cells += [f"{tokens:,.0f}", mean_sd(seconds, 0)]
        print(f"| {method} | {budget} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
