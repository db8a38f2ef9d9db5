"""SlimPajama (the multi-agent paper's pool, arXiv 2410.08102): the source set becomes the domain, streaming is
refused in one line when offline, and local files in the same format load without network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p3bench.data import load_dataset_splits
from p3bench.data.slimpajama import domain_of
from p3bench.errors import ConfigError, DataError

SETS = ["RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaArXiv"]


def write_records(path: Path, n: int = 40, bad: dict | None = None) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"text": f"document {i} of a set", "meta": {"redpajama_set_name": SETS[i % 4]}})
            )
            f.write("\n")
        if bad is not None:
            f.write(json.dumps(bad) + "\n")
    return path


def test_local_records_get_their_source_set_as_the_domain(tmp_path: Path):
    splits = load_dataset_splits(
        "slimpajama", data_files=str(write_records(tmp_path / "s.jsonl")), val_size=8, test_size=4
    )
    assert splits.task == "lm" and (len(splits.train), len(splits.validation), len(splits.test)) == (28, 8, 4)
    assert splits.info["domains"] == {"ArXiv": 10, "C4": 10, "CommonCrawl": 10, "Github": 10}
    # validation is stratified by domain: two of each
    assert sorted(ex.meta["domain"] for ex in splits.validation) == sorted(
        ["ArXiv", "C4", "CommonCrawl", "Github"] * 2
    )
    assert all(ex.prompt == "" and ex.target.startswith("document") for ex in splits.train)
    assert domain_of("RedPajamaStackExchange") == "StackExchange" and domain_of("Book") == "Book"


@pytest.mark.parametrize("env", [None, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_streaming_is_refused_in_one_line_when_offline(monkeypatch, env):
    if env is not None:
        monkeypatch.setenv(env, "1")
    with pytest.raises(ConfigError) as caught:
        load_dataset_splits("slimpajama", offline=env is None, max_docs=10)
    message = str(caught.value)
    assert "cerebras/SlimPajama-627B" in message and "offline=false" in message and "\n" not in message


def test_a_record_without_its_set_name_is_a_one_line_error(tmp_path: Path):
    path = write_records(tmp_path / "s.jsonl", bad={"text": "no meta here"})
    with pytest.raises(DataError, match="meta.redpajama_set_name") as caught:
        load_dataset_splits("slimpajama", data_files=str(path))
    assert "\n" not in str(caught.value)
