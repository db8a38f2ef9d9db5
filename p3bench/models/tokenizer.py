"""Tokenizers: a byte-level BPE trained locally for the tiny default model, or any Hugging Face tokenizer.

The local tokenizer splits digits one by one (so that numbers are read digit by digit, which small models
need to learn arithmetic) and is cached under ``cache_dir`` keyed by a fingerprint of its training corpus and
settings, so every run on the same pool uses the same tokenizer.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from p3bench.errors import ModelLoadError
from p3bench.utils.hashing import texts_sha256

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


def local_tokenizer(texts: Sequence[str], vocab_size: int, cache_dir: str | Path) -> PreTrainedTokenizerFast:
    """The cached local tokenizer for this corpus and vocabulary size, trained on first use."""
    key = texts_sha256([f"v{LOCAL_TOKENIZER_VERSION}", str(vocab_size), *texts])[:16]
    path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{key}"
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    log.info("training a %d-token BPE tokenizer on %d texts", vocab_size, len(texts))
    tokenizer = train_local_tokenizer(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(path)
    except OSError:  # another process of a sweep saved it first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


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
