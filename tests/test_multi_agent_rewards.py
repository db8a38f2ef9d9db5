"""Rewards computed with the live model on a reference set (p3bench.scoring.rewards, lookahead,
gradient_alignment): they leave the training state bitwise untouched, equal hand-written references (one
optimiser step; per-example gradients; the projected dot product), count their tokens exactly, and rank a
unit like the reference above random tokens once the model has trained a little."""

from __future__ import annotations

import copy
import random
import string
from functools import partial

import numpy as np
import pytest
import torch

from p3bench.compute import RUN_MODEL, SELECTION_BACKWARD, SELECTION_FORWARD, ComputeLedger, model_size
from p3bench.data.example import DatasetSplits
from p3bench.data.text import document
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.models.collate import EncodedSubset, TrainCollator, encode_examples
from p3bench.models.factory import build_causal_lm
from p3bench.models.losses import per_example_nll
from p3bench.models.module import SelectionLM
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.gradient_alignment import per_example_gradients, project, sparse_projector
from p3bench.scoring.rewards import REWARDS, RewardUnit, batch_tokens, reference_batches, unit_batches

from .conftest import SMALL_LLAMA

NOUNS = ["cat", "dog", "bird", "horse", "child", "farmer", "river", "tree"]
VERBS = ["sees", "follows", "likes", "finds", "hears", "watches"]
ADJECTIVES = ["small", "old", "green", "quiet", "happy", "tall"]


def pattern_text(rng: random.Random) -> str:
    """Plain sentences from a small vocabulary: the reference-like domain."""
    sentences = rng.randint(2, 6)
    return " ".join(
        f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} ."
        for _ in range(sentences)
    )


def random_text(rng: random.Random) -> str:
    """Random character strings: a domain that teaches nothing about the reference."""
    words = rng.randint(6, 24)
    alphabet = string.ascii_letters + string.digits + "#%&*@"
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 7))) for _ in range(words))


def toy_splits(seed: int = 0) -> DatasetSplits:
    rng = random.Random(seed)
    train = [document(f"a{i}", pattern_text(rng), "pattern", "toy") for i in range(24)]
    train += [document(f"r{i}", random_text(rng), "random", "toy") for i in range(24)]
    validation = [document(f"va{i}", pattern_text(rng), "pattern", "toy") for i in range(8)]
    test = [document(f"ta{i}", pattern_text(rng), "pattern", "toy") for i in range(2)]
    return DatasetSplits(name="toy", task="lm", train=train, validation=validation, test=test)


@pytest.fixture(scope="module")
def toy():
    splits = toy_splits()
    tokenizer = train_local_tokenizer([ex.target for ex in splits.train + splits.validation], vocab_size=300)
    dm = METHODS.get("random")(splits=splits, tokenizer=tokenizer, seed=0, batch_size=8, max_length=64)
    return splits, tokenizer, dm


def tiny_module(tokenizer, seed: int = 0, lr: float = 3e-3) -> SelectionLM:
    torch.manual_seed(seed)
    model = build_causal_lm({"architecture": SMALL_LLAMA}, tokenizer, offline=True)
    optimizer = partial(torch.optim.AdamW, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    return SelectionLM(model, tokenizer, optimizer, scheduler=None, task="lm")


def train_a_little(module: SelectionLM, dm, steps: int, seed: int = 0) -> torch.optim.Optimizer:
    """AdamW steps on random batches of the whole pool; returns the optimiser (with its moments)."""
    optimizer = module.configure_optimizers()
    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        indices = torch.randperm(len(dm.pool), generator=generator)[: dm.batch_size].tolist()
        batch = collate(list(EncodedSubset(dm.encoded("train"), indices)))
        optimizer.zero_grad()
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_example_nll(logits, batch["labels"]).mean().backward()
        optimizer.step()
    return optimizer


def units_of(dm, prefix: str, n: int, size: int, offset: int = 0) -> list[RewardUnit]:
    members = [i for i, ex in enumerate(dm.pool) if ex.id.startswith(prefix)]
    return [
        RewardUnit(tuple(members[offset + k * size : offset + (k + 1) * size]), category=prefix)
        for k in range(n)
    ]


REWARD_OPTIONS = [
    ("lookahead", {"optimizer": "train_state"}),
    ("lookahead", {"optimizer": "sgd", "lr": 0.05}),
    ("gradient", {"dim": 64, "per_example": "vmap"}),
    ("gradient", {"dim": 64, "per_example": "loop", "normalise": True}),
]


def snapshot(module: SelectionLM, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "params": {k: v.clone() for k, v in module.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "training": [m.training for m in module.modules()],
        "attention": module.model.config._attn_implementation,
    }


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested dicts, lists, tuples, tensors and arrays."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize(("kind", "options"), REWARD_OPTIONS)
def test_a_reward_leaves_the_training_state_untouched_bitwise(toy, kind: str, options: dict):
    _, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    optimizer = train_a_little(module, dm, steps=3)
    # a pending gradient (as between backward and step) and a frozen parameter must survive as well
    collate = TrainCollator(tokenizer.pad_token_id, dm.max_length)
    batch = collate(list(EncodedSubset(dm.encoded("train"), [0, 30])))
    per_example_nll(module.model(input_ids=batch["input_ids"]).logits, batch["labels"]).mean().backward()
    module.model.model.norm.weight.requires_grad_(False)
    module.train()
    random.seed(3)
    np.random.seed(3)
    before = snapshot(module, optimizer)
    units = unit_batches(dm, units_of(dm, "a", 2, 3) + units_of(dm, "r", 1, 3))
    reference = reference_batches(dm, toy[0].validation, batch_size=3)
    result = REWARDS.get(kind)(**options)(
        module, optimizer, units, reference, ComputeLedger(), progress=False
    )
    assert result.values.shape == (3,) and np.all(np.isfinite(result.values))
    assert np.any(result.values != 0)
    assert_same(snapshot(module, optimizer), before)


def hand_reference_loss(model, dm, examples) -> float:
    collate = TrainCollator(dm.tokenizer.pad_token_id, dm.max_length)
    encoded = encode_examples(examples, dm.tokenizer)
    batch = collate(list(EncodedSubset(encoded, range(len(examples)))))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return float(per_example_nll(logits, batch["labels"]).double().mean())


@pytest.mark.parametrize("mode", ["train_state", "sgd"])
def test_lookahead_equals_one_hand_written_optimiser_step(toy, mode: str):
    splits, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    optimizer = train_a_little(module, dm, steps=3)
    unit = units_of(dm, "a", 1, 4, offset=4)
    lr, clip = 2e-3, 0.5
    reward = REWARDS.get("lookahead")(optimizer=mode, lr=lr, clip=clip)
    result = reward(module, optimizer, unit_batches(dm, unit), reference_batches(dm, splits.validation, 8))

    model = copy.deepcopy(module.model).eval()
    if mode == "train_state":
        step = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.01, betas=(0.9, 0.98))
        step.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        step.param_groups[0]["lr"] = lr
    else:
        step = torch.optim.SGD(model.parameters(), lr=lr)
    before = hand_reference_loss(model, dm, splits.validation)
    batch = TrainCollator(tokenizer.pad_token_id, dm.max_length)(
        list(EncodedSubset(dm.encoded("train"), unit[0].indices))
    )
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_example_nll(logits, batch["labels"]).mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    step.step()
    after = hand_reference_loss(model, dm, splits.validation)
    assert result.reference_loss == pytest.approx(before, abs=1e-6)
    assert result.reference_loss_after[0] == pytest.approx(after, abs=1e-6)
    assert result.values[0] == pytest.approx(before - after, abs=1e-6)
    assert result.values[0] != 0


def test_vmap_per_example_gradients_equal_the_loop_and_plain_backward(toy):
    _, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    train_a_little(module, dm, steps=2)
    model = copy.deepcopy(module.model).eval()
    model.set_attn_implementation("eager")
    batch = unit_batches(dm, [RewardUnit((1, 26, 5, 40))])[0]
    assert batch["attention_mask"].sum(dim=1).unique().numel() > 1  # rows of different lengths, padded
    vmapped = per_example_gradients(model, batch, "vmap")
    looped = per_example_gradients(model, batch, "loop")
    torch.testing.assert_close(vmapped, looped, atol=1e-6, rtol=0)
    # each row equals an ordinary backward of that example alone, unpadded, with its attention mask
    for row in range(batch["input_ids"].shape[0]):
        model.zero_grad()
        width = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row : row + 1, :width], batch["labels"][row : row + 1, :width]
        per_example_nll(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, labels)[
            0
        ].backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
        torch.testing.assert_close(vmapped[row], expected, atol=1e-6, rtol=0)


def test_the_projection_preserves_dot_products_on_average():
    n, dim = 4000, 1024
    projector = sparse_projector(n, dim, seed=0)
    assert projector.shape == (dim, n) and projector.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, n, generator=generator)
    y = x + torch.randn(200, n, generator=generator)  # correlated pairs: dot products far from zero
    exact = (x * y).sum(dim=1)
    projected = (project(projector, x) * project(projector, y)).sum(dim=1)
    relative = ((projected - exact) / exact).abs()
    assert float(relative.mean()) < 0.1
    assert abs(float((projected / exact).mean()) - 1.0) < 0.02  # unbiased
    torch.testing.assert_close(
        sparse_projector(n, dim, seed=0).to_dense(), projector.to_dense(), rtol=0, atol=0
    )
    assert not torch.equal(sparse_projector(n, dim, seed=1).to_dense(), projector.to_dense())


def test_the_gradient_reward_is_the_mean_projected_dot_product_with_the_reference_gradient(toy):
    splits, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    train_a_little(module, dm, steps=2)
    units = units_of(dm, "a", 1, 3) + units_of(dm, "r", 1, 3)
    dim = 32
    for normalise in (False, True):
        reward = REWARDS.get("gradient")(dim=dim, normalise=normalise, seed=5)
        result = reward(module, None, unit_batches(dm, units), reference_batches(dm, splits.validation, 4))
        model = copy.deepcopy(module.model).eval()
        reference = reference_batches(dm, splits.validation, 100)[0]
        model.zero_grad()
        logits = model(input_ids=reference["input_ids"], attention_mask=reference["attention_mask"]).logits
        per_example_nll(logits, reference["labels"]).mean().backward()
        params = [p for p in model.parameters() if p.requires_grad]
        dense = sparse_projector(sum(p.numel() for p in params), dim, seed=5).to_dense().double()
        g_ref = dense @ torch.cat([p.grad.reshape(-1) for p in params]).double()
        for position, batch in enumerate(unit_batches(dm, units)):
            g = per_example_gradients(model, batch, "loop").double() @ dense.T
            dots = g @ g_ref
            if normalise:
                dots = dots / (g.norm(dim=1) * g_ref.norm())
            assert result.values[position] == pytest.approx(float(dots.mean()), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize(("kind", "options"), [REWARD_OPTIONS[0], REWARD_OPTIONS[2]])
def test_token_counts_are_exact_and_recorded_as_the_run_models(toy, kind: str, options: dict):
    splits, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    optimizer = train_a_little(module, dm, steps=1)
    units = unit_batches(dm, units_of(dm, "a", 3, 2) + units_of(dm, "r", 2, 3))
    reference = reference_batches(dm, splits.validation, 3)
    ref_tokens, unit_tokens = batch_tokens(reference), batch_tokens(units)
    assert ref_tokens == sum(
        min(
            len(encode_examples([ex], tokenizer).prompt_ids[0])
            + len(encode_examples([ex], tokenizer).target_ids[0]),
            dm.max_length,
        )
        for ex in splits.validation
    )
    ledger = ComputeLedger()
    result = REWARDS.get(kind)(**options)(module, optimizer, units, reference, ledger, progress=False)
    if kind == "lookahead":
        forward, backward = ref_tokens * (len(units) + 1) + unit_tokens, unit_tokens
    else:
        forward = backward = ref_tokens + unit_tokens
    assert (result.forward_tokens, result.backward_tokens) == (forward, backward)
    size = model_size(module.model).params
    assert sorted((c.name, c.role, c.params, c.tokens) for c in ledger.components) == sorted(
        [(RUN_MODEL, SELECTION_FORWARD, size, forward), (RUN_MODEL, SELECTION_BACKWARD, size, backward)]
    )
    assert result.summary()["units"] == len(units)


@pytest.mark.parametrize(("kind", "options"), [REWARD_OPTIONS[0], REWARD_OPTIONS[2]])
def test_a_unit_like_the_reference_beats_random_tokens_after_a_little_training(toy, kind: str, options: dict):
    splits, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    optimizer = train_a_little(module, dm, steps=30)
    like, unlike = units_of(dm, "a", 4, 4), units_of(dm, "r", 4, 4)
    reward = REWARDS.get(kind)(**options)
    result = reward(
        module, optimizer, unit_batches(dm, like + unlike), reference_batches(dm, splits.validation)
    )
    assert result.values[:4].min() > result.values[4:].max()
    assert result.values[:4].mean() > 0


def test_bad_options_are_one_line_errors_naming_the_key(toy):
    lookahead, gradient = REWARDS.get("lookahead"), REWARDS.get("gradient")
    cases = [
        (lambda: lookahead(optimizer="adam"), "method.reward.lookahead.optimizer='adam'"),
        (lambda: lookahead(lr=0), "method.reward.lookahead.lr=0"),
        (lambda: lookahead(clip=-1), "method.reward.lookahead.clip=-1"),
        (lambda: gradient(dim=0), "method.reward.gradient.dim=0"),
        (lambda: gradient(per_example="jit"), "method.reward.gradient.per_example='jit'"),
        (lambda: REWARDS.get("lookahaed"), "did you mean 'lookahead'"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as error:
            build()
        assert "\n" not in str(error.value)
    splits, tokenizer, dm = toy
    module = tiny_module(tokenizer)
    units = unit_batches(dm, units_of(dm, "a", 1, 2))
    with pytest.raises(ConfigError, match="optimizer=train_state needs the training optimiser"):
        lookahead()(module, None, units, reference_batches(dm, splits.validation), progress=False)
    with pytest.raises(ValueError, match="reference set is empty"):
        reference_batches(dm, [], 4)
