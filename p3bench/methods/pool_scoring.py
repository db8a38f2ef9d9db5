"""The shape shared by the static samplers of the 19-sampler comparison (Sachdeva et al., arXiv 2402.09668):
score every pool example once, before training, then choose the budget from the scores.

Each sampler reports its per-example score in the sign the paper plots (App. D.1: the log-probability of
"yes" for Ask-LLM, the negated perplexity, the negated maximum in-cluster cosine for SemDeDup, the negated
cosine to the centroid for Prototypes, the kernel density for Density), so that ``pool_scores`` of two
samplers can be rank-correlated as in the paper's Figure 7 (``experiments/sachdeva19/sampler_correlations.py``).
Scores and embeddings go through the on-disk cache, so a sweep computes each once. A selection's forward
tokens are the non-padding tokens its models process over the pool (a scorer's or embedder's own
tokenization after truncation, prompt template included), counted whether or not the cache served the
scores or embeddings: the compute belongs to the method, not to the order in which a sweep ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from p3bench.compute import record_embedding
from p3bench.embeddings import build_embedder
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.methods.options import choice
from p3bench.sharded import sharded_embeddings_counted
from p3bench.utils.hashing import id_hash_order

TEXT_FIELDS = ("prompt", "target", "prompt_and_target")


@dataclass
class PoolScores:
    """One score per pool example (in the paper's plotted sign), the forward tokens computing them takes
    (the same whether or not a cache served them), and what the scoring recorded about itself (model,
    settings, stand-in provenance)."""

    values: np.ndarray
    forward_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def example_text(prompt: str, target: str, text_field: str) -> str:
    """The text a scorer or embedder sees: the prompt, the target, or both (just the target when the prompt
    is empty, as in the ``lm`` task)."""
    if text_field == "prompt":
        return prompt
    if text_field == "target":
        return target
    return f"{prompt}\n{target}" if prompt else target


class PoolScoringMethod(SelectionDataModule):
    """A static sampler: :meth:`pool_scores` once, then :meth:`choose` the budget. Subclasses implement both.

    ``progress`` (default on) shows progress bars of the sampler's long steps (embedding, scoring passes,
    model training, clustering, sketches; :mod:`p3bench.utils.progress`), unless the process-wide switch
    (the run's root ``progress`` key) is off.
    """

    name: ClassVar[str] = "pool_scoring"

    def __init__(self, *args: Any, text: str = "prompt_and_target", progress: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.text_field = choice("text", text, TEXT_FIELDS)
        self.progress = bool(progress)
        self._ties: np.ndarray | None = None

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        raise NotImplementedError

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        """Pool positions of the selection and diagnostics."""
        raise NotImplementedError

    def select(self, ctx: SelectionContext) -> Selection:
        scores = self.pool_scores(ctx)
        chosen, diagnostics = self.choose(scores, ctx)
        chosen = np.asarray(chosen, dtype=np.int64)
        return Selection(
            ids=[self.pool[i].id for i in chosen.tolist()],
            scores=scores.values[chosen].tolist(),
            diagnostics={**scores.info, **diagnostics, "pool_score_summary": summarize(scores.values)},
            forward_tokens=scores.forward_tokens,
        )

    # shared pieces ---------------------------------------------------------------------------------------------
    def texts(self) -> list[str]:
        return [example_text(ex.prompt, ex.target, self.text_field) for ex in self.pool]

    def tie_rank(self) -> np.ndarray:
        """Each pool position's rank in a fixed id-hash order: the tie-breaker of every top-k here."""
        if self._ties is None:
            ranks = np.empty(len(self.pool), dtype=np.int64)
            ranks[np.asarray(id_hash_order([ex.id for ex in self.pool]), dtype=np.int64)] = np.arange(
                len(self.pool)
            )
            self._ties = ranks
        return self._ties

    def top_k(self, values: np.ndarray, k: int) -> np.ndarray:
        """Positions of the ``k`` largest ``values`` (exact ties broken by the id-hash order)."""
        order = np.lexsort((self.tie_rank(), -np.asarray(values, dtype=np.float64)))
        return np.sort(order[:k])

    def embeddings(self, embedder: str, embedder_kwargs: dict[str, Any] | None) -> tuple[np.ndarray, int]:
        """Unit-norm embeddings of the pool's texts, through the embedding cache, and the forward tokens
        embedding them takes (0 for a model-free embedder; the same on a cache hit). Under a process group
        each process embeds its share and every process gets all the vectors
        (:func:`p3bench.sharded.sharded_embeddings_counted`)."""
        kwargs = dict(embedder_kwargs or {})
        kwargs.setdefault("progress", self.progress)
        model = build_embedder(embedder, **kwargs)
        vectors, tokens = sharded_embeddings_counted(model, self.texts(), self.cache_dir)
        record_embedding(self.compute_ledger, model, tokens)  # the round's compute in FLOPs
        return vectors, tokens


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, spread and quartiles of a pool's finite scores, and how many are not finite (diagnostics)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    n_not_finite = int(values.size - finite.size)
    if finite.size == 0:
        return {"n_not_finite": n_not_finite}
    values = finite
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {
        "n_not_finite": n_not_finite,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "max": float(q[4]),
    }
