"""Ask-LLM: a language model's probability that a document is worth training on.

Sachdeva et al., "How to Train Data-Efficient LLMs" (arXiv 2402.09668, §3.1, Figure 3, Algorithm 1) wrap
each training document in a prompt that asks whether it holds "informative signal for pre-training a
large-language model" and take the probability of the answer "yes" as its quality score; the sampler keeps
the top-k documents. The paper's scorers are Flan-T5-{Small, ..., XXL} (App. B.6)::

    scorer = AskLLMScorer.from_pretrained("google/flan-t5-xl", normalisation="full")
    scores = scorer.score_texts(texts)            # float64 P("yes" | prompt), one per text
    scores = cached_scores(scorer, texts, cache_dir, name="askllm-xl")   # p3bench.scoring.cache

What is computed, and the choices the paper leaves open (each configurable and named in the fingerprint):

- **Prompt.** :data:`ASK_LLM_TEMPLATE` is Figure 3's text with ``{text}`` where the document goes. The
  figure's line breaks inside the question are treated as typesetting (the question is one line) and no
  blank lines are added; the exact whitespace of the paper's prompt is not reported (unverified). The
  unofficial nano-askllm re-implementation puts a blank line after the closing ``###`` and before
  ``OPTIONS:`` and ends with a newline: pass ``template=`` to use that or any other variant. A template is
  a ``str.format`` string with exactly one field, ``{text}`` (literal braces are written ``{{`` and ``}}``).
- **Model kinds.** ``"seq2seq"`` (``AutoModelForSeq2SeqLM``, the paper's Flan-T5): the prompt is the
  encoder input and the score is read from the distribution of the first decoder token, the decoder input
  being ``decoder_start_token_id``. ``"causal"`` (``AutoModelForCausalLM``): the distribution of the next
  token after the prompt (rows are right-padded and each row is read at its own last position, so a batch
  gives the same numbers as one text at a time). ``"auto"`` reads ``config.is_encoder_decoder``. A causal
  LM sees the template verbatim: it ends at ``- no``, where such a model may well predict a newline; a
  template ending in an answer cue suits it better.
- **Special tokens.** Seq2seq: the tokenizer's own special tokens, then EOS appended when the encoding
  does not already end with it (T5's encoder inputs always end with ``</s>``). Causal: no tokenizer
  special tokens; the tokenizer's BOS is prepended when it has one.
- **Answer tokens.** Each word of ``yes_tokens`` (default ``["yes"]``) and ``no_tokens`` (default
  ``["no"]``) is encoded without special tokens, and so is its variant with one leading space when
  ``space_variants`` is on (default: on for causal models, whose BPE vocabularies usually spell the answer
  after a space as a different token, e.g. GPT-2's ``"Ġyes"``; off for seq2seq, whose SentencePiece
  vocabularies already mark the bare word as word-initial, ``"▁yes"``). Every variant that encodes to
  exactly one token contributes that token's id (duplicates counted once); a word none of whose variants is
  a single token is an error, because its first token (``"y"``) would be shared with other words and would
  not measure the word. The yes and no sets must not overlap. nano-askllm sums ``"yes"`` and ``"Yes"``:
  pass ``yes_tokens=["yes", "Yes"]`` for that.
- **Normalisation** (unverified in the paper, which says "the softmax probability of the token 'yes'"):
  ``"full"``: the softmax over the model's full output vocabulary, summed over the yes ids (what
  nano-askllm does); ``"yes_no"``: that yes mass divided by the yes mass plus the no mass.
- **Truncation** (not reported in the paper): the document is cut to its first ``max_text_tokens`` tokens
  (counted by encoding the text alone; cut at the character offset where that token ends, or by decoding
  the kept tokens for tokenizers without offsets), never the template, so the question and options always
  reach the model intact. ``None`` disables truncation. For a causal model a prompt longer than
  ``max_position_embeddings`` is an error that asks for a smaller ``max_text_tokens``.
- **Forward tokens** (the selection's compute): every prompt token the model reads (template, truncated
  text and special tokens), plus one decoder-start token per text for a seq2seq model;
  :meth:`AskLLMScorer.score_texts_counted` sums the attention masks of the pass and
  :meth:`AskLLMScorer.count_forward_tokens` gives the same number from the tokenizer alone (for scores
  served by the cache).

The batching, model-loading and fingerprint machinery shared with the perplexity scorer
(:mod:`p3bench.scoring.perplexity`) and the text classifier (:mod:`p3bench.scoring.classifier`) lives here:
:class:`ModelTextScorer`, :func:`checkpoint_identity`, :func:`hub_progress_bars` and :func:`first_error_line`.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3bench.errors import ConfigError, ModelLoadError
from p3bench.models.factory import DTYPES
from p3bench.models.weights_cache import tokenizer_digest, weights_digest
from p3bench.scoring.base import length_buckets
from p3bench.scoring.cache import TextScorer
from p3bench.utils.progress import progress_bar, progress_shown

PAPER = "arXiv 2402.09668"

#: Figure 3 of arXiv 2402.09668 with ``{text}`` for the document. Whitespace is unverified (see module doc).
ASK_LLM_TEMPLATE = (
    "###\n"
    "{text}\n"
    "###\n"
    "Does the previous paragraph demarcated within ### and ### contain informative signal for pre-training "
    "a large-language model? An informative datapoint should be well-formatted, contain some usable "
    "knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. content.\n"
    "OPTIONS:\n"
    "- yes\n"
    "- no"
)

MODEL_KINDS = ("auto", "seq2seq", "causal")
NORMALISATIONS = ("full", "yes_no")
# Checkpoint files up to this size are hashed whole; larger ones (weights) by three 1 MiB samples.
_FULL_HASH_LIMIT = 4 << 20
_SAMPLE_BYTES = 1 << 20


# -- identities ----------------------------------------------------------------------------------------------


def checkpoint_digest(directory: str | Path) -> str:
    """A short hash of a checkpoint directory: every file's relative name and size, small files (configs,
    tokenizer files) in full and large ones (weights) by their first, middle and last MiB, so the same path
    holding other weights gets another digest without reading gigabytes. Hidden files are skipped."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        size = path.stat().st_size
        digest.update(f"{relative.as_posix()}\x00{size}\x00".encode())
        with path.open("rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                for offset in (0, size // 2 - _SAMPLE_BYTES // 2, size - _SAMPLE_BYTES):
                    handle.seek(offset)
                    digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def checkpoint_identity(name: str, hub_name: str, **options: Any) -> str:
    """What names loaded weights: ``local:<dir name>#<checkpoint_digest>`` when ``name`` is a directory, else
    ``hub:<hub_name>:<commit>`` with the commit its ``config.json`` resolved to in the Hugging Face cache
    (``options``, e.g. ``local_files_only`` and ``revision``, go to ``transformers.utils.cached_file``)."""
    root = Path(name).expanduser()
    if root.is_dir():
        return f"local:{root.resolve().name}#{checkpoint_digest(root)}"
    from transformers.utils import cached_file

    snapshot = Path(cached_file(name, "config.json", **options)).parent
    commit = snapshot.name if snapshot.parent.name == "snapshots" else checkpoint_digest(snapshot)
    return f"hub:{hub_name}:{commit}"


def first_error_line(error: BaseException) -> str:
    """``<error type>: <first line of its message>`` (the type alone for an empty message), for one-line
    load errors."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


@contextlib.contextmanager
def hub_progress_bars(progress: bool) -> Iterator[None]:
    """Inside the block, transformers' own progress bars ("Loading weights") are off when ``progress`` bars
    are not shown (:func:`p3bench.utils.progress.progress_shown`); they are on again after it."""
    from transformers.utils import logging as hf_logging

    quiet = not progress_shown(progress) and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _resolve_kind(config: Any, model_kind: str, what: str) -> str:
    """``"seq2seq"`` or ``"causal"`` from ``model_kind`` and the model config."""
    if model_kind not in MODEL_KINDS:
        raise ConfigError(f"model_kind {model_kind!r} is unknown: expected one of {', '.join(MODEL_KINDS)}")
    actual = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if model_kind != "auto" and model_kind != actual:
        raise ConfigError(
            f"model_kind={model_kind!r} does not match {what}, whose config says it is {actual} "
            f"(is_encoder_decoder={bool(getattr(config, 'is_encoder_decoder', False))}): "
            f"expected {actual!r} or 'auto'"
        )
    return actual


def load_checkpoint(
    name_or_path: str | Path,
    *,
    role: str,
    model_kind: str = "auto",
    revision: str | None = None,
    offline: bool = True,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    allowed_kinds: Sequence[str] = ("seq2seq", "causal"),
    progress: bool = True,
) -> tuple[Any, Any, str, str]:
    """Load a tokenizer and a seq2seq or causal LM by hub id or local path (offline by default).

    Returns ``(model, tokenizer, identity, kind)``. ``identity`` names the weights: ``local:<dir
    name>#<checkpoint_digest>`` for a directory, ``hub:<id>@<revision>:<commit>`` for a hub model (the
    commit its files resolved to, from the local cache when offline). ``dtype=None`` (or ``"auto"``) is
    bfloat16 on CUDA and float32 elsewhere. Every failure is a one-line :class:`ModelLoadError` naming the
    model; a kind outside ``allowed_kinds`` is a one-line :class:`ConfigError`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    name = str(name_or_path)
    at = f" at revision {revision!r}" if revision else ""
    where = (
        "a local checkpoint directory or a hub id already in the local Hugging Face cache (offline=True)"
        if offline
        else "a local checkpoint directory or a hub id"
    )
    options: dict[str, Any] = {"local_files_only": offline}
    if revision is not None:
        options["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(name, **options)
    except Exception as error:  # noqa: BLE001 - the library raises many types; the user needs one line
        raise ModelLoadError(
            f"cannot load the {role} model {name!r}{at}: {first_error_line(error)}; expected {where}"
        ) from error
    kind = _resolve_kind(config, model_kind, f"the {role} model {name!r}")
    if kind not in allowed_kinds:
        raise ConfigError(
            f"the {role} model {name!r} is a {kind} model: expected a {' or '.join(allowed_kinds)} model"
        )
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    auto = dtype is None or dtype == "auto"
    dtype_name = ("bfloat16" if device.type == "cuda" else "float32") if auto else str(dtype)
    if dtype_name not in DTYPES:
        raise ConfigError(f"dtype {dtype_name!r} is unknown: expected one of {', '.join(DTYPES)}")
    auto_model = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    with hub_progress_bars(progress):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **options)
            model = auto_model.from_pretrained(name, dtype=DTYPES[dtype_name], **options)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot load the {role} model {name!r}{at} as {auto_model.__name__}: "
                f"{first_error_line(error)}; expected {where} with a tokenizer and {kind} LM weights"
            ) from error
    identity = checkpoint_identity(name, f"{name}@{revision or 'main'}", **options)
    model.to(device)
    return model, tokenizer, identity, kind


# -- the shared scorer ---------------------------------------------------------------------------------------


class ModelTextScorer(TextScorer):
    """A scorer that runs its own Hugging Face model over raw texts (Ask-LLM, perplexity; arXiv 2402.09668).

    It holds the model, tokenizer, device, dtype and batching options, runs length-sorted right-padded
    batches under ``torch.inference_mode`` (the next batch is padded and moved to the device in a thread
    while the model runs), and builds the fingerprint from the model identity, the tokenizer digest, the
    dtype and the subclass's own settings (:meth:`_settings`). Batch size, ``max_batch_tokens``, device and
    the progress bar are not part of the fingerprint: they do not change the scores beyond float rounding.

    Args:
        model: a loaded ``PreTrainedModel``. ``device`` and ``dtype`` move or cast it in place.
        tokenizer: its tokenizer.
        batch_size: texts per forward pass.
        max_batch_tokens: optional cap on padded tokens per batch (bounds the logits' memory).
        device: where to run; ``None`` keeps the model where it is.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` to cast the model; ``None`` or ``"auto"`` keeps
            its dtype.
        progress: show a progress bar over the texts (:func:`p3bench.utils.progress.progress_bar`: also
            subject to the process-wide switch).
        model_id: a name for the weights that you vouch for (e.g. ``hub:google/flan-t5-xl@main:<commit>``),
            used in the fingerprint in place of a digest of the weights; ``None`` hashes the state dict
            (once, on first use of the fingerprint).
    """

    name = "model_text_scorer"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool = True,
        model_id: str | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} is invalid: expected a positive integer")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ConfigError(
                f"max_batch_tokens={max_batch_tokens!r} is invalid: expected a positive integer or None"
            )
        if dtype == "auto":
            dtype = None
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(
                f"dtype {dtype!r} is unknown: expected one of {', '.join(DTYPES)}, 'auto' or None"
            )
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise ConfigError(
                f"model {type(model).__name__} is not supported: expected a transformers PreTrainedModel"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.progress = bool(progress)
        if dtype is not None:
            model.to(DTYPES[dtype])
        if device is not None:
            model.to(torch.device(device))
        self.device = next(model.parameters()).device
        self.dtype = _dtype_name(next(model.parameters()).dtype)
        self.model_id = model_id
        self._weights: str | None = model_id
        self._tokenizer_digest = tokenizer_digest(tokenizer)
        self._forward_tokens = 0  # non-padding tokens the model has processed (see score_texts_counted)

    # -- identity --

    @property
    def model_identity(self) -> str:
        """``model_id`` when given, else ``object:<class>:<name_or_path>#<weights_digest>``."""
        if self._weights is None:
            source = getattr(self.model.config, "_name_or_path", "") or "-"
            self._weights = f"object:{type(self.model).__name__}:{source}#{weights_digest(self.model)}"
        return self._weights

    @abstractmethod
    def _settings(self) -> dict[str, Any]:
        """The subclass's settings the scores depend on (go into the fingerprint, in this order)."""

    @property
    def fingerprint(self) -> str:
        """``<name>|model=...|tokenizer=...|dtype=...|<settings>``: everything the scores depend on."""
        parts = [
            self.name,
            f"model={self.model_identity}",
            f"tokenizer={self._tokenizer_digest}",
            f"dtype={self.dtype}",
        ]
        parts += [f"{key}={value}" for key, value in self._settings().items()]
        return "|".join(parts)

    @property
    def metadata(self) -> dict[str, Any]:
        """What a cache sidecar records about this scorer (readable details behind the fingerprint)."""
        return {
            "scorer": self.name,
            "paper": PAPER,
            "fingerprint": self.fingerprint,
            "model": self.model_identity,
            "model_class": type(self.model).__name__,
            "tokenizer": self._tokenizer_digest,
            "dtype": self.dtype,
            **self._settings(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint})"

    # -- batching --

    def _max_positions(self) -> int | None:
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) and positions > 0 else None

    def _tokens_within_positions(
        self, max_tokens: int | None, default: int, key: str, owner: str = ""
    ) -> int:
        """``max_tokens``, or for ``None`` the smaller of ``default`` and the model's
        ``max_position_embeddings``; more than ``max_position_embeddings`` is a one-line :class:`ConfigError`
        naming ``key`` (``owner``: whose limit it is, as the message says it, e.g. ``"the proxy's "``)."""
        limit = self._max_positions()
        if max_tokens is None:
            return min(default, limit) if limit is not None else default
        if limit is not None and max_tokens > limit:
            raise ConfigError(
                f"{key}={max_tokens} exceeds {owner}max_position_embeddings={limit}: expected at most {limit}"
            )
        return int(max_tokens)

    def _run_batches(
        self,
        sequences: Sequence[Sequence[int]],
        step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
        description: str,
        *,
        extra_tokens_per_row: int = 0,
    ) -> dict[str, np.ndarray]:
        """``step(input_ids, attention_mask)`` over length-sorted right-padded batches of the (non-empty)
        sequences; returns each key's per-row values as float64 arrays in input order. Adds the batches'
        non-padding tokens (the attention masks' sum, plus ``extra_tokens_per_row`` for tokens ``step``
        feeds the model besides the inputs, such as a seq2seq decoder's start token) to the scorer's
        forward-token count."""
        lengths = [len(s) for s in sequences]
        batches = length_buckets(lengths, self.batch_size, self.max_batch_tokens)
        pad_id = self.tokenizer.pad_token_id
        pad_id = int(pad_id) if pad_id is not None else 0  # masked out; any id will do
        device = self.device

        def prepare(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
            width = max(lengths[i] for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : lengths[i]] = torch.as_tensor(sequences[i], dtype=torch.long)
                mask[r, : lengths[i]] = 1
            tokens = int(mask.sum()) + extra_tokens_per_row * len(rows)
            return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), tokens

        out: dict[str, np.ndarray] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            with (
                torch.inference_mode(),
                ThreadPoolExecutor(max_workers=1) as prefetch,
                progress_bar(
                    total=len(sequences), desc=description, unit="text", enabled=self.progress
                ) as bar,
            ):
                upcoming = prefetch.submit(prepare, batches[0]) if batches else None
                for n, rows in enumerate(batches):
                    ids, mask, tokens = upcoming.result()  # type: ignore[union-attr]
                    if n + 1 < len(batches):
                        upcoming = prefetch.submit(prepare, batches[n + 1])
                    for key, values in step(ids, mask).items():
                        column = out.setdefault(key, np.full(len(sequences), np.nan, dtype=np.float64))
                        column[rows] = values.double().cpu().numpy()
                    self._forward_tokens += tokens
                    bar.update(len(rows))
        finally:
            self.model.train(was_training)
        return out

    @abstractmethod
    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One float64 score per text, in input order."""

    @abstractmethod
    def model_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids the model reads for each text (template, truncation and special tokens applied)."""

    def score_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`score_texts` and the non-padding tokens its pass fed the model (summed attention masks;
        equal to :meth:`count_forward_tokens`)."""
        before = self._forward_tokens
        scores = self.score_texts(texts)
        return scores, self._forward_tokens - before


# -- Ask-LLM -------------------------------------------------------------------------------------------------


def split_template(template: str) -> tuple[str, str]:
    """The literal text before and after the single ``{text}`` field of a ``str.format`` template.

    Raises:
        ConfigError: the template is not a string, does not parse, or has no ``{text}`` field, another
            field, or ``{text}`` more than once.
    """
    if not isinstance(template, str):
        raise ConfigError(f"Ask-LLM template {template!r} is not a string: expected a str with one {{text}}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(
            f"Ask-LLM template {template[:60]!r}... does not parse ({error}): expected a str.format string "
            "with one {text} field (literal braces doubled)"
        ) from error
    fields = [(field, spec, conversion) for _, field, spec, conversion in parsed if field is not None]
    if fields != [("text", "", None)]:
        found = ", ".join("{" + str(f) + "}" for f, _, _ in fields) or "no field"
        raise ConfigError(
            f"Ask-LLM template {template[:60]!r}... has {found}: expected exactly one {{text}} placeholder "
            "(write literal braces as {{ and }})"
        )
    index = next(i for i, (_, field, _, _) in enumerate(parsed) if field is not None)
    prefix = "".join(literal for literal, *_ in parsed[: index + 1])
    suffix = "".join(literal for literal, *_ in parsed[index + 1 :])
    return prefix, suffix


class AskLLMScorer(ModelTextScorer):
    """Ask-LLM quality scores, P("yes" | prompt) (arXiv 2402.09668, §3.1, Figure 3, Algorithm 1).

    See the module docstring for the prompt, the answer tokens, the normalisations and the truncation.

    Args:
        model, tokenizer: a loaded seq2seq or causal LM and its tokenizer (see :meth:`from_pretrained` to
            load one by name).
        model_kind: ``"auto"`` (the config's ``is_encoder_decoder``), ``"seq2seq"`` or ``"causal"``.
        template: a ``str.format`` string with exactly one ``{text}`` field; default
            :data:`ASK_LLM_TEMPLATE`.
        yes_tokens, no_tokens: the answer words whose single-token ids are summed.
        space_variants: also count each word's variant with a leading space; ``None`` = on for causal
            models, off for seq2seq.
        normalisation: ``"full"`` (softmax over the whole vocabulary) or ``"yes_no"`` (yes / (yes + no)).
        max_text_tokens: the document's tokens kept (the template is never cut); ``None`` keeps all.
        batch_size, max_batch_tokens, device, dtype, progress, model_id: see :class:`ModelTextScorer`.
    """

    name = "ask_llm"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_kind: str = "auto",
        template: str = ASK_LLM_TEMPLATE,
        yes_tokens: Sequence[str] = ("yes",),
        no_tokens: Sequence[str] = ("no",),
        space_variants: bool | None = None,
        normalisation: str = "full",
        max_text_tokens: int | None = 512,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool = True,
        model_id: str | None = None,
    ) -> None:
        self.prefix, self.suffix = split_template(template)
        self.template = template
        if normalisation not in NORMALISATIONS:
            raise ConfigError(
                f"normalisation {normalisation!r} is unknown: expected one of {', '.join(NORMALISATIONS)}"
            )
        if max_text_tokens is not None and (
            not isinstance(max_text_tokens, int) or isinstance(max_text_tokens, bool) or max_text_tokens < 1
        ):
            raise ConfigError(
                f"max_text_tokens={max_text_tokens!r} is invalid: expected a positive integer or None"
            )
        super().__init__(
            model,
            tokenizer,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            device=device,
            dtype=dtype,
            progress=progress,
            model_id=model_id,
        )
        self.model_kind = _resolve_kind(model.config, model_kind, f"the Ask-LLM model {type(model).__name__}")
        self.normalisation = normalisation
        self.max_text_tokens = max_text_tokens
        self.space_variants = (
            (self.model_kind == "causal") if space_variants is None else bool(space_variants)
        )
        self.yes_words = self._words(yes_tokens, "yes_tokens")
        self.no_words = self._words(no_tokens, "no_tokens")
        self.yes_ids = self._answer_ids(self.yes_words, "yes_tokens")
        self.no_ids = self._answer_ids(self.no_words, "no_tokens")
        overlap = sorted(set(self.yes_ids) & set(self.no_ids))
        if overlap:
            raise ConfigError(
                f"yes_tokens {self.yes_words} and no_tokens {self.no_words} share token id(s) {overlap}: "
                "expected disjoint answers"
            )
        if self.model_kind == "seq2seq":
            start = getattr(model.config, "decoder_start_token_id", None)
            if start is None:
                start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
            if start is None:
                raise ConfigError(
                    f"the Ask-LLM model {type(model).__name__} has no decoder_start_token_id: "
                    "expected one in its config or generation config"
                )
            self.decoder_start_token_id = int(start)
        self._keeps_logits = self.model_kind == "causal" and _accepts(model, "logits_to_keep")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        offline: bool = True,
        model_kind: str = "auto",
        device: str | torch.device | None = None,
        dtype: str | None = None,
        **options: Any,
    ) -> AskLLMScorer:
        """Load the judge by hub id (e.g. ``google/flan-t5-xl``) or local directory, offline by default
        (``local_files_only=True``); ``dtype=None`` or ``"auto"`` is bfloat16 on CUDA, float32 elsewhere;
        ``device=None`` is CUDA when available. ``options`` go to the constructor. The fingerprint names the
        checkpoint (see :func:`load_checkpoint`). Failures are one-line :class:`ModelLoadError`."""
        model, tokenizer, identity, kind = load_checkpoint(
            name_or_path,
            role="Ask-LLM",
            model_kind=model_kind,
            revision=revision,
            offline=offline,
            device=device,
            dtype=dtype,
            progress=bool(options.get("progress", True)),
        )
        return cls(model, tokenizer, model_kind=kind, model_id=identity, **options)

    # -- answers --

    @staticmethod
    def _words(words: Sequence[str], option: str) -> list[str]:
        if isinstance(words, str) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise ConfigError(
                f"{option}={words!r} is invalid: expected a non-empty list of non-empty strings"
            )
        return list(words)

    def _answer_ids(self, words: list[str], option: str) -> list[int]:
        ids: list[int] = []
        for word in words:
            variants = [word]
            if self.space_variants and not word.startswith(" "):
                variants.append(" " + word)
            encodings = [self.tokenizer.encode(v, add_special_tokens=False) for v in variants]
            single = [e[0] for e in encodings if len(e) == 1]
            if not single:
                pieces = self.tokenizer.convert_ids_to_tokens(encodings[0])
                raise ConfigError(
                    f"{option} word {word!r} is not a single token of this tokenizer (it encodes to {pieces}"
                    f"{' and its leading-space variant too' if len(variants) > 1 else ''}): expected words "
                    "that are one token each"
                )
            ids += [i for i in single if i not in ids]
        return ids

    # -- prompts --

    def truncate(self, text: str) -> str:
        """``text`` cut to its first ``max_text_tokens`` tokens (unchanged when it is shorter)."""
        if self.max_text_tokens is None:
            return text
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = encoded["offset_mapping"]
            if len(offsets) <= self.max_text_tokens:
                return text
            return text[: offsets[self.max_text_tokens - 1][1]]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_text_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_text_tokens], skip_special_tokens=True)

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The prompts the model reads: the template around each (truncated) text."""
        return [self.prefix + self.truncate(str(text)) + self.suffix for text in texts]

    def encode(self, prompt: str) -> list[int]:
        """The token ids of one prompt as the model gets them (special tokens as in the module docstring)."""
        tokenizer = self.tokenizer
        if self.model_kind == "seq2seq":
            ids = list(tokenizer.encode(prompt, add_special_tokens=True))
            eos = tokenizer.eos_token_id
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(int(eos))
            return ids
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        if tokenizer.bos_token_id is not None:
            ids.insert(0, int(tokenizer.bos_token_id))
        return ids

    def model_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """The encoder (seq2seq) or model (causal) inputs of every text: its prompt, encoded."""
        return [self.encode(p) for p in self.prompts(texts)]

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The non-padding tokens scoring ``texts`` feeds the model, from the tokenizer alone: every prompt
        token (template and truncated text, special tokens included), plus for a seq2seq model the one
        decoder-start token per text that the decoder reads."""
        sequences = self.model_inputs(texts)
        decoder = len(sequences) if self.model_kind == "seq2seq" else 0
        return sum(len(ids) for ids in sequences) + decoder

    # -- scoring --

    def answer_log_masses(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """log P(yes) and log P(no) of every text under the full-vocabulary softmax (float64; each is the
        log of the summed probabilities of its answer ids)."""
        sequences = self.model_inputs(texts)
        limit = self._max_positions() if self.model_kind == "causal" else None
        if limit is not None:
            for i, ids in enumerate(sequences):
                if len(ids) > limit:
                    raise ConfigError(
                        f"the Ask-LLM prompt of text {i} has {len(ids)} tokens, more than the model's "
                        f"max_position_embeddings={limit}: expected a smaller max_text_tokens "
                        f"(now {self.max_text_tokens})"
                    )
        if not sequences:
            return np.zeros(0), np.zeros(0)
        yes = torch.tensor(self.yes_ids, device=self.device)
        no = torch.tensor(self.no_ids, device=self.device)

        def step(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
            rows = torch.arange(ids.shape[0], device=ids.device)
            if self.model_kind == "seq2seq":
                start = torch.full((ids.shape[0], 1), self.decoder_start_token_id, device=ids.device)
                logits = self.model(
                    input_ids=ids, attention_mask=mask, decoder_input_ids=start, use_cache=False
                ).logits[:, 0]
            else:
                last = mask.sum(dim=1) - 1
                if self._keeps_logits:  # project only the rows' last positions onto the vocabulary
                    positions, which = torch.unique(last, return_inverse=True)
                    logits = self.model(
                        input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=positions
                    ).logits[rows, which]
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[
                        rows, last
                    ]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            return {
                "yes": torch.logsumexp(log_probs[:, yes], dim=-1),
                "no": torch.logsumexp(log_probs[:, no], dim=-1),
            }

        out = self._run_batches(
            sequences,
            step,
            f"scoring ({self.name})",
            extra_tokens_per_row=1 if self.model_kind == "seq2seq" else 0,
        )
        return out["yes"], out["no"]

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """P("yes" | prompt) for every text (float64, input order), normalised as ``normalisation`` says."""
        log_yes, log_no = self.answer_log_masses(texts)
        if self.normalisation == "yes_no":
            return np.exp(log_yes - np.logaddexp(log_yes, log_no))
        return np.exp(log_yes)

    def _settings(self) -> dict[str, Any]:
        template = hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:16]
        return {
            "kind": self.model_kind,
            "template": template,
            "yes": ",".join(self.yes_words) + ":" + ",".join(map(str, self.yes_ids)),
            "no": ",".join(self.no_words) + ":" + ",".join(map(str, self.no_ids)),
            "space_variants": self.space_variants,
            "normalisation": self.normalisation,
            "max_text_tokens": self.max_text_tokens,
        }

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata,
            "template_text": self.template,
            "yes_words": self.yes_words,
            "yes_ids": self.yes_ids,
            "yes_pieces": self.tokenizer.convert_ids_to_tokens(self.yes_ids),
            "no_words": self.no_words,
            "no_ids": self.no_ids,
            "no_pieces": self.tokenizer.convert_ids_to_tokens(self.no_ids),
        }


def _accepts(model: Any, parameter: str) -> bool:
    import inspect

    try:
        return parameter in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


__all__ = [
    "ASK_LLM_TEMPLATE",
    "AskLLMScorer",
    "ModelTextScorer",
    "checkpoint_digest",
    "checkpoint_identity",
    "first_error_line",
    "hub_progress_bars",
    "load_checkpoint",
    "split_template",
    "tokenizer_digest",
    "weights_digest",
]
