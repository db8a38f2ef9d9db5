"""Trained weights cached on disk, and the content digests their cache keys are made of.

- :func:`weights_digest`, :func:`tokenizer_digest`, :func:`model_config_dict`: what a model's weights, a
  tokenizer and a model's configuration are, as short hashes or plain data, for cache keys and scorer
  fingerprints.
- :func:`cached_weights`: an entry of kind ``weights`` (:mod:`p3bench.cache_store`, docs/caches.md) per
  key, ``<cache_dir>/weights/<label>-<key>/`` holding ``model.safetensors``, a JSON record and the
  manifest; the first caller trains (under a file lock, so parallel sweep jobs train once), writes through
  a temporary sibling directory and moves it into place whole; later callers load the weights into their
  model. :func:`weights_cache_key` makes the key from what the weights depend on.

Used by the warm start (:mod:`p3bench.models.warm_start`), the trained reference models
(:mod:`p3bench.models.reference`) and the scorers' fingerprints (:mod:`p3bench.scoring.ask_llm`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from p3bench.cache_store import CacheKey, CacheStore, get_or_create
from p3bench.utils.io import atomic_write_json

WEIGHTS_FILE = "model.safetensors"


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\x00{flat.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer: Any) -> str:
    """A short hash of a tokenizer: its class, its full definition (vocabulary, merges, normaliser,
    pre-tokenizer, post-processor, added tokens; padding and truncation state excluded) and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("padding", None)
        definition.pop("truncation", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def model_config_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The model's class and its configuration as plain data (``transformers_version`` left out)."""
    config = getattr(model, "config", None)
    if config is None:
        return {"class": type(model).__name__}
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values.pop("transformers_version", None)
    return {"class": type(model).__name__, **values}


def weights_cache_key(
    label: str, parts: dict[str, Any], model: Sequence[str], data: Sequence[str]
) -> CacheKey:
    """The cache key (kind ``weights``) of trained weights that depend on ``parts``: the entries named in
    ``model`` (the initial model, tokenizer) are its model, those in ``data`` (the corpus) its data, the
    rest (settings, versions) its config. Values are taken as JSON (``str`` of anything else)."""
    plain = json.loads(json.dumps(parts, default=str))
    unknown = sorted((set(model) | set(data)) - set(plain))
    if unknown:
        raise ValueError(f"weights cache key parts {unknown} are not in {sorted(plain)}")
    return CacheKey(
        "weights",
        label,
        model={name: plain[name] for name in model},
        data={name: plain[name] for name in data},
        config={name: value for name, value in plain.items() if name not in {*model, *data}},
    )


def cached_weights(
    model: torch.nn.Module,
    cache_dir: str | Path,
    key: CacheKey,
    record_file: str,
    train: Callable[[], dict[str, Any]],
) -> tuple[dict[str, Any], bool, Path]:
    """``model``'s weights from the cache entry of ``key`` under ``cache_dir``, or trained by ``train``
    and saved there (:func:`p3bench.cache_store.get_or_create`: once across the processes of a sweep).

    ``train()`` trains ``model`` in place and returns the JSON record saved beside the weights. Returns the
    record, whether it came from the cache, and the entry's directory; either way ``model`` then holds the
    cached weights.
    """

    def load(directory: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
        device = next(model.parameters()).device
        load_model(model, str(directory / WEIGHTS_FILE), strict=True, device=str(device))
        return json.loads((directory / record_file).read_text(encoding="utf-8"))

    def build(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        record = train()
        save_model(model, str(directory / WEIGHTS_FILE))
        atomic_write_json(directory / record_file, record)
        return record, {"record_file": record_file}

    entry = CacheStore(cache_dir).entry(key)
    result = get_or_create(entry, load, build)
    return result.value, result.hit, entry.path


__all__ = [
    "WEIGHTS_FILE",
    "cached_weights",
    "model_config_dict",
    "tokenizer_digest",
    "weights_cache_key",
    "weights_digest",
]
