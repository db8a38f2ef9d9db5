"""Tokenizers: a byte-level BPE trained locally for the tiny default model, or any Hugging Face tokenizer.

The local tokenizer splits digits one by one (so that numbers are read digit by digit, which small models
need to learn arithmetic) and is cached under ``cache_dir/tokenizers`` keyed by a fingerprint of its training
corpus and settings (:mod:`p3bench.cache_store`), so every run on the same pool uses the same tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from p3bench.cache_store import CacheKey, CacheStore, get_or_create, texts_fingerprint
from p3bench.errors import ModelLoadError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
LOCAL_TOKENIZER_VERSION = 1


def train_local_tokenizer(texts: Sequence[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with single-digit pre-tokenization on ``texts``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def local_tokenizer_cache_key(texts: Sequence[str], vocab_size: int) -> CacheKey:
    """The cache key of the local tokenizer of ``texts``: kind ``tokenizers``, its version as the model,
    the corpus in order as the data, the vocabulary size as the config."""
    return CacheKey(
        "tokenizers",
        f"bpe-{vocab_size}",
        model={"tokenizer": "byte-level BPE, single digits", "version": LOCAL_TOKENIZER_VERSION},
        data=texts_fingerprint(texts),
        config={"vocab_size": int(vocab_size)},
    )


def local_tokenizer(texts: Sequence[str], vocab_size: int, cache_dir: str | Path) -> PreTrainedTokenizerFast:
    """The cached local tokenizer for this corpus and vocabulary size, trained on first use (once across
    the processes of a sweep: :func:`p3bench.cache_store.get_or_create`), in
    ``<cache_dir>/tokenizers/bpe-<vocab_size>-<key>/``."""

    def load(directory: Path, manifest: dict[str, Any]) -> PreTrainedTokenizerFast | None:
        return PreTrainedTokenizerFast.from_pretrained(str(directory))

    def build(directory: Path) -> tuple[PreTrainedTokenizerFast, dict[str, Any]]:
        log.info("training a %d-token BPE tokenizer on %d texts", vocab_size, len(texts))
        tokenizer = train_local_tokenizer(texts, vocab_size)
        tokenizer.save_pretrained(str(directory))
        return tokenizer, {"vocab": len(tokenizer)}

    entry = CacheStore(cache_dir).entry(local_tokenizer_cache_key(texts, vocab_size))
    return get_or_create(entry, load, build).value


def pretrained_tokenizer(name_or_path: str, offline: bool) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer by hub name or local path, with a pad token guaranteed."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - the library raises many types; the user needs one line
        where = (
            "a local directory or a model in the Hugging Face cache (offline=true)" if offline else "a hub id"
        )
        raise ModelLoadError(
            f"tokenizer {name_or_path!r} cannot be loaded: expected {where} ({type(exc).__name__})"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
