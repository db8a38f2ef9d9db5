"""The results schema every run writes, and the selection and prediction files beside it.

``results.json`` (schema documented in docs/results.md) holds the config, package versions, the seed, a
selection summary with the sha256 of the sorted selected ids, test and validation metrics (each test mean with
its standard error, accuracy with its Wilson interval), and compute (training tokens, selection forward
tokens, FLOPs of every model trained or run, wall times). All files are written atomically.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p3bench.data.arrow_pool import iter_meta
from p3bench.data.example import Example
from p3bench.selection_files import PARQUET_ABOVE, SELECTION_JSONL, write_selection
from p3bench.utils.hashing import ids_sha256
from p3bench.utils.io import atomic_write_json, atomic_write_jsonl

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
#: a finished run's results, kept while a resume that changes what they report runs (docs/results.md)
PREVIOUS_RESULTS_FILE = "results.previous.json"
#: the selection file of a run up to ``pool.selection_parquet_above`` rows (selection.parquet above)
SELECTION_FILE = SELECTION_JSONL
PREDICTIONS_FILE = "predictions.jsonl"

_VERSIONED = (
    "p3bench",
    "torch",
    "pytorch-lightning",
    "transformers",
    "tokenizers",
    "datasets",
    "hydra-core",
    "omegaconf",
    "numpy",
    "scikit-learn",
    "wandb",
    "math-verify",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def composition(examples: Sequence[Example]) -> dict[str, Any]:
    """What a set of examples is made of: counts per level and type, and the planted-defect counts that a
    synthetic dataset's oracle fields record (read for reporting only, never by methods). One pass over
    the examples' metadata (streamed from the Arrow column for a pool on disk)."""
    levels: Counter[str] = Counter()
    types: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    has_domain = has_defects = False
    defects = Counter()
    for m in iter_meta(examples):
        levels[str(m.get("level"))] += 1
        types[str(m.get("type"))] += 1
        domains[str(m.get("domain"))] += 1
        has_domain = has_domain or "domain" in m
        if "is_noisy" in m:
            has_defects = True
        defects["noisy"] += bool(m.get("is_noisy"))
        defects["junk"] += bool(m.get("is_junk"))
        defects["in_duplicate_group"] += m.get("dup_group") is not None
        defects["duplicate_copies"] += bool(m.get("is_duplicate"))
    summary: dict[str, Any] = {
        "n": len(examples),
        "per_level": dict(sorted(levels.items())),
        "per_type": dict(sorted(types.items())),
    }
    if has_domain:  # text corpora: the source each document came from
        summary["per_domain"] = dict(sorted(domains.items()))
    if has_defects:
        summary.update(
            {key: defects[key] for key in ("noisy", "junk", "in_duplicate_group", "duplicate_copies")}
        )
    return summary


def selection_summary(datamodule: Any) -> dict[str, Any]:
    """Pool size, budget, the distinct ids trained on with their sorted-id sha256, and each round."""
    rounds = datamodule.rounds
    selected = datamodule.selected_examples()
    ids = [ex.id for ex in selected]
    return {
        "pool_size": len(datamodule.pool),
        "budget": datamodule.budget,
        "budget_size": datamodule.budget_size,
        "n_selected": len(ids),
        "fraction": len(ids) / max(1, len(datamodule.pool)),
        "ids_sha256": ids_sha256(ids),
        "weighted": any(r.weights is not None for r in rounds),
        "rounds": [
            {
                "round": r.round,
                "epoch": r.epoch,
                "global_step": r.global_step,
                "n": len(r.ids),
                "ids_sha256": r.ids_sha256,
                "forward_tokens": r.forward_tokens,
                "seconds": round(r.seconds, 4),
                "diagnostics": r.diagnostics,
                # what this round trained on (levels, domains, planted defects): what reports chart per round
                "composition": composition(datamodule.selected_examples([r])),
            }
            for r in rounds
        ],
        "composition": composition(selected),
        # the same counts over the whole pool: the reference a report sets selections against
        "pool_composition": composition(datamodule.pool),
        # in-batch reweighting methods (IR-DRO, MidRanking): settings and run means of the weight metrics
        **(
            {"reweighting": datamodule.reweighting_summary()}
            if hasattr(datamodule, "reweighting_summary")
            else {}
        ),
    }


def selection_rows(datamodule: Any) -> list[dict[str, Any]]:
    """One row per (round, selected id) with its score and weight."""
    rows = []
    for r in datamodule.rounds:
        for k, example_id in enumerate(r.ids):
            rows.append(
                {
                    "round": r.round,
                    "id": example_id,
                    "score": None if r.scores is None else r.scores[k],
                    "weight": 1.0 if r.weights is None else r.weights[k],
                }
            )
    return rows


def write_run_files(
    output_dir: str | Path,
    results: dict[str, Any],
    selection: list[dict],
    predictions: list[dict],
    selection_parquet_above: int = PARQUET_ABOVE,
) -> Path:
    """Write the selection and prediction files, then results.json last (its presence marks a finished run).
    The selection is ``selection.jsonl``, or ``selection.parquet`` above ``selection_parquet_above`` rows
    (:mod:`p3bench.selection_files`)."""
    output_dir = Path(output_dir)
    write_selection(output_dir, selection, selection_parquet_above)
    atomic_write_jsonl(output_dir / PREDICTIONS_FILE, predictions)
    return atomic_write_json(output_dir / RESULTS_FILE, results)


# one set of names for every method's headline numbers: the report, the wandb summary and the notebook
PLANTED_DEFECTS = {"noisy": "noisy", "junk": "junk", "duplicate": "duplicate_copies"}


#: the continuous metrics that head a table near the accuracy floor, in order of preference: the probability of
#: the correct final answer (tasks with a checkable answer; bounded, so a few confidently wrong answers do not
#: swamp it: on the default testbed the controls separate on it and not on the answer's bits per byte,
#: experiments/synthetic_budgets/README.md), then the answer's bits per byte, else the whole solution's
#: (name -> whether higher is better)
CONTINUOUS_HEADLINES: dict[str, bool] = {
    "test/answer_prob": True,
    "test/answer_bpb": False,
    "test/solution_bpb": False,
}


#: the headline test metric of each task kind and whether higher is better (qa and code: accuracy, which a
#: report replaces near its floor by the first of CONTINUOUS_HEADLINES); for instructions, ROUGE-L F1 of the
#: generated response (DELIFT, arXiv 2411.04425, reads ROUGE first)
TASK_HEADLINES: dict[str, tuple[str, bool]] = {
    "qa": ("test/accuracy", True),
    "code": ("test/accuracy", True),
    "lm": ("test/perplexity", False),
    "instruction": ("test/rouge_l", True),
}
#: the instruction task's other test metrics, reported beside ROUGE-L in this order (name -> higher is
#: better): the paper's embedding similarity and judge, and the reference response's bits per byte (the
#: continuous metric that decides small-scale comparisons, DataDecide arXiv 2504.11393)
INSTRUCTION_BESIDE_HEADLINE: dict[str, bool] = {
    "test/embedding_similarity": True,
    "test/response_bpb": False,
    "test/judge_score": True,
}


def quality_metric(results: dict[str, Any]) -> tuple[str, bool]:
    """The run's headline quality metric and whether higher is better: that of its task kind
    (:data:`TASK_HEADLINES`: test accuracy for question answering and code, held-out perplexity for
    language modelling, ROUGE-L for instructions), validation loss when the run was not tested."""
    metrics = results.get("metrics", {})
    task = results.get("dataset", {}).get("task")
    name, higher = TASK_HEADLINES.get(task, TASK_HEADLINES["qa"])
    if name in metrics:
        return name, higher
    return "val/loss", False


def defect_shares(comp: dict[str, Any]) -> dict[str, float]:
    """Share of a composition's ``n`` examples that are planted noisy, junk or duplicate copies, for each
    kind it counts; empty when it counts no example."""
    n = comp.get("n", 0)
    if not n:
        return {}
    return {defect: comp[key] / n for defect, key in PLANTED_DEFECTS.items() if key in comp}


def trained_defect_shares(results: dict[str, Any]) -> dict[str, float]:
    """Share of the (round, example) pairs a run trained on that were planted noisy, junk or duplicate
    copies (datasets with oracle fields only; a dynamic method's example counts once per round it is in).
    Runs written before rounds recorded their composition fall back to the distinct selected examples."""
    selection = results.get("selection", {})
    parts = [
        r["composition"] for r in selection.get("rounds") or [] if isinstance(r.get("composition"), dict)
    ]
    if not parts:
        parts = [selection["composition"]] if isinstance(selection.get("composition"), dict) else []
    if not parts or not all("noisy" in p for p in parts):
        return {}
    keys = [key for key in PLANTED_DEFECTS.values() if all(key in p for p in parts)]
    return defect_shares({key: sum(p.get(key, 0) for p in parts) for key in ["n", *keys]})


def summary_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The run's headline numbers under names shared by every method (wandb summary ``summary/<name>``,
    report columns): quality and its metric, data fraction, compute (tokens, and FLOPs where the run recorded
    them), time, and planted-defect shares."""
    metrics, selection, compute = results["metrics"], results["selection"], results["compute"]
    name, higher = quality_metric(results)
    seconds = compute.get("seconds") or {}
    train_tokens, selection_tokens = compute.get("train_tokens"), compute.get("selection_forward_tokens")
    summary: dict[str, Any] = {
        "quality": metrics.get(name),
        "quality_metric": name,
        "quality_higher_is_better": higher,
        "test_accuracy": metrics.get("test/accuracy"),
        "test_perplexity": metrics.get("test/perplexity"),
        # the continuous metrics a report heads its tables with near the accuracy floor, and their errors
        "test_accuracy_ci_low": metrics.get("test/accuracy_ci_low"),
        "test_accuracy_ci_high": metrics.get("test/accuracy_ci_high"),
        "test_answer_prob": metrics.get("test/answer_prob"),
        "test_answer_prob_se": metrics.get("test/answer_prob_se"),
        "test_answer_bpb": metrics.get("test/answer_bpb"),
        "test_answer_bpb_se": metrics.get("test/answer_bpb_se"),
        "test_solution_bpb": metrics.get("test/solution_bpb"),
        "test_solution_bpb_se": metrics.get("test/solution_bpb_se"),
        # the instruction task's response metrics (p3bench.eval.instruction) and their errors
        **{
            f"test_{name}{suffix}": metrics.get(f"test/{name}{suffix}")
            for name in ("rouge_l", "embedding_similarity", "response_bpb", "judge_score")
            for suffix in ("", "_se")
        },
        "val_loss": metrics.get("val/loss"),
        "data_fraction": selection.get("fraction"),
        "n_selected": selection.get("n_selected"),
        "pool_size": selection.get("pool_size"),
        "rounds": len(selection.get("rounds") or []),
        "train_tokens": compute.get("train_tokens"),
        "selection_forward_tokens": compute.get("selection_forward_tokens"),
        "total_compute_tokens": None
        if train_tokens is None and selection_tokens is None
        else (train_tokens or 0) + (selection_tokens or 0),
        # FLOPs (p3bench.compute: 2N a forward token, 6N a training token, per model); absent in older runs
        "train_flops": compute.get("train_flops"),
        "selection_flops": compute.get("selection_flops"),
        "total_compute_flops": compute.get("total_flops"),
        "optimizer_steps": compute.get("optimizer_steps"),
        "seconds_total": seconds.get("total"),
        "seconds_selection": seconds.get("selection"),
    }
    for defect, share in trained_defect_shares(results).items():
        summary[f"trained_share_{defect}"] = share
    for key, value in (selection.get("reweighting") or {}).items():
        if key.startswith("mean_mass_"):  # in-batch reweighting: the loss weight planted examples received
            summary[f"weight_mass_{key.removeprefix('mean_mass_')}"] = value
    return {k: v for k, v in summary.items() if v is not None}
