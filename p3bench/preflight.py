"""What a run checks before it writes anything: the settings, the method's options, the data, the output
directory and the checkpoint it resumes from.

The ``p3bench`` command runs these checks from a Hydra callback (:class:`CheckBeforeWriting`, configured in
``conf/hydra/default.yaml``) after Hydra composed the config and before it creates the run directory, so a
bad input gets one line and leaves nothing behind. :func:`p3bench.run.train_and_evaluate` runs them again
(sweep jobs, callers of the Python API); the data loaded here is handed over to the run, not loaded twice.
"""

from __future__ import annotations

import copy
import glob
import inspect
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from p3bench.config_schema import validate_config
from p3bench.errors import ChecksFailed, ConfigError, DataError
from p3bench.registry import closest
from p3bench.resume import check_identity, run_identity

#: datamodule arguments the run sets from the root config; a method config cannot set them
RUN_PROVIDED = {
    "splits",
    "tokenizer",
    "budget",
    "seed",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "max_length",
    "cache_dir",
}


def accepted_options(cls: type) -> set[str]:
    """The keyword arguments a class's constructor accepts, following ``**kwargs`` up its base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {
            p.name
            for p in parameters
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def method_options(cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    """The configured method's class and its options (``method.*`` less ``name``); an option the method
    does not take is a one-line error naming ``method.<key>`` and the options it takes."""
    from p3bench.methods import METHODS

    options: dict[str, Any] = OmegaConf.to_container(cfg.method, resolve=True)
    name = options.pop("name", None)
    if name is None:
        raise ConfigError("method.name is missing: expected the name of a registered method")
    method_cls = METHODS.get(name)
    accepted = accepted_options(method_cls) - RUN_PROVIDED
    # an experiment's options for one method only (method_options.NAME), so that a sweep over several
    # methods can set them without giving them to the others
    node = cfg.get("method_options")
    per_method = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    for other, block in per_method.items():
        if other not in METHODS:
            hint = closest(str(other), METHODS.names())
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"method_options.{other}: {other!r} is not a registered method{suggestion}")
        if not isinstance(block, dict):
            raise ConfigError(f"method_options.{other}={block!r} is invalid: expected a mapping of options")
    for key, value in dict(per_method.get(name) or {}).items():
        if key not in accepted:
            raise ConfigError(
                f"method_options.{name}.{key} is not an option of method {name!r}: expected some of "
                f"{', '.join(sorted(accepted))}"
            )
        options[key] = value
    for key in options:
        if key in RUN_PROVIDED:
            raise ConfigError(
                f"method.{key} is set by the run from the root config, not by a method: remove method.{key}"
            )
        if key not in accepted:
            hint = closest(key, sorted(accepted))
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"method.{key} is not an option of method {name!r}: expected some of "
                f"{', '.join(sorted(accepted))}{suggestion}"
            )
    return method_cls, options


def check_trainer_arguments(cfg: DictConfig) -> None:
    """A ``trainer.*`` key the configured Trainer class does not take is a one-line error naming it."""
    target = cfg.trainer.get("_target_")
    if not target:
        return
    from hydra.utils import get_class

    accepted = accepted_options(get_class(target))
    for key in cfg.trainer:
        if str(key).startswith("_") or key in accepted:
            continue
        hint = closest(str(key), sorted(accepted))
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(f"trainer.{key} is not an argument of {target}{suggestion}")


def check_output_dir(path: str | Path, key: str = "hydra.run.dir") -> None:
    """A one-line error when the run directory cannot be created or written: a path through a file, a
    read-only file system, or a directory without write permission."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {existing} is a file: expected a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        reason = "a read-only file system" if read_only else "not writable by this user"
        raise ConfigError(
            f"{key}={path} cannot be written: {existing} is {reason}: expected a writable place"
        )
    try:  # what permissions do not tell (a pseudo file system such as /proc, a full quota): try it
        os.rmdir(tempfile.mkdtemp(prefix=".p3bench-check-", dir=existing))
    except OSError as exc:
        raise ConfigError(
            f"{key}={path} cannot be created: a directory in {existing} fails ({exc.strerror}): expected a "
            "writable place"
        ) from exc


def _data_file_settings(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "data_files" and value is not None:
                yield f"{prefix}.{key}", value
            else:
                yield from _data_file_settings(value, f"{prefix}.{key}")


def _patterns(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _patterns(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _patterns(item)


def _is_empty(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return True
    if size > 1 << 16:
        return False
    return not path.read_bytes().strip()


def check_data_files(dataset_cfg: Mapping[str, Any]) -> None:
    """An empty local data file (no bytes, or only blank lines) is a one-line error naming the file and the
    config key that points to it. Missing files are the dataset adapters' to report."""
    params = dataset_cfg.get("params") or {}
    for key, value in _data_file_settings(params, "dataset.params"):
        for pattern in _patterns(value):
            for name in sorted(glob.glob(pattern)) or [pattern]:
                path = Path(name)
                if path.is_file() and _is_empty(path):
                    raise DataError(
                        f"{key}: {path} is empty: expected the records of dataset {dataset_cfg.get('name')!r}"
                    )


#: splits loaded by the checks, handed over once to the run that follows them in the same process
_HANDOFF: dict[str, Any] = {}


def _splits_key(name: str, params: Mapping[str, Any]) -> str:
    return json.dumps([name, params], sort_keys=True, default=str)


def load_splits(cfg: DictConfig, hand_off: bool = False) -> Any:
    """The configured dataset's splits: handed over from the checks when they loaded the same ones, else
    loaded. An empty data file or an empty train split is a one-line error naming the setting."""
    from p3bench.data import load_dataset_splits

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    params = dataset.get("params") or {}
    key = _splits_key(dataset["name"], params)
    splits = _HANDOFF.pop(key, None)
    if splits is None:
        check_data_files(dataset)
        splits = load_dataset_splits(dataset["name"], **params)
        if not splits.train:
            zero = [
                f"dataset.params.{k}=0"
                for k, v in params.items()
                if v == 0 and not isinstance(v, bool) and ("train" in k or k.startswith(("n_", "max_")))
            ]
            which = f"{', '.join(zero)} leaves" if zero else "these dataset.params leave"
            raise ConfigError(
                f"{which} dataset {dataset['name']!r} no training examples: expected a non-empty train split"
            )
    splits = store_pool(splits, cfg)
    if hand_off:
        _HANDOFF.clear()
        _HANDOFF[key] = splits
    return splits


def store_pool(splits: Any, cfg: DictConfig) -> Any:
    """The splits with the train pool where ``pool.storage`` puts it: unchanged for ``memory``; for
    ``arrow``, written as an Arrow file under ``paths.cache_dir/pools`` (named by its content, so the same
    data is written once) and read lazily from there (:class:`p3bench.data.arrow_pool.ArrowPool`)."""
    from p3bench.data.arrow_pool import ArrowPool

    storage = OmegaConf.select(cfg, "pool.storage", default="memory")
    if storage != "arrow" or isinstance(splits.train, ArrowPool):
        return splits
    splits.train = ArrowPool.from_examples(splits.train, Path(cfg.paths.cache_dir) / "pools")
    return splits


@dataclass
class PreparedRun:
    """What the checks found: the method class and options, the data, the run's identity and the checkpoint
    it resumes from (None for a fresh run)."""

    method_cls: type
    method_options: dict[str, Any]
    splits: Any
    identity: dict[str, Any]
    resume: Any = None


def prepare_run(cfg: DictConfig, hand_off: bool = False) -> PreparedRun:
    """Run every check that needs no writing, the cheap ones first; the first problem is a one-line
    :class:`P3BenchError`."""
    validate_config(cfg)
    identity = run_identity(cfg)
    resume = None
    if cfg.ckpt_path not in (None, ""):
        from p3bench.checkpoints import find_resume_checkpoint

        resume = find_resume_checkpoint(cfg.ckpt_path, Path(cfg.paths.output_dir))
        check_identity(resume.checkpoint, identity, str(cfg.ckpt_path), resume.path)
    method_cls, options = method_options(cfg)
    check_rounds_schedule(cfg, method_cls, options)
    check_trainer_arguments(cfg)
    splits = load_splits(cfg, hand_off=hand_off)
    check_evaluation_mode(cfg, method_cls, options, splits.task)
    if getattr(method_cls, "control", False):  # a control needs the planted-defect oracle fields
        from p3bench.methods.controls import planted_defects

        planted_defects(splits.train, str(cfg.method.name), splits.name)
    return PreparedRun(method_cls, options, splits, identity, resume)


def option_default(method_cls: type, options: Mapping[str, Any], key: str) -> Any:
    """The value of the method option ``key``: the configured one, else the nearest constructor default up
    the class's bases (None when no constructor gives one)."""
    if key in options:
        return options[key]
    for klass in method_cls.__mro__:
        init = klass.__dict__.get("__init__")
        parameter = inspect.signature(init).parameters.get(key) if init is not None else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def check_rounds_schedule(cfg: DictConfig, method_cls: type, options: Mapping[str, Any]) -> None:
    """Rounds every ``method.reselect_every_n_steps`` optimiser steps: an integer >= 0, not together with
    per-epoch rounds, and batches drawn in the training process (``loader.num_workers=0``), so that each
    batch is drawn after the previous optimiser step and a new round starts at its step."""
    from p3bench.methods.base import check_step_schedule

    epochs = option_default(method_cls, options, "reselect_every_n_epochs")
    steps = check_step_schedule(options.get("reselect_every_n_steps", 0), epochs)
    if not steps:
        return
    workers = cfg.loader.get("num_workers", 0)
    if workers != 0:
        raise ConfigError(
            f"method.reselect_every_n_steps={steps} needs loader.num_workers=0: worker processes draw batches "
            f"ahead of the optimiser step, so a re-selection would miss its step (got {workers})"
        )


def check_evaluation_mode(cfg: DictConfig, method_cls: type, options: Mapping[str, Any], task: str) -> None:
    """In-context evaluation (``evaluation.mode=icl``) trains nothing, so it needs a method that selects once
    before training, and a task whose test answers are generated."""
    if cfg.evaluation.mode != "icl":
        return
    from p3bench.embeddings import EMBEDDERS

    embedder = str(cfg.evaluation.icl.embedder)
    if embedder not in EMBEDDERS:
        hint = closest(embedder, EMBEDDERS.names())
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(
            f"evaluation.icl.embedder={embedder!r} is not a sentence embedder: expected one of "
            f"{', '.join(EMBEDDERS.names())}{suggestion}"
        )
    steps = options.get("reselect_every_n_steps", 0)
    if steps:
        raise ConfigError(
            f"evaluation.mode=icl needs a static method: method {cfg.method.name!r} re-selects every {steps} "
            "optimiser step(s) with the model it trains (set method.reselect_every_n_steps=0 or "
            "evaluation.mode=finetune)"
        )
    every = options.get("reselect_every_n_epochs")
    if every is None:
        every = inspect.signature(method_cls.__init__).parameters.get("reselect_every_n_epochs")
        every = 0 if every is None or every.default is inspect.Parameter.empty else every.default
    if every:
        raise ConfigError(
            f"evaluation.mode=icl needs a static method: method {cfg.method.name!r} re-selects every {every} "
            "epoch(s) with the model it trains (set method.reselect_every_n_epochs=0 or evaluation.mode=finetune)"
        )
    if task == "lm":
        raise ConfigError(
            f"evaluation.mode=icl needs a task with generated answers (qa, instruction, code): dataset="
            f"{cfg.dataset.name!r} is a {task!r} task"
        )


class CheckBeforeWriting(Callback):
    """Hydra callback: the checks of :func:`prepare_run` in a single run, before Hydra creates the run
    directory (``hydra.runtime.output_dir`` is set here to the directory ``hydra.run.dir`` names)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.check(config)
        except Exception as exc:
            raise ChecksFailed(exc) from exc

    @staticmethod
    def check(config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
        check_output_dir(output_dir)
        config = copy.deepcopy(config)
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(config)  # run_job sets it again before the run
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        prepare_run(task_cfg, hand_off=True)
