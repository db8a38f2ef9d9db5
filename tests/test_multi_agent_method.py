"""The multi-agent method (arXiv 2410.08102) driven round by round on a synthetic three-domain pool: A (one
word pattern), B (another) and J (random letters, junk), with a reference set held out from A. Between rounds
the model trains a few AdamW steps on the selection, as the Trainer would. With the reference drawn from A,
A's weight rises over the updates and A fills the selection beyond its pool share; the junk domain's weight
is negative and falls; the full three-agent console keeps theta a mixture; fixed mixing keeps theta equal;
bad options are one-line errors naming ``method.<key>``; a resumed process whose agent labels the pool
differently from the checkpoint is an error; labelling leaves the global generators alone; a reference field
of integers selects its examples."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.methods.agents import AgentLabels
from p3bench.methods.base import SelectionContext
from p3bench.methods.multi_agent import (
    MultiAgent,
    MultiAgentDomain,
    MultiAgentFixed,
    MultiAgentQuality,
    category_keys,
)
from p3bench.methods.multi_agent_options import check_reference, reference_examples
from p3bench.models.collate import EncodedSubset, TrainCollator
from p3bench.models.factory import build_causal_lm
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.rewards import batch_loss

from .conftest import SMALL_LLAMA

WORDS_A = [
    "the",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "the",
    "red",
    "hat",
    "by",
    "the",
    "old",
    "tree",
]
WORDS_B = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
N_PER_DOMAIN = 24
ROUNDS = 4
STEPS_PER_ROUND = 6


def pattern(words: list[str], start: int, n: int = 24) -> str:
    return " ".join(words[(start + k) % len(words)] for k in range(n))


def junk(rng: random.Random, n: int = 24) -> str:
    letters = "qwxzjkvbpygf"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(n))


def doc(doc_id: str, text: str, domain: str) -> Example:
    return Example(id=doc_id, prompt="", target=text, meta={"domain": domain, "source": "test"})


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    """The pool, its splits, a tokenizer, and a model warmed up on the whole pool (its state dict)."""
    rng = random.Random(0)
    train = [doc(f"a{i}", pattern(WORDS_A, i), "A") for i in range(N_PER_DOMAIN)]
    train += [doc(f"b{i}", pattern(WORDS_B, i), "B") for i in range(N_PER_DOMAIN)]
    train += [doc(f"j{i}", junk(rng), "J") for i in range(N_PER_DOMAIN)]
    validation = [doc(f"va{i}", pattern(WORDS_A, 3 * i + 1), "A") for i in range(8)]
    validation += [doc(f"vb{i}", pattern(WORDS_B, 3 * i + 1), "B") for i in range(8)]
    test = [doc(f"ta{i}", pattern(WORDS_A, i + 5), "A") for i in range(4)]
    splits = DatasetSplits(name="three_domains", task="lm", train=train, validation=validation, test=test)
    tokenizer = train_local_tokenizer([ex.target for ex in train + validation], vocab_size=160)
    torch.manual_seed(0)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    module = SelectionLM(model, tokenizer, partial(torch.optim.AdamW, lr=3e-3))
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=3e-3)
    probe = MultiAgentDomain(splits, tokenizer, budget=0.5, max_length=32)
    train_steps(module, optimizer, probe, list(range(len(train))), steps=30)
    return {"splits": splits, "tokenizer": tokenizer, "state": module.model.state_dict()}


def train_steps(
    module: SelectionLM, optimizer: torch.optim.Optimizer, dm: Any, indices: list[int], steps: int
):
    """``steps`` AdamW steps on batches of 8 drawn (seeded) from the pool positions ``indices``."""
    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    order = np.random.default_rng(len(indices)).permutation(np.resize(np.asarray(indices), steps * 8))
    module.model.train()
    for step in range(steps):
        batch = collate(list(EncodedSubset(dm.encoded("train"), order[step * 8 : (step + 1) * 8].tolist())))
        optimizer.zero_grad(set_to_none=True)
        batch_loss(module.model, batch).mean().backward()
        optimizer.step()


def fresh_module(setup: dict[str, Any]) -> tuple[SelectionLM, torch.optim.Optimizer]:
    model = build_causal_lm({"architecture": SMALL_LLAMA}, setup["tokenizer"], offline=True)
    model.load_state_dict(setup["state"])
    module = SelectionLM(model, setup["tokenizer"], partial(torch.optim.AdamW, lr=3e-3))
    return module, torch.optim.AdamW(module.model.parameters(), lr=3e-3)


def build(cls: type[MultiAgent], setup: dict[str, Any], tmp_path: Path, **options: Any) -> MultiAgent:
    options = {
        "agent_options": {
            "domain": {"field": "domain"},
            "quality": {"scorer": "perplexity_small", "scorer_options": {"standin": {"steps": 5}}},
            "topic": {"embedder": "tfidf", "embedder_kwargs": {"dim": 16}, "n_clusters": 3},
        },
        # one SGD step on the unit alone: the training optimiser's Adam moments (optimizer=train_state) add the
        # direction of the last training steps to every unit's step, which blurs the difference between
        # categories on a pool this small (the junk's reward turns positive once the model has trained on A)
        "reward": {"samples_per_category": 2, "unit_size": 4, "lookahead": {"optimizer": "sgd", "lr": 0.05}},
        "reference": {"values": ["A"], "max_examples": 8},
        "update": {"eta": 0.3},
        "progress": False,
        **options,
    }
    return cls(setup["splits"], setup["tokenizer"], budget=0.5, max_length=32, cache_dir=tmp_path, **options)


def drive(dm: MultiAgent, setup: dict[str, Any]) -> list[dict[str, Any]]:
    """``ROUNDS`` selections, training ``STEPS_PER_ROUND`` steps on each; returns each round's diagnostics."""
    module, optimizer = fresh_module(setup)
    out = []
    for r in range(ROUNDS):
        ctx = SelectionContext(
            r, 0, r * STEPS_PER_ROUND, np.random.default_rng([0, r]), module, None, optimizer
        )
        selection = dm.select(ctx)
        assert len(selection.ids) == dm.budget_size == len(set(selection.ids))
        out.append(selection.diagnostics)
        train_steps(module, optimizer, dm, [dm.index_of[i] for i in selection.ids], STEPS_PER_ROUND)
    return out


def domain_series(rounds: list[dict[str, Any]], what: str, domain: str) -> list[float]:
    return [d[f"agents.domain.{what}.{domain.lower()}"] for d in rounds]


def test_the_reference_domain_gains_weight_and_share_and_junk_loses(setup, tmp_path):
    """Without the update at step 0, round 0 ranks every example equally (a random budget); from round 1 on
    the weights follow the rewards."""
    dm = build(MultiAgentDomain, setup, tmp_path, update={"eta": 0.3, "at_start": False})
    rounds = drive(dm, setup)
    assert not rounds[0]["updated"] and all(d["updated"] for d in rounds[1:])
    w_a, w_j = domain_series(rounds, "weight", "A"), domain_series(rounds, "weight", "J")
    assert w_a[0] == w_j[0] == 0.0
    assert all(np.diff(w_a) > 0), w_a
    assert max(w_j[1:]) < 0 and w_j[-1] < w_j[1], w_j
    assert w_a[-1] > domain_series(rounds, "weight", "B")[-1] > w_j[-1]
    # A is a third of the pool and of round 0's random budget (half the pool); with the highest weight it
    # then fills the selection first, and the junk is left out
    share_a = domain_series(rounds, "selected_share", "A")
    assert domain_series(rounds, "pool_share", "A")[0] == pytest.approx(1 / 3)
    assert share_a[0] < 0.5 and share_a[-1] == pytest.approx(2 / 3)
    assert domain_series(rounds, "selected_share", "J")[-1] == 0.0
    for d in rounds[1:]:  # every update measured rewards on every category and logged them
        assert d["reward.units"] == 3 * 2 and d["reward.kind"] == "lookahead"
        assert d["reward.forward_tokens"] > d["reward.backward_tokens"] > 0
        assert {f"agents.domain.reward.{c}" for c in "abj"} <= set(d)
    assert all(d["console.theta.domain"] == 1.0 for d in rounds)


def test_the_three_agent_console_stays_a_mixture_and_moves(setup, tmp_path):
    rounds = drive(build(MultiAgent, setup, tmp_path), setup)
    for d in rounds:
        theta = [d[f"console.theta.{a}"] for a in ("quality", "domain", "topic")]
        assert sum(theta) == pytest.approx(1.0) and min(theta) >= 0.0
        assert d["reward.units"] == 2 * (5 + 3 + 3)
    assert rounds[-1]["console.theta.domain"] != pytest.approx(1 / 3)
    w_a = domain_series(rounds, "weight", "A")
    assert w_a[-1] > w_a[0] > 0
    assert domain_series(rounds, "weight", "J")[-1] < 0
    assert domain_series(rounds, "selected_share", "A")[-1] > 1 / 3


def test_standardised_rewards_move_the_console_on_a_unit_scale(setup, tmp_path):
    """Raw look-ahead rewards are loss changes of about 1e-2, so Eq. 8 barely moves theta; divided by the
    round's spread they move it by orders of magnitude more, and theta stays a mixture."""
    moved = {}
    for standardise in (False, True):
        update = {"eta": 0.3, "standardise_rewards": standardise}
        rounds = drive(build(MultiAgent, setup, tmp_path, update=update), setup)
        theta = [d[f"console.theta.{a}"] for a in ("quality", "domain", "topic") for d in rounds]
        moved[standardise] = max(abs(t - 1 / 3) for t in theta)
        assert sum(rounds[-1][f"console.theta.{a}"] for a in ("quality", "domain", "topic")) == pytest.approx(
            1
        )
    assert moved[True] > 100 * moved[False] > 0


def test_fixed_mixing_keeps_equal_console_weights_while_the_agents_learn(setup, tmp_path):
    rounds = drive(build(MultiAgentFixed, setup, tmp_path), setup)
    for d in rounds:
        assert [d[f"console.theta.{a}"] for a in ("quality", "domain", "topic")] == [1 / 3] * 3
    w_a = domain_series(rounds, "weight", "A")
    assert w_a[-1] > w_a[0] > 0


def test_the_public_code_transform_keeps_weights_normalised(setup, tmp_path):
    """``update.transform=public_code`` (exp(0.5 post-step loss), normalised): the weights sum to 1; its sign
    is the code's (see the console's docstring), so no direction is asserted."""
    dm = build(
        MultiAgentDomain, setup, tmp_path, update={"transform": "public_code", "console": "public_code"}
    )
    for d in drive(dm, setup):
        assert sum(d[f"agents.domain.weight.{c}"] for c in "abj") == pytest.approx(1.0)


def test_units_are_stratified_seeded_and_drawn_with_replacement_from_small_categories(setup, tmp_path):
    dm = build(MultiAgentDomain, setup, tmp_path, reward={"samples_per_category": 3, "unit_size": 30})
    module, _ = fresh_module(setup)
    ctx = SelectionContext(0, 0, 0, np.random.default_rng([0, 0]), module, None)
    labels, _ = dm._agent_labels(ctx)
    units = dm._units(ctx, labels)
    again = dm._units(SelectionContext(0, 0, 0, np.random.default_rng([0, 0]), module, None), labels)
    assert units == again
    assert [(u.agent, u.category) for u in units] == [("domain", j) for j in range(3) for _ in range(3)]
    for unit in units:  # 30 from a category of 24: with replacement, all from the category
        assert len(unit.indices) == 30 and len(set(unit.indices)) <= N_PER_DOMAIN
        assert {labels["domain"].labels[i] for i in unit.indices} == {unit.category}


def test_the_reference_set_is_the_chosen_domain_capped_and_seeded(setup, tmp_path):
    dm = build(MultiAgentDomain, setup, tmp_path, reference={"values": ["B"], "max_examples": 5})
    assert len(dm.reference) == 5 and {ex.meta["domain"] for ex in dm.reference} == {"B"}
    same = build(MultiAgentDomain, setup, tmp_path, reference={"values": ["B"], "max_examples": 5})
    assert [ex.id for ex in same.reference] == [ex.id for ex in dm.reference]
    everything = build(MultiAgentDomain, setup, tmp_path, reference={"values": None, "max_examples": None})
    assert len(everything.reference) == len(setup["splits"].validation)


def test_method_state_restores_the_next_selection(setup, tmp_path):
    dm = build(MultiAgentDomain, setup, tmp_path)
    module, optimizer = fresh_module(setup)
    dm.select(SelectionContext(0, 0, 0, np.random.default_rng([0, 0]), module, None, optimizer))
    state = dm.method_state()
    restored = build(MultiAgentDomain, setup, tmp_path)
    restored.load_method_state(state)
    ctx = lambda: SelectionContext(1, 0, 6, np.random.default_rng([0, 1]), module, None, optimizer)  # noqa: E731
    first, second = dm.select(ctx()), restored.select(ctx())
    assert first.ids == second.ids and dm.method_state() == restored.method_state()
    assert state["categories"] == {"domain": ["A", "B", "J"]} and state["theta"] == {"domain": 1.0}


def test_category_keys_are_metric_safe_and_unique():
    assert category_keys(["Wikipedia (en)", "Pile-CC", "wikipedia en", "[1,2)"]) == [
        "wikipedia_en",
        "pile_cc",
        "wikipedia_en_2",
        "1_2",
    ]


BAD_OPTIONS = [
    ({"agents": ["qualty"]}, "method.agents: unknown agent 'qualty'"),
    ({"agents": []}, "method.agents=[] is invalid"),
    ({"agents": ["domain", "domain"]}, "names an agent twice"),
    ({"agent_options": {"domian": {}}}, "method.agent_options: unknown agent 'domian'"),
    ({"agent_options": {"domain": {"field": "is_junk"}}}, "method.agent_options.domain.field='is_junk'"),
    ({"reward": {"kind": "influence"}}, "method.reward.kind: unknown reward 'influence'"),
    ({"reward": {"unit_size": 0}}, "method.reward.unit_size=0 is invalid"),
    ({"reward": {"units": 2}}, "method.reward has unknown keys ['units']"),
    ({"reward": {"lookahead": {"optimizer": "adam"}}}, "method.reward.lookahead.optimizer='adam'"),
    ({"reference": {"field": "is_junk"}}, "method.reference.field='is_junk' is an oracle field"),
    ({"reference": {"values": ["C"]}}, "method.reference.values: unknown domain value 'C'"),
    ({"reference": {"field": "colour", "values": ["A"]}}, "method.reference.field='colour' is not in"),
    ({"update": {"eta": 0}}, "method.update.eta=0 is invalid"),
    ({"update": {"transform": "code"}}, "method.update.transform='code' is not supported"),
    (
        {"update": {"console": "public_code"}, "reward": {"kind": "gradient"}},
        "method.update.console=public_code transforms the post-step reference loss",
    ),
    ({"update": {"collaborative": "yes"}}, "method.update.collaborative='yes' is invalid"),
    (
        {"update": {"standardise_rewards": True, "transform": "public_code"}},
        "method.update.standardise_rewards=true scales the rewards of Eq. 4-8",
    ),
    ({"ties": "first"}, "method.ties='first' is not supported"),
    ({"initial_weight": "zero"}, "method.initial_weight='zero' is invalid"),
    ({"reselect_every_n_epochs": 1}, "method.reselect_every_n_steps=30 and method.reselect_every_n_epochs=1"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options_are_one_line_errors_naming_the_key(setup, tmp_path, options, message):
    with pytest.raises(ConfigError) as caught:
        build(MultiAgent, setup, tmp_path, **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_ablation_is_its_name(setup, tmp_path):
    with pytest.raises(
        ConfigError, match=r"method.agents=\['domain'\] differs from method 'multi_agent_quality'"
    ):
        build(MultiAgentQuality, setup, tmp_path, agents=["domain"])
    with pytest.raises(
        ConfigError, match="method.update.collaborative=True contradicts method 'multi_agent_fixed'"
    ):
        build(MultiAgentFixed, setup, tmp_path, update={"collaborative": True})
    assert build(MultiAgentQuality, setup, tmp_path).settings.agents == ("quality",)
    assert build(MultiAgentFixed, setup, tmp_path).settings.update["collaborative"] is False


def test_without_a_training_optimiser_the_train_state_look_ahead_waits(setup, tmp_path):
    """A per-epoch round 0 is selected before Lightning has built the optimiser: the look-ahead from the
    training state cannot run, so the round selects on the initial weights (the SGD look-ahead needs none)."""
    module, _ = fresh_module(setup)
    ctx = SelectionContext(0, 0, 0, np.random.default_rng([0, 0]), module, None, None)
    waiting = build(MultiAgentDomain, setup, tmp_path, reward={"lookahead": {"optimizer": "train_state"}})
    diagnostics = waiting.select(ctx).diagnostics
    assert not diagnostics["updated"] and diagnostics["update_skipped_no_optimizer"]
    assert waiting.method_state()["weights"] == {"domain": [0.0, 0.0, 0.0]}
    assert build(MultiAgentDomain, setup, tmp_path).select(ctx).diagnostics["updated"]


class FixedAgent:
    """An agent that returns given labels of the pool (three categories); ``reseed`` makes it seed and draw
    from the global torch, NumPy and ``random`` generators, as a stand-in trained on a cache miss does."""

    def __init__(self, labels: list[int], reseed: bool = False) -> None:
        self.labels = labels
        self.reseed = reseed

    def label(self, datamodule: MultiAgent, ctx: SelectionContext | None) -> AgentLabels:
        if self.reseed:
            torch.manual_seed(123)
            np.random.seed(123)
            random.seed(123)
            torch.rand(3), np.random.rand(3), random.random()
        return AgentLabels("domain", ["A", "B", "J"], np.asarray(self.labels))


def no_model_context(round_index: int) -> SelectionContext:
    """A round without a live model: no rewards are measured, the round selects on the current weights."""
    return SelectionContext(
        round_index, 0, 6 * round_index, np.random.default_rng([0, round_index]), None, None
    )


def test_resumed_labels_that_differ_from_the_checkpoint_are_a_one_line_error(setup, tmp_path):
    """Quantile bins and cluster ids have the same names whatever the labels, so a resumed process whose agent
    labels the pool differently (a scorer reading the live model) is caught by the labels' hash."""
    dm = build(MultiAgentDomain, setup, tmp_path)
    labels = [i % 3 for i in range(len(dm.pool))]
    dm.agents["domain"] = FixedAgent(labels)
    dm.select(no_model_context(0))
    state = dm.method_state()
    assert set(state["label_sha256"]) == {"domain"} and len(state["label_sha256"]["domain"]) == 64

    same = build(MultiAgentDomain, setup, tmp_path)
    same.agents["domain"] = FixedAgent(list(labels))
    same.load_method_state(state)
    assert same.select(no_model_context(1)).ids == dm.select(no_model_context(1)).ids

    changed = build(MultiAgentDomain, setup, tmp_path)
    changed.agents["domain"] = FixedAgent([(i + 1) % 3 for i in range(len(dm.pool))])  # same categories
    changed.load_method_state(state)
    with pytest.raises(
        RuntimeError, match="agent 'domain' labels the pool differently from the checkpoint"
    ) as e:
        changed.select(no_model_context(1))
    assert "\n" not in str(e.value)

    # a checkpoint written before the hashes were stored is resumed without the check
    older = build(MultiAgentDomain, setup, tmp_path)
    older.agents["domain"] = FixedAgent([(i + 1) % 3 for i in range(len(dm.pool))])
    older.load_method_state({k: v for k, v in state.items() if k != "label_sha256"})
    older.select(no_model_context(1))


def global_rng_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_same_rng_states(before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]
    assert before[2] == after[2]


def test_labelling_leaves_the_global_generators_alone(setup, tmp_path):
    """An agent that reseeds and draws from torch, NumPy and ``random`` (the perplexity stand-in trained on a
    cache miss seeds torch) leaves the three global generators as they were, and its labels are the ones it
    gives without the guard."""
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    torch.rand(5), np.random.rand(5), random.random()
    dm = build(MultiAgentDomain, setup, tmp_path)
    dm.agents["domain"] = FixedAgent([i % 3 for i in range(len(dm.pool))], reseed=True)
    before = global_rng_states()
    labels, _ = dm._agent_labels(no_model_context(0))
    assert_same_rng_states(before, global_rng_states())
    assert labels["domain"].labels.tolist() == [i % 3 for i in range(len(dm.pool))]

    # the real quality agent, whose stand-in is trained here (a fresh cache) under torch.manual_seed
    quality = build(MultiAgentQuality, setup, tmp_path / "fresh_cache")
    before = global_rng_states()
    quality._agent_labels(no_model_context(0))
    assert_same_rng_states(before, global_rng_states())


def test_a_reference_field_of_integers_selects_its_examples():
    """Values are compared as strings in the check and in the filter, so an int-valued field selects."""
    split = [Example(id=f"v{i}", prompt="", target="text", meta={"level": i % 3}) for i in range(9)]
    for values in (["2"], [2]):
        reference = check_reference({"field": "level", "values": values, "max_examples": None})
        chosen = reference_examples(split, reference, seed=0)
        assert [ex.id for ex in chosen] == ["v2", "v5", "v8"]
    with pytest.raises(ConfigError, match="method.reference.values: unknown level value '4'"):
        reference_examples(split, check_reference({"field": "level", "values": ["4"]}), seed=0)
