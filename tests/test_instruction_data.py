"""The instruction adapters (alpaca, dolly, gsm8k_instruct): the real local files through the shipped
configs (skipped when ../shared/data is absent), seeded splits and stable ids, the Alpaca prompt template,
bad records as one-line errors, and a loss that covers the response only, through the real collator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from p3bench.data import load_dataset_splits
from p3bench.data.instruction import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    alpaca_prompt,
    content_id,
)
from p3bench.errors import ConfigError, DataError
from p3bench.models.collate import IGNORE_INDEX, EncodedSubset, TrainCollator, encode_examples
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.preflight import load_splits

from .conftest import SHARED_DATA, compose_config, requires_shared_data

# ../shared/data/dolly/SOURCE.md
DOLLY_CATEGORIES = {
    "open_qa": 943,
    "classification": 641,
    "general_qa": 483,
    "brainstorming": 386,
    "information_extraction": 176,
    "closed_qa": 147,
    "summarization": 111,
    "creative_writing": 109,
}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def toy_records(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Name a colour number {i}.",
            "input": f"hint {i}" if i % 3 == 0 else "",
            "output": f"Colour {i} is {'red' if i % 2 else 'blue'}.",
        }
        for i in range(n)
    ]


# --- the real files through the shipped configs -------------------------------------------------------------
@pytest.mark.shared_data
@requires_shared_data
def test_alpaca_config_reads_the_local_file_and_skips_its_empty_responses(tmp_path: Path, cache_dir: Path):
    splits = load_splits(compose_config(["dataset=alpaca"], tmp_path, cache_dir))
    assert splits.task == "instruction" and splits.name == "alpaca"
    # 9,229 records, 4 of them with an empty response (skip_bad: true in conf/dataset/alpaca.yaml)
    assert splits.info["n_records"] == 9225 and splits.info["n_skipped"] == 4
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (8825, 200, 200)
    everything = splits.train + splits.validation + splits.test
    assert len({ex.id for ex in everything}) == 9225
    assert sum(ex.meta["has_input"] for ex in everything) == splits.info["n_with_input"] == 3665
    assert all(ex.answer is None and ex.target and ex.prompt.endswith("### Response:\n") for ex in everything)
    first = json.loads((SHARED_DATA / "alpaca" / "random_9k.json").read_text())[0]
    example = next(ex for ex in everything if ex.meta["instruction"] == first["instruction"].strip())
    assert example.id == content_id("alpaca", first["instruction"].strip(), "", first["output"].strip())
    assert example.target == first["output"].strip()
    assert splits.info["response_evaluation"]["similarity_embedder"] == "minilm"
    assert splits.info["response_evaluation"]["judge"]["model"] is None


@pytest.mark.shared_data
@requires_shared_data
def test_alpaca_without_skip_bad_names_the_first_empty_response():
    with pytest.raises(DataError) as info:
        load_dataset_splits("alpaca", data_files=str(SHARED_DATA / "alpaca" / "random_9k.json"))
    message = str(info.value)
    assert "\n" not in message and "random_9k.json index 1461" in message
    assert "'output' is empty" in message and "skip_bad=true" in message


@pytest.mark.shared_data
@requires_shared_data
def test_dolly_config_keeps_the_category_as_domain_and_stratifies_by_it(tmp_path: Path, cache_dir: Path):
    splits = load_splits(compose_config(["dataset=dolly"], tmp_path, cache_dir))
    everything = splits.train + splits.validation + splits.test
    assert splits.info["n_records"] == 2996 and splits.info["n_skipped"] == 0
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (2496, 200, 300)
    assert Counter(ex.meta["domain"] for ex in everything) == DOLLY_CATEGORIES
    # 300 test records in proportion to the categories (largest remainders): within one of 300 * share
    test = Counter(ex.meta["domain"] for ex in splits.test)
    for category, count in DOLLY_CATEGORIES.items():
        assert abs(test[category] - 300 * count / 2996) < 1
    assert len({ex.id for ex in everything}) == 2996


@pytest.mark.shared_data
@requires_shared_data
def test_gsm8k_instruct_is_gsm8k_with_the_alpaca_prompt_and_no_answer(tmp_path: Path, cache_dir: Path):
    params = {"data_files": str(SHARED_DATA / "gsm8k" / "train.jsonl"), "max_train": 50}
    qa = load_dataset_splits("gsm8k", **params)
    splits = load_splits(
        compose_config(["dataset=gsm8k_instruct", "dataset.params.max_train=50"], tmp_path, cache_dir)
    )
    assert splits.task == "instruction" and splits.name == "gsm8k_instruct"
    for mine, theirs in zip(
        splits.train + splits.validation + splits.test, qa.train + qa.validation + qa.test, strict=True
    ):
        assert mine.id == theirs.id and mine.target == theirs.target and "<<" not in mine.target
        assert mine.prompt == alpaca_prompt(theirs.prompt.strip()) and mine.answer is None
        assert mine.target.rsplit("\n", 1)[-1].startswith("####")


# --- template, ids, splits ----------------------------------------------------------------------------------
def test_prompt_template_with_and_without_input():
    assert alpaca_prompt("Add 2 and 3.") == ALPACA_PROMPT.format(instruction="Add 2 and 3.")
    assert alpaca_prompt("Add 2 and 3.", "   ") == alpaca_prompt("Add 2 and 3.")
    with_input = alpaca_prompt("Add them.", "2 and 3")
    assert with_input == ALPACA_PROMPT_WITH_INPUT.format(instruction="Add them.", input="2 and 3")
    assert with_input.index("### Instruction:\nAdd them.") < with_input.index("### Input:\n2 and 3")
    assert with_input.endswith("### Input:\n2 and 3\n\n### Response:\n")
    # braces in the text are text, not template fields
    assert "{x}" in alpaca_prompt("Print {x}.", "{y}")


def test_splits_are_seeded_and_max_train_caps_the_pool_only(tmp_path: Path):
    path = write_records(tmp_path / "toy.json", toy_records(60))

    def load(**options):
        return load_dataset_splits("alpaca", data_files=str(path), val_size=6, test_size=0.2, **options)

    a, b, other = load(seed=3), load(seed=3), load(seed=4)
    ids = lambda s: [[ex.id for ex in part] for part in (s.train, s.validation, s.test)]  # noqa: E731
    assert ids(a) == ids(b)
    assert (len(a.train), len(a.validation), len(a.test)) == (42, 6, 12)
    assert ids(a)[2] != ids(other)[2]
    capped = load(seed=3, max_train=10)
    assert ids(capped)[1:] == ids(a)[1:] and set(ids(capped)[0]) < set(ids(a)[0]) and len(capped.train) == 10
    assert capped.train == [ex for ex in a.train if ex.id in set(ids(capped)[0])]  # pool order kept


def test_ids_are_content_hashes_that_survive_skipped_records_and_number_repeats(tmp_path: Path):
    records = toy_records(5)
    clean = load_dataset_splits(
        "alpaca", data_files=str(write_records(tmp_path / "a.json", records)), val_size=0, test_size=0
    )
    with_bad = [{"instruction": "x", "input": "", "output": "  "}, *records, records[2]]
    splits = load_dataset_splits(
        "alpaca",
        data_files=str(write_records(tmp_path / "b.json", with_bad)),
        val_size=0,
        test_size=0,
        skip_bad=True,
    )
    assert splits.info["n_skipped"] == 1
    assert [ex.id for ex in splits.train] == [ex.id for ex in clean.train] + [clean.train[2].id + "-2"]
    r = records[3]
    assert clean.train[3].id == content_id("alpaca", r["instruction"], r["input"], r["output"])
    assert clean.train[3].meta == {"instruction": r["instruction"], "input": r["input"], "has_input": True}


def test_a_given_test_file_is_the_test_split(tmp_path: Path):
    train = write_records(tmp_path / "train.json", toy_records(20))
    test = write_records(tmp_path / "test.jsonl", [])
    test.write_text("\n".join(json.dumps(r) for r in toy_records(23)[20:]) + "\n")
    splits = load_dataset_splits(
        "dolly",
        data_files={"train": str(train), "test": str(test)},
        val_size=4,
        domain_field=None,
    )
    assert len(splits.test) == 3 and all(ex.id.startswith("dolly-test-") for ex in splits.test)
    assert (len(splits.train), len(splits.validation)) == (16, 4) and splits.info["test_from"] == "given"


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"instruction": "", "input": "", "output": "y"}, "'instruction' is empty"),
        ({"instruction": "x", "input": "", "output": 3}, "'output' is a int: expected a string"),
        ({"instruction": "x", "input": ["a"], "output": "y"}, "'input' is a list"),
        ({"instruction": "x", "input": ""}, "missing required field 'output'"),
    ],
)
def test_a_bad_record_is_one_line_naming_file_and_index(tmp_path: Path, record: dict, expected: str):
    path = write_records(tmp_path / "bad.json", [*toy_records(3), record])
    with pytest.raises(DataError) as info:
        load_dataset_splits("alpaca", data_files=str(path), val_size=0, test_size=0)
    message = str(info.value)
    assert "\n" not in message and f"{path} index 3" in message and expected in message


def test_over_length_records_are_bad_and_can_be_skipped(tmp_path: Path):
    records = toy_records(4)
    records[1]["output"] = "long " * 100
    path = write_records(tmp_path / "long.json", records)
    with pytest.raises(DataError, match=r"index 1: prompt and response are \d+ characters: expected at most"):
        load_dataset_splits("alpaca", data_files=str(path), val_size=0, test_size=0, max_chars=300)
    splits = load_dataset_splits(
        "alpaca", data_files=str(path), val_size=0, test_size=0, max_chars=300, skip_bad=True
    )
    assert len(splits.train) == 3 and splits.info["n_skipped"] == 1
    with pytest.raises(ConfigError, match=r"dataset\.params\.max_chars=0 is invalid"):
        load_dataset_splits("alpaca", data_files=str(path), max_chars=0)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"similarity_embedder": "bge"}, "dataset.params.similarity_embedder='bge' is not an embedder"),
        ({"judge": {"modle": "x"}}, "dataset.params.judge.modle is not a judge setting"),
        ({"judge": {"model": "x", "batch_size": 0}}, "dataset.params.judge.batch_size=0 is invalid"),
        ({"judge": {"dtype": "int8"}}, "dataset.params.judge.dtype='int8' is invalid"),
        ({"output_field": ""}, "dataset.params.output_field='' is not a field name"),
    ],
)
def test_bad_settings_are_one_line_before_any_record_is_read(tmp_path: Path, options: dict, key: str):
    with pytest.raises(ConfigError) as info:
        load_dataset_splits("alpaca", data_files=str(tmp_path / "absent.json"), **options)
    assert "\n" not in str(info.value) and key in str(info.value)


# --- the loss covers the response only ----------------------------------------------------------------------
def test_loss_mask_covers_the_response_and_eos_only_through_the_real_collator(tmp_path: Path):
    path = write_records(tmp_path / "toy.json", toy_records(12))
    splits = load_dataset_splits("alpaca", data_files=str(path), val_size=0, test_size=0)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pool = encode_examples(splits.train, tokenizer)
    items = EncodedSubset(pool, range(len(splits.train)))
    batch = TrainCollator(tokenizer.pad_token_id, max_length=512)([items[i] for i in range(len(items))])
    for row, example in enumerate(splits.train):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(kept[:-1]) == example.target
        n_prompt = len(pool.prompt_ids[row])
        assert (labels[:n_prompt] == IGNORE_INDEX).all()
        assert tokenizer.decode(batch["input_ids"][row, 1:n_prompt].tolist()) == example.prompt
