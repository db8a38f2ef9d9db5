"""DELIFT's in-context utility kernel (Agarwal et al., arXiv 2411.04425, ICLR 2025): how much each candidate
example helps the model answer each target when it is shown as the one in-context demonstration::

    kernel = icl_utility_kernel(module.model, tokenizer, targets, candidates, cache_dir=cache / "icl_utility")
    kernel.scaled  # (n_targets, n_candidates) float32 in [0, 1]: rows = targets, columns = candidates

What is computed (the public code's teacher-forced ``ModelDependentICLUtility``, not its later vLLM version,
which generates 16 sampled tokens):

    UF[i, j] = d(p(y_i | x_i)) - d(p(y_i | x_j, y_j, x_i)),    d = ||1 - p||_2 / sqrt(N)

over the probabilities ``p`` of the ``N`` true response tokens of target ``i`` and its final EOS, under the
code's two prompts (:mod:`p3bench.scoring.icl_utility_tokens`). ``UF > 0``: the demonstration makes the model
more confident of the target's response. ``kind="exponential"`` gives ``exp(d_no_demo - d_demo)`` (the
code's other option; the paper prints the difference). The whole matrix is min-max scaled into [0, 1] (``scaled``) as the code does, with no clamp at
zero (zero utility lands at ``-min / (max - min)``); ``raw`` keeps the unscaled kernel. The kernel is not
symmetric. A target that is also a candidate (a pool x pool kernel, ``candidates=None``) is computed with
itself as the demonstration like any other pair, as the code does: that entry measures how well the model
copies from its context.

How (:mod:`p3bench.scoring.icl_utility_prefix`): the part of the demonstration prompt that depends only on
the candidate is a shared prefix whose keys and values are computed once per candidate and reused for every
target, batched, under ``torch.inference_mode`` in eval mode, with a progress bar and a count of the tokens
the model processed (each prefix once per pass that computes it). The result equals the pair-by-pair
computation (:func:`pairwise_utility_reference`) to float tolerance.

Sparse (``neighbours=k``): each target's utility is computed only for its ``k`` nearest candidates by the
cosine of sentence embeddings (``embedder``, the packaged MiniLM by default, or ``embeddings`` given), so the
cost grows as ``N k`` instead of ``N^2``. ``raw`` and ``scaled`` are then ``scipy.sparse.csr_matrix`` whose
stored entries are exactly the computed pairs (explicit zeros kept; columns sorted within each row), scaled
over the stored entries only; a missing pair reads 0 after scaling, i.e. as the least useful.

Where this departs from the public code, and why:

- The demonstration prompt is tokenised as two segments (prefix, query), which prefix reuse needs; with
  byte-level BPE tokenizers this gives the code's tokens (``diagnostics["query_boundary_mismatches"]``
  counts the targets where it does not).
- Truncation: every sequence is cut on the right at ``max_length`` tokens (2048 by default, the code's,
  capped at the model's ``max_position_embeddings``). The code pads each batch to the longest
  ``prompt + response`` without its two EOS tokens, so the longest sequences of each batch lose their
  last two tokens, which makes a pair's value depend on its batch; here it does not.
- A pair whose truncated sequence keeps no scored token is given no effect (``UF = 0``, ``exp(0) = 1``;
  counted in ``diagnostics["pairs_without_scored_tokens"]``); the code gives such a pair distance 0, the
  highest possible utility.
  Short windows make such pairs common: with the bench's 384-token local BPE, the demonstration prefix of
  an Alpaca example is 275 tokens (median; 531 at the 90th percentile), and 94% of the pool's pairs keep
  nothing to score at 256 tokens (the ``tiny`` and ``micro`` models' positions), 26% at 512, 1.3% at 1024
  (``OMP_NUM_THREADS=1 python benchmarks/icl_utility_kernel.py``, 208 examples); raise the model's
  ``max_position_embeddings`` and ``max_length``, or use shorter texts.
- A constant kernel scales to zeros (the code divides by zero).
- Probabilities are a float32 softmax whatever the model's dtype.

Cache: with ``cache_dir``, the distances (not the kind, which is applied on load) are stored as
an entry of kind ``kernels`` (``<cache>/kernels/icl-utility-<key>/distances.npz`` and its manifest, docs/caches.md),
written atomically under the entry's lock, keyed by the model
(a digest of its weights and config, or ``model_fingerprint``), the tokenizer, the examples' texts, the
prompts, ``max_length`` and the neighbour settings. A hit runs no forward pass and reports the forward tokens
the kernel took when it was computed, as :mod:`p3bench.scoring.cache` does.

Several processes: under ``torch.distributed`` the candidates' blocks and the targets' no-demonstration
passes are sharded across processes (:func:`p3bench.scoring.base.shard`) and every process returns the whole
kernel. Rank zero reads and writes the cache and finds the neighbours, and broadcasts them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.embeddings import Embedder
from p3bench.errors import ConfigError
from p3bench.scoring.icl_utility_neighbours import (
    nearest_candidates,
    neighbour_columns,
    neighbour_source,
    resolve_embedder,
)
from p3bench.scoring.icl_utility_prefix import check_prefix_reuse, compute_distances, pair_sequence
from p3bench.scoring.icl_utility_store import (
    StoredDistances,
    kernel_cache_key,
    load_distances,
    save_distances,
)
from p3bench.scoring.icl_utility_tokens import ScoredSequence, tokenize_segments

KERNEL_KINDS = ("euclidean", "exponential")
DEFAULT_MAX_LENGTH = 2048  # the public code's truncation
DEFAULT_MAX_KERNEL_BYTES = 2 * 1024**3
#: a dense kernel holds a float32 distance, raw and scaled utility per pair, and one temporary of that size
DENSE_BYTES_PER_PAIR = 16
#: a sparse kernel also holds each pair's column (int64), the CSR copies and the sort orders
SPARSE_BYTES_PER_PAIR = 48

Kernel = np.ndarray | sparse.csr_matrix


@dataclass
class UtilityKernel:
    """The in-context utility of candidates (columns) for targets (rows).

    - ``raw``: ``UF`` unscaled, float32, an ``np.ndarray`` (dense) or ``csr_matrix`` (``neighbours``);
    - ``scaled``: ``raw`` min-max scaled into [0, 1] over its (stored) entries, same type;
    - ``no_demo_distance``: ``d(p(y_i | x_i))`` per target, float32 (NaN where nothing is left to score);
    - ``forward_tokens``: the non-padding tokens the model processed to compute it (summed over processes;
      on a cache hit, those of the computation that filled the cache);
    - ``seconds``: the wall time of this call; ``pairs``: the (target, candidate) pairs the kernel holds;
    - ``from_cache``: whether the distances came from the cache; ``diagnostics``: the settings, ``raw_min``
      and ``raw_max`` (the scaling's bounds), the tokens by part (``prefix_tokens``, ``suffix_tokens``,
      ``no_demo_tokens``; ``whole_pair_tokens``, what the pairs would take without prefix reuse),
      ``pairs_without_scored_tokens``, ``targets_without_scored_tokens``, ``query_boundary_mismatches``,
      ``embedding_forward_tokens`` (the neighbours' embedder), ``compute_seconds``, ``world_size``.
    """

    raw: Kernel
    scaled: Kernel
    no_demo_distance: np.ndarray
    kind: str
    forward_tokens: int
    seconds: float
    pairs: int
    from_cache: bool = False
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.raw.shape)  # type: ignore[return-value]


# -- checks -----------------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(
            f"icl_utility_kernel: {name}={value!r} is invalid: expected an integer >= {minimum}"
        )
    return int(value)


def _check_examples(name: str, examples: Sequence[Example]) -> list[Example]:
    examples = list(examples)
    if not examples:
        raise ConfigError(f"icl_utility_kernel: {name} is empty: expected at least one example")
    return examples


def check_kernel_size(
    n_targets: int, n_candidates: int, neighbours: int | None, max_kernel_bytes: int
) -> None:
    """Refuse, in one line, a kernel whose arrays would take more than ``max_kernel_bytes``."""
    if neighbours is None:
        size = n_targets * n_candidates * DENSE_BYTES_PER_PAIR
        what = f"a dense utility kernel of {n_targets:,} targets x {n_candidates:,} candidates"
        remedy = "set neighbours=k to compute only each target's k nearest candidates (a sparse kernel)"
    else:
        size = n_targets * neighbours * SPARSE_BYTES_PER_PAIR
        what = f"a sparse utility kernel of {n_targets:,} targets x {neighbours:,} neighbours"
        remedy = "set a smaller neighbours"
    if size > max_kernel_bytes:
        raise ConfigError(
            f"icl_utility_kernel: {what} needs {size / 1e9:.2f} GB, over max_kernel_bytes={max_kernel_bytes:,} "
            f"({max_kernel_bytes / 1e9:.2f} GB): {remedy}, or raise max_kernel_bytes"
        )


def effective_max_length(model: torch.nn.Module, max_length: int) -> int:
    """``max_length`` capped at the model's ``max_position_embeddings`` (when its config has one)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    return min(max_length, int(limit)) if isinstance(limit, int) and limit > 0 else max_length


# -- kernel from distances --------------------------------------------------------------------------------


def utility_from_distances(no_demo: np.ndarray, demo: np.ndarray, kind: str) -> np.ndarray:
    """``UF`` (float32) from the distances without and with the demonstration, (n,) and (n, m): the
    difference, or its exponential; a pair or target with nothing scored (NaN) gets no effect."""
    utility = no_demo.astype(np.float32)[:, None] - demo.astype(np.float32)
    utility[np.isnan(utility)] = 0.0
    if kind == "exponential":
        np.exp(utility, out=utility)
    return utility


def min_max_scale(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(v - min) / (max - min)`` over all values, float32 (zeros for a constant array); min and max."""
    low, high = values.min(), values.max()
    if not high > low:
        return np.zeros_like(values, dtype=np.float32), float(low), float(high)
    scaled = values - low
    scaled /= high - low
    return scaled.astype(np.float32, copy=False), float(low), float(high)


def _csr(values: np.ndarray, columns: np.ndarray, n_candidates: int) -> sparse.csr_matrix:
    order = np.argsort(columns, axis=1, kind="stable")
    data = np.take_along_axis(values, order, axis=1).ravel()
    indices = np.take_along_axis(columns, order, axis=1).ravel()
    indptr = np.arange(0, data.size + 1, columns.shape[1], dtype=np.int64)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(values), n_candidates))


def assemble_kernel(
    stored: StoredDistances, kind: str, n_candidates: int
) -> tuple[Kernel, Kernel, dict[str, float]]:
    """``raw`` and ``scaled`` from stored distances (dense, or sparse where ``stored.columns`` is set)."""
    raw = utility_from_distances(stored.no_demo, stored.demo, kind)
    scaled, low, high = min_max_scale(raw)
    bounds = {"raw_min": low, "raw_max": high}
    if stored.columns is None:
        return raw, scaled, bounds
    return _csr(raw, stored.columns, n_candidates), _csr(scaled, stored.columns, n_candidates), bounds


# -- the kernel -------------------------------------------------------------------------------------------


def icl_utility_kernel(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    targets: Sequence[Example],
    candidates: Sequence[Example] | None = None,
    *,
    kind: str = "euclidean",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    block_size: int = 8,
    max_batch_tokens: int | None = None,
    neighbours: int | None = None,
    embedder: Embedder | str | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    cache_dir: str | Path | None = None,
    model_fingerprint: str | None = None,
    max_kernel_bytes: int = DEFAULT_MAX_KERNEL_BYTES,
    reuse_prefix: bool = True,
    progress: bool = True,
) -> UtilityKernel:
    """DELIFT's utility of each candidate as the demonstration for each target (module docstring).

    Args:
        model: a causal LM (``PreTrainedModel``, e.g. a run's ``module.model``); its training mode is restored.
        tokenizer: its tokenizer (needs an EOS token; pads with the pad token, else EOS).
        targets: the rows ``(x_i, y_i)``: ``Example.prompt`` (trailing whitespace removed) and ``target``.
        candidates: the columns, the demonstrations; ``None`` = the targets (a pool x pool kernel).
        kind: ``"euclidean"`` (the code's default, ``d_no_demo - d_demo``) or ``"exponential"``.
        max_length: truncation of every sequence, in tokens (capped at ``max_position_embeddings``).
        batch_size: sequences per forward pass; ``max_batch_tokens`` also caps their padded tokens.
        block_size: candidates whose prefixes are computed in one pass and share the following batches.
        neighbours: compute only each target's ``k`` nearest candidates (a sparse kernel); ``None`` = all.
        embedder: the embedder that finds the neighbours (an :class:`Embedder` or a registered name;
            ``"minilm"`` by default); ``embeddings``: ``(target_vectors, candidate_vectors)`` instead.
        cache_dir: where the distances (and the neighbours' embeddings) are cached; ``None`` = no cache.
        model_fingerprint: names the model's weights in the cache key (default: a digest of the weights).
        max_kernel_bytes: refuse a kernel whose arrays would take more (one line naming ``neighbours``).
        reuse_prefix: compute each candidate's prefix once (default); ``False`` runs whole sequences.
        progress: progress bars (:func:`p3bench.utils.progress.progress_bar`).

    Raises:
        ConfigError: empty targets or candidates, an unknown kind, a bad size, a kernel over the limit.
    """
    start = time.perf_counter()
    if kind not in KERNEL_KINDS:
        raise ConfigError(
            f"icl_utility_kernel: kind={kind!r} is unknown: expected one of {', '.join(KERNEL_KINDS)}"
        )
    targets = _check_examples("targets", targets)
    candidates = targets if candidates is None else _check_examples("candidates", candidates)
    max_length = effective_max_length(model, _positive_int("max_length", max_length, 2))
    batch_size = _positive_int("batch_size", batch_size)
    block_size = _positive_int("block_size", block_size)
    if max_batch_tokens is not None:
        max_batch_tokens = _positive_int("max_batch_tokens", max_batch_tokens)
    k = None if neighbours is None else min(_positive_int("neighbours", neighbours), len(candidates))
    check_kernel_size(len(targets), len(candidates), k, int(max_kernel_bytes))
    if reuse_prefix:
        check_prefix_reuse(model, max_length)

    if k is not None and embeddings is None:
        embedder = resolve_embedder(embedder, progress)  # built once: its fingerprint keys the cache
    key = None
    if cache_dir is not None:
        source = None if k is None else neighbour_source(embedder, embeddings, progress)
        key = kernel_cache_key(
            model, tokenizer, targets, candidates, max_length, k, source, model_fingerprint
        )
    stored = load_distances(cache_dir, key, len(targets), len(candidates), k)
    from_cache = stored is not None
    if stored is None:
        columns, embedding_tokens = None, 0
        if k is not None:
            columns, embedding_tokens = neighbour_columns(
                targets, candidates, k, embedder, embeddings, cache_dir, progress
            )
        stored = compute_distances(
            model, tokenizer, targets, candidates, columns,
            max_length=max_length, batch_size=batch_size, block_size=block_size,
            max_batch_tokens=max_batch_tokens, reuse_prefix=reuse_prefix, progress=progress,
        )  # fmt: skip
        stored.info["embedding_forward_tokens"] = embedding_tokens
        stored.info["compute_seconds"] = round(time.perf_counter() - start, 3)
        save_distances(cache_dir, key, stored)
    raw, scaled, bounds = assemble_kernel(stored, kind, len(candidates))
    diagnostics = {
        "n_targets": len(targets),
        "n_candidates": len(candidates),
        "kind": kind,
        "max_length": max_length,
        "neighbours": k,
        "reuse_prefix": reuse_prefix,
        "cache_key": key,
        **bounds,
        **stored.info,
    }
    return UtilityKernel(
        raw=raw,
        scaled=scaled,
        no_demo_distance=stored.no_demo.astype(np.float32),
        kind=kind,
        forward_tokens=int(stored.info.get("forward_tokens", 0)),
        seconds=time.perf_counter() - start,
        pairs=len(targets) * (len(candidates) if k is None else k),
        from_cache=from_cache,
        diagnostics=diagnostics,
    )


# -- the pair-by-pair reference ---------------------------------------------------------------------------


def _plain_distance(model: torch.nn.Module, sequence: ScoredSequence, max_length: int) -> tuple[float, int]:
    """``||1 - p||_2 / sqrt(N)`` of one sequence in one forward pass, written out plainly; its tokens."""
    ids = sequence.ids[:max_length]
    n = len(ids) - sequence.first_scored
    if n <= 0:
        return math.nan, 0
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    probabilities = torch.softmax(logits[sequence.first_scored - 1 : len(ids) - 1], dim=-1)
    truth = torch.tensor(ids[sequence.first_scored :], device=device)
    p = probabilities[torch.arange(n, device=device), truth]
    return float(torch.linalg.vector_norm(p.double() - 1.0) / math.sqrt(n)), len(ids)


def pairwise_utility_reference(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    targets: Sequence[Example],
    candidates: Sequence[Example] | None = None,
    *,
    kind: str = "euclidean",
    max_length: int = DEFAULT_MAX_LENGTH,
) -> UtilityKernel:
    """The dense kernel computed pair by pair, one whole sequence per forward pass (no batching, padding or
    cache): what :func:`icl_utility_kernel` must equal. Same segments, truncation, kinds and scaling."""
    start = time.perf_counter()
    if kind not in KERNEL_KINDS:
        raise ConfigError(
            f"pairwise_utility_reference: kind={kind!r} is unknown: expected one of {KERNEL_KINDS}"
        )
    targets = _check_examples("targets", targets)
    candidates = targets if candidates is None else _check_examples("candidates", candidates)
    max_length = effective_max_length(model, max_length)
    segments = tokenize_segments(tokenizer, targets, candidates)
    no_demo = np.full(len(targets), np.nan)
    demo = np.full((len(targets), len(candidates)), np.nan)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(len(targets)):
                no_demo[i], used = _plain_distance(model, segments.no_demo[i], max_length)
                tokens += used
                for j in range(len(candidates)):
                    demo[i, j], used = _plain_distance(
                        model, pair_sequence(segments, i, j, max_length), max_length
                    )
                    tokens += used
    finally:
        model.train(was_training)
    stored = StoredDistances(no_demo.astype(np.float32), demo.astype(np.float32), None, {})
    raw, scaled, bounds = assemble_kernel(stored, kind, len(candidates))
    return UtilityKernel(
        raw=raw,
        scaled=scaled,
        no_demo_distance=stored.no_demo,
        kind=kind,
        forward_tokens=tokens,
        seconds=time.perf_counter() - start,
        pairs=demo.size,
        diagnostics={"max_length": max_length, **bounds},
    )


__all__ = [
    "DEFAULT_MAX_KERNEL_BYTES",
    "DEFAULT_MAX_LENGTH",
    "KERNEL_KINDS",
    "UtilityKernel",
    "assemble_kernel",
    "check_kernel_size",
    "icl_utility_kernel",
    "min_max_scale",
    "nearest_candidates",
    "pairwise_utility_reference",
    "utility_from_distances",
]
