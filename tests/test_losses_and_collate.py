"""Per-example losses against a hand computation, and the batches the collators build."""

import math

import torch

from p3bench.models.collate import IGNORE_INDEX, EncodedPool, EncodedSubset, GenerationCollator, TrainCollator
from p3bench.models.losses import per_example_nll, target_token_counts


def test_per_example_nll_matches_a_loop_over_target_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX],
            [IGNORE_INDEX, 1, 2, 3, 4, 5],
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        ]
    )
    got = per_example_nll(logits, labels)
    log_probs = torch.log_softmax(logits, dim=-1)
    for row in range(3):
        terms = [
            -log_probs[row, t - 1, labels[row, t]].item()
            for t in range(1, 6)
            if labels[row, t] != IGNORE_INDEX
        ]
        expected = sum(terms) / len(terms) if terms else 0.0
        assert math.isclose(got[row].item(), expected, rel_tol=1e-5, abs_tol=1e-6)
    assert target_token_counts(labels).tolist() == [3, 5, 0]


def test_train_collator_masks_prompt_and_padding_and_keeps_weights():
    pool = EncodedPool(prompt_ids=[[1, 7, 8], [1, 9]], target_ids=[[3, 2], [4, 4, 4, 2]])
    batch = TrainCollator(pad_token_id=0, max_length=16)(list(EncodedSubset(pool, [0, 1], [0.5, 2.0])))
    assert batch["input_ids"].tolist() == [[1, 7, 8, 3, 2, 0], [1, 9, 4, 4, 4, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    i = IGNORE_INDEX
    assert batch["labels"].tolist() == [[i, i, i, 3, 2, i], [i, i, 4, 4, 4, 2]]
    assert batch["weight"].tolist() == [0.5, 2.0]
    assert batch["index"].tolist() == [0, 1]


def test_train_collator_truncates_the_target_end():
    pool = EncodedPool(prompt_ids=[[1, 7, 8]], target_ids=[[3, 4, 5, 6, 2]])
    batch = TrainCollator(pad_token_id=0, max_length=5)(list(EncodedSubset(pool, [0])))
    assert batch["input_ids"].tolist() == [[1, 7, 8, 3, 4]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [3, 4]]


def test_generation_collator_left_pads_prompts():
    pool = EncodedPool(prompt_ids=[[1, 7, 8], [1, 9]], target_ids=[[2], [2]])
    batch = GenerationCollator(pad_token_id=0, max_prompt_length=8)(list(EncodedSubset(pool, [0, 1])))
    assert batch["input_ids"].tolist() == [[1, 7, 8], [0, 1, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


def _batches(lengths, seed, **kwargs):
    from p3bench.models.sampler import LengthGroupedBatchSampler

    return list(LengthGroupedBatchSampler(lengths, 4, torch.Generator().manual_seed(seed), 3, **kwargs))


def test_length_grouped_batches_cover_every_position_once_and_group_lengths():
    lengths = [(i * 37) % 50 + 1 for i in range(103)]
    batches = _batches(lengths, 0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103)) and len(batches) == 26
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches of 4 from lengths 1..50 spread ~25 on average
    assert _batches(lengths, 0) == batches and _batches(lengths, 1) != batches


def test_length_grouped_batches_are_sharded_across_processes():
    lengths = list(range(1, 103))
    shards = [_batches(lengths, 5, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 13  # 26 batches split evenly, none dropped here
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen)) == 102
    single = _batches(lengths, 5)
    assert shards[0] == single[0::2] and shards[1] == single[1::2]
