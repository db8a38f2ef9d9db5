"""The forward passes of DELIFT's in-context utility (arXiv 2411.04425): the targets without a demonstration,
and every (target, candidate) pair with the candidate as the one demonstration, reusing each candidate's
prefix.

Prefix reuse. Everything in the demonstration prompt up to ``"Query:\\n"`` depends only on the candidate
(:mod:`p3bench.scoring.icl_utility_tokens`), so the pairs are processed in *blocks* of candidates: one
forward pass over the block's prefixes (right-padded, ``use_cache``) gives their keys and values, then the
block's pairs run in batches of right-padded query suffixes (:func:`pair_batches`: by candidate or by
suffix length, whichever pads less), each row reading its candidate's keys and values (gathered into a
fresh ``DynamicCache`` and cut to the batch's longest prefix), with the prefix padding masked out of the
attention mask and the positions continuing from the row's own prefix length. The result equals running
every pair as one sequence (:func:`pair_sequence`) to float tolerance. ``reuse_prefix=False`` runs exactly
those whole sequences, length-bucketed (the public code's way, and the benchmark's comparison).

The saving: a pair's prefix costs nothing after the first, but its suffix still attends over the prefix,
so the work falls by less than the tokens do (measured in ``benchmarks/icl_utility_kernel.py``). On a CPU,
padding costs as much as real tokens and batching buys little, so small batches are fastest there.

This needs a decoder whose cache is the ``DynamicCache`` of the installed transformers (>= 4.56; Llama,
Mistral, Qwen, GPT-2, ...) and sequences shorter than any sliding attention window; other causal LMs run
with ``reuse_prefix=False``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.scoring.base import all_reduce_sum, gather_rows, length_buckets, shard
from p3bench.scoring.icl_utility_store import StoredDistances
from p3bench.scoring.icl_utility_tokens import (
    ScoredSequence,
    UtilitySegments,
    kept_length,
    query_boundary_mismatches,
    response_distances,
    scored_count,
    tokenize_segments,
)
from p3bench.utils.progress import progress_bar


@dataclass
class PassCounts:
    """Non-padding tokens the passes processed, by part, and the passes run."""

    prefix_tokens: int = 0
    suffix_tokens: int = 0
    no_demo_tokens: int = 0
    prefix_passes: int = 0
    pair_batches: int = 0
    #: what the pairs' whole sequences hold (the tokens a pass without prefix reuse processes)
    whole_pair_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prefix_tokens + self.suffix_tokens + self.no_demo_tokens


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return frozenset(inspect.signature(base.forward).parameters)


class CausalLM:
    """A causal LM called with the argument names of the installed transformers (``cache`` since 5.x,
    ``past_key_values`` before), keeping only the logits that are needed when the model allows it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        parameters = _forward_parameters(model)
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_logits = "logits_to_keep" in parameters
        self.device = model_device(model)
        self.config = getattr(model, "config", None)
        text = self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else None
        self.hidden_size = int(getattr(text, "hidden_size", 0) or 0)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        keep: int = 0,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> Any:
        options: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            options["position_ids"] = position_ids
        if cache is not None:
            options[self.cache_argument] = cache
        options["use_cache"] = use_cache
        if keep and self.keeps_logits:
            options["logits_to_keep"] = keep
        return self.model(**options)

    def returned_cache(self, outputs: Any) -> Any:
        cache = getattr(outputs, "cache", None)
        return cache if cache is not None else getattr(outputs, "past_key_values", None)

    def gathered_cache(
        self, layers: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, width: int
    ) -> Any:
        """A fresh cache holding, for each batch row, the keys and values of its candidate's prefix (the
        first ``width`` positions of the block's right-padded prefixes)."""
        data = [(keys[rows, :, :width], values[rows, :, :width]) for keys, values in layers]
        try:
            return DynamicCache(ddp_cache_data=data, config=self.config)
        except TypeError:  # an older DynamicCache without ``config``
            return DynamicCache(data)


def check_prefix_reuse(model: torch.nn.Module, max_length: int) -> None:
    """Refuse prefix reuse where sliding-window layers would drop part of a prefix longer than the window."""
    config = getattr(model, "config", None)
    if config is None:
        return
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None) or []
    sliding = any("sliding" in str(kind) for kind in layer_types)
    if sliding and isinstance(window, int) and window < max_length:
        raise ConfigError(
            f"icl_utility_kernel: max_length={max_length} exceeds the model's sliding window ({window}): "
            "expected max_length <= the window, or reuse_prefix=False"
        )


def _padded(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _distances(
    lm: CausalLM, rows: list[list[int]], first: list[int], pad_id: int, **forward: Any
) -> torch.Tensor:
    """The distance of every right-padded row (scored from ``first[r]`` to its end)."""
    ids, mask = _padded(rows, pad_id, lm.device)
    first_scored = torch.as_tensor(first, dtype=torch.long, device=lm.device)
    lengths = torch.as_tensor([len(row) for row in rows], dtype=torch.long, device=lm.device)
    if "prefix_mask" in forward:
        mask = torch.cat([forward.pop("prefix_mask"), mask], dim=1)
    keep = ids.shape[1] - int(first_scored.min()) + 1
    logits = lm(ids, mask, keep=keep, **forward).logits
    return response_distances(logits, ids, first_scored, lengths)


def no_demo_distances(
    lm: CausalLM,
    sequences: Sequence[ScoredSequence],
    positions: Sequence[int],
    *,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
    pad_id: int,
    counts: PassCounts,
    bar: Any,
) -> np.ndarray:
    """``d(p(y_i | x_i))`` for the targets at ``positions`` (NaN where truncation leaves nothing scored)."""
    out = np.full(len(positions), np.nan, dtype=np.float64)
    live = [k for k, p in enumerate(positions) if scored_count(0, sequences[p], max_length) > 0]
    lengths = [kept_length(0, len(sequences[positions[k]]), max_length) for k in live]
    for batch in length_buckets(lengths, batch_size, max_batch_tokens):
        chosen = [live[b] for b in batch]
        rows = [sequences[positions[k]].ids[:max_length] for k in chosen]
        first = [sequences[positions[k]].first_scored for k in chosen]
        out[chosen] = _distances(lm, rows, first, pad_id).cpu().numpy()
        counts.no_demo_tokens += sum(len(row) for row in rows)
        bar.update(len(chosen))
    bar.update(len(positions) - len(live))
    return out


def plan_blocks(segments: UtilitySegments, candidates: Sequence[int], block_size: int) -> list[list[int]]:
    """``candidates`` in blocks of at most ``block_size`` of similar prefix length, longest first (ties by
    index). Deterministic, so that every process plans the same blocks."""
    order = sorted(candidates, key=lambda c: (-len(segments.prefixes[c]), c))
    return [order[s : s + block_size] for s in range(0, len(order), block_size)]


def _runs(
    order: Sequence[int],
    rows: Sequence[int],
    prefix_lengths: Sequence[int],
    suffix_lengths: Sequence[int],
    batch_size: int,
    max_tokens: int | None,
) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``batch_size`` pairs and, with ``max_tokens``, at
    most that many padded key positions (the batch's longest prefix plus its longest suffix, per row)."""
    batches: list[list[int]] = []
    width = suffix = 0
    for k in order:
        grown_width = max(width, prefix_lengths[rows[k]])
        grown_suffix = max(suffix, suffix_lengths[k])
        if (
            batches
            and len(batches[-1]) < batch_size
            and (max_tokens is None or (grown_width + grown_suffix) * (len(batches[-1]) + 1) <= max_tokens)
        ):
            batches[-1].append(k)
            width, suffix = grown_width, grown_suffix
        else:
            batches.append([k])
            width, suffix = prefix_lengths[rows[k]], suffix_lengths[k]
    return batches


def _padded_cost(
    batches: list[list[int]],
    rows: Sequence[int],
    prefix_lengths: Sequence[int],
    suffix_lengths: Sequence[int],
    hidden: int,
) -> int:
    """The work of ``batches`` with padding: every padded query position attends over the batch's key
    width and runs the layers' matrix products (worth about ``6 * hidden`` keys of attention)."""
    cost = 0
    for batch in batches:
        suffix = max(suffix_lengths[k] for k in batch)
        width = max(prefix_lengths[rows[k]] for k in batch)
        cost += len(batch) * suffix * (width + suffix + 6 * hidden)
    return cost


def pair_batches(
    rows: Sequence[int],
    prefix_lengths: Sequence[int],
    suffix_lengths: Sequence[int],
    batch_size: int,
    max_tokens: int | None,
    hidden: int = 0,
) -> list[list[int]]:
    """Batches of a block's pairs for prefix reuse (``rows[k]``: pair ``k``'s candidate in the block, whose
    order is longest prefix first). Two orders, whichever pads less (:func:`_padded_cost`):

    - by candidate, then suffix length: most batches read one candidate's prefix (no prefix padding), but
      a few targets much longer than the rest pad their batch (few targets per candidate, long tails);
    - by suffix length, then candidate: batches of nearly equal suffixes that mix the block's candidates,
      whose prefixes are padded to the longest in the batch (candidates of very different lengths).
    """
    by_candidate = sorted(range(len(rows)), key=lambda k: (rows[k], -suffix_lengths[k], k))
    by_suffix = sorted(range(len(rows)), key=lambda k: (-suffix_lengths[k], rows[k], k))
    plans = [
        _runs(order, rows, prefix_lengths, suffix_lengths, batch_size, max_tokens)
        for order in (by_candidate, by_suffix)
    ]
    costs = [_padded_cost(plan, rows, prefix_lengths, suffix_lengths, hidden) for plan in plans]
    return plans[int(np.argmin(costs))]


def live_pairs(
    segments: UtilitySegments, targets: np.ndarray, candidates: np.ndarray, max_length: int
) -> np.ndarray:
    """Which pairs keep at least one scored token after truncation of the whole sequence."""
    prefix = np.asarray([len(segments.prefixes[c]) for c in candidates.tolist()], dtype=np.int64)
    length = np.asarray([len(segments.queries[t]) for t in targets.tolist()], dtype=np.int64)
    first = np.asarray([segments.queries[t].first_scored for t in targets.tolist()], dtype=np.int64)
    kept = np.clip(np.minimum(length, max_length - prefix), 0, None)
    return kept > first


def block_distances(
    lm: CausalLM,
    segments: UtilitySegments,
    block: Sequence[int],
    targets: np.ndarray,
    candidates: np.ndarray,
    *,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
    reuse_prefix: bool,
    pad_id: int,
    counts: PassCounts,
    bar: Any,
) -> np.ndarray:
    """``d(p(y_i | x_j, y_j, x_i))`` of the pairs ``(targets[k], candidates[k])``, whose candidates are the
    block's and which all keep a scored token (:func:`live_pairs`), in that order."""
    out = np.empty(len(targets), dtype=np.float64)
    if not len(targets):
        return out
    present = set(candidates.tolist())
    block = [c for c in block if c in present]  # a candidate without a live pair needs no prefix pass
    row_of = {c: r for r, c in enumerate(block)}
    prefixes = [segments.prefixes[c] for c in block]
    prefix_lengths = [len(prefix) for prefix in prefixes]
    rows_in_block = [row_of[c] for c in candidates.tolist()]
    suffixes = [segments.queries[t] for t in targets.tolist()]
    cut = [
        seq.ids[: kept_length(prefix_lengths[r], len(seq), max_length)]
        for r, seq in zip(rows_in_block, suffixes, strict=True)
    ]
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    prefix_mask = torch.empty(0)
    if reuse_prefix:
        ids, prefix_mask = _padded(prefixes, pad_id, lm.device)
        cache = lm.returned_cache(lm(ids, prefix_mask, keep=1, use_cache=True))
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        counts.prefix_tokens += sum(prefix_lengths)
        counts.prefix_passes += 1
        suffix_lengths = [len(part) for part in cut]
        batches = pair_batches(
            rows_in_block, prefix_lengths, suffix_lengths, batch_size, max_batch_tokens, lm.hidden_size
        )
    else:
        widths = [prefix_lengths[r] + len(part) for r, part in zip(rows_in_block, cut, strict=True)]
        batches = length_buckets(widths, batch_size, max_batch_tokens)
    for batch in batches:
        block_rows = [rows_in_block[k] for k in batch]
        parts = [cut[k] for k in batch]
        firsts = [suffixes[k].first_scored for k in batch]
        if reuse_prefix:
            rows = torch.as_tensor(block_rows, dtype=torch.long, device=lm.device)
            starts = torch.as_tensor([prefix_lengths[r] for r in block_rows], device=lm.device)
            positions = starts.unsqueeze(1) + torch.arange(max(map(len, parts)), device=lm.device)
            width = int(starts.max())  # the prefixes are right-padded: the batch needs its longest only
            distances = _distances(
                lm,
                parts,
                firsts,
                pad_id,
                prefix_mask=prefix_mask[rows, :width],
                position_ids=positions,
                cache=lm.gathered_cache(layers, rows, width),
                use_cache=True,
            )
            counts.suffix_tokens += sum(map(len, parts))
        else:
            whole = [prefixes[r] + part for r, part in zip(block_rows, parts, strict=True)]
            first = [prefix_lengths[r] + f for r, f in zip(block_rows, firsts, strict=True)]
            distances = _distances(lm, whole, first, pad_id)
            counts.suffix_tokens += sum(map(len, whole))
        out[batch] = distances.cpu().numpy()
        counts.whole_pair_tokens += sum(
            prefix_lengths[r] + len(part) for r, part in zip(block_rows, parts, strict=True)
        )
        counts.pair_batches += 1
        bar.update(len(batch))
    return out


def pair_sequence(segments: UtilitySegments, target: int, candidate: int, max_length: int) -> ScoredSequence:
    """The whole sequence of one pair (prefix + query suffix), truncated: what prefix reuse must equal."""
    prefix = segments.prefixes[candidate]
    query = segments.queries[target]
    return ScoredSequence((prefix + query.ids)[:max_length], len(prefix) + query.first_scored)


# -- the sharded computation ---------------------------------------------------------------------------


def _all_reduce_array(array: np.ndarray) -> np.ndarray:
    """The element-wise sum over processes. Each pair is computed by one process and is 0 elsewhere (NaN,
    for a pair with nothing scored, stays NaN), so the sum gathers the kernel without a list of positions."""
    tensor = torch.from_numpy(array)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


def compute_distances(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    targets: list[Example],
    candidates: list[Example],
    columns: np.ndarray | None,
    *,
    max_length: int,
    batch_size: int,
    block_size: int,
    max_batch_tokens: int | None,
    reuse_prefix: bool,
    progress: bool,
) -> StoredDistances:
    """The distances with and without the demonstration, sharded over processes and gathered."""
    segments = tokenize_segments(tokenizer, targets, candidates)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_targets = len(targets)
    if columns is None:  # dense: every candidate with every target, column = candidate
        active = list(range(len(candidates)))
        every_target = np.arange(n_targets, dtype=np.int64)

        def pairs_of(c: int) -> tuple[np.ndarray, np.ndarray]:
            return every_target, np.full(n_targets, c, dtype=np.int64)

        demo = np.zeros((n_targets, len(candidates)), dtype=np.float32)
    else:  # sparse: candidate c for the targets that have it among their neighbours, column = its rank
        flat = columns.ravel()
        order = np.argsort(flat, kind="stable")
        active = np.unique(flat).tolist()
        bounds = np.searchsorted(flat[order], np.asarray(active + [len(candidates)]))
        slots = {c: order[bounds[n] : bounds[n + 1]] for n, c in enumerate(active)}

        def pairs_of(c: int) -> tuple[np.ndarray, np.ndarray]:
            return slots[c] // columns.shape[1], slots[c] % columns.shape[1]

        demo = np.zeros(columns.shape, dtype=np.float32)

    lm = CausalLM(model)
    counts = PassCounts()
    empty_pairs = 0
    positions, _, world = shard(n_targets)
    blocks = plan_blocks(segments, active, block_size)
    mine = [blocks[b] for b in shard(len(blocks))[0]]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            with progress_bar(
                total=len(positions), desc="icl utility (no demo)", unit="target", enabled=progress
            ) as bar:
                no_demo = no_demo_distances(
                    lm, segments.no_demo, positions, max_length=max_length, batch_size=batch_size,
                    max_batch_tokens=max_batch_tokens, pad_id=pad_id, counts=counts, bar=bar,
                )  # fmt: skip
            total = sum(len(pairs_of(c)[0]) for block in mine for c in block)
            with progress_bar(total=total, desc="icl utility", unit="pair", enabled=progress) as bar:
                for block in mine:
                    parts = [pairs_of(c) for c in block]
                    rows = np.concatenate([part[0] for part in parts])
                    cols = np.concatenate([part[1] for part in parts])
                    pair_candidates = cols if columns is None else columns[rows, cols]
                    live = live_pairs(segments, rows, pair_candidates, max_length)
                    demo[rows[~live], cols[~live]] = np.nan
                    empty_pairs += int((~live).sum())
                    bar.update(int((~live).sum()))
                    demo[rows[live], cols[live]] = block_distances(
                        lm, segments, block, rows[live], pair_candidates[live], max_length=max_length,
                        batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                        reuse_prefix=reuse_prefix, pad_id=pad_id, counts=counts, bar=bar,
                    )  # fmt: skip
    finally:
        model.train(was_training)
    no_demo = gather_rows(positions, {"d": no_demo}, n_targets, world)["d"]
    if world > 1:
        demo = _all_reduce_array(demo)
    info = {
        "forward_tokens": all_reduce_sum(counts.total),
        "prefix_tokens": all_reduce_sum(counts.prefix_tokens),
        "suffix_tokens": all_reduce_sum(counts.suffix_tokens),
        "no_demo_tokens": all_reduce_sum(counts.no_demo_tokens),
        "whole_pair_tokens": all_reduce_sum(counts.whole_pair_tokens),
        "prefix_passes": all_reduce_sum(counts.prefix_passes),
        "pair_batches": all_reduce_sum(counts.pair_batches),
        "pairs_without_scored_tokens": all_reduce_sum(empty_pairs),
        "targets_without_scored_tokens": int(np.isnan(no_demo).sum()),
        "query_boundary_mismatches": query_boundary_mismatches(tokenizer, targets),
        "world_size": world,
    }
    return StoredDistances(no_demo=no_demo.astype(np.float32), demo=demo, columns=columns, info=info)


__all__ = [
    "CausalLM",
    "PassCounts",
    "block_distances",
    "check_prefix_reuse",
    "compute_distances",
    "model_device",
    "no_demo_distances",
    "pair_batches",
    "pair_sequence",
    "live_pairs",
    "plan_blocks",
]
