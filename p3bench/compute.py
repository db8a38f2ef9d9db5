"""Compute in floating-point operations (FLOPs), per model and role, with the tokens it was estimated from.

The estimate is the usual one of Kaplan et al., "Scaling Laws for Neural Language Models" (arXiv 2001.08361,
§2.1, Table 1): a transformer with ``N`` non-embedding parameters spends about ``2N`` FLOPs per token in a
forward pass and ``6N`` per token when it trains (forward and backward). A run's compute is the sum over
every model it trains or runs, each with its own ``N``:

- ``train``: the run's model trained on its selection, ``6N`` x its training tokens;
- ``selection_forward``: a model run over the pool to select (the run's model in a scoring pass, MiniLM
  embedding the pool, an Ask-LLM judge, a perplexity proxy, a reference model), ``2N`` x the tokens it
  processed (``selection.rounds[].forward_tokens`` are these tokens);
- ``selection_backward``: backward passes a selection method runs without training a model for its own
  sake (a one-step look-ahead, per-example gradients for gradient alignment), ``4N`` x the tokens they went
  through: the backward half of a training step. Their forward passes are ``selection_forward`` tokens, so
  a look-ahead step on ``t`` tokens is ``2N t`` forward plus ``4N t`` backward, as one training step is;
- ``selection_train``: a model trained in order to select (a local stand-in for a hub scorer, a reference
  model of the loss filters), ``6N`` x its training tokens. It is counted in every run that uses the model,
  whether the run trained it or a cache served it, as the forward tokens are: the compute belongs to the
  method, not to the order in which a sweep ran. A perplexity proxy used at an intermediate checkpoint
  counts the training up to that checkpoint;
- ``warm_start``: the pre-training of a warm-started run model (:mod:`p3bench.models.warm_start`). Recorded,
  but not in the total: it is the starting point every method of the sweep shares, as a hub model's
  pre-training is.

``N`` is every parameter except the input embedding tables (token, position and token-type embeddings,
T5's relative-position biases) and the output projection onto the vocabulary, tied or not: the paper's
non-embedding count, which :func:`non_embedding_parameters` computes the same way for every model. For
MiniLM, whose vocabulary table holds more than half its parameters, counting all parameters would double its
cost; the tiny run model's vocabulary is small, and so is the difference (docs/results.md, "Compute in
FLOPs").

Where the estimate departs from the exact cost (as the paper's ``C = 6N`` does):

- the attention's context-dependent FLOPs (``2 n_layer n_ctx d_attn`` per token forward) are left out, as
  the paper does when ``d_model`` is well above ``n_ctx / 12``: next to ``2N`` they are about
  ``n_ctx / (12 d_model)``, at most 256 / (12 x 128) = 1/6 for the tiny model at its 256-token limit and
  less on the shorter sequences it mostly sees;
- the output projection onto the vocabulary (``2 d_model n_vocab`` per token forward) is left out with the
  embeddings, and a per-sequence layer (BERT's pooler) is counted in ``N`` as if it ran on every token;
- an encoder-decoder model (T5: the Ask-LLM judges) is two components, ``encoder`` and ``decoder``: the
  encoder's tokens go through the encoder's parameters and the decoder's cross-attention key and value
  projections (which read the encoder's states), the decoder's tokens through the rest of the decoder;
- generation (the ``pass_rate`` scorer) counts each prompt token once per sample and each generated token
  once (a key-value cache), each at ``2N``;
- a LoRA run trains at ``6N`` of the whole model, an upper bound (the frozen weights get no weight
  gradients, about ``4N``);
- validation and test passes are not counted.

Everything here reads parameter counts and token counts; no model is run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: FLOPs per parameter and token: a forward pass, and a training step (forward and backward)
FORWARD_FLOPS_PER_PARAMETER = 2
BACKWARD_FLOPS_PER_PARAMETER = 4
TRAINING_FLOPS_PER_PARAMETER = FORWARD_FLOPS_PER_PARAMETER + BACKWARD_FLOPS_PER_PARAMETER
#: what ``compute.flops_estimate`` says in results.json
ESTIMATE = (
    "2N FLOPs per forward token, 6N per training token; N = non-embedding parameters (arXiv 2001.08361)"
)

#: each role and its FLOPs per parameter and token
ROLES: dict[str, int] = {
    "train": TRAINING_FLOPS_PER_PARAMETER,
    "selection_forward": FORWARD_FLOPS_PER_PARAMETER,
    "selection_backward": BACKWARD_FLOPS_PER_PARAMETER,
    "selection_train": TRAINING_FLOPS_PER_PARAMETER,
    "warm_start": TRAINING_FLOPS_PER_PARAMETER,
}
#: the role names, for ``ComputeLedger.add``
SELECTION_FORWARD = "selection_forward"
SELECTION_BACKWARD = "selection_backward"
SELECTION_TRAIN = "selection_train"
SELECTION_ROLES = (SELECTION_FORWARD, SELECTION_BACKWARD, SELECTION_TRAIN)
#: the component name of the model the run trains (its scoring passes are also this model's)
RUN_MODEL = "run_model"

# the decoder's cross-attention projections that read the encoder's states (T5, BART-like models)
_CROSS_KEY_VALUE = re.compile(r"(EncDecAttention\.[kv]|encoder_attn\.[kv]_proj)\.(weight|bias)$")


def forward_flops(params: int, tokens: int) -> float:
    """``2 N`` FLOPs per token: a forward pass of ``tokens`` tokens through ``params`` parameters."""
    return float(FORWARD_FLOPS_PER_PARAMETER) * params * tokens


def training_flops(params: int, tokens: int) -> float:
    """``6 N`` FLOPs per token: training on ``tokens`` tokens (forward and backward) with ``params``
    parameters."""
    return float(TRAINING_FLOPS_PER_PARAMETER) * params * tokens


def role_flops(role: str, params: int, tokens: int) -> float:
    """The FLOPs of ``tokens`` tokens through ``params`` parameters in ``role`` (one of :data:`ROLES`)."""
    if role not in ROLES:
        raise ValueError(f"compute role {role!r} is unknown: expected one of {', '.join(ROLES)}")
    return float(ROLES[role]) * params * tokens


# -- parameter counts -------------------------------------------------------------------------------------------


def non_embedding_parameters(model: Any) -> int:
    """Parameters of ``model`` (a ``torch.nn.Module``) except its input embedding tables (every
    ``nn.Embedding``) and its output projection onto the vocabulary (``get_output_embeddings()``), each
    shared tensor counted once."""
    from torch import nn

    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    output = getattr(model, "get_output_embeddings", None)
    head = output() if callable(output) else None
    if isinstance(head, nn.Module):
        excluded |= {id(p) for p in head.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


@dataclass(frozen=True)
class ModelSize:
    """The non-embedding parameters a token goes through: ``params`` for a decoder-only or encoder-only
    model; for an encoder-decoder model ``params`` is the encoder side (with the decoder's cross-attention
    key and value projections) and ``decoder_params`` the decoder side."""

    params: int
    decoder_params: int | None = None

    @property
    def total(self) -> int:
        return self.params + (self.decoder_params or 0)


def model_size(model: Any) -> ModelSize:
    """The :class:`ModelSize` of a transformers model (encoder-decoder models split in two)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        encoder, decoder = model.get_encoder(), model.get_decoder()
        cross = sum(p.numel() for name, p in decoder.named_parameters() if _CROSS_KEY_VALUE.search(name))
        return ModelSize(
            params=non_embedding_parameters(encoder) + cross,
            decoder_params=non_embedding_parameters(decoder) - cross,
        )
    return ModelSize(params=non_embedding_parameters(model))


# -- the accounting -----------------------------------------------------------------------------------------


@dataclass
class ComputeComponent:
    """One model in one role: its name, non-embedding parameters, tokens and FLOPs (``part``: ``encoder``
    or ``decoder`` of an encoder-decoder model, else None)."""

    name: str
    role: str
    params: int
    tokens: int
    part: str | None = None

    @property
    def flops(self) -> float:
        return role_flops(self.role, self.params, self.tokens)

    @property
    def key(self) -> tuple[str, str, str | None, int]:
        return self.name, self.role, self.part, self.params

    def to_dict(self) -> dict[str, Any]:
        """The component as results.json stores it (``part`` only when set)."""
        out: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "params": int(self.params),
            "tokens": int(self.tokens),
            "flops": self.flops,
        }
        if self.part is not None:
            out["part"] = self.part
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComputeComponent:
        return cls(
            name=str(data["name"]),
            role=str(data["role"]),
            params=int(data["params"]),
            tokens=int(data["tokens"]),
            part=None if data.get("part") is None else str(data["part"]),
        )


class ComputeLedger:
    """The compute a run or a selection round spends, one :class:`ComputeComponent` per model, role and part:
    tokens added under a name, role, part and parameter count already held are added to that component's. A
    selection method reports to its datamodule's ledger (``compute_ledger``) where it runs or trains a
    model."""

    def __init__(self, components: Iterable[ComputeComponent | Mapping[str, Any]] = ()) -> None:
        self._components: dict[tuple[str, str, str | None, int], ComputeComponent] = {}
        for component in components:
            self.add_component(component)

    def add_component(self, component: ComputeComponent | Mapping[str, Any]) -> None:
        if not isinstance(component, ComputeComponent):
            component = ComputeComponent.from_dict(component)
        role_flops(component.role, 0, 0)  # the role is known
        if component.tokens < 0:
            raise ValueError(f"compute component {component.name!r} has {component.tokens} tokens")
        held = self._components.get(component.key)
        if held is None:
            self._components[component.key] = ComputeComponent(**vars(component))
        else:
            held.tokens += component.tokens

    def add(
        self, name: str, role: str, size: ModelSize | int, tokens: int, *, decoder_tokens: int = 0
    ) -> None:
        """``tokens`` through the model ``name`` of ``size`` in ``role``; for an encoder-decoder model
        ``tokens`` are the encoder's and ``decoder_tokens`` the decoder's. Nothing is added for no tokens."""
        size = ModelSize(size) if isinstance(size, int) else size
        if size.decoder_params is None:
            if decoder_tokens:
                raise ValueError(f"model {name!r} has no decoder: got {decoder_tokens} decoder tokens")
            parts = [(None, size.params, tokens)]
        else:
            parts = [("encoder", size.params, tokens), ("decoder", size.decoder_params, decoder_tokens)]
        for part, params, count in parts:
            if count:
                self.add_component(ComputeComponent(name, role, int(params), int(count), part))

    @property
    def components(self) -> list[ComputeComponent]:
        return list(self._components.values())

    def tokens(self, *roles: str) -> int:
        """Tokens of the components in ``roles`` (all roles when none is given)."""
        return sum(c.tokens for c in self._components.values() if not roles or c.role in roles)

    def flops(self, *roles: str) -> float:
        """FLOPs of the components in ``roles`` (all roles when none is given)."""
        return sum((c.flops for c in self._components.values() if not roles or c.role in roles), 0.0)

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self._components.values()]


def record_embedding(ledger: ComputeLedger, embedder: Any, tokens: int) -> None:
    """An embedder's pass over ``tokens`` tokens as ``embedder:<name>`` (``embedder:hf:<path>`` for a local
    encoder) in ``selection_forward``; nothing for a model-free embedder (TF-IDF)."""
    model = getattr(embedder, "model", None)
    if model is None or not tokens:
        return
    name = str(embedder.name)
    if name == "hf":
        name = f"hf:{embedder.model_name_or_path}"
    ledger.add(f"embedder:{name}", "selection_forward", model_size(model), int(tokens))


def selection_backward_tokens(rounds: Iterable[Any]) -> int:
    """The tokens of every round's ``selection_backward`` components (``rounds``: records with ``compute``,
    as :class:`p3bench.methods.base.RoundRecord` or its dict)."""
    total = 0
    for record in rounds:
        components = (
            record.get("compute") if isinstance(record, Mapping) else getattr(record, "compute", None)
        )
        total += sum(int(c["tokens"]) for c in components or [] if c["role"] == SELECTION_BACKWARD)
    return total


def compute_summary(ledger: ComputeLedger) -> dict[str, Any]:
    """What results.json's ``compute`` holds about FLOPs: ``components`` (the ledger), ``train_flops``,
    ``selection_flops`` (forward and training of the selection's models), ``total_flops`` (their sum),
    ``warm_start_flops`` (0 without a warm start; not in the total) and ``flops_estimate``."""
    train = ledger.flops("train")
    selection = ledger.flops(*SELECTION_ROLES)
    return {
        "components": ledger.to_list(),
        "train_flops": train,
        "selection_flops": selection,
        "total_flops": train + selection,
        "warm_start_flops": ledger.flops("warm_start"),
        "flops_estimate": ESTIMATE,
    }


def run_compute(
    rounds: Iterable[Any],
    run_model: ModelSize,
    train_tokens: int,
    warm_start_tokens: int | None = None,
) -> dict[str, Any]:
    """The FLOPs of a run (:func:`compute_summary`): the run model's training and warm start, and each
    selection round's ``compute`` components (``rounds``: records with ``compute`` and ``forward_tokens``).

    A round's forward tokens that no component accounts for (a method that does not report its models, a
    round checkpointed before rounds recorded their compute) are counted as the run model's: the model a
    selection method scores with when it says nothing else."""
    ledger = ComputeLedger()
    ledger.add(RUN_MODEL, "train", run_model, int(train_tokens))
    if warm_start_tokens:
        ledger.add(RUN_MODEL, "warm_start", run_model, int(warm_start_tokens))
    for record in rounds:
        components = getattr(record, "compute", None) or []
        for component in components:
            ledger.add_component(component)
        reported = sum(int(c["tokens"]) for c in components if c["role"] == "selection_forward")
        unreported = int(record.forward_tokens) - reported
        if unreported > 0:
            ledger.add(RUN_MODEL, "selection_forward", run_model, unreported)
        elif unreported < 0:
            log.warning(
                "selection round %s reports %d forward tokens in its compute components, more than its %d "
                "forward tokens",
                getattr(record, "round", "?"),
                reported,
                record.forward_tokens,
            )
    return compute_summary(ledger)


__all__ = [
    "ESTIMATE",
    "RUN_MODEL",
    "ROLES",
    "SELECTION_BACKWARD",
    "SELECTION_FORWARD",
    "SELECTION_ROLES",
    "SELECTION_TRAIN",
    "ComputeComponent",
    "ComputeLedger",
    "ModelSize",
    "compute_summary",
    "forward_flops",
    "model_size",
    "non_embedding_parameters",
    "record_embedding",
    "role_flops",
    "run_compute",
    "selection_backward_tokens",
    "training_flops",
]
