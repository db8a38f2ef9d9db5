"""Selection passes sharded across processes: every process computes its share of the pool, the shares
are gathered, and every process ends with the arrays one process computes, in pool order (the order of
the pool's example ids).

Under an initialised ``torch.distributed`` process group (what a Lightning strategy sets up: DDP on any
number of devices and nodes) these split the work; with no group, or a group of one, each is exactly the
one-process function it wraps:

- :func:`sharded_embeddings_counted` (:func:`p3bench.embeddings.cached_embeddings_counted`): an encoder
  that embeds each text on its own (a :class:`~p3bench.embeddings.TransformerEmbedder`) embeds whole
  batches of the one-process pass on each process (the same texts in the same padded batches, so the same
  vectors bit for bit); an embedder fitted on the texts it embeds (``tfidf``) runs on process 0 and its
  vectors are broadcast.
- :func:`sharded_scores_counted` (:func:`p3bench.scoring.cache.cached_scores_counted`): a model-based
  text scorer (:class:`~p3bench.scoring.text_models.ModelTextScorer`) scores whole batches of its
  :meth:`~p3bench.scoring.text_models.ModelTextScorer.batch_plan` on each process; any other scorer runs
  on process 0 and its scores are broadcast.
- :func:`sharded_lsh_kernel_sums` (:func:`p3bench.algorithms.density.lsh_kernel_sums`): each process adds
  its rows to a :class:`~p3bench.algorithms.density_sketch.RaceSketch`, the integer count tables are
  all-reduced, and each process reads its rows' scores: the same scores as one pass.
- :func:`sharded_spherical_kmeans` (:func:`p3bench.algorithms.kmeans.spherical_kmeans`): ``lloyd``
  assigns each process's rows and all-reduces fixed-point cluster sums (the same clustering on any number
  of processes); ``sklearn`` fits on process 0 and broadcasts the clustering.

Caches: the embedding and score caches are keyed by the whole pool, as in one process. Every process
first looks the entry up without computing; only when every process found it is it used, otherwise the
pass runs sharded (outside the cache's lock, which a collective inside would deadlock) and process 0
stores the gathered result under the same key, so a later run on any number of processes reuses it.
Forward tokens are summed over processes: the count one process reports.

Rows are dealt round-robin (process ``r`` of ``w`` gets rows, or batches, ``r, r + w, ...``) and gathered
with :func:`p3bench.scoring.base.gather_rows` (``all_gather_object``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from p3bench.algorithms.density import (
    CACHE_LIMIT_BYTES,
    DEFAULT_BUCKETS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_HASHES_PER_ROW,
    DEFAULT_ROWS,
    RaceSketch,
    default_bandwidth,
    lsh_kernel_sums,
)
from p3bench.algorithms.kmeans import KMeansResult, lloyd_kmeans, spherical_kmeans
from p3bench.embeddings import Embedder, TransformerEmbedder, cached_embeddings_counted
from p3bench.scoring.base import gather_rows
from p3bench.scoring.cache import CachedScores, cached_scores_counted

__all__ = [
    "all_agree",
    "all_reduce_array",
    "broadcast_from_zero",
    "deal_batches",
    "gather_positions",
    "process_group",
    "sharded_embeddings_counted",
    "sharded_lsh_kernel_sums",
    "sharded_scores_counted",
    "sharded_spherical_kmeans",
]

T = TypeVar("T")


# -- process-group primitives ----------------------------------------------------------------------------


def process_group() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_array(array: NDArray) -> NDArray:
    """The element-wise sum of ``array`` over the processes (a new array of the same dtype; ``array``
    itself without a process group). Integer arrays sum exactly, whatever the order of the processes."""
    if process_group()[1] == 1:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array).copy()).to(_device())
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def all_agree(flag: bool) -> bool:
    """Whether ``flag`` is true on every process (a collective: every process must call it)."""
    if process_group()[1] == 1:
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.long, device=_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return bool(tensor.item())


def broadcast_from_zero(compute: Callable[[], T]) -> T:
    """``compute()`` on process 0, its value on every process. An exception raised by ``compute`` is sent
    too and raised on every process, so that none waits for a value that will not come."""
    rank, world = process_group()
    if world == 1:
        return compute()
    payload: list[Any] = [None]
    if rank == 0:
        try:
            payload[0] = ("value", compute())
        except Exception as error:  # re-raised below, on every process
            payload[0] = ("error", error)
    torch.distributed.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def gather_positions(positions: Sequence[int], values: NDArray, n: int) -> NDArray:
    """The full ``(n, ...)`` array from each process's ``values`` at its ``positions`` (every process
    returns it)."""
    world = process_group()[1]
    if world == 1:
        full = np.empty((n, *values.shape[1:]), dtype=values.dtype)
        full[np.asarray(positions, dtype=np.int64)] = values
        return full
    return gather_rows(list(positions), {"values": values}, n, world)["values"]


def deal_batches(batches: Sequence[Sequence[int]], rank: int, world: int) -> list[int]:
    """The positions of batches ``rank, rank + world, ...``, concatenated in batch order."""
    return [int(p) for batch in batches[rank::world] for p in batch]


# -- embeddings ----------------------------------------------------------------------------------------


class _NotCached(Exception):
    """Raised by a probe asked to compute: the cache does not hold the entry."""


class _ProbeEmbedder(Embedder):
    """The embedder's name, fingerprint and token count, and no model: a cache look-up that never
    computes."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def count_forward_tokens(self, texts: Sequence[str]) -> int:
        return self.inner.count_forward_tokens(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise _NotCached

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        raise _NotCached


class _StoredEmbedder(_ProbeEmbedder):
    """Vectors computed elsewhere (the gathered shards), handed to the cache under the embedder's key."""

    def __init__(self, inner: Embedder, vectors: np.ndarray, tokens: int) -> None:
        super().__init__(inner)
        self.vectors, self.tokens = vectors, int(tokens)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.vectors

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        return self.vectors, self.tokens


def _embedding_batches(embedder: TransformerEmbedder, texts: list[str]) -> list[list[int]]:
    """The batches :meth:`TransformerEmbedder.embed_counted` runs: positions sorted by token count, longest
    first (ties in input order), cut into ``batch_size`` runs. Embedding the texts of some of them,
    concatenated in this order, runs exactly those batches."""
    encoded = embedder._encode(texts, return_attention_mask=False, return_token_type_ids=False)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    size = embedder.batch_size
    return [order[start : start + size] for start in range(0, len(order), size)]


def sharded_embeddings_counted(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path | str | None
) -> tuple[np.ndarray, int]:
    """:func:`p3bench.embeddings.cached_embeddings_counted` split across the processes (module docstring):
    the same vectors and forward tokens on every process as one process gets. A collective: every process
    calls it with the same texts."""
    texts = list(texts)
    rank, world = process_group()
    if world == 1:
        return cached_embeddings_counted(embedder, texts, cache_dir)
    if not isinstance(embedder, TransformerEmbedder):  # fitted on the texts: one process embeds them all
        return broadcast_from_zero(lambda: cached_embeddings_counted(embedder, texts, cache_dir))
    if cache_dir is not None:
        try:
            found: tuple[np.ndarray, int] | None = cached_embeddings_counted(
                _ProbeEmbedder(embedder), texts, cache_dir
            )
        except _NotCached:
            found = None
        if all_agree(found is not None):
            return found  # type: ignore[return-value]
    mine = deal_batches(_embedding_batches(embedder, texts), rank, world)
    vectors, tokens = embedder.embed_counted([texts[i] for i in mine])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:  # (a process with no batch gets (0, d) from the embedder: nothing to reshape)
        vectors = vectors.reshape(len(mine), -1)
    full = gather_positions(mine, vectors, len(texts))
    total = int(all_reduce_array(np.array([tokens], dtype=np.int64))[0])
    if cache_dir is not None and rank == 0:
        cached_embeddings_counted(_StoredEmbedder(embedder, full, total), texts, cache_dir)
    return full, total


# -- text scores ---------------------------------------------------------------------------------------


class _ProbeScorer:
    """The scorer's name, fingerprint, metadata and token count (everything but scoring): a cache look-up
    that never computes."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise _NotCached

    def score_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        raise _NotCached


class _StoredScorer(_ProbeScorer):
    """Scores computed elsewhere (the gathered shards), handed to the cache under the scorer's key."""

    def __init__(self, inner: Any, scores: np.ndarray, tokens: int) -> None:
        super().__init__(inner)
        self._scores, self._tokens = scores, int(tokens)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._scores

    def score_texts_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        return self._scores, self._tokens


def sharded_scores_counted(
    scorer: Any, texts: Sequence[str], cache_dir: str | Path | None, *, name: str | None = None
) -> CachedScores:
    """:func:`p3bench.scoring.cache.cached_scores_counted` split across the processes (module docstring):
    the same scores and forward tokens on every process as one process gets. A scorer with a
    ``batch_plan(texts)`` is sharded by whole batches of it; any other runs on process 0. A collective."""
    texts = [str(text) for text in texts]
    rank, world = process_group()
    if world == 1:
        return cached_scores_counted(scorer, texts, cache_dir, name=name)
    plan = getattr(scorer, "batch_plan", None)
    if not callable(plan):
        return broadcast_from_zero(lambda: cached_scores_counted(scorer, texts, cache_dir, name=name))
    if cache_dir is not None:
        try:
            found: CachedScores | None = cached_scores_counted(
                _ProbeScorer(scorer), texts, cache_dir, name=name
            )
        except _NotCached:
            found = None
        if all_agree(found is not None):
            return found  # type: ignore[return-value]
    batches = plan(texts)
    mine = deal_batches(batches, rank, world)
    if rank == 0:  # the texts no batch runs (the scorer gives them its own value, NaN for perplexity)
        planned = np.zeros(len(texts), dtype=bool)
        planned[[p for batch in batches for p in batch]] = True
        mine = [int(p) for p in np.flatnonzero(~planned)] + mine
    scores, tokens = scorer.score_texts_counted([texts[i] for i in mine])
    full = gather_positions(mine, np.asarray(scores, dtype=np.float64), len(texts))
    total = int(all_reduce_array(np.array([tokens], dtype=np.int64))[0])
    if cache_dir is not None and rank == 0:
        cached_scores_counted(_StoredScorer(scorer, full, total), texts, cache_dir, name=name)
    return CachedScores(scores=full, forward_tokens=total, from_cache=False)


# -- density sketch ------------------------------------------------------------------------------------


def sharded_lsh_kernel_sums(
    X: ArrayLike,
    *,
    rows: int = DEFAULT_ROWS,
    buckets: int = DEFAULT_BUCKETS,
    bandwidth: float | None = None,
    hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    debias: bool = False,
    progress: bool = False,
) -> NDArray[np.float64]:
    """:func:`p3bench.algorithms.density.lsh_kernel_sums` of all rows of ``X`` (every process passes the
    whole array), each process hashing its share: pass 1 adds its rows to a sketch with the same hash
    functions on every process, the count tables are summed (an all-reduce of integers: exact), pass 2
    reads its rows' scores, and the scores are gathered. The same scores as one process."""
    rank, world = process_group()
    options = dict(rows=rows, buckets=buckets, hashes_per_row=hashes_per_row, seed=seed)
    if world == 1:
        return lsh_kernel_sums(
            X, bandwidth=bandwidth, chunk_size=chunk_size, debias=debias, progress=progress, **options
        )
    A = np.ascontiguousarray(X, dtype=np.float32)
    n = A.shape[0]
    w = default_bandwidth(A) if bandwidth is None else bandwidth
    sketch = RaceSketch.create(A.shape[1], bandwidth=w, **options)
    positions = list(range(rank, n, world))
    local = A[positions]
    keep_ids = len(positions) * sketch.rows * np.dtype(sketch.id_dtype).itemsize <= CACHE_LIMIT_BYTES
    ids = sketch.update(local, chunk_size=chunk_size, keep_ids=keep_ids)
    sketch.counts = all_reduce_array(sketch.counts)
    sketch.n = int(all_reduce_array(np.array([sketch.n], dtype=np.int64))[0])
    if ids is None:
        scores = sketch.query(local, chunk_size=chunk_size, debias=debias)
    else:
        scores = sketch.query(ids=ids, chunk_size=chunk_size, debias=debias)
    return gather_positions(positions, scores, n)


# -- k-means -------------------------------------------------------------------------------------------


def sharded_spherical_kmeans(
    X: ArrayLike,
    n_clusters: int | None = None,
    seed: int = 0,
    *,
    algorithm: str = "sklearn",
    progress: bool = False,
    **options: Any,
) -> KMeansResult:
    """:func:`p3bench.algorithms.kmeans.spherical_kmeans` of all rows of ``X`` (every process passes the
    whole array) under a process group. ``algorithm="lloyd"``: each process assigns its share of the rows
    and the fixed-point cluster sums are all-reduced (:func:`~p3bench.algorithms.kmeans.lloyd_kmeans`),
    bitwise the clustering of one process. ``"sklearn"``: process 0 fits and the clustering is broadcast
    (scikit-learn's Lloyd iterations do not shard). ``options`` go to ``spherical_kmeans``
    (``max_iter`` alone for ``lloyd``)."""
    rank, world = process_group()
    if world == 1:
        return spherical_kmeans(X, n_clusters, seed, algorithm=algorithm, progress=progress, **options)
    if algorithm != "lloyd":
        return broadcast_from_zero(
            lambda: spherical_kmeans(X, n_clusters, seed, algorithm=algorithm, progress=progress, **options)
        )
    n = int(np.asarray(X).shape[0])
    rows = np.arange(rank, n, world, dtype=np.int64)
    local = lloyd_kmeans(
        X, n_clusters, seed, rows=rows, reduce=all_reduce_array, progress=progress and rank == 0, **options
    )
    labels = gather_positions(rows.tolist(), local.labels, n)
    return dataclasses.replace(local, labels=labels)
