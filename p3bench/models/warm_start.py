"""A warm start for models built from an architecture: pre-train the fresh model before the run trains it.

Chen et al., "Take the Bull by the Horns" (arXiv 2402.14270) study *continual* pre-training: a pretrained LM
(OPT-125m, Sheared-LLaMA) is trained further on its own pre-training data (C4), with hard samples reweighted
(IR-DRO) or the hardest skipped (MidRanking). Their premise is a model that already fits the distribution,
so that a document's loss says how hard or how noisy it is, not how far from random the model still is. The
tiny model that runs here on a CPU is built from a config with random weights; a ``warm_start`` block in the
model config pre-trains it first with the plain LM objective, and the run then continues from those weights.

What it trains on (``corpus: pool``, the default): the run's train split, every token of each document
(prompt and target alike, BOS first, EOS last, cut at ``max_length``), in seeded random passes. The paper
continues training on the data the model was pre-trained on, so the warm start uses the same pool; the
validation and test documents stay unseen. A disjoint part of the pool would make the run's pool smaller
or its data a different one, and would no longer be the paper's setting. ``corpus: dataset`` pre-trains on
another dataset instead (``dataset: {dataset: NAME, params: {...}, split: train, max_examples: N}``,
:mod:`p3bench.data.named`): the setting of fine-tuning a pre-trained model on a pool it has not seen
(DELIFT, arXiv 2411.04425, whose model-dependent utility kernel needs a model that already answers
instructions). Keep ``steps`` short of
memorising the pool (the provenance records the passes): on the 240 train documents of the c4 sample the
held-out loss stops improving after about 15 passes while the train loss keeps falling.

Training: AdamW, linear warm-up then cosine decay to a tenth of ``lr``, gradients clipped at norm 1,
batches drawn from seeded permutations of the pool; seeded and deterministic on one machine. The global
random state is left as it was, so a run that loads cached weights continues exactly like one that trained
them.

Caching: the weights are saved in the cache entry ``cache_dir/weights/warm_start-<key>/``
(``model.safetensors`` and ``warm_start.json``; docs/caches.md), where the key hashes everything they depend on: the model class and config, a digest
of the initial weights (which the run's global seed produced), the tokenizer, the corpus, the settings
(their seed is the run's unless set) and :data:`WARM_START_VERSION`. They are written through a temporary
directory and moved into place under a file lock, so parallel sweep jobs train once and the others load
the result (:func:`p3bench.models.weights_cache.cached_weights`).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.models.collate import TrainCollator, encode_examples
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

#: Raised when the training recipe changes, so that cached weights of an older recipe are not reused.
WARM_START_VERSION = 1

CORPORA = ("pool", "dataset")
RECORD_FILE = "warm_start.json"


@dataclass(frozen=True)
class WarmStartSettings:
    """How the warm start pre-trains: optimizer steps, documents per step, peak learning rate, linear
    warm-up steps, AdamW weight decay, tokens per document, seed of the batch order and of the training
    randomness, and the corpus (``pool``: the run's train split)."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    max_length: int = 256
    seed: int = 0
    corpus: str = "pool"
    #: ``corpus: dataset``: which dataset (:mod:`p3bench.data.named`)
    dataset: Any = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            _check_int(getattr(self, name), name, minimum=1)
        _check_int(self.seed, "seed", minimum=0)
        _check_int(self.warmup_steps, "warmup_steps", minimum=0)
        if self.warmup_steps >= self.steps:
            raise ConfigError(
                f"model.warm_start.warmup_steps={self.warmup_steps} is invalid: expected fewer than "
                f"steps={self.steps}"
            )
        for name, minimum_ok in (("lr", False), ("weight_decay", True)):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not minimum_ok):
                expected = "a number >= 0" if minimum_ok else "a positive number"
                raise ConfigError(f"model.warm_start.{name}={value!r} is invalid: expected {expected}")
        if self.corpus not in CORPORA:
            raise ConfigError(
                f"model.warm_start.corpus={self.corpus!r} is not supported: "
                f"expected one of {', '.join(CORPORA)}"
            )
        if self.corpus == "dataset":
            from p3bench.data.named import check_spec

            check_spec(self.dataset, "model.warm_start.dataset")
        elif self.dataset is not None:
            raise ConfigError(
                "model.warm_start.dataset is set but model.warm_start.corpus=pool: expected corpus=dataset"
            )

    def corpus_examples(self, pool: Sequence[Example]) -> Sequence[Example]:
        """The documents it pre-trains on: the run's pool, or the named dataset's split."""
        if self.corpus == "pool":
            return pool
        from p3bench.data.named import examples_from_spec

        return examples_from_spec(self.dataset, "model.warm_start.dataset")


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"model.warm_start.{name}={value!r} is invalid: expected an integer >= {minimum}")


def warm_start_settings(model_cfg: Mapping[str, Any], seed: int) -> WarmStartSettings | None:
    """The settings of ``model_cfg.warm_start`` (None when it is null or absent), checked before anything is
    built: unknown keys, bad values, and a warm start of a pretrained (``name_or_path``) or LoRA model are
    one-line :class:`ConfigError` s. A null ``seed`` is the run's ``seed``."""
    block = model_cfg.get("warm_start")
    if block is None:
        return None
    if model_cfg.get("name_or_path") is not None:
        raise ConfigError(
            "model.warm_start is set for a pretrained model (model.name_or_path): expected warm_start=null, "
            "it is for models built from model.architecture"
        )
    if model_cfg.get("lora"):
        raise ConfigError("model.warm_start and model.lora are both set: expected one of them (or neither)")
    if not isinstance(block, Mapping):
        raise ConfigError(f"model.warm_start={block!r} is invalid: expected a mapping of settings or null")
    known = {f.name for f in fields(WarmStartSettings)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ConfigError(
            f"model.warm_start has unknown key(s) {', '.join(unknown)}: "
            f"expected some of {', '.join(sorted(known))}"
        )
    values = dict(block)
    if values.get("seed") is None:
        values["seed"] = seed
    return WarmStartSettings(**values)


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: WarmStartSettings,
    cache_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Pre-train the freshly built ``model`` in place on ``examples`` (or load the cached result of the same
    pre-training) and return its provenance: the cache key, steps, first and final train loss, corpus size,
    passes over the corpus, tokens trained on, training seconds and whether the weights came from the
    cache. ``progress``: a progress bar over the training steps (:func:`p3bench.utils.progress.progress_bar`,
    so the process-wide switch, which a run sets from its ``progress`` key, silences it too)."""
    if not examples:
        raise ConfigError("model.warm_start has no documents to pre-train on: the train split is empty")
    texts = [ex.prompt + ex.target for ex in examples]
    parts = {
        "version": WARM_START_VERSION,
        "config": model_config_dict(model),
        "initial_weights": weights_digest(model),
        "tokenizer": tokenizer_digest(tokenizer),
        "corpus": texts_sha256(texts),
        "n_documents": len(texts),
        "settings": asdict(settings),
    }
    key = json_sha256(parts)[:20]
    entry_key = weights_cache_key(
        "warm_start", parts, model=("config", "initial_weights", "tokenizer"), data=("corpus", "n_documents")
    )

    def train() -> dict[str, Any]:
        log.info("warm start: pre-training for %d steps on %d documents", settings.steps, len(texts))
        return {"key": key, **pretrain(model, tokenizer, examples, settings, progress)}

    record, cache_hit, _ = cached_weights(model, cache_dir, entry_key, RECORD_FILE, train)
    if cache_hit:
        log.info("warm start: loaded pre-trained weights %s (%d steps)", key, record["steps"])
    return {**record, "cache_hit": cache_hit}


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: WarmStartSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place with the plain LM objective on every token of ``examples`` (see the module
    docstring) and return the training record (without the cache key). With ``progress``, a bar counts the
    steps and shows the last batch's loss."""
    pool = encode_examples(examples, tokenizer)
    # the first token (BOS) is the prompt the collator masks; every later token is a target
    items = [
        {
            "prompt_ids": (prompt + target)[:1],
            "target_ids": (prompt + target)[1:],
            "weight": 1.0,
            "index": i,
        }
        for i, (prompt, target) in enumerate(zip(pool.prompt_ids, pool.target_ids, strict=True))
    ]
    collate = TrainCollator(tokenizer.pad_token_id, settings.max_length)
    was_training = model.training
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    devices = [model.device] if model.device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        progress_bar(total=settings.steps, desc="warm start", unit="step", enabled=progress) as bar,
    ):
        torch.manual_seed(settings.seed)
        optimizer, scheduler = _optimizer(model, settings)
        model.train()
        for batch in _batches(len(items), settings):
            inputs = collate([items[i] for i in batch])
            loss = model(
                input_ids=inputs["input_ids"].to(model.device),
                attention_mask=inputs["attention_mask"].to(model.device),
                labels=inputs["labels"].to(model.device),
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            tokens += int(inputs["attention_mask"].sum())
            if not bar.disable:
                bar.set_postfix(loss=losses[-1], refresh=False)
            bar.update(1)
    optimizer.zero_grad(set_to_none=True)
    model.train(was_training)
    tail = max(1, min(20, settings.steps // 10))
    return {
        "steps": settings.steps,
        "first_train_loss": losses[0],
        "final_train_loss": float(np.mean(losses[-tail:])),
        "n_documents": len(items),
        "passes": settings.steps * settings.batch_size / len(items),
        "train_tokens": tokens,
        "corpus": settings.corpus,
        "settings": asdict(settings),
        "seconds": round(time.perf_counter() - start, 3),
        "version": WARM_START_VERSION,
    }


def _batches(n: int, settings: WarmStartSettings) -> Iterator[list[int]]:
    """``settings.steps`` batches of document indices from seeded permutations of ``range(n)`` (each pass
    visits every document once; a batch may span two passes)."""
    rng = np.random.default_rng(settings.seed)
    order: list[int] = []
    for _ in range(settings.steps):
        while len(order) < settings.batch_size:
            order += rng.permutation(n).tolist()
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        yield batch


def _optimizer(
    model: torch.nn.Module, settings: WarmStartSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
