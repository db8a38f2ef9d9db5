"""DELIFT's in-context utility kernel (p3bench.scoring.icl_utility, arXiv 2411.04425): prefix reuse equals
the pair-by-pair computation (padding, truncation, batch and block sizes, other model families, two
processes), the distance equals a hand computation from the logits, the scaling and the exponential kind,
the sparse k-nearest kernel, the cache, the errors, and the utility of a target's own copy as its
demonstration after a short warm start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import sparse
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from p3bench.data.example import Example
from p3bench.errors import ConfigError
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.icl_utility import (
    icl_utility_kernel,
    nearest_candidates,
    pairwise_utility_reference,
)
from p3bench.scoring.icl_utility_prefix import pair_batches
from p3bench.scoring.icl_utility_tokens import (
    DEMO_PREFIX_TEMPLATE,
    NO_DEMO_TEMPLATE,
    QUERY_TEMPLATE,
    tokenize_segments,
)

WORDS = [
    *("red", "blue", "green", "cat", "dog", "sun", "moon", "tree"),
    *("rock", "fish", "bird", "star", "milk", "rain", "snow", "wind"),
]


def sentence(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(low, high)), replace=False))


def random_examples(rng: np.random.Generator, n: int, prefix: str = "t") -> list[Example]:
    """Short examples of different lengths; prompts end with a newline, as the bench's do."""
    return [
        Example(id=f"{prefix}{i}", prompt=sentence(rng, 2, 6) + "\n", target=sentence(rng, 2, 10))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    rng = np.random.default_rng(0)
    corpus = [NO_DEMO_TEMPLATE, DEMO_PREFIX_TEMPLATE] * 20 + [sentence(rng, 3, 12) for _ in range(200)]
    return train_local_tokenizer(corpus, vocab_size=400)


def small_llama(tokenizer: PreTrainedTokenizerFast, hidden: int = 64, heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def warm_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A small Llama warm-started for 200 steps (seconds on one core) to copy its demonstration: sequences in
    the demonstration format whose query repeats the demonstration, built from random examples that the
    tests never score, with the loss on the query's response. Its probabilities are far from uniform, so
    comparisons of distances are sharp."""
    rng = np.random.default_rng(1)
    model = small_llama(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    eos = tokenizer.eos_token
    model.train()
    for _ in range(200):
        texts, starts = [], []
        for example in random_examples(rng, 16, "w"):
            query = example.prompt.rstrip()
            prompt = DEMO_PREFIX_TEMPLATE.format(demo_query=query, demo_response=example.target)
            prompt += QUERY_TEMPLATE.format(query=query) + eos
            texts.append(prompt + example.target + eos)
            starts.append(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for row, start in enumerate(starts):
            labels[row, :start] = -100
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return random_examples(np.random.default_rng(2), 7)


def forward_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    model.register_forward_pre_hook(count)
    return calls


# -- prefix reuse == pair by pair ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("block_size", [1, 3])
def test_prefix_reuse_equals_pair_by_pair(warm_model, tokenizer, examples, batch_size, block_size) -> None:
    targets, candidates = examples[:5], examples
    reference = pairwise_utility_reference(warm_model, tokenizer, targets, candidates)
    kernel = icl_utility_kernel(
        warm_model,
        tokenizer,
        targets,
        candidates,
        batch_size=batch_size,
        block_size=block_size,
        progress=False,
    )
    assert kernel.raw.shape == (5, 7) and kernel.raw.dtype == np.float32
    np.testing.assert_allclose(kernel.no_demo_distance, reference.no_demo_distance, atol=2e-6)
    np.testing.assert_allclose(kernel.raw, reference.raw, atol=2e-6)
    assert np.ptp(reference.raw) > 0.05  # the comparison is not between near-constant kernels
    # each prefix is processed once: fewer tokens than whole pair sequences, which the reference counts
    info = kernel.diagnostics
    assert info["whole_pair_tokens"] + info["no_demo_tokens"] == reference.forward_tokens
    assert kernel.forward_tokens == info["prefix_tokens"] + info["suffix_tokens"] + info["no_demo_tokens"]
    assert kernel.forward_tokens < reference.forward_tokens
    assert info["prefix_passes"] == math.ceil(7 / block_size)


def test_a_cap_on_batch_tokens_changes_nothing_but_the_batches(warm_model, tokenizer, examples) -> None:
    reference = pairwise_utility_reference(warm_model, tokenizer, examples)
    free = icl_utility_kernel(warm_model, tokenizer, examples, batch_size=8, progress=False)
    capped = icl_utility_kernel(
        warm_model, tokenizer, examples, batch_size=8, max_batch_tokens=120, progress=False
    )
    np.testing.assert_allclose(capped.raw, reference.raw, atol=2e-6)
    assert capped.diagnostics["pair_batches"] > free.diagnostics["pair_batches"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_batches_partition_the_pairs_within_the_limits(seed) -> None:
    rng = np.random.default_rng(seed)
    prefix_lengths = sorted(rng.integers(5, 60, size=4).tolist(), reverse=True)
    rows = rng.integers(0, 4, size=40).tolist()
    suffix_lengths = rng.integers(1, 80, size=40).tolist()
    for batch_size, max_tokens in [(1, None), (5, None), (8, 400)]:
        batches = pair_batches(rows, prefix_lengths, suffix_lengths, batch_size, max_tokens, hidden=16)
        assert sorted(k for batch in batches for k in batch) == list(range(40))
        assert all(1 <= len(batch) <= batch_size for batch in batches)
        if max_tokens is not None:
            for batch in batches:
                width = max(prefix_lengths[rows[k]] for k in batch) + max(suffix_lengths[k] for k in batch)
                assert len(batch) == 1 or width * len(batch) <= max_tokens


def test_whole_sequences_equal_pair_by_pair_and_count_whole_tokens(warm_model, tokenizer, examples) -> None:
    reference = pairwise_utility_reference(warm_model, tokenizer, examples[:4], examples)
    kernel = icl_utility_kernel(
        warm_model, tokenizer, examples[:4], examples, batch_size=4, reuse_prefix=False, progress=False
    )
    np.testing.assert_allclose(kernel.raw, reference.raw, atol=2e-6)
    assert kernel.forward_tokens == reference.forward_tokens
    assert kernel.diagnostics["prefix_passes"] == 0


def test_truncation_cuts_some_pairs_and_matches_pair_by_pair(warm_model, tokenizer, examples) -> None:
    segments = tokenize_segments(tokenizer, examples, examples)
    pairs = [(len(p), q) for p in segments.prefixes for q in segments.queries]
    # nothing scored in about half of the pairs, a cut response in some others
    max_length = int(np.median([length + q.first_scored for length, q in pairs])) + 1
    assert any(length + q.first_scored < max_length < length + len(q) for length, q in pairs)
    reference = pairwise_utility_reference(warm_model, tokenizer, examples, max_length=max_length)
    kernel = icl_utility_kernel(
        warm_model, tokenizer, examples, max_length=max_length, batch_size=3, block_size=2, progress=False
    )
    np.testing.assert_allclose(kernel.raw, reference.raw, atol=2e-6)
    empty = kernel.diagnostics["pairs_without_scored_tokens"]
    assert 0 < empty < len(examples) ** 2
    assert np.sum(kernel.raw == 0.0) >= empty  # a pair with nothing scored has no effect
    assert kernel.diagnostics["max_length"] == max_length
    assert (
        kernel.forward_tokens
        < icl_utility_kernel(warm_model, tokenizer, examples, progress=False).forward_tokens
    )


def test_other_model_family_gpt2(tokenizer, examples) -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        initializer_range=0.3,  # sharper (non-uniform) predictions than the default 0.02
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    reference = pairwise_utility_reference(model, tokenizer, examples[:3], examples)
    kernel = icl_utility_kernel(
        model, tokenizer, examples[:3], examples, batch_size=3, block_size=2, progress=False
    )
    assert np.ptp(reference.raw) > 1e-3
    np.testing.assert_allclose(kernel.raw, reference.raw, atol=2e-6)


# -- what is computed ------------------------------------------------------------------------------------


def test_distance_and_utility_against_a_hand_computation(warm_model, tokenizer, examples) -> None:
    target, candidate = examples[0], examples[3]
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def distance(prompt_ids: list[int]) -> float:
        response = ids(target.target) + [eos]
        sequence = prompt_ids + [eos] + response
        with torch.no_grad():
            logits = warm_model(input_ids=torch.tensor([sequence])).logits[0].double()
        probabilities = torch.softmax(logits, dim=-1)
        start = len(prompt_ids) + 1
        p = [float(probabilities[start + k - 1, token]) for k, token in enumerate(response)]
        return math.sqrt(sum((1.0 - value) ** 2 for value in p) / len(p))

    query = target.prompt.rstrip()
    no_demo = distance(
        ids(f"Instruction: Please generate a response to the following query.\n\n\nQuery: {query}\n")
    )
    prefix = (
        "Instruction:\nUse the following example as a guide to answer the query in the same format and style, "
        f"providing a clear and concise response.\n\n\nExample:\n{candidate.prompt.rstrip()}\n{candidate.target}"
        "\n\n\nQuery:\n"
    )
    demo = distance(ids(prefix) + ids(f"{query}\n"))
    kernel = icl_utility_kernel(warm_model, tokenizer, [target], [examples[1], candidate], progress=False)
    assert kernel.no_demo_distance[0] == pytest.approx(no_demo, abs=1e-6)
    assert kernel.raw[0, 1] == pytest.approx(no_demo - demo, abs=2e-6)
    # the segments give the tokens of the whole prompt string with this tokenizer
    assert kernel.diagnostics["query_boundary_mismatches"] == 0
    assert ids(prefix) + ids(f"{query}\n") == ids(prefix + f"{query}\n")


def test_min_max_scaling_and_the_exponential_kind(warm_model, tokenizer, examples) -> None:
    euclidean = icl_utility_kernel(warm_model, tokenizer, examples, progress=False)
    raw = euclidean.raw.astype(np.float64)
    assert euclidean.scaled.min() == 0.0 and euclidean.scaled.max() == 1.0
    np.testing.assert_allclose(euclidean.scaled, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    assert raw.min() < 0 < raw.max()  # unscaled kept: negative utilities are not clamped
    assert euclidean.diagnostics["raw_min"] == pytest.approx(raw.min())
    exponential = icl_utility_kernel(warm_model, tokenizer, examples, kind="exponential", progress=False)
    np.testing.assert_allclose(exponential.raw, np.exp(raw), rtol=1e-6)
    expected = (np.exp(raw) - np.exp(raw).min()) / (np.exp(raw).max() - np.exp(raw).min())
    np.testing.assert_allclose(exponential.scaled, expected, atol=1e-6)
    assert exponential.scaled.min() == 0.0 and exponential.scaled.max() == 1.0


def test_a_copy_of_the_target_is_its_most_useful_demonstration(warm_model, tokenizer) -> None:
    """The pool x pool kernel of held-out examples: each target with itself as the demonstration is the
    diagonal, computed like any other pair."""
    pool = random_examples(np.random.default_rng(3), 10, "p")
    kernel = icl_utility_kernel(warm_model, tokenizer, pool, progress=False)
    diagonal = np.diag(kernel.raw)
    assert np.mean(diagonal > 0) >= 0.8
    assert np.mean(diagonal > np.median(kernel.raw, axis=1)) >= 0.8
    assert np.mean(np.argmax(kernel.raw, axis=1) == np.arange(10)) >= 0.7


def test_training_mode_is_restored(tokenizer, examples) -> None:
    model = small_llama(tokenizer, hidden=32, heads=2)
    model.train()
    icl_utility_kernel(model, tokenizer, examples[:2], examples[:2], progress=False)
    assert model.training


# -- sparse ----------------------------------------------------------------------------------------------


def test_sparse_kernel_holds_the_dense_entries_of_the_k_nearest(warm_model, tokenizer, examples) -> None:
    rng = np.random.default_rng(4)
    target_vectors, candidate_vectors = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    dense = icl_utility_kernel(warm_model, tokenizer, examples[:5], examples, progress=False)
    kernel = icl_utility_kernel(
        warm_model,
        tokenizer,
        examples[:5],
        examples,
        neighbours=3,
        embeddings=(target_vectors, candidate_vectors),
        batch_size=2,
        block_size=2,
        progress=False,
    )
    assert sparse.isspmatrix_csr(kernel.raw) and sparse.isspmatrix_csr(kernel.scaled)
    assert kernel.raw.shape == (5, 7) and kernel.pairs == 15 and kernel.raw.nnz == 15
    unit_t = target_vectors / np.linalg.norm(target_vectors, axis=1, keepdims=True)
    unit_c = candidate_vectors / np.linalg.norm(candidate_vectors, axis=1, keepdims=True)
    cosine = unit_t @ unit_c.T
    for row in range(5):
        start, end = kernel.raw.indptr[row], kernel.raw.indptr[row + 1]
        columns = kernel.raw.indices[start:end]
        assert set(columns.tolist()) == set(np.argsort(-cosine[row])[:3].tolist())
        np.testing.assert_allclose(kernel.raw.data[start:end], dense.raw[row, columns], atol=2e-6)
    stored = kernel.raw.data.astype(np.float64)
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(kernel.scaled.data, expected, atol=1e-6)
    assert kernel.scaled.data.min() == 0.0 and kernel.scaled.data.max() == 1.0
    # cost N k: the pairs of 3 neighbours take fewer tokens than all 7 candidates
    assert kernel.forward_tokens < dense.forward_tokens


def test_nearest_candidates_ties_go_to_the_lower_index() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    np.testing.assert_array_equal(nearest_candidates(vectors[:1], vectors, 3), [[0, 1, 3]])


def test_sparse_with_the_default_minilm_embedder(warm_model, tokenizer, examples, tmp_path) -> None:
    kernel = icl_utility_kernel(
        warm_model, tokenizer, examples, neighbours=2, cache_dir=tmp_path, progress=False
    )
    assert kernel.raw.nnz == 2 * len(examples)
    assert kernel.diagnostics["embedding_forward_tokens"] > 0
    # a pool x pool kernel: each example is its own nearest neighbour, so its copy is among its pairs
    assert all(i in kernel.raw[i].indices for i in range(len(examples)))


# -- cache -----------------------------------------------------------------------------------------------


def test_cache_hit_returns_the_same_kernel_without_forward_passes(tokenizer, examples, tmp_path) -> None:
    model = small_llama(tokenizer, hidden=32, heads=2)
    first = icl_utility_kernel(model, tokenizer, examples[:4], examples, cache_dir=tmp_path, progress=False)
    calls = forward_calls(model)
    again = icl_utility_kernel(model, tokenizer, examples[:4], examples, cache_dir=tmp_path, progress=False)
    assert calls[0] == 0 and again.from_cache and not first.from_cache
    np.testing.assert_array_equal(again.raw, first.raw)
    np.testing.assert_array_equal(again.scaled, first.scaled)
    assert again.forward_tokens == first.forward_tokens > 0
    # the kind is applied on load: another kind is a hit too, equal to computing it afresh
    exponential = icl_utility_kernel(
        model, tokenizer, examples[:4], examples, kind="exponential", cache_dir=tmp_path, progress=False
    )
    assert calls[0] == 0 and exponential.from_cache
    fresh = icl_utility_kernel(model, tokenizer, examples[:4], examples, kind="exponential", progress=False)
    np.testing.assert_array_equal(exponential.scaled, fresh.scaled)
    # another max_length, other weights or other texts miss
    icl_utility_kernel(
        model, tokenizer, examples[:4], examples, max_length=60, cache_dir=tmp_path, progress=False
    )
    assert calls[0] > 0
    before = calls[0]
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    assert not icl_utility_kernel(
        model, tokenizer, examples[:4], examples, cache_dir=tmp_path, progress=False
    ).from_cache
    assert calls[0] > before
    assert len(list((tmp_path / "kernels").glob("icl-utility-*/distances.npz"))) == 3
    assert not list((tmp_path / "kernels").glob(".*.tmp"))


# -- errors ----------------------------------------------------------------------------------------------


def test_a_dense_kernel_over_the_memory_limit_names_its_size_and_the_sparse_option(
    tokenizer, examples
) -> None:
    model = small_llama(tokenizer, hidden=32, heads=2)
    calls = forward_calls(model)
    with pytest.raises(ConfigError) as error:
        icl_utility_kernel(model, tokenizer, examples, max_kernel_bytes=500, progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "7 targets x 7 candidates" in message and "GB" in message
    assert "neighbours" in message and "max_kernel_bytes=500" in message
    assert calls[0] == 0
    rng = np.random.default_rng(5)
    embeddings = (rng.normal(size=(7, 4)), rng.normal(size=(7, 4)))
    kernel = icl_utility_kernel(
        model, tokenizer, examples, neighbours=1, embeddings=embeddings, max_kernel_bytes=500, progress=False
    )
    assert kernel.raw.nnz == 7


@pytest.mark.parametrize(
    ("targets", "candidates", "options", "named"),
    [
        ([], None, {}, "targets is empty"),
        (None, [], {}, "candidates is empty"),
        (None, None, {"kind": "cosine"}, "kind='cosine'"),
        (None, None, {"neighbours": 0}, "neighbours=0"),
        (None, None, {"batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_input_is_one_line(tokenizer, examples, targets, candidates, options, named) -> None:
    model = small_llama(tokenizer, hidden=32, heads=2)
    with pytest.raises(ConfigError, match=named) as error:
        icl_utility_kernel(
            model, tokenizer, examples if targets is None else targets, candidates, progress=False, **options
        )
    assert "\n" not in str(error.value)


# -- two processes ---------------------------------------------------------------------------------------


def _two_process_worker(rank: int, world: int, rendezvous: str, folder: str, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        model = small_llama(tokenizer)
        model.load_state_dict(torch.load(f"{folder}/model.pt", weights_only=True))
        examples = random_examples(np.random.default_rng(2), 7)
        embeddings = (np.eye(7)[:5] + 0.1, np.eye(7))
        dense = icl_utility_kernel(
            model, tokenizer, examples[:5], examples, batch_size=2, block_size=2, progress=False
        )
        near = icl_utility_kernel(
            model, tokenizer, examples[:5], examples, neighbours=2, embeddings=embeddings, progress=False
        )
        out[rank] = (dense.raw, dense.no_demo_distance, dense.forward_tokens, near.raw.toarray())
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_kernel(warm_model, tokenizer, examples, tmp_path) -> None:
    folder = tmp_path / "model"
    tokenizer.save_pretrained(str(folder))
    model = warm_model
    torch.save(model.state_dict(), folder / "model.pt")
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(
        _two_process_worker, args=(2, str(tmp_path / "rendezvous"), str(folder), out), nprocs=2, join=True
    )
    results = dict(out)
    manager.shutdown()
    single = icl_utility_kernel(
        model, tokenizer, examples[:5], examples, batch_size=2, block_size=2, progress=False
    )
    embeddings = (np.eye(7)[:5] + 0.1, np.eye(7))
    near = icl_utility_kernel(
        model, tokenizer, examples[:5], examples, neighbours=2, embeddings=embeddings, progress=False
    )
    assert np.ptp(single.raw) > 0.05
    for rank in (0, 1):
        raw, no_demo, tokens, near_raw = results[rank]
        np.testing.assert_allclose(raw, single.raw, atol=2e-6)
        np.testing.assert_allclose(no_demo, single.no_demo_distance, atol=2e-6)
        np.testing.assert_allclose(near_raw, near.raw.toarray(), atol=2e-6)
        assert tokens == single.forward_tokens  # each process counted its share; the sum is the whole
