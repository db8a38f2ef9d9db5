"""Perplexity filtering: each document's perplexity under a proxy causal language model.

Sachdeva et al., "How to Train Data-Efficient LLMs" (arXiv 2402.09668, App. B.5) "use the perplexity of
proxy language models to filter data-points with a high-perplexity under that language model": ten
samplers, with T5-{Small, ..., XXL} and intermediate checkpoints of T5-Large as proxies, keep the
lowest-perplexity documents (the plotted score is the negated perplexity, App. D.1)::

    scorer = PerplexityScorer.from_pretrained("EleutherAI/pythia-160m", revision="step20000")
    perplexities = scorer.score_texts(texts)          # float64, lower = kept
    result = scorer.score_texts_detailed(texts)       # mean_nll, perplexity, num_tokens

What is computed:

- The document is encoded without the tokenizer's special tokens, cut to ``max_tokens`` model inputs
  (BOS included), and the tokenizer's BOS is prepended when it has one (``add_bos``). Every document token
  the model predicts counts: all of them with a BOS, all but the first without. No EOS is appended.
- ``mean_nll`` is the mean negative log-likelihood (natural log) over those tokens and ``perplexity =
  exp(mean_nll)``. A text with no predicted token (empty, or one token without a BOS) gets NaN for both,
  which sorts last under ``np.argsort`` and is never among the kept lowest-perplexity documents.
- Rows are right-padded in length-sorted batches; a causal model never attends to the padding that
  follows a token, so a batch gives the scores of one text at a time (up to float rounding).
- Forward tokens (the selection's compute) are the inputs of every text that is run (two tokens or more),
  BOS included: the attention masks' sum in :meth:`PerplexityScorer.score_texts_counted`, the same number
  from the tokenizer alone in :meth:`PerplexityScorer.count_forward_tokens`.
- Causal LMs only. How the paper computed the perplexity of an encoder-decoder T5 (which input/target split,
  which truncation) is not reported, so a seq2seq proxy is refused with a one-line error.

The fingerprint names the proxy (checkpoint digest, or hub id, revision and commit), the tokenizer, the
dtype, ``max_tokens`` and ``add_bos``, not the batch size, device or progress bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3bench.errors import ConfigError
from p3bench.scoring.text_models import ModelTextScorer, load_checkpoint

DEFAULT_MAX_TOKENS = 512


@dataclass
class PerplexityResult:
    """Per-text results in input order: ``mean_nll`` (nats per predicted token), ``perplexity =
    exp(mean_nll)`` and ``num_tokens`` (predicted tokens; 0 gives NaN for the other two)."""

    mean_nll: np.ndarray
    perplexity: np.ndarray
    num_tokens: np.ndarray


class PerplexityScorer(ModelTextScorer):
    """Per-document perplexity under a proxy causal LM (arXiv 2402.09668, App. B.5).

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (see :meth:`from_pretrained`).
        max_tokens: model inputs per document, BOS included; ``None`` = the smaller of 512 and the model's
            ``max_position_embeddings``. More than ``max_position_embeddings`` is an error.
        add_bos: prepend the tokenizer's BOS when it has one (then the first document token is predicted too).
        batch_size, max_batch_tokens, device, dtype, progress, model_id: see :class:`ModelTextScorer`.
    """

    name = "perplexity"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_tokens: int | None = None,
        add_bos: bool = True,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool = True,
        model_id: str | None = None,
    ) -> None:
        config = getattr(model, "config", None)
        if getattr(config, "is_encoder_decoder", False):
            raise ConfigError(
                f"the perplexity proxy {type(model).__name__} is an encoder-decoder (seq2seq) model: "
                "expected a causal LM (how arXiv 2402.09668 computed T5 perplexity is not reported, "
                "so it is not supported)"
            )
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2
        ):
            raise ConfigError(f"max_tokens={max_tokens!r} is invalid: expected an integer >= 2 or None")
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
        self.max_tokens = self._tokens_within_positions(
            max_tokens, DEFAULT_MAX_TOKENS, "max_tokens", owner="the proxy's "
        )
        self.bos_token_id = tokenizer.bos_token_id if add_bos else None
        self.add_bos = bool(add_bos)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        offline: bool = True,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        **options: Any,
    ) -> PerplexityScorer:
        """Load the proxy by hub id or local directory, offline by default; ``revision`` picks a hub
        revision such as Pythia's intermediate ``"step20000"``. ``dtype=None`` or ``"auto"`` is bfloat16 on
        CUDA, float32 elsewhere. ``options`` go to the constructor. Failures are one-line errors (a seq2seq
        checkpoint is a :class:`ConfigError`, an unloadable one a :class:`ModelLoadError`)."""
        model, tokenizer, identity, _ = load_checkpoint(
            name_or_path,
            role="perplexity proxy",
            model_kind="auto",
            revision=revision,
            offline=offline,
            device=device,
            dtype=dtype,
            allowed_kinds=("causal",),
            progress=bool(options.get("progress", True)),
        )
        return cls(model, tokenizer, model_id=identity, **options)

    def encode(self, text: str) -> list[int]:
        """The model inputs of one document: BOS (when used) and its first tokens, ``max_tokens`` at most."""
        ids = list(self.tokenizer.encode(str(text), add_special_tokens=False))
        if self.bos_token_id is not None:
            ids.insert(0, int(self.bos_token_id))
        return ids[: self.max_tokens]

    def model_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """The model inputs of every text (:meth:`encode`); those shorter than two tokens are not run."""
        return [self.encode(text) for text in texts]

    def runs(self, ids: Sequence[int]) -> bool:
        """A text is run when its inputs hold at least two tokens (one to predict)."""
        return len(ids) >= 2

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The non-padding tokens scoring ``texts`` feeds the model, from the tokenizer alone: the inputs
        (BOS included, cut to ``max_tokens``) of every text with at least two of them (a shorter one has
        nothing to predict and is not run)."""
        return sum(len(ids) for ids in self.model_inputs(texts) if self.runs(ids))

    def score_texts_detailed(self, texts: Sequence[str]) -> PerplexityResult:
        """Mean NLL, perplexity and predicted-token count of every text (float64 / int64, input order)."""
        sequences = self.model_inputs(texts)
        scored = [i for i, ids in enumerate(sequences) if self.runs(ids)]
        total = np.zeros(len(sequences), dtype=np.float64)
        count = np.zeros(len(sequences), dtype=np.int64)

        def step(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            targets = ids[:, 1:]
            predicted = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            return {"nll": torch.where(predicted, nll, 0.0).double().sum(dim=1), "n": predicted.sum(dim=1)}

        if scored:
            out = self._run_batches([sequences[i] for i in scored], step, f"scoring ({self.name})")
            total[scored] = out["nll"]
            count[scored] = out["n"].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_nll = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return PerplexityResult(mean_nll=mean_nll, perplexity=np.exp(mean_nll), num_tokens=count)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The perplexity of every text (float64, input order; lower = more likely under the proxy, NaN for a
        text with no predicted token). Use :meth:`score_texts_detailed` for the mean NLL too."""
        return self.score_texts_detailed(texts).perplexity

    def _settings(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "add_bos": self.bos_token_id is not None}


__all__ = ["DEFAULT_MAX_TOKENS", "PerplexityResult", "PerplexityScorer"]
