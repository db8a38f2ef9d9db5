"""What a run's test phase reports beyond greedy accuracy: per-level means of any numeric detail the
evaluator gives (test-case average for code), and pass@k from sampled answers (unbiased estimator)."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.execution.metrics import pass_at_k
from p3bench.methods.simple import RandomSubset
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM, accuracy_by_level
from p3bench.models.tokenizer import train_local_tokenizer
from tests.test_contract import ARCH


def test_numeric_details_are_averaged_overall_and_per_level():
    records = [
        {"id": "a", "level": 1, "correct": True, "test_case_average": 1.0, "generated": "x"},
        {"id": "b", "level": 1, "correct": False, "test_case_average": 0.5, "generated": "y"},
        {"id": "c", "level": 2, "correct": False, "test_case_average": 0.0, "generated": "z"},
    ]
    metrics = accuracy_by_level(records)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["accuracy_level_1"] == 0.5
    assert metrics["test_case_average"] == pytest.approx(0.5)
    assert metrics["test_case_average_level_1"] == 0.75 and metrics["test_case_average_level_2"] == 0.0
    assert metrics["n_examples"] == 3 and "generated" not in metrics


def test_sampled_answers_give_unbiased_pass_at_k_through_the_trainer():
    splits = load_synthetic_math(n_train=40, n_val=8, n_test=12, seed=2)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)

    def evaluator(text: str, example) -> bool:
        return len(text) % 3 == 0  # a deterministic verdict on the sampled text

    sampling = {"n": 5, "temperature": 1.0, "top_p": 1.0, "pass_at_k": [1, 2, 5, 10]}
    results = []
    for _ in range(2):
        module = SelectionLM(
            model,
            tokenizer,
            partial(torch.optim.AdamW, lr=1e-3),
            evaluator=evaluator,
            max_new_tokens=6,
            test_sampling=sampling,
            seed=3,
        )
        dm = RandomSubset(splits=splits, tokenizer=tokenizer, budget=0.5, eval_batch_size=5, max_length=96)
        trainer = pl.Trainer(
            logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
        )
        metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
        results.append((metrics, module.test_records))
    (metrics, records), (_, again) = results
    assert module.pass_at == [1, 2, 5]  # k > n is not reported
    for record in records:
        c = record["samples_correct"]
        assert record["pass@1"] == pytest.approx(c / 5)
        assert record["pass@5"] == (1.0 if c else 0.0)
        assert record["pass@2"] == pytest.approx(pass_at_k(5, c, 2))
    assert [r["samples_correct"] for r in records] == [r["samples_correct"] for r in again]  # seeded
    assert 0 < sum(r["samples_correct"] for r in records) < 5 * len(records)
    mean = sum(r["pass@2"] for r in records) / len(records)
    assert metrics["test/pass@2"] == pytest.approx(mean, rel=1e-6)
    assert "test/pass@2_level_1" in metrics and "test/pass@10" not in metrics
