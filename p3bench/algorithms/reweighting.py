"""Hard-sample reweighting of a batch of per-example losses: IR-DRO softmax weights and MidRanking bands.

Reference: Chen, Wang, Sow, Yang, Chen, Liang, Zhou & Wang, "Take the Bull by the Horns: Hard Sample-Reweighted
Continual Training Improves LLM Generalization", arXiv 2402.14270, and its public training script.

Every function here is pure math on a 1-D tensor of per-example losses ``l`` (one per example in the batch) and
returns 1-D coefficients ``w`` of the same length, detached from the autograd graph, such that the training
loss is ``(w * l).sum()`` with ``l`` still carrying gradients:

- :func:`irdro_weights` (Instance-Reweighted DRO): ``w = softmax(l / r)``, the closed-form maximiser of the
  KL-regularised inner problem ``max_{w in simplex} sum_i w_i l_i - r * KL(w || uniform)``. Large ``r`` gives
  uniform weights (plain ERM); small ``r`` puts all the weight on the highest-loss example. Because the
  weights sum to one, the reweighted loss has the scale of a batch mean.
- :func:`midranking_weights` (MidRanking): the mean of one band of the losses ranked in descending order,
  ``1/c`` on the examples in the band and ``0`` elsewhere. ``position = 0`` trains on the hardest band,
  ``position >= 1`` skips the hardest (often noisy) examples and trains on "moderately high" losses.
- :func:`global_irdro_weights`: IR-DRO normalised over the whole global batch when ``torch.distributed`` is
  initialised.
- :func:`weight_stats`: entropy / max weight / effective sample size of a weight vector, for logging.

Behaviour of the public code that is kept here: weights are recomputed from scratch at every call (no
state, no EMA, no clipping, no burn-in) and are detached. The public code normalises per device (each process
takes the softmax over its own micro-batch); :func:`irdro_weights` does the same, and
:func:`global_irdro_weights` is an addition that normalises over the global batch instead.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
import torch.distributed as dist

from p3bench.errors import ConfigError

__all__ = [
    "check_fraction",
    "check_position",
    "check_temperature",
    "gather_vectors",
    "global_irdro_weights",
    "irdro_weights",
    "midranking_band_size",
    "midranking_weights",
    "weight_stats",
]


def _as_losses(losses: Any, *, name: str = "losses", allow_empty: bool = False) -> torch.Tensor:
    """``losses`` as a detached 1-D floating tensor of finite values (half precision promoted to float32)."""
    values = torch.as_tensor(losses).detach()
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    elif values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    if values.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor (one loss per example), got shape {tuple(values.shape)}"
        )
    if values.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: expected at least one per-example loss")
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(
            f"{name} has {bad} non-finite value(s) (NaN or inf): expected finite per-example losses"
        )
    return values


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float when it is a finite real number > 0, else a one-line :class:`ConfigError`."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ConfigError(f"temperature={temperature!r}: expected a finite real number > 0")
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"temperature={temperature!r}: expected a finite real number > 0")
    return value


def _softmax_shifted(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(values / temperature)`` in the max-shifted form ``exp((l - max l) / r) / sum(...)``."""
    shifted = (values - values.max()) / temperature
    unnormalised = torch.exp(shifted)  # the max entry is exp(0) = 1, so the sum is >= 1: no 0/0, no overflow
    return unnormalised / unnormalised.sum()


@torch.no_grad()
def irdro_weights(losses: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """IR-DRO instance weights ``softmax(losses / temperature)`` (arXiv 2402.14270), detached, summing to one.

    This is the closed-form maximiser over the probability simplex of
    ``sum_i w_i l_i - r * KL(w || uniform)`` with ``r = temperature``: setting the gradient of the Lagrangian
    to zero gives ``l_i - r * (log(B * w_i) + 1) = lambda``, hence ``w_i`` proportional to ``exp(l_i / r)``.
    It is computed max-shifted (``exp((l_i - max_j l_j) / r)``), so large losses with a small ``r`` do not
    overflow. The public code's default is ``r = 1`` (its ``--kl_reg``), normalised over each device's own
    micro-batch with no burn-in; this function likewise normalises over the batch it is given.

    Args:
        losses: 1-D tensor of finite per-example losses (any floating dtype; half precision is computed in
            float32). Gradients are not propagated.
        temperature: ``r > 0``, finite. ``r -> inf`` gives uniform weights, ``r -> 0`` a one-hot on the
            highest loss.

    Returns:
        A detached 1-D tensor of non-negative weights summing to one, same length and device as ``losses``
        (float32 for half-precision input, otherwise the input's floating dtype).

    Raises:
        ConfigError: the temperature is not a finite number > 0.
        ValueError: ``losses`` is not 1-D, is empty or has a non-finite value.
    """
    r = check_temperature(temperature)
    values = _as_losses(losses)
    return _softmax_shifted(values, r)


def check_fraction(fraction: Any) -> float:
    """``fraction`` as a float when it is in ``(0, 1]``, else a one-line :class:`ConfigError`."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not (0 < float(fraction) <= 1):
        raise ConfigError(f"fraction={fraction!r}: expected a number in (0, 1]")
    return float(fraction)


def check_position(position: Any) -> int:
    """``position`` as an int when it is an integer >= 0, else a one-line :class:`ConfigError`."""
    if isinstance(position, bool) or not isinstance(position, Integral) or int(position) < 0:
        raise ConfigError(f"position={position!r}: expected an integer >= 0")
    return int(position)


def midranking_band_size(batch_size: int, fraction: float) -> int:
    """Band size ``c = max(1, int(fraction * batch_size))`` used by :func:`midranking_weights`."""
    return max(1, int(check_fraction(fraction) * batch_size))


@torch.no_grad()
def midranking_weights(losses: torch.Tensor, fraction: float = 0.125, position: int = 0) -> torch.Tensor:
    """MidRanking coefficients (arXiv 2402.14270): the mean of one rank band of the losses, as weights.

    The losses are ranked in descending order (ties broken by index: a stable sort, so of equal losses the
    lower index ranks first) and ``c = max(1, int(fraction * B))`` for a batch of ``B``. The examples ranked
    ``[position * c, (position + 1) * c)`` get ``1 / c`` and all others ``0``, so ``(coeff * losses).sum()``
    is the mean of that band. ``position = 0`` is the hardest band; ``position >= 1`` skips the hardest
    examples. ``fraction = 1, position = 0`` is plain ERM (``1 / B`` each).

    Matches the public code's ``--mode rank`` (``sorted[portion * c:(portion + 1) * c].mean()`` with
    ``c = int(frac * B)``, defaults ``frac = 0.125``, ``portion = 0``), except that ``c`` is at least one: the
    public ``int(frac * B)`` is ``0`` when ``frac * B < 1`` and its mean over an empty band is NaN. A band that
    does not fit in the batch is an error here, where the public code would silently take a shorter (or
    empty) slice.

    Args:
        losses: 1-D tensor of finite per-example losses.
        fraction: band size as a fraction of the batch, in ``(0, 1]``.
        position: which band, ``>= 0``; ``(position + 1) * c`` must not exceed ``B``.

    Returns:
        A detached 1-D tensor of coefficients with exactly ``c`` entries equal to ``1 / c``, the rest ``0``.

    Raises:
        ConfigError: ``fraction`` is outside ``(0, 1]``, ``position`` is negative or not an integer, or the
            band does not fit in the batch.
        ValueError: ``losses`` is not 1-D, is empty or has a non-finite value.
    """
    frac = check_fraction(fraction)
    pos = check_position(position)
    values = _as_losses(losses)
    batch = values.numel()
    c = midranking_band_size(batch, frac)
    if (pos + 1) * c > batch:
        raise ConfigError(
            f"position={pos} with fraction={frac} (band size {c}) needs ranks [{pos * c}, {(pos + 1) * c}) "
            f"but the batch has {batch} losses: expected position <= {batch // c - 1}"
        )
    order = torch.sort(values, descending=True, stable=True).indices
    coeff = torch.zeros_like(values)
    coeff[order[pos * c : (pos + 1) * c]] = 1.0 / c
    return coeff


@torch.no_grad()
def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """Summary of a non-negative weight vector, after normalising it to sum to one.

    Returns a dict with ``entropy`` (nats, ``-sum w log w`` with ``0 log 0 = 0``; ``log B`` when uniform,
    ``0`` when one-hot), ``max_weight``, ``effective_sample_size`` (``1 / sum w^2``: ``B`` when uniform, ``1``
    when one-hot) and ``ess_fraction`` (effective sample size divided by ``B``).

    Raises:
        ValueError: ``weights`` is not 1-D, is empty, has a non-finite or negative value, or sums to zero.
    """
    values = _as_losses(weights, name="weights").double()
    if bool((values < 0).any()):
        raise ValueError(f"weights has {int((values < 0).sum())} negative value(s): expected weights >= 0")
    total = values.sum()
    if not total > 0:
        raise ValueError("weights sum to 0: expected at least one positive weight")
    w = values / total
    positive = w[w > 0]
    entropy = float(-(positive * positive.log()).sum())
    ess = float(1.0 / (w * w).sum())
    return {
        "entropy": max(entropy, 0.0),
        "max_weight": float(w.max()),
        "effective_sample_size": ess,
        "ess_fraction": ess / w.numel(),
    }


@torch.no_grad()
def gather_vectors(local: torch.Tensor, group: Any | None = None) -> tuple[torch.Tensor, int]:
    """The 1-D tensors of all processes in ``group`` concatenated in rank order, and this process's offset.

    Processes may hold different lengths (zero included). Without an initialised ``torch.distributed`` this
    is ``(local, 0)``. The gathered tensors live on ``local``'s device (CUDA for NCCL, CPU for gloo). All
    processes must call this collectively.
    """
    if local.ndim != 1:
        raise ValueError(f"expected a 1-D tensor to gather, got shape {tuple(local.shape)}")
    if not (dist.is_available() and dist.is_initialized()):
        return local, 0
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    size = torch.tensor([local.numel()], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    # pad to a common length (all_gather needs equal shapes); the padding is dropped right after
    width = max(max(counts), 1)
    padded = torch.zeros(width, dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    every = torch.cat([chunk[:count] for chunk, count in zip(gathered, counts, strict=True)])
    return every, sum(counts[:rank])


@torch.no_grad()
def global_irdro_weights(
    local_losses: torch.Tensor, temperature: float = 1.0, group: Any | None = None
) -> torch.Tensor:
    """IR-DRO weights normalised over the global batch: this process's slice of ``softmax(all losses / r)``.

    When ``torch.distributed`` is initialised, the (possibly different-size) local loss vectors of all
    processes in ``group`` are all-gathered in rank order (:func:`gather_vectors`), the max-shifted softmax
    of the concatenation is taken, and the entries belonging to this process are returned; the slices of all
    processes together sum to one. Otherwise this equals :func:`irdro_weights` on the local losses.

    This departs from the public code of arXiv 2402.14270, which normalises over each device's own
    micro-batch only (its ``gathered_loss`` is never gathered). With the global normalisation, the per-process
    losses ``(w_local * l_local).sum()`` are parts of one global weighted sum: summing them over processes
    (not averaging, as data-parallel gradient averaging does) gives the global IR-DRO loss, so a caller using
    gradient averaging should multiply its local loss by the world size.

    A process may hold zero losses as long as the global batch is non-empty. All processes must call this
    collectively.

    Raises:
        ConfigError: the temperature is not a finite number > 0.
        ValueError: a local loss vector is not 1-D or has a non-finite value, or the global batch is empty.
    """
    r = check_temperature(temperature)
    distributed = dist.is_available() and dist.is_initialized()
    values = _as_losses(local_losses, allow_empty=distributed)
    every, start = gather_vectors(values, group)
    if every.numel() == 0:
        raise ValueError("the global batch is empty: expected at least one per-example loss across processes")
    weights = _softmax_shifted(every, r)
    return weights[start : start + values.numel()].clone()
