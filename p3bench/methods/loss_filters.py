"""Offline loss-based selection: score the pool once with a model, before training, and keep a loss band
(``loss_band``) or the largest reducible losses (``rho_loss``).

- ``loss_band`` after Chen et al., "Take the Bull by the Horns: Hard Sample-Reweighted Continual Training
  Improves LLM Generalization" (arXiv 2402.14270). The paper argues that the highest-loss samples correlate
  with noise and that training on *moderately* high-loss samples helps (MidRanking). Here the pool is ranked
  by loss, highest first; the ``skip`` fraction at the top is dropped and the next ``budget`` examples are
  kept. ``skip=0`` is hardest-first on the pool.
- ``rho_loss`` after Mindermann et al., "Prioritized Training on Points that are Learnable, Worth Learning,
  and Not Yet Learnt" (RHO-LOSS, arXiv 2206.07137): the reducible loss of an example is its training loss
  minus its irreducible loss, the loss under an irreducible-loss (IL) model trained on a holdout set; the
  ``budget`` examples with the largest reducible loss are kept.

An example's loss is what training minimises for it: the mean NLL over its target tokens
(:func:`p3bench.models.losses.per_example_nll`), computed in one batched, length-bucketed pass
(:func:`p3bench.scoring.base.forward_pass`) whose non-padding tokens count as the selection's forward tokens:
one pass per scoring model (two for ``rho_loss``), whatever its source, and never cached. Training a
``trained`` model is not a pass over the pool for selection and is not in the forward tokens: its tokens are
in the round's diagnostics (the model's ``train_tokens``, and ``reference_training_tokens`` when this run
trained it rather than loading it from the cache). The round's compute in FLOPs (:mod:`p3bench.compute`)
counts each model's pass over the pool and, for a ``trained`` model, its training, whether or not the cache
served it (the compute belongs to the method). An example whose target is cut off entirely (a prompt of
``max_length`` tokens or more) has nothing to train on: it scores 0, as in training, and is ranked after every
other example. Exact ties are broken by a fixed hash of the example ids.

Where the scoring models come from is one option block each (``method.scorer``, and for ``rho_loss``
``method.reference``), built by :mod:`p3bench.models.reference`: ``initial`` (the run's model before
training), ``trained`` (a copy of it trained for ``steps`` AdamW steps on ``split``, cached), or
``pretrained`` (``name_or_path``, sharing the run's tokenizer).

Departures from the papers:

- Both are offline and one-shot (the online versions are the in-batch methods). MidRanking in 2402.14270's released code works inside
  each batch (sort the batch's losses by the current model, back-propagate the mean of the band
  ``[portion * c, (portion + 1) * c)`` with ``c = frac * B``); that online version is ``method=midranking``.
  Here the band is over the whole pool and the scorer is fixed, and the kept examples train with weight 1.
- RHO-LOSS is online: at every step it scores a large batch with the *current* model and trains on the
  points of highest reducible loss. Here the training loss comes from a fixed scorer (by default a copy of
  the run's initial model trained on the pool for ``steps`` steps, standing in for "the model during
  training") and the selection is made once. The IL model (by default a copy of the run's initial model
  trained on the validation split) has the run's architecture rather than a separate small model; it can
  be any model of the same tokenizer through ``source=pretrained``. The validation split also gives the
  run's ``val/loss``, which is then no longer fully held out from selection; the test split never is.
  Losses are mean NLL per target token rather than a classifier's cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from p3bench.compute import RUN_MODEL, model_size
from p3bench.errors import ConfigError
from p3bench.methods.base import SelectionContext
from p3bench.methods.options import merge_options
from p3bench.methods.pool_scoring import PoolScores, PoolScoringMethod, summarize
from p3bench.models.losses import per_example_nll, target_token_counts
from p3bench.models.reference import REFERENCE_DEFAULTS, ReferenceSettings, parse_settings, reference_model
from p3bench.scoring.base import ScoringItems, forward_pass

#: How the scoring pass batches the pool (length-bucketed; ``max_batch_tokens`` caps the padded tokens of a
#: batch, which bounds the logits' memory for a large vocabulary).
SCORING_DEFAULTS: dict[str, Any] = {"batch_size": 64, "max_batch_tokens": None}
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class PoolLosses:
    """Each pool example's loss under one model, whether it has a target token to score, and the forward
    tokens the pass cost."""

    losses: np.ndarray
    has_target: np.ndarray
    forward_tokens: int = 0


@dataclass
class LossScores(PoolScores):
    """Pool scores from losses, with which examples have a target token and the loss vectors they came from."""

    has_target: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)


def example_losses(
    model: Any,
    items: ScoringItems,
    *,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
    progress: bool = False,
    description: str = "scoring (loss)",
) -> PoolLosses:
    """The training loss of every item under ``model`` (anything with ``.model``, a causal LM, and
    ``.device``: a :class:`~p3bench.models.module.SelectionLM` or a reference model): mean NLL over its
    target tokens, as :func:`per_example_nll` computes it in training, in the order of ``items.indices``."""

    def rows(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
        return {
            "loss": per_example_nll(outputs.logits, batch["labels"]),
            "n_targets": target_token_counts(batch["labels"]),
        }

    arrays, tokens = forward_pass(
        model,
        items,
        rows,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        progress=progress,
        description=description,
    )
    if not len(items):
        return PoolLosses(np.zeros(0), np.zeros(0, dtype=bool), tokens)
    return PoolLosses(
        losses=arrays["loss"].astype(np.float64),
        has_target=arrays["n_targets"] > 0,
        forward_tokens=tokens,
    )


class LossScoredSampler(PoolScoringMethod):
    """A static sampler that scores the pool by loss under reference models (see the module docstring).

    Subclasses declare their model blocks in :attr:`model_blocks` (option name -> defaults) and implement
    :meth:`pool_scores` and :meth:`choose` with :meth:`model_losses` and :meth:`ranking`.
    """

    name: ClassVar[str] = "loss_scored"
    model_blocks: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self, *args: Any, scoring: dict[str, Any] | None = None, progress: bool = True, **kwargs: Any
    ):
        if "text" in kwargs:
            raise ConfigError(
                f"method.text is not an option of {self.name}: losses are computed on prompt + target, as in "
                "training"
            )
        super().__init__(*args, progress=progress, **kwargs)
        self.scoring = merge_options("scoring", SCORING_DEFAULTS, scoring)
        batch_size, max_tokens = self.scoring["batch_size"], self.scoring["max_batch_tokens"]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                f"method.scoring.batch_size={batch_size!r} is invalid: expected an integer >= 1"
            )
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ConfigError(
                f"method.scoring.max_batch_tokens={max_tokens!r} is invalid: expected null or an integer >= 1"
            )

    def model_settings(self, key: str, options: dict[str, Any] | None) -> ReferenceSettings:
        """The settings of the model block ``method.<key>``: the class defaults updated with ``options``."""
        merged = {**self.model_blocks[key], **dict(options or {})}
        return parse_settings(f"method.{key}", merged, default_seed=self.seed)

    def run_module(self, ctx: SelectionContext | None) -> Any:
        module = None if ctx is None else ctx.module
        if module is None:
            raise RuntimeError(
                f"method {self.name!r} scores the pool with models made from the run's model: run it through "
                "the Trainer (the selection context has no model)"
            )
        return module

    def model_losses(
        self, ctx: SelectionContext | None, settings: ReferenceSettings, key: str
    ) -> tuple[PoolLosses, dict[str, Any]]:
        """The pool's losses under the model ``settings`` describe, and what that model is."""
        module = self.run_module(ctx)
        trained = settings.source == "trained"
        reference = reference_model(
            settings,
            module.model,
            self.tokenizer,
            module.device,
            examples=self.examples(settings.split) if trained else None,
            encoded=self.encoded(settings.split) if trained else None,
            max_length=self.max_length,
            cache_dir=self.cache_dir,
            key=f"method.{key}",
            progress=self.progress,
        )
        size = model_size(reference.model)
        try:
            result = example_losses(
                reference,
                self.pool_items(),
                batch_size=int(self.scoring["batch_size"]),
                max_batch_tokens=self.scoring["max_batch_tokens"],
                progress=self.progress,
                description=f"scoring ({self.name}, {key})",
            )
        finally:
            separate = reference.model is not module.model
            info = dict(reference.info)
            del reference
            if separate and torch.cuda.is_available():
                torch.cuda.empty_cache()
        # the round's compute in FLOPs: the pass over the pool, and the training of a ``trained`` model
        # (whether this run trained it or the cache served it)
        name = RUN_MODEL if settings.source == "initial" else f"method.{key}"
        self.compute_ledger.add(name, "selection_forward", size, result.forward_tokens)
        if trained:
            self.compute_ledger.add(name, "selection_train", size, int(info.get("train_tokens", 0)))
        return result, info

    def ranking(self, values: np.ndarray, has_target: np.ndarray) -> np.ndarray:
        """Pool positions by ``values``, largest first; exact ties by the id-hash order; examples without a
        target token last."""
        return np.lexsort((self.tie_rank(), -np.asarray(values, dtype=np.float64), ~np.asarray(has_target)))


def spent_training_tokens(*infos: dict[str, Any]) -> int:
    """Tokens spent training reference models in this selection (0 for models loaded from the cache)."""
    return sum(
        int(i.get("train_tokens", 0)) for i in infos if i.get("source") == "trained" and not i["from_cache"]
    )


def loss_quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        f"q{round(q * 100):02d}": float(v)
        for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)
    }


class LossBand(LossScoredSampler):
    """A pool loss band (after MidRanking, arXiv 2402.14270): rank the pool by loss under ``scorer``, highest
    first, drop the ``skip`` fraction at the top (``round(skip * N)`` examples) and keep the next ``budget``
    examples, ranks ``[skip * N, skip * N + budget)``. ``skip=0`` keeps the hardest ``budget`` examples.

    The default ``skip=0.125`` is the band width of the released MidRanking code (``frac=1/8``): its
    ``portion=1`` drops the highest-loss eighth of each batch and trains on the next, which is this band
    when taken over the pool. The default scorer is a copy of the run's initial model trained on the pool
    (``scorer.source=trained``, ``split=train``): a freshly initialised model ranks examples by little more
    than their tokens, and the paper scores with the pretrained model it continues to train
    (``scorer.source=initial`` for a run that starts from a pretrained or warm-started model).

    What the top tail holds depends on the scorer. On ``synthetic_math`` with the tiny model, the
    highest-loss examples under a trained scorer are the planted junk, which any ``skip`` of at least the
    junk rate drops; the planted label noise (a wrong final number in an otherwise well-formed solution) is
    not enriched at the top, because a model that cannot yet do the arithmetic finds a wrong result no more
    surprising than a right one.
    """

    name: ClassVar[str] = "loss_band"
    model_blocks: ClassVar[dict[str, dict[str, Any]]] = {"scorer": dict(REFERENCE_DEFAULTS)}

    def __init__(
        self, *args: Any, skip: float = 0.125, scorer: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if (
            isinstance(skip, bool)
            or not isinstance(skip, (int, float))
            or not math.isfinite(skip)
            or not 0 <= skip < 1
        ):
            raise ConfigError(f"method.skip={skip!r} is invalid: expected a fraction of the pool in [0, 1)")
        self.skip = float(skip)
        self.skip_count = round(self.skip * len(self.pool))
        n, k = len(self.pool), self.budget_size
        if self.skip_count + k > n:
            raise ConfigError(
                f"method.skip={self.skip} drops {self.skip_count} of the {n} pool examples, leaving "
                f"{n - self.skip_count} for a budget of {k}: expected skip * pool + budget <= pool"
            )
        self.scorer_settings = self.model_settings("scorer", scorer)

    def pool_scores(self, ctx: SelectionContext | None) -> LossScores:
        result, info = self.model_losses(ctx, self.scorer_settings, "scorer")
        return LossScores(
            values=result.losses,
            forward_tokens=result.forward_tokens,
            info={"scorer": info, "reference_training_tokens": spent_training_tokens(info)},
            has_target=result.has_target,
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        values = np.asarray(scores.values, dtype=np.float64)
        has_target = getattr(scores, "has_target", None)
        has_target = np.ones(values.size, dtype=bool) if has_target is None else np.asarray(has_target)
        ranked = self.ranking(values, has_target)
        start, stop = self.skip_count, self.skip_count + self.budget_size
        chosen = ranked[start:stop]
        band = values[chosen]
        diagnostics = {
            "skip": self.skip,
            "skip_count": start,
            "band_ranks": [start, stop],
            "band_loss": {"max": float(band.max()), "min": float(band.min()), "mean": float(band.mean())},
            "skipped_loss_mean": float(values[ranked[:start]].mean()) if start else None,
            "loss_quantiles": loss_quantiles(values[has_target]),
            "n_no_target": int((~has_target).sum()),
            "n_no_target_selected": int((~has_target[chosen]).sum()),
        }
        return np.sort(chosen), diagnostics


class ReducibleLoss(LossScoredSampler):
    """RHO-LOSS style reducible loss (arXiv 2206.07137), offline: reducible loss = loss under ``scorer``
    (the training-loss model) - loss under ``reference`` (the irreducible-loss model); keep the ``budget``
    examples with the largest reducible loss. An example is then worth training on when the scorer has not
    learnt it yet (high training loss) but it is learnable (low loss for a model trained on held-out data);
    noisy and unlearnable examples have a high irreducible loss too and score low.

    Defaults: ``scorer`` is a copy of the run's initial model trained on the pool (``split=train``) and
    ``reference`` a copy trained on the validation split, RHO-LOSS's holdout. See the module docstring for
    where this departs from the paper (online there, one-shot here).
    """

    name: ClassVar[str] = "rho_loss"
    model_blocks: ClassVar[dict[str, dict[str, Any]]] = {
        "scorer": dict(REFERENCE_DEFAULTS),
        "reference": {**REFERENCE_DEFAULTS, "split": "validation"},
    }

    def __init__(
        self,
        *args: Any,
        scorer: dict[str, Any] | None = None,
        reference: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.scorer_settings = self.model_settings("scorer", scorer)
        self.reference_settings = self.model_settings("reference", reference)
        if self.scorer_settings.describe() == self.reference_settings.describe():
            raise ConfigError(
                f"method.scorer and method.reference are the same model ({self.scorer_settings.describe()}): "
                "expected two different models, else every reducible loss is 0"
            )

    def pool_scores(self, ctx: SelectionContext | None) -> LossScores:
        training, scorer_info = self.model_losses(ctx, self.scorer_settings, "scorer")
        irreducible, reference_info = self.model_losses(ctx, self.reference_settings, "reference")
        has_target = training.has_target & irreducible.has_target
        pair = training.losses[has_target], irreducible.losses[has_target]
        correlation = None
        if has_target.sum() > 1 and pair[0].std() > 0 and pair[1].std() > 0:
            correlation = float(np.corrcoef(*pair)[0, 1])
        return LossScores(
            values=training.losses - irreducible.losses,
            forward_tokens=training.forward_tokens + irreducible.forward_tokens,
            info={
                "scorer": scorer_info,
                "reference": reference_info,
                "training_loss": summarize(pair[0]),
                "irreducible_loss": summarize(pair[1]),
                "loss_correlation": correlation,
                "reference_training_tokens": spent_training_tokens(scorer_info, reference_info),
            },
            has_target=has_target,
            parts={"training_loss": training.losses, "irreducible_loss": irreducible.losses},
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        values = np.asarray(scores.values, dtype=np.float64)
        has_target = getattr(scores, "has_target", None)
        has_target = np.ones(values.size, dtype=bool) if has_target is None else np.asarray(has_target)
        chosen = self.ranking(values, has_target)[: self.budget_size]
        diagnostics: dict[str, Any] = {
            "reducible_loss_quantiles": loss_quantiles(values[has_target]),
            "n_no_target": int((~has_target).sum()),
            "n_no_target_selected": int((~has_target[chosen]).sum()),
        }
        for name, part in getattr(scores, "parts", {}).items():
            diagnostics[f"selected_{name}_mean"] = float(np.asarray(part)[chosen].mean())
            diagnostics[f"pool_{name}_mean"] = (
                float(np.asarray(part)[has_target].mean()) if has_target.any() else None
            )
        return np.sort(chosen), diagnostics
