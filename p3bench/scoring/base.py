"""What every difficulty scorer shares: the items to score, the result, and one batched forward pass over
a pool (length-bucketed, under ``torch.inference_mode``, with a progress bar and a forward-token count).

Scores are "probability of success" numbers in [0, 1]: higher means easier for the current model. The
difficulty a pace schedule reads is ``1 - score``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example
from p3bench.models.collate import IGNORE_INDEX, EncodedPool, EncodedSubset, TrainCollator
from p3bench.throughput import synchronize
from p3bench.utils.progress import progress_bar


@dataclass
class ScoringItems:
    """The pool examples a scorer looks at: ``indices`` into ``examples`` and their ``encoded`` tokens."""

    examples: Sequence[Example]
    encoded: EncodedPool
    indices: Sequence[int]
    tokenizer: PreTrainedTokenizerBase
    max_length: int

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class ScoreResult:
    """One score per scored item (in the order of ``ScoringItems.indices``), higher = easier, in [0, 1].

    ``features`` (optional) are per-item vectors the pass produced as a by-product (the policy model's
    mean-pooled hidden states); ``forward_tokens`` counts every non-padding token a model processed.
    """

    scores: np.ndarray
    forward_tokens: int = 0
    seconds: float = 0.0
    features: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def difficulty(self) -> np.ndarray:
        return 1.0 - self.scores


class Scorer:
    """A difficulty measure. ``needs_model`` is False for scorers that read only the data (level labels);
    ``gives_features`` says whether ``score(..., want_features=True)`` returns the policy's features."""

    name: str = "base"
    needs_model: bool = True
    gives_features: bool = False

    def score(
        self, module: Any, items: ScoringItems, *, want_features: bool = False, round: int = 0
    ) -> ScoreResult:
        """Score ``items`` with ``module`` (the current model). ``round`` seeds scorers that sample."""
        raise NotImplementedError


RowFunction = Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]]


def mean_pooled_targets(
    hidden: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of the last hidden states (in float32) over each example's target positions, or over its
    non-padding tokens when no target token is left. Pooling the response avoids the degenerate
    first-token state the P3 public code used (under causal attention position 0 sees only BOS)."""
    hidden = hidden.float()
    mask = (labels != IGNORE_INDEX).float()
    empty = mask.sum(dim=1) == 0
    if empty.any():
        fallback = attention_mask.float() if attention_mask is not None else torch.ones_like(mask)
        mask[empty] = fallback[empty]
    return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)


class TeacherForcedScorer(Scorer):
    """A scorer computed from one teacher-forced pass of the current model over prompt + target
    (``likelihood``, ``steps``): the batching options and the call to :func:`forward_pass`, which with
    ``features`` also returns each example's :func:`mean_pooled_targets` (the policy's embedding for the DPP,
    at no extra forward pass)."""

    gives_features = True

    def __init__(
        self, batch_size: int = 64, max_batch_tokens: int | None = None, progress: bool = True
    ) -> None:
        self.batch_size = int(batch_size)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.progress = bool(progress)

    def teacher_forced_pass(
        self, module: Any, items: ScoringItems, rows: RowFunction, *, features: bool = False
    ) -> tuple[dict[str, np.ndarray], int]:
        def rows_and_features(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, torch.Tensor]:
            out = rows(batch, outputs)
            hidden = outputs.hidden_states[-1]
            out["features"] = mean_pooled_targets(hidden, batch["labels"], batch["attention_mask"])
            return out

        return forward_pass(
            module,
            items,
            rows_and_features if features else rows,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            output_hidden_states=features,
            progress=self.progress,
            description=f"scoring ({self.name})",
        )


def length_buckets(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Positions grouped into batches of at most ``batch_size`` examples of similar length (longest first),
    so that a scoring pass spends little compute on padding; with ``max_tokens``, a batch also holds at most
    that many padded tokens (at least one example), which bounds the logits' memory for a large vocabulary.
    Deterministic."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for position in order:
        # the longest example of a batch comes first, so it sets the padded width
        if (
            batches
            and len(batches[-1]) < batch_size
            and (max_tokens is None or lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens)
        ):
            batches[-1].append(position)
        else:
            batches.append([position])
    return batches


def shard(n: int) -> tuple[list[int], int, int]:
    """The positions of ``range(n)`` this process handles under torch.distributed (all of them otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return list(range(rank, n, world)), rank, world
    return list(range(n)), 0, 1


def gather_rows(
    positions: list[int], rows: dict[str, np.ndarray], n: int, world: int
) -> dict[str, np.ndarray]:
    """Reassemble per-position arrays computed on each process into full arrays of length ``n``."""
    if world == 1:
        return rows
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, (positions, rows))
    out: dict[str, np.ndarray] = {}
    keys = sorted({key for _, part_rows in parts for key in part_rows})
    for key in keys:
        first = next(p[1][key] for p in parts if key in p[1])
        full = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
        for part_positions, part_rows in parts:
            if len(part_positions) and key in part_rows:
                full[np.asarray(part_positions)] = part_rows[key]
        out[key] = full
    return out


def all_reduce_sum(value: int) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor([value], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor)
        return int(tensor.item())
    return value


def forward_pass(
    module: Any,
    items: ScoringItems,
    row_function: RowFunction,
    *,
    batch_size: int = 64,
    max_batch_tokens: int | None = None,
    output_hidden_states: bool = False,
    progress: bool = True,
    description: str = "scoring",
) -> tuple[dict[str, np.ndarray], int]:
    """Run the module's causal LM once over every item (teacher forcing, prompt + target) and collect
    ``row_function(batch, outputs)``: a dict of per-example tensors. Returns the arrays in item order and
    the number of non-padding tokens processed (summed over processes).

    Batches are length-bucketed (and capped at ``max_batch_tokens`` padded tokens); the pass runs under ``torch.inference_mode`` in eval mode and restores the
    module's training mode afterwards. Under torch.distributed each process scores whole batches of the
    one-process pass (batches ``rank, rank + world, ...``) and the rows are gathered, so every process
    returns bitwise the arrays of one process. With ``progress``, a bar named ``description``
    counts the examples scored (:func:`p3bench.utils.progress.progress_bar`; rank zero's share).
    """
    _, rank, world = shard(len(items))
    # whole batches of the one-process pass, dealt round-robin: every item is scored in the batch (and the
    # padded width) one process scores it in, so every process gets bitwise the rows of one process
    lengths = [items.encoded.num_tokens(index, items.max_length) for index in items.indices]
    dealt = length_buckets(lengths, batch_size, max_batch_tokens)[rank::world]
    positions = [p for batch in dealt for p in batch]
    batches, start = [], 0  # the dealt batches as positions into this process's subset
    for batch in dealt:
        batches.append(list(range(start, start + len(batch))))
        start += len(batch)
    collate = TrainCollator(items.tokenizer.pad_token_id, items.max_length)
    subset = EncodedSubset(items.encoded, [items.indices[p] for p in positions])
    model = module.model
    device = module.device
    was_training = model.training
    times = getattr(module, "throughput", None)
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    order: list[int] = []
    tokens = 0
    try:

        def prepare(batch_positions: list[int]) -> dict[str, torch.Tensor]:
            batch = collate([subset[p] for p in batch_positions])
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

        # the next batch is collated in a thread while the model runs on this one (torch releases the GIL)
        with (
            torch.inference_mode(),
            ThreadPoolExecutor(max_workers=1) as prefetch,
            progress_bar(total=len(positions), desc=description, unit="example", enabled=progress) as bar,
        ):
            upcoming = prefetch.submit(prepare, batches[0]) if batches else None
            synchronize(device)  # work queued before the pass is not its time
            for n, batch_positions in enumerate(batches):
                batch = upcoming.result()
                if n + 1 < len(batches):
                    upcoming = prefetch.submit(prepare, batches[n + 1])
                batch_start = time.perf_counter()
                outputs = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    output_hidden_states=output_hidden_states,
                )
                for key, value in row_function(batch, outputs).items():
                    collected.setdefault(key, []).append(value.float().cpu().numpy())
                batch_tokens = int(batch["attention_mask"].sum())
                tokens += batch_tokens
                if times is not None:  # the run model's passes: p3bench.throughput
                    synchronize(device)
                    times.scoring.add(len(batch_positions), batch_tokens, time.perf_counter() - batch_start)
                order.extend(positions[p] for p in batch_positions)
                bar.update(len(batch_positions))
    finally:
        model.train(was_training)
    rows = {}
    by_position = np.argsort(np.asarray(order, dtype=np.int64), kind="stable")
    for key, chunks in collected.items():
        rows[key] = np.concatenate(chunks, axis=0)[by_position]
    rows = gather_rows(sorted(order), rows, len(items), world)
    return rows, all_reduce_sum(tokens)


def timed(fn: Callable[[], ScoreResult]) -> ScoreResult:
    start = time.perf_counter()
    result = fn()
    result.seconds = time.perf_counter() - start
    return result
