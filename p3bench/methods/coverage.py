"""Coverage samplers of the 19-sampler comparison (Sachdeva et al., "How to Train Data-Efficient LLMs",
arXiv 2402.09668, §3.2-3.3, App. B.2-B.4): Density, SemDeDup and SSL Prototypes.

All three look at the pool through sentence embeddings: the packaged MiniLM by default (the paper uses
Sentence-T5-Base, 768 dims, which ``coverage_embedder.name=hf coverage_embedder.kwargs.model_name_or_path=...``
loads from a local copy), cached on disk. SemDeDup and Prototypes share one k-means clustering, cached under
``cache_dir/clusterings`` (docs/caches.md) keyed by the embeddings, the number of clusters and ``cluster_seed`` (fixed across runs
by default, as the paper clusters once), so the two samplers and every budget and seed of a sweep use the same
clusters.

A selection's forward tokens are the tokens the embedder's model processes over the pool: its own
tokenization after its truncation (256 tokens for MiniLM), special tokens included; 0 for the model-free
``tfidf``. They are counted whether or not the embedding cache served the vectors.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sklearn

from p3bench.algorithms import clusters as clustering
from p3bench.algorithms import density
from p3bench.cache_store import CacheKey, CacheStore, store_entry
from p3bench.errors import ConfigError
from p3bench.methods.base import SelectionContext
from p3bench.methods.options import choice
from p3bench.methods.pool_scoring import PoolScores, PoolScoringMethod
from p3bench.sharded import all_agree, process_group, sharded_lsh_kernel_sums, sharded_spherical_kmeans


class EmbeddingSampler(PoolScoringMethod):
    """A pool-scoring sampler over sentence embeddings of the pool."""

    name: ClassVar[str] = "embedding_sampler"

    def __init__(
        self,
        *args: Any,
        embedder: str = "minilm",
        embedder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedder = str(embedder)
        self.embedder_kwargs = dict(embedder_kwargs or {})
        self._vectors: np.ndarray | None = None
        self._embedding_tokens = 0

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors, self._embedding_tokens = self.embeddings(self.embedder, self.embedder_kwargs)
        return self._vectors

    def embedding_tokens(self) -> int:
        """The forward tokens embedding the pool takes (the selection's compute; the same on a cache hit)."""
        self.vectors()
        return self._embedding_tokens

    def embedding_info(self) -> dict[str, Any]:
        return {"embedder": self.embedder, "embedding_dim": int(self.vectors().shape[1])}


# -- Density ---------------------------------------------------------------------------------------------------

DENSITY_MODES = ("sketch", "exact")


class DensitySampler(EmbeddingSampler):
    """DENSITY (arXiv 2402.09668, Algorithm 2): a kernel-sum density of every example from a p-stable LSH
    sketch (``mode=sketch``; ``rows`` x ``buckets``, two passes) or computed exactly (``mode=exact``, for pools
    small enough for O(N^2)), then inverse-propensity sampling: ``budget`` examples without replacement, each
    draw with probability proportional to ``density^-power`` (``power=1`` is the paper's 1/score).

    Departures (see :mod:`p3bench.algorithms.density`): the paper's sketch is 1,000 x 20,000 over 364M
    examples; the default here is 128 rows of 8 concatenated hashes x 20,000 buckets, since one p-stable hash
    a row barely tells dense regions from sparse ones in 384 dimensions. The paper does not report its bandwidth; ``bandwidth=null``
    picks one from the data (:func:`p3bench.algorithms.density.default_bandwidth`). Algorithm 2 as printed
    samples with ``p = S / sum(S)``, which contradicts the paper's prose and Theorem A.2 (``p ~ 1/S``); this
    follows the prose.

    Under a process group each process adds its share of the pool to the sketch and the count tables are
    summed (:func:`p3bench.sharded.sharded_lsh_kernel_sums`): the same scores, and so the same selection,
    as one process. ``mode=exact`` runs whole on every process.
    """

    name: ClassVar[str] = "density"

    def __init__(
        self,
        *args: Any,
        mode: str = "sketch",
        rows: int = density.DEFAULT_ROWS,
        buckets: int = density.DEFAULT_BUCKETS,
        hashes_per_row: int = density.DEFAULT_HASHES_PER_ROW,
        bandwidth: float | None = None,
        power: float = 1.0,
        sketch_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mode = choice("mode", mode, DENSITY_MODES)
        for key, value in (("rows", rows), ("buckets", buckets), ("hashes_per_row", hashes_per_row)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"method.{key}={value!r} is invalid: expected an integer >= 1")
        if bandwidth is not None and not (isinstance(bandwidth, (int, float)) and bandwidth > 0):
            raise ConfigError(
                f"method.bandwidth={bandwidth!r} is invalid: expected a positive number or null"
            )
        if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
            raise ConfigError(f"method.power={power!r} is invalid: expected a number >= 0")
        self.rows, self.buckets, self.hashes_per_row = rows, buckets, hashes_per_row
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        self.power = float(power)
        self.sketch_seed = self.seed if sketch_seed is None else int(sketch_seed)

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        vectors = self.vectors()
        bandwidth = self.bandwidth
        if bandwidth is None:
            bandwidth = float(density.default_bandwidth(vectors, seed=self.sketch_seed))
        if self.mode == "sketch":
            values = sharded_lsh_kernel_sums(
                vectors,
                rows=self.rows,
                buckets=self.buckets,
                bandwidth=bandwidth,
                hashes_per_row=self.hashes_per_row,
                seed=self.sketch_seed,
                progress=self.progress,
            )
        else:
            values = density.exact_kernel_sums(
                vectors,
                kernel="pstable",
                bandwidth=bandwidth,
                hashes_per_row=self.hashes_per_row,
                progress=self.progress,
            )
        info = {
            **self.embedding_info(),
            "density_mode": self.mode,
            "bandwidth": bandwidth,
            "sketch": {"rows": self.rows, "buckets": self.buckets, "hashes_per_row": self.hashes_per_row}
            if self.mode == "sketch"
            else None,
            "power": self.power,
        }
        return PoolScores(
            values=np.asarray(values, dtype=np.float64), forward_tokens=self.embedding_tokens(), info=info
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        # the sketch's estimate is at least the example's own bucket count; guard exact zeros all the same
        positive = np.maximum(scores.values, np.finfo(np.float64).tiny)
        chosen = density.inverse_propensity_sample(positive, self.budget_size, ctx.rng, power=self.power)
        return np.sort(np.asarray(chosen, dtype=np.int64)), {}


# -- SemDeDup and Prototypes -------------------------------------------------------------------------------------

# bump when the clustering procedure changes, so cached clusterings are not reused across versions
CLUSTERING_VERSION = 1


class ClusterSampler(EmbeddingSampler):
    """A sampler over one k-means clustering of the pool's embeddings, shared through the cache.

    ``kmeans``: ``sklearn`` (default) or ``lloyd`` (:mod:`p3bench.algorithms.kmeans`). Under a process group
    ``lloyd`` shards the iterations over the processes and gives bitwise the clustering of one process;
    ``sklearn`` fits on process 0 and broadcasts its clustering (:func:`p3bench.sharded.sharded_spherical_kmeans`).
    """

    name: ClassVar[str] = "cluster_sampler"

    def __init__(
        self,
        *args: Any,
        n_clusters: int | None = None,
        cluster_seed: int = 0,
        kmeans: str = "sklearn",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kmeans = choice("kmeans", kmeans, clustering.KMEANS_ALGORITHMS)
        if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int)):
            raise ConfigError(
                f"method.n_clusters={n_clusters!r} is invalid: expected an integer >= 1 or null"
            )
        self.n_clusters = n_clusters
        self.cluster_seed = int(cluster_seed)

    def clusters(self) -> clustering.KMeansResult:
        vectors = self.vectors()
        k = self.n_clusters if self.n_clusters is not None else clustering.default_n_clusters(len(vectors))
        if not 1 <= k <= len(vectors):
            raise ConfigError(
                f"method.n_clusters={k} is invalid for a pool of {len(vectors)}: expected 1 <= n_clusters <= pool"
            )
        if self.cache_dir is None:
            return self._kmeans(vectors, k)
        digest = hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()
        prefix = "kmeans" if self.kmeans == "sklearn" else self.kmeans
        entry = CacheStore(self.cache_dir).entry(
            CacheKey(
                "clusterings",
                f"{prefix}-k{k}-s{self.cluster_seed}",
                # k-means results may change across scikit-learn versions
                model={
                    "algorithm": self.kmeans,
                    "sklearn": sklearn.__version__,
                    "version": CLUSTERING_VERSION,
                },
                data={"embeddings_sha256": digest, "shape": list(vectors.shape)},
                config={"k": k, "seed": self.cluster_seed},
            )
        )
        found = None
        if entry.manifest() is not None:
            try:
                labels = np.load(entry.path / "labels.npy", allow_pickle=False)
                centroids = np.load(entry.path / "centroids.npy", allow_pickle=False)
                if labels.shape == (len(vectors),) and centroids.shape == (k, vectors.shape[1]):
                    found = clustering.KMeansResult.from_arrays(labels, centroids)
            except (OSError, ValueError, EOFError):
                pass
        if all_agree(found is not None):  # every process, or none, takes the cached clustering
            return found  # type: ignore[return-value]
        result = self._kmeans(vectors, k)  # a collective under a process group: outside the entry's lock
        if process_group()[0] == 0:

            def write(directory: Path) -> dict[str, Any]:
                np.save(directory / "labels.npy", result.labels, allow_pickle=False)
                np.save(directory / "centroids.npy", result.centroids, allow_pickle=False)
                return {"arrays": ["labels", "centroids"]}

            store_entry(entry, write)
        return result

    def _kmeans(self, vectors: np.ndarray, k: int) -> clustering.KMeansResult:
        return sharded_spherical_kmeans(
            vectors, k, seed=self.cluster_seed, algorithm=self.kmeans, progress=self.progress
        )

    def cluster_info(self, result: clustering.KMeansResult) -> dict[str, Any]:
        sizes = np.bincount(result.labels, minlength=len(result.centroids))
        return {
            **self.embedding_info(),
            "n_clusters": int(len(result.centroids)),
            "cluster_seed": self.cluster_seed,
            **({"kmeans": self.kmeans} if self.kmeans != "sklearn" else {}),
            "cluster_size": {
                "min": int(sizes.min()),
                "median": float(np.median(sizes)),
                "max": int(sizes.max()),
            },
        }


class SemDeDup(ClusterSampler):
    """SemDeDup (Abbas et al. 2023, arXiv 2303.09540) as a sampler of arXiv 2402.09668 (App. B.3): within each
    k-means cluster, an example is a semantic duplicate of an earlier one when their cosine similarity exceeds
    ``1 - epsilon``; each group of duplicates keeps one member (``keep=farthest`` from the centroid, SemDeDup's
    choice; ``nearest`` follows the Sachdeva et al. §2.1 wording). The threshold is the one that keeps exactly
    the budget (the paper does not report its epsilon); it is recorded as ``epsilon``.
    """

    name: ClassVar[str] = "semdedup"

    def __init__(self, *args: Any, keep: str = "farthest", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep = choice("keep", keep, clustering.KEEPS)
        self._result: Any = None

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        clusters = self.clusters()
        self._result = clustering.semdedup(
            self.vectors(), clusters, self.budget_size, keep=self.keep, progress=self.progress
        )
        info = {**self.cluster_info(clusters), "keep": self.keep}
        return PoolScores(
            values=np.asarray(self._result.scores, dtype=np.float64),
            forward_tokens=self.embedding_tokens(),
            info=info,
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        result = self._result
        return np.sort(np.asarray(result.kept, dtype=np.int64)), {
            "threshold_cosine": float(result.threshold),
            "epsilon": float(result.epsilon),
            "n_tied_removed": int(result.n_tied_removed),
        }


class Prototypes(ClusterSampler):
    """SSL Prototypes (Sorscher et al. 2022, arXiv 2206.14486) as a sampler of arXiv 2402.09668 (App. B.4): drop
    the examples nearest their k-means centroid, keeping the budget farthest from theirs, either over the whole
    pool (``cut=global``) or the same fraction of every cluster (``cut=per_cluster``); the paper does not say
    which.
    """

    name: ClassVar[str] = "prototypes"

    def __init__(self, *args: Any, cut: str = "global", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut = choice("cut", cut, clustering.CUTS)
        self._result: Any = None

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        clusters = self.clusters()
        self._result = clustering.prototypes(self.vectors(), clusters, self.budget_size, cut=self.cut)
        info = {**self.cluster_info(clusters), "cut": self.cut}
        return PoolScores(
            values=np.asarray(self._result.scores, dtype=np.float64),
            forward_tokens=self.embedding_tokens(),
            info=info,
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        return np.sort(np.asarray(self._result.kept, dtype=np.int64)), {}
