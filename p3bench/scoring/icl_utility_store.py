"""The on-disk cache of DELIFT utility kernels (:mod:`p3bench.scoring.icl_utility`).

What is stored is the expensive part, the distances: ``no_demo`` (n_targets,) and ``demo`` (n_targets,
n_candidates), or (n_targets, k) with ``columns`` (the neighbours) for a sparse kernel, all float32 but the
int64 columns, in the cache entry ``<cache_dir>/kernels/icl-utility-<key>/`` (:mod:`p3bench.cache_store`,
docs/caches.md): ``distances.npz``, and the counts of the computation (forward tokens, seconds, ...) in the
``info`` of its manifest. The entry is published whole under a file lock, the manifest last, so a reader
never sees half of it; an entry that is missing, unreadable or of the wrong shape is a miss. The key
(:func:`kernel_cache_key`) hashes everything the distances depend on: the model's weights and config (or a
caller's fingerprint), the tokenizer, the examples' texts, the prompts and their version, ``max_length`` and
the neighbour settings. The kernel's kind is not in it: it is applied to the distances on
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

from p3bench.cache_store import CacheEntry, CacheKey, CacheStore, store_entry
from p3bench.data.example import Example
from p3bench.models.weights_cache import model_config_dict, tokenizer_digest, weights_digest
from p3bench.scoring.icl_utility_tokens import (
    DEMO_PREFIX_TEMPLATE,
    NO_DEMO_TEMPLATE,
    PROMPT_VERSION,
    QUERY_TEMPLATE,
)
from p3bench.utils.hashing import texts_sha256

FILE_PREFIX = "icl-utility"
ARRAYS_FILE = "distances.npz"


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


class KernelCacheKey(str):
    """A kernel's cache key: the hash (a plain string in diagnostics) carrying what it was made of, the
    :class:`p3bench.cache_store.CacheKey` of its entry."""

    entry_key: CacheKey

    def __new__(cls, entry_key: CacheKey) -> KernelCacheKey:
        key = super().__new__(cls, entry_key.digest)
        key.entry_key = entry_key
        return key

    def __reduce__(self) -> tuple[type[KernelCacheKey], tuple[CacheKey]]:
        return KernelCacheKey, (self.entry_key,)


def kernel_cache_key(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    targets: list[Example],
    candidates: list[Example],
    max_length: int,
    neighbours: int | None,
    neighbour_source: str | None,
    model_fingerprint: str | None = None,
) -> KernelCacheKey:
    """sha256 of everything the distances depend on (module docstring): the model and tokenizer, the
    examples, and the prompts, ``max_length`` and neighbour settings as the config."""
    if model_fingerprint is None:
        model_part: Any = {"weights": weights_digest(model), "config": model_config_dict(model)}
    else:
        model_part = {"fingerprint": str(model_fingerprint)}
    entry_key = CacheKey(
        "kernels",
        FILE_PREFIX,
        model=json.loads(json.dumps({**model_part, "tokenizer": tokenizer_digest(tokenizer)}, default=str)),
        data={
            "targets": _examples_sha256(targets),
            "n_targets": len(targets),
            "candidates": _examples_sha256(candidates),
            "n_candidates": len(candidates),
        },
        config={
            "what": "icl_utility",
            "prompt_version": PROMPT_VERSION,
            "templates": [NO_DEMO_TEMPLATE, DEMO_PREFIX_TEMPLATE, QUERY_TEMPLATE],
            "max_length": int(max_length),
            "neighbours": neighbours,
            "neighbour_source": neighbour_source,
        },
    )
    return KernelCacheKey(entry_key)


def _entry(cache_dir: str | Path, key: str) -> CacheEntry:
    if isinstance(key, KernelCacheKey):
        entry_key = key.entry_key
    else:  # a key made elsewhere: an entry of its own, named by its hash
        entry_key = CacheKey("kernels", FILE_PREFIX, model=None, data=None, config={"key": str(key)})
    return CacheStore(cache_dir).entry(entry_key)


def _read(
    cache_dir: str | Path, key: str, n_targets: int, n_candidates: int, neighbours: int | None
) -> StoredDistances | None:
    entry = _entry(cache_dir, key)
    manifest = entry.manifest()
    if manifest is None:
        return None
    try:
        with np.load(entry.path / ARRAYS_FILE, allow_pickle=False) as arrays:
            no_demo, demo = arrays["no_demo"], arrays["demo"]
            columns = arrays["columns"] if "columns" in arrays.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None
    width = n_candidates if neighbours is None else neighbours
    if (
        no_demo.shape != (n_targets,)
        or demo.shape != (n_targets, width)
        or (neighbours is None) != (columns is None)
        or (columns is not None and columns.shape != (n_targets, neighbours))
    ):
        return None
    return StoredDistances(no_demo, demo, columns, {"key": str(key), **manifest.get("info", {})})


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
    arrays = {"no_demo": stored.no_demo, "demo": stored.demo}
    if stored.columns is not None:
        arrays["columns"] = stored.columns

    def write(directory: Path) -> dict[str, Any]:
        with (directory / ARRAYS_FILE).open("wb") as handle:
            np.savez(handle, **arrays)
        return dict(stored.info)

    store_entry(_entry(cache_dir, key), write)


__all__ = [
    "ARRAYS_FILE",
    "FILE_PREFIX",
    "KernelCacheKey",
    "StoredDistances",
    "distributed",
    "kernel_cache_key",
    "load_distances",
    "save_distances",
]
