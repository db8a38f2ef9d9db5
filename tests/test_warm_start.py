"""The warm start of models built from an architecture (continual pre-training, arXiv 2402.14270): it lowers
the loss on held-out documents of the corpus, is cached (a hit loads the same weights without training),
is seeded and deterministic, leaves the global random state alone, refuses bad settings in one line, and a
CLI run records it in results.json."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import p3bench.models.warm_start as ws
from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.models.collate import TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.models.warm_start import WarmStartSettings, warm_start, warm_start_settings
from p3bench.models.weights_cache import weights_digest
from p3bench.run import train_and_evaluate
from tests.test_contract import ARCH

from .conftest import compose_config, read_results, requires_shared_data, run_cli

SETTINGS = WarmStartSettings(steps=40, batch_size=8, lr=1e-2, warmup_steps=4, max_length=48, seed=0)
SUBJECTS = ["the cat", "a dog", "my aunt", "the old man", "a small bird", "our teacher"]
VERBS = ["sat on", "looked at", "walked past", "painted", "found", "sang about"]
OBJECTS = ["the mat", "a red door", "the river", "an apple tree", "the tall hill", "a blue boat"]


def document(i: int) -> Example:
    """A short document of simple sentences (word choices cycle with ``i``): easy to learn, not to copy."""
    sentences = [
        f"{SUBJECTS[(i + k) % 6]} {VERBS[(2 * i + k) % 6]} {OBJECTS[(3 * i + 2 * k) % 6]}." for k in range(5)
    ]
    return Example(id=f"doc-{i}", prompt="", target=" ".join(sentences), meta={"domain": "toy"})


@pytest.fixture(scope="module")
def corpus():
    docs = [document(i) for i in range(60)]
    train, held_out = docs[:48], docs[48:]
    tokenizer = train_local_tokenizer([ex.target for ex in train], vocab_size=300)
    return train, held_out, tokenizer


def fresh_model(tokenizer, seed: int = 0):
    pl.seed_everything(seed, verbose=False)
    return build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)


def held_out_loss(model, tokenizer, examples: list[Example]) -> float:
    """Mean next-token NLL over every token of ``examples``."""
    pool = encode_examples(examples, tokenizer)
    items = [
        {"prompt_ids": p[:1], "target_ids": p[1:] + t, "weight": 1.0, "index": i}
        for i, (p, t) in enumerate(zip(pool.prompt_ids, pool.target_ids, strict=True))
    ]
    batch = TrainCollator(tokenizer.pad_token_id, 48)(items)
    model.eval()
    with torch.inference_mode():
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss.item()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def warmed(corpus, tmp_path_factory: pytest.TempPathFactory):
    """One warm start (a cache miss) in a fresh cache: the model, its record and the cache."""
    train, _, tokenizer = corpus
    cache = tmp_path_factory.mktemp("warm_cache")
    model = fresh_model(tokenizer)
    rng_before = torch.get_rng_state()
    record = warm_start(model, tokenizer, train, SETTINGS, cache)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's random stream is untouched
    return model, record, cache


def test_warm_start_lowers_the_loss_on_held_out_documents(corpus, warmed):
    train, held_out, tokenizer = corpus
    model, record, _ = warmed
    random_init = held_out_loss(fresh_model(tokenizer), tokenizer, held_out)
    after = held_out_loss(model, tokenizer, held_out)
    assert after < 0.7 * random_init
    assert record["cache_hit"] is False and record["steps"] == SETTINGS.steps
    assert record["n_documents"] == len(train) and record["corpus"] == "pool"
    assert record["final_train_loss"] < 0.7 * record["first_train_loss"]
    assert record["passes"] == pytest.approx(SETTINGS.steps * SETTINGS.batch_size / len(train))
    assert record["train_tokens"] > 0 and record["settings"]["seed"] == 0


def test_a_cache_hit_loads_the_same_weights_without_training(corpus, warmed, monkeypatch):
    train, _, tokenizer = corpus
    model, record, cache = warmed

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been loaded")

    monkeypatch.setattr(ws, "pretrain", no_training)
    again = fresh_model(tokenizer)
    rng_before = torch.get_rng_state()
    hit = warm_start(again, tokenizer, train, SETTINGS, cache)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert hit["cache_hit"] is True and hit["key"] == record["key"]
    assert {k: v for k, v in hit.items() if k != "cache_hit"} == {
        k: v for k, v in record.items() if k != "cache_hit"
    }
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())
    # anything the weights depend on changes the key: here the corpus
    with pytest.raises(AssertionError, match="cached weights"):
        warm_start(fresh_model(tokenizer), tokenizer, train[:-1], SETTINGS, cache)


def test_same_settings_and_seed_give_identical_weights(corpus, warmed, tmp_path: Path):
    train, _, tokenizer = corpus
    model, record, _ = warmed
    again = fresh_model(tokenizer)
    again_record = warm_start(again, tokenizer, train, SETTINGS, tmp_path / "other_cache")
    assert again_record["cache_hit"] is False and again_record["key"] == record["key"]
    assert again_record["final_train_loss"] == record["final_train_loss"]
    assert weights_digest(again) == weights_digest(model)
    # another initial model (global seed) or another batch order: other keys and other weights
    other_init = fresh_model(tokenizer, seed=1)
    other_order = fresh_model(tokenizer)
    reseeded = WarmStartSettings(**{**vars(SETTINGS), "seed": 1})
    records = [
        warm_start(other_init, tokenizer, train, SETTINGS, tmp_path / "other_cache"),
        warm_start(other_order, tokenizer, train, reseeded, tmp_path / "other_cache"),
    ]
    assert len({record["key"], *(r["key"] for r in records)}) == 3
    assert len({weights_digest(m) for m in (model, other_init, other_order)}) == 3


def test_settings_from_the_model_config():
    tiny = {"architecture": ARCH, "name_or_path": None}
    assert warm_start_settings({**tiny, "warm_start": None}, seed=3) is None
    assert warm_start_settings(tiny, seed=3) is None
    settings = warm_start_settings({**tiny, "warm_start": {"steps": 50, "seed": None}}, seed=3)
    assert settings == WarmStartSettings(steps=50, seed=3)
    assert warm_start_settings({**tiny, "warm_start": {"seed": 7}}, seed=3).seed == 7


@pytest.mark.parametrize(
    ("model_cfg", "message"),
    [
        ({"warm_start": {"steps": 0}}, "steps=0"),
        ({"warm_start": {"batch_size": 2.5}}, "batch_size=2.5"),
        ({"warm_start": {"lr": 0}}, "lr=0"),
        ({"warm_start": {"lr": "fast"}}, "lr='fast'"),
        ({"warm_start": {"weight_decay": -0.1}}, "weight_decay=-0.1"),
        ({"warm_start": {"steps": 10, "warmup_steps": 10}}, "warmup_steps=10"),
        ({"warm_start": {"seed": True}}, "seed=True"),
        ({"warm_start": {"corpus": "held_out"}}, "corpus='held_out'"),
        ({"warm_start": {"step": 10}}, "unknown key(s) step"),
        ({"warm_start": 300}, "warm_start=300"),
        ({"name_or_path": "some/model", "warm_start": {}}, "pretrained model"),
        ({"lora": {"r": 8}, "warm_start": {}}, "model.lora"),
    ],
)
def test_bad_settings_are_one_line_config_errors(model_cfg: dict, message: str):
    with pytest.raises(ConfigError) as info:
        warm_start_settings({"architecture": ARCH, **model_cfg}, seed=0)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_empty_corpus_is_a_config_error(corpus, tmp_path: Path):
    _, _, tokenizer = corpus
    with pytest.raises(ConfigError, match="no documents"):
        warm_start(fresh_model(tokenizer), tokenizer, [], SETTINGS, tmp_path)


@pytest.mark.slow
@pytest.mark.shared_data
@requires_shared_data
def test_a_run_records_its_warm_start_and_a_second_run_loads_it(tmp_path: Path, cache_dir: Path):
    overrides = [
        "model=tiny_pretrained",
        "dataset=c4",
        "method=random",
        "budget=0.5",
        "trainer.max_epochs=1",
        "dataset.params.max_train=40",
        "dataset.params.val_size=10",
        "dataset.params.test_size=10",
        "dataset.max_length=64",
        "model.architecture.hidden_size=32",
        "model.architecture.intermediate_size=64",
        "model.architecture.num_hidden_layers=1",
        "model.warm_start.steps=12",
        "model.warm_start.batch_size=4",
        "model.warm_start.warmup_steps=2",
        "logger=csv",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    ]
    done = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'first'}"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    first = read_results(tmp_path / "first")
    warm = first["model"]["warm_start"]
    assert first["model"]["name"] == "tiny_pretrained" and first["run"]["model"] == "tiny_pretrained"
    assert warm["steps"] == 12 and warm["n_documents"] == 40 and warm["cache_hit"] is False
    assert math.isfinite(warm["final_train_loss"]) and warm["settings"]["max_length"] == 64
    assert first["config"]["model"]["warm_start"]["seed"] is None and warm["settings"]["seed"] == 0

    second = train_and_evaluate(compose_config(overrides, tmp_path / "second", cache_dir))
    assert second["model"]["warm_start"]["cache_hit"] is True
    assert second["model"]["warm_start"]["key"] == warm["key"]
    # loading the weights continues the run exactly as training them did
    assert second["metrics"]["test/loss"] == pytest.approx(first["metrics"]["test/loss"], rel=1e-4)


@requires_shared_data
def test_a_warm_start_can_pre_train_on_another_dataset_than_the_pool():
    from tests.conftest import SHARED_DATA

    spec = {
        "dataset": "dolly",
        "params": {"data_files": str(SHARED_DATA / "dolly/dolly_3k.json"), "val_size": 2, "test_size": 2},
        "split": "train",
        "max_examples": 5,
    }
    settings = WarmStartSettings(corpus="dataset", dataset=spec)
    pool = [Example("p0", "q\n", "a")]
    corpus = settings.corpus_examples(pool)
    assert len(corpus) == 5 and all(ex.id.startswith("dolly-") for ex in corpus)
    assert WarmStartSettings().corpus_examples(pool) is pool
    for kwargs, message in [
        (dict(corpus="dataset"), "model.warm_start.dataset.dataset is required"),
        (dict(corpus="dataset", dataset={**spec, "split": "dev"}), "model.warm_start.dataset.split='dev'"),
        (dict(dataset=spec), "model.warm_start.dataset is set but model.warm_start.corpus=pool"),
    ]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            WarmStartSettings(**kwargs)
