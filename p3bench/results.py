"""The results schema every run writes, and the selection and prediction files beside it.

``results.json`` (schema documented in docs/results.md) holds the config, package versions, the seed, a
selection summary with the sha256 of the sorted selected ids, test and validation metrics, and compute
(training tokens, selection forward tokens, wall times). All files are written atomically.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p3bench.data.example import Example
from p3bench.utils.hashing import ids_sha256
from p3bench.utils.io import atomic_write_json, atomic_write_jsonl

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
SELECTION_FILE = "selection.jsonl"
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
    synthetic dataset's oracle fields record (read for reporting only, never by methods)."""
    meta = [ex.meta for ex in examples]
    summary: dict[str, Any] = {
        "n": len(examples),
        "per_level": dict(sorted(Counter(str(m.get("level")) for m in meta).items())),
        "per_type": dict(sorted(Counter(str(m.get("type")) for m in meta).items())),
    }
    if any("is_noisy" in m for m in meta):
        summary["noisy"] = sum(bool(m.get("is_noisy")) for m in meta)
        summary["junk"] = sum(bool(m.get("is_junk")) for m in meta)
        summary["in_duplicate_group"] = sum(m.get("dup_group") is not None for m in meta)
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
            }
            for r in rounds
        ],
        "composition": composition(selected),
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
    output_dir: str | Path, results: dict[str, Any], selection: list[dict], predictions: list[dict]
) -> Path:
    """Write the selection and prediction files, then results.json last (its presence marks a finished run)."""
    output_dir = Path(output_dir)
    atomic_write_jsonl(output_dir / SELECTION_FILE, selection)
    atomic_write_jsonl(output_dir / PREDICTIONS_FILE, predictions)
    return atomic_write_json(output_dir / RESULTS_FILE, results)
