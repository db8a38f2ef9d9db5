"""The MATH and GSM8K adapters on the real datasets in ../shared/data (skipped when that folder is absent),
and the acceptance check that their gold answers verify against themselves through the answer checkers."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from p3bench.data import load_dataset_splits
from p3bench.data.records import read_records
from p3bench.eval.answers import EVALUATORS, gsm8k_answer, last_boxed, math_answers_equal, numbers_equal

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()
MATH_TRAIN = SHARED_DATA / "math" / "train.jsonl"
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (a fresh clone)"),
]

# MATH train, from ../shared/data/math/SOURCE.md
MATH_LEVELS = {1: 564, 2: 1348, 3: 1592, 4: 1690, 5: 2304, None: 2}
MATH_TYPES = {
    "Algebra": 1744,
    "Intermediate Algebra": 1295,
    "Prealgebra": 1205,
    "Geometry": 870,
    "Number Theory": 869,
    "Counting & Probability": 771,
    "Precalculus": 746,
}
# The two MATH train solutions whose final box is empty (\boxed{}), a quirk of the original data.
MATH_EMPTY_BOX = {"train/number_theory/7115.json", "train/number_theory/7117.json"}


@pytest.fixture(scope="module")
def math_splits():
    return load_dataset_splits("math", data_files=str(MATH_TRAIN))


@pytest.fixture(scope="module")
def gsm8k_splits():
    return load_dataset_splits("gsm8k", data_files=str(GSM8K_TRAIN))


def test_math_adapter(math_splits):
    splits = math_splits
    everything = splits.train + splits.validation + splits.test
    assert splits.task == "qa" and splits.info["n_records"] == 7500 and splits.info["n_skipped"] == 0
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6000, 500, 1000)
    assert Counter(ex.meta["level"] for ex in everything) == MATH_LEVELS
    assert Counter(ex.meta["type"] for ex in everything) == MATH_TYPES
    assert len({ex.id for ex in everything}) == 7500 and everything[0].id.startswith("train/")
    assert {ex.id for ex in everything if ex.answer is None} == MATH_EMPTY_BOX
    assert all(ex.answer is not None for ex in splits.validation + splits.test)
    assert all(ex.prompt.endswith("\n") and "\\boxed" in ex.target for ex in everything)
    # Stratified by level: the test split's level shares follow the pool's within one example.
    levels = Counter(ex.meta["level"] for ex in splits.test)
    for level in range(1, 6):
        assert abs(levels[level] - 1000 * MATH_LEVELS[level] / 7498) <= 1
    again = load_dataset_splits("math", data_files=str(MATH_TRAIN))
    assert [ex.id for ex in again.test] == [ex.id for ex in splits.test]


def test_math_filters_and_given_test(tmp_path):
    splits = load_dataset_splits(
        "math",
        data_files=str(MATH_TRAIN),
        levels=[1, 2],
        types="prealgebra",
        val_size=0.1,
        test_size=0.2,
        max_train=200,
    )
    everything = splits.train + splits.validation + splits.test
    assert {ex.meta["level"] for ex in everything} == {1, 2}
    assert {ex.meta["type"] for ex in everything} == {"Prealgebra"}
    assert len(splits.train) == 200
    given = load_dataset_splits(
        "math", data_files={"train": str(MATH_TRAIN), "test": str(GSM8K_TRAIN)}, skip_bad=True, test_size=10
    )
    assert given.test == [] and given.info["test_from"] == "given" and given.info["n_skipped"] == 7473


def test_gsm8k_adapter(gsm8k_splits):
    splits = gsm8k_splits
    everything = splits.train + splits.validation + splits.test
    assert splits.task == "qa" and splits.info["n_records"] == 7473
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (5973, 500, 1000)
    assert len({ex.id for ex in everything}) == 7473
    for ex in everything:
        assert "<<" not in ex.target and ">>" not in ex.target
        assert ex.target.rsplit("\n", 1)[-1].startswith("#### ")
        assert gsm8k_answer(ex.target) == ex.answer and "," not in ex.answer
        assert ex.meta["level"] is None and ex.meta["n_steps"] >= 1
    first = next(ex for ex in everything if ex.id == "gsm8k-0")
    assert first.target == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    )


def test_math_gold_answers_verify_against_themselves(math_splits):
    """Acceptance: > 99% of MATH train solutions yield an answer that checks equal to itself.

    The symbolic path (math-verify, fast path off) runs on a deterministic sample of 2000; the full 7500
    were measured by hand (see the data-layer report). The evaluator path (fast path on) runs on all.
    """
    records, _ = read_records(MATH_TRAIN, required=("problem", "solution"))
    sample = sorted(random.Random(0).sample(range(len(records)), 2000))
    failures = []
    start = time.perf_counter()
    for index in sample:
        answer = last_boxed(records[index]["solution"])
        if not math_answers_equal(answer, answer, fast_path=False):
            failures.append((records[index]["unique_id"], answer))
    elapsed = time.perf_counter() - start
    rate = 1 - len(failures) / len(sample)
    print(
        f"MATH self-check through math-verify: {rate:.4%} of {len(sample)} in {elapsed:.1f} s; failures: {failures}"
    )
    assert rate > 0.99

    evaluate = EVALUATORS.get("math")
    everything = math_splits.train + math_splits.validation + math_splits.test
    passed = sum(evaluate(ex.target, ex) for ex in everything)
    print(f"MATH evaluator on the gold solutions: {passed} of {len(everything)}")
    assert passed == len(everything) - len(MATH_EMPTY_BOX)


def test_gsm8k_gold_answers_verify_against_themselves(gsm8k_splits):
    records, _ = read_records(GSM8K_TRAIN, required=("question", "answer"))
    numbers = [gsm8k_answer(record["answer"]) for record in records]
    assert all(numbers_equal(number, number) for number in numbers)
    evaluate = EVALUATORS.get("gsm8k")
    everything = gsm8k_splits.train + gsm8k_splits.validation + gsm8k_splits.test
    assert all(evaluate(ex.target, ex) for ex in everything)
