"""Relaunching a sweep: a finished job leaves a completion marker, and a relaunch skips it.

When a run finishes, :func:`write_completion_marker` writes ``completed.json`` into its run directory
(atomically, on global rank zero only) with the SHA-256 of the results.json the run wrote and a fingerprint
of the settings that define what it computed: the run's identity (:func:`p3bench.resume.run_identity`) plus the settings a resume may change that change the
results (:data:`p3bench.resume.CHANGES_RESULTS`: the epochs, steps and test settings). Paths, loggers,
callbacks, progress bars, ``ckpt_path`` and the loader's workers do not enter it.

A sweep launched again into the same directory (``hydra.sweep.dir`` given fixed) decides job by job
(:func:`relaunch_decision`):

- a marker with the job's fingerprint beside the ``results.json`` it was written for: the job is skipped
  and returns the value it returned when it finished;
- a run directory with an intact checkpoint but no marker of the job's settings (failed, interrupted, or
  finished with other epochs or test settings): the job resumes from that checkpoint (``ckpt_path=last``,
  :mod:`p3bench.checkpoints`); the resume refuses, in one line naming the keys, a checkpoint written with
  other settings (:func:`p3bench.resume.check_identity`);
- otherwise the job runs from the start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from p3bench.results import RESULTS_FILE
from p3bench.resume import CHANGES_RESULTS, MAY_CHANGE_ON_RESUME, flatten_config
from p3bench.utils.io import atomic_write_json

log = logging.getLogger(__name__)

#: the completion marker a finished run leaves in its run directory
COMPLETION_FILE = "completed.json"
MARKER_VERSION = 1
#: settings that do not change what a run computes, left out of its fingerprint
NOT_FINGERPRINTED = tuple(key for key in MAY_CHANGE_ON_RESUME if key not in CHANGES_RESULTS)

SKIP, RESUME, RUN = "skip", "resume", "run"
#: added to the error of a relaunched job that cannot resume its run directory's checkpoint
RESUME_HINT = (
    "the sweep job resumes from its run directory's last checkpoint when relaunched: relaunch with the run's "
    "settings, or give the sweep another hydra.sweep.dir to start it afresh"
)


def _plain(value: Any) -> Any:
    """A JSON value that compares as the config value does: floats that are not finite as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fingerprinted_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings a run's fingerprint covers: ``key.path -> value``, sorted."""
    flat = flatten_config(cfg, skip=NOT_FINGERPRINTED)
    return {key: _plain(flat[key]) for key in sorted(flat)}


def config_fingerprint(cfg: DictConfig) -> str:
    """SHA-256 of :func:`fingerprinted_settings` as canonical JSON. Types count: budget 1 (a count) and
    1.0 (a fraction) differ."""
    settings = fingerprinted_settings(cfg)
    text = json.dumps(
        [[key, type(value).__name__, value] for key, value in settings.items()],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_completion_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The run directory's completion marker, or None when it is absent or unreadable."""
    path = Path(run_dir) / COMPLETION_FILE
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("config_sha256"), str) else None


def file_sha256(path: Path) -> str | None:
    """SHA-256 of the file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def is_global_zero() -> bool:
    """Whether this process is global rank zero (Lightning's rank, set from the launcher's environment)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_completion_marker(
    run_dir: str | Path, cfg: DictConfig, value: Any, overrides: list[str] | None = None
) -> Path | None:
    """Mark the run in ``run_dir`` finished with ``cfg``'s settings; ``value`` is what the job returned
    (returned again when a relaunch skips it). Written atomically by global rank zero; None elsewhere."""
    if not is_global_zero():
        return None
    marker = {
        "version": MARKER_VERSION,
        "config_sha256": config_fingerprint(cfg),
        "results_sha256": file_sha256(Path(run_dir) / RESULTS_FILE),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "results_file": RESULTS_FILE,
        "value": _plain(value),
        "overrides": list(overrides or []),
    }
    return atomic_write_json(Path(run_dir) / COMPLETION_FILE, marker)


@dataclass
class RelaunchDecision:
    """What a sweep job does in its run directory: ``skip`` (finished with the same settings; ``marker``
    is the completion marker), ``resume`` (from the directory's newest intact checkpoint) or ``run``."""

    action: str
    reason: str
    marker: dict[str, Any] | None = None

    @property
    def value(self) -> Any:
        """What the skipped job returned when it finished."""
        return (self.marker or {}).get("value")


def relaunch_decision(run_dir: str | Path, cfg: DictConfig) -> RelaunchDecision:
    """Skip, resume or run the sweep job whose run directory is ``run_dir`` and whose config is ``cfg``."""
    run_dir = Path(run_dir)
    marker = read_completion_marker(run_dir)
    results_sha256 = file_sha256(run_dir / RESULTS_FILE)
    if marker is not None and results_sha256 is not None and marker.get("results_sha256") == results_sha256:
        if marker["config_sha256"] == config_fingerprint(cfg):
            return RelaunchDecision(SKIP, "finished with the same config", marker)
        finished = "finished with other settings"
    else:
        finished = "not finished"
    if cfg.get("ckpt_path") in (None, ""):
        from p3bench.checkpoints import CHECKPOINT_DIR, intact_checkpoints  # torch: only when a job starts

        intact, _ = intact_checkpoints(run_dir / CHECKPOINT_DIR)
        if intact:
            return RelaunchDecision(RESUME, f"{finished}: resuming from its last checkpoint")
    return RelaunchDecision(RUN, finished)


def apply_relaunch_decision(decision: RelaunchDecision, cfg: DictConfig) -> None:
    """Before a job that is not skipped: resume from the last checkpoint when the decision says so. A
    marker of other settings stays until the run replaces it: it belongs to the results.json beside it."""
    from omegaconf import read_write

    if decision.action == SKIP:
        raise ValueError("a skipped job is not run")
    if decision.action == RESUME:
        with read_write(cfg):
            cfg.ckpt_path = "last"  # p3bench.checkpoints.LAST: the newest intact checkpoint of the run
