"""Difficulty from the dataset's own level labels (``meta["level"]``): the static-difficulty signal of an
easy-to-hard curriculum (Bengio et al., ICML 2009). No model is involved and no forward token is spent.

Level L maps to score ``0.001 + 0.998 * (1 - (L - lowest) / (highest - lowest))``; examples without a level
score 0, the hardest. Ties within a level are broken by a deterministic per-example jitter (a hash of the
id, below 1e-7), so that a pace admitting part of a level takes a pseudo-random part rather than the pool's
order.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from p3bench.scoring.base import Scorer, ScoreResult, ScoringItems


def _jitter(example_id: str) -> float:
    digest = hashlib.sha256(example_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 1e-7


class LevelScorer(Scorer):
    name = "level"
    needs_model = False

    def __init__(self, **_: Any) -> None:
        pass

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        examples = [items.examples[i] for i in items.indices]
        levels = [ex.meta.get("level") for ex in examples]
        known = [float(v) for v in levels if isinstance(v, (int, float))]
        if not known:
            raise ValueError("the level scorer needs meta['level'] on the pool's examples; none has one")
        low, high = min(known), max(known)
        span = (high - low) or 1.0
        scores = np.array(
            [
                (0.001 + 0.998 * (1.0 - (float(v) - low) / span) if isinstance(v, (int, float)) else 0.0)
                + _jitter(ex.id)
                for v, ex in zip(levels, examples, strict=True)
            ]
        )
        return ScoreResult(scores=scores, diagnostics={"levels": sorted(set(known))})


class UniformScorer(Scorer):
    """Every example equally easy (score 1): for methods that use no difficulty (a diversity-only DPP)."""

    name = "uniform"
    needs_model = False

    def __init__(self, **_: Any) -> None:
        pass

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        return ScoreResult(scores=np.ones(len(items)))
