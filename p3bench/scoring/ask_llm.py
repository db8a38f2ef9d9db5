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
(:mod:`p3bench.scoring.perplexity`) and the text classifier (:mod:`p3bench.scoring.classifier`) lives in
:mod:`p3bench.scoring.text_models` (:class:`ModelTextScorer`, :func:`load_checkpoint`, ...), re-exported here.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3bench.errors import ConfigError
from p3bench.scoring.text_models import (
    MODEL_KINDS,
    PAPER,
    ModelTextScorer,
    _resolve_kind,
    checkpoint_digest,
    checkpoint_identity,
    first_error_line,
    hub_progress_bars,
    load_checkpoint,
    tokenizer_digest,
    weights_digest,
)

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

NORMALISATIONS = ("full", "yes_no")


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
    "MODEL_KINDS",
    "NORMALISATIONS",
    "PAPER",
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
