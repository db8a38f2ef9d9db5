"""Policy-driven difficulty from one teacher-forced pass of the current model (P3, arXiv 2408.05541).

``likelihood``: the geometric-mean probability of the target tokens given the prompt,
``exp(-mean NLL)``, as in the P3 public code's whole-response score. Higher means easier.
"""

from __future__ import annotations

from typing import Any

import torch

from p3bench.models.collate import IGNORE_INDEX
from p3bench.models.losses import per_example_nll
from p3bench.scoring.base import Scorer, ScoreResult, ScoringItems, forward_pass, timed


def mean_pooled_targets(hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over each example's target positions (the whole sequence when an
    example has no target token left). Pooling the response avoids the degenerate first-token state the
    P3 public code used (under causal attention position 0 sees only BOS)."""
    mask = (labels != IGNORE_INDEX).to(hidden.dtype)
    empty = mask.sum(dim=1) == 0
    if empty.any():
        mask[empty] = 1.0
    return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)


class LikelihoodScorer(Scorer):
    """Geometric-mean target-token probability under the current model (one forward pass per example).

    With ``want_features`` the same pass also returns the mean-pooled last hidden state of each response,
    which the DPP can use as the policy model's embedding at no extra forward cost.
    """

    name = "likelihood"

    def __init__(self, batch_size: int = 64, progress: bool = True) -> None:
        self.batch_size = int(batch_size)
        self.progress = bool(progress)

    def score(self, module: Any, items: ScoringItems, *, want_features: bool = False) -> ScoreResult:
        def rows(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
            out = {"nll": per_example_nll(outputs.logits, batch["labels"])}
            if want_features:
                out["features"] = mean_pooled_targets(outputs.hidden_states[-1], batch["labels"])
            return out

        def run() -> ScoreResult:
            arrays, tokens = forward_pass(
                module,
                items,
                rows,
                batch_size=self.batch_size,
                output_hidden_states=want_features,
                progress=self.progress,
                description="scoring (likelihood)",
            )
            nll = arrays["nll"].astype(float)
            return ScoreResult(
                scores=torch.exp(-torch.from_numpy(nll)).numpy(),
                forward_tokens=tokens,
                features=arrays.get("features"),
                diagnostics={"mean_nll": float(nll.mean()) if len(nll) else 0.0},
            )

        return timed(run)
