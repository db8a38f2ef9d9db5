"""The gradient-alignment reward: per-example gradients, randomly projected, against the reference gradient.

Bai et al. (arXiv 2410.08102, Eq. 3) score a sample by its influence on the reference loss,
``-grad L(T_ref)^T H^-1 grad L(x)``, with gradients projected to 8,192 dimensions (A.9); their code has a
LESS-style path (``src/cal_influence_gradient/``, after Xia et al., arXiv 2402.04333). Here ``H = I`` (the
TracIn / LESS simplification) and the sign is fixed so that higher is better::

    r(x) = <P g_x, P g_ref>          g_x = grad of x's loss, g_ref = grad of L_ref (mean over the reference)

A first-order step ``-lr g_x`` changes ``L_ref`` by about ``-lr <g_ref, g_x>``, so a positive reward means
the reference loss falls. A unit's reward is the mean of its examples' rewards, which for ``normalise=False``
equals ``<P g_unit, P g_ref>`` with ``g_unit`` the gradient of the unit's mean loss (``P`` is linear).

Options (``method.reward.gradient.*``):

- ``dim`` (1024): the projected dimension. ``P`` is a sparse random projection (Li, Hastie and Church's very
  sparse projection, scikit-learn's ``SparseRandomProjection`` with ``density="auto"`` = ``1/sqrt(n)``),
  drawn once from ``seed`` for the number of trainable parameters and applied in torch in float32, so
  ``E[<Px, Py>] = <x, y>``. Its memory grows as ``dim * sqrt(n_params)`` entries: fine for the CPU models
  (about 1M entries for the tiny model), about 3 GB at 1B parameters, where a GPU projector (LESS uses
  ``trak``'s) would be needed; none is built here.
- ``per_example``: ``"vmap"`` (``torch.func.vmap(grad(...))`` over ``functional_call``, one unit at a time)
  or ``"loop"`` (one ``torch.func.grad`` per example, the fallback). Both run each example as a row of the
  unit's right-padded batch without an attention mask (a causal model never attends to the padding after
  a token), with eager attention on the scratch copy (``sdpa`` falls back to a slow path under ``vmap``).
- ``normalise`` (False): the cosine of the projected gradients instead of their dot product (LESS).
  Departure from LESS: the reference side is the gradient of the mean reference loss, not the mean of
  normalised per-example reference gradients.
- ``seed`` (0): the projection's seed, fixed across rounds so that rewards of different rounds are
  comparable.

Departures from the paper: no Hessian and no Adam preconditioning (LESS uses Adam's moments), gradients of the
live model at the time of the update rather than of a warm-up checkpoint, and no per-slice averaging over
eight 1,250-document slices: the caller's units are the samples.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse
import torch
from sklearn.random_projection import SparseRandomProjection
from torch.func import functional_call, grad, vmap

from p3bench.errors import ConfigError
from p3bench.models.losses import per_example_nll
from p3bench.scoring.rewards import Batch, Reward, batch_loss, batch_tokens, scratch_copy, to_device

PER_EXAMPLE = ("vmap", "loop")


@lru_cache(maxsize=2)
def _projection_matrix(n_features: int, dim: int, seed: int) -> scipy.sparse.csr_matrix:
    projection = SparseRandomProjection(
        n_components=dim, density="auto", random_state=seed, dense_output=False
    )
    projection.fit(scipy.sparse.csr_matrix((1, n_features), dtype=np.float32))
    return projection.components_.astype(np.float32).tocsr()


def sparse_projector(
    n_features: int, dim: int, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The ``dim x n_features`` sparse random projection drawn from ``seed``, as a float32 torch CSR tensor
    (the same matrix for the same arguments; ``E[P^T P] = I``)."""
    matrix = _projection_matrix(int(n_features), int(dim), int(seed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data),
            size=matrix.shape,
            dtype=torch.float32,
            check_invariants=True,
        ).to(device)


def project(projector: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` (``k x n`` or ``n``) projected by ``projector`` (``dim x n``): ``k x dim`` (or ``dim``)."""
    flat = vectors.float().reshape(-1, vectors.shape[-1])
    out = (projector @ flat.T).T
    return out if vectors.dim() == 2 else out[0]


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable parameters by name (each shared tensor once), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def flatten(gradients: dict[str, torch.Tensor], names: Sequence[str], batched: bool) -> torch.Tensor:
    """Gradients concatenated in ``names`` order: ``k x n`` when ``batched`` (a leading example axis), else ``n``."""
    if batched:
        return torch.cat([gradients[n].reshape(gradients[n].shape[0], -1) for n in names], dim=1)
    return torch.cat([gradients[n].reshape(-1) for n in names])


def per_example_gradients(model: torch.nn.Module, batch: Batch, method: str = "vmap") -> torch.Tensor:
    """The gradient of each example's mean target NLL with respect to the trainable parameters, flattened:
    ``k x n_params`` for a ``k``-row batch. Each row runs alone and without an attention mask (right
    padding never reaches the earlier tokens). ``method`` is ``"vmap"`` or ``"loop"``."""
    params = trainable_parameters(model)
    names = list(params)
    buffers = dict(model.named_buffers())

    def example_loss(
        parameters: dict[str, torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(
            model, (parameters, buffers), args=(), kwargs={"input_ids": input_ids[None], "use_cache": False}
        )
        return per_example_nll(out.logits, labels[None])[0]

    gradient = grad(example_loss)
    input_ids, labels = batch["input_ids"], batch["labels"]
    if method == "vmap":
        return flatten(vmap(gradient, in_dims=(None, 0, 0))(params, input_ids, labels), names, batched=True)
    if method == "loop":
        rows = [
            flatten(gradient(params, input_ids[i], labels[i]), names, batched=False)
            for i in range(len(input_ids))
        ]
        return torch.stack(rows)
    raise ConfigError(
        f"method.reward.gradient.per_example={method!r} is not supported: expected vmap or loop"
    )


def use_eager_attention(model: torch.nn.Module) -> None:
    """Eager attention on ``model`` (a scratch copy) where transformers lets one choose."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        # a model without the choice keeps its own
        with contextlib.suppress(ValueError, NotImplementedError):
            setter("eager")


class GradientAlignmentReward(Reward):
    """``<P g_x, P g_ref>`` averaged over each unit's examples (module docstring)."""

    kind = "gradient"

    def __init__(
        self, dim: int = 1024, per_example: str = "vmap", normalise: bool = False, seed: int = 0
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"method.reward.gradient.dim={dim!r} is invalid: expected an integer >= 1")
        if per_example not in PER_EXAMPLE:
            raise ConfigError(
                f"method.reward.gradient.per_example={per_example!r} is not supported: expected one of "
                f"{', '.join(PER_EXAMPLE)}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"method.reward.gradient.seed={seed!r} is invalid: expected an integer")
        self.dim = dim
        self.per_example = per_example
        self.normalise = bool(normalise)
        self.seed = seed

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
        use_eager_attention(scratch)
        names = list(trainable_parameters(scratch))
        named = dict(scratch.named_parameters())
        n_params = sum(named[n].numel() for n in names)
        projector = sparse_projector(n_params, self.dim, self.seed, device)

        # the reference gradient: grad of the mean reference loss, accumulated over the reference batches
        n_reference = sum(int(b["input_ids"].shape[0]) for b in reference)
        total = torch.zeros((), dtype=torch.float64)
        for batch in reference:
            losses = batch_loss(scratch, to_device(batch, device))
            (losses.sum() / n_reference).backward()
            total += losses.detach().double().cpu().sum()
        before = float(total / n_reference)
        gradients = [torch.zeros_like(named[n]) if named[n].grad is None else named[n].grad for n in names]
        reference_gradient = project(projector, torch.cat([g.reshape(-1) for g in gradients]))
        scratch.zero_grad(set_to_none=True)
        reference_norm = reference_gradient.norm()
        ref_tokens = batch_tokens(reference)
        forward = backward = ref_tokens

        values = np.zeros(len(units))
        for position, unit in enumerate(units):
            projected = project(
                projector, per_example_gradients(scratch, to_device(unit, device), self.per_example)
            )
            rewards = projected @ reference_gradient
            if self.normalise:
                rewards = rewards / (projected.norm(dim=1) * reference_norm).clamp(min=1e-12)
            values[position] = float(rewards.double().mean())
            tokens = batch_tokens([unit])
            forward += tokens
            backward += tokens
            bar.update(1)
        return {"value": values}, before, forward, backward


__all__ = [
    "PER_EXAMPLE",
    "GradientAlignmentReward",
    "per_example_gradients",
    "project",
    "sparse_projector",
]
