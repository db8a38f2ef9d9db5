"""An on-disk cache of per-text quality scores (Ask-LLM P(yes), proxy perplexity; arXiv 2402.09668).

Scoring a pool with a large judge (Flan-T5-XL in Sachdeva et al., "How to Train Data-Efficient LLMs") is
the expensive part of a quality sampler, and every budget and seed of a sweep reuses the same scores::

    scores = cached_scores(scorer, texts, Path(cfg.paths.cache_dir) / "scores", name="askllm-xl")

The file is ``<cache_dir>/<name>-<key>.npy`` (float64, one score per text), where ``key`` is the
sha256 of the scorer's fingerprint and the texts in order (:func:`scores_cache_key`), with the conventions
of :func:`p3bench.embeddings.cached_embeddings`: written atomically (temporary file in the same directory,
``os.replace``), a file that cannot be read or has the wrong shape is recomputed, ``cache_dir=None``
disables the cache. Next to it, ``<name>-<key>.json`` (also atomic) says what the file holds: the
fingerprint, the number of texts, a sha256 of the texts, when it was computed and how long it took,
``forward_tokens`` (the non-padding tokens the scorer's model processed,
:meth:`TextScorer.count_forward_tokens`) and the scorer's ``metadata`` when it has one.

The forward tokens belong to the scores, not to the run that happened to compute them:
:func:`cached_scores_counted` reports the same count on a cache hit as on the first computation, read back
from the sidecar (or, for a sidecar written before it held the count, recounted with the scorer's tokenizer,
which needs no model pass, and written into the sidecar).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
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
    nothing they do not (batch size, device, progress bar), so it can key :func:`cached_scores`. A scorer
    that runs a model also implements :meth:`count_forward_tokens` (and :meth:`score_texts_counted`, to report
    what its pass processed); the defaults are those of a scorer without a model (0 tokens).
    """

    name: str = "text_scorer"

    @abstractmethod
    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One float64 score per text, in input order."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """What the scores depend on, as a string."""

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The non-padding tokens the scorer's model processes to score ``texts`` (its own tokenization,
        after truncation, prompt included), counted with the tokenizer alone: no model pass. 0 here."""
        return 0

    def score_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`score_texts` and the forward tokens that pass processed."""
        return self.score_texts(texts), self.count_forward_tokens(texts)


@dataclass
class CachedScores:
    """What :func:`cached_scores_counted` returns: the scores, the forward tokens computing them takes
    (the same whether or not the cache served them) and whether the cache served them."""

    scores: np.ndarray
    forward_tokens: int
    from_cache: bool


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


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def _tokens_on_hit(scorer: Any, texts: list[str], path: Path) -> int:
    """The forward tokens of cached scores: the sidecar's count when it has one for this scorer and these
    texts, else a recount with the scorer's tokenizer (written into the sidecar for the next hit)."""
    sidecar_path = path.with_suffix(".json")
    sidecar = _read_sidecar(sidecar_path)
    matches = (
        sidecar is not None
        and sidecar.get("fingerprint") == scorer.fingerprint
        and sidecar.get("n") == len(texts)
    )
    stored = sidecar.get("forward_tokens") if matches else None  # type: ignore[union-attr]
    if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 0:
        return stored
    counter = getattr(scorer, "count_forward_tokens", None)
    tokens = int(counter(texts)) if callable(counter) else 0
    if matches:
        with contextlib.suppress(OSError):  # a read-only cache: recount on the next hit too
            atomic_write_json(sidecar_path, {**sidecar, "forward_tokens": tokens})  # type: ignore[dict-item]
    return tokens


def _score(scorer: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    counted = getattr(scorer, "score_texts_counted", None)
    if callable(counted):
        scores, tokens = counted(texts)
    else:  # a duck-typed scorer without a count: its own ``count_forward_tokens`` if it has one, else 0
        scores = scorer.score_texts(texts)
        counter = getattr(scorer, "count_forward_tokens", None)
        tokens = counter(texts) if callable(counter) else 0
    return np.asarray(scores, dtype=np.float64), int(tokens)


def _cached(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, name: str | None, count: bool
) -> CachedScores:
    texts = [str(text) for text in texts]
    name = _name(scorer, name)
    path = scores_cache_path(scorer, texts, cache_dir, name=name) if cache_dir is not None else None
    if path is not None:
        cached = _load(path, len(texts))
        if cached is not None:
            tokens = _tokens_on_hit(scorer, texts, path) if count else 0
            return CachedScores(scores=cached, forward_tokens=tokens, from_cache=True)
    start = time.perf_counter()
    scores, tokens = _score(scorer, texts)
    seconds = time.perf_counter() - start
    if scores.shape != (len(texts),):
        raise ValueError(
            f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} returned shape {scores.shape}: "
            f"expected ({len(texts)},), one score per text"
        )
    if path is None:
        return CachedScores(scores=scores, forward_tokens=tokens, from_cache=False)
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
        "forward_tokens": tokens,
    }
    if isinstance(metadata, dict):
        sidecar["scorer"] = metadata
    atomic_write_json(path.with_suffix(".json"), sidecar)
    return CachedScores(scores=scores, forward_tokens=tokens, from_cache=False)


def cached_scores(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, *, name: str | None = None
) -> np.ndarray:
    """``scorer.score_texts(texts)`` as float64, stored under ``cache_dir`` and reused on later calls.

    ``scorer`` is any object with a ``fingerprint`` string and a ``score_texts(texts)`` method (a
    :class:`TextScorer`). ``name`` prefixes the file names (e.g. ``"askllm-xl"``; default: the scorer's
    ``name``) and does not enter the key. The files go straight into ``cache_dir``, as with
    :func:`p3bench.embeddings.cached_embeddings` (callers pass a folder under the run's ``paths.cache_dir``,
    e.g. its ``scores`` folder); ``cache_dir=None`` scores without caching. :func:`cached_scores_counted`
    also gives the forward tokens.

    Raises:
        ConfigError: ``name`` is not a plain file-name part.
        ValueError: the scorer returned something other than one number per text.
    """
    return _cached(scorer, texts, cache_dir, name, count=False).scores


def cached_scores_counted(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, *, name: str | None = None
) -> CachedScores:
    """:func:`cached_scores` with the forward tokens the scores take: what the scorer's pass processed
    (``score_texts_counted``) when it runs, the sidecar's count on a cache hit, or a recount with
    the scorer's tokenizer (``count_forward_tokens``) when an older sidecar has none. A scorer with neither
    method counts 0.

    Raises:
        ConfigError: ``name`` is not a plain file-name part.
        ValueError: the scorer returned something other than one number per text.
    """
    return _cached(scorer, texts, cache_dir, name, count=True)


__all__ = [
    "CachedScores",
    "TextScorer",
    "cached_scores",
    "cached_scores_counted",
    "scores_cache_key",
    "scores_cache_path",
]
