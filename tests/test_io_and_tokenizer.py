import json
from pathlib import Path

import pytest

from p3bench.models.tokenizer import local_tokenizer, train_local_tokenizer
from p3bench.utils.hashing import ids_sha256
from p3bench.utils.io import atomic_write_json, atomic_write_text

TEXTS = ["Compute 123 + 45.\n123 + 45 = 168\nThe answer is \\boxed{168}."] * 50 + [
    "What is 7 * 8?\n7 * 8 = 56"
] * 50


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "sub" / "results.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    with pytest.raises(TypeError):
        atomic_write_text(path, object())  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_ids_hash_ignores_order():
    assert ids_sha256(["b", "a", "c"]) == ids_sha256(["c", "b", "a"]) != ids_sha256(["a", "b"])


def test_local_tokenizer_splits_digits_and_round_trips():
    tokenizer = train_local_tokenizer(TEXTS, vocab_size=300)
    tokens = tokenizer.tokenize("12345 + 678")
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert all(len(t.lstrip("Ġ")) == 1 for t in digits), tokens
    text = "Compute 907 - 12.\n907 - 12 = 895\nThe answer is \\boxed{895}."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"


def test_local_tokenizer_is_deterministic_and_cached(tmp_path: Path):
    first = local_tokenizer(TEXTS, 300, tmp_path)
    second = local_tokenizer(TEXTS, 300, tmp_path)
    fresh = train_local_tokenizer(TEXTS, 300)
    assert first.get_vocab() == second.get_vocab() == fresh.get_vocab()
    assert len(list((tmp_path / "tokenizers").iterdir())) == 1
