"""Quality scorers of arXiv 2402.09668 (Ask-LLM P(yes), proxy perplexity) and their score cache: each score
equals a hand computation from the model's logits, batching and padding change nothing, truncation keeps the
question, fingerprints follow what changes the scores, and the cache reuses, misses and recovers as it should.
Tiny models built from configs and a locally trained tokenizer; nothing is downloaded."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from p3bench.errors import ConfigError, ModelLoadError
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.ask_llm import ASK_LLM_TEMPLATE, AskLLMScorer, split_template
from p3bench.scoring.cache import cached_scores, scores_cache_path
from p3bench.scoring.perplexity import PerplexityScorer
from tests.conftest import tiny_llama, tiny_t5

TEXTS = [
    "The cat sat on the mat.",
    "A short one.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves of plants.",
    "yes no yes",
    "the quick brown fox jumps over the lazy dog " * 3,
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [ASK_LLM_TEMPLATE.format(text=t) for t in TEXTS] * 5 + [
        "yes no Yes No, yes. no.",
        "No yes",
        "Yes no",
    ] * 30
    return train_local_tokenizer(corpus, vocab_size=400)


@pytest.fixture(scope="module")
def t5(tokenizer) -> T5ForConditionalGeneration:
    return tiny_t5(tokenizer, num_layers=2)


def _llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    model = tiny_llama(tokenizer, num_layers=2, max_positions=256, seed=seed)
    with torch.no_grad():  # sharpen the output distribution so that probabilities differ visibly
        model.lm_head.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def llama(tokenizer) -> LlamaForCausalLM:
    return _llama(tokenizer)


# -- Ask-LLM -------------------------------------------------------------------------------------------------


def _hand_ask_llm(model, tokenizer, prompt: str, yes: list[str], no: list[str]) -> tuple[float, float]:
    """P(yes), P(no) summed over the given token pieces, from one unbatched forward pass."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            ids = tokenizer.encode(prompt, add_special_tokens=False) + [tokenizer.eos_token_id]
            start = torch.tensor([[model.config.decoder_start_token_id]])
            logits = model(input_ids=torch.tensor([ids]), decoder_input_ids=start).logits[0, 0]
        else:
            ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    probs = torch.softmax(logits.double(), dim=-1)
    p_yes = float(probs[tokenizer.convert_tokens_to_ids(yes)].sum())
    p_no = float(probs[tokenizer.convert_tokens_to_ids(no)].sum())
    return p_yes, p_no


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
@pytest.mark.parametrize("normalisation", ["full", "yes_no"])
def test_ask_llm_equals_hand_computation(kind, normalisation, tokenizer, t5, llama) -> None:
    model = t5 if kind == "seq2seq" else llama
    scorer = AskLLMScorer(model, tokenizer, normalisation=normalisation, batch_size=3, progress=False)
    assert scorer.model_kind == kind
    # seq2seq: the bare words; causal: the bare words and their leading-space variants
    yes, no = (["yes"], ["no"]) if kind == "seq2seq" else (["yes", "Ġyes"], ["no", "Ġno"])
    assert scorer.yes_ids == tokenizer.convert_tokens_to_ids(yes)
    scores = scorer.score_texts(TEXTS)
    assert scores.dtype == np.float64 and scores.shape == (len(TEXTS),)
    expected = []
    for text in TEXTS:
        p_yes, p_no = _hand_ask_llm(model, tokenizer, ASK_LLM_TEMPLATE.format(text=text), yes, no)
        expected.append(p_yes if normalisation == "full" else p_yes / (p_yes + p_no))
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    assert len(set(np.round(scores, 8))) > 1  # the texts get different scores


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_ask_llm_batched_equals_one_at_a_time(kind, tokenizer, t5, llama) -> None:
    model = t5 if kind == "seq2seq" else llama
    batched = AskLLMScorer(model, tokenizer, batch_size=8, progress=False).score_texts(TEXTS)
    single = AskLLMScorer(model, tokenizer, batch_size=1, progress=False)
    np.testing.assert_allclose(batched, [single.score_texts([t])[0] for t in TEXTS], rtol=1e-5)
    capped = AskLLMScorer(model, tokenizer, batch_size=8, max_batch_tokens=150, progress=False)
    np.testing.assert_allclose(capped.score_texts(TEXTS[::-1])[::-1], batched, rtol=1e-5)
    assert AskLLMScorer(model, tokenizer, progress=False).score_texts([]).shape == (0,)


def test_ask_llm_without_logits_to_keep_matches(tokenizer, llama) -> None:
    scorer = AskLLMScorer(llama, tokenizer, batch_size=8, progress=False)
    reference = scorer.score_texts(TEXTS)
    scorer._keeps_logits = False  # the full-logits path of models whose forward has no logits_to_keep
    np.testing.assert_allclose(scorer.score_texts(TEXTS), reference, rtol=1e-5)


def test_ask_llm_truncation_keeps_the_question(tokenizer, t5) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 20
    scorer = AskLLMScorer(t5, tokenizer, max_text_tokens=5, progress=False)
    prefix, suffix = split_template(ASK_LLM_TEMPLATE)
    (prompt,) = scorer.prompts([long_text])
    assert prompt.startswith(prefix) and prompt.endswith(suffix)
    kept = prompt[len(prefix) : len(prompt) - len(suffix)]
    assert long_text.startswith(kept) and kept
    assert len(tokenizer.encode(kept, add_special_tokens=False)) == 5
    assert prompt.endswith("OPTIONS:\n- yes\n- no")
    assert scorer.prompts(["yes no yes"]) == [ASK_LLM_TEMPLATE.format(text="yes no yes")]
    p_yes, _ = _hand_ask_llm(t5, tokenizer, prompt, ["yes"], ["no"])
    np.testing.assert_allclose(scorer.score_texts([long_text]), [p_yes], rtol=1e-4)
    untruncated = AskLLMScorer(t5, tokenizer, max_text_tokens=None, progress=False)
    assert untruncated.prompts([long_text]) == [ASK_LLM_TEMPLATE.format(text=long_text)]


def test_ask_llm_prompt_too_long_for_causal_model(tokenizer, llama) -> None:
    scorer = AskLLMScorer(llama, tokenizer, max_text_tokens=None, progress=False)
    with pytest.raises(ConfigError, match="max_position_embeddings=256") as error:
        scorer.score_texts(["word " * 400])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "template", ["no placeholder here", "{text} and {text}", "{text} {other}", "{}", "{text!r}", "{text"]
)
def test_ask_llm_template_is_validated(template, tokenizer, t5) -> None:
    with pytest.raises(ConfigError, match=r"\{text\}") as error:
        AskLLMScorer(t5, tokenizer, template=template, progress=False)
    assert "\n" not in str(error.value)


def test_ask_llm_custom_template_and_literal_braces(tokenizer, t5) -> None:
    scorer = AskLLMScorer(t5, tokenizer, template="{{json}} ### {text} ###\n- yes\n- no", progress=False)
    assert scorer.prompts(["x"]) == ["{json} ### x ###\n- yes\n- no"]


def test_ask_llm_answer_tokens(tokenizer, t5, llama) -> None:
    with pytest.raises(ConfigError, match="'photosynthesisx' is not a single token"):
        AskLLMScorer(t5, tokenizer, yes_tokens=["photosynthesisx"], progress=False)
    with pytest.raises(ConfigError, match="share token id"):
        AskLLMScorer(t5, tokenizer, yes_tokens=["yes"], no_tokens=["no", "yes"], progress=False)
    with pytest.raises(ConfigError, match="non-empty list"):
        AskLLMScorer(t5, tokenizer, yes_tokens="yes", progress=False)
    both = AskLLMScorer(t5, tokenizer, yes_tokens=["yes", "Yes"], progress=False)
    assert both.yes_ids == tokenizer.convert_tokens_to_ids(["yes", "Yes"])
    no_space = AskLLMScorer(llama, tokenizer, space_variants=False, progress=False)
    assert no_space.yes_ids == tokenizer.convert_tokens_to_ids(["yes"])
    with pytest.raises(ConfigError, match="normalisation 'softmax' is unknown"):
        AskLLMScorer(t5, tokenizer, normalisation="softmax", progress=False)
    with pytest.raises(ConfigError, match="does not match"):
        AskLLMScorer(t5, tokenizer, model_kind="causal", progress=False)
    with pytest.raises(ConfigError, match="model_kind 'decoder' is unknown"):
        AskLLMScorer(t5, tokenizer, model_kind="decoder", progress=False)


def test_ask_llm_fingerprint(tokenizer, t5, llama) -> None:
    base = AskLLMScorer(t5, tokenizer, progress=False)
    same = [
        AskLLMScorer(t5, tokenizer, batch_size=1, max_batch_tokens=64, device="cpu", progress=True),
        AskLLMScorer(t5, tokenizer, model_kind="seq2seq", progress=False),
        AskLLMScorer(t5, tokenizer, model_id=None, progress=False),
    ]
    assert all(s.fingerprint == base.fingerprint for s in same)
    different = [
        AskLLMScorer(t5, tokenizer, normalisation="yes_no", progress=False),
        AskLLMScorer(t5, tokenizer, template=ASK_LLM_TEMPLATE + "\n", progress=False),
        AskLLMScorer(t5, tokenizer, yes_tokens=["yes", "Yes"], progress=False),
        AskLLMScorer(t5, tokenizer, no_tokens=["no", "No"], progress=False),
        AskLLMScorer(t5, tokenizer, max_text_tokens=64, progress=False),
        AskLLMScorer(t5, tokenizer, space_variants=True, progress=False),
        AskLLMScorer(copy.deepcopy(t5), tokenizer, dtype="bfloat16", progress=False),
        AskLLMScorer(llama, tokenizer, progress=False),
        AskLLMScorer(_llama(tokenizer, seed=1), tokenizer, progress=False),  # same config, other weights
        AskLLMScorer(t5, tokenizer, model_id="hub:google/flan-t5-small@main:abc", progress=False),
    ]
    prints = [base.fingerprint] + [s.fingerprint for s in different]
    assert len(set(prints)) == len(prints)
    assert "normalisation=full" in base.fingerprint and "kind=seq2seq" in base.fingerprint
    assert base.metadata["template_text"] == ASK_LLM_TEMPLATE


def test_ask_llm_from_pretrained(tmp_path: Path, tokenizer, t5) -> None:
    t5.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    loaded = AskLLMScorer.from_pretrained(
        tmp_path / "judge", device="cpu", dtype="auto", progress=False, batch_size=2
    )
    assert loaded.model_kind == "seq2seq" and loaded.dtype == "float32"
    assert loaded.model_identity.startswith("local:judge#")
    np.testing.assert_allclose(
        loaded.score_texts(TEXTS), AskLLMScorer(t5, tokenizer, progress=False).score_texts(TEXTS), rtol=1e-5
    )
    other = copy.deepcopy(t5)
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    reloaded = AskLLMScorer.from_pretrained(tmp_path / "other", device="cpu", progress=False)
    assert reloaded.fingerprint != loaded.fingerprint
    with pytest.raises(ModelLoadError, match="missing-judge") as error:
        AskLLMScorer.from_pretrained(tmp_path / "missing-judge", progress=False)
    assert "\n" not in str(error.value) and "expected" in str(error.value)
    with pytest.raises(ConfigError, match="is a seq2seq model: expected a causal model"):
        PerplexityScorer.from_pretrained(tmp_path / "judge", progress=False)


# -- perplexity ----------------------------------------------------------------------------------------------


def _hand_perplexity(model, ids: list[int]) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]))
    return float(nll), float(torch.exp(nll))


def test_perplexity_equals_hand_computation(tokenizer, llama) -> None:
    scorer = PerplexityScorer(llama, tokenizer, batch_size=3, progress=False)
    result = scorer.score_texts_detailed(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
        mean_nll, perplexity = _hand_perplexity(llama, ids)
        np.testing.assert_allclose(result.mean_nll[i], mean_nll, rtol=1e-5)
        np.testing.assert_allclose(result.perplexity[i], perplexity, rtol=1e-5)
        assert result.num_tokens[i] == len(ids) - 1
    np.testing.assert_allclose(scorer.score_texts(TEXTS), result.perplexity)
    assert scorer.score_texts(TEXTS).dtype == np.float64


def test_perplexity_padding_invariant(tokenizer, llama) -> None:
    single = PerplexityScorer(llama, tokenizer, batch_size=1, progress=False).score_texts(TEXTS)
    batched = PerplexityScorer(llama, tokenizer, batch_size=8, progress=False)
    np.testing.assert_allclose(batched.score_texts(TEXTS), single, rtol=1e-5)
    np.testing.assert_allclose(batched.score_texts(TEXTS[::-1])[::-1], single, rtol=1e-5)


def test_perplexity_truncation_bos_and_empty(tokenizer, llama) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 20
    scorer = PerplexityScorer(llama, tokenizer, max_tokens=6, progress=False)
    result = scorer.score_texts_detailed([long_text, "", "A short one."])
    ids = ([tokenizer.bos_token_id] + tokenizer.encode(long_text, add_special_tokens=False))[:6]
    assert result.num_tokens.tolist()[:2] == [5, 0]
    np.testing.assert_allclose(result.mean_nll[0], _hand_perplexity(llama, ids)[0], rtol=1e-5)
    assert np.isnan(result.perplexity[1]) and np.isnan(result.mean_nll[1])
    no_bos = PerplexityScorer(llama, tokenizer, add_bos=False, progress=False)
    plain = tokenizer.encode("A short one.", add_special_tokens=False)
    detailed = no_bos.score_texts_detailed(["A short one."])
    assert detailed.num_tokens[0] == len(plain) - 1
    np.testing.assert_allclose(detailed.mean_nll[0], _hand_perplexity(llama, plain)[0], rtol=1e-5)
    assert PerplexityScorer(llama, tokenizer, progress=False).max_tokens == 256  # capped by the model
    with pytest.raises(ConfigError, match="max_position_embeddings=256"):
        PerplexityScorer(llama, tokenizer, max_tokens=1000, progress=False)


def test_perplexity_from_a_hub_revision_in_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer, llama
) -> None:
    """A hub id and revision (like Pythia's ``step20000``) resolve offline from the local cache; the
    fingerprint names the id, the revision and the commit it resolved to."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--proxy"
    llama.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "step20000").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    scorer = PerplexityScorer.from_pretrained("org/proxy", revision="step20000", device="cpu", progress=False)
    assert scorer.model_identity == f"hub:org/proxy@step20000:{commit}"
    np.testing.assert_allclose(
        scorer.score_texts(TEXTS),
        PerplexityScorer(llama, tokenizer, progress=False).score_texts(TEXTS),
        rtol=1e-5,
    )
    with pytest.raises(ModelLoadError, match="'org/proxy' at revision 'step1'") as error:
        PerplexityScorer.from_pretrained("org/proxy", revision="step1", progress=False)
    assert "\n" not in str(error.value)


def test_perplexity_refuses_seq2seq(tokenizer, t5) -> None:
    with pytest.raises(ConfigError, match="encoder-decoder") as error:
        PerplexityScorer(t5, tokenizer, progress=False)
    assert "\n" not in str(error.value)


def test_perplexity_fingerprint(tokenizer, llama) -> None:
    base = PerplexityScorer(llama, tokenizer, progress=False)
    assert PerplexityScorer(
        llama, tokenizer, batch_size=1, max_batch_tokens=9, progress=True
    ).fingerprint == (base.fingerprint)
    different = [
        PerplexityScorer(llama, tokenizer, max_tokens=64, progress=False),
        PerplexityScorer(llama, tokenizer, add_bos=False, progress=False),
        PerplexityScorer(_llama(tokenizer, seed=1), tokenizer, progress=False),
    ]
    prints = [base.fingerprint] + [s.fingerprint for s in different]
    assert len(set(prints)) == len(prints)
    assert base.fingerprint.startswith("perplexity|model=object:LlamaForCausalLM:")


# -- cache ---------------------------------------------------------------------------------------------------


class Counting:
    """A scorer that counts its calls: the score of a text is its length."""

    name = "counting"

    def __init__(self, fingerprint: str = "counting|v1") -> None:
        self.fingerprint = fingerprint
        self.calls = 0

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([len(t) for t in texts], dtype=np.float64)


def _files(directory: Path) -> list[str]:
    """The cache's files, lock files left out (they stay, empty, for the next writer)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_cache_reuses_and_misses(tmp_path: Path) -> None:
    scorer = Counting()
    first = cached_scores(scorer, TEXTS, tmp_path, name="count")
    second = cached_scores(scorer, TEXTS, tmp_path, name="count")
    assert scorer.calls == 1 and first.dtype == np.float64
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, [len(t) for t in TEXTS])
    path = scores_cache_path(scorer, TEXTS, tmp_path, name="count")
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["model"] == "counting|v1" and manifest["data"]["n"] == len(TEXTS)
    assert manifest["created"] and list(manifest["files"]) == [path.name]
    assert path.parent.parent == tmp_path / "scores" and path.parent.name.startswith("count-")
    cached_scores(scorer, TEXTS[::-1], tmp_path, name="count")  # same texts, other order: a miss
    assert scorer.calls == 2
    cached_scores(scorer, TEXTS[:-1], tmp_path, name="count")
    assert scorer.calls == 3
    other = Counting("counting|v2")
    cached_scores(other, TEXTS, tmp_path, name="count")
    assert other.calls == 1
    cached_scores(scorer, TEXTS, None, name="count")
    cached_scores(scorer, TEXTS, None, name="count")
    assert scorer.calls == 5
    assert not any(name.endswith(".tmp") for name in _files(tmp_path))
    default = tmp_path / "default"
    cached_scores(scorer, TEXTS, default)  # the file is named after the scorer
    assert scores_cache_path(scorer, TEXTS, default).parent.name.startswith("counting-")
    assert scores_cache_path(scorer, TEXTS, default).is_file() and scorer.calls == 6


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "wrong_dtype"])
def test_cache_recomputes_damaged_files(damage: str, tmp_path: Path) -> None:
    scorer = Counting()
    expected = cached_scores(scorer, TEXTS, tmp_path, name="count")
    path = scores_cache_path(scorer, TEXTS, tmp_path, name="count")
    if damage == "garbage":
        path.write_bytes(b"not an npy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-8])
    elif damage == "wrong_shape":
        np.save(path, np.zeros(len(TEXTS) + 1))
    else:
        np.save(path, np.array(["a"] * len(TEXTS)))
    np.testing.assert_array_equal(cached_scores(scorer, TEXTS, tmp_path, name="count"), expected)
    assert scorer.calls == 2
    np.testing.assert_array_equal(np.load(path), expected)  # repaired
    cached_scores(scorer, TEXTS, tmp_path, name="count")
    assert scorer.calls == 2


def test_cache_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = Counting()

    def failing_save(handle, array, allow_pickle=False) -> None:
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cached_scores(scorer, TEXTS, tmp_path, name="count")
    assert _files(tmp_path) == []  # no partial .npy, no temporary file, no sidecar
    monkeypatch.undo()

    class Broken(Counting):
        def score_texts(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cached_scores(Broken(), TEXTS, tmp_path, name="count")
    assert _files(tmp_path) == []


def test_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="score cache name '../escape' is invalid"):
        cached_scores(Counting(), TEXTS, tmp_path, name="../escape")

    class Wrong(Counting):
        def score_texts(self, texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(texts), 2))

    with pytest.raises(ValueError, match="expected \\(5,\\)"):
        cached_scores(Wrong(), TEXTS, tmp_path, name="wrong")
    assert _files(tmp_path) == []


def test_cache_with_a_real_scorer(tmp_path: Path, tokenizer, t5) -> None:
    scorer = AskLLMScorer(t5, tokenizer, progress=False)
    scores = cached_scores(scorer, TEXTS, tmp_path, name="askllm")
    np.testing.assert_array_equal(cached_scores(scorer, TEXTS, tmp_path, name="askllm"), scores)
    manifest = json.loads(
        (scores_cache_path(scorer, TEXTS, tmp_path, name="askllm").parent / "manifest.json").read_text()
    )
    assert manifest["model"] == scorer.fingerprint
    info = manifest["info"]
    assert info["scorer"]["normalisation"] == "full" and info["scorer"]["paper"] == "arXiv 2402.09668"
