"""DEFT-UCS (Das and Khetan, "DEFT: Data Efficient Fine-Tuning for Pre-Trained Language Models via
Unsupervised Core-Set Selection", arXiv 2310.16776), the baseline DELIFT (arXiv 2411.04425) compares with:
k-means over sentence embeddings of the pool, then from every cluster an equal share of the budget, part of
it the examples nearest the centroid ("easy", the prototypes) and the rest the farthest ("hard").

As in DELIFT's public code: 7 clusters, ``alpha = 0.5`` of each cluster's share nearest the centroid, the
same share ``int(budget / n_clusters)`` for every cluster. Departures, each fixing what the public code does
by accident: its selection indexes each cluster's list of distances with positions inside that list, not pool
positions (so it returns the first examples of the pool, whatever the clusters); it drops examples whose dot
product with the centroid is not positive; it takes fewer than the budget (the floor of the share, and
repeats where a cluster is smaller than its share). Here the shares are pool positions, every example
counts, a cluster smaller than its share gives all it has and the rest of the budget is spread evenly over
the clusters with room (so that the selection is exactly the budget), and the
clustering is the bench's spherical k-means over the packaged MiniLM embeddings (the code: scikit-learn
k-means over BGE, which are unit-norm too).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from p3bench.errors import ConfigError
from p3bench.methods.base import SelectionContext
from p3bench.methods.coverage import ClusterSampler
from p3bench.methods.pool_scoring import PoolScores


def cluster_shares(budget: int, sizes: np.ndarray) -> np.ndarray:
    """How many examples each cluster gives: ``budget // k`` each (at most its size), then what is left of
    the budget spread evenly over the clusters that have examples left (one each in turn, those with the
    most left first, ties to the lower cluster id), so that the shares sum to ``min(budget, sum(sizes))``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    k = sizes.shape[0]
    shares = np.minimum(sizes, budget // k)
    left = min(budget, int(sizes.sum())) - int(shares.sum())
    while left > 0:
        room = sizes - shares
        order = np.lexsort((np.arange(k), -room))
        takers = [c for c in order[:left] if room[c] > 0]
        for c in takers:
            shares[c] += 1
        left -= len(takers)
    return shares


def deft_ucs_select(
    similarity: np.ndarray, labels: np.ndarray, n_clusters: int, budget: int, alpha: float
) -> np.ndarray:
    """Pool positions DEFT-UCS keeps: from each cluster ``c`` its share ``q_c`` (:func:`cluster_shares`),
    ``round(alpha * q_c)`` nearest its centroid (highest ``similarity``) and the rest farthest (lowest).
    Ties: the lower position first."""
    similarity = np.asarray(similarity, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    shares = cluster_shares(budget, np.bincount(labels, minlength=n_clusters))
    kept: list[np.ndarray] = []
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        if shares[c] == 0:
            continue
        order = members[np.lexsort((members, -similarity[members]))]  # nearest first
        n_near = int(round(alpha * shares[c]))
        n_far = int(shares[c]) - n_near
        kept.append(order[:n_near])
        if n_far:
            kept.append(order[-n_far:])
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, dtype=np.int64)


class DeftUCS(ClusterSampler):
    """DEFT-UCS: equal shares of the budget from k-means clusters of the pool's sentence embeddings, a share
    ``alpha`` of each nearest its centroid and the rest farthest (module docstring: the departures from the
    public code). The score of an example is its cosine similarity to its own centroid."""

    name: ClassVar[str] = "deft_ucs"

    def __init__(self, *args: Any, alpha: float = 0.5, n_clusters: int | None = 7, **kwargs: Any) -> None:
        super().__init__(*args, n_clusters=n_clusters, **kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"method.alpha={alpha!r} is invalid: expected a number in [0, 1]")
        self.alpha = float(alpha)
        self._labels: np.ndarray | None = None

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        vectors = self.vectors()
        result = self.clusters()
        self._labels = np.asarray(result.labels, dtype=np.int64)
        similarity = np.einsum("ij,ij->i", vectors, result.centroids[self._labels], dtype=np.float64)
        info = {**self.cluster_info(result), "alpha": self.alpha}
        return PoolScores(values=similarity, forward_tokens=self.embedding_tokens(), info=info)

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        assert self._labels is not None
        k = int(self._labels.max()) + 1 if self.n_clusters is None else int(self.n_clusters)
        kept = deft_ucs_select(scores.values, self._labels, k, self.budget_size, self.alpha)
        shares = np.bincount(self._labels[kept], minlength=k)
        median = float(np.median(scores.values))
        return kept, {
            "kept_per_cluster": shares.tolist(),
            # what the name promises: the pick mixes the most and the least typical examples of each cluster
            "share_nearer_than_median": float(np.mean(scores.values[kept] > median)),
        }
