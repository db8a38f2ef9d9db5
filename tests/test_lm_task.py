"""The lm task end to end: held-out perplexity by teacher forcing equals a hand computation from the model's
logits (documents of different lengths in one padded batch), validation perplexity is token-weighted, an lm
dataset cannot reach a generate-and-check path, and a real run on the Pile sample lowers test perplexity."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.eval.answers import EVALUATORS, check_all
from p3bench.methods.simple import RandomSubset
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM, metric_safe, perplexity_metrics
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.run import train_and_evaluate
from tests.test_contract import ARCH

from .conftest import compose_config, read_results, requires_shared_data

MAX_LENGTH = 48
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "seven",
    "dogs",
    "ran",
    "far",
    "across",
    "green",
    "hills",
    "under",
    "grey",
    "skies",
]


def doc(i: int, n_words: int, domain: str) -> Example:
    text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words))
    return Example(id=f"d{i}", prompt="", target=text, meta={"domain": domain, "source": "test"})


@pytest.fixture(scope="module")
def lm_setup():
    lengths = [3, 40, 9, 1, 25, 60, 14, 6, 33, 2, 18, 50]
    docs = [doc(i, n, ["Pile-CC", "Wikipedia (en)", "c4"][i % 3]) for i, n in enumerate(lengths)]
    splits = DatasetSplits(
        name="toy", task="lm", train=docs[:4], validation=docs[4:8], test=docs[8:] + docs[:4]
    )
    tokenizer = train_local_tokenizer([ex.target for ex in docs], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": ARCH}, tokenizer, offline=True)
    module = SelectionLM(
        model,
        tokenizer,
        partial(torch.optim.AdamW, lr=1e-3),
        evaluator=EVALUATORS.get("perplexity"),
        task="lm",
    )
    return splits, tokenizer, module


def trainer() -> pl.Trainer:
    return pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


def hand_nll(module: SelectionLM, tokenizer, examples: list[Example]) -> list[tuple[float, int]]:
    """(sum of next-token NLLs, number of predicted tokens) of each document, run alone (no padding):
    BOS + text + EOS, truncated to MAX_LENGTH, every token after BOS predicted."""
    rows = []
    with torch.no_grad():
        for ex in examples:
            ids = [tokenizer.bos_token_id, *tokenizer(ex.target, add_special_tokens=False)["input_ids"]]
            ids = (ids + [tokenizer.eos_token_id])[:MAX_LENGTH]
            logits = module.model(input_ids=torch.tensor([ids])).logits[0].double()
            nll = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")
            rows.append((float(nll), len(ids) - 1))
    return rows


def test_test_perplexity_equals_a_hand_computation_over_padded_batches(lm_setup):
    splits, tokenizer, module = lm_setup
    hand = hand_nll(module, tokenizer, splits.test)
    lengths = [n for _, n in hand]
    # documents of different lengths, some cut at MAX_LENGTH
    assert len(set(lengths)) >= 4 and max(lengths) == MAX_LENGTH - 1 and min(lengths) < 10
    expected = math.exp(sum(s for s, _ in hand) / sum(n for _, n in hand))
    for batch_size in (8, 3):  # all in one padded batch, and spread over batches
        dm = RandomSubset(
            splits=splits, tokenizer=tokenizer, eval_batch_size=batch_size, max_length=MAX_LENGTH
        )
        metrics = trainer().test(module, datamodule=dm, verbose=False)[0]
        assert metrics["test/perplexity"] == pytest.approx(expected, rel=1e-5)
        assert metrics["test/loss"] == pytest.approx(math.log(expected), rel=1e-5)
        assert metrics["test/n_examples"] == 8 and metrics["test/n_tokens"] == sum(n for _, n in hand)
        records = {r["id"]: r for r in module.test_records}
        for ex, (nll, n) in zip(splits.test, hand, strict=True):
            assert records[ex.id]["n_tokens"] == n and records[ex.id]["nll_sum"] == pytest.approx(
                nll, rel=1e-5
            )
            assert records[ex.id]["domain"] == ex.meta["domain"]
    for domain in ("Pile-CC", "Wikipedia (en)", "c4"):
        rows = [h for ex, h in zip(splits.test, hand, strict=True) if ex.meta["domain"] == domain]
        value = math.exp(sum(s for s, _ in rows) / sum(n for _, n in rows))
        assert metrics[f"test/perplexity_domain_{metric_safe(domain)}"] == pytest.approx(value, rel=1e-5)
    assert {"test/perplexity_domain_pile_cc", "test/perplexity_domain_wikipedia_en"} <= set(metrics)


def test_validation_perplexity_is_token_weighted(lm_setup):
    splits, tokenizer, module = lm_setup
    hand = hand_nll(module, tokenizer, splits.validation)
    expected = math.exp(sum(s for s, _ in hand) / sum(n for _, n in hand))
    per_document_mean = sum(s / n for s, n in hand) / len(hand)
    assert abs(math.log(expected) - per_document_mean) > 1e-3  # the two averages differ on these lengths
    dm = RandomSubset(splits=splits, tokenizer=tokenizer, eval_batch_size=3, max_length=MAX_LENGTH)
    metrics = trainer().validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/perplexity"] == pytest.approx(expected, rel=1e-5)


def test_perplexity_metrics_weight_tokens_and_name_domains_safely():
    records = [
        {"id": "a", "domain": "Pile-CC", "nll_sum": 20.0, "n_tokens": 10},
        {"id": "b", "domain": "Pile-CC", "nll_sum": 1.0, "n_tokens": 1},
        {"id": "c", "domain": "pile cc", "nll_sum": 9.0, "n_tokens": 3},
        {"id": "d", "domain": None, "nll_sum": 0.0, "n_tokens": 6},
    ]
    metrics = perplexity_metrics(records)
    assert metrics["loss"] == pytest.approx(30 / 20) and metrics["perplexity"] == pytest.approx(math.exp(1.5))
    assert metrics["perplexity_domain_pile_cc"] == pytest.approx(math.exp(21 / 11))
    assert metrics["perplexity_domain_pile_cc_2"] == pytest.approx(math.exp(3.0))
    assert metrics["n_examples"] == 4 and metrics["n_tokens"] == 20
    assert metric_safe("Wikipedia (en)") == "wikipedia_en" and metric_safe("???") == "unnamed"
    assert perplexity_metrics([]) == {}


def test_an_lm_dataset_never_reaches_answer_checking(lm_setup):
    splits, tokenizer, module = lm_setup
    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ConfigError, match="dataset.evaluator=perplexity"):
        SelectionLM(module.model, tokenizer, optimizer, evaluator=EVALUATORS.get("math"), task="lm")
    with pytest.raises(ConfigError, match="task is 'qa'"):
        SelectionLM(module.model, tokenizer, optimizer, evaluator=EVALUATORS.get("perplexity"))
    with pytest.raises(ConfigError, match="task='pretrain'"):
        SelectionLM(module.model, tokenizer, optimizer, task="pretrain")
    # a scorer that generates and checks answers (pass rate) stops at the first check, in one line
    with pytest.raises(ConfigError) as info:
        check_all(EVALUATORS.get("perplexity"), [("generated text", splits.test[0])])
    assert "\n" not in str(info.value) and "perplexity" in str(info.value)


@pytest.mark.slow
@pytest.mark.shared_data
@requires_shared_data
def test_pile_run_writes_test_perplexity_and_training_lowers_it(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture
):
    overrides = [
        "dataset=pile",
        "method=random",
        "budget=0.5",
        "trainer.max_epochs=1",
        "dataset.params.max_train=200",
        "dataset.params.val_size=40",
        "dataset.params.test_size=40",
        "logger=csv",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    ]
    results = {}
    for name, extra in (("trained", []), ("untrained", ["trainer.limit_train_batches=0"])):
        train_and_evaluate(compose_config([*overrides, *extra], tmp_path / name, cache_dir))
        results[name] = read_results(tmp_path / name)
    trained, untrained = results["trained"], results["untrained"]
    assert trained["dataset"]["task"] == "lm" and trained["dataset"]["sizes"] == {
        "train": 200,
        "validation": 40,
        "test": 40,
    }
    metrics = trained["metrics"]
    assert math.isfinite(metrics["test/perplexity"]) and metrics["test/perplexity"] > 1
    assert metrics["test/perplexity"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-5)
    assert metrics["test/n_examples"] == 40 and "val/perplexity" in metrics
    assert any(k.startswith("test/perplexity_domain_") for k in metrics)
    assert trained["compute"]["train_tokens"] > 0 and untrained["compute"]["train_tokens"] == 0
    assert metrics["test/perplexity"] < 0.9 * untrained["metrics"]["test/perplexity"]
    assert len((tmp_path / "trained" / "predictions.jsonl").read_text().splitlines()) == 40
    out = capsys.readouterr().out
    assert "test ppl" in out and "test acc" not in out
