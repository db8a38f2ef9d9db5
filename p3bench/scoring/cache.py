"""An on-disk cache of per-text quality scores (Ask-LLM P(yes), proxy perplexity; arXiv 2402.09668).

Scoring a pool with a large judge (Flan-T5-XL in Sachdeva et al., "How to Train Data-Efficient LLMs") is
the expensive part of a quality sampler, and every budget and seed of a sweep reuses the same scores::

    scores = cached_scores(scorer, texts, cfg.paths.cache_dir, name="askllm-xl")

The entry is ``<cache_dir>/scores/<name>-<key>/`` (:mod:`p3bench.cache_store`, docs/caches.md):
``scores.npy`` (float64, one score per text) and ``manifest.json``, where ``key`` hashes the scorer's
fingerprint and the texts in order (:func:`scores_cache_key`). It is built once under a file lock and
published whole, an entry that cannot be read or has the wrong shape is recomputed, ``cache_dir=None``
disables the cache. The manifest records the fingerprint, the texts' count and sha256, when the scores
were computed and how long it took, and in its ``info`` the ``forward_tokens`` (the non-padding tokens the
scorer's model processed, :meth:`TextScorer.count_forward_tokens`) and the scorer's ``metadata`` when it
has one.

The forward tokens belong to the scores, not to the run that happened to compute them:
:func:`cached_scores_counted` reports the same count on a cache hit as on the first computation, read back
from the manifest (or, for a manifest without the count, recounted with the scorer's tokenizer, which
needs no model pass).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p3bench.cache_store import CacheKey, CacheStore, get_or_create, texts_fingerprint
from p3bench.errors import ConfigError

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


SCORES_FILE = "scores.npy"


def scores_cache_entry_key(scorer: Any, texts: Sequence[str], *, name: str | None = None) -> CacheKey:
    """The cache key of ``texts`` scored by ``scorer``: kind ``scores``, the scorer's fingerprint as the
    model, the texts in order as the data (:func:`p3bench.cache_store.texts_fingerprint`); ``name``
    (default: the scorer's) labels the entry and is not hashed."""
    return CacheKey(
        "scores", _name(scorer, name), model=str(scorer.fingerprint), data=texts_fingerprint(texts)
    )


def scores_cache_key(scorer: Any, texts: Sequence[str]) -> str:
    """The hash that names the cache entry: the :class:`p3bench.cache_store.CacheKey` digest of the kind, the
    scorer's fingerprint and the texts' fingerprint (their count and sha256 in order, every text
    length-prefixed, so no two different text lists hash the same bytes)."""
    return scores_cache_entry_key(scorer, list(texts), name="scores").digest


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
    """Where :func:`cached_scores` keeps the scores of ``texts``:
    ``<cache_dir>/scores/<name>-<key>/scores.npy``, its manifest beside it (``manifest.json``)."""
    key = scores_cache_entry_key(scorer, list(texts), name=name)
    return CacheStore(cache_dir).entry(key).path / SCORES_FILE


def _load(path: Path, n: int) -> np.ndarray | None:
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if cached.shape != (n,) or not np.issubdtype(cached.dtype, np.floating):
        return None
    return cached.astype(np.float64, copy=False)


def _tokens_on_hit(scorer: Any, texts: list[str], info: dict[str, Any]) -> int:
    """The forward tokens of cached scores: the manifest's count, else a recount with the scorer's
    tokenizer (no model pass)."""
    stored = info.get("forward_tokens")
    if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 0:
        return stored
    counter = getattr(scorer, "count_forward_tokens", None)
    return int(counter(texts)) if callable(counter) else 0


def _score(scorer: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    counted = getattr(scorer, "score_texts_counted", None)
    if callable(counted):
        scores, tokens = counted(texts)
    else:  # a duck-typed scorer without a count: its own ``count_forward_tokens`` if it has one, else 0
        scores = scorer.score_texts(texts)
        counter = getattr(scorer, "count_forward_tokens", None)
        tokens = counter(texts) if callable(counter) else 0
    return np.asarray(scores, dtype=np.float64), int(tokens)


def _checked(scorer: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    scores, tokens = _score(scorer, texts)
    if scores.shape != (len(texts),):
        raise ValueError(
            f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} returned shape {scores.shape}: "
            f"expected ({len(texts)},), one score per text"
        )
    return scores, tokens


def _cached(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, name: str | None, count: bool
) -> CachedScores:
    texts = [str(text) for text in texts]
    name = _name(scorer, name)
    if cache_dir is None:
        scores, tokens = _checked(scorer, texts)
        return CachedScores(scores=scores, forward_tokens=tokens, from_cache=False)

    def load(directory: Path, manifest: dict[str, Any]) -> np.ndarray | None:
        return _load(directory / SCORES_FILE, len(texts))

    def build(directory: Path) -> tuple[np.ndarray, dict[str, Any]]:
        scores, tokens = _checked(scorer, texts)
        with (directory / SCORES_FILE).open("wb") as handle:
            np.save(handle, np.ascontiguousarray(scores), allow_pickle=False)
        info: dict[str, Any] = {"name": name, "forward_tokens": tokens}
        metadata = getattr(scorer, "metadata", None)
        if isinstance(metadata, dict):
            info["scorer"] = metadata
        return scores, info

    entry = CacheStore(cache_dir).entry(scores_cache_entry_key(scorer, texts, name=name))
    result = get_or_create(entry, load, build)
    if result.hit:
        tokens = _tokens_on_hit(scorer, texts, result.info) if count else 0
    else:
        tokens = int(result.info["forward_tokens"])
    return CachedScores(scores=result.value, forward_tokens=tokens, from_cache=result.hit)


def cached_scores(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, *, name: str | None = None
) -> np.ndarray:
    """``scorer.score_texts(texts)`` as float64, stored under ``cache_dir`` and reused on later calls.

    ``scorer`` is any object with a ``fingerprint`` string and a ``score_texts(texts)`` method (a
    :class:`TextScorer`). ``name`` prefixes the file names (e.g. ``"askllm-xl"``; default: the scorer's
    ``name``) and does not enter the key. ``cache_dir`` is the run's ``paths.cache_dir`` (or its ``scores``
    folder, which stands for it: :func:`p3bench.cache_store.cache_root`); ``cache_dir=None`` scores
    without caching. :func:`cached_scores_counted`
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
    (``score_texts_counted``) when it runs, the manifest's count on a cache hit, or a recount with
    the scorer's tokenizer (``count_forward_tokens``) when the manifest has none. A scorer with neither
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
    "scores_cache_entry_key",
    "scores_cache_key",
    "scores_cache_path",
]
