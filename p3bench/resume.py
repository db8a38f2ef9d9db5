"""What a resumed run must keep: the settings that define what it computes, and its loss history.

A run's *identity* is its resolved config, flattened to ``key.path -> value``, less the settings listed in
:data:`MAY_CHANGE_ON_RESUME` (docs/results.md). Every checkpoint records it (:class:`p3bench.callbacks.
RunState`), and a resume whose identity differs is refused with one line naming the differing keys, so that
a run never reports settings other than the ones it was trained with.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from p3bench.errors import CheckpointError
from p3bench.results import PREVIOUS_RESULTS_FILE, RESULTS_FILE
from p3bench.utils.io import atomic_output

log = logging.getLogger(__name__)

#: where a checkpoint keeps what p3bench adds to Lightning's state
CHECKPOINT_KEY = "p3bench"

#: settings a resume may change: how long it trains, what it evaluates after training, where and how it
#: writes and what it shows. A key matches itself and every key below it. Anything else is the run's identity.
MAY_CHANGE_ON_RESUME = (
    "ckpt_path",
    "trainer.max_epochs",
    "trainer.max_steps",
    "test",
    "test_sampling",
    "paths",
    "trainer.default_root_dir",
    "logger",
    "callbacks",
    "loader.num_workers",
    "progress",
    "method.progress",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # where the pool lives and how its files are written: the same selections either way
    "pool",
)

#: of those, the ones that change the results a finished run reports
CHANGES_RESULTS = ("trainer.max_epochs", "trainer.max_steps", "test", "test_sampling")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


def may_change_on_resume(key: str) -> bool:
    return _matches(key, MAY_CHANGE_ON_RESUME)


def flatten_config(node: DictConfig | Mapping, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of ``node`` (lists and empty mappings are leaves), resolved, with
    the keys matching ``skip`` left out before they are resolved."""
    skip = tuple(skip)
    flat: dict[str, Any] = {}
    for key in node:
        full = f"{prefix}{key}"
        if _matches(full, skip):
            continue
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
            flat[full] = "???"  # a mandatory value nobody set
            continue
        value = node[key]
        if isinstance(value, (DictConfig, Mapping)) and len(value) > 0:
            flat.update(flatten_config(value, f"{full}.", skip))
        elif isinstance(value, (DictConfig, ListConfig)):
            flat[full] = OmegaConf.to_container(value, resolve=True)
        else:
            flat[full] = value
    return flat


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The settings that define what the run computes: every resolved config key but those that may change
    on resume."""
    return flatten_config(cfg, skip=MAY_CHANGE_ON_RESUME)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
        return False  # 1 (a count) and 1.0 (a fraction) are different budgets
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b if not isinstance(a, (list, tuple)) else list(a) == list(b)


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key=now (checkpoint: before)`` for each identity key whose value differs, sorted."""
    missing = object()
    differences = []
    for key in sorted(set(saved) | set(current)):
        if may_change_on_resume(key):
            continue
        before, now = saved.get(key, missing), current.get(key, missing)
        if before is not missing and now is not missing and _same(before, now):
            continue
        shown_now = "(absent)" if now is missing else repr(now)
        shown_before = "absent" if before is missing else repr(before)
        differences.append(f"{key}={shown_now} (checkpoint: {shown_before})")
    return differences


def check_identity(
    checkpoint: Mapping[str, Any], identity: Mapping[str, Any], ckpt_path: str, path: Path
) -> None:
    """Refuse, in one line naming the keys, a resume whose settings differ from the checkpoint's run."""
    saved = (checkpoint.get(CHECKPOINT_KEY) or {}).get("identity")
    if saved is None:
        log.warning(
            "checkpoint %s records no run settings (written before they were recorded): resuming without "
            "checking that the settings match",
            path,
        )
        return
    differences = identity_differences(saved, identity)
    if differences:
        shown = "; ".join(differences[:6]) + (
            f"; and {len(differences) - 6} more" if len(differences) > 6 else ""
        )
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: checkpoint {path} was written by a run with other settings: {shown}; "
            "expected the run's own settings (a resume may change only those docs/results.md lists, such as "
            "trainer.max_epochs)"
        )


def recorded_fit_metrics(checkpoint: Mapping[str, Any]) -> dict[str, float]:
    """The training and validation metrics the run had when the checkpoint was written."""
    return dict((checkpoint.get(CHECKPOINT_KEY) or {}).get("fit_metrics") or {})


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def earlier_rows(rows: list[dict[str, str]], global_step: int) -> list[dict[str, str]]:
    """The rows a resumed run keeps from before its restart: those logged at steps the checkpoint had
    completed (the resumed run logs the later ones again), without a final summary row."""
    kept = []
    for row in rows:
        if any(key.startswith("final/") and value not in ("", None) for key, value in row.items()):
            continue
        try:
            step = float(row.get("step") or "nan")
        except ValueError:
            continue
        if step < global_step:
            kept.append(row)
    return kept


def keep_csv_history(loggers: Iterable[Any], global_step: int) -> None:
    """Carry each CSV logger's rows from before the restart into the resumed run's ``metrics.csv``.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. The earlier rows are moved
    aside, the logger started, and the rows the checkpoint covers written back (atomically) as the start of
    the file, with the logger's header set to theirs so that its rows are appended below them."""
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        aside = path.with_name("metrics.before-resume.csv")
        if aside.is_file() and not path.is_file():  # an earlier resume stopped before it wrote them back
            os.replace(aside, path)
        if not path.is_file():
            continue
        keys, rows = read_csv_rows(path)
        os.replace(path, aside)  # kept until the rows are back, whatever happens in between
        with warnings.catch_warnings():  # "exists and is not empty": the rows are written back below
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = logger.experiment
        keys = sorted(keys)
        with atomic_output(path, "w") as handle:
            out = csv.DictWriter(handle, fieldnames=keys, lineterminator="\r\n")
            out.writeheader()
            out.writerows(earlier_rows(rows, global_step))
        writer.metrics_keys = list(keys)
        aside.unlink()


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )


def _value_at(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def set_aside_outdated_results(output_dir: Path, cfg: DictConfig, results_file: str = RESULTS_FILE) -> None:
    """Keep a finished run's results.json through a resume that reports the same things (it is replaced
    atomically when the resume finishes); move it to ``results.previous.json`` when the resume changes what
    the results report (more epochs, other test settings), so that the run directory never shows results of
    settings other than its current ones while the earlier results are not lost."""
    path = output_dir / results_file
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return
    changed = [key for key in CHANGES_RESULTS if _value_at(before, key) != _plain(OmegaConf.select(cfg, key))]
    if changed:
        previous = path.with_name(PREVIOUS_RESULTS_FILE)
        os.replace(path, previous)
        log.info(
            "the resume changes %s: the earlier results are kept as %s until it finishes",
            ", ".join(changed),
            previous.name,
        )
