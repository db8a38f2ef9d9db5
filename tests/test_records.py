"""Reading raw records (JSON Lines / JSON), their one-line errors, and deterministic stratified splits."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from p3bench.data.example import Example
from p3bench.data.records import (
    assemble_splits,
    load_hub_records,
    make_splits,
    read_records,
    read_source,
    subsample,
)
from p3bench.errors import ConfigError, DataError

REQUIRED = ("problem", "solution", "level", "type")


def record(i: int, level: int = 1) -> dict:
    return {"problem": f"p{i}", "solution": f"s{i}", "level": f"Level {level}", "type": "Algebra"}


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_jsonl_and_ignores_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(record(0)), "", "   ", json.dumps(record(1))])
    records, skipped = read_records(path, required=REQUIRED)
    assert [r["problem"] for r in records] == ["p0", "p1"]
    assert skipped == 0


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(record(0)), "", '{"problem": "x", oops}'])
    with pytest.raises(DataError) as info:
        read_records(path, required=REQUIRED)
    message = str(info.value)
    assert f"{path} line 3" in message and "malformed JSON" in message
    assert "\n" not in message


def test_missing_field_names_file_line_and_field(tmp_path):
    bad = record(1)
    del bad["solution"]
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(record(0)), json.dumps(bad)])
    with pytest.raises(
        DataError, match=r"train\.jsonl line 2: record is missing required field 'solution'"
    ) as info:
        read_records(path, required=REQUIRED)
    assert "expected fields: problem, solution, level, type" in str(info.value)


def test_null_field_and_non_object_records_are_bad(tmp_path):
    nulled = {**record(0), "level": None}
    path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(nulled)])
    with pytest.raises(DataError, match="line 1: record has null in required field 'level'"):
        read_records(path, required=REQUIRED)
    path = write_jsonl(tmp_path / "b.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match="line 1: record is a JSON list, not an object"):
        read_records(path, required=REQUIRED)


def test_json_list_errors_name_the_index(tmp_path):
    bad = record(1)
    del bad["problem"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([record(0), bad, record(2)], indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.json index 1: record is missing required field 'problem'"):
        read_records(path, required=REQUIRED)
    records, skipped = read_records(path, required=REQUIRED, skip_bad=True)
    assert [r["problem"] for r in records] == ["p0", "p2"] and skipped == 1


def test_json_file_holding_json_lines_and_bad_json(tmp_path):
    path = write_jsonl(tmp_path / "misnamed.json", [json.dumps(record(0)), json.dumps(record(1))])
    assert len(read_records(path, required=REQUIRED)[0]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[{"problem": 1},\n  {oops}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json line 2: malformed JSON"):
        read_records(broken, required=REQUIRED)
    single = tmp_path / "single.json"
    single.write_text(json.dumps(record(0), indent=2), encoding="utf-8")
    with pytest.raises(DataError, match="holds a JSON dict: expected a JSON list of objects"):
        read_records(single, required=REQUIRED)


def test_skip_bad_counts_and_warns_once(tmp_path, caplog):
    bad = record(2)
    del bad["type"]
    lines = [json.dumps(record(0)), "not json", json.dumps(bad), json.dumps(record(3)), "{"]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="p3bench.data.records"):
        records, skipped = read_records(path, required=REQUIRED, skip_bad=True)
    assert [r["problem"] for r in records] == ["p0", "p3"]
    assert skipped == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 bad record(s)" in warnings[0].getMessage()
    assert "line 2" in warnings[0].getMessage()


def test_validate_callback_is_a_bad_record(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl", [json.dumps(record(0)), json.dumps({**record(1), "problem": 7})]
    )

    def validate(rec):
        return None if isinstance(rec["problem"], str) else "field 'problem' is not a string"

    with pytest.raises(DataError, match="line 2: field 'problem' is not a string"):
        read_records(path, required=REQUIRED, validate=validate)
    assert read_records(path, required=REQUIRED, validate=validate, skip_bad=True)[1] == 1


def test_missing_file_wrong_suffix_and_empty_list(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        read_records(missing, required=REQUIRED)
    with pytest.raises(DataError, match="not found"):  # checked before any file is read
        read_records([write_jsonl(tmp_path / "ok.jsonl", ["{"]), missing], required=REQUIRED)
    csv = tmp_path / "train.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="suffix '.csv': expected one of .jsonl, .json"):
        read_records(csv, required=REQUIRED)
    with pytest.raises(ConfigError, match="empty list"):
        read_records([], required=REQUIRED)


def test_lists_and_globs_keep_file_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [json.dumps(record(1))])
    write_jsonl(tmp_path / "a.jsonl", [json.dumps(record(0))])
    records, _ = read_records([tmp_path / "b.jsonl", str(tmp_path / "a.jsonl")], required=REQUIRED)
    assert [r["problem"] for r in records] == ["p1", "p0"]
    records, _ = read_records(str(tmp_path / "*.jsonl"), required=REQUIRED)
    assert [r["problem"] for r in records] == ["p0", "p1"]
    with pytest.raises(DataError, match="matches no file"):
        read_records(str(tmp_path / "*.json"), required=REQUIRED)


def test_hub_id_offline_is_one_line_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_hub_records("no-such-user/no-such-dataset", "train", None, REQUIRED, False)
    message = str(info.value)
    assert "'no-such-user/no-such-dataset'" in message and "data_files=" in message
    assert "\n" not in message


def test_read_source_needs_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match="neither of data_files and hub_id"):
        read_source("math", required=REQUIRED)
    with pytest.raises(ConfigError, match="both of data_files and hub_id"):
        read_source("math", data_files="x.jsonl", hub_id="a/b", required=REQUIRED)
    with pytest.raises(ConfigError, match="expected 'train' and optionally"):
        read_source("math", data_files={"dev": "x.jsonl"}, required=REQUIRED)
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(record(i)) for i in range(3)])
    test = write_jsonl(tmp_path / "test.jsonl", [json.dumps(record(9))])
    sources, skipped, _ = read_source("math", data_files={"train": train, "test": test}, required=REQUIRED)
    assert sorted(sources) == ["test", "train"] and len(sources["train"]) == 3 and skipped == 0


# ------------------------------------------------------------------------------------------------ splits


def items(n_per_level: dict[int, int]) -> list[dict]:
    out = []
    for level, count in n_per_level.items():
        out += [{"id": f"{level}-{i}", "level": level} for i in range(count)]
    return out


def ids(rows) -> list[str]:
    return [row["id"] for row in rows]


def test_splits_are_deterministic_disjoint_and_exact():
    pool = items({1: 100, 2: 200, 3: 300, 4: 400})
    first = make_splits(pool, val_size=50, test_size=0.1, seed=3, stratify_key=lambda r: r["level"])
    again = make_splits(pool, val_size=50, test_size=0.1, seed=3, stratify_key=lambda r: r["level"])
    other = make_splits(pool, val_size=50, test_size=0.1, seed=4, stratify_key=lambda r: r["level"])
    assert [ids(split) for split in first] == [ids(split) for split in again]
    assert [ids(split) for split in first] != [ids(split) for split in other]
    train, val, test = first
    assert (len(train), len(val), len(test)) == (850, 50, 100)
    assert not (set(ids(train)) & set(ids(val))) and not (set(ids(train)) & set(ids(test)))
    assert not (set(ids(val)) & set(ids(test)))
    assert set(ids(train)) | set(ids(val)) | set(ids(test)) == set(ids(pool))
    position = {row["id"]: i for i, row in enumerate(pool)}
    for split in first:  # each split keeps the input order
        assert [position[i] for i in ids(split)] == sorted(position[i] for i in ids(split))


def test_splits_are_stratified():
    pool = items({1: 100, 2: 200, 3: 300, 4: 400})
    _, val, test = make_splits(pool, val_size=100, test_size=200, seed=0, stratify_key=lambda r: r["level"])
    assert Counter(r["level"] for r in test) == {1: 20, 2: 40, 3: 60, 4: 80}
    assert Counter(r["level"] for r in val) == {1: 10, 2: 20, 3: 30, 4: 40}
    # Uneven quotas still give exact totals, each stratum within one of its share.
    _, val, test = make_splits(pool, val_size=7, test_size=13, seed=0, stratify_key=lambda r: r["level"])
    assert len(val) == 7 and len(test) == 13
    for level, size in {1: 100, 2: 200, 3: 300, 4: 400}.items():
        assert abs(sum(r["level"] == level for r in test) - 13 * size / 1000) < 1


def test_splits_without_key_and_with_none_keys():
    pool = items({1: 10}) + [{"id": f"none-{i}", "level": None} for i in range(10)]
    train, val, test = make_splits(pool, val_size=0, test_size=0.5, seed=1, stratify_key=lambda r: r["level"])
    assert len(val) == 0 and len(test) == 10 and Counter(r["level"] for r in test) == {1: 5, None: 5}
    train, val, test = make_splits(pool, val_size=2, test_size=2, seed=1, stratify_key=None)
    assert (len(train), len(val), len(test)) == (16, 2, 2)


@pytest.mark.parametrize(
    ("val_size", "test_size", "match"),
    [
        (True, 10, "val_size=True is not a number"),
        ("10", 10, "val_size='10' is not a number"),
        (-1, 10, "val_size=-1 is negative"),
        (10, 1.5, "test_size=1.5 is neither a fraction"),
        (10, -0.1, "test_size=-0.1 is out of range"),
        (60, 40, "leave no training examples out of 100"),
    ],
)
def test_invalid_split_sizes(val_size, test_size, match):
    with pytest.raises(ConfigError, match=match):
        make_splits(items({1: 100}), val_size=val_size, test_size=test_size, seed=0, stratify_key=None)


def test_subsample_and_assemble_splits():
    pool = list(range(100))
    kept = subsample(pool, 10, seed=0)
    assert len(kept) == 10 and kept == sorted(kept) and kept == subsample(pool, 10, seed=0)
    assert subsample(pool, None, seed=0) == pool and subsample(pool, 1000, seed=0) == pool
    with pytest.raises(ConfigError, match="max_train=0 is invalid"):
        subsample(pool, 0, seed=0)

    def example(i, answer="1"):
        return Example(id=f"e{i}", prompt="q\n", target="t", answer=answer, meta={"level": i % 2})

    train = [example(i, answer=None if i == 0 else "1") for i in range(20)]
    given_test = [example(100 + i) for i in range(3)]
    splits = assemble_splits(
        "toy",
        {"train": train, "test": given_test},
        val_size=4,
        test_size=5,
        seed=0,
        max_train=None,
        stratify_key=lambda ex: ex.meta["level"],
        info={},
    )
    assert splits.test == given_test and len(splits.validation) == 4 and len(splits.train) == 16
    assert train[0] in splits.train  # no answer: train only
    assert splits.info["test_from"] == "given" and splits.info["n_no_answer"] == 1
    with pytest.raises(DataError, match="example id 'e1' occurs twice"):
        assemble_splits(
            "toy",
            {"train": train, "test": [example(1)]},
            val_size=0,
            test_size=0,
            seed=0,
            max_train=None,
            stratify_key=None,
            info={},
        )
