"""The sparse option of DELIFT's utility kernel (:mod:`p3bench.scoring.icl_utility`): each target's ``k``
nearest candidates by the cosine of sentence embeddings, so that the utility is computed for ``N k`` pairs
instead of ``N^2``. The embeddings come from an :class:`p3bench.embeddings.Embedder` (the packaged MiniLM by
default) over each example's prompt and response (:func:`p3bench.scoring.icl_utility_tokens.embedding_text`,
cached under the kernel's ``cache_dir``), or are given. This selection of pairs is the bench's, not the
paper's, which computes the full kernel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3bench.data.example import Example
from p3bench.embeddings import Embedder, build_embedder, cached_embeddings_counted
from p3bench.errors import ConfigError
from p3bench.scoring.icl_utility_store import distributed
from p3bench.scoring.icl_utility_tokens import embedding_text

# -- neighbours -------------------------------------------------------------------------------------------


def nearest_candidates(
    target_vectors: np.ndarray, candidate_vectors: np.ndarray, k: int, *, block: int = 1024
) -> np.ndarray:
    """The ``k`` candidates of highest cosine similarity to each target, (n_targets, min(k, n_candidates))
    int64, nearest first; ties go to the lower index. Computed in float32 row blocks (no n x n matrix in
    memory)."""

    def unit(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    targets, candidates = unit(target_vectors), unit(candidate_vectors)
    if targets.ndim != 2 or candidates.ndim != 2 or targets.shape[1] != candidates.shape[1]:
        raise ConfigError(
            f"icl_utility_kernel: embeddings of shapes {targets.shape} and {candidates.shape} do not match: "
            "expected (n_targets, d) and (n_candidates, d)"
        )
    k = min(k, len(candidates))
    out = np.empty((len(targets), k), dtype=np.int64)
    for start in range(0, len(targets), block):
        similarity = targets[start : start + block] @ candidates.T
        out[start : start + block] = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return out


def _find_neighbours(
    targets: list[Example],
    candidates: list[Example],
    k: int,
    embedder: Embedder | str | None,
    embeddings: tuple[np.ndarray, np.ndarray] | None,
    cache_dir: str | Path | None,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """Each target's ``k`` nearest candidates and the embedder's forward tokens (0 for given vectors)."""
    if embeddings is not None:
        target_vectors, candidate_vectors = embeddings
        if len(target_vectors) != len(targets) or len(candidate_vectors) != len(candidates):
            raise ConfigError(
                f"icl_utility_kernel: embeddings hold {len(target_vectors)} and {len(candidate_vectors)} rows: "
                f"expected {len(targets)} targets and {len(candidates)} candidates"
            )
        return nearest_candidates(target_vectors, candidate_vectors, k), 0
    model = resolve_embedder(embedder, progress)
    same = candidates is targets  # a pool x pool kernel: the pool embedded once
    texts = [embedding_text(ex) for ex in (targets if same else (*targets, *candidates))]
    vectors, tokens = cached_embeddings_counted(model, texts, cache_dir)
    left, right = (vectors, vectors) if same else (vectors[: len(targets)], vectors[len(targets) :])
    return nearest_candidates(left, right, k), int(tokens)


def resolve_embedder(embedder: Embedder | str | None, progress: bool) -> Embedder:
    if isinstance(embedder, Embedder):
        return embedder
    return build_embedder(embedder or "minilm", progress=progress)


def neighbour_source(embedder: Embedder | str | None, embeddings: Any, progress: bool) -> str:
    """What decides the neighbours, for the cache key: the embedder's fingerprint or the given vectors."""
    if embeddings is not None:
        digest = hashlib.sha256()
        for vectors in embeddings:
            array = np.ascontiguousarray(vectors, dtype=np.float32)
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        return f"vectors:{digest.hexdigest()}"
    return resolve_embedder(embedder, progress).fingerprint


def neighbour_columns(
    targets: list[Example],
    candidates: list[Example],
    k: int,
    embedder: Embedder | str | None,
    embeddings: tuple[np.ndarray, np.ndarray] | None,
    cache_dir: str | Path | None,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """The neighbours found on rank zero, so that every process plans the same pairs."""
    if not distributed():
        return _find_neighbours(targets, candidates, k, embedder, embeddings, cache_dir, progress)
    found: list[Any] = [None]
    if torch.distributed.get_rank() == 0:
        found = [_find_neighbours(targets, candidates, k, embedder, embeddings, cache_dir, progress)]
    torch.distributed.broadcast_object_list(found, src=0)
    return found[0]


__all__ = ["nearest_candidates", "neighbour_columns", "neighbour_source", "resolve_embedder"]
