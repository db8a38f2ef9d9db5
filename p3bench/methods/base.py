"""The contract every selection method implements: a LightningDataModule that owns the pool and the budget
and decides what the trainer sees, in which round, and with what weight.

- Static methods select once, in ``setup``, with the initial model available in the context.
- Dynamic methods set ``reselect_every_n_epochs``; the run's Trainer then reloads the train dataloader on
  that schedule and ``select`` is called again with the current model (P3).
- Step-scheduled methods set ``reselect_every_n_steps`` instead: round ``r`` is selected at the first batch
  drawn at optimiser step ``r * reselect_every_n_steps``, inside an epoch, with grad enabled and the training
  optimiser in ``ctx.optimizer`` (multi-agent selection; :mod:`p3bench.models.step_sampler`).
- In-batch reweighting methods override ``reweight`` (IR-DRO, MidRanking): it receives the detached
  per-example losses of a batch and returns the coefficients of the training loss.
- Methods that need a target set (DELIFT) read ``self.target`` (the validation split by default).
- The selection history (every round's ids, weights, scores) and ``method_state`` are in ``state_dict``,
  with where the data order was, so a run resumed from a checkpoint, even one taken mid-epoch, continues
  with the same selection state and the same batches.
- All selection randomness comes from ``ctx.rng`` or generators the method seeds, never the global RNGs,
  which Lightning does not checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from p3bench.compute import ComputeLedger
from p3bench.data.arrow_pool import ArrowPool, encode_arrow_pool, pool_ids
from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.methods.budget import resolve_budget
from p3bench.models.collate import (
    EncodedPool,
    EncodedSubset,
    ExampleRefs,
    GenerationTestCollator,
    TrainCollator,
    encode_examples,
)
from p3bench.models.sampler import LengthGroupedBatchSampler
from p3bench.models.step_sampler import (
    ResumableDataLoader,
    RoundsDataset,
    StepScheduledBatchSampler,
    StreamPosition,
)
from p3bench.scoring.base import ScoringItems
from p3bench.utils.hashing import ids_sha256


@dataclass
class Selection:
    """What ``select`` returns: the chosen pool ids, optional per-example weights and scores, diagnostics,
    and the forward tokens the selection spent looking at examples through a model."""

    ids: list[str]
    weights: list[float] | None = None
    scores: list[float] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    forward_tokens: int = 0


@dataclass
class SelectionContext:
    """What a method may look at when it selects: the current model (a :class:`SelectionLM`, or None when
    the datamodule is used outside a Trainer), the round and training progress, a seeded RNG, the cache."""

    round: int
    epoch: int
    global_step: int
    rng: np.random.Generator
    module: Any | None
    cache_dir: Path | None
    #: the training optimiser (``trainer.optimizers[0]``) while fitting, else None; a method may read its
    #: state (a look-ahead step from the training moments) but must leave it untouched
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class RoundRecord:
    round: int
    epoch: int
    global_step: int
    ids: list[str]
    weights: list[float] | None
    scores: list[float] | None
    diagnostics: dict[str, Any]
    forward_tokens: int
    seconds: float
    #: the models the round ran or trained (p3bench.compute.ComputeComponent.to_dict of each)
    compute: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids_sha256(self) -> str:
        return ids_sha256(self.ids)


class SelectionDataModule(pl.LightningDataModule):
    """Base class of every selection method. Subclasses implement :meth:`select`."""

    name: ClassVar[str] = "base"
    #: False for methods that ignore the budget (``full``); the selection size is then not checked.
    uses_budget: ClassVar[bool] = True
    #: processes that tokenise an Arrow pool (``pool.num_proc``; the run sets it)
    pool_num_proc: int = 1

    def __init__(
        self,
        splits: DatasetSplits,
        tokenizer: PreTrainedTokenizerBase,
        budget: float | int = 1.0,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        max_length: int = 512,
        target_split: str = "validation",
        reselect_every_n_epochs: int = 0,
        length_grouping: int = 50,
        cache_dir: str | Path | None = None,
        reselect_every_n_steps: int = 0,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.tokenizer = tokenizer
        # a list of examples, or an ArrowPool read lazily from disk (p3bench.data.arrow_pool): a Sequence
        self.pool: Sequence[Example] = splits.train
        self.budget = budget
        self.budget_size = resolve_budget(budget, len(self.pool)) if self.uses_budget else len(self.pool)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.max_length = int(max_length)
        self.target: list[Example] = getattr(splits, target_split)
        self.reselect_every_n_epochs = int(reselect_every_n_epochs)
        self.reselect_every_n_steps = check_step_schedule(
            reselect_every_n_steps, self.reselect_every_n_epochs
        )
        self.length_grouping = int(length_grouping)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.index_of = {example_id: i for i, example_id in enumerate(pool_ids(self.pool))}
        if len(self.index_of) != len(self.pool):
            raise ValueError(f"dataset {splits.name!r} has duplicate example ids in its train split")
        self.rounds: list[RoundRecord] = []
        self.selection_seconds_this_process = 0.0
        # where ``select`` reports each model it runs or trains (p3bench.compute); one per round
        self.compute_ledger = ComputeLedger()
        self._encoded: dict[str, EncodedPool] = {}
        # one order generator per round; its state is checkpointed so a resumed run sees the same batches
        self._order_generators: dict[int, torch.Generator] = {}
        self._order_states: dict[int, torch.Tensor] = {}
        # the loader's sampler and round, and (after a mid-epoch resume) the batches of its epoch to skip
        self._train_sampler: LengthGroupedBatchSampler | None = None
        self._train_round = 0
        self._skip_in_round: tuple[int, int] | None = None
        # step-scheduled rounds: where the batch stream is (checkpointed), and each round's pool indices
        self._stream_position = StreamPosition()
        self._step_sampler: StepScheduledBatchSampler | None = None
        self._round_items_cache: dict[int, tuple[list[int], list[float] | None]] = {}

    # what subclasses implement ------------------------------------------------------------------------------
    def select(self, ctx: SelectionContext) -> Selection:
        raise NotImplementedError

    def reweight(self, losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Coefficients of the per-example losses in the training loss (default: weighted mean)."""
        return batch["weight"] / batch["weight"].numel()

    def method_state(self) -> dict[str, Any]:
        """Extra selection state to checkpoint (pace threshold, agent weights, ...)."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`method_state` returned."""

    # encoded splits ------------------------------------------------------------------------------------------
    @property
    def is_dynamic(self) -> bool:
        """Whether the method selects again during training (per epoch or every U optimiser steps)."""
        return self.reselect_every_n_epochs > 0 or self.reselect_every_n_steps > 0

    @property
    def is_step_scheduled(self) -> bool:
        """Whether rounds are every ``reselect_every_n_steps`` optimiser steps (inside an epoch)."""
        return self.reselect_every_n_steps > 0

    def encoded(self, split: str) -> EncodedPool:
        if split not in self._encoded:
            examples = getattr(self.splits, split)
            if isinstance(examples, ArrowPool):
                self._encoded[split] = encode_arrow_pool(examples, self.tokenizer, self.pool_num_proc)
            else:
                self._encoded[split] = encode_examples(examples, self.tokenizer)
        return self._encoded[split]

    def use_test_examples(self, examples: Sequence[Example]) -> None:
        """Evaluate on ``examples`` instead of the test split (the same ids with other prompts: in-context
        evaluation puts demonstrations before each prompt)."""
        self.splits.test = list(examples)
        self._encoded.pop("test", None)

    def token_lengths(self, indices: Sequence[int]) -> list[int]:
        """Tokens each pool example at ``indices`` trains on (prompt + target, capped at ``max_length``)."""
        encoded = self.encoded("train")
        return [encoded.num_tokens(i, self.max_length) for i in indices]

    def examples(self, split: str) -> list[Example]:
        return getattr(self.splits, split)

    def pool_items(self) -> ScoringItems:
        """The whole pool as the items of a scoring pass (its encoded tokens, cut at ``max_length``)."""
        return ScoringItems(
            examples=self.pool,
            encoded=self.encoded("train"),
            indices=range(len(self.pool)),
            tokenizer=self.tokenizer,
            max_length=self.max_length,
        )

    # selection rounds ----------------------------------------------------------------------------------------
    def context(self, round_index: int) -> SelectionContext:
        trainer = self.trainer
        return SelectionContext(
            round=round_index,
            epoch=trainer.current_epoch if trainer is not None else 0,
            global_step=trainer.global_step if trainer is not None else 0,
            rng=np.random.default_rng([self.seed, round_index]),
            module=trainer.lightning_module if trainer is not None else None,
            cache_dir=self.cache_dir,
            optimizer=trainer.optimizers[0] if trainer is not None and trainer.optimizers else None,
        )

    def run_selection(self, round_index: int) -> RoundRecord:
        """Select for ``round_index`` (or return the record if that round was already selected).

        The current model is on the training device when ``select`` runs (a static method's ``setup`` comes
        before Lightning moves it). Selection weights are rescaled to mean 1 over the selection, so the
        default loss ``sum_i w_i * loss_i / batch_size`` keeps the scale of an unweighted mean.
        """
        for record in self.rounds:
            if record.round == round_index:
                return record
        ctx = self.context(round_index)
        module = ctx.module
        was_training = module.training if module is not None else False
        if module is not None and self.trainer is not None:
            module.to(self.trainer.strategy.root_device)
        start = time.perf_counter()
        self.compute_ledger = ComputeLedger()
        try:
            selection = self.select(ctx)
        finally:
            if module is not None:
                module.train(was_training)
        seconds = time.perf_counter() - start
        self.selection_seconds_this_process += seconds
        self._check(selection)
        weights = None
        if selection.weights is not None:
            raw = np.asarray(selection.weights, dtype=float)
            mean = raw.mean()
            weights = (raw / mean if mean > 0 else raw).tolist()
        record = RoundRecord(
            round=round_index,
            epoch=ctx.epoch,
            global_step=ctx.global_step,
            ids=[str(i) for i in selection.ids],
            weights=weights,
            scores=None if selection.scores is None else [float(v) for v in selection.scores],
            diagnostics=to_plain(selection.diagnostics),
            forward_tokens=int(selection.forward_tokens),
            seconds=seconds,
            compute=self.compute_ledger.to_list(),
        )
        self.rounds.append(record)
        return record

    def _check(self, selection: Selection) -> None:
        n = len(selection.ids)
        if n == 0:
            raise RuntimeError(f"method {self.name!r} selected no examples")
        if len(set(selection.ids)) != n:
            raise RuntimeError(f"method {self.name!r} selected duplicate ids")
        unknown = [i for i in selection.ids[:5] if i not in self.index_of]
        if any(i not in self.index_of for i in selection.ids):
            raise RuntimeError(f"method {self.name!r} selected ids not in the pool, e.g. {unknown}")
        if self.uses_budget and n > self.budget_size:
            raise RuntimeError(
                f"method {self.name!r} selected {n} examples, over its budget of {self.budget_size}"
            )
        for label, values in (("weights", selection.weights), ("scores", selection.scores)):
            if values is not None and len(values) != n:
                raise RuntimeError(f"method {self.name!r} returned {len(values)} {label} for {n} ids")
        if selection.weights is not None:
            weights = np.asarray(selection.weights, dtype=float)
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise RuntimeError(f"method {self.name!r} returned negative or non-finite weights")

    def current_round(self) -> RoundRecord:
        """The round a per-epoch or static method trains on now (step rounds are the sampler's:
        :meth:`_step_scheduled_dataloader`)."""
        if not self.rounds:
            return self.run_selection(0)
        if self.reselect_every_n_epochs > 0 and self.trainer is not None:
            return self.run_selection(self.trainer.current_epoch // self.reselect_every_n_epochs)
        return self.rounds[-1]

    # Lightning hooks -----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and not self.is_dynamic and not self.rounds:
            self.run_selection(0)

    def train_dataloader(self) -> DataLoader:
        if self.is_step_scheduled:
            return self._step_scheduled_dataloader()
        record = self.current_round()
        indices = [self.index_of[i] for i in record.ids]
        rank, world_size = self._rank_and_world_size()
        sampler = LengthGroupedBatchSampler(
            self.token_lengths(indices),
            self.batch_size,
            self._order_generator(record.round),
            self.length_grouping,
            rank=rank,
            world_size=world_size,
        )
        if self._skip_in_round is not None and self._skip_in_round[0] == record.round:
            sampler.skip_batches = self._skip_in_round[1]  # the rest of an epoch cut by a checkpoint
            self._skip_in_round = None
        self._train_sampler, self._train_round = sampler, record.round
        return ResumableDataLoader(
            EncodedSubset(self.encoded("train"), indices, record.weights),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=TrainCollator(self.tokenizer.pad_token_id, self.max_length),
        )

    def _step_scheduled_dataloader(self) -> DataLoader:
        """One loader for the whole fit: its sampler starts round ``r`` at the first batch drawn when
        ``global_step // reselect_every_n_steps == r`` (:mod:`p3bench.models.step_sampler`)."""
        rank, world_size = self._rank_and_world_size()
        per_epoch = max(1, -(-self.budget_size // self.batch_size) // world_size)
        sampler = StepScheduledBatchSampler(
            round_lengths=lambda r: self.token_lengths(self._round_items(r)[0]),
            current_step=lambda: self.trainer.global_step if self.trainer is not None else 0,
            every_n_steps=self.reselect_every_n_steps,
            batches_per_epoch=per_epoch,
            batch_size=self.batch_size,
            window_batches=self.length_grouping,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            position=self._stream_position,
        )
        self._step_sampler = sampler
        return ResumableDataLoader(
            RoundsDataset(self.encoded("train"), self._round_items),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=TrainCollator(self.tokenizer.pad_token_id, self.max_length),
            position_state=self._stream_position_state,
        )

    def _round_items(self, round_index: int) -> tuple[list[int], list[float] | None]:
        """Round ``round_index``'s pool indices and weights, selecting the round if it is new."""
        if round_index not in self._round_items_cache:
            record = self.run_selection(round_index)
            indices = [self.index_of[i] for i in record.ids]
            self._round_items_cache = {round_index: (indices, record.weights)}  # earlier rounds are done
        return self._round_items_cache[round_index]

    def _order_generator(self, round_index: int) -> torch.Generator:
        """The round's data-order generator: seeded from (seed, round), or restored from a checkpoint."""
        if round_index not in self._order_generators:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + round_index)
            if round_index in self._order_states:
                generator.set_state(self._order_states[round_index])
            self._order_generators[round_index] = generator
        return self._order_generators[round_index]

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def _eval_sampler(self, n: int) -> torch.utils.data.Sampler | None:
        """Under several processes each evaluates its share (padded; duplicates are removed when gathered)."""
        rank, world_size = self._rank_and_world_size()
        if world_size == 1:
            return None
        return torch.utils.data.distributed.DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=False
        )

    def val_dataloader(self) -> DataLoader:
        encoded = self.encoded("validation")
        return DataLoader(
            EncodedSubset(encoded, range(len(encoded))),
            batch_size=self.eval_batch_size,
            sampler=self._eval_sampler(len(encoded)),
            num_workers=self.num_workers,
            collate_fn=TrainCollator(self.tokenizer.pad_token_id, self.max_length),
        )

    def test_dataloader(self) -> DataLoader:
        """Test batches with their examples: prompts for generation together with the teacher-forced prompt +
        target (continuous metrics), or for the ``lm`` task whole documents for teacher-forced scoring
        (held-out perplexity)."""
        encoded = self.encoded("test")
        examples = self.examples("test")
        collate: TrainCollator | GenerationTestCollator
        if self.splits.task == "lm":
            collate = TrainCollator(self.tokenizer.pad_token_id, self.max_length)
        else:
            collate = GenerationTestCollator(self.tokenizer.pad_token_id, self.max_length)

        def collate_with_examples(items: list[dict[str, Any]]) -> dict[str, Any]:
            batch: dict[str, Any] = collate(items)
            batch["examples"] = ExampleRefs([examples[item["index"]] for item in items])
            return batch

        return DataLoader(
            EncodedSubset(encoded, range(len(encoded))),
            batch_size=self.eval_batch_size,
            sampler=self._eval_sampler(len(encoded)),
            num_workers=self.num_workers,
            collate_fn=collate_with_examples,
        )

    # checkpointed state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The rounds, ``method_state``, each round's order-generator state, and where the epoch is when
        the checkpoint is taken mid-epoch: ``within_epoch`` (per-epoch rounds: the round, its generator's
        state before this epoch's shuffle, the batches trained) or ``stream_position`` (step rounds)."""
        state: dict[str, Any] = {
            "rounds": [asdict(r) for r in self.rounds],
            "method_state": to_plain(self.method_state()),
            "order_states": {k: g.get_state() for k, g in self._order_generators.items()},
        }
        if self.is_step_scheduled:
            state["stream_position"] = self._stream_position_state()
        elif (within := self._within_epoch_state()) is not None:
            state["within_epoch"] = within
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds = [RoundRecord(**r) for r in state_dict.get("rounds", [])]
        self.load_method_state(state_dict.get("method_state", {}))
        self._order_states = dict(state_dict.get("order_states", {}))
        self._order_generators = {}
        self._round_items_cache = {}
        self._skip_in_round = None
        within = state_dict.get("within_epoch")
        if within is not None:
            # replay the interrupted epoch's shuffle, then skip the batches already trained
            self._order_states[int(within["round"])] = within["start_state"]
            self._skip_in_round = (int(within["round"]), int(within["batches_done"]))
        if "stream_position" in state_dict:
            position = StreamPosition.from_dict(state_dict["stream_position"])
            if self._step_sampler is not None:  # a loader built before the state was loaded
                self._step_sampler.restore(position)
                position = self._step_sampler.position
            self._stream_position = position

    def _stream_position_state(self) -> dict[str, int]:
        """The step-scheduled stream's position as a checkpoint records it. Lightning's epoch can end before
        the sampler's (``trainer.limit_train_batches``): a checkpoint taken once the trainer's epoch has
        processed all its batches is at an epoch boundary (no batches drawn in the epoch), so the resumed
        run starts a whole epoch instead of continuing the sampler's."""
        position = self._stream_position.to_dict()
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            if done >= trainer.num_training_batches:
                position["drawn_in_epoch"] = 0
        return position

    def _within_epoch_state(self) -> dict[str, Any] | None:
        """The interrupted epoch of a checkpoint taken between two training batches, else None."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None or sampler.epoch_start_state is None:
            return None
        if trainer.state.fn != TrainerFn.FITTING:
            return None
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if not 0 < done < trainer.num_training_batches:
            return None
        return {"round": self._train_round, "start_state": sampler.epoch_start_state, "batches_done": done}

    # summaries -----------------------------------------------------------------------------------------------
    def selected_examples(self, rounds: Sequence[RoundRecord] | None = None) -> list[Example]:
        """The distinct pool examples trained on in ``rounds`` (all rounds by default), in pool order."""
        chosen = {i for r in (self.rounds if rounds is None else rounds) for i in r.ids}
        indices = sorted(self.index_of[example_id] for example_id in chosen)
        if isinstance(self.pool, ArrowPool):
            return self.pool.take(indices)
        return [self.pool[i] for i in indices]


def check_reselect_every_n_steps(value: Any) -> int:
    """``method.reselect_every_n_steps`` as an int >= 0, or a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"method.reselect_every_n_steps={value!r} is invalid: expected an integer >= 0 "
            "(0: no step-scheduled rounds)"
        )
    return int(value)


def check_step_schedule(steps: Any, epochs: Any) -> int:
    """``method.reselect_every_n_steps`` checked (:func:`check_reselect_every_n_steps`) and not set together
    with per-epoch rounds (``epochs`` > 0), or a one-line ConfigError; the step interval."""
    steps = check_reselect_every_n_steps(steps)
    if steps and isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0:
        raise ConfigError(
            f"method.reselect_every_n_steps={steps} and method.reselect_every_n_epochs={epochs} are both set: "
            "a method re-selects on one schedule (set method.reselect_every_n_epochs=0)"
        )
    return steps


def to_plain(value: Any) -> Any:
    """``value`` with numpy and torch scalars and arrays turned into Python numbers and lists, so that it
    checkpoints under ``weights_only`` loading and serialises to JSON as numbers."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
