"""Per-example losses: every method sees one loss per example, never only the batch mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from p3bench.models.collate import IGNORE_INDEX


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood of each example's target tokens, shape ``[batch]``.

    ``labels`` holds the token ids at target positions and ``IGNORE_INDEX`` elsewhere (prompt and padding);
    position ``t`` of ``logits`` predicts token ``t + 1``. An example with no target token gets loss 0.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    mask = (shift_labels != IGNORE_INDEX).to(token_nll.dtype)
    return (token_nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def target_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """Number of predicted target tokens per example (the denominators of :func:`per_example_nll`)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
