"""The controls ``oracle_clean`` and ``oracle_defects``: exact counts of planted defects in their selections
(checked against the oracle fields directly and against the results' composition), uniform draws within the
clean and defective parts, the same selection for the same seed, one-line refusals (out-of-range share, too
few defects or clean examples, data without oracle fields, through the command once), their marking as
controls (registry, command-line listing, wandb tag), and whole runs through the real Trainer."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from p3bench.cli import CONFIG_DIR, check_group_overrides
from p3bench.data.example import DatasetSplits, Example
from p3bench.data.synthetic_math import load_synthetic_math
from p3bench.data.text import load_text_mix
from p3bench.errors import ConfigError
from p3bench.methods import CONTROLS, METHODS, control_names, is_control
from p3bench.methods.controls import planted_defects
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.results import composition
from p3bench.run import train_and_evaluate
from p3bench.tracking import CONTROL_TAG, tag_control_run

from .conftest import compose_config, read_results, requires_shared_data, run_cli
from .test_bad_input import only_error_line
from .test_tracking import read_wandb_records

POOL = 300


@pytest.fixture(scope="module")
def parts():
    splits = load_synthetic_math(n_train=POOL, n_val=10, n_test=10, seed=4)
    tokenizer = train_local_tokenizer([ex.prompt + ex.target for ex in splits.train], vocab_size=300)
    return splits, tokenizer


def make(parts, name: str, budget: float | int = 0.3, seed: int = 0, **options):
    splits, tokenizer = parts
    return METHODS.get(name)(splits=splits, tokenizer=tokenizer, budget=budget, seed=seed, **options)


def is_defect(ex: Example) -> bool:
    """The reference: noisy, junk, or a near-duplicate copy (not the original of its group)."""
    return bool(ex.meta["is_noisy"] or ex.meta["is_junk"] or ex.meta["is_duplicate"])


def selected(dm) -> list[Example]:
    return [dm.pool[dm.index_of[i]] for i in dm.run_selection(0).ids]


def defect_count(examples: list[Example]) -> int:
    comp = composition(examples)  # the results' count, as the report reads it
    count = comp["noisy"] + comp["junk"] + comp["duplicate_copies"]
    assert count == sum(map(is_defect, examples))
    return count


# exact shares -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0.1, 0.3, 0.6, 50])
def test_oracle_clean_selects_the_budget_without_a_planted_defect(parts, budget):
    dm = make(parts, "oracle_clean", budget=budget)
    chosen = selected(dm)
    assert len(chosen) == len({ex.id for ex in chosen}) == dm.budget_size
    assert defect_count(chosen) == 0
    record = dm.run_selection(0)
    assert record.diagnostics["selected_defects"] == 0 and record.diagnostics["selected_defect_share"] == 0
    assert record.weights is None and record.forward_tokens == 0


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.5, 0.55, 1.0])
@pytest.mark.parametrize("budget", [0.05, 0.15, 7, 5])
def test_oracle_defects_selects_exactly_the_stated_share(parts, share, budget):
    dm = make(parts, "oracle_defects", budget=budget, defect_share=share)
    chosen = selected(dm)
    expected = round(share * dm.budget_size)
    assert len(chosen) == dm.budget_size
    assert defect_count(chosen) == expected
    assert dm.run_selection(0).diagnostics["selected_defect_share"] == expected / dm.budget_size


def test_the_count_is_pythons_round_of_share_times_budget(parts):
    # 0.5 x 5 = 2.5 rounds to 2 and 0.5 x 7 = 3.5 to 4 (halves to even); 0.3 x 10 = 3
    for budget, share, expected in ((5, 0.5, 2), (7, 0.5, 4), (10, 0.3, 3), (10, 0.26, 3), (10, 0.24, 2)):
        assert make(parts, "oracle_defects", budget=budget, defect_share=share).n_defects == expected


def test_the_default_share_is_one_half(parts):
    dm = make(parts, "oracle_defects", budget=40)
    assert dm.defect_share == 0.5 and defect_count(selected(dm)) == 20
    config = OmegaConf.load(CONFIG_DIR / "method" / "oracle_defects.yaml")
    assert config.defect_share == 0.5


def test_the_originals_of_duplicate_groups_are_clean_and_the_copies_are_defects(parts):
    """A budget of every clean example selects exactly the clean part, originals of duplicate groups
    included; a budget of every defect at share 1 selects exactly the defects."""
    splits, _ = parts
    clean = {ex.id for ex in splits.train if not is_defect(ex)}
    defects = {ex.id for ex in splits.train if is_defect(ex)}
    originals = {
        ex.id for ex in splits.train if ex.meta["dup_group"] is not None and not ex.meta["is_duplicate"]
    }
    assert originals and originals <= clean and len(defects) == round(0.2 * POOL)
    assert set(make(parts, "oracle_clean", budget=len(clean)).run_selection(0).ids) == clean
    everything = make(parts, "oracle_defects", budget=len(defects), defect_share=1.0)
    assert set(everything.run_selection(0).ids) == defects


def test_draws_are_uniform_within_the_clean_and_the_defective_parts(parts):
    """Over 300 seeds every example of a part is drawn about equally often: a chi-square test of the counts
    (fixed seeds, so the outcome is fixed), which a skewed count fails."""
    splits, _ = parts
    defective = np.array([is_defect(ex) for ex in splits.train])
    counts = np.zeros(POOL)
    for seed in range(300):
        dm = make(parts, "oracle_defects", budget=30, seed=seed, defect_share=0.5)
        counts[[dm.index_of[i] for i in dm.run_selection(0).ids]] += 1
    for part in (defective, ~defective):
        assert counts[part].min() > 0
        assert stats.chisquare(counts[part]).pvalue > 1e-3
    skewed = counts[~defective].copy()
    skewed[: len(skewed) // 2] *= 1.3
    assert stats.chisquare(skewed).pvalue < 1e-6


def test_on_text_mix_junk_and_copies_are_defects(tmp_path: Path):
    """On a text_mix pool (made of local text files): no junk and no copy in oracle_clean; exactly the
    share in oracle_defects; the originals of duplicate groups are clean."""
    words = np.array(["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "seven", "owls"])
    rng = np.random.default_rng(0)
    for k in range(3):
        paragraphs = ["\n".join(" ".join(rng.choice(words, 12)) for _ in range(3)) for _ in range(60)]
        (tmp_path / f"book{k}.txt").write_text("\n\n".join(paragraphs))
    splits = load_text_mix(
        {
            "books": {
                "dataset": "text_files",
                "params": {"data_files": str(tmp_path / "*.txt"), "chunk_words": 40},
            }
        },
        duplicate_rate=0.1,
        junk_rate=0.1,
    )
    pool = splits.train
    defective = planted_defects(pool, "oracle_clean", "text_mix")
    assert defective.tolist() == [bool(ex.meta["is_junk"] or ex.meta["is_duplicate"]) for ex in pool]
    assert any(ex.meta["dup_group"] is not None and not d for ex, d in zip(pool, defective, strict=True))
    tokenizer = train_local_tokenizer([ex.target for ex in pool], vocab_size=300)
    kwargs = {"splits": splits, "tokenizer": tokenizer, "budget": 0.2}
    clean = METHODS.get("oracle_clean")(**kwargs)
    assert defect_count([pool[clean.index_of[i]] for i in clean.run_selection(0).ids]) == 0
    bad = METHODS.get("oracle_defects")(**kwargs, defect_share=0.75)
    chosen = [pool[bad.index_of[i]] for i in bad.run_selection(0).ids]
    assert defect_count(chosen) == round(0.75 * bad.budget_size) > 0


# seeds ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_same_seed_same_selection_another_seed_another(parts, name):
    hashes = [make(parts, name, seed=seed).run_selection(0).ids_sha256 for seed in (3, 3, 4)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_the_controls_are_static(parts):
    for name in CONTROLS:
        dm = make(parts, name)
        assert not dm.is_dynamic and dm.uses_budget


# refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), True, "half", None])
def test_a_share_out_of_range_is_one_line_naming_the_key(parts, bad):
    with pytest.raises(ConfigError) as error:
        make(parts, "oracle_defects", defect_share=bad)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"method.defect_share={bad!r}")
    assert "expected a share of the budget in [0, 1]" in message


def test_too_few_defects_or_clean_examples_is_one_line_naming_the_key(parts):
    n_defects = round(0.2 * POOL)  # 60 defects and 240 clean examples
    with pytest.raises(ConfigError) as error:
        make(parts, "oracle_defects", budget=100, defect_share=0.7)  # 70 defects
    message = str(error.value)
    assert "\n" not in message and message.startswith("method.defect_share=0.7 asks for 70 planted defects")
    assert f"holds {n_defects}" in message
    with pytest.raises(ConfigError, match=r"^method.defect_share=0.05 asks for 247 clean examples") as error:
        make(parts, "oracle_defects", budget=260, defect_share=0.05)
    assert "\n" not in str(error.value)
    with pytest.raises(
        ConfigError, match=r"^budget=250 asks for 250 clean examples.*expected a smaller budget"
    ):
        make(parts, "oracle_clean", budget=250)
    assert make(parts, "oracle_defects", budget=100, defect_share=0.6).n_defects == n_defects  # just fits


def without_oracle_fields(splits: DatasetSplits, name: str) -> DatasetSplits:
    """``splits`` as a dataset without planted defects records them: meta with the level and type only."""
    keep = ("level", "type")

    def strip(examples: list[Example]) -> list[Example]:
        return [replace(ex, meta={k: v for k, v in ex.meta.items() if k in keep}) for ex in examples]

    return replace(splits, name=name, train=strip(splits.train))


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_data_without_oracle_fields_is_refused_in_one_line(parts, name):
    splits, tokenizer = parts
    with pytest.raises(ConfigError) as error:
        METHODS.get(name)(splits=without_oracle_fields(splits, "gsm8k"), tokenizer=tokenizer, budget=0.3)
    assert str(error.value) == (
        f"method={name} needs a dataset with planted-defect oracle fields (synthetic_math, text_mix); "
        "dataset=gsm8k has none"
    )
    # fields on only part of the pool are refused too
    partial = without_oracle_fields(splits, "mixed")
    partial = replace(partial, train=[*splits.train[:10], *partial.train[10:]])
    with pytest.raises(
        ConfigError, match=rf"dataset=mixed lacks them on {POOL - 10} of {POOL} pool examples$"
    ):
        METHODS.get(name)(splits=partial, tokenizer=tokenizer, budget=0.3)


@requires_shared_data
@pytest.mark.slow
def test_the_command_refuses_a_control_on_gsm8k_in_one_line_exit_2(tmp_path: Path, cache_dir: Path):
    args = [
        "method=oracle_defects",
        "dataset=gsm8k",
        "++dataset.params.max_train=60",
        "model.tokenizer.vocab_size=300",
    ]
    args += ["dataset.params.val_size=10", "dataset.params.test_size=10", "logger=csv", "hydra.run.dir=run"]
    done = run_cli(args, tmp_path, cache_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    assert only_error_line(done) == (
        "p3bench: error: method=oracle_defects needs a dataset with planted-defect oracle fields "
        "(synthetic_math, text_mix); dataset=gsm8k has none"
    )
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# marked as controls -----------------------------------------------------------------------------------------
def test_the_registry_says_which_methods_are_controls():
    assert control_names() == ["oracle_clean", "oracle_defects"]
    for name in METHODS.names():
        assert getattr(METHODS.get(name), "control", False) is is_control(name), name
    assert not is_control("random") and not is_control("no_such_method")


def test_the_command_line_listings_mark_the_controls():
    footer = OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml").help.footer
    named = {name for name in METHODS.names() if f"method={name}" in footer}
    assert named == set(control_names())
    message = check_group_overrides(["method=oracle"])
    assert message is not None and "\n" not in message
    assert message.endswith("; controls (known answer, not methods to compare): oracle_clean, oracle_defects")
    assert "controls" not in (check_group_overrides(["dataset=gsm9k"]) or "")


class _Run:
    def __init__(self, tags: tuple[str, ...]) -> None:
        self.tags = tags


class WandbLogger:  # the class name is how p3bench.tracking recognises wandb's logger
    def __init__(self, tags: tuple[str, ...] = ("method:x",)) -> None:
        self.experiment = _Run(tags)


def test_a_control_run_gets_the_control_tag_once_and_a_method_run_none():
    control, method, other = WandbLogger(), WandbLogger(), object()
    tag_control_run([control, other], "oracle_defects")
    tag_control_run([control], "oracle_defects")
    tag_control_run([method], "random")
    tag_control_run([method], None)
    assert control.experiment.tags == ("method:x", CONTROL_TAG) and CONTROL_TAG == "control"
    assert method.experiment.tags == ("method:x",)


# whole runs -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("name", "share"), [("oracle_clean", 0.0), ("oracle_defects", 0.5)])
def test_a_control_runs_end_to_end_through_the_trainer(name, share, tmp_path: Path, cache_dir: Path):
    overrides = ["debug=smoke", f"method={name}", "budget=0.3", "trainer.max_epochs=2", "logger=none"]
    overrides += ["callbacks=none", "trainer.enable_progress_bar=false", "progress=false"]
    results = train_and_evaluate(compose_config(overrides, tmp_path, cache_dir))
    assert results["status"] == "ok" and math.isfinite(results["metrics"]["test/accuracy"])
    selection = results["selection"]
    assert selection["n_selected"] == selection["budget_size"] == 120
    comp = selection["composition"]
    assert comp["noisy"] + comp["junk"] + comp["duplicate_copies"] == round(share * 120)
    (only_round,) = selection["rounds"]
    assert only_round["ids_sha256"] == selection["ids_sha256"]
    rows = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and all(row["round"] == 0 for row in rows)
    # the same seed through another run selects the same examples
    again = train_and_evaluate(compose_config(overrides, tmp_path / "again", cache_dir))
    assert again["selection"]["ids_sha256"] == selection["ids_sha256"]


@pytest.mark.slow
def test_a_control_run_is_tagged_control_in_wandb(tmp_path: Path, cache_dir: Path, monkeypatch):
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
    }.items():
        monkeypatch.setenv(key, str(value))
    args = ["debug=smoke", "method=oracle_clean", "logger=wandb", "test=false", "hydra.run.dir=run"]
    done = run_cli([*args, "trainer.enable_progress_bar=false"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_results(tmp_path / "run")["run"]["method"] == "oracle_clean"
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    runs = [r.run for r in read_wandb_records(log) if r.WhichOneof("record_type") == "run"]
    assert CONTROL_TAG in runs[-1].tags and "method:oracle_clean" in runs[-1].tags
