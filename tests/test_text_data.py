"""The pre-training text adapters (c4, pile, gutenberg, tinyshakespeare, text_mix) on the real files in
../shared/data, checked against the files read directly, and their one-line errors."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from p3bench.data import load_dataset_splits
from p3bench.data.text import chunk_text, load_text_files, load_text_mix
from p3bench.errors import ConfigError, DataError, P3BenchError

from .conftest import SHARED_DATA, requires_shared_data

C4 = SHARED_DATA / "c4_sample" / "c4_demo.jsonl"
PILE = SHARED_DATA / "pile_sample" / "toy_pile_data.jsonl"
GUTENBERG = SHARED_DATA / "gutenberg"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"

# from ../shared/data/pile_sample/SOURCE.md
PILE_DOMAINS = {
    "Pile-CC": 200,
    "StackExchange": 131,
    "OpenWebText2": 130,
    "PubMed Central": 105,
    "OpenSubtitles": 97,
    "Github": 85,
    "DM Mathematics": 49,
    "PubMed Abstracts": 46,
    "Wikipedia (en)": 41,
    "FreeLaw": 39,
    "HackerNews": 35,
    "USPTO Backgrounds": 34,
    "NIH ExPorter": 7,
    "Enron Emails": 1,
}


def everything(splits):
    return splits.train + splits.validation + splits.test


def one_line_error(kind: type[Exception], call, *args, **kwargs) -> str:
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_disjoint(splits) -> None:
    ids = [ex.id for ex in everything(splits)]
    assert len(ids) == len(set(ids))
    train_texts = {ex.target for ex in splits.train}
    assert not train_texts & {ex.target for ex in splits.validation + splits.test}


def assert_lm_examples(splits) -> None:
    assert splits.task == "lm"
    for ex in everything(splits):
        assert ex.prompt == "" and ex.answer is None and ex.target.strip()
        assert {"domain", "source"} <= set(ex.meta)


# ------------------------------------------------------------------------------------------------------ C4


@requires_shared_data
def test_c4_sample_loads_every_document_once():
    splits = load_dataset_splits("c4", data_files=str(C4))
    texts = [json.loads(line)["text"] for line in C4.read_text().splitlines()]
    assert_lm_examples(splits)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (240, 30, 30)
    assert sorted(ex.target for ex in everything(splits)) == sorted(texts)
    assert all(ex.target == texts[int(ex.id.removeprefix("c4-"))] for ex in everything(splits))
    assert {ex.meta["domain"] for ex in everything(splits)} == {"c4"}
    assert {ex.meta["source"] for ex in everything(splits)} == {"c4_demo.jsonl"}
    assert_disjoint(splits)
    assert splits.info["n_records"] == 300 and splits.info["n_empty"] == 0


@requires_shared_data
def test_c4_splits_are_seeded_and_capped():
    a = load_dataset_splits("c4", data_files=str(C4), seed=1)
    b = load_dataset_splits("c4", data_files=str(C4), seed=1)
    c = load_dataset_splits("c4", data_files=str(C4), seed=2)
    assert [ex.id for ex in a.test] == [ex.id for ex in b.test] != [ex.id for ex in c.test]
    small = load_dataset_splits(
        "c4", data_files=str(C4), max_docs=50, val_size=5, test_size=0.2, max_train=20
    )
    assert (len(small.train), len(small.validation), len(small.test)) == (20, 5, 10)
    assert all(int(ex.id.removeprefix("c4-")) < 50 for ex in everything(small))


@requires_shared_data
def test_c4_given_test_file_and_empty_documents(tmp_path: Path):
    test_file = write_jsonl(
        tmp_path / "test.jsonl", [{"text": "held out one"}, {"text": "  \n"}, {"text": "two"}]
    )
    splits = load_dataset_splits("c4", data_files={"train": str(C4), "test": str(test_file)}, val_size=10)
    assert [ex.id for ex in splits.test] == ["c4-test-0", "c4-test-2"]
    assert splits.info["n_empty"] == 1 and splits.info["test_from"] == "given"
    assert (len(splits.train), len(splits.validation)) == (290, 10)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": t} for t in ["a b", " ", "", "c d", "e f", "\t"]])
    splits = load_dataset_splits("c4", data_files=str(pool), val_size=0, test_size=1)
    assert sorted(ex.id for ex in everything(splits)) == ["c4-0", "c4-3", "c4-4"]
    assert splits.info["n_empty"] == 3


def test_c4_streams_a_hub_dataset(monkeypatch: pytest.MonkeyPatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return ({"text": f"document number {i}", "url": "x"} for i in range(1000))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_dataset_splits(
        "c4", hub_id="allenai/c4", hub_config="en", max_docs=12, val_size=2, test_size=2
    )
    assert calls == [("allenai/c4", "en", "train", True)]
    assert sorted(ex.target for ex in everything(splits)) == sorted(f"document number {i}" for i in range(12))
    assert {ex.meta["source"] for ex in splits.train} == {"hub:allenai/c4/en"}

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nat all")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = one_line_error(DataError, load_dataset_splits, "c4", hub_id="allenai/c4", max_docs=5)
    assert "'allenai/c4'" in message and "data_files" in message


@requires_shared_data
def test_c4_bad_inputs_are_one_line_errors(tmp_path: Path):
    assert "not found" in one_line_error(
        DataError, load_dataset_splits, "c4", data_files=str(tmp_path / "no.jsonl")
    )
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": 3}])
    message = one_line_error(DataError, load_dataset_splits, "c4", data_files=str(bad))
    assert "line 2" in message and "'text'" in message and "string" in message
    assert "exactly one" in one_line_error(ConfigError, load_dataset_splits, "c4")
    message = one_line_error(ConfigError, load_dataset_splits, "c4", hub_id="allenai/c4")
    assert "max_docs" in message
    message = one_line_error(
        ConfigError, load_dataset_splits, "c4", data_files=str(C4), val_size=0.6, test_size=0.5
    )
    assert "val_size=0.6" in message and "300 documents" in message
    assert "max_train=0" in one_line_error(
        ConfigError, load_dataset_splits, "c4", data_files=str(C4), max_train=0
    )
    message = one_line_error(ConfigError, load_dataset_splits, "c4", data_files=str(C4), text_fild="text")
    assert "did you mean 'text_field'" in message


# ---------------------------------------------------------------------------------------------------- Pile


@pytest.fixture(scope="module")
def pile_splits():
    return load_dataset_splits("pile", data_files=str(PILE))


@requires_shared_data
def test_pile_documents_carry_their_domain(pile_splits):
    rows = [json.loads(line) for line in PILE.read_text().splitlines()]
    assert_lm_examples(pile_splits)
    assert Counter(ex.meta["domain"] for ex in everything(pile_splits)) == PILE_DOMAINS
    for ex in everything(pile_splits):
        row = rows[int(ex.id.removeprefix("pile-"))]
        assert (ex.target, ex.meta["domain"]) == (row["contents"], row["metadata"]["pile_set_name"])
    assert (len(pile_splits.train), len(pile_splits.validation), len(pile_splits.test)) == (800, 100, 100)
    assert_disjoint(pile_splits)


@requires_shared_data
def test_pile_validation_and_test_are_stratified_by_domain(pile_splits):
    test = Counter(ex.meta["domain"] for ex in pile_splits.test)
    validation = Counter(ex.meta["domain"] for ex in pile_splits.validation)
    for domain, n in PILE_DOMAINS.items():
        assert abs(test[domain] - 100 * n / 1000) <= 1
        assert abs(validation[domain] - 100 * (n - test[domain]) / 900) <= 1.5


@requires_shared_data
def test_pile_text_field_variants_domain_filter_and_errors(tmp_path: Path):
    rows = [{"text": f"doc {i}", "meta": {"pile_set_name": ["A", "B"][i % 2]}} for i in range(20)]
    splits = load_dataset_splits(
        "pile", data_files=str(write_jsonl(tmp_path / "p.jsonl", rows)), domains=["B"]
    )
    assert {ex.meta["domain"] for ex in everything(splits)} == {"B"} and len(everything(splits)) == 10
    assert splits.info["n_filtered_out"] == 10
    message = one_line_error(
        ConfigError, load_dataset_splits, "pile", data_files=str(PILE), domains="Pile-Cc"
    )
    assert "did you mean 'Pile-CC'" in message
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:5], {"text": "no domain"}])
    assert "pile_set_name" in one_line_error(DataError, load_dataset_splits, "pile", data_files=str(bad))
    skipped = load_dataset_splits("pile", data_files=str(bad), skip_bad=True, val_size=1, test_size=1)
    assert skipped.info["n_skipped"] == 1 and len(everything(skipped)) == 5


# ------------------------------------------------------------------------------------------- text files


def test_chunking_packs_paragraphs_and_covers_every_word():
    def words(tag: str, n: int) -> str:
        return " ".join(f"{tag}{i}" for i in range(n))

    p0, p1, p2, p3, p5 = words("a", 30), words("b", 50), words("c", 80), words("d", 10), words("f", 5)
    lines = [words(f"e{k}_", 50) for k in range(5)]  # a 250-word paragraph of five 50-word lines
    text = "\n\n".join([p0, p1, p2, p3, "\n".join(lines), p5])
    chunks = chunk_text(text, chunk_words=100)
    assert " ".join(chunks).split() == text.split()
    # whole paragraphs packed greedily; the long paragraph is cut between its lines
    assert chunks == [
        f"{p0}\n\n{p1}",
        f"{p2}\n\n{p3}",
        f"{lines[0]}\n{lines[1]}",
        f"{lines[2]}\n{lines[3]}",
        f"{lines[4]}\n\n{p5}",
    ]
    long_line = " ".join(f"x{i}" for i in range(450))
    assert [len(c.split()) for c in chunk_text(long_line, 200)] == [200, 200, 50]
    assert one_line_error(ConfigError, chunk_text, "a b", 0).startswith("chunk_words=0")


@requires_shared_data
def test_tinyshakespeare_chunks_cover_the_whole_file():
    splits = load_dataset_splits("tinyshakespeare", data_files=str(SHAKESPEARE))
    assert_lm_examples(splits)
    docs = sorted(everything(splits), key=lambda ex: int(ex.id.rsplit("-", 1)[1]))
    assert " ".join(ex.target for ex in docs).split() == SHAKESPEARE.read_text().split()
    assert all(len(ex.target.split()) <= 200 for ex in docs)
    assert {ex.meta["domain"] for ex in docs} == {"shakespeare"}
    # cut between speeches: most documents start with a speaker line such as "First Citizen:"
    assert sum(ex.target.split("\n", 1)[0].endswith(":") for ex in docs) > 0.9 * len(docs)


@requires_shared_data
def test_gutenberg_header_and_footer_are_stripped():
    raw = (GUTENBERG / "105.txt").read_text(encoding="utf-8")
    body = raw[raw.index("\n", raw.index("*** START OF")) : raw.index("*** END OF")].split()
    # the body less the "Produced by ..." credits (12 words) and the closing "End of the Project Gutenberg
    # EBook of Persuasion, by Jane Austen" line (11 words)
    assert body[:2] == ["Produced", "by"] and body[-11:-8] == ["End", "of", "the"]
    splits = load_dataset_splits("gutenberg", data_files=str(GUTENBERG / "105.txt"), val_size=0, test_size=1)
    docs = sorted(everything(splits), key=lambda ex: int(ex.id.rsplit("-", 1)[1]))
    assert " ".join(ex.target for ex in docs).split() == body[12:-11]
    assert docs[0].target.startswith("Persuasion") and docs[-1].target.endswith("Finis")
    assert {ex.meta["domain"] for ex in docs} == {"Persuasion"}
    raw_splits = load_text_files(data_files=str(GUTENBERG / "105.txt"), val_size=0, test_size=1)
    assert any("*** START OF THIS PROJECT GUTENBERG" in ex.target for ex in everything(raw_splits))


@requires_shared_data
def test_gutenberg_config_defaults_read_eight_titled_books():
    with (GUTENBERG / "MANIFEST.csv").open(newline="") as handle:
        titles = {row["file_name"]: row["title"] for row in csv.DictReader(handle, skipinitialspace=True)}
    files = sorted(p.name for p in GUTENBERG.glob("*.txt"))[:8]
    splits = load_dataset_splits(
        "gutenberg", data_files=str(GUTENBERG / "*.txt"), max_files=8, max_docs_per_file=250
    )
    docs = everything(splits)
    assert splits.info["files"] == files and len(docs) == 8 * 250
    assert Counter(ex.meta["domain"] for ex in docs) == {titles[f]: 250 for f in files}
    assert not any(re.search(r"Project Gutenberg|\*\*\* ?(START|END) OF", ex.target) for ex in docs)
    # Mansfield Park is Windows-1252, not UTF-8: read with the fallback, the pound sign intact
    assert splits.info["not_utf8"] == ["141.txt"]
    mansfield = load_dataset_splits(
        "gutenberg", data_files=str(GUTENBERG / "141.txt"), val_size=0, test_size=1
    )
    assert any("£20,000" in ex.target for ex in everything(mansfield))
    again = load_dataset_splits(
        "gutenberg", data_files=str(GUTENBERG / "*.txt"), max_files=8, max_docs_per_file=250
    )
    assert [ex.id for ex in again.test] == [ex.id for ex in splits.test]


@requires_shared_data
def test_text_file_errors_are_one_line(tmp_path: Path):
    message = one_line_error(DataError, load_dataset_splits, "gutenberg", data_files=str(SHAKESPEARE))
    assert "START OF" in message and "strip_gutenberg=false" in message
    assert "matches no file" in one_line_error(DataError, load_text_files, data_files=str(tmp_path / "*.txt"))
    assert "directory" in one_line_error(DataError, load_text_files, data_files=str(tmp_path))
    assert "null" in one_line_error(ConfigError, load_text_files)
    message = one_line_error(ConfigError, load_text_files, data_files=str(SHAKESPEARE), chunk_words=-5)
    assert "chunk_words=-5" in message
    message = one_line_error(ConfigError, load_text_files, data_files=str(SHAKESPEARE), max_files=0)
    assert "max_files=0" in message


# ---------------------------------------------------------------------------------------------- text mix


def mix_components(max_pile: int | None = 300) -> dict:
    return {
        "pile": {"dataset": "pile", "params": {"data_files": str(PILE)}, "max_docs": max_pile},
        "c4": {"dataset": "c4", "params": {"data_files": str(C4)}},
        "books": {
            "dataset": "gutenberg",
            "params": {"data_files": str(GUTENBERG / "*.txt"), "max_files": 2, "max_docs_per_file": 60},
            "domain": "gutenberg",
        },
    }


@pytest.fixture(scope="module")
def mix():
    return load_text_mix(mix_components(), duplicate_rate=0.05, junk_rate=0.05, seed=3)


def word_differences(a: str, b: str) -> int:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb)
    return sum(x != y for x, y in zip(wa, wb, strict=True))


@requires_shared_data
def test_text_mix_concatenates_components(mix):
    assert_lm_examples(mix)
    clean = [ex for ex in mix.train if not ex.meta["is_junk"] and not ex.meta["is_duplicate"]]
    assert Counter(ex.meta["component"] for ex in clean) == {"pile": 300, "c4": 240, "books": 96}
    assert Counter(ex.meta["component"] for ex in mix.test) == {"pile": 100, "c4": 30, "books": 12}
    assert {ex.meta["domain"] for ex in mix.test if ex.meta["component"] == "books"} == {"gutenberg"}
    assert {ex.meta["domain"] for ex in mix.test if ex.meta["component"] == "c4"} == {"c4"}
    assert all(ex.id.startswith(f"{ex.meta['component']}/") for ex in mix.validation + mix.test)
    assert_disjoint(mix)
    assert not any(ex.meta["is_junk"] or ex.meta["dup_group"] is not None for ex in mix.validation + mix.test)


@requires_shared_data
def test_text_mix_plants_marked_duplicates_and_junk_at_the_rates(mix):
    n = len(mix.train)
    copies = [ex for ex in mix.train if ex.meta["is_duplicate"]]
    junk = [ex for ex in mix.train if ex.meta["is_junk"]]
    assert len(copies) == round(0.05 * n) == mix.info["n_duplicates"]
    assert len(junk) == round(0.05 * n) == mix.info["n_junk"]
    by_id = {ex.id: ex for ex in mix.train}
    for copy in copies:
        original = by_id[copy.meta["dup_group"]]
        assert not original.meta["is_duplicate"] and original.meta["dup_group"] == original.id
        assert 1 <= word_differences(copy.target, original.target) <= 4
        assert (copy.meta["domain"], copy.meta["component"]) == (
            original.meta["domain"],
            original.meta["component"],
        )
    groups = {ex.meta["dup_group"] for ex in mix.train if ex.meta["dup_group"] is not None}
    assert len(groups) == mix.info["n_dup_groups"] == len({c.meta["dup_group"] for c in copies})
    assert set(mix.info["junk_kinds"]) == {"shuffled", "boilerplate", "spam"}
    clean_texts = {ex.target for ex in mix.train if not ex.meta["is_junk"]}
    assert not any(ex.target in clean_texts for ex in junk)


@requires_shared_data
def test_text_mix_planted_documents_look_ordinary_outside_oracle_fields(mix):
    oracle = {"is_noisy", "is_junk", "dup_group", "is_duplicate"}
    real = [ex for ex in mix.train if not ex.meta["is_junk"] and not ex.meta["is_duplicate"]]
    planted = [ex for ex in mix.train if ex.meta["is_junk"] or ex.meta["is_duplicate"]]
    assert {frozenset(ex.meta) for ex in mix.train} == {frozenset(real[0].meta)}
    assert all(re.fullmatch(r"(pile|c4|books)-[0-9a-f]{12}", ex.id) for ex in mix.train)
    real_domains = {(ex.meta["component"], ex.meta["domain"]) for ex in real}
    assert all((ex.meta["component"], ex.meta["domain"]) in real_domains for ex in planted)
    non_oracle = {k for k in real[0].meta if k not in oracle}
    assert non_oracle == {"domain", "source", "component"}
    # planted documents are spread through the pool, not appended at its end
    positions = [i for i, ex in enumerate(mix.train) if ex in planted]
    assert min(positions) < len(mix.train) // 4


@requires_shared_data
def test_text_mix_is_seeded_and_capped(mix):
    again = load_text_mix(mix_components(), duplicate_rate=0.05, junk_rate=0.05, seed=3)
    assert [(ex.id, ex.target) for ex in again.train] == [(ex.id, ex.target) for ex in mix.train]
    other = load_text_mix(mix_components(), duplicate_rate=0.05, junk_rate=0.05, seed=4)
    assert {ex.id for ex in other.train if ex.meta["is_junk"]} != {
        ex.id for ex in mix.train if ex.meta["is_junk"]
    }
    capped = load_text_mix(mix_components(), duplicate_rate=0.1, junk_rate=0.2, seed=3, max_train=200)
    n = len(capped.train)
    assert 195 <= n <= 200
    assert sum(ex.meta["is_duplicate"] for ex in capped.train) == round(0.1 * n)
    assert sum(ex.meta["is_junk"] for ex in capped.train) == round(0.2 * n)
    clean = load_text_mix(mix_components(max_pile=None), seed=3)
    assert len(clean.train) == 800 + 240 + 96
    assert not any(ex.meta["is_junk"] or ex.meta["is_duplicate"] for ex in clean.train)


@requires_shared_data
def test_text_mix_bad_inputs_are_one_line_errors():
    def load(**kwargs):
        return load_dataset_splits("text_mix", **{"components": mix_components(), **kwargs})

    assert "components" in one_line_error(ConfigError, load, components={})
    message = one_line_error(ConfigError, load, components={"m": {"dataset": "math"}})
    assert "'math'" in message and "pile" in message
    message = one_line_error(
        ConfigError, load, components={"p": {"dataset": "pile", "params": {"data_fils": "x"}}}
    )
    assert "components.p.params.data_fils" in message and "did you mean 'data_files'" in message
    message = one_line_error(ConfigError, load, components={"p": {"dataset": "pile", "weight": 2}})
    assert "'weight'" in message
    assert "junk_rate=1.5" in one_line_error(ConfigError, load, junk_rate=1.5)
    assert "expected a sum below 1" in one_line_error(ConfigError, load, junk_rate=0.5, duplicate_rate=0.5)
    message = one_line_error(P3BenchError, load, components={"c": {"dataset": "c4", "max_docs": 0}})
    assert "max_docs=0" in message


@requires_shared_data
def test_text_mix_takes_plain_text_files_as_a_component():
    components = {
        "plays": {
            "dataset": "text_files",
            "params": {"data_files": str(SHAKESPEARE), "max_docs_per_file": 50},
        },
        "web": {"dataset": "c4", "params": {"data_files": str(C4)}, "max_docs": 30},
    }
    mix = load_dataset_splits("text_mix", components=components, junk_rate=0.1, seed=1)
    clean = [ex for ex in mix.train if not ex.meta["is_junk"]]
    assert Counter(ex.meta["domain"] for ex in clean) == {"input": 40, "c4": 30}
    assert sum(ex.meta["is_junk"] for ex in mix.train) == round(0.1 * len(mix.train)) == 8
    bad = {"plays": {"dataset": "text_files", "params": {"data_files": str(SHAKESPEARE), "chunk_word": 9}}}
    message = one_line_error(ConfigError, load_dataset_splits, "text_mix", components=bad)
    assert "components.plays.params.chunk_word" in message and "did you mean 'chunk_words'" in message
