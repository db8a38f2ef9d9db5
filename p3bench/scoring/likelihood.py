"""Policy-driven difficulty from one teacher-forced pass of the current model (P3, arXiv 2408.05541).

``likelihood``: the geometric-mean probability of the target tokens given the prompt,
``exp(-mean NLL)``, as in the P3 public code's whole-response score. Higher means easier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from p3bench.models.losses import per_example_nll, target_token_counts
from p3bench.scoring.base import ScoreResult, ScoringItems, TeacherForcedScorer, timed


def no_target(labels: torch.Tensor) -> torch.Tensor:
    """Examples whose target was cut off entirely (a prompt of ``max_length`` tokens or more): nothing to
    score, so scorers give them score 0 (hardest) rather than a vacuous probability of 1."""
    return target_token_counts(labels) == 0


class LikelihoodScorer(TeacherForcedScorer):
    """Geometric-mean target-token probability under the current model (one forward pass per example).

    With ``want_features`` the same pass also returns the mean-pooled last hidden state of each response,
    which the DPP can use as the policy model's embedding at no extra forward cost.
    """

    name = "likelihood"

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        def rows(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
            nll = per_example_nll(outputs.logits, batch["labels"])
            return {"nll": torch.where(no_target(batch["labels"]), torch.full_like(nll, torch.inf), nll)}

        def run() -> ScoreResult:
            arrays, tokens = self.teacher_forced_pass(module, items, rows, features=want_features)
            nll = arrays["nll"].astype(float)
            finite = np.isfinite(nll)
            return ScoreResult(
                scores=np.exp(-nll),
                forward_tokens=tokens,
                features=arrays.get("features"),
                diagnostics={
                    "mean_nll": float(nll[finite].mean()) if finite.any() else 0.0,
                    "no_target": int((~finite).sum()),
                },
            )

        return timed(run)
