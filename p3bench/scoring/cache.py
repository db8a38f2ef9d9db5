"""An on-disk cache of per-text quality scores (Ask-LLM P(yes), proxy perplexity; arXiv 2402.09668).

Scoring a pool with a large judge (Flan-T5-XL in Sachdeva et al., "How to Train Data-Efficient LLMs") is
the expensive part of a quality sampler, and every budget and seed of a sweep reuses the same scores::

    scores = cached_scores(scorer, texts, Path(cfg.paths.cache_dir) / "scores", name="askllm-xl")

The file is ``<cache_dir>/<name>-<key>.npy`` (float64, one score per text), where ``key`` is the
sha256 of the scorer's fingerprint and the texts in order (:func:`scores_cache_key`), with the conventions
of :func:`p3bench.embeddings.cached_embeddings`: written atomically (temporary file in the same directory,
``os.replace``), a file that cannot be read or has the wrong shape is recomputed, ``cache_dir=None``
disables the cache. Next to it, ``<name>-<key>.json`` (also atomic) says what the file holds: the
fingerprint, the number of texts, a sha256 of the texts, when it was computed and how long it took, and
the scorer's ``metadata`` when it has one.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from p3bench.embeddings import atomic_save_npy
from p3bench.errors import ConfigError
from p3bench.utils.hashing import texts_sha256
from p3bench.utils.io import atomic_write_json

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TextScorer(ABC):
    """Scores raw texts with its own model (arXiv 2402.09668's quality scorers).

    Subclasses set :attr:`name` and implement :meth:`score_texts` and :attr:`fingerprint`, a string naming
    everything the scores depend on (model and weights, tokenizer, prompt, truncation, normalisation) and
    nothing they do not (batch size, device, progress bar), so it can key :func:`cached_scores`.
    """

    name: str = "text_scorer"

    @abstractmethod
    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One float64 score per text, in input order."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """What the scores depend on, as a string."""


def scores_cache_key(scorer: Any, texts: Sequence[str]) -> str:
    """sha256 of ``scorer.fingerprint`` and the texts in order; every string is length-prefixed, so no two
    different (fingerprint, texts) pairs hash the same bytes (the scheme of ``embeddings_cache_key``)."""
    digest = hashlib.sha256()
    for part in (scorer.fingerprint, *texts):
        data = str(part).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _name(scorer: Any, name: str | None) -> str:
    if name is None:
        name = str(getattr(scorer, "name", type(scorer).__name__))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"score cache name {name!r} is invalid: expected letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def scores_cache_path(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path, *, name: str | None = None
) -> Path:
    """Where :func:`cached_scores` keeps the scores of ``texts``: ``<cache_dir>/<name>-<key>.npy``."""
    return Path(cache_dir) / f"{_name(scorer, name)}-{scores_cache_key(scorer, list(texts))}.npy"


def _load(path: Path, n: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if cached.shape != (n,) or not np.issubdtype(cached.dtype, np.floating):
        return None
    return cached.astype(np.float64, copy=False)


def cached_scores(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, *, name: str | None = None
) -> np.ndarray:
    """``scorer.score_texts(texts)`` as float64, stored under ``cache_dir`` and reused on later calls.

    ``scorer`` is any object with a ``fingerprint`` string and a ``score_texts(texts)`` method (a
    :class:`TextScorer`). ``name`` prefixes the file names (e.g. ``"askllm-xl"``; default: the scorer's
    ``name``) and does not enter the key. The files go straight into ``cache_dir``, as with
    :func:`p3bench.embeddings.cached_embeddings` (callers pass a folder under the run's ``paths.cache_dir``,
    e.g. its ``scores`` folder); ``cache_dir=None`` scores without caching.

    Raises:
        ConfigError: ``name`` is not a plain file-name part.
        ValueError: the scorer returned something other than one number per text.
    """
    texts = [str(text) for text in texts]
    name = _name(scorer, name)
    path = scores_cache_path(scorer, texts, cache_dir, name=name) if cache_dir is not None else None
    if path is not None:
        cached = _load(path, len(texts))
        if cached is not None:
            return cached
    start = time.perf_counter()
    scores = np.asarray(scorer.score_texts(texts), dtype=np.float64)
    seconds = time.perf_counter() - start
    if scores.shape != (len(texts),):
        raise ValueError(
            f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} returned shape {scores.shape}: "
            f"expected ({len(texts)},), one score per text"
        )
    if path is None:
        return scores
    atomic_save_npy(path, np.ascontiguousarray(scores))
    metadata = getattr(scorer, "metadata", None)
    sidecar: dict[str, Any] = {
        "name": name,
        "file": path.name,
        "fingerprint": scorer.fingerprint,
        "n": len(texts),
        "texts_sha256": texts_sha256(texts),
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    if isinstance(metadata, dict):
        sidecar["scorer"] = metadata
    atomic_write_json(path.with_suffix(".json"), sidecar)
    return scores


__all__ = ["TextScorer", "cached_scores", "scores_cache_key", "scores_cache_path"]
