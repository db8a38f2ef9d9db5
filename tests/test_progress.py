"""Progress bars of the long steps outside training: Lightning's look and stream, the process-wide switch,
the caller's flag and the rank, and real steps that show a bar when asked and nothing otherwise."""

from __future__ import annotations

import re
import sys
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar

from p3bench.algorithms.dpp import dpp_select
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.embeddings import build_embedder
from p3bench.execution.sandbox import run_many
from p3bench.models.collate import encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring import ScoringItems, build_scorer
from p3bench.utils.progress import (
    progress_bar,
    progress_enabled,
    progress_shown,
    set_progress_enabled,
)
from tests.conftest import SMALL_LLAMA

TEXTS = [
    "Tom has 3 apples and buys 4 more.",
    "A train leaves at noon and travels 60 km.",
    "The sum of two numbers is 12 and their difference is 2.",
    "Tom has 5 apples and buys 2 more.",
]
# Lightning's bar line once finished: "<desc>: 100%|██████████| n/n [mm:ss<mm:ss, rate<unit>/s]"
FINISHED = r"{desc}: 100%\|█+\| {n}/{n} \[\d\d:\d\d<\d\d:\d\d, [\d.]+{unit}/s\]"


@pytest.fixture(autouse=True)
def rank_zero_and_switch_on(monkeypatch: pytest.MonkeyPatch):
    """Each test starts on rank zero (no rank variables) with the switch on, and leaves the switch as found."""
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    before = progress_enabled()
    set_progress_enabled(True)
    yield
    set_progress_enabled(before)


def test_a_bar_looks_like_lightnings_and_writes_to_stdout(capsys: pytest.CaptureFixture[str]):
    bar = progress_bar(total=3, desc="demo step", unit="text", leave=True)
    for _ in range(3):
        bar.update(1)
    bar.close()
    out, err = capsys.readouterr()
    assert err == ""
    assert re.search(FINISHED.format(desc="demo step", n=3, unit="text"), out), out
    # the same bar class, format, stream and options as Lightning's own training bar
    lightning = TQDMProgressBar().init_train_tqdm()
    lightning.close()
    assert type(bar) is type(lightning) is Tqdm
    assert bar.bar_format == lightning.bar_format == TQDMProgressBar.BAR_FORMAT
    assert bar.dynamic_ncols and lightning.dynamic_ncols
    assert bar.smoothing == lightning.smoothing == 0
    assert bar.fp == sys.stdout == lightning.fp


def test_an_iterable_bar_yields_everything_and_clears_itself(capsys: pytest.CaptureFixture[str]):
    assert list(progress_bar(range(5), desc="walk", unit="item")) == list(range(5))
    out, err = capsys.readouterr()
    assert "walk:" in out and "item/s" in out and err == ""
    assert out.endswith("\r")  # leave=False: the finished bar is wiped, as Lightning's validation bar


@pytest.mark.parametrize("silenced_by", ["switch", "caller", "rank", "local_rank", "torch_distributed"])
def test_no_output_when_switched_off_asked_not_to_or_off_rank_zero(
    silenced_by: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    enabled = True
    if silenced_by == "switch":
        set_progress_enabled(False)
    elif silenced_by == "caller":
        enabled = False
    elif silenced_by == "rank":
        monkeypatch.setenv("RANK", "1")
    elif silenced_by == "local_rank":
        monkeypatch.setenv("LOCAL_RANK", "2")
    else:
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 3)
    assert not progress_shown(enabled)
    assert list(progress_bar(range(4), desc="quiet", enabled=enabled)) == [0, 1, 2, 3]
    with progress_bar(total=2, desc="quiet too", enabled=enabled) as bar:
        bar.update(1)
        bar.set_postfix(loss=1.0)
        bar.update(1)
    assert capsys.readouterr() == ("", "")


def test_the_switch_and_rank_zero(monkeypatch: pytest.MonkeyPatch):
    assert progress_enabled() and progress_shown() and progress_shown(True) and not progress_shown(False)
    set_progress_enabled(False)
    assert not progress_enabled() and not progress_shown(True)
    set_progress_enabled(True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")  # RANK, the global rank, decides
    assert progress_shown()


def test_tfidf_embedding_shows_a_bar_when_enabled_and_is_silent_otherwise(capsys: pytest.CaptureFixture[str]):
    vectors = build_embedder("tfidf", dim=3).embed(TEXTS)
    out, _ = capsys.readouterr()
    assert "embed[tfidf]:" in out and "stage/s" in out
    set_progress_enabled(False)
    np.testing.assert_array_equal(build_embedder("tfidf", dim=3).embed(TEXTS), vectors)
    set_progress_enabled(True)
    np.testing.assert_array_equal(build_embedder("tfidf", dim=3, progress=False).embed(TEXTS), vectors)
    assert capsys.readouterr() == ("", "")


def test_dpp_greedy_and_running_many_calls_show_bars(capsys: pytest.CaptureFixture[str]):
    features = np.random.default_rng(0).normal(size=(40, 6))
    for kernel in ("cosine", "rbf"):
        shown = dpp_select(features, 10, kernel=kernel, progress=True)
        out, _ = capsys.readouterr()
        assert "DPP greedy:" in out, kernel
        quiet = dpp_select(features, 10, kernel=kernel)
        np.testing.assert_array_equal(shown.indices, quiet.indices)
        assert capsys.readouterr() == ("", "")
    assert run_many(lambda x: 2 * x, range(6), workers=2, progress=True) == [0, 2, 4, 6, 8, 10]
    assert "running programs:" in capsys.readouterr().out
    set_progress_enabled(False)
    assert run_many(lambda x: 2 * x, range(6), workers=2, progress=True) == [0, 2, 4, 6, 8, 10]
    assert capsys.readouterr() == ("", "")


@pytest.fixture(scope="module")
def scoring_setup():
    splits = load_synthetic_math(n_train=12, n_val=2, n_test=2, seed=3)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=200)
    pl.seed_everything(0, verbose=False)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=1e-3), evaluator=None)
    items = ScoringItems(
        splits.train, encode_examples(splits.train, tokenizer), list(range(len(splits.train))), tokenizer, 96
    )
    return module, items


def test_a_scoring_pass_shows_a_bar_only_when_enabled(scoring_setup, capsys: pytest.CaptureFixture[str]):
    module, items = scoring_setup
    shown = build_scorer("likelihood", batch_size=4).score(module, items)
    out, err = capsys.readouterr()
    assert "scoring (likelihood):" in out and "example/s" in out and err == ""
    set_progress_enabled(False)
    np.testing.assert_allclose(
        build_scorer("likelihood", batch_size=4).score(module, items).scores, shown.scores
    )
    set_progress_enabled(True)
    build_scorer("likelihood", batch_size=4, progress=False).score(module, items)
    assert capsys.readouterr() == ("", "")


def test_pass_rate_scoring_passes_its_flag_to_a_checker_that_runs_programs(
    scoring_setup, capsys: pytest.CaptureFixture[str]
):
    module, items = scoring_setup
    seen: list[bool] = []

    def checker(text, example) -> bool:
        return False

    def batch(pairs, *, progress: bool = False) -> list[bool]:
        seen.append(progress)
        return [False] * len(pairs)

    checker.batch = batch
    for progress in (True, False):
        scorer = build_scorer(
            "pass_rate", k=2, max_new_tokens=4, batch_size=6, checker=checker, progress=progress
        )
        scorer.score(module, items)
    assert seen == [True, True, False, False]
    out, _ = capsys.readouterr()
    assert out.count("scoring (pass rate):") >= 1 and "problem/s" in out
