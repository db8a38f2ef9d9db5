"""Throughput and model FLOPs utilisation (MFU) of a run's training steps and of the run model's scoring
passes, for ``results.json`` (``compute.throughput``).

- **What is timed.** Training: each training batch (a micro-batch under gradient accumulation) from
  ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, the optimiser step when it falls
  there; not the data loading before it, validation, checkpoints or selection). Scoring:
  each batch of :func:`p3bench.scoring.base.forward_pass` run on the run model (likelihood, steps and the
  other passes of the dynamic methods), including moving its rows to the host. On a GPU the device is
  synchronised at both ends of every timed span, so the times are the device's, not the launch queue's.
- **Rates** are this process's: examples, non-padding tokens and seconds, and their ratios. Under DDP every
  process times its own share, so the rates are per device (``world_size`` says how many). A resumed run
  counts from its restart, as ``compute.seconds`` does.
- **MFU** (Chowdhery et al., PaLM, arXiv 2204.02311, App. B) is the model FLOPs per second divided by the
  device's peak: model FLOPs are :mod:`p3bench.compute`'s estimate (``6N`` per training token, ``2N`` per
  scoring token, ``N`` the non-embedding parameters; Kaplan et al., arXiv 2001.08361), the peak is
  Lightning's table for the device (``lightning_fabric.utilities.throughput.get_available_flops``: NVIDIA
  data-centre and consumer GPUs, TPUs) at the training precision for training, and at the weights' dtype
  for scoring (scoring passes run without autocast: a float32 model scores in float32, or TF32 where
  PyTorch's matmul precision allows it, whatever the training precision). Departure from PaLM's definition: the attention's ``n_ctx``-dependent FLOPs are left out, as in
  :mod:`p3bench.compute`, so at long contexts the MFU reads low. A device the table does not know (a CPU)
  has ``peak_flops_per_device: null`` and ``mfu: null``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from p3bench.compute import FORWARD_FLOPS_PER_PARAMETER, TRAINING_FLOPS_PER_PARAMETER

__all__ = ["PassTimes", "Throughput", "TrainThroughput", "peak_flops", "synchronize", "throughput_summary"]


@dataclass
class PassTimes:
    """Totals of one kind of pass: examples, non-padding tokens, seconds."""

    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, examples: int, tokens: int, seconds: float) -> None:
        self.examples += int(examples)
        self.tokens += int(tokens)
        self.seconds += float(seconds)

    def rates(self, flops_per_token: float, peak: float | None) -> dict[str, Any]:
        per_s = (lambda x: round(x / self.seconds, 3)) if self.seconds > 0 else (lambda x: None)
        flops_per_s = flops_per_token * self.tokens / self.seconds if self.seconds > 0 else None
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "examples_per_s": per_s(self.examples),
            "tokens_per_s": per_s(self.tokens),
            "model_flops_per_s": None if flops_per_s is None else float(f"{flops_per_s:.4g}"),
            "mfu": None if flops_per_s is None or not peak else float(f"{flops_per_s / peak:.4g}"),
        }


class Throughput:
    """The run model's timed training batches and scoring batches (held by the module as ``throughput``)."""

    def __init__(self) -> None:
        self.train = PassTimes()
        self.scoring = PassTimes()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainThroughput(pl.Callback):
    """Times every training batch into ``pl_module.throughput.train`` (see the module docstring)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        self._start = None
        times = getattr(pl_module, "throughput", None)
        if times is not None:
            times.train.add(int(batch["input_ids"].shape[0]), int(batch["attention_mask"].sum()), seconds)


def precision_dtype(precision: str) -> torch.dtype:
    """The matrix-multiply dtype of a Lightning precision setting (``bf16-mixed`` -> bfloat16, ...)."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    if text.startswith("64"):
        return torch.float64
    return torch.float32


#: GPU names Lightning's table does not parse, and the entry of that table they are (an H200 reports its
#: name as plain "NVIDIA H200"; the table knows the SXM and NVL parts, the same peak for the SXM one).
NAME_ALIASES: dict[str, str] = {"h200": "h200 sxm1"}


def peak_flops(device: torch.device, dtype: str | torch.dtype) -> float | None:
    """The device's peak FLOP/s for a Lightning precision setting or a dtype, from Lightning's table, or
    None where it has none (a CPU)."""
    from lightning_fabric.utilities.throughput import _CUDA_FLOPS, get_available_flops

    dtype = dtype if isinstance(dtype, torch.dtype) else precision_dtype(dtype)
    try:
        peak = get_available_flops(device, dtype)
    except Exception:  # an unknown device raises on some versions instead of returning None
        return None
    if not peak and device.type == "cuda":
        chip = NAME_ALIASES.get(torch.cuda.get_device_name(device).lower().removeprefix("nvidia ").strip())
        peak = _CUDA_FLOPS.get(chip, {}).get(dtype) if chip else None
    return float(peak) if peak else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def throughput_summary(
    throughput: Throughput,
    params: int,
    device: torch.device,
    precision: str,
    scoring_dtype: torch.dtype,
    world_size: int,
) -> dict[str, Any]:
    """``compute.throughput`` of results.json: the device, its peaks, and the training and scoring rates.
    Training runs at the trainer's ``precision``; scoring passes run without autocast, in the weights'
    ``scoring_dtype``, so each is measured against its own peak."""
    train_peak = peak_flops(device, precision)
    scoring_peak = peak_flops(device, scoring_dtype)
    return {
        "device": device_name(device),
        "precision": str(precision),
        "scoring_dtype": str(scoring_dtype).removeprefix("torch."),
        "world_size": int(world_size),
        "non_embedding_parameters": int(params),
        "peak_flops_per_device": train_peak,
        "scoring_peak_flops_per_device": scoring_peak,
        "train": throughput.train.rates(TRAINING_FLOPS_PER_PARAMETER * params, train_peak),
        "scoring": throughput.scoring.rates(FORWARD_FLOPS_PER_PARAMETER * params, scoring_peak),
    }
