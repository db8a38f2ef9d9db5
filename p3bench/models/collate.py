"""Encoding examples once, and turning selected examples into padded training and generation batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from p3bench.data.example import Example

IGNORE_INDEX = -100


@dataclass
class EncodedPool:
    """Token ids of each example's prompt and target (target ends with EOS), encoded once per run."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def num_tokens(self, index: int, max_length: int) -> int:
        return min(len(self.prompt_ids[index]) + len(self.target_ids[index]), max_length)


def encode_examples(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase) -> EncodedPool:
    """Encode prompts with the tokenizer's special tokens (BOS) and targets without them, plus EOS."""
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    targets = tokenizer([ex.target for ex in examples], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return EncodedPool(prompt_ids=[bos + p for p in prompts], target_ids=[t + eos for t in targets])


class TrainCollator:
    """Right-padded ``input_ids``/``attention_mask``, ``labels`` masked to the target tokens, and the
    selection ``weight`` and pool ``index`` of each example.

    Sequences longer than ``max_length`` keep their prompt's start and lose the target's end. For the ``lm``
    task (empty prompt) every token is a target.
    """

    def __init__(self, pad_token_id: int, max_length: int) -> None:
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, labels = [], []
        for item in items:
            prompt, target = item["prompt_ids"], item["target_ids"]
            ids = (prompt + target)[: self.max_length]
            n_prompt = min(len(prompt), len(ids))
            sequences.append(ids)
            labels.append([IGNORE_INDEX] * n_prompt + ids[n_prompt:])
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        label_ids = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(zip(sequences, labels, strict=True)):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            label_ids[row, : len(lab)] = torch.tensor(lab)
            attention_mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": label_ids,
            "weight": torch.tensor([float(item["weight"]) for item in items]),
            "index": torch.tensor([int(item["index"]) for item in items]),
        }


class GenerationCollator:
    """Left-padded prompts for batched greedy generation, with each example's index in its split."""

    def __init__(self, pad_token_id: int, max_prompt_length: int) -> None:
        self.pad_token_id = pad_token_id
        self.max_prompt_length = max_prompt_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [item["prompt_ids"][-self.max_prompt_length :] for item in items]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "index": torch.tensor([int(item["index"]) for item in items]),
        }


class GenerationTestCollator:
    """A test batch of a generation task: the left-padded prompts of :class:`GenerationCollator` for greedy
    generation, and under ``teacher_``-prefixed keys (``teacher_input_ids``, ``teacher_attention_mask``,
    ``teacher_labels``) the right-padded prompt + target of :class:`TrainCollator`, encoded and truncated as
    in training, for the teacher-forced continuous metrics (``p3bench.eval.likelihood``)."""

    def __init__(self, pad_token_id: int, max_length: int) -> None:
        self.generation = GenerationCollator(pad_token_id, max_length)
        self.teacher_forced = TrainCollator(pad_token_id, max_length)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.generation(items)
        forced = self.teacher_forced([{"weight": 1.0, **item} for item in items])
        batch.update({f"teacher_{key}": forced[key] for key in ("input_ids", "attention_mask", "labels")})
        return batch


class ExampleRefs:
    """The :class:`Example` objects of a batch, held opaquely so device transfer leaves them alone."""

    __slots__ = ("items",)

    def __init__(self, items: list[Example]) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class EncodedSubset(torch.utils.data.Dataset):
    """The examples at ``indices`` of an encoded pool, each with its selection weight."""

    def __init__(self, pool: EncodedPool, indices: Sequence[int], weights: Sequence[float] | None = None):
        self.pool = pool
        self.indices = list(indices)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return pool_item(self.pool, self.indices[position], self.weights[position])


def pool_item(pool: EncodedPool, index: int, weight: float) -> dict[str, Any]:
    """The training item of pool example ``index`` with its selection ``weight`` (what
    :class:`TrainCollator` collates)."""
    return {
        "index": index,
        "prompt_ids": pool.prompt_ids[index],
        "target_ids": pool.target_ids[index],
        "weight": weight,
    }
