"""Summarise a ``sachdeva19`` sweep (and its ``full`` reference): held-out perplexity per sampler and budget,
what each sampler kept of the planted junk and near-duplicates, and the paper's qualitative findings
(arXiv 2402.09668, §4.5) checked on these numbers::

    python experiments/sachdeva19/summarize.py RUN_DIR_OR_SWEEP_DIR... [--markdown OUT.md]

Every run directory below the given paths with a ``results.json`` is read; one without one (a failed job) is
listed, not dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from p3bench.utils.io import atomic_write_text

FAMILIES = {
    "coverage": ["density", "semdedup", "prototypes"],
    "ask_llm": [f"askllm_{s}" for s in ("small", "base", "large", "xl", "xxl")],
    "perplexity": [f"perplexity_{s}" for s in ("small", "base", "large", "xl", "xxl")]
    + [f"perplexity_{s}" for s in ("20k", "100k", "300k", "500k", "700k")],
}
ORDER = ["full", "random", *FAMILIES["coverage"], *FAMILIES["ask_llm"], *FAMILIES["perplexity"]]


def read_runs(paths: list[Path]) -> tuple[list[dict], list[Path]]:
    runs, failed = [], []
    for root in paths:
        for config in sorted(root.rglob(".hydra/config.yaml")):
            run_dir = config.parent.parent
            results = run_dir / "results.json"
            if not results.is_file():
                failed.append(run_dir)
                continue
            data = json.loads(results.read_text())
            sel = data["selection"]
            composition = sel.get("composition", {})
            n = max(1, composition.get("n", sel["n_selected"]))
            pool_junk = data["dataset"]["info"].get("n_junk")
            runs.append(
                {
                    "method": data["run"]["method"],
                    "budget": float(data["run"]["budget"]),
                    "seed": data["run"]["seed"],
                    "ppl": data["metrics"].get("test/perplexity", float("nan")),
                    "junk": composition.get("junk", 0) / n,
                    "dup": composition.get("in_duplicate_group", 0) / n,
                    "selection_s": data["compute"]["seconds"]["selection"],
                    "total_s": data["compute"]["seconds"]["total"],
                    "tokens": data["compute"]["train_tokens"],
                    "pool_junk": pool_junk,
                }
            )
    return runs, failed


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.mean(values) if values else float("nan")


def table(runs: list[dict]) -> tuple[str, dict[tuple[str, float], float]]:
    by = defaultdict(list)
    for r in runs:
        by[(r["method"], r["budget"])].append(r)
    budgets = sorted({b for m, b in by if m != "full"})
    ppl = {key: mean([r["ppl"] for r in rs]) for key, rs in by.items()}
    full = [v for (m, _), v in ppl.items() if m == "full"]
    header = (
        "| sampler | "
        + " | ".join(f"ppl @{b:g}" for b in budgets)
        + " | junk @0.2 | dup @0.2 | selection s |"
    )
    lines = [header, "|---" * (len(budgets) + 4) + "|"]
    if full:
        full_runs = [r["ppl"] for (m, _), rs in by.items() if m == "full" for r in rs]
        spread = f" ± {statistics.stdev(full_runs):.1f}" if len(full_runs) > 1 else ""
        lines.append(
            "| full (1.0) | " + " | ".join(f"{full[0]:.2f}{spread}" for _ in budgets) + " | - | - | 0 |"
        )
    best = {
        b: min((v for (m, bb), v in ppl.items() if bb == b and m != "full"), default=None) for b in budgets
    }
    for method in [m for m in ORDER if m != "full"] + sorted({m for m, _ in by} - set(ORDER)):
        if not any((method, b) in by for b in budgets):
            continue
        cells = []
        for b in budgets:
            value = ppl.get((method, b))
            seeds = [r["ppl"] for r in by.get((method, b), [])]
            cell = "-" if value is None else f"{value:.2f}"
            if len(seeds) > 1:  # mean ± sd over seeds
                cell += f" ± {statistics.stdev(seeds):.1f}"
            cells.append(f"**{cell}**" if value is not None and value == best[b] else cell)
        at = by.get((method, 0.2), [])
        junk = f"{mean([r['junk'] for r in at]):.3f}" if at else "-"
        dup = f"{mean([r['dup'] for r in at]):.3f}" if at else "-"
        secs = mean([r["selection_s"] for rs in (by.get((method, b), []) for b in budgets) for r in rs])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {junk} | {dup} | {secs:.0f} |")
    return "\n".join(lines) + "\n", ppl


def findings(ppl: dict[tuple[str, float], float]) -> str:
    budgets = sorted({b for m, b in ppl if m != "full"})
    full = next((v for (m, _), v in ppl.items() if m == "full"), None)
    lines = []
    for b in budgets:
        row = {m: v for (m, bb), v in ppl.items() if bb == b}
        ranked = sorted(row, key=row.get)
        random_rank = ranked.index("random") + 1 if "random" in row else None
        coverage = {m: row[m] for m in FAMILIES["coverage"] if m in row}
        perplexity = [row[m] for m in FAMILIES["perplexity"] if m in row]
        ask = [row[m] for m in FAMILIES["ask_llm"] if m in row]
        parts = [f"budget {b:g}: random ranks {random_rank} of {len(ranked)}"]
        if full is not None and coverage:
            best = min(coverage, key=coverage.get)
            parts.append(
                f"best coverage sampler {best} at {coverage[best] / full:.3f} x full-data perplexity"
            )
        if "random" in row and perplexity:
            worse = sum(v > row["random"] for v in perplexity)
            parts.append(f"{worse}/{len(perplexity)} perplexity filters worse than random")
        if "random" in row and ask:
            worse = sum(v > row["random"] for v in ask)
            parts.append(f"{worse}/{len(ask)} Ask-LLM stand-ins worse than random")
        lines.append("- " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    runs, failed = read_runs(args.paths)
    text, ppl = table(runs)
    text += "\n" + findings(ppl)
    if failed:
        text += "\nruns without results (failed or unfinished):\n" + "".join(f"- {p}\n" for p in failed)
    print(text)
    if args.markdown is not None:
        atomic_write_text(args.markdown, text)


if __name__ == "__main__":
    main()
