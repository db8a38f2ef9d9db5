"""The train pool on disk (p3bench/data/arrow_pool.py, corpus_files.py) and the selection file above a size
(p3bench/selection_files.py): the Arrow pool reads back exactly the examples written, tokenises to exactly
what the in-memory encoding gives (cached by data and tokenizer), selects the same ids with the same hashes
as the in-memory pool through the CLI, and runs under a memory limit a list of its examples exceeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p3bench.data.arrow_pool import (
    ArrowPool,
    encode_arrow_pool,
    iter_meta,
    pool_ids,
    pool_texts,
    write_arrow_pool,
)
from p3bench.data.example import DatasetSplits, Example
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.models.collate import encode_examples
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.selection_files import SELECTION_JSONL, SELECTION_PARQUET, read_selection, write_selection

from .conftest import read_results, run_cli


@pytest.fixture(scope="module")
def small_pool() -> list[Example]:
    return load_synthetic_math(n_train=600, n_val=20, n_test=20).train


def odd_examples() -> list[Example]:
    """Fields a plain text pool would not exercise: answers, JSON tests, nested meta, unicode, empties."""
    return [
        Example("a", "p", "t", answer="42", tests={"inputs": ["1\n"], "outputs": ["2\n"]}, meta={"level": 3}),
        Example("b", "", "ünïcode — ✓", answer=None, tests=None, meta={"nested": {"x": [1, 2.5, None]}}),
        Example("c", "q", "", answer="", tests=[], meta={}),
    ]


def test_the_pool_reads_back_every_example_and_column_exactly(tmp_path: Path, small_pool: list[Example]):
    examples = [*small_pool, *odd_examples()]
    pool = ArrowPool.from_examples(examples, tmp_path)
    assert len(pool) == len(examples)
    assert list(pool) == examples
    assert pool[0] == examples[0] and pool[-1] == examples[-1] and pool[5:9] == examples[5:9]
    assert pool.take([602, 3, 600]) == [examples[602], examples[3], examples[600]]
    assert pool_ids(pool) == [ex.id for ex in examples]
    assert pool.column("meta") == list(iter_meta(pool)) == [ex.meta for ex in examples]
    assert pool.column("tests") == [ex.tests for ex in examples]
    assert list(pool_texts(pool)) == pool_texts(examples) == [ex.prompt + ex.target for ex in examples]
    with pytest.raises(IndexError):
        pool[len(examples)]


def test_the_same_content_is_one_file_and_other_content_another(tmp_path: Path, small_pool: list[Example]):
    first = write_arrow_pool(small_pool, tmp_path)
    again = write_arrow_pool(small_pool, tmp_path)
    other = write_arrow_pool(small_pool[:-1], tmp_path)
    assert first == again != other
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({first.name, other.name})  # no temporary left


def test_metadata_json_cannot_hold_is_refused_naming_the_example(tmp_path: Path):
    with pytest.raises(ValueError, match=r"example 'x' has meta .*tuple"):
        write_arrow_pool([Example("x", "", "t", meta={"pair": (1, 2)})], tmp_path)
    with pytest.raises(ValueError, match="example 'y' has tests that JSON cannot hold"):
        write_arrow_pool([Example("y", "", "t", tests={1, 2})], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_encoding_equals_the_in_memory_encoding_and_is_cached(
    tmp_path: Path, small_pool: list[Example], monkeypatch
):
    import p3bench.data.arrow_pool as arrow_pool

    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in small_pool], 300)
    pool = ArrowPool.from_examples(small_pool, tmp_path)
    reference = encode_examples(small_pool, tokenizer)
    calls = []
    real = arrow_pool._encode_batch
    monkeypatch.setattr(
        arrow_pool, "_encode_batch", lambda batch, tokenizer: calls.append(1) or real(batch, tokenizer)
    )
    encoded = encode_arrow_pool(pool, tokenizer)
    assert calls, "the first encoding tokenises"
    assert (
        list(encoded.prompt_ids) == reference.prompt_ids and list(encoded.target_ids) == reference.target_ids
    )
    assert encoded.target_ids[17] == reference.target_ids[17]
    assert [encoded.num_tokens(i, 12) for i in range(len(pool))] == [
        reference.num_tokens(i, 12) for i in range(len(pool))
    ]
    calls.clear()
    again = encode_arrow_pool(ArrowPool(pool.path), tokenizer)
    assert not calls, "the same pool and tokenizer read the cached tokens"
    assert list(again.prompt_ids) == reference.prompt_ids
    other = train_local_tokenizer([ex.target for ex in small_pool], 280)
    encode_arrow_pool(pool, other)
    assert calls, "another tokenizer tokenises again"


def test_selection_files_switch_format_above_the_size_and_read_back(tmp_path: Path):
    rows = [
        {"round": r, "id": f"e{i}", "score": None if i % 3 else i / 7, "weight": 1.0 + i}
        for r in (0, 1)
        for i in range(6)
    ]
    assert write_selection(tmp_path, rows, parquet_above=100).name == SELECTION_JSONL
    assert read_selection(tmp_path) == rows
    assert write_selection(tmp_path, rows, parquet_above=5).name == SELECTION_PARQUET
    assert not (tmp_path / SELECTION_JSONL).exists(), "the other format's file is removed"
    assert read_selection(tmp_path) == rows
    assert pq.read_schema(tmp_path / SELECTION_PARQUET).field("id").type == pa.string()
    write_selection(tmp_path, rows[:2], parquet_above=5)
    assert not (tmp_path / SELECTION_PARQUET).exists() and read_selection(tmp_path) == rows[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SELECTION_JSONL]


def write_corpus(directory: Path, n: int, shards: int = 2) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    per = n // shards
    for s in range(shards):
        rows = [
            {
                "text": f"document {s * per + i} about {'cats' if i % 2 else 'dogs'} and things",
                "src": f"s{i % 3}",
            }
            for i in range(per)
        ]
        pq.write_table(pa.Table.from_pylist(rows), directory / f"part-{s}.parquet")


def test_corpus_files_give_an_on_disk_pool_with_row_ids_and_disjoint_splits(tmp_path: Path):
    from p3bench.data.corpus_files import load_corpus_files

    write_corpus(tmp_path / "corpus", 200)
    splits = load_corpus_files(
        str(tmp_path / "corpus" / "*.parquet"),
        domain_field="src",
        val_size=10,
        test_size=0.05,
        cache_dir=str(tmp_path / "cache"),
    )
    assert isinstance(splits.train, ArrowPool) and splits.task == "lm"
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (180, 10, 10)
    ids = [*splits.train.ids, *(ex.id for ex in splits.validation), *(ex.id for ex in splits.test)]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(200))
    example = splits.train[0]
    row = int(example.id.split("-")[1])
    assert example.target == f"document {row} about {'cats' if row % 100 % 2 else 'dogs'} and things"
    assert example.meta == {"domain": f"s{row % 100 % 3}", "source": "corpus_files"}
    again = load_corpus_files(
        str(tmp_path / "corpus" / "*.parquet"),
        domain_field="src",
        val_size=10,
        test_size=0.05,
        cache_dir=str(tmp_path / "cache"),
    )
    assert again.train.path == splits.train.path and list(again.train) == list(splits.train)
    with pytest.raises(
        ConfigError, match=r"dataset.params.text_field='body' is not a column .* expected one of text, src"
    ):
        load_corpus_files(
            str(tmp_path / "corpus" / "*.parquet"), text_field="body", cache_dir=str(tmp_path / "cache")
        )
    with pytest.raises(ConfigError, match="dataset.params.data_files=.* matches no file"):
        load_corpus_files(str(tmp_path / "nothing" / "*.parquet"), cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["p3", "semdedup"])
def test_an_arrow_pool_selects_what_the_in_memory_pool_selects(tmp_path: Path, cache_dir: Path, method: str):
    common = [
        "debug=smoke",
        f"method={method}",
        "trainer.max_epochs=2",
        "progress=false",
        "coverage_embedder.name=tfidf",
        "pool.selection_parquet_above=50",
    ]
    results = {}
    for storage in ("memory", "arrow"):
        done = run_cli([*common, f"pool.storage={storage}", f"hydra.run.dir={storage}"], tmp_path, cache_dir)
        assert done.returncode == 0, done.stderr[-3000:]
        results[storage] = read_results(tmp_path / storage)
        assert (tmp_path / storage / SELECTION_PARQUET).is_file(), "more rows than 50: Parquet"
    memory, arrow = results["memory"]["selection"], results["arrow"]["selection"]
    assert arrow["ids_sha256"] == memory["ids_sha256"]
    assert [r["ids_sha256"] for r in arrow["rounds"]] == [r["ids_sha256"] for r in memory["rounds"]]
    assert read_selection(tmp_path / "arrow") == read_selection(tmp_path / "memory")
    assert results["arrow"]["metrics"] == results["memory"]["metrics"]
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "p3bench",
            "report",
            str(tmp_path / "memory"),
            str(tmp_path / "arrow"),
            "--out",
            str(tmp_path / "report"),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]


MEMORY_LIMITED = textwrap.dedent(
    r"""
    import re, resource, sys
    from p3bench.data.arrow_pool import ArrowPool
    from p3bench.data.example import DatasetSplits
    from p3bench.methods import METHODS
    from p3bench.results import composition
    from p3bench.selection_files import read_selection, write_selection
    import datasets, torch  # what ArrowPool and the method import when first used
    random_method = METHODS.get("random")  # the method's module and its imports
    # the limit: what the process holds after its imports, plus the given bytes
    held = int(re.search(r"VmData:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    limit = held + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    pool = ArrowPool(sys.argv[1])
    if sys.argv[3] == "list":
        pool = list(pool)  # the pool as a list of examples in memory
    splits = DatasetSplits(name="big", task="lm", train=pool, validation=[], test=[])
    datamodule = random_method(splits=splits, tokenizer=None, budget=0.1, seed=0)
    record = datamodule.run_selection(0)
    chosen = datamodule.selected_examples()
    counts = composition(datamodule.pool)
    write_selection(sys.argv[4], [{"round": 0, "id": i, "score": None, "weight": 1.0} for i in record.ids], 1000)
    print(len(pool), len(chosen), record.ids_sha256, counts["n"], len(read_selection(sys.argv[4])))
    """
)


@pytest.mark.slow
def test_a_pool_larger_than_the_memory_limit_runs_under_it(tmp_path: Path):
    """A 200 MB pool, and 160 MB allowed beyond what the process holds after its imports (RLIMIT_DATA:
    heap and anonymous mappings; the pool file is a read-only file mapping, pages the kernel can drop):
    over the Arrow pool, ``random`` selects a tenth, the pool's composition is counted and the selection
    written as Parquet; over the same pool as a list of examples it does not fit."""
    n, size = 100_000, 2_000
    text = ("lorem ipsum dolor sit amet " * 80)[:size]
    path = write_arrow_pool((Example(f"d{i}", "", text, meta={"k": i}) for i in range(n)), tmp_path)
    assert path.stat().st_size > 200_000_000
    runs = {}
    for storage in ("arrow", "list"):
        out = tmp_path / storage
        out.mkdir()
        runs[storage] = subprocess.run(
            [sys.executable, "-c", MEMORY_LIMITED, str(path), str(160 * 2**20), storage, str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert runs["arrow"].returncode == 0, runs["arrow"].stderr[-2000:]
    pool_size, chosen, sha, counted, written = runs["arrow"].stdout.split()
    assert (pool_size, chosen, counted, written) == (str(n), str(n // 10), str(n), str(n // 10))
    assert (tmp_path / "arrow" / SELECTION_PARQUET).is_file()
    expected = METHODS.get("random")(
        splits=DatasetSplits(name="big", task="lm", train=ArrowPool(path), validation=[], test=[]),
        tokenizer=None,
        budget=0.1,
        seed=0,
    ).run_selection(0)
    assert sha == expected.ids_sha256  # the limited process selected what an unlimited one selects
    assert runs["list"].returncode != 0 and "MemoryError" in runs["list"].stderr


def test_pool_storage_is_checked_with_a_one_line_error(tmp_path: Path, cache_dir: Path):
    done = run_cli(["debug=smoke", "pool.storage=disk", "hydra.run.dir=run"], tmp_path, cache_dir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "p3bench: error: pool.storage='disk' is invalid: expected one of memory, arrow"
    )
    assert not (tmp_path / "run").exists()
