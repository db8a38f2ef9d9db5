"""The one-step look-ahead reward: how much one optimiser step on a unit lowers the reference loss.

Bai et al. (arXiv 2410.08102) define a sample's reward as its influence on the reference loss (Eq. 3); their
public code (``src/call_influence_mates/cal_influence.py``, after MATES) measures it instead by taking one
AdamW step at lr 1e-3 on a document from the training checkpoint (model *and* optimiser state) and reading
the reference loss afterwards. Here::

    reward(unit) = L_ref(theta) - L_ref(theta')      theta' = one optimiser step on the unit's mean loss

so a positive reward means the step helps the reference set (see :mod:`p3bench.scoring.rewards`).

Options (``method.reward.lookahead.*``):

- ``optimizer="train_state"`` (default): a fresh optimiser of the training optimiser's class and parameter
  groups, loaded from a deep copy of its ``state_dict`` (``Optimizer.load_state_dict`` aliases the state
  tensors it is given, so without the copy the step would move the training moments), the public code's
  setting. The step then mostly follows the training momentum, which blurs one unit's reward across
  categories (see :mod:`p3bench.methods.multi_agent`). ``"sgd"``: one plain SGD step (no momentum, no
  weight decay) on the unit alone, which needs no optimiser.
- ``lr`` (default 1e-3, as the code): the step's learning rate; ``None`` keeps each group's current one
  (the scheduled learning rate of the training step) with ``train_state``, and is 1e-3 with ``sgd``.
- ``clip`` (default 1.0): the unit gradient's norm is clipped to it before the step; 0 or None = no clipping.
  The clipping is the public code's (``grad_clip = 1.0`` and ``fabric.clip_gradients`` before its AdamW
  step in ``cal_influence.py``), not the paper's, which states none for its influence.

Departures from the public code: a *unit* (a few documents of one category) takes one step together where
the code steps per document (``unit_size=1`` reproduces that); the reward is the difference of reference
losses, not the post-step loss (the code's ``exp(0.5 loss)`` transform reads ``reference_loss_after``); the
step runs in eval mode (no dropout; the tiny models have none). Each unit starts from the live parameters
and the live optimiser state, on a scratch copy of the model made once per call. The reference set runs in
length-grouped batches; the units run one after another (a unit is one batch), which keeps each unit's
value independent of which other units a process computes (the bitwise equality under several processes).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from p3bench.errors import ConfigError
from p3bench.scoring.rewards import (
    Batch,
    Reward,
    batch_loss,
    batch_tokens,
    reference_loss,
    scratch_copy,
    to_device,
)

OPTIMIZERS = ("train_state", "sgd")


def is_number(value: Any) -> bool:
    """A real number (an int or a float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LookaheadReward(Reward):
    """``L_ref(theta) - L_ref(theta')`` after one optimiser step on each unit (module docstring)."""

    kind = "lookahead"

    def __init__(
        self, optimizer: str = "train_state", lr: float | None = 1.0e-3, clip: float | None = 1.0
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"method.reward.lookahead.optimizer={optimizer!r} is not supported: expected one of "
                f"{', '.join(OPTIMIZERS)}"
            )
        if lr is not None and not (is_number(lr) and lr > 0):
            raise ConfigError(f"method.reward.lookahead.lr={lr!r} is invalid: expected a number > 0 or null")
        if clip is not None and not (is_number(clip) and clip >= 0):
            raise ConfigError(
                f"method.reward.lookahead.clip={clip!r} is invalid: expected a number >= 0 or null"
            )
        self.optimizer = optimizer
        self.lr = None if lr is None else float(lr)
        self.clip = float(clip) if clip else None

    def local_rewards(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        units: Sequence[Batch],
        reference: Sequence[Batch],
        bar: Any,
    ) -> tuple[dict[str, np.ndarray], float, int, int]:
        device = next(model.parameters()).device
        scratch = scratch_copy(model)
        live = {n: p.detach() for n, p in model.named_parameters()}
        params = dict(scratch.named_parameters())
        trainable = [p for p in params.values() if p.requires_grad]
        make_optimizer = self._optimizer_factory(model, optimizer, params)
        ref_tokens = batch_tokens(reference)
        before = reference_loss(scratch, reference, device)
        forward, backward = ref_tokens, 0
        values, after = np.zeros(len(units)), np.zeros(len(units))
        for position, unit in enumerate(units):
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(live[name])
            step = make_optimizer()
            scratch.zero_grad(set_to_none=True)
            batch_loss(scratch, to_device(unit, device)).mean().backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, self.clip)
            step.step()
            after[position] = reference_loss(scratch, reference, device)
            values[position] = before - after[position]
            tokens = batch_tokens([unit])
            forward += tokens + ref_tokens
            backward += tokens
            bar.update(1)
        return {"value": values, "after": after}, before, forward, backward

    def _optimizer_factory(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        params: dict[str, torch.nn.Parameter],
    ) -> Any:
        """A function that returns a fresh optimiser over the scratch ``params``, as the option says."""
        if self.optimizer == "sgd":
            trainable = [p for p in params.values() if p.requires_grad]
            lr = 1.0e-3 if self.lr is None else self.lr
            return lambda: torch.optim.SGD(trainable, lr=lr)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the real one
        if optimizer is None:
            raise ConfigError(
                "method.reward.lookahead.optimizer=train_state needs the training optimiser, and the selection "
                "ran without one (outside Trainer.fit): expected optimizer=sgd there"
            )
        name_of = {id(p): n for n, p in model.named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            missing = [p for p in group["params"] if id(p) not in name_of]
            if missing:
                raise ValueError("the training optimiser holds parameters that are not the model's")
            groups.append(
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": [params[name_of[id(p)]] for p in group["params"]],
                }
            )
        saved = optimizer.state_dict()
        optimizer_class = type(optimizer)

        def make() -> torch.optim.Optimizer:
            fresh = optimizer_class([dict(group) for group in groups])
            # load_state_dict aliases the tensors it is given: copy them, or the step moves the training state
            fresh.load_state_dict(copy.deepcopy(saved))
            if self.lr is not None:
                for group in fresh.param_groups:
                    group["lr"] = self.lr
            return fresh

        return make


__all__ = ["OPTIMIZERS", "LookaheadReward"]
