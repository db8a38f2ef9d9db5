"""The evaluation of generated responses (the instruction task): ROUGE-L and embedding similarity against a
direct computation on fixed texts, means and standard errors over the test records, the test pass through
the real Trainer (the response's NLL against the model's loss on each example alone), the LLM judge's
plumbing with tiny local models (prompt, score parsing, unparsable judgements counted), the report's headline
for instruction runs, and one small Alpaca run end to end."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from rouge_score import rouge_scorer

from p3bench.data import load_dataset_splits
from p3bench.data.example import Example
from p3bench.embeddings import build_embedder
from p3bench.errors import ConfigError
from p3bench.eval.answers import EVALUATORS
from p3bench.eval.instruction import (
    InstructionEvalSettings,
    add_epoch_end_scores,
    embedding_similarity,
    instruction_metrics,
    rouge_l,
)
from p3bench.eval.judge import (
    DEFAULT_RUBRIC,
    JudgeItem,
    JudgeSettings,
    ResponseJudge,
    parse_judge_score,
)
from p3bench.methods.simple import RandomSubset
from p3bench.models.collate import TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.losses import per_example_nll
from p3bench.models.module import SelectionLM, check_task_evaluator
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.report.aggregate import group_runs, metric_direction
from p3bench.report.runs import OK, RunRecord
from p3bench.results import quality_metric, summary_metrics

from .conftest import SMALL_LLAMA, compose_config, read_results, requires_shared_data, tiny_llama

PREDICTIONS = ["the cat sat on the mat", "", "Cats are running fast", "completely different words"]
REFERENCES = ["the cat is on the mat", "anything at all", "a cat runs fast", "nothing alike here"]


# --- per-example scores against direct computations ---------------------------------------------------------
def test_rouge_l_is_rouge_score_f1_with_stemming():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(direct, abs=0)
    # by hand: the longest common subsequence "the cat on the mat" is 5 of 6 words on both sides
    assert rouge_l(PREDICTIONS[:1], REFERENCES[:1])[0] == pytest.approx(5 / 6)
    # stemmed: [cat, are, run, fast] against [a, cat, run, fast] share "cat run fast"
    assert rouge_l(PREDICTIONS[2:3], REFERENCES[2:3])[0] == pytest.approx(0.75)
    assert rouge_l([""], ["x"]) == [0.0]


class TableEmbedder:
    """A test double: fixed, unnormalised vectors by text."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_embedding_similarity_is_the_cosine_of_each_pair_from_one_call():
    table = {"a": [3.0, 4.0], "b": [4.0, 3.0], "c": [0.0, 0.0], "d": [-1.0, 0.0], "e": [2.0, 0.0]}
    embedder = TableEmbedder(table)
    values = embedding_similarity(embedder, ["a", "c", "d"], ["b", "a", "e"])
    assert values == pytest.approx([24 / 25, 0.0, -1.0]) and embedder.calls == 1
    assert embedding_similarity(embedder, [], []).shape == (0,)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        embedding_similarity(embedder, ["a", "b"], ["a"])


def test_embedding_similarity_with_minilm_equals_a_direct_computation():
    embedder = build_embedder("minilm", progress=False)
    values = embedding_similarity(embedder, PREDICTIONS, REFERENCES)
    direct = [float(np.dot(*embedder.embed([p, r]))) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert values == pytest.approx(direct, abs=1e-5)
    assert embedding_similarity(embedder, ["the same words"], ["the same words"])[0] == pytest.approx(
        1.0, abs=1e-5
    )
    assert values[0] > values[3]  # a paraphrase is closer than unrelated words


def test_tfidf_similarity_puts_responses_and_references_in_one_space():
    values = embedding_similarity(
        build_embedder("tfidf", progress=False), ["red apples", "blue sky"], ["red apples", "green grass"]
    )
    assert values == pytest.approx([1.0, 0.0], abs=1e-5)


def test_metrics_are_means_and_standard_errors_over_the_records_that_have_each():
    records = [
        {"id": "a", "rouge_l": 0.5, "response_nll": 2.0, "judge_score": 4, "generated": "x"},
        {"id": "b", "rouge_l": 0.25, "response_nll": 3.0, "embedding_similarity": 0.9},
        {"id": "c", "rouge_l": 0.0, "response_nll": 7.0, "judge_score": 2},
    ]
    metrics = instruction_metrics(records)
    assert metrics["n_examples"] == 3
    for name, values in {
        "rouge_l": [0.5, 0.25, 0.0],
        "response_nll": [2.0, 3.0, 7.0],
        "judge_score": [4.0, 2.0],
    }.items():
        assert metrics[name] == pytest.approx(np.mean(values))
        assert metrics[f"{name}_se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)))
    # one value: a mean without a standard error; no value: neither
    assert metrics["embedding_similarity"] == pytest.approx(0.9) and "embedding_similarity_se" not in metrics
    assert "response_bpb" not in metrics and instruction_metrics([]) == {}


# --- the test pass through the real Trainer ---------------------------------------------------------------
def toy_records(n: int) -> list[dict]:
    return [
        {
            "instruction": f"Describe item {i}.",
            "input": f"item {i}" if i % 2 else "",
            "output": f"Item {i} is {'small and red' if i % 3 else 'large'}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def instruction_setup(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("instruction") / "toy.json"
    path.write_text(json.dumps(toy_records(30)))
    splits = load_dataset_splits(
        "alpaca", data_files=str(path), val_size=2, test_size=7, similarity_embedder="tfidf"
    )
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    return splits, tokenizer, model


def test_the_test_pass_scores_responses_against_their_references(instruction_setup):
    splits, tokenizer, model = instruction_setup
    module = SelectionLM(
        model,
        tokenizer,
        partial(torch.optim.AdamW, lr=1e-3),
        evaluator=EVALUATORS.get("instruction"),
        max_new_tokens=5,
        task="instruction",
    )
    datamodule = RandomSubset(
        splits=splits, tokenizer=tokenizer, budget=0.5, eval_batch_size=3, max_length=256
    )
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    records = module.test_records
    assert sorted(r["id"] for r in records) == sorted(ex.id for ex in splits.test)
    by_id = {ex.id: ex for ex in splits.test}
    collate = TrainCollator(tokenizer.pad_token_id, max_length=256)
    for record in records:
        example = by_id[record["id"]]
        assert record["reference"] == example.target and record["instruction"] == example.meta["instruction"]
        assert record["rouge_l"] == rouge_l([record["generated"]], [example.target])[0]
        assert not {"correct", "solution_nll", "solution_bpb", "answer_located"} & set(record)
        # the response's NLL is the training loss on the example, run alone (no padding)
        encoded = encode_examples([example], tokenizer)
        batch = collate(
            [
                {
                    "prompt_ids": encoded.prompt_ids[0],
                    "target_ids": encoded.target_ids[0],
                    "weight": 1.0,
                    "index": 0,
                }
            ]
        )
        with torch.no_grad():
            alone = per_example_nll(model(input_ids=batch["input_ids"]).logits, batch["labels"])[0].item()
        assert record["response_nll"] == pytest.approx(alone, rel=1e-5)
        assert record["response_bpb"] > 0 and -1.0 <= record["embedding_similarity"] <= 1.0
    expected = instruction_metrics(records)
    assert set(expected) == {k.removeprefix("test/") for k in metrics}
    for name, value in expected.items():
        assert metrics[f"test/{name}"] == pytest.approx(value, rel=1e-5)
    assert "test/judge_score" not in metrics and "test/accuracy" not in metrics


def test_instruction_task_and_evaluator_must_match():
    instruction, gsm8k = EVALUATORS.get("instruction"), EVALUATORS.get("gsm8k")
    check_task_evaluator("instruction", instruction)
    for task, evaluator, expected in (
        ("instruction", gsm8k, "expected dataset.evaluator=instruction"),
        ("qa", instruction, "expected the dataset's own evaluator"),
        ("lm", instruction, "expected the dataset's own evaluator"),
        ("instruction", EVALUATORS.get("perplexity"), "expected dataset.evaluator=instruction"),
    ):
        with pytest.raises(ConfigError) as info:
            check_task_evaluator(task, evaluator)
        assert "\n" not in str(info.value) and expected in str(info.value)
    with pytest.raises(ConfigError, match="not checked right or wrong"):
        instruction("text", Example("x", "p", "t"))


# --- the LLM judge ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Clear and right.\nScore: 4", 4),
        ("Feedback: fine. [RESULT] 2", 2),
        ("score = 5", 5),
        ("**Score:** 3", 3),
        ("The score is 1.", 1),
        ("Score: 2/5", 2),
        ("Score: 2 at first, but on reflection Score: 5", 5),
        ("a score of 3 out of 5", 3),
        ("Score: 4.5", None),
        ("Score: 10", None),
        ("Score: 0", None),
        ("I would give it a four.", None),
        ("", None),
    ],
)
def test_parse_judge_score(text: str, score: int | None):
    assert parse_judge_score(text) == score


ITEMS = [
    JudgeItem("Name a primary colour.", "", "Red.", "Red, blue or yellow."),
    JudgeItem("Add the numbers.", "2 and 3", "", "5"),
    JudgeItem("Summarise.", "x" * 50, "y" * 50, "z"),
]


@pytest.fixture(scope="module")
def judge_parts():
    texts = [ResponseJudge(None, None).prompt(item) for item in ITEMS] + ["Score: 4", "[RESULT] 2"]
    tokenizer = train_local_tokenizer(texts, vocab_size=300)
    return tokenizer, tiny_llama(tokenizer, max_positions=2048)


def test_the_judge_prompt_holds_instruction_input_response_reference_and_rubric(judge_parts):
    tokenizer, model = judge_parts
    judge = ResponseJudge(model, tokenizer, max_field_chars=30)
    first, second, third = (judge.prompt(item) for item in ITEMS)
    for part in (
        "### Instruction:\nName a primary colour.",
        "### Response to grade:\nRed.",
        "Red, blue or yellow.",
    ):
        assert part in first
    assert DEFAULT_RUBRIC in first and first.rstrip().endswith(
        '"Score: N", where N is an integer from 1 to 5.'
    )
    assert "### Input:" not in first and "### Input:\n2 and 3" in second
    assert "### Response to grade:\n(empty)" in second  # an empty response is shown as such
    assert "x" * 30 + " [...]" in third and "x" * 31 not in third  # long fields cut to max_field_chars
    custom = ResponseJudge(model, tokenizer, rubric="1: bad\n5: good").prompt(ITEMS[0])
    assert "1: bad\n5: good" in custom and DEFAULT_RUBRIC not in custom
    assert judge.model_text(ITEMS[0]) == first  # no chat template: the prompt itself


def test_a_chat_template_wraps_the_prompt_as_a_user_turn(judge_parts):
    tokenizer, model = judge_parts
    chat = train_local_tokenizer(["x"], vocab_size=300)
    chat.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<judge>"
    judge = ResponseJudge(model, chat)
    assert judge.model_text(ITEMS[0]) == f"<user>{judge.prompt(ITEMS[0])}</user><judge>"


def test_judge_from_a_local_directory_counts_judgements_it_cannot_read(judge_parts, tmp_path: Path):
    tokenizer, model = judge_parts
    model.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    settings = InstructionEvalSettings(
        similarity_embedder=None,
        judge=JudgeSettings(model=str(tmp_path / "judge"), max_new_tokens=6, batch_size=2, device="cpu"),
    )
    records = [
        {
            "id": str(i),
            "instruction": it.instruction,
            "input": it.input,
            "generated": it.response,
            "reference": it.reference,
        }
        for i, it in enumerate(ITEMS)
    ]
    counts = add_epoch_end_scores(records, settings)
    assert counts["judge_parsed"] + counts["judge_unparsed"] == 3
    for record in records:
        assert isinstance(record["judgement"], str) and "embedding_similarity" not in record
        assert record.get("judge_score") == parse_judge_score(record["judgement"])
    metrics = instruction_metrics(records)
    assert ("judge_score" in metrics) == (counts["judge_parsed"] > 0)
    with pytest.raises(ConfigError, match="the judge has no model"):
        ResponseJudge.from_settings(JudgeSettings())


def test_judge_scores_are_read_from_what_the_model_generates(judge_parts, monkeypatch: pytest.MonkeyPatch):
    tokenizer, model = judge_parts
    replies = iter(["Right and complete. Score: 4", "I cannot tell.", "[RESULT] 2"])
    prompts: list[str] = []

    def generate(input_ids, attention_mask, max_new_tokens, **options):
        prompts.extend(tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        rows = [
            tokenizer(next(replies), add_special_tokens=False)["input_ids"][:max_new_tokens]
            for _ in input_ids
        ]
        width = max(len(r) for r in rows)
        tail = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            tail[i, : len(row)] = torch.tensor(row)
        return torch.cat([input_ids, tail], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    judge = ResponseJudge(model, tokenizer, max_new_tokens=32, batch_size=2)
    records = [
        {
            "id": str(i),
            "instruction": it.instruction,
            "input": it.input,
            "generated": it.response,
            "reference": it.reference,
        }
        for i, it in enumerate(ITEMS)
    ]
    counts = add_epoch_end_scores(records, InstructionEvalSettings(similarity_embedder=None), judge=judge)
    assert [r.get("judge_score") for r in records] == [4, None, 2]
    assert counts == {"judge_parsed": 2.0, "judge_unparsed": 1.0}
    assert prompts == [judge.prompt(item) for item in ITEMS]  # left padding dropped, in order
    metrics = instruction_metrics(records)
    assert metrics["judge_score"] == 3.0 and metrics["judge_score_se"] == pytest.approx(1.0)


# --- the report's headline ----------------------------------------------------------------------------------
def fake_run(task: str, seed: int, metrics: dict[str, float]) -> RunRecord:
    results = {
        "run": {"method": "random", "seed": seed},
        "dataset": {"task": task},
        "selection": {"budget_size": 5, "pool_size": 10},
        "metrics": metrics,
        "compute": {},
    }
    identity = {"experiment": "e", "dataset": task, "method": "random", "budget": 0.5, "seed": seed}
    return RunRecord(Path(f"/x/{task}{seed}"), OK, None, results, identity)


def test_instruction_runs_are_headed_by_rouge_l_with_the_other_metrics_beside():
    metrics = {
        "test/rouge_l": 0.2,
        "test/embedding_similarity": 0.5,
        "test/response_bpb": 3.0,
        "val/loss": 2.0,
    }
    runs = [fake_run("instruction", seed, metrics) for seed in (0, 1)]
    assert quality_metric(runs[0].results) == ("test/rouge_l", True)
    (section,) = group_runs(runs)
    assert (section.metric, section.higher_is_better) == ("test/rouge_l", True)
    assert section.second == ("test/embedding_similarity", True)
    assert section.also == [("test/response_bpb", False)]
    judged = [fake_run("instruction", s, {**metrics, "test/judge_score": 3.5}) for s in (0, 1)]
    assert group_runs(judged)[0].also == [("test/response_bpb", False), ("test/judge_score", True)]
    summary = summary_metrics(runs[0].results)
    assert summary["quality"] == 0.2 and summary["quality_metric"] == "test/rouge_l"
    assert summary["test_embedding_similarity"] == 0.5 and summary["quality_higher_is_better"] is True
    untested = fake_run("instruction", 0, {"val/loss": 2.0})
    assert quality_metric(untested.results) == ("val/loss", False)
    for name, higher in (
        ("test/rouge_l", True),
        ("test/embedding_similarity", True),
        ("test/judge_score", True),
        ("test/response_bpb", False),
        ("test/rouge_l_se", None),
    ):
        assert metric_direction(name) is higher


def test_qa_and_lm_headlines_are_unchanged():
    qa = [fake_run("qa", s, {"test/accuracy": 0.5, "test/answer_prob": 0.3}) for s in (0, 1)]
    (section,) = group_runs(qa)
    assert section.metric == "test/accuracy" and section.second == ("test/answer_prob", True)
    assert section.also == []
    near_floor = [fake_run("qa", s, {"test/accuracy": 0.05, "test/answer_prob": 0.3}) for s in (0, 1)]
    assert group_runs(near_floor)[0].metric == "test/answer_prob"
    lm = fake_run("lm", 0, {"test/perplexity": 30.0})
    assert quality_metric(lm.results) == ("test/perplexity", False)
    assert quality_metric({"metrics": {"test/accuracy": 0.4}}) == ("test/accuracy", True)


# --- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.shared_data
@requires_shared_data
def test_a_small_alpaca_run_writes_the_instruction_metrics(tmp_path: Path, cache_dir: Path):
    from p3bench.report.build import build_report
    from p3bench.run import train_and_evaluate

    overrides = [
        "dataset=alpaca",
        "method=random",
        "model=tiny",
        "budget=0.5",
        "dataset.params.max_train=40",
        "dataset.params.val_size=4",
        "dataset.params.test_size=6",
        "dataset.max_length=192",
        "dataset.max_new_tokens=8",
        "trainer.max_epochs=1",
        "loader.batch_size=8",
        "loader.eval_batch_size=6",
        "logger=csv",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    ]
    train_and_evaluate(compose_config(overrides, tmp_path / "run", cache_dir))
    results = read_results(tmp_path / "run")
    assert results["dataset"]["task"] == "instruction"
    assert results["dataset"]["sizes"] == {"train": 40, "validation": 4, "test": 6}
    metrics = results["metrics"]
    for name in ("rouge_l", "embedding_similarity", "response_nll", "response_bpb"):
        assert math.isfinite(metrics[f"test/{name}"]) and math.isfinite(metrics[f"test/{name}_se"]), name
    assert 0 <= metrics["test/rouge_l"] <= 1 and metrics["test/response_bpb"] > 0
    assert metrics["test/n_examples"] == 6 and "test/accuracy" not in metrics
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(
        {"generated", "reference", "rouge_l", "embedding_similarity"} <= set(r) for r in rows
    )
    assert metrics["test/rouge_l"] == pytest.approx(np.mean([r["rouge_l"] for r in rows]), rel=1e-6)
    assert summary_metrics(results)["quality_metric"] == "test/rouge_l"
    report = build_report([tmp_path / "run"], tmp_path / "report", make_plots=False)
    assert "test/rouge_l (higher is better)" in report.markdown
    assert "### Also: test/embedding_similarity (higher is better)" in report.markdown
    assert "### Also: test/response_bpb (lower is better)" in report.markdown
