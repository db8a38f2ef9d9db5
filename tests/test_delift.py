"""DELIFT (arXiv 2411.04425) and DELIFT (SE): each stage's objective does what its name says on pools whose
structure is known, the diagnostics show it, bad settings are one-line errors, and the real runs (the
utility kernel of a real model, the three stages, the in-context evaluation) go through the Trainer."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.base import SelectionContext
from p3bench.methods.delift import SubmodularSelection, kernel_view
from p3bench.models.tokenizer import train_local_tokenizer
from tests.conftest import compose_config, read_results, requires_shared_data

TOPICS = {
    "fruit": ["apples", "pears", "plums", "cherries", "grapes"],
    "rivers": ["the Nile", "the Amazon", "the Danube", "the Rhine", "the Volga"],
    "engines": ["diesel engines", "jet engines", "steam engines", "rocket engines", "electric motors"],
}


def _example(i: int, topic: str, thing: str, prefix: str = "p") -> Example:
    return Example(
        id=f"{prefix}{i}",
        prompt=f"Write one sentence about {thing}.\n",
        target=f"{thing} are a fine example of {topic}.",
        meta={"instruction": f"Write one sentence about {thing}.", "input": "", "domain": topic},
    )


def _pool(sizes: dict[str, int]) -> list[Example]:
    out = []
    for topic, n in sizes.items():
        for k in range(n):
            out.append(_example(len(out), topic, f"{TOPICS[topic][k % 5]} {k}"))
    return out


def _build(method: str, splits: DatasetSplits, budget: int, **options):
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    return METHODS.get(method)(
        splits=splits, tokenizer=tokenizer, budget=budget, seed=0, max_length=64, progress=False, **options
    )


def _ctx() -> SelectionContext:
    return SelectionContext(0, 0, 0, np.random.default_rng(0), None, None)


def _topics(dm, ids: list[str]) -> dict[str, int]:
    by_id = {ex.id: ex.meta["domain"] for ex in dm.pool}
    counts: dict[str, int] = {}
    for i in ids:
        counts[by_id[i]] = counts.get(by_id[i], 0) + 1
    return counts


def test_instruction_stage_covers_every_topic_and_beats_random_subsets():
    pool = _pool({"fruit": 20, "rivers": 20, "engines": 20})
    splits = DatasetSplits("toy", "instruction", pool, pool[:2], pool[:2])
    dm = _build("delift_se", splits, budget=3, embedder="tfidf")
    selection = dm.select(_ctx())
    assert len(selection.ids) == 3
    assert _topics(dm, selection.ids) == {"fruit": 1, "rivers": 1, "engines": 1}
    check = selection.diagnostics["check"]
    assert check["value"] >= check["random_value_max"] and check["value"] >= check["top_k_value"]
    assert selection.diagnostics["objective"] == "fl" and selection.diagnostics["stage"] == "instruction"


def test_task_stage_prefers_what_helps_the_target_set():
    pool = _pool({"fruit": 20, "rivers": 20, "engines": 20})
    target = [_example(100 + k, "rivers", f"{TOPICS['rivers'][k % 5]} {k}", prefix="t") for k in range(6)]
    splits = DatasetSplits("toy", "instruction", pool, target, target)
    dm = _build("delift_se", splits, budget=6, embedder="tfidf", stage="task")
    selection = dm.select(_ctx())
    counts = _topics(dm, selection.ids)
    assert counts.get("rivers", 0) > 6 / 3  # above a random pick's expected share
    check = selection.diagnostics["check"]
    assert check["target_coverage"] > check["random_target_coverage"]
    assert selection.diagnostics["kernel"]["target"]["n_targets"] == 6
    additive = _build("delift_se", splits, budget=6, embedder="tfidf", stage="task", mi_form="additive")
    assert _topics(additive, additive.select(_ctx()).ids).get("rivers", 0) > 2


def test_continual_stage_prefers_what_the_existing_data_does_not_cover(monkeypatch):
    pool = _pool({"fruit": 20, "rivers": 20, "engines": 20})
    seen = [_example(200 + k, "fruit", f"{TOPICS['fruit'][k % 5]} {k}", prefix="e") for k in range(20)]
    splits = DatasetSplits("toy", "instruction", pool, pool[:2], pool[:2])
    monkeypatch.setattr(SubmodularSelection, "existing", lambda self: seen)
    dm = _build("delift_se", splits, budget=6, embedder="tfidf", stage="continual", existing={"dataset": "x"})
    counts = _topics(dm, dm.select(_ctx()).ids)
    assert counts.get("fruit", 0) < 6 / 3  # below a random pick's expected share
    assert dm.select(_ctx()).diagnostics["kernel"]["existing"]["n_existing"] == 20


def test_the_kernel_sees_the_bare_instruction_not_the_training_template():
    ex = Example(
        "a",
        "### Instruction:\nSay hi.\n\n### Response:\n",
        "Hi.",
        meta={"instruction": "Say hi.", "input": "to Bo"},
    )
    assert kernel_view(ex).prompt == "Say hi.\nto Bo" and kernel_view(ex).target == "Hi."
    plain = Example("b", "Compute 1 + 1.\n", "2")
    assert kernel_view(plain) is plain


def test_bad_settings_are_one_line_errors():
    pool = _pool({"fruit": 10})
    splits = DatasetSplits("toy", "instruction", pool, [], pool[:2])
    cases = [
        (
            dict(stage="warmup"),
            "method.stage='warmup' is not supported: expected one of instruction, task, continual",
        ),
        (
            dict(stage="task"),
            "method.stage=task needs a target set: dataset='toy' has an empty validation split",
        ),
        (dict(stage="continual"), "method.existing.dataset is required: expected the name of a dataset"),
        (
            dict(stage="continual", existing={"dataset": "alpaca", "rows": 3}),
            "method.existing has unknown keys",
        ),
        (dict(optimizer="greedy"), "method.optimizer='greedy' is not supported"),
        (dict(eta=-1), "method.eta=-1 is invalid"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError) as caught:
            _build("delift_se", splits, budget=3, embedder="tfidf", **options)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    dm = _build("delift_se", splits, budget=3, embedder="tfidf", max_kernel_bytes=100)
    with pytest.raises(ConfigError, match=r"10 x 10 float32 .* over method.max_kernel_bytes=100"):
        dm.select(_ctx())


# --- through the Trainer, with the real utility kernel ----------------------------------------------------------
def _alpaca_overrides(method: str, *extra: str) -> list[str]:
    return [
        "dataset=alpaca",
        f"method={method}",
        "model=tiny",
        "model.architecture.max_position_embeddings=512",
        "budget=0.3",
        "dataset.params.max_train=30",
        "dataset.params.max_chars=300",
        "dataset.params.val_size=4",
        "dataset.params.test_size=4",
        "dataset.params.similarity_embedder=tfidf",
        "dataset.max_length=160",
        "dataset.max_new_tokens=8",
        "trainer.max_epochs=1",
        "loader.batch_size=8",
        "loader.eval_batch_size=4",
        "logger=csv",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.mark.slow
@requires_shared_data
@pytest.mark.parametrize(
    "stage_options",
    [
        ["method.stage=instruction"],
        [
            "method.stage=continual",
            "method.existing.dataset=dolly",
            "+method.existing.params.data_files=${paths.data_dir}/dolly/dolly_3k.json",
            "+method.existing.params.max_train=6",
            "+method.existing.params.val_size=2",
            "+method.existing.params.test_size=2",
            "method.existing.max_examples=6",
        ],
    ],
    ids=["instruction", "continual"],
)
def test_delift_runs_each_stage_through_the_trainer(stage_options, tmp_path: Path, cache_dir: Path):
    from p3bench.run import train_and_evaluate

    cfg = compose_config(_alpaca_overrides("delift", *stage_options), tmp_path / "run", cache_dir)
    train_and_evaluate(cfg)
    results = read_results(tmp_path / "run")
    (round0,) = results["selection"]["rounds"]
    diagnostics = round0["diagnostics"]
    assert results["selection"]["n_selected"] == 9
    kernel = diagnostics["kernel"]["pool"]
    assert kernel["shape"] == [30, 30] and kernel["n_targets"] == 30
    assert diagnostics["check"]["value"] >= diagnostics["check"]["random_value_mean"]
    assert round0["forward_tokens"] > 0 and results["compute"]["selection_flops"] > 0
    assert math.isfinite(results["metrics"]["test/rouge_l"])
    if "continual" in stage_options[0]:
        assert diagnostics["objective"] == "flcg" and diagnostics["kernel"]["existing"]["shape"] == [30, 6]


@pytest.mark.slow
@requires_shared_data
def test_in_context_evaluation_trains_nothing_and_puts_selected_examples_before_each_query(
    tmp_path: Path, cache_dir: Path
):
    from p3bench.run import train_and_evaluate

    overrides = _alpaca_overrides(
        "delift_se",
        "evaluation.mode=icl",
        "evaluation.icl.k=2",
        "evaluation.icl.embedder=tfidf",
        "dataset.max_length=320",
    )
    train_and_evaluate(compose_config(overrides, tmp_path / "run", cache_dir))
    results = read_results(tmp_path / "run")
    assert results["compute"]["optimizer_steps"] == 0 and results["compute"]["train_tokens"] == 0
    assert results["evaluation"]["mode"] == "icl" and results["evaluation"]["k"] == 2
    assert 0 < results["evaluation"]["demonstrations_mean"] <= 2
    assert results["selection"]["n_selected"] == 9 and math.isfinite(results["metrics"]["test/rouge_l"])


def test_an_experiment_sets_options_of_one_method_only(tmp_path: Path, cache_dir: Path):
    from p3bench.preflight import method_options

    cfg = compose_config(["experiment=delift_run"], tmp_path / "a", cache_dir)
    assert method_options(cfg)[1]["neighbours"] == 20
    for other in ("random", "delift_se", "deft_ucs"):  # the sweep's other methods do not get it
        cls, options = method_options(
            compose_config(["experiment=delift_run", f"method={other}"], tmp_path / other, cache_dir)
        )
        assert "neighbours" not in options and cls.name == other
    cfg = compose_config(
        ["experiment=delift_run", "+method_options.delift.neighbors=3"], tmp_path / "b", cache_dir
    )
    with pytest.raises(
        ConfigError, match="method_options.delift.neighbors is not an option of method 'delift'"
    ):
        method_options(cfg)


def test_each_kernel_has_the_targets_as_rows_and_the_demonstrations_as_columns(monkeypatch):
    """pool x pool for the objective, targets x pool (the pool examples as demonstrations) for FLMI's query
    kernel, pool x existing (the existing data as demonstrations) for FLCG's private kernel."""
    import p3bench.scoring.icl_utility as icl
    from p3bench.scoring.icl_utility import UtilityKernel

    calls = []

    def fake_kernel(model, tokenizer, targets, candidates=None, **kwargs):
        calls.append(
            ([ex.id for ex in targets], None if candidates is None else [ex.id for ex in candidates])
        )
        n, m = len(targets), len(targets if candidates is None else candidates)
        values = np.random.default_rng(len(calls)).random((n, m)).astype(np.float32)
        return UtilityKernel(values, values, np.zeros(n, np.float32), "euclidean", 7, 0.0, n * m)

    monkeypatch.setattr(icl, "icl_utility_kernel", fake_kernel)
    pool = _pool({"fruit": 4, "rivers": 4})
    target = [_example(100 + k, "rivers", f"the Nile {k}", prefix="t") for k in range(3)]
    seen = [_example(200 + k, "fruit", f"apples {k}", prefix="e") for k in range(2)]
    monkeypatch.setattr(SubmodularSelection, "existing", lambda self: seen)
    module = type("Module", (), {"model": torch.nn.Linear(2, 2)})()
    ctx = SelectionContext(0, 0, 0, np.random.default_rng(0), module, None)
    splits = DatasetSplits("toy", "instruction", pool, target, target)
    ids = [ex.id for ex in pool]
    for method, expected in [
        ("delift", [(ids, None)]),
        ("delift_task", [(ids, None), (["t100", "t101", "t102"], ids)]),
        ("delift_continual", [(ids, None), (ids, ["e200", "e201"])]),
    ]:
        calls.clear()
        options = {"existing": {"dataset": "x"}} if method == "delift_continual" else {}
        selection = _build(method, splits, budget=3, **options).select(ctx)
        assert calls == expected, method
        assert selection.forward_tokens == 7 * len(expected)


def test_the_transfer_dataset_checks_its_parts(monkeypatch):
    from p3bench.data import transfer

    pool = DatasetSplits("pool", "instruction", _pool({"fruit": 3}), [], [])
    target = DatasetSplits("target", "instruction", [], [_example(9, "rivers", "x", prefix="t")], [])
    parts = {
        "a": pool,
        "b": target,
        "qa": DatasetSplits("q", "qa", [], target.validation, []),
        "empty": DatasetSplits("e", "instruction", [], [], []),
        "clash": DatasetSplits("c", "instruction", [], pool.train[:1], []),
    }
    monkeypatch.setattr("p3bench.data.load_dataset_splits", lambda name, **params: parts[name])
    splits = transfer.load_transfer({"dataset": "a"}, {"dataset": "b"})
    assert (splits.train, splits.validation, splits.name) == (pool.train, target.validation, "pool->target")
    for pool_spec, target_spec, message in [
        ({}, {"dataset": "b"}, "dataset.params.pool.dataset is required"),
        ({"dataset": "a", "rows": 1}, {"dataset": "b"}, "dataset.params.pool has unknown keys"),
        ({"dataset": "a"}, {"dataset": "qa"}, "is a 'qa' task but the pool ('pool') is 'instruction'"),
        ({"dataset": "a"}, {"dataset": "empty"}, "has an empty validation split"),
        ({"dataset": "a"}, {"dataset": "clash"}, "is in both the pool (pool) and the target (c)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            transfer.load_transfer(pool_spec, target_spec)


def test_method_options_name_registered_methods_and_hold_mappings(tmp_path: Path, cache_dir: Path):
    from p3bench.preflight import method_options

    for override, message in [
        (
            "+method_options.delfit.neighbours=3",
            "method_options.delfit: 'delfit' is not a registered method; did you mean 'delift'?",
        ),
        ("+method_options.random=5", "method_options.random=5 is invalid: expected a mapping of options"),
    ]:
        cfg = compose_config([override], tmp_path / override[-3:], cache_dir)
        with pytest.raises(ConfigError, match=re.escape(message)):
            method_options(cfg)


@pytest.mark.slow
@requires_shared_data
def test_delift_task_stage_runs_through_the_trainer_on_a_transfer_pair(tmp_path: Path, cache_dir: Path):
    from p3bench.run import train_and_evaluate

    overrides = [
        "dataset=instruction_transfer",
        "method=delift_task",
        "model=tiny",
        "model.architecture.max_position_embeddings=512",
        "budget=0.3",
        "dataset.params.pool.params.max_train=20",
        "+dataset.params.pool.params.max_chars=300",
        "dataset.params.target.params.val_size=3",
        "dataset.params.target.params.test_size=3",
        "+dataset.params.target.params.similarity_embedder=tfidf",
        "dataset.max_length=160",
        "dataset.max_new_tokens=8",
        "method.neighbours=4",
        "trainer.max_epochs=1",
        "loader.batch_size=8",
        "loader.eval_batch_size=3",
        "logger=csv",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
    ]
    train_and_evaluate(compose_config(overrides, tmp_path / "run", cache_dir))
    results = read_results(tmp_path / "run")
    diagnostics = results["selection"]["rounds"][0]["diagnostics"]
    assert results["run"]["method"] == "delift_task" and diagnostics["objective"] == "flmi"
    assert (
        diagnostics["kernel"]["target"]["shape"] == [3, 20]
        and diagnostics["kernel"]["pool"]["neighbours"] == 4
    )
    assert results["run"]["method_options"]["neighbours"] == 4
    assert diagnostics["check"]["target_coverage"] >= 0 and results["dataset"]["sizes"]["test"] == 3
    assert math.isfinite(results["metrics"]["test/rouge_l"])
