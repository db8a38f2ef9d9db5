"""Difficulty scorers: how hard each pool example is for the current model (or for the data's labels).

Scores are in [0, 1], higher = easier; ``ScoreResult.difficulty = 1 - score``. Registered by name:
``likelihood`` and ``steps`` (one teacher-forced pass, P3 arXiv 2408.05541), ``pass_rate`` (sampled answers
checked by the run's evaluator), ``level`` (the dataset's level labels, no model), ``uniform`` (no difficulty).
"""

from __future__ import annotations

from typing import Any

from p3bench.registry import Registry
from p3bench.scoring.base import Scorer, ScoreResult, ScoringItems

SCORERS: Registry = Registry("difficulty scorer")
SCORERS.register_lazy("likelihood", "p3bench.scoring.likelihood:LikelihoodScorer")
SCORERS.register_lazy("steps", "p3bench.scoring.steps:StepScorer")
SCORERS.register_lazy("pass_rate", "p3bench.scoring.pass_rate:PassRateScorer")
SCORERS.register_lazy("level", "p3bench.scoring.labels:LevelScorer")
SCORERS.register_lazy("uniform", "p3bench.scoring.labels:UniformScorer")


def build_scorer(name: str, **kwargs: Any) -> Scorer:
    """The scorer registered as ``name``, built with ``kwargs``."""
    return SCORERS.get(name)(**kwargs)


__all__ = ["SCORERS", "ScoreResult", "Scorer", "ScoringItems", "build_scorer"]
