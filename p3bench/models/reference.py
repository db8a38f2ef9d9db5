"""Reference models for scoring a pool by loss: the run's initial model, a copy of it trained on a split, or a
pretrained model that shares the run's tokenizer.

The offline loss-based selection baselines (:mod:`p3bench.methods.loss_filters`: a pool loss band after
Chen et al., arXiv 2402.14270, and RHO-LOSS style reducible loss after Mindermann et al., arXiv 2206.07137)
score every pool example with one or two such models before training. Where a model comes from is its
:class:`ReferenceSettings` (``source``):

- ``initial``: the run's model as it is before training (no copy, no training). Meaningful when the run
  starts from a pretrained model; a freshly initialised tiny model gives near-uniform losses.
- ``trained``: a copy of the run's initial model trained for ``steps`` AdamW steps on a split (``train``, the
  pool itself, or ``validation``, a holdout as RHO-LOSS's irreducible-loss model) with the run's loss: the
  mean over each example's target tokens, averaged over the batch. Batches are drawn from seeded
  permutations of the split; the learning rate warms up over the first 5% of steps and decays on a cosine to
  zero; weight decay 0.01 and gradient clipping at norm 1.0, as the run's default trainer. The global RNGs
  are left as they were, so the run trains exactly as it would without this step.
- ``pretrained``: a Hugging Face causal LM by local directory or hub id (``name_or_path``) that shares the
  run's tokenizer; a vocabulary smaller than the tokenizer's is refused.

Trained weights are cached in entries ``cache_dir/weights/reference-<split>-<key>/`` (docs/caches.md) keyed by everything they depend on (the run
model's config and a digest of its initial weights, the tokenizer, the split's texts, the training settings,
``max_length``), built once under a file lock (parallel sweep jobs wait for the first) and moved into place
atomically. Each cached model directory holds ``model.safetensors`` (the weights) and ``reference.json`` (how
it was made: settings, key, training loss, tokens, seconds, a digest of the trained weights).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from p3bench.data.example import Example
from p3bench.errors import ConfigError, ModelLoadError
from p3bench.models.collate import EncodedPool, EncodedSubset, TrainCollator
from p3bench.models.losses import per_example_nll
from p3bench.models.weights_cache import (
    cached_weights,
    model_config_dict,
    tokenizer_digest,
    weights_cache_key,
    weights_digest,
)
from p3bench.utils.hashing import json_sha256, texts_sha256
from p3bench.utils.progress import progress_bar

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1
SOURCES = ("initial", "trained", "pretrained")
SPLITS = ("train", "validation")
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.05
GRADIENT_CLIP = 1.0
RECORD_FILE = "reference.json"

#: The option block of one reference model in a method's config (``method.scorer``, ``method.reference``).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "source": "trained",
    "split": "train",
    "steps": 300,
    "batch_size": 32,
    "lr": 1.0e-3,
    "seed": None,
    "name_or_path": None,
    "offline": True,
}


@dataclass(frozen=True)
class ReferenceSettings:
    """Where a reference model comes from and, for ``trained``, how it is trained (see the module docstring).

    ``seed`` seeds the batch order and any dropout of the training; ``name_or_path`` and ``offline`` are for
    ``pretrained`` (``offline``: load from a local directory or the local Hugging Face cache only).
    """

    source: str = "trained"
    split: str = "train"
    steps: int = 300
    batch_size: int = 32
    lr: float = 1.0e-3
    seed: int = 0
    name_or_path: str | None = None
    offline: bool = True

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this source (what a result records about the model)."""
        if self.source == "initial":
            return {"source": "initial"}
        if self.source == "pretrained":
            return {"source": "pretrained", "name_or_path": self.name_or_path}
        keys = ("source", "split", "steps", "batch_size", "lr", "seed")
        return {k: getattr(self, k) for k in keys}


def parse_settings(key: str, options: Mapping[str, Any], default_seed: int = 0) -> ReferenceSettings:
    """:class:`ReferenceSettings` from a config block (``key`` names it in errors, e.g. ``method.scorer``);
    a ``seed`` of None is ``default_seed`` (the run's seed). Every bad value is a one-line ConfigError."""
    unknown = sorted(set(options) - set(REFERENCE_DEFAULTS))
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}: expected some of {sorted(REFERENCE_DEFAULTS)}")
    cfg = {**REFERENCE_DEFAULTS, **options}
    if cfg["source"] not in SOURCES:
        raise ConfigError(
            f"{key}.source={cfg['source']!r} is not supported: expected one of {', '.join(SOURCES)}"
        )
    if cfg["split"] not in SPLITS:
        raise ConfigError(
            f"{key}.split={cfg['split']!r} is not supported: expected one of {', '.join(SPLITS)}"
        )
    for name in ("steps", "batch_size"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}.{name}={value!r} is invalid: expected an integer >= 1")
    lr = cfg["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key}.lr={lr!r} is invalid: expected a positive number")
    seed = default_seed if cfg["seed"] is None else cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(
            f"{key}.seed={cfg['seed']!r} is invalid: expected null (the run's seed) or an integer >= 0"
        )
    if cfg["source"] == "pretrained" and not cfg["name_or_path"]:
        raise ConfigError(
            f"{key}.source=pretrained needs {key}.name_or_path: expected a local directory or a hub id"
        )
    return ReferenceSettings(
        source=str(cfg["source"]),
        split=str(cfg["split"]),
        steps=int(cfg["steps"]),
        batch_size=int(cfg["batch_size"]),
        lr=float(lr),
        seed=int(seed),
        name_or_path=None if cfg["name_or_path"] is None else str(cfg["name_or_path"]),
        offline=bool(cfg["offline"]),
    )


@dataclass
class ReferenceModel:
    """A scoring model: ``model`` on ``device`` (the shape :func:`p3bench.scoring.base.forward_pass` reads),
    and ``info``, what it is and how it was made (recorded in the selection's diagnostics)."""

    model: PreTrainedModel
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)


# -- digests -------------------------------------------------------------------------------------------------


def examples_digest(examples: Sequence[Example]) -> str:
    """sha256 of the examples' prompts and targets in order."""
    return texts_sha256(part for ex in examples for part in (ex.prompt, ex.target))


# -- building a reference model ----------------------------------------------------------------------------------


def reference_model(
    settings: ReferenceSettings,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device | str,
    *,
    examples: Sequence[Example] | None = None,
    encoded: EncodedPool | None = None,
    max_length: int = 512,
    cache_dir: str | Path | None = None,
    key: str = "reference",
    progress: bool = False,
) -> ReferenceModel:
    """The reference model ``settings`` describe, on ``device``.

    ``base`` is the run's model with its initial weights (never modified). ``trained`` needs the split's
    ``examples`` and their ``encoded`` tokens; its weights are cached under ``cache_dir`` (None: trained
    every time). ``key`` names the config block in errors (``method.scorer``). ``progress``: a progress bar
    while a ``trained`` reference trains (see :func:`train_reference`).
    """
    device = torch.device(device)
    if settings.source == "initial":
        return ReferenceModel(model=base, device=device, info=settings.describe())
    if settings.source == "pretrained":
        dtype = next(base.parameters()).dtype
        model = load_pretrained(str(settings.name_or_path), tokenizer, settings.offline, dtype, key).to(
            device
        )
        model.eval()
        return ReferenceModel(model=model, device=device, info=settings.describe())
    if examples is None or encoded is None:
        raise ValueError("a trained reference model needs the split's examples and encoded tokens")
    if len(encoded) == 0:
        raise ConfigError(
            f"{key}.split={settings.split!r} is empty: expected examples to train the reference on"
        )
    return trained_reference(
        settings, base, tokenizer, device, examples, encoded, max_length, cache_dir, progress
    )


def load_pretrained(
    name_or_path: str, tokenizer: PreTrainedTokenizerBase, offline: bool, dtype: torch.dtype, key: str
) -> PreTrainedModel:
    """A pretrained causal LM that can read the run's tokens: its embedding table must cover the tokenizer."""
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - many exception types; the user needs one line
        where = (
            "a local directory or a model in the Hugging Face cache (offline=true)" if offline else "a hub id"
        )
        raise ModelLoadError(
            f"{key}.name_or_path={name_or_path!r} cannot be loaded: expected {where} ({type(exc).__name__})"
        ) from exc
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < len(tokenizer):
        raise ConfigError(
            f"{key}.name_or_path={name_or_path!r} has a vocabulary of {vocab} tokens, smaller than the run's "
            f"tokenizer ({len(tokenizer)} tokens): expected a model that shares the run's tokenizer"
        )
    return model


def trained_cache_key(
    settings: ReferenceSettings,
    base: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
) -> str:
    """What a trained reference's weights depend on, hashed: the run model's config and initial weights,
    the tokenizer, the split's texts, the training settings and ``max_length``."""
    return json_sha256(trained_cache_parts(settings, base, tokenizer, examples, max_length))[:24]


def trained_cache_parts(
    settings: ReferenceSettings,
    base: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
) -> dict[str, Any]:
    """The parts :func:`trained_cache_key` hashes, as JSON."""
    parts = {
        "kind": "trained_reference",
        "version": REFERENCE_VERSION,
        "model_config": model_config_dict(base),
        "initial_weights": weights_digest(base),
        "tokenizer": tokenizer_digest(tokenizer),
        "split": settings.split,
        "examples": examples_digest(examples),
        "n_examples": len(examples),
        "settings": settings.describe(),
        "max_length": int(max_length),
        "optimizer": {"weight_decay": WEIGHT_DECAY, "warmup": WARMUP_FRACTION, "clip": GRADIENT_CLIP},
    }
    return json.loads(json.dumps(parts, default=str))


def trained_reference(
    settings: ReferenceSettings,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    examples: Sequence[Example],
    encoded: EncodedPool,
    max_length: int,
    cache_dir: str | Path | None,
    progress: bool = False,
) -> ReferenceModel:
    """A copy of ``base`` trained on ``encoded`` (see :func:`train_reference`), from the cache when it is
    there; otherwise trained and, with a ``cache_dir``, saved under a lock."""
    info: dict[str, Any] = settings.describe()
    if cache_dir is None:
        model = copy.deepcopy(base).to(device)
        record = train_reference(
            model, encoded, settings, tokenizer.pad_token_id, max_length, device, progress
        )
        model.eval()
        info.update(record, cached=False, from_cache=False)
        return ReferenceModel(model=model, device=device, info=info)
    parts = trained_cache_parts(settings, base, tokenizer, examples, max_length)
    key = json_sha256(parts)[:24]
    entry_key = weights_cache_key(
        f"reference-{settings.split}",
        parts,
        model=("model_config", "initial_weights", "tokenizer"),
        data=("split", "examples", "n_examples"),
    )
    model = copy.deepcopy(base).to(device)

    def train() -> dict[str, Any]:
        log.info("training a reference model on %s (%d steps)", settings.split, settings.steps)
        record = train_reference(
            model, encoded, settings, tokenizer.pad_token_id, max_length, device, progress
        )
        return {**record, "key": key, "settings": settings.describe(), "max_length": int(max_length)}

    record, from_cache, path = cached_weights(model, cache_dir, entry_key, RECORD_FILE, train)
    model.eval()
    info.update({k: v for k, v in record.items() if k != "settings"}, cached=True, from_cache=from_cache)
    info["path"] = str(path)
    return ReferenceModel(model=model, device=device, info=info)


def train_reference(
    model: PreTrainedModel,
    encoded: EncodedPool,
    settings: ReferenceSettings,
    pad_token_id: int,
    max_length: int,
    device: torch.device | str,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in place for ``settings.steps`` AdamW steps on ``encoded`` with the run's loss (mean
    NLL over each example's target tokens, averaged over the batch); returns what the training recorded.

    Batches of ``min(batch_size, n)`` examples come from seeded permutations of the split, one after another;
    the global RNGs (torch, CUDA) are restored afterwards. With ``progress``, a bar counts the steps and shows
    the last batch's loss (:func:`p3bench.utils.progress.progress_bar`).
    """
    device = torch.device(device)
    n = len(encoded)
    batch_size = min(settings.batch_size, n)
    collate = TrainCollator(pad_token_id, max_length)
    subset = EncodedSubset(encoded, range(n))
    rng = np.random.default_rng(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=WEIGHT_DECAY)
    scheduler = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=math.ceil(WARMUP_FRACTION * settings.steps),
        num_training_steps=settings.steps,
    )
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    order = np.empty(0, dtype=np.int64)
    was_training = model.training
    model.train()
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        progress_bar(
            total=settings.steps, desc=f"training reference ({settings.split})", unit="step", enabled=progress
        ) as bar,
    ):
        torch.manual_seed(settings.seed)
        for _ in range(settings.steps):
            if len(order) < batch_size:
                order = np.concatenate([order, rng.permutation(n)])
            take, order = order[:batch_size], order[batch_size:]
            batch = collate([subset[int(i)] for i in take])
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = per_example_nll(logits, batch["labels"].to(device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            tokens += int(attention_mask.sum())
            if not bar.disable:
                bar.set_postfix(loss=losses[-1], refresh=False)
            bar.update(1)
    model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    window = max(1, min(20, len(losses) // 5))
    return {
        "train_loss_first": float(np.mean(losses[:window])),
        "train_loss_last": float(np.mean(losses[-window:])),
        "train_tokens": tokens,
        "train_examples": settings.steps * batch_size,
        "train_seconds": round(time.perf_counter() - start, 3),
        "weights_sha256": weights_digest(model),
    }


__all__ = [
    "REFERENCE_DEFAULTS",
    "ReferenceModel",
    "ReferenceSettings",
    "load_pretrained",
    "parse_settings",
    "reference_model",
    "train_reference",
    "trained_cache_key",
]
