"""The root config's schema: typed keys, checked where Hydra composes the config.

``conf/config.yaml`` starts its defaults list with ``config_schema``, the :class:`RootConfig` dataclass
registered in Hydra's ConfigStore (importing this module registers it). Hydra then rejects a value of the
wrong type when it composes the config, naming the key (``seed=abc``, ``seed=1.5``,
``loader.batch_size=x``): the values themselves stay in ``config.yaml``, with their comments.

Ranges, and the keys of the config groups that are open (a Lightning Trainer takes many more arguments than
``conf/trainer/`` sets), are checked by :func:`validate_config`, in one line that names the key and what was
expected. The CLI runs it before the run directory is created, and the run runs it again for sweep jobs and
for callers of :func:`p3bench.run.train_and_evaluate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from p3bench.errors import ConfigError

SCHEMA_NAME = "config_schema"
REGIMES = ("iso_epoch", "iso_compute")
#: how a selection is judged (p3bench.eval.icl for icl)
EVALUATION_MODES = ("finetune", "icl")
#: where the train pool lives: a list of examples in memory, or an Arrow file on disk (p3bench.data.arrow_pool)
POOL_STORAGES = ("memory", "arrow")
#: the largest seed Lightning's seed_everything accepts
MAX_SEED = 2**32 - 1


@dataclass
class CoverageEmbedderConfig:
    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TestSamplingConfig:
    n: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    pass_at_k: list[int] = MISSING


@dataclass
class ICLConfig:
    k: int = MISSING
    embedder: str = MISSING
    embedder_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationConfig:
    mode: str = MISSING
    icl: ICLConfig = field(default_factory=ICLConfig)


@dataclass
class LoaderConfig:
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    num_workers: int = MISSING
    length_grouping: int = MISSING


@dataclass
class PoolConfig:
    storage: str = MISSING
    num_proc: int = MISSING
    selection_parquet_above: int = MISSING


@dataclass
class RootConfig:
    """The root keys and their types; values and comments are in ``conf/config.yaml``. The config groups are
    open mappings (a method's options are checked against the method, a dataset's against its adapter)."""

    experiment_name: str = MISSING
    # a fraction (float) or a count (int): OmegaConf has no union type, so the range check tells them apart
    budget: Any = MISSING
    regime: str = MISSING
    seed: int = MISSING
    offline: bool = MISSING
    quality_scorers: str = MISSING
    coverage_embedder: CoverageEmbedderConfig = field(default_factory=CoverageEmbedderConfig)
    ckpt_path: str | None = None
    test: bool = MISSING
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    progress: bool = MISSING
    test_sampling: TestSamplingConfig = field(default_factory=TestSamplingConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    method: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)


register_configs()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid: expected {expected}")


#: integer keys and their smallest value (``max_steps``: -1 means no limit)
_COUNTS = {
    "seed": 0,
    "loader.batch_size": 1,
    "loader.eval_batch_size": 1,
    "loader.num_workers": 0,
    "loader.length_grouping": 1,
    "test_sampling.n": 0,
    "evaluation.icl.k": 1,
    "trainer.max_epochs": 1,
    "trainer.accumulate_grad_batches": 1,
    "trainer.log_every_n_steps": 1,
    "pool.num_proc": 1,
    "pool.selection_parquet_above": 0,
}


def _select(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, (DictConfig, dict)) or part not in node:
            return None
        node = node[part]
    return node


def validate_config(cfg: DictConfig) -> None:
    """Check the ranges of the root keys and the types and ranges of the trainer's counts; the first bad
    value is a one-line :class:`ConfigError` naming its key and what was expected."""
    if cfg.regime not in REGIMES:
        raise ConfigError(f"regime={cfg.regime!r} is not supported: expected one of {', '.join(REGIMES)}")
    max_steps = _select(cfg, "trainer.max_steps")
    if max_steps is not None and (not _is_int(max_steps) or not (max_steps == -1 or max_steps >= 1)):
        raise _bad("trainer.max_steps", max_steps, "-1 (no limit) or an integer >= 1")
    for key, minimum in _COUNTS.items():
        value = _select(cfg, key)
        if value is None and key.startswith("trainer."):
            continue  # Lightning's default
        if key == "trainer.max_epochs" and value == -1 and _is_int(value):
            if cfg.regime == "iso_epoch" and _is_int(max_steps) and max_steps >= 1:
                continue  # no epoch limit: trainer.max_steps ends the run
            raise _bad(key, value, "an integer >= 1 (-1, no epoch limit, only with trainer.max_steps >= 1)")
        if not _is_int(value) or value < minimum:
            raise _bad(key, value, f"an integer >= {minimum}")
    if _select(cfg, "pool.storage") not in POOL_STORAGES:
        raise _bad("pool.storage", _select(cfg, "pool.storage"), f"one of {', '.join(POOL_STORAGES)}")
    if cfg.evaluation.mode not in EVALUATION_MODES:
        raise _bad("evaluation.mode", cfg.evaluation.mode, f"one of {', '.join(EVALUATION_MODES)}")
    if cfg.evaluation.mode == "icl" and cfg.regime != "iso_epoch":
        raise _bad("regime", cfg.regime, "iso_epoch with evaluation.mode=icl (it trains nothing)")
    if cfg.seed > MAX_SEED:
        raise _bad("seed", cfg.seed, f"an integer in [0, {MAX_SEED}]")
    every = _select(cfg, "trainer.check_val_every_n_epoch")
    if every is not None and (not _is_int(every) or every < 1):
        raise _bad("trainer.check_val_every_n_epoch", every, "an integer >= 1 or null")
    sampling = cfg.test_sampling
    if not _is_number(sampling.temperature) or sampling.temperature <= 0:
        raise _bad("test_sampling.temperature", sampling.temperature, "a number > 0")
    if not _is_number(sampling.top_p) or not 0 < sampling.top_p <= 1:
        raise _bad("test_sampling.top_p", sampling.top_p, "a number in (0, 1]")
    if not sampling.pass_at_k or any(not _is_int(k) or k < 1 for k in sampling.pass_at_k):
        raise _bad("test_sampling.pass_at_k", list(sampling.pass_at_k), "a list of integers >= 1")
    budget = cfg.budget
    if not _is_number(budget) or budget <= 0 or (isinstance(budget, float) and budget > 1):
        raise ConfigError(
            f"budget={budget!r} is out of range: expected a fraction in (0, 1] (a float) or a count >= 1 "
            "(an integer)"
        )


_TYPE_NAMES = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "String": "a string",
}


def composition_error_message(exc: BaseException) -> str | None:
    """One line for Hydra's and OmegaConf's errors about the command line or the composed config (an
    unknown key, a value of the wrong type, a sweep without ``-m``), naming the key; None for others."""
    from hydra.errors import HydraException, InstantiationException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    text = str(exc)
    if isinstance(exc, InstantiationException):  # a logger, callback or trainer the config cannot build
        key = re.search(r"full_key: (\S+)", text)
        target = re.search(r"target '([^']+)'", text)
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        detail = " ".join(line for line in lines if not line.startswith("full_key:"))
        what = target.group(1) if target else "its _target_"
        return f"{key.group(1) if key else 'config'}: cannot build {what}: {detail}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
    error = exc if isinstance(exc, OmegaConfBaseException) else cause
    merging = re.search(r"Error merging override (\S+)", text)
    override = merging.group(1) if merging else None
    if isinstance(error, ValidationError):
        key = getattr(error, "full_key", None) or (override.split("=", 1)[0] if override else "?")
        msg = getattr(error, "msg", str(error)).splitlines()[0]
        converted = re.search(r"Value '(.*)' of type '(\w+)' could not be converted to (\w+)", msg)
        if converted:
            value, expected = converted.group(1), _TYPE_NAMES.get(converted.group(3), converted.group(3))
            return f"{key}={value} is invalid: expected {expected} (got a {converted.group(2)})"
        if "is not Optional" in msg:
            return f"{key}=null is invalid: expected a value"
        return f"{key}: {msg}"
    ambiguous = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if ambiguous:
        arg = ambiguous.group(1)
        key, value = arg.split("=", 1) if "=" in arg else (arg, "")
        return (
            f"{arg} lists several values: add -m to sweep over them (one run each), or write {key}=[{value}] "
            f"for a list or {key}='{value}' for a string"
        )
    not_in_struct = re.search(r"Could not override '([^']+)'", text)
    if not_in_struct or isinstance(error, ConfigKeyError):
        key = not_in_struct.group(1) if not_in_struct else getattr(error, "full_key", "?")
        append = re.search(r"use \+(\S+)", text)
        value = append.group(1).split("=", 1)[1] if append and "=" in append.group(1) else "..."
        return (
            f"{key} is not a config key: expected an existing key (see `p3bench --cfg job`), or +{key}={value} "
            "to add one"
        )
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the command line: {text.splitlines()[0] if text else type(exc).__name__}"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    if cause is not None:
        lines.append(str(cause).splitlines()[0])
    return " ".join(lines)
