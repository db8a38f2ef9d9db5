"""Difficulty scorers against simple references: one batched, length-bucketed pass gives the same numbers
as scoring each example (and each solution line) on its own."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.models.collate import EncodedSubset, TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring import SCORERS, ScoringItems, build_scorer
from p3bench.scoring.base import length_buckets
from p3bench.scoring.steps import token_line_ids

ARCH = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
MAX_LENGTH = 96


@pytest.fixture(scope="module")
def setup():
    splits = load_synthetic_math(n_train=60, n_val=10, n_test=10, seed=5)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3), evaluator=None)
    encoded = encode_examples(splits.train, tokenizer)
    items = ScoringItems(splits.train, encoded, list(range(len(splits.train))), tokenizer, MAX_LENGTH)
    return splits, tokenizer, module, encoded, items


def one_example_batch(encoded, tokenizer, index):
    return TrainCollator(tokenizer.pad_token_id, MAX_LENGTH)([EncodedSubset(encoded, [index])[0]])


def test_length_buckets_cover_every_position_once_longest_first():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = length_buckets(lengths, 3)
    assert sorted(p for b in batches for p in b) == list(range(len(lengths)))
    flat = [lengths[p] for b in batches for p in b]
    assert flat == sorted(flat, reverse=True)
    with pytest.raises(ValueError, match="batch_size=0"):
        length_buckets(lengths, 0)


def test_likelihood_is_the_geometric_mean_target_probability_of_each_example(setup):
    splits, tokenizer, module, encoded, items = setup
    result = build_scorer("likelihood", batch_size=7, progress=False).score(module, items, want_features=True)
    assert result.scores.shape == (len(items),) and result.features.shape == (len(items), ARCH["hidden_size"])
    module.eval()
    expected_tokens = 0
    for i in range(len(items)):
        batch = one_example_batch(encoded, tokenizer, i)
        with torch.no_grad():
            out = module.model(input_ids=batch["input_ids"], output_hidden_states=True)
            logprobs = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
        labels = batch["labels"][0, 1:]
        mask = labels != -100
        token_logprobs = logprobs[mask].gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
        assert result.scores[i] == pytest.approx(math.exp(token_logprobs.mean().item()), rel=1e-5)
        target_positions = batch["labels"][0] != -100
        pooled = out.hidden_states[-1][0][target_positions].mean(dim=0)
        np.testing.assert_allclose(result.features[i], pooled.numpy(), rtol=1e-4, atol=1e-5)
        expected_tokens += int(batch["attention_mask"].sum())
    assert result.forward_tokens == expected_tokens
    np.testing.assert_allclose(result.difficulty, 1.0 - result.scores)


def test_token_line_ids_follow_the_lines_of_the_text():
    text = "a = 1\n\nb = 2\nc"
    # tokens: "a", " = 1", "\n\n", "b = 2", "\n", "c"
    offsets = [(0, 1), (1, 5), (5, 7), (7, 12), (12, 13), (13, 14)]
    assert token_line_ids(text, offsets) == [0, 0, 0, 1, 1, 2]
    # a token that starts with a newline belongs to the line of its first other character
    assert token_line_ids("x\ny", [(0, 1), (1, 3)]) == [0, 1]


def test_step_score_equals_scoring_each_line_in_its_own_pass(setup):
    """The public code's reference: one forward pass per solution line, given the prompt and the lines
    before it; the score is the mean over lines of each line's geometric-mean token probability."""
    splits, tokenizer, module, encoded, items = setup
    scorer = build_scorer("steps", batch_size=5, progress=False)
    result = scorer.score(module, items)
    assert result.diagnostics["no_offsets"] == 0
    line_ids, _ = scorer.line_ids(items)
    module.eval()
    for i in range(0, len(items), 3):
        prompt, target = encoded.prompt_ids[i], encoded.target_ids[i]
        lines = line_ids[i]
        assert len(lines) == len(target) and lines == sorted(lines)
        n_lines = splits.train[i].target.strip("\n").count("\n") - splits.train[i].target.count("\n\n") + 1
        assert lines[-1] + 1 == n_lines
        # the pass sees prompt + target cut at MAX_LENGTH: score what it sees
        keep = MAX_LENGTH - len(prompt)
        target, lines = target[:keep], lines[:keep]
        per_line = []
        for line in sorted(set(lines)):
            start = lines.index(line)
            end = len(lines) - lines[::-1].index(line)
            context = prompt + target[:start]
            ids = torch.tensor([context + target[start:end]])
            with torch.no_grad():
                logprobs = torch.log_softmax(module.model(input_ids=ids).logits[0].float(), dim=-1)
            positions = range(len(context) - 1, len(context) - 1 + end - start)
            tokens = target[start:end]
            mean = sum(logprobs[p, t].item() for p, t in zip(positions, tokens, strict=True)) / len(tokens)
            per_line.append(math.exp(mean))
        assert result.scores[i] == pytest.approx(sum(per_line) / len(per_line), rel=1e-4)


def test_pass_rate_counts_correct_samples_is_seeded_and_leaves_the_training_rng_alone(setup):
    splits, tokenizer, module, encoded, items = setup
    subset = ScoringItems(splits.train, encoded, list(range(8)), tokenizer, MAX_LENGTH)
    module.max_new_tokens = 6
    always = build_scorer("pass_rate", k=3, checker=lambda text, ex: True, progress=False)
    never = build_scorer("pass_rate", k=3, checker=lambda text, ex: False, progress=False)
    assert always.score(module, subset).scores.tolist() == [1.0] * 8
    assert never.score(module, subset).scores.tolist() == [0.0] * 8

    def has_digit(text, ex):
        return any(c.isdigit() for c in text)

    torch.manual_seed(123)
    first = build_scorer("pass_rate", k=4, seed=1, checker=has_digit, progress=False).score(module, subset)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.testing.assert_close(after, expected_after)
    second = build_scorer("pass_rate", k=4, seed=1, checker=has_digit, progress=False).score(module, subset)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert set(first.scores.tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    prompt_tokens = sum(len(encoded.prompt_ids[i]) for i in range(8))
    assert 4 * prompt_tokens < first.forward_tokens <= 4 * (prompt_tokens + 6 * 8)


def test_pass_rate_uses_the_run_evaluator_and_refuses_without_one(setup):
    splits, tokenizer, module, encoded, items = setup
    subset = ScoringItems(splits.train, encoded, [0, 1], tokenizer, MAX_LENGTH)
    module.evaluator = None
    with pytest.raises(ValueError, match="needs an answer checker"):
        build_scorer("pass_rate", k=1, progress=False).score(module, subset)
    module.evaluator = lambda text, ex: True
    try:
        assert build_scorer("pass_rate", k=1, progress=False).score(module, subset).scores.tolist() == [
            1.0,
            1.0,
        ]
    finally:
        module.evaluator = None


def test_level_scores_order_examples_by_their_level(setup):
    splits, tokenizer, module, encoded, items = setup
    result = build_scorer("level").score(None, items)
    levels = np.array([ex.meta["level"] for ex in splits.train])
    order = np.argsort(-result.scores)
    assert np.all(np.diff(levels[order]) >= 0)
    assert result.forward_tokens == 0
    assert "uniform" in SCORERS and "pass_rate" in SCORERS


def test_length_buckets_respect_a_token_budget():
    lengths = [50, 40, 30, 20, 10, 5]
    batches = length_buckets(lengths, batch_size=4, max_tokens=100)
    assert sorted(p for b in batches for p in b) == list(range(6))
    assert all(lengths[b[0]] * len(b) <= 100 or len(b) == 1 for b in batches)
    assert max(len(b) for b in batches) <= 4
    assert length_buckets([500], batch_size=4, max_tokens=100) == [[0]]  # one example always fits


def test_examples_with_no_target_left_are_scored_hardest(setup):
    splits, tokenizer, module, encoded, items = setup
    longest_prompt = max(len(p) for p in encoded.prompt_ids)
    cut = ScoringItems(splits.train, encoded, items.indices, tokenizer, max_length=longest_prompt)
    no_target = [i for i in items.indices if len(encoded.prompt_ids[i]) >= longest_prompt]
    assert no_target
    for name in ("likelihood", "steps"):
        result = build_scorer(name, progress=False).score(module, cut, want_features=name == "likelihood")
        assert all(result.scores[i] == 0.0 for i in no_target), name
        assert np.all(np.isfinite(result.features)) if result.features is not None else True
    assert build_scorer("likelihood", progress=False).score(module, cut).diagnostics["no_target"] == len(
        no_target
    )


def test_pass_rate_samples_are_seeded_by_the_round(setup):
    splits, tokenizer, module, encoded, items = setup
    subset = ScoringItems(splits.train, encoded, list(range(10)), tokenizer, MAX_LENGTH)
    module.max_new_tokens = 6
    scorer = build_scorer("pass_rate", k=4, seed=1, checker=lambda t, e: len(t) % 2 == 0, progress=False)
    first = scorer.score(module, subset, round=3).scores
    again = build_scorer("pass_rate", k=4, seed=1, checker=lambda t, e: len(t) % 2 == 0, progress=False)
    np.testing.assert_array_equal(first, again.score(module, subset, round=3).scores)  # a resumed round
    others = [scorer.score(module, subset, round=r).scores for r in (4, 5)]
    assert any(not np.array_equal(first, o) for o in others)
