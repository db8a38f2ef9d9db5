"""Small local stand-ins for the hub models a paper scores its data with, trained here on a CPU.

Sachdeva et al., "How to Train Data-Efficient LLMs" (arXiv 2402.09668) score C4 with Flan-T5-{Small, Base,
Large, XL, XXL} (Ask-LLM), with T5-{Small, ..., XXL}, and with five intermediate checkpoints of T5-Large
(perplexity filters). Those need a model hub and a GPU. Without them, p3bench trains small stand-ins of the
same families and roles, and every result that used one says so (``standin.json`` travels with the scorer's
fingerprint into the run's diagnostics):

- **Perplexity proxies**: Llama-architecture causal LMs of five sizes, trained with the LM objective on the
  pool they will filter (the paper's proxies were pre-trained on C4, the pool it filters), with checkpoints
  at 2%, 10%, 30%, 50% and 70% of training (the paper's 20k/100k/300k/500k/700k of 1M steps). Departure:
  the paper's proxies are encoder-decoder T5 models; a causal LM's perplexity is well defined, T5's is not
  stated in the paper.
- **Ask-LLM judges**: T5-architecture seq2seq models of five sizes, trained on the paper's prompt to answer
  "yes" for documents of a reference corpus of curated text and "no" for degraded copies of the same
  documents (character noise, reversed words, random letters, clipped words: unlike the junk that
  ``text_mix`` plants, so an effect on that junk is generalisation). They judge well-formedness
  only. They have none of the world knowledge or instruction following that Flan-T5 brings, which is what the
  paper credits for Ask-LLM's gains, so conclusions about Ask-LLM drawn from them are about the code path
  and about a well-formedness filter, not about the paper's claim.

Each stand-in is an ordinary Hugging Face directory (model, tokenizer, and ``standin.json`` describing how it
was made, with the tokens it trained on, from which a run counts its training FLOPs: :mod:`p3bench.compute`),
so the scorers load it through the same code path as a hub model. Directories are cached under
``cache_dir/weights/causal-<size>-<key>/`` and ``cache_dir/weights/askllm-<size>-<key>/`` (entries of kind
``weights``, :mod:`p3bench.cache_store`, docs/caches.md) keyed by everything the weights depend on, built
once under a file lock (parallel sweep jobs wait for the first one) and moved into place atomically.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from p3bench.cache_store import CacheEntry, CacheStore, get_or_create
from p3bench.errors import ConfigError
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.models.weights_cache import weights_cache_key
from p3bench.utils.hashing import texts_sha256
from p3bench.utils.io import publish_directory
from p3bench.utils.progress import progress_bar

log = logging.getLogger(__name__)

STANDIN_VERSION = 2

#: Causal LM proxies (Llama architecture), smallest to largest, named after the paper's T5 sizes.
CAUSAL_SIZES: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2},
    "base": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2},
    "large": {"hidden_size": 96, "intermediate_size": 288, "num_hidden_layers": 3, "num_attention_heads": 3},
    "xl": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4},
    "xxl": {"hidden_size": 192, "intermediate_size": 576, "num_hidden_layers": 4, "num_attention_heads": 4},
}

#: Ask-LLM judges (T5 architecture), smallest to largest.
SEQ2SEQ_SIZES: dict[str, dict[str, int]] = {
    "small": {"d_model": 32, "d_ff": 96, "num_layers": 1, "num_heads": 2},
    "base": {"d_model": 48, "d_ff": 144, "num_layers": 2, "num_heads": 2},
    "large": {"d_model": 64, "d_ff": 192, "num_layers": 2, "num_heads": 4},
    "xl": {"d_model": 96, "d_ff": 288, "num_layers": 3, "num_heads": 4},
    "xxl": {"d_model": 128, "d_ff": 384, "num_layers": 4, "num_heads": 4},
}

#: The paper's perplexity-checkpoint series (steps of a 1M-step T5-Large run) as fractions of training.
CHECKPOINT_FRACTIONS = (0.02, 0.1, 0.3, 0.5, 0.7)

#: How the Ask-LLM stand-ins' negatives are made. Deliberately different in kind from the junk that
#: ``text_mix`` plants (shuffled words, boilerplate lines, keyword spam: all real words), so that a stand-in's
#: effect on planted junk measures generalisation, not recall of its own training recipe.
DEGRADATIONS = ("character_noise", "reversed_words", "letter_salad", "clipped_words")


@dataclass(frozen=True)
class TrainingSettings:
    """How a stand-in is trained: optimizer steps, batch size, peak learning rate, sequence cap, seed."""

    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    max_length: int = 256
    seed: int = 0
    vocab_size: int = 512

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"stand-in {name}={value!r} is invalid: expected an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"stand-in lr={self.lr!r} is invalid: expected a positive number")


def _check_size(size: str, table: dict[str, dict[str, int]], kind: str) -> dict[str, int]:
    if size not in table:
        raise ConfigError(f"{kind} stand-in size {size!r} is unknown: expected one of {', '.join(table)}")
    return table[size]


def checkpoint_steps(total_steps: int, fractions: Sequence[float] = CHECKPOINT_FRACTIONS) -> list[int]:
    """The optimizer steps at which the checkpoint series is saved (at least step 1, distinct, sorted)."""
    for fraction in fractions:
        if not 0 < float(fraction) <= 1:
            raise ConfigError(f"checkpoint fraction {fraction!r} is invalid: expected a number in (0, 1]")
    return sorted({max(1, round(float(f) * total_steps)) for f in fractions})


# -- caching -------------------------------------------------------------------------------------------------


def _entry(cache_dir: str | Path, label: str, parts: dict[str, Any], data: tuple[str, ...]) -> CacheEntry:
    """The cache entry (kind ``weights``) of a stand-in: model = what it is (kind, version, size,
    architecture), data = its corpus, config = the rest (settings, template, steps)."""
    model = ("kind", "version", "size", "architecture")
    return CacheStore(cache_dir).entry(weights_cache_key(label, parts, model=model, data=data))


# -- perplexity proxies -----------------------------------------------------------------------------------------


def causal_proxy_checkpoints(
    texts: Sequence[str],
    size: str,
    cache_dir: str | Path,
    settings: TrainingSettings | None = None,
    fractions: Sequence[float] = CHECKPOINT_FRACTIONS,
    progress: bool = False,
) -> dict[int, Path]:
    """Directories of a causal LM proxy of ``size`` trained on ``texts``: the final model (key
    ``settings.steps``) and the checkpoints at ``fractions`` of training. Trained on first use, then cached.
    """
    settings = settings or TrainingSettings()
    architecture = _check_size(size, CAUSAL_SIZES, "causal proxy")
    if not texts:
        raise ConfigError("a perplexity proxy needs training texts: the pool is empty")
    steps = [*checkpoint_steps(settings.steps, fractions), settings.steps]
    parts = {
        "kind": "causal_proxy",
        "version": STANDIN_VERSION,
        "size": size,
        "architecture": architecture,
        "settings": vars(settings),
        "corpus": texts_sha256(texts),
        "n": len(texts),
        "steps": steps,
    }
    entry = _entry(cache_dir, f"causal-{size}", parts, data=("corpus", "n"))
    wanted = {step: entry.path / f"step-{step}" for step in steps}

    def load(directory: Path, manifest: dict[str, Any]) -> dict[int, Path] | None:
        complete = all((directory / f"step-{step}" / "standin.json").is_file() for step in steps)
        return wanted if complete else None

    def build(directory: Path) -> tuple[dict[int, Path], dict[str, Any]]:
        log.info(
            "training the %s causal proxy stand-in (%d steps) on %d texts", size, settings.steps, len(texts)
        )
        _train_causal_proxy(texts, architecture, settings, sorted(set(steps)), directory, size, progress)
        return wanted, {"steps": steps}

    return get_or_create(entry, load, build).value


def _train_causal_proxy(
    texts: Sequence[str],
    architecture: dict[str, int],
    settings: TrainingSettings,
    save_at: list[int],
    root: Path,
    size: str,
    progress: bool,
) -> None:
    torch.manual_seed(settings.seed)
    tokenizer = train_local_tokenizer(list(texts), settings.vocab_size)
    sequences = _proxy_sequences(tokenizer, texts, settings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=architecture["num_attention_heads"],
        max_position_embeddings=settings.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **architecture,
    )
    model = LlamaForCausalLM(config)
    optimizer, scheduler = _optimizer(model, settings)
    model.train()
    losses: list[float] = []
    tokens = 0
    batches = _proxy_batches(len(sequences), settings)
    for step, batch in zip(
        _steps(settings.steps, progress, f"training proxy ({size})"), batches, strict=True
    ):
        input_ids, attention = _right_padded([sequences[i] for i in batch], tokenizer.pad_token_id)
        labels = input_ids.masked_fill(attention == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        _update(loss, model, optimizer, scheduler)
        losses.append(loss.item())
        tokens += int(attention.sum())
        if step in save_at:
            record = {
                "standin": True,
                "role": "perplexity proxy",
                "stands_in_for": "T5 perplexity filter (arXiv 2402.09668, App. B.5)",
                "architecture": "llama",
                "size": size,
                "step": step,
                "total_steps": settings.steps,
                "settings": vars(settings),
                "n_train_texts": len(texts),
                # the non-padding tokens trained on up to this step (what its compute is counted from)
                "train_tokens": tokens,
                "train_loss_last_20": float(np.mean(losses[-20:])),
                "version": STANDIN_VERSION,
            }
            _save(model, tokenizer, record, root / f"step-{step}")


# -- Ask-LLM judges -------------------------------------------------------------------------------------------


def degrade(text: str, kind: str, rng: np.random.Generator) -> str:
    """A low-quality copy of ``text`` of the given kind (one of :data:`DEGRADATIONS`), whitespace (line and
    paragraph breaks) kept as it is, so that the layout of a text tells nothing."""
    parts = re.split(r"(\s+)", text)
    words = [i for i, part in enumerate(parts) if part and not part.isspace()]
    if not words:
        return text
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in words:
        word = parts[i]
        if kind == "character_noise":
            noisy = [letters[rng.integers(26)] if rng.random() < 0.3 else c for c in word]
            parts[i] = "".join(noisy)
        elif kind == "reversed_words":
            parts[i] = word[::-1]
        elif kind == "letter_salad":
            parts[i] = "".join(letters[j] for j in rng.integers(0, 26, len(word)))
        elif kind == "clipped_words":
            parts[i] = word[: max(1, min(3, len(word) - 1))]
        else:
            raise ConfigError(f"degradation {kind!r} is unknown: expected one of {', '.join(DEGRADATIONS)}")
    return "".join(parts)


def clip_words(text: str, max_words: int) -> str:
    """The first ``max_words`` words of ``text`` with the whitespace between them as it was."""
    parts = re.split(r"(\s+)", text.strip())
    kept, count = [], 0
    for part in parts:
        if part and not part.isspace():
            if count == max_words:
                break
            count += 1
        kept.append(part)
    return "".join(kept).rstrip()


def ask_llm_judge(
    reference_texts: Sequence[str],
    size: str,
    template: str,
    cache_dir: str | Path,
    settings: TrainingSettings | None = None,
    max_text_words: int = 120,
    progress: bool = False,
) -> Path:
    """The directory of a T5 Ask-LLM stand-in of ``size`` trained to answer the ``template`` prompt (with a
    ``{text}`` placeholder) with "yes" for ``reference_texts`` and "no" for degraded copies of them."""
    settings = settings or TrainingSettings(steps=300, lr=1e-3)
    architecture = _check_size(size, SEQ2SEQ_SIZES, "Ask-LLM")
    if "{text}" not in template:
        raise ConfigError("the Ask-LLM template has no {text} placeholder: expected one where the text goes")
    texts = [t for t in reference_texts if t.split()]
    if len(texts) < 10:
        raise ConfigError(
            f"the Ask-LLM stand-in has {len(texts)} usable reference texts: expected at least 10"
        )
    parts = {
        "kind": "ask_llm_judge",
        "version": STANDIN_VERSION,
        "size": size,
        "architecture": architecture,
        "settings": vars(settings),
        "corpus": texts_sha256(texts),
        "template": template,
        "max_text_words": max_text_words,
    }
    entry = _entry(cache_dir, f"askllm-{size}", parts, data=("corpus",))

    def load(directory: Path, manifest: dict[str, Any]) -> Path | None:
        return entry.path if (directory / "standin.json").is_file() else None

    def build(directory: Path) -> tuple[Path, dict[str, Any]]:
        log.info("training the %s Ask-LLM stand-in (%d steps) on %d texts", size, settings.steps, len(texts))
        _train_judge(texts, architecture, settings, template, max_text_words, directory, size, progress)
        return entry.path, {}

    return get_or_create(entry, load, build).value


def judge_examples(
    texts: Sequence[str], template: str, max_text_words: int, seed: int
) -> tuple[list[str], list[str]]:
    """Prompts and answers the judges learn from: each text as it is ("yes") and one degraded copy ("no"),
    in that order (so the pair of text ``i`` is at ``2i`` and ``2i + 1``)."""
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for text in texts:
        clipped = clip_words(text, max_text_words)
        bad = degrade(clipped, DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))], rng)
        prompts += [template.format(text=clipped), template.format(text=bad)]
        answers += ["yes", "no"]
    return prompts, answers


def _train_judge(
    texts: list[str],
    architecture: dict[str, int],
    settings: TrainingSettings,
    template: str,
    max_text_words: int,
    path: Path,
    size: str,
    progress: bool,
) -> None:
    torch.manual_seed(settings.seed)
    prompts, answers = judge_examples(texts, template, max_text_words, settings.seed)
    heldout, batches = _judge_batches(len(texts), settings)
    tokenizer = train_local_tokenizer(prompts, settings.vocab_size)
    tokenizer.add_tokens([AddedToken(word, single_word=True) for word in ("yes", "no")])
    encoded = _judge_inputs(tokenizer, prompts)
    answer_ids = {word: tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no")}
    config = T5Config(
        vocab_size=len(tokenizer),
        d_kv=architecture["d_model"] // architecture["num_heads"],
        num_decoder_layers=1,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **architecture,
    )
    model = T5ForConditionalGeneration(config)
    optimizer, scheduler = _optimizer(model, settings)
    model.train()
    encoder_tokens = decoder_tokens = 0
    steps = _steps(settings.steps, progress, f"training Ask-LLM stand-in ({size})")
    for _, batch in zip(steps, batches, strict=True):
        input_ids, attention = _right_padded([encoded[i] for i in batch], tokenizer.pad_token_id)
        labels = torch.tensor([[answer_ids[answers[i]], tokenizer.eos_token_id] for i in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        _update(loss, model, optimizer, scheduler)
        encoder_tokens += int(attention.sum())
        decoder_tokens += labels.numel()  # the decoder reads the start token and the answer
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(heldout), 32):
            rows = [int(i) for i in heldout[start : start + 32]]
            input_ids, attention = _right_padded([encoded[i] for i in rows], tokenizer.pad_token_id)
            start_ids = torch.full((len(rows), 1), config.decoder_start_token_id)
            logits = model(input_ids=input_ids, attention_mask=attention, decoder_input_ids=start_ids).logits
            says_yes = logits[:, 0, answer_ids["yes"]] > logits[:, 0, answer_ids["no"]]
            correct += sum(
                bool(y) == (answers[i] == "yes") for y, i in zip(says_yes.tolist(), rows, strict=True)
            )
    record = {
        "standin": True,
        "role": "Ask-LLM judge",
        "stands_in_for": "Flan-T5 Ask-LLM scorer (arXiv 2402.09668, §3.1, App. B.6)",
        "architecture": "t5",
        "size": size,
        "trained_on": "the Ask-LLM prompt: reference texts -> yes, degraded copies -> no",
        "degradations": list(DEGRADATIONS),
        "settings": vars(settings),
        "n_reference_texts": len(texts),
        "max_text_words": max_text_words,
        # the tokens trained on, encoder and decoder (what its compute is counted from)
        "train_encoder_tokens": encoder_tokens,
        "train_decoder_tokens": decoder_tokens,
        "heldout_accuracy": correct / len(heldout),
        "n_heldout": len(heldout),
        "version": STANDIN_VERSION,
    }
    _save(model, tokenizer, record, path)


# -- what a stand-in trained on ------------------------------------------------------------------------------------


def _proxy_sequences(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], settings: TrainingSettings
) -> list[list[int]]:
    """The proxy's training sequences: BOS, the text's tokens, EOS, cut at ``settings.max_length``."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [([tokenizer.bos_token_id] + row + [tokenizer.eos_token_id])[: settings.max_length] for row in ids]


def _proxy_batches(n: int, settings: TrainingSettings) -> Iterator[np.ndarray]:
    """The positions of each training step's batch among ``n`` sequences (drawn with replacement)."""
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.steps):
        yield rng.integers(0, n, settings.batch_size)


def _judge_inputs(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> list[list[int]]:
    """The judge's encoder inputs: each prompt encoded, EOS appended. The words cap keeps prompts short;
    they are never cut, so the question is always seen whole."""
    return [row + [tokenizer.eos_token_id] for row in tokenizer(list(prompts))["input_ids"]]


def _judge_batches(n_texts: int, settings: TrainingSettings) -> tuple[np.ndarray, Iterator[list[int]]]:
    """The held-out examples (by text: a text and its degraded copy, ``2i`` and ``2i + 1``, are on the
    same side) and the examples of each training step's batch (drawn with replacement from the rest)."""
    rng = np.random.default_rng(settings.seed)
    texts_order = rng.permutation(n_texts)
    n_heldout = max(1, n_texts // 10)
    heldout = np.concatenate([[2 * i, 2 * i + 1] for i in texts_order[:n_heldout]])
    train = np.concatenate([[2 * i, 2 * i + 1] for i in texts_order[n_heldout:]])

    def batches() -> Iterator[list[int]]:
        for _ in range(settings.steps):
            yield [int(i) for i in rng.choice(train, settings.batch_size)]

    return heldout, batches()


def training_tokens(
    record: dict[str, Any],
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    template: str | None = None,
) -> tuple[int, int]:
    """The (encoder or only, decoder) tokens the stand-in ``record`` describes was trained on (``(n, 0)``
    for a perplexity proxy, up to its checkpoint's step). From the record; for a record written before
    stand-ins recorded them, by replaying its training's batches with its own ``tokenizer`` over the
    ``texts`` it was trained on (the pool for a proxy, the reference texts and ``template`` for a judge),
    without a model."""
    if "train_tokens" in record:
        return int(record["train_tokens"]), 0
    if "train_encoder_tokens" in record:
        return int(record["train_encoder_tokens"]), int(record["train_decoder_tokens"])
    settings = TrainingSettings(**record["settings"])
    if record.get("architecture") == "llama":
        lengths = [len(s) for s in _proxy_sequences(tokenizer, texts, settings)]
        steps = int(record.get("step", settings.steps))
        batches = itertools.islice(_proxy_batches(len(lengths), settings), steps)
        return sum(lengths[i] for batch in batches for i in batch), 0
    if template is None:
        raise ValueError("replaying an Ask-LLM stand-in's training needs its template")
    usable = [t for t in texts if t.split()]
    prompts, _ = judge_examples(usable, template, int(record["max_text_words"]), settings.seed)
    lengths = [len(row) for row in _judge_inputs(tokenizer, prompts)]
    _, batches = _judge_batches(len(usable), settings)
    chosen = [i for batch in batches for i in batch]
    return sum(lengths[i] for i in chosen), 2 * len(chosen)


# -- shared training pieces --------------------------------------------------------------------------------------


def _optimizer(
    model: torch.nn.Module, settings: TrainingSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warmup = max(1, settings.steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _update(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def _steps(total: int, progress: bool, description: str) -> Iterator[int]:
    """Steps 1..total, with a progress bar when asked."""
    yield from progress_bar(range(1, total + 1), desc=description, unit="step", enabled=progress)


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return input_ids, attention


def _save(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, record: dict[str, Any], path: Path
) -> None:
    """Save model, tokenizer and ``standin.json`` to ``path`` through a temporary sibling directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "standin.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    publish_directory(tmp, path)


def read_standin_record(path: str | Path) -> dict[str, Any] | None:
    """The ``standin.json`` of a model directory, or None for a model that is not a local stand-in."""
    record = Path(path) / "standin.json"
    if not record.is_file():
        return None
    return json.loads(record.read_text(encoding="utf-8"))
