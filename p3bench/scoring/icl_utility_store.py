"""The on-disk cache of DELIFT utility kernels (:mod:`p3bench.scoring.icl_utility`).

What is stored is the expensive part, the distances: ``no_demo`` (n_targets,) and ``demo`` (n_targets,
n_candidates), or (n_targets, k) with ``columns`` (the neighbours) for a sparse kernel, all float32 but the
int64 columns, in ``<cache_dir>/icl-utility-<key>.npz``, and the counts of the computation (forward tokens,
seconds, ...) in ``<cache_dir>/icl-utility-<key>.json``. Both are written atomically
(:func:`p3bench.utils.io.atomic_output`, :func:`p3bench.utils.io.atomic_write_json`), the arrays first, so
a sidecar always describes a complete array file. A file that is missing, unreadable or of the wrong shape
is a miss. The key (:func:`kernel_cache_key`) hashes everything the distances depend on: the model's weights
and config (or a caller's fingerprint), the tokenizer, the examples' texts, the prompts and their version,
``max_length`` and the neighbour settings. The kernel's kind is not in it: it is applied to the distances on
load.

Under ``torch.distributed``, rank zero reads the cache and broadcasts what it found, and only rank zero
writes, so the processes never disagree about a hit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.models.weights_cache import model_config_dict, tokenizer_digest, weights_digest
from p3bench.scoring.icl_utility_tokens import (
    DEMO_PREFIX_TEMPLATE,
    NO_DEMO_TEMPLATE,
    PROMPT_VERSION,
    QUERY_TEMPLATE,
)
from p3bench.utils.hashing import json_sha256, texts_sha256
from p3bench.utils.io import atomic_output, atomic_write_json

FILE_PREFIX = "icl-utility"


@dataclass
class StoredDistances:
    """Distances without (``no_demo``) and with (``demo``) the demonstration, the sparse kernel's
    ``columns`` (``None`` when dense) and the computation's counts (``info``)."""

    no_demo: np.ndarray
    demo: np.ndarray
    columns: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _examples_sha256(examples: list[Example]) -> str:
    return texts_sha256(part for ex in examples for part in (ex.prompt, ex.target))


def kernel_cache_key(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    targets: list[Example],
    candidates: list[Example],
    max_length: int,
    neighbours: int | None,
    neighbour_source: str | None,
    model_fingerprint: str | None = None,
) -> str:
    """sha256 of everything the distances depend on (module docstring)."""
    if model_fingerprint is None:
        model_part: Any = {"weights": weights_digest(model), "config": model_config_dict(model)}
    else:
        model_part = {"fingerprint": str(model_fingerprint)}
    return json_sha256(
        {
            "what": "icl_utility",
            "prompt_version": PROMPT_VERSION,
            "templates": [NO_DEMO_TEMPLATE, DEMO_PREFIX_TEMPLATE, QUERY_TEMPLATE],
            "model": model_part,
            "tokenizer": tokenizer_digest(tokenizer),
            "targets": _examples_sha256(targets),
            "candidates": _examples_sha256(candidates),
            "max_length": int(max_length),
            "neighbours": neighbours,
            "neighbour_source": neighbour_source,
        }
    )


def _paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    stem = Path(cache_dir) / f"{FILE_PREFIX}-{key}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def _read(
    cache_dir: str | Path, key: str, n_targets: int, n_candidates: int, neighbours: int | None
) -> StoredDistances | None:
    arrays_path, sidecar_path = _paths(cache_dir, key)
    try:
        info = json.loads(sidecar_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as arrays:
            no_demo, demo = arrays["no_demo"], arrays["demo"]
            columns = arrays["columns"] if "columns" in arrays.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None
    width = n_candidates if neighbours is None else neighbours
    if (
        not isinstance(info, dict)
        or no_demo.shape != (n_targets,)
        or demo.shape != (n_targets, width)
        or (neighbours is None) != (columns is None)
        or (columns is not None and columns.shape != (n_targets, neighbours))
    ):
        return None
    return StoredDistances(no_demo, demo, columns, info)


def load_distances(
    cache_dir: str | Path | None, key: str | None, n_targets: int, n_candidates: int, neighbours: int | None
) -> StoredDistances | None:
    """The cached distances for ``key``, or ``None`` (no cache, a miss, or a damaged entry)."""
    if cache_dir is None or key is None:
        return None
    if not distributed():
        return _read(cache_dir, key, n_targets, n_candidates, neighbours)
    found: list[Any] = [None]
    if torch.distributed.get_rank() == 0:
        found = [_read(cache_dir, key, n_targets, n_candidates, neighbours)]
    torch.distributed.broadcast_object_list(found, src=0)
    return found[0]


def save_distances(cache_dir: str | Path | None, key: str | None, stored: StoredDistances) -> None:
    """Write ``stored`` under ``key`` (rank zero only; nothing without a cache)."""
    if cache_dir is None or key is None or (distributed() and torch.distributed.get_rank() != 0):
        return
    arrays_path, sidecar_path = _paths(cache_dir, key)
    arrays = {"no_demo": stored.no_demo, "demo": stored.demo}
    if stored.columns is not None:
        arrays["columns"] = stored.columns
    with atomic_output(arrays_path, "wb") as handle:
        np.savez(handle, **arrays)
    atomic_write_json(sidecar_path, {"key": key, **stored.info})


__all__ = [
    "FILE_PREFIX",
    "StoredDistances",
    "distributed",
    "kernel_cache_key",
    "load_distances",
    "save_distances",
]
