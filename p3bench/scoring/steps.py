"""Step-level policy difficulty (P3, arXiv 2408.05541, the public code's "action" score).

The reference solution is split on ``\\n+`` into lines a_1..a_K; each line is scored by the geometric-mean
probability of its tokens given the prompt and the lines before it, and the example's score is the
arithmetic mean over lines. The public code runs one forward pass per line; under causal attention one
pass over prompt + solution gives every line's tokens exactly that context, so this computes the same
quantity in a single pass. Token-to-line assignment: a token belongs to the line of its first non-newline
character; tokens made only of newlines, and the end-of-sequence token, belong to the line before them.
When a tokenizer cannot report character offsets, the whole solution counts as one line (recorded in
``diagnostics["no_offsets"]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from p3bench.models.collate import IGNORE_INDEX
from p3bench.scoring.base import ScoreResult, ScoringItems, TeacherForcedScorer, timed

_LINE = re.compile(r"[^\n]+")


def token_line_ids(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The 0-based line (non-empty ``\\n``-separated piece of ``text``) each token belongs to."""
    line_of_char = [-1] * len(text)
    for line, match in enumerate(_LINE.finditer(text)):
        for c in range(match.start(), match.end()):
            line_of_char[c] = line
    ids: list[int] = []
    previous = 0
    for start, end in offsets:
        line = next((line_of_char[c] for c in range(start, min(end, len(text))) if line_of_char[c] >= 0), -1)
        if line < 0:
            line = previous
        ids.append(line)
        previous = line
    return ids


class StepScorer(TeacherForcedScorer):
    """Mean over solution lines of each line's geometric-mean token probability under the current model."""

    name = "steps"

    def __init__(
        self, batch_size: int = 64, max_batch_tokens: int | None = None, progress: bool = True
    ) -> None:
        super().__init__(batch_size, max_batch_tokens, progress)
        self._line_ids: dict[int, list[int]] = {}
        self._no_offsets: set[int] = set()

    def line_ids(self, items: ScoringItems) -> tuple[dict[int, list[int]], int]:
        """Line id of every target token (EOS included) of every scored pool example."""
        missing = [i for i in items.indices if i not in self._line_ids]
        if missing:
            texts = [items.examples[i].target for i in missing]
            try:
                encoded = items.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
                offsets = encoded["offset_mapping"]
                ids = encoded["input_ids"]
            except (NotImplementedError, ValueError, TypeError):
                offsets, ids = [None] * len(missing), [None] * len(missing)
            for i, text, offs, tok in zip(missing, texts, offsets, ids, strict=True):
                target = items.encoded.target_ids[i]
                n_text = len(target) - (1 if items.tokenizer.eos_token_id is not None else 0)
                if offs is None or list(tok) != list(target[:n_text]):
                    self._no_offsets.add(i)
                    self._line_ids[i] = [0] * len(target)
                    continue
                lines = token_line_ids(text, offs)
                self._line_ids[i] = lines + [lines[-1] if lines else 0] * (len(target) - n_text)
        return self._line_ids, sum(i in self._no_offsets for i in items.indices)

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        line_ids, no_offsets = self.line_ids(items)

        def rows(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
            labels = batch["labels"][:, 1:]
            logits = outputs.logits[:, :-1, :].float()
            mask = labels != IGNORE_INDEX
            logprob = (
                torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            )
            line = torch.zeros_like(labels)
            for row, pool_index in enumerate(batch["index"].tolist()):
                n_target = int(mask[row].sum())
                start = int(mask[row].float().argmax()) if n_target else 0
                ids = line_ids[pool_index][:n_target]
                line[row, start : start + len(ids)] = torch.tensor(ids, device=line.device)
            n_lines = int(line.max()) + 1 if line.numel() else 1
            sums = torch.zeros(labels.size(0), n_lines, device=labels.device)
            counts = torch.zeros_like(sums)
            weight = mask.float()
            sums.scatter_add_(1, line, logprob * weight)
            counts.scatter_add_(1, line, weight)
            present = counts > 0
            line_prob = torch.where(present, torch.exp(sums / counts.clamp(min=1.0)), torch.zeros_like(sums))
            n_present = present.sum(dim=1)
            # no target token left (the prompt filled max_length): nothing to score, counted as hardest
            score = torch.where(
                n_present > 0,
                line_prob.sum(dim=1) / n_present.clamp(min=1),
                torch.zeros_like(n_present, dtype=sums.dtype),
            )
            return {"score": score, "n_lines": n_present.float()}

        def run() -> ScoreResult:
            arrays, tokens = self.teacher_forced_pass(module, items, rows, features=want_features)
            return ScoreResult(
                scores=arrays["score"].astype(float),
                forward_tokens=tokens,
                features=arrays.get("features"),
                diagnostics={
                    "mean_lines": float(arrays["n_lines"].mean()) if len(items) else 0.0,
                    "no_offsets": no_offsets,
                },
            )

        return timed(run)
