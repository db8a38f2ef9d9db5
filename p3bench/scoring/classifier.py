"""A text classifier as a scorer: a ``transformers`` sequence-classification model loaded from a local
directory (or a hub id already in the local cache), offline by default.

Multi-agent data selection (Bai et al., arXiv 2410.08102, §3.3) labels its pool with two such models: the
FineWeb-Edu quality classifier, a BERT-like regressor whose output (0-5) its quality agent bins, and a
13-topic BERT classifier for its topic agent. Both uses are here::

    scorer = TextClassifierScorer.from_pretrained("/models/fineweb-edu-classifier")
    scores = scorer.scores(texts)                  # the regression head's output, float64
    topics = TextClassifierScorer.from_pretrained("/models/topic-bert", output="label")
    labels = topics.labels(texts)                  # argmax class, int64; names in topics.label_names

What is computed:

- Each text is tokenised with the classifier's tokenizer, special tokens included, cut to ``max_tokens``
  (default: the smaller of 512 and the model's ``max_position_embeddings``), and run in length-sorted,
  right-padded batches with an attention mask (:class:`~p3bench.scoring.ask_llm.ModelTextScorer`).
- ``output="score"``: the single logit of a regression head (``num_labels == 1``); any other head is refused
  in one line. ``output="label"``: the argmax over the logits, as a float in :meth:`score_texts` (so that
  the score cache can hold it) and as int64 in :meth:`labels`; ``label_names`` are the config's ``id2label``.
- Forward tokens are the non-padding inputs of every text (the attention masks' sum), the same number from
  the tokenizer alone in :meth:`count_forward_tokens`, so a cache hit reports the pass it stands for.

The fingerprint names the weights (a digest of the local directory, or the hub id and commit), the
tokenizer, the dtype, ``output`` and ``max_tokens``; not the batch size, device or progress bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3bench.errors import ConfigError, ModelLoadError
from p3bench.models.factory import DTYPES
from p3bench.scoring.ask_llm import (
    ModelTextScorer,
    checkpoint_identity,
    first_error_line,
    hub_progress_bars,
)

__all__ = ["OUTPUTS", "TextClassifierScorer", "load_classifier"]

OUTPUTS = ("score", "label")
DEFAULT_MAX_TOKENS = 512


def load_classifier(
    name_or_path: str | Path,
    *,
    offline: bool = True,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> tuple[Any, Any, str]:
    """``(model, tokenizer, identity)`` of a sequence-classification checkpoint, offline by default.

    ``identity`` is ``local:<dir name>#<digest>`` for a directory and ``hub:<id>:<commit>`` for a cached hub
    model. ``dtype=None`` or ``"auto"`` is float32 (classifiers are small). Failures are one-line
    :class:`ModelLoadError` naming the model and what was expected.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = str(name_or_path)
    dtype_name = "float32" if dtype in (None, "auto") else str(dtype)
    if dtype_name not in DTYPES:
        raise ConfigError(f"dtype {dtype_name!r} is unknown: expected one of {', '.join(DTYPES)}")
    where = "a local directory or a hub id already in the local cache" if offline else "a directory or hub id"
    with hub_progress_bars(progress):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
            model = AutoModelForSequenceClassification.from_pretrained(
                name, local_files_only=offline, dtype=DTYPES[dtype_name]
            )
        except Exception as error:  # noqa: BLE001 - the library raises many types; the user needs one line
            raise ModelLoadError(
                f"cannot load the classifier {name!r}: {first_error_line(error)}; expected {where} with a "
                "tokenizer and AutoModelForSequenceClassification weights"
            ) from error
    identity = checkpoint_identity(name, name, local_files_only=offline)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    return model, tokenizer, identity


class TextClassifierScorer(ModelTextScorer):
    """Scores or labels texts with a sequence-classification model (the FineWeb-Edu regressor and the topic
    classifier of arXiv 2410.08102, §3.3). See the module docstring.

    Args:
        model, tokenizer: a loaded ``AutoModelForSequenceClassification`` and its tokenizer.
        output: ``"score"`` (regression head) or ``"label"`` (argmax class) for :meth:`score_texts`.
        max_tokens: tokens per text, special tokens included; ``None`` = min(512, max_position_embeddings).
        batch_size, max_batch_tokens, device, dtype, progress, model_id: see :class:`ModelTextScorer`.
    """

    name = "classifier"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        output: str = "score",
        max_tokens: int | None = None,
        batch_size: int = 16,
        max_batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool = True,
        model_id: str | None = None,
    ) -> None:
        if output not in OUTPUTS:
            raise ConfigError(
                f"classifier output={output!r} is unknown: expected one of {', '.join(OUTPUTS)}"
            )
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2
        ):
            raise ConfigError(
                f"classifier max_tokens={max_tokens!r} is invalid: expected an integer >= 2 or null"
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
        self.output = output
        self.num_labels = int(model.config.num_labels)
        if output == "score" and self.num_labels != 1:
            raise ConfigError(
                f"classifier output=score needs a regression head: the model has {self.num_labels} labels "
                "(expected num_labels=1, or output=label for the argmax class)"
            )
        self.max_tokens = self._tokens_within_positions(
            max_tokens, DEFAULT_MAX_TOKENS, "classifier max_tokens"
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        offline: bool = True,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        **options: Any,
    ) -> TextClassifierScorer:
        """Load the classifier at ``path`` (offline by default) and build the scorer; ``options`` go to the
        constructor (``output``, ``max_tokens``, ``progress``, ...)."""
        model, tokenizer, identity = load_classifier(
            path, offline=offline, device=device, dtype=dtype, progress=bool(options.get("progress", True))
        )
        return cls(model, tokenizer, batch_size=batch_size, model_id=identity, **options)

    @property
    def label_names(self) -> list[str]:
        """The class names, by index (the config's ``id2label``; ``LABEL_<i>`` when it has none)."""
        id2label = getattr(self.model.config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(self.num_labels)]

    def model_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of every text: special tokens included, cut to ``max_tokens``."""
        encoded = self.tokenizer(
            [str(t) for t in texts], truncation=True, max_length=self.max_tokens, add_special_tokens=True
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        """The non-padding tokens a pass over ``texts`` feeds the model, from the tokenizer alone."""
        return sum(len(ids) for ids in self.model_inputs(texts))

    def _logits_pass(self, texts: Sequence[str], key: str) -> np.ndarray:
        sequences = self.model_inputs(texts)
        if not sequences:
            return np.zeros(0, dtype=np.float64)

        def step(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            if key == "score":
                return {"value": logits[:, 0]}
            return {"value": logits.argmax(dim=-1)}

        return self._run_batches(sequences, step, f"scoring ({self.name}:{key})")["value"]

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The regression head's output for every text (float64, input order)."""
        if self.num_labels != 1:
            raise ConfigError(
                f"classifier scores need a regression head: the model has {self.num_labels} labels "
                "(expected num_labels=1; use labels() for the argmax class)"
            )
        return self._logits_pass(texts, "score")

    def labels(self, texts: Sequence[str]) -> np.ndarray:
        """The argmax class of every text (int64, input order); names in :attr:`label_names`."""
        return self._logits_pass(texts, "label").astype(np.int64)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`scores` (``output="score"``) or :meth:`labels` as float64 (``output="label"``)."""
        if self.output == "score":
            return self.scores(texts)
        return self.labels(texts).astype(np.float64)

    def _settings(self) -> dict[str, Any]:
        return {"output": self.output, "max_tokens": self.max_tokens}
