"""What a run tells its loggers about selection.

- :class:`SelectionMetrics`, a callback: each selection round's metrics (``selection/*``) go to every logger
  of the trainer (CSV and wandb alike) at the step the round starts training.
- :func:`tag_control_run`, as training starts: the tag ``control`` on the wandb run of a control method.
- :func:`log_run_to_wandb`, after the run: the headline numbers as ``summary/<name>`` in the wandb run
  summary (the names of :func:`p3bench.results.summary_metrics`, the same for every method), the selection
  diagnostics as wandb tables, and the selection file as an artifact.

docs/wandb.md lists the names and a dashboard built on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from p3bench.methods import is_control
from p3bench.results import (
    PLANTED_DEFECTS,
    RESULTS_FILE,
    SELECTION_FILE,
    composition,
    defect_shares,
    summary_metrics,
)
from p3bench.selection_files import SELECTION_PARQUET

#: prefix of the per-round metrics
PREFIX = "selection/"
#: the wandb tables :func:`log_run_to_wandb` logs
COMPOSITION_TABLE = "selection/composition"
DEFECTS_TABLE = "selection/defects"
ROUNDS_TABLE = "selection/rounds"
#: the artifact type of the selection file
ARTIFACT_TYPE = "selection"
#: the wandb tag of a run whose method is a control (a selection whose answer is known)
CONTROL_TAG = "control"
#: the per-round names every round has; a diagnostic of the same name is logged as ``diagnostics_<name>``
_BASE_NAMES = ("round", "n", "fraction", "forward_tokens", "seconds")
#: the composition's categories a round's shares and the composition table break down
_CATEGORY_KINDS = {"level": "per_level", "domain": "per_domain", "type": "per_type"}
#: diagnostics that repeat the composition (logged as shares): not flattened again
_COMPOSITION_DIAGNOSTICS = frozenset(_CATEGORY_KINDS.values())


# per-round metrics -------------------------------------------------------------------------------------------
def numeric_diagnostics(diagnostics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a round's diagnostics, nested dicts flattened with ``_`` (``pool_score_summary_mean``),
    booleans as 0/1; strings, lists and the per-level/type/domain counts (the composition's) are left out.
    Names are cut to letters, digits, ``_``, ``-`` and ``.``."""
    flat: dict[str, float] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                visit(f"{prefix}_{key}" if prefix else str(key), inner)
        elif isinstance(value, bool):
            flat[_clean(prefix)] = int(value)
        elif isinstance(value, (int, float)):
            flat[_clean(prefix)] = value

    for key, value in diagnostics.items():
        if key not in _COMPOSITION_DIAGNOSTICS:
            visit(str(key), value)
    return flat


def composition_shares(comp: Mapping[str, Any]) -> dict[str, float]:
    """Shares of a composition (:func:`p3bench.results.composition`): ``level_<k>_share`` and
    ``domain_<name>_share`` (a breakdown is left out when no example has that label), and ``share_<defect>``
    for the planted defects (noisy, junk, duplicate) of synthetic data."""
    n = comp.get("n", 0)
    if not n:
        return {}
    shares: dict[str, float] = {}
    for kind in ("level", "domain"):
        counts = _labelled(comp.get(_CATEGORY_KINDS[kind]))
        for category, count in counts.items():
            shares[f"{kind}_{_clean(category)}_share"] = count / n
    shares.update({f"share_{defect}": share for defect, share in defect_shares(dict(comp)).items()})
    return shares


def round_metrics(record: Any, pool: Sequence[Any], index_of: Mapping[str, int]) -> dict[str, float]:
    """The ``selection/*`` metrics of one round (a :class:`p3bench.methods.base.RoundRecord`) over ``pool``:
    round, n, fraction (n / pool size), forward_tokens, seconds, the numeric diagnostics, and the shares of
    the round's composition, computed as results.json computes it."""
    n = len(record.ids)
    metrics: dict[str, float] = {
        "round": int(record.round),
        "n": n,
        "fraction": n / max(1, len(pool)),
        "forward_tokens": int(record.forward_tokens),
        "seconds": float(record.seconds),
    }
    for key, value in numeric_diagnostics(record.diagnostics).items():
        metrics[f"diagnostics_{key}" if key in _BASE_NAMES else key] = value
    metrics.update(composition_shares(composition([pool[index_of[i]] for i in record.ids])))
    return {PREFIX + key: value for key, value in metrics.items()}


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning's own logging uses (its ``trainer/global_step`` in wandb, ``step`` in metrics.csv):
    the count of batches that stepped the optimizer, which is the global step with one optimizer."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


class SelectionMetrics(pl.Callback):
    """Log each selection round's ``selection/*`` metrics (:func:`round_metrics`) to every logger of the
    trainer, on global rank zero, once per round.

    A static method's round 0 is selected in the datamodule's ``setup``; a per-epoch dynamic method selects
    when Lightning (re)loads the train dataloader, which its fit loop does just before
    ``on_train_epoch_start``. So new rounds are logged there, at the step that epoch starts from, which keeps
    the logged steps in Lightning's order. A step-scheduled method selects when the first batch of a round is
    drawn; that round is logged at the next ``on_train_batch_start``, at its own step. The rounds logged are
    checkpointed: a resumed run does not log the restored ones again.
    """

    def __init__(self) -> None:
        self.logged_rounds: set[int] = set()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            tag_control_run(trainer.loggers, getattr(trainer.datamodule, "name", None))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.log_new_rounds(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # a step-scheduled round is selected when its first batch is drawn, just before this hook
        rounds = getattr(trainer.datamodule, "rounds", None)
        if rounds and len(rounds) != len(self.logged_rounds):
            self.log_new_rounds(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.log_new_rounds(trainer)  # any round recorded after the last epoch start

    def log_new_rounds(self, trainer: pl.Trainer) -> None:
        datamodule = trainer.datamodule
        rounds = getattr(datamodule, "rounds", None)
        if not rounds:
            return
        new = [r for r in rounds if r.round not in self.logged_rounds]
        if not new:
            return
        self.logged_rounds.update(r.round for r in new)
        if not trainer.is_global_zero or not trainer.loggers:
            return
        step = logging_step(trainer)
        for record in sorted(new, key=lambda r: r.round):
            metrics = round_metrics(record, datamodule.pool, datamodule.index_of)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        for logger in trainer.loggers:
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        return {"logged_rounds": sorted(self.logged_rounds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged_rounds = set(state_dict.get("logged_rounds", []))


# the wandb run after training --------------------------------------------------------------------------------
def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The Lightning ``WandbLogger`` instances among ``loggers``."""
    return [logger for logger in loggers if type(logger).__name__ == "WandbLogger"]


def tag_control_run(loggers: Iterable[Any], method: str | None) -> None:
    """Add the tag :data:`CONTROL_TAG` to each wandb run among ``loggers`` when ``method`` is a control
    (:func:`p3bench.methods.is_control`), so that dashboards can keep controls apart from methods."""
    if method is None or not is_control(method):
        return
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        tags = tuple(run.tags or ())
        if CONTROL_TAG not in tags:
            run.tags = (*tags, CONTROL_TAG)


def log_run_to_wandb(loggers: Iterable[Any], results: dict[str, Any], output_dir: str | Path) -> None:
    """For each wandb logger among ``loggers`` (none: nothing happens): write ``summary/<name>`` for every
    headline number of :func:`p3bench.results.summary_metrics` into the run summary, log the selection
    tables (composition, planted defects, rounds) and log the run directory's selection.jsonl and
    results.json as an artifact of type ``selection``. Call on global rank zero, before the run finishes."""
    targets = wandb_loggers(loggers)
    if not targets:
        return
    import wandb

    output_dir = Path(output_dir)
    summary = {f"summary/{key}": value for key, value in summary_metrics(results).items()}
    tables = selection_tables(results)
    step = results.get("compute", {}).get("optimizer_steps")
    for logger in targets:
        run = logger.experiment
        run.summary.update(summary)
        logged = {key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()}
        if logged:
            if step is not None:
                logged["trainer/global_step"] = int(step)
            run.log(logged)
        artifact = wandb.Artifact(
            artifact_name(results), type=ARTIFACT_TYPE, metadata=artifact_metadata(results)
        )
        for name in (SELECTION_FILE, SELECTION_PARQUET, RESULTS_FILE):
            if (output_dir / name).is_file():
                # the run's files are final: referenced where they are rather than copied to wandb's staging
                artifact.add_file(str(output_dir / name), name=name, policy="immutable")
        run.log_artifact(artifact)


def artifact_name(results: Mapping[str, Any]) -> str:
    """``selection-<experiment>-<method>-<dataset>-b<budget>-s<seed>``, with characters wandb does not allow
    in artifact names (anything but letters, digits, ``-``, ``_`` and ``.``) replaced by ``-``."""
    run = results["run"]
    name = f"selection-{run['experiment']}-{run['method']}-{run['dataset']}-b{run['budget']}-s{run['seed']}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:128]


def artifact_metadata(results: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the selection: its sorted-id sha256 and size, and the run's method, budget, seed."""
    run, selection = results["run"], results["selection"]
    return {
        "ids_sha256": selection.get("ids_sha256"),
        "n_selected": selection.get("n_selected"),
        "pool_size": selection.get("pool_size"),
        "rounds": len(selection.get("rounds", [])),
        "experiment": run.get("experiment"),
        "method": run.get("method"),
        "dataset": run.get("dataset"),
        "budget": run.get("budget"),
        "seed": run.get("seed"),
    }


def selection_tables(results: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The selection tables of a run, as (columns, rows) by wandb key:

    - ``selection/composition``: round, kind (level, domain or type), category, count, share;
    - ``selection/defects`` (synthetic data): round, n, the planted-defect counts and ``share_<defect>``;
    - ``selection/rounds``: round, epoch, global_step, n, fraction, forward_tokens, seconds, ids_sha256 and
      a column per numeric diagnostic (empty where a round lacks it).
    """
    selection = results.get("selection", {})
    rounds = selection.get("rounds", [])
    pool_size = selection.get("pool_size") or 0
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}

    composition_rows = []
    for r in rounds:
        comp = r.get("composition") or {}
        n = comp.get("n", 0)
        for kind, key in _CATEGORY_KINDS.items():
            for category, count in _labelled(comp.get(key)).items():
                composition_rows.append([r["round"], kind, category, count, count / n if n else None])
    if composition_rows:
        tables[COMPOSITION_TABLE] = (["round", "kind", "category", "count", "share"], composition_rows)

    defect_keys = ["noisy", "junk", "duplicate_copies", "in_duplicate_group"]
    with_defects = [r for r in rounds if "noisy" in (r.get("composition") or {})]
    if with_defects:
        columns = ["round", "n", *defect_keys, *(f"share_{defect}" for defect in PLANTED_DEFECTS)]
        rows = []
        for r in with_defects:
            comp = r["composition"]
            shares = defect_shares(comp)
            rows.append(
                [
                    r["round"],
                    comp.get("n", 0),
                    *(comp.get(key) for key in defect_keys),
                    *(shares.get(defect) for defect in PLANTED_DEFECTS),
                ]
            )
        tables[DEFECTS_TABLE] = (columns, rows)

    if rounds:
        diagnostics = [numeric_diagnostics(r.get("diagnostics") or {}) for r in rounds]
        base = ["round", "epoch", "global_step", "n", "fraction", "forward_tokens", "seconds", "ids_sha256"]
        extra = sorted({key for d in diagnostics for key in d} - set(base))
        rows = [
            [
                r.get("round"),
                r.get("epoch"),
                r.get("global_step"),
                r.get("n"),
                r["n"] / pool_size if pool_size and "n" in r else None,
                r.get("forward_tokens"),
                r.get("seconds"),
                r.get("ids_sha256"),
                *(_finite_or_none(d.get(key)) for key in extra),
            ]
            for r, d in zip(rounds, diagnostics, strict=True)
        ]
        tables[ROUNDS_TABLE] = ([*base, *extra], rows)
    return tables


# helpers -------------------------------------------------------------------------------------------------
def _labelled(counts: Mapping[str, int] | None) -> dict[str, int]:
    """A composition breakdown, or nothing when no example carries the label (all counted under "None")."""
    counts = dict(counts or {})
    return {} if set(counts) <= {"None"} else counts


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def _finite_or_none(value: Any) -> Any:
    """A table cell: non-finite numbers as empty cells (wandb tables serialise to JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
