"""What the model-based text scorers share: loading a checkpoint offline and naming it, and
:class:`ModelTextScorer`, which runs a scorer's model over length-sorted right-padded batches.

Used by Ask-LLM (:mod:`p3bench.scoring.ask_llm`), the perplexity proxy (:mod:`p3bench.scoring.perplexity`)
and the text classifier (:mod:`p3bench.scoring.classifier`), the quality scorers of Sachdeva et al., "How to
Train Data-Efficient LLMs" (arXiv 2402.09668, §3.1 and App. B.5). :meth:`ModelTextScorer.batch_plan` says
which texts a pass puts in which batch, so that a pass sharded across processes can deal whole batches and
give every text the numbers one process gives it (:func:`p3bench.sharded.sharded_scores_counted`).
"""

from __future__ import annotations

import contextlib
import hashlib
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
MODEL_KINDS = ("auto", "seq2seq", "causal")
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

    def runs(self, ids: Sequence[int]) -> bool:
        """Whether a text with these model inputs is run at all (every text here; the perplexity proxy
        skips those with nothing to predict)."""
        return True

    def batch_plan(self, texts: Sequence[str]) -> list[list[int]]:
        """The positions in ``texts`` of each batch that scoring them runs, in the order it runs them (the
        length buckets of :meth:`_run_batches` over the texts that :meth:`runs`). Scoring the texts of some
        of these batches, concatenated in this order, runs exactly those batches: a pass sharded by whole
        batches gives every text the numbers of one pass over all of them."""
        sequences = self.model_inputs(texts)
        run = [i for i, ids in enumerate(sequences) if self.runs(ids)]
        batches = length_buckets([len(sequences[i]) for i in run], self.batch_size, self.max_batch_tokens)
        return [[run[p] for p in batch] for batch in batches]

    def score_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`score_texts` and the non-padding tokens its pass fed the model (summed attention masks;
        equal to :meth:`count_forward_tokens`)."""
        before = self._forward_tokens
        scores = self.score_texts(texts)
        return scores, self._forward_tokens - before


__all__ = [
    "MODEL_KINDS",
    "PAPER",
    "ModelTextScorer",
    "checkpoint_digest",
    "checkpoint_identity",
    "first_error_line",
    "hub_progress_bars",
    "load_checkpoint",
    "tokenizer_digest",
    "weights_digest",
]
