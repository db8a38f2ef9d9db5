"""Trained weights cached on disk, and the content digests their cache keys are made of.

- :func:`weights_digest`, :func:`tokenizer_digest`, :func:`model_config_dict`: what a model's weights, a
  tokenizer and a model's configuration are, as short hashes or plain data, for cache keys and scorer
  fingerprints.
- :func:`cached_weights`: a directory per key holding ``model.safetensors`` and a JSON record; the first
  caller trains (under a file lock, so parallel sweep jobs train once), writes through a temporary sibling
  directory and moves it into place whole; later callers load the weights into their model.

Used by the warm start (:mod:`p3bench.models.warm_start`), the trained reference models
(:mod:`p3bench.models.reference`) and the scorers' fingerprints (:mod:`p3bench.scoring.ask_llm`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from p3bench.utils.io import atomic_write_json, exclusive_lock, publish_directory

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


def cached_weights(
    model: torch.nn.Module, path: str | Path, record_file: str, train: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """``model``'s weights from the cache directory ``path``, or trained by ``train`` and saved there.

    ``train()`` trains ``model`` in place and returns the JSON record saved beside the weights. Returns the
    record and whether it came from the cache; either way ``model`` then holds the cached weights.
    """
    path = Path(path)
    with exclusive_lock(path.with_suffix(".lock")):
        if (path / record_file).is_file() and (path / WEIGHTS_FILE).is_file():
            device = next(model.parameters()).device
            load_model(model, str(path / WEIGHTS_FILE), strict=True, device=str(device))
            return json.loads((path / record_file).read_text(encoding="utf-8")), True
        record = train()
        _save(model, record, path, record_file)
    return record, False


def _save(model: torch.nn.Module, record: dict[str, Any], path: Path, record_file: str) -> None:
    """Weights and record to ``path`` through a temporary sibling directory moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        atomic_write_json(tmp / record_file, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():  # a half-written directory of an interrupted run (no record file)
        shutil.rmtree(path, ignore_errors=True)
    publish_directory(tmp, path)


__all__ = ["WEIGHTS_FILE", "cached_weights", "model_config_dict", "tokenizer_digest", "weights_digest"]
