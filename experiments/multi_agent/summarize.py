"""Summarise multi-agent selection runs (arXiv 2410.08102) and their controls: per method (and variant, such
as ``method.reward.kind=gradient``), over seeds, the held-out perplexity on the reference domains (the domains
the rewards were measured on) and on the other domains, each token-weighted from the test documents in
``predictions.jsonl`` (``domain``, ``nll_sum``, ``n_tokens``); their paired differences to a reference method
of the same seed (``p3bench.stats.compare_paired``: t interval, verdict, Holm over the methods); the share of
the trained (round, example) pairs that were planted junk (text_mix; ``results.trained_defect_shares``); the
final console weights; the selection's wall time as a share of training time; and the training tokens of
each method (``compute.train_tokens``) with whether every run reached its token target
(``compute.reached_target_tokens`` of an iso-compute run).

Equal training tokens is the premise of the comparison: a run that stopped short of its target is marked in
the table (``target reached``: ``no (k of n)``) and listed under it with its tokens and target.

    python experiments/multi_agent/summarize.py logs/multi_agent/multiruns
    python experiments/multi_agent/summarize.py logs/multi_agent_pile/multiruns --reference random_dynamic

The reference domains are read from the multi-agent runs' options (``method.reference.values``) unless
``--reference-domains`` names them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from p3bench.report.runs import RunRecord, load_runs
from p3bench.results import PREDICTIONS_FILE, trained_defect_shares
from p3bench.stats import compare_paired, with_holm


def token_weighted_perplexity(records: Iterable[dict[str, Any]], keep: Any) -> float:
    """``exp(sum nll / sum tokens)`` over the test documents whose domain ``keep`` accepts; NaN for none."""
    nll = tokens = 0.0
    for record in records:
        if keep(record.get("domain")):
            nll += float(record["nll_sum"])
            tokens += int(record["n_tokens"])
    return math.exp(nll / tokens) if tokens else math.nan


def read_predictions(run: RunRecord) -> list[dict[str, Any]]:
    path = run.path / PREDICTIONS_FILE
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def reference_domains(runs: Sequence[RunRecord]) -> list[str]:
    """The ``reference.values`` the multi-agent runs were given (one set for all of them)."""
    found = set()
    for run in runs:
        options = (run.results or {}).get("run", {}).get("method_options") or {}
        values = (options.get("reference") or {}).get("values")
        if values:
            found.add(tuple(sorted(values)))
    if len(found) != 1:
        raise SystemExit(
            f"the runs name {len(found)} reference-domain sets ({sorted(found)}): pass --reference-domains"
        )
    return list(found.pop())


def label(run: RunRecord) -> str:
    variant = run.identity.get("variant") or []
    return run.method + (f" [{' '.join(variant)}]" if variant else "")


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run_row(run: RunRecord, domains: set[str]) -> dict[str, Any]:
    predictions = read_predictions(run)
    results = run.results or {}
    seconds = results.get("compute", {}).get("seconds", {})
    rounds = results.get("selection", {}).get("rounds") or []
    final = rounds[-1]["diagnostics"] if rounds else {}
    return {
        "ppl_reference": token_weighted_perplexity(predictions, lambda d: d in domains),
        "ppl_other": token_weighted_perplexity(predictions, lambda d: d not in domains),
        "junk": trained_defect_shares(results).get("junk", math.nan),
        "selection_share": seconds.get("selection", 0.0) / seconds["train"]
        if seconds.get("train")
        else math.nan,
        "theta": {k.split(".", 2)[2]: v for k, v in final.items() if k.startswith("console.theta.")},
        **token_fields(results),
    }


def token_fields(results: dict[str, Any]) -> dict[str, Any]:
    """The run's training tokens, its token target (None without one: an iso-epoch run) and whether it
    reached it (``compute.reached_target_tokens``; None without a target)."""
    compute = results.get("compute") or {}
    tokens = compute.get("train_tokens")
    return {
        "train_tokens": math.nan if tokens is None else float(tokens),
        "target_tokens": compute.get("target_train_tokens"),
        "reached_target": compute.get("reached_target_tokens"),
    }


def reached_cell(rows: Iterable[dict[str, Any]]) -> str:
    """``yes`` when every run reached its token target, ``no (k of n)`` when k of the n runs with a target
    did not, ``-`` when no run had a target."""
    flags = [row["reached_target"] for row in rows if row["reached_target"] is not None]
    if not flags:
        return "-"
    short = sum(1 for flag in flags if not flag)
    return "yes" if short == 0 else f"no ({short} of {len(flags)})"


def tokens_cell(values: Sequence[float]) -> str:
    """Mean training tokens over seeds, and their range when the seeds differ."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    low, high = min(values), max(values)
    mean = f"{statistics.mean(values):,.0f}"
    return mean if low == high else f"{mean} ({low:,.0f}-{high:,.0f})"


def short_runs(runs: Sequence[RunRecord]) -> list[str]:
    """One line per run that did not reach its token target: its label, seed, tokens, target and path."""
    lines = []
    for run in runs:
        fields = token_fields(run.results or {})
        if fields["reached_target"] is False:
            lines.append(
                f"- {label(run)} seed {run.seed}: {fields['train_tokens']:,.0f} of "
                f"{fields['target_tokens']:,} target tokens ({run.path})"
            )
    return lines


def paired(rows: dict[str, dict[int, dict[str, Any]]], key: str, reference: str) -> dict[str, Any]:
    """Each method against the ``reference`` row on ``key`` (lower perplexity is better), Holm over them."""
    names = [name for name in rows if name != reference]
    base = {seed: row[key] for seed, row in rows.get(reference, {}).items()}
    comparisons = [
        compare_paired(
            {seed: row[key] for seed, row in rows[name].items()},
            base,
            higher_is_better=False,
            method=name,
            reference=reference,
        )
        for name in names
    ]
    return dict(zip(names, with_holm(comparisons), strict=True)) if comparisons else {}


def reference_row(runs: Sequence[RunRecord], method: str) -> str:
    """The row every other is paired with: the runs of ``method`` with the fewest overrides of their own."""
    labels = sorted({label(r) for r in runs if r.method == method}, key=lambda n: (len(n), n))
    if not labels:
        raise SystemExit(f"no finished run of the reference method {method!r}: pass --reference")
    return labels[0]


def diff_cell(comparison: Any) -> str:
    if comparison is None or comparison.n_pairs < 2:
        return "-"
    return (
        f"{comparison.mean_diff:+.2f} [{comparison.t_low:+.2f}, {comparison.t_high:+.2f}] "
        f"{comparison.verdict} (Holm: {comparison.verdict_holm})"
    )


def table(runs: list[RunRecord], domains: list[str], reference: str) -> str:
    rows: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for run in runs:
        rows[label(run)][int(run.seed)] = run_row(run, set(domains))
    reference = reference_row(runs, reference)
    on_reference = paired(rows, "ppl_reference", reference)
    on_other = paired(rows, "ppl_other", reference)
    lines = [
        f"reference domains: {', '.join(domains)}; differences are method minus {reference}, same seed "
        "(95% t interval over seeds)\n",
        f"| method | seeds | ppl reference | vs {reference} | ppl other | vs {reference} | junk share | "
        "final theta | selection s / train s | train tokens | target reached |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(rows, key=lambda n: (n != reference, n)):
        seeds = rows[name]
        thetas = defaultdict(list)
        for row in seeds.values():
            for agent, value in row["theta"].items():
                thetas[agent].append(value)
        theta = ", ".join(f"{a} {statistics.mean(v):.2f}" for a, v in sorted(thetas.items())) or "-"
        cells = [
            name,
            str(len(seeds)),
            mean_sd([r["ppl_reference"] for r in seeds.values()]),
            diff_cell(on_reference.get(name)),
            mean_sd([r["ppl_other"] for r in seeds.values()]),
            diff_cell(on_other.get(name)),
            mean_sd([r["junk"] for r in seeds.values()], 3),
            theta,
            mean_sd([r["selection_share"] for r in seeds.values()]),
            tokens_cell([r["train_tokens"] for r in seeds.values()]),
            reached_cell(seeds.values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    short = short_runs(runs)
    if short:
        lines.append(
            f"\n{len(short)} run(s) did not reach their training-token target, so their comparison is not at "
            "equal training tokens:"
        )
        lines.extend(short)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="multirun or run directories")
    parser.add_argument("--reference", default="random", help="the method every other is paired with")
    parser.add_argument(
        "--reference-domains", nargs="+", help="default: the multi-agent runs' reference.values"
    )
    args = parser.parse_args()
    runs = [r for r in load_runs(args.roots) if r.ok]
    if not runs:
        raise SystemExit(f"no finished run under {', '.join(args.roots)}")
    domains = args.reference_domains or reference_domains(
        [r for r in runs if r.method.startswith("multi_agent")]
    )
    for experiment in sorted({r.experiment for r in runs}):
        print(f"## {experiment}\n")
        print(table([r for r in runs if r.experiment == experiment], domains, args.reference))
        print()


if __name__ == "__main__":
    main()
