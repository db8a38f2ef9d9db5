"""Find and read run directories: finished runs, and the failed, unfinished, corrupt and never-started ones,
each with the reason, so that a report lists every run it was given and drops none silently."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from p3bench.results import RESULTS_FILE, summary_metrics
from p3bench.selection_files import read_selection
from p3bench.sweeps import read_completion_marker

OK, FAILED, UNFINISHED, CORRUPT, NOT_STARTED = "ok", "failed", "unfinished", "corrupt", "not started"
#: a sweep's job that never started there, whose settings finished in another given directory
RUN_ELSEWHERE = "run elsewhere"
#: a multirun whose job list could not be expanded (so its never-started jobs are unknown)
NOT_EXPANDED = "sweep not expanded"
REQUIRED_KEYS = ("run", "selection", "metrics", "compute")
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
#: the fields that, with the variant, say which settings a run had
SETTINGS = ("experiment", "dataset", "model", "regime", "method", "budget", "seed")
#: overrides that do not change what a run computes, or that are identity fields of their own
_NOT_VARIANT_KEYS = {
    "method",
    "budget",
    "seed",
    "experiment",
    "experiment_name",
    "model",
    "regime",
    "dataset",
}
_NOT_VARIANT_KEYS |= {"ckpt_path", "callbacks", "offline"}
_NOT_VARIANT_PREFIXES = ("paths.", "hydra.", "hydra/", "logger", "trainer.enable_progress_bar", "progress")
METRICS_CSV = Path("csv") / "metrics.csv"


@dataclass
class RunRecord:
    """One run directory: its identity (from results.json, else from the config Hydra saved when the job
    started, else from the sweep's overrides), its status, why it is not ``ok``, and its results."""

    path: Path
    status: str
    problem: str | None = None
    results: dict[str, Any] | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    #: the completion marker the run left when it finished (p3bench/sweeps.py), None without one
    completion_marker: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def experiment(self) -> str:
        return str(self.identity.get("experiment", "?"))

    @property
    def dataset(self) -> str:
        return str(self.identity.get("dataset", "?"))

    @property
    def method(self) -> str:
        return str(self.identity.get("method", "?"))

    @property
    def budget(self) -> Any:
        return self.identity.get("budget", "?")

    @property
    def seed(self) -> Any:
        return self.identity.get("seed", "?")

    @property
    def variant(self) -> tuple[str, ...]:
        """The run's other command-line settings (e.g. ``trainer.max_epochs=4``), sorted: runs that differ in
        them are not averaged together."""
        return tuple(self.identity.get("variant") or ())

    def settings(self) -> tuple[str, ...]:
        return (*(str(self.identity.get(k)) for k in SETTINGS), *self.variant)

    @property
    def whole_pool(self) -> bool:
        """Trains on the whole pool whatever the budget (full, irdro, midranking, or a budget of 1.0)."""
        if self.results is None:
            return False
        selection = self.results["selection"]
        size, pool = selection.get("budget_size"), selection.get("pool_size")
        return isinstance(size, int) and isinstance(pool, int) and size == pool

    @property
    def budget_label(self) -> str:
        """The column a run is reported in: its budget as given, or ``all`` when it trains on the whole pool."""
        return "all" if self.whole_pool else str(self.budget)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The run's headline numbers (:func:`p3bench.results.summary_metrics`), computed once; empty for a
        run that did not finish."""
        return summary_metrics(self.results) if self.ok and self.results is not None else {}

    @cached_property
    def selected_ids(self) -> frozenset[str] | None:
        """The distinct ids the run trained on over all its rounds (from selection.jsonl or selection.parquet); None when the file
        is missing, unreadable, or does not hold the ``n_selected`` ids results.json records."""
        try:
            ids = frozenset(str(row["id"]) for row in read_selection(self.path))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None
        expected = (self.results or {}).get("selection", {}).get("n_selected")
        return ids if expected is None or expected == len(ids) else None

    @cached_property
    def curve(self) -> dict[str, list[float]]:
        """The validation-loss curve logged by the CSV logger: ``{"step": [...], "val_loss": [...]}``, and
        ``train_tokens`` at those steps when logged; empty when the run had no CSV logger."""
        return read_val_curve(self.path / METRICS_CSV)


def read_val_curve(path: Path) -> dict[str, list[float]]:
    """Steps and validation losses of a CSV log; rows that do not parse are skipped."""
    steps: list[float] = []
    losses: list[float] = []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    step, value = float(row.get("step") or "nan"), float(row.get("val/loss") or "nan")
                except ValueError:
                    continue
                if not (math.isnan(step) or math.isnan(value)):
                    steps.append(step)
                    losses.append(value)
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return {"step": steps, "val_loss": losses} if steps else {}


def find_run_dirs(root: Path) -> list[Path]:
    """``root`` itself when it is a run directory, else every run directory below it (sorted)."""
    if is_run_dir(root):
        return [root]
    found = {p.parent for p in root.rglob(RESULTS_FILE)} | {
        p.parent.parent for p in root.rglob(str(HYDRA_CONFIG))
    }
    # a directory holding a multirun's jobs is not itself a run (Hydra writes .hydra only in job directories)
    return sorted(p for p in found if is_run_dir(p) and "wandb" not in p.relative_to(root).parts)


def is_run_dir(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() or (path / HYDRA_CONFIG).is_file()


def load_run(path: Path) -> RunRecord:
    """Read one run directory into a :class:`RunRecord`; never raises for a bad or missing results file."""
    identity = identity_from_hydra_config(path)
    results_path = path / RESULTS_FILE
    if not results_path.is_file():
        error = last_error_line(path / "run.log")
        if error:
            return RunRecord(path, FAILED, error, identity=identity)
        return RunRecord(
            path,
            UNFINISHED,
            "no results.json: the run failed, was interrupted or is still running",
            None,
            identity,
        )
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return RunRecord(path, CORRUPT, f"results.json is not valid JSON ({exc})", identity=identity)
    missing = [
        key
        for key in REQUIRED_KEYS
        if not isinstance(results, dict) or not isinstance(results.get(key), dict)
    ]
    if missing:
        problem = f"results.json lacks {', '.join(missing)} (or they are not objects)"
        return RunRecord(path, CORRUPT, problem, identity=identity)
    if results.get("status") != OK:
        return RunRecord(
            path, FAILED, f"results.json has status {results.get('status')!r}", results, identity
        )
    run = results["run"]
    identity = {**identity, **{key: run[key] for key in SETTINGS if key in run}}
    return RunRecord(path, OK, None, results, identity, read_completion_marker(path))


def identity_from_hydra_config(path: Path) -> dict[str, Any]:
    """Experiment, dataset, method, budget and seed from the composed config Hydra saved at job start."""
    config_path = path / HYDRA_CONFIG
    if not config_path.is_file():
        return {}
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {**config_identity(config), "variant": variant(read_overrides(path / HYDRA_OVERRIDES))}


#: each identity field: where a composed config holds it, and the override that sets it
_IDENTITY_SOURCES = {
    "experiment": (("experiment_name",), "experiment_name"),
    "dataset": (("dataset", "name"), "dataset"),
    "model": (("model", "name"), "model"),
    "regime": (("regime",), "regime"),
    "method": (("method", "name"), "method"),
    "budget": (("budget",), "budget"),
    "seed": (("seed",), "seed"),
}


def config_identity(
    config: dict[str, Any], overrides: Sequence[str] = (), missing: Any = None
) -> dict[str, Any]:
    """The identity fields of a composed config, where ``overrides`` (a job's ``key=value`` list) replace
    those they set (numbers parsed); ``missing`` for a field neither has."""
    values = {k.lstrip("+~"): v for k, v in (o.split("=", 1) for o in overrides if "=" in o)}
    identity = {}
    for name, (path, key) in _IDENTITY_SOURCES.items():
        if key in values:
            value = parse_number(values[key]) if name in ("budget", "seed") else values[key]
        else:
            value = config
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
        identity[name] = missing if value is None else value
    return identity


def read_overrides(path: Path) -> list[str]:
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def variant(overrides: list[str]) -> list[str]:
    """The overrides that set something other than the identity fields, paths, logging or the launcher."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in _NOT_VARIANT_KEYS or key.startswith(_NOT_VARIANT_PREFIXES) or key.endswith(".progress"):
            continue
        kept.append(override.lstrip("+~"))
    return sorted(kept)


def last_error_line(log_path: Path) -> str | None:
    """The last line of ``run.log`` that reports an error, if any."""
    if not log_path.is_file():
        return None
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "[ERROR]" in line or "Error:" in line or "error:" in line:
            return line.strip()[:300]
    return None


def not_started_jobs(root: Path, found: list[Path]) -> list[RunRecord]:
    """Jobs of the multirun at ``root`` (from its multirun.yaml) that have no directory: never started, or
    the sweep stopped before them. Empty when ``root`` is not a multirun or its sweep cannot be expanded."""
    sweep_file = root / "multirun.yaml"
    if not sweep_file.is_file():
        return []
    try:
        sweep = yaml.safe_load(sweep_file.read_text(encoding="utf-8"))
        jobs = expand_sweep(sweep)
    except Exception as exc:  # an unreadable sweep definition must not stop the report of the runs that exist
        problem = f"could not list the jobs of multirun.yaml ({exc}); jobs that never started are not counted"
        return [RunRecord(root / "multirun.yaml", NOT_EXPANDED, problem)]
    # every job directory of the sweep, whatever the order the report was given its directories in
    started = {p.name.split("_", 1)[0] for p in root.iterdir() if p.is_dir()}
    records = []
    for number, overrides in enumerate(jobs):
        if str(number) in started:
            continue
        identity = {**config_identity(sweep, overrides, missing="?"), "variant": variant(overrides)}
        problem = f"job {number} ({' '.join(overrides)}) has no run directory: never started"
        records.append(RunRecord(root / f"{number}_(not started)", NOT_STARTED, problem, identity=identity))
    return records


def expand_sweep(multirun: dict[str, Any]) -> list[list[str]]:
    """The override list of every job of a Hydra multirun, in job-number order, as the basic sweeper
    expands the command-line and ``hydra.sweeper.params`` sweeps (Hydra 1.3)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = multirun["hydra"]
    sweeper = str((hydra_cfg.get("sweeper") or {}).get("_target_", ""))
    if not sweeper.endswith("BasicSweeper"):
        raise ValueError(f"sweeper {sweeper!r} is not Hydra's basic sweeper")
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(hydra_cfg["overrides"]["task"])
    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


def parse_number(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            number = cast(value)
        except (TypeError, ValueError):
            continue
        return number if not (isinstance(number, float) and math.isnan(number)) else value
    return value


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Every run under ``paths`` (run directories, multirun directories or any folder holding them), with
    the multiruns' never-started jobs; a path that does not exist is an error."""
    records: list[RunRecord] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise FileNotFoundError(
                f"run directory {str(given)!r} does not exist: expected a run or sweep directory"
            )
        run_dirs = [p for p in find_run_dirs(root) if p.resolve() not in seen]
        seen.update(p.resolve() for p in run_dirs)
        records.extend(load_run(p) for p in run_dirs)
        for sweep_file in sorted([root / "multirun.yaml", *root.rglob("multirun.yaml")]):
            if sweep_file.is_file() and sweep_file.parent.resolve() not in seen:
                seen.add(sweep_file.parent.resolve())
                records.extend(not_started_jobs(sweep_file.parent, run_dirs))
    finished = {r.settings(): r.path for r in records if r.ok}
    for record in records:
        if record.ok or record.status == NOT_EXPANDED or record.settings() not in finished:
            continue
        if record.status == NOT_STARTED:
            record.status = RUN_ELSEWHERE
        record.problem = f"{record.problem}; the same settings finished in {finished[record.settings()]}"
    return records
