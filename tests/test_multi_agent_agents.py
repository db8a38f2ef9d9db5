"""The agents of multi-agent collaborative selection (arXiv 2410.08102; p3bench.methods.agents): quality bins
(the paper's FineWeb-Edu intervals and quantiles), the domain agent on the real Pile sample, topic k-means
labels equal to the coverage samplers' clustering, a classifier (a tiny random BERT saved locally) for
quality scores and topic labels, users' own agents, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p3bench.data import load_dataset_splits
from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.methods import METHODS
from p3bench.methods.agents import (
    AGENTS,
    AgentLabels,
    DomainAgent,
    QualityAgent,
    TopicAgent,
    bin_labels,
    build_agent,
    edge_bins,
)
from p3bench.methods.base import SelectionContext
from p3bench.methods.coverage import ClusterSampler, DensitySampler
from p3bench.models.tokenizer import train_local_tokenizer
from p3bench.scoring.classifier import TextClassifierScorer

from .conftest import SHARED_DATA

PILE = SHARED_DATA / "pile_sample" / "toy_pile_data.jsonl"
TOPICS = ("sport", "money", "cooking")
WORDS = {
    "sport": "team match goal score player coach win league ball season",
    "money": "bank loan rate market price stock fund tax debt cash",
    "cooking": "oven bake flour sugar salt pan boil recipe dish spice",
}


def ctx() -> SelectionContext:
    return SelectionContext(0, 0, 0, np.random.default_rng([0, 0]), None, None)


def small_pool(n: int = 36) -> DatasetSplits:
    """Documents on three topics with a ``domain`` field (the topic) and no oracle fields."""
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        topic = TOPICS[i % 3]
        words = rng.choice(WORDS[topic].split(), size=12).tolist()
        docs.append(Example(id=f"doc-{i}", prompt="", target=" ".join(words), meta={"domain": topic}))
    held = [
        Example(id=f"val-{i}", prompt="", target=WORDS[t], meta={"domain": t}) for i, t in enumerate(TOPICS)
    ]
    return DatasetSplits(name="topics", task="lm", train=docs, validation=held, test=held)


def datamodule(splits: DatasetSplits, cache=None):
    tokenizer = train_local_tokenizer([ex.target for ex in splits.train], vocab_size=300)
    return METHODS.get("random")(splits, tokenizer, budget=0.5, seed=0, max_length=64, cache_dir=cache)


def tiny_bert(path, num_labels: int, seed: int = 0):
    """A random one-layer BERT classifier and its word-piece tokenizer, saved to ``path`` (no download)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted({w for t in WORDS.values() for w in t.split()}),
    ]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label={i: TOPICS[i] for i in range(num_labels)} if num_labels > 1 else None,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(path)
    return path


def one_at_a_time_logits(path, texts: list[str]) -> np.ndarray:
    """The classifier's logits for each text on its own (no padding): the reference for batched scoring."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        return np.stack(
            [model(**tokenizer(t, return_tensors="pt")).logits[0].double().numpy() for t in texts]
        )


# -- bins --------------------------------------------------------------------------------------------------
def test_the_paper_intervals_put_a_score_of_five_in_the_fifth_bin():
    scores = [0.0, 0.99, 1.0, 2.5, 3.999, 4.0, 4.5, 5.0]
    labels, names, edges = bin_labels(scores, {"kind": "edges", "edges": [1, 2, 3, 4]})
    assert labels.tolist() == [0, 0, 1, 2, 3, 4, 4, 4]
    assert names == ["below_1", "1_to_2", "2_to_3", "3_to_4", "4_and_above"] and edges == [1.0, 2.0, 3.0, 4.0]
    assert edge_bins([float("nan")], [1.0]).tolist() == [0]


def test_quantile_bins_cut_the_pool_into_equal_shares():
    values = np.random.default_rng(0).permutation(100).astype(float)
    labels, names, _ = bin_labels(values, {"kind": "quantile", "n": 5})
    assert names == ["q1", "q2", "q3", "q4", "q5"]
    assert np.bincount(labels).tolist() == [20] * 5
    # higher scores, higher bins
    assert all(values[labels == b].max() < values[labels == b + 1].min() for b in range(4))


@pytest.mark.parametrize(
    "bins, match",
    [
        ({"kind": "deciles"}, r"method\.agent_options\.quality\.bins\.kind"),
        ({"kind": "edges", "edges": [2, 1]}, r"method\.agent_options\.quality\.bins\.edges"),
        ({"kind": "quantile", "n": 0}, r"method\.agent_options\.quality\.bins\.n"),
        ({"kind": "quantile", "edges": [1]}, r"method\.agent_options\.quality\.bins has unknown keys"),
    ],
)
def test_bad_bins_are_one_line_errors(bins, match):
    with pytest.raises(ConfigError, match=match) as error:
        QualityAgent(scorer="density", bins=bins)
    assert "\n" not in str(error.value)


# -- quality -----------------------------------------------------------------------------------------------
def test_quality_agent_bins_the_score_pass_of_a_pool_scoring_method(tmp_path):
    splits = small_pool()
    dm = datamodule(splits, tmp_path)
    options = {"embedder": "tfidf", "mode": "exact"}
    labels = QualityAgent(scorer="density", scorer_options=options, bins={"kind": "quantile", "n": 4}).label(
        dm, ctx()
    )
    reference = DensitySampler(splits, dm.tokenizer, seed=0, max_length=64, cache_dir=tmp_path, **options)
    values = reference.pool_scores(ctx()).values
    expected, _, _ = bin_labels(values, {"kind": "quantile", "n": 4})
    assert labels.agent == "quality" and labels.categories == ["q1", "q2", "q3", "q4"]
    np.testing.assert_array_equal(labels.labels, expected)
    assert labels.info["scorer"]["kind"] == "density"


def test_quality_agent_with_a_classifier_bins_its_regression_scores(tmp_path):
    path = tiny_bert(tmp_path / "edu", num_labels=1)
    splits = small_pool(12)
    dm = datamodule(splits, tmp_path / "cache")
    agent = QualityAgent(
        scorer="classifier", scorer_options={"path": str(path)}, bins={"kind": "quantile", "n": 3}
    )
    labels = agent.label(dm, ctx())
    texts = [ex.target for ex in splits.train]
    scores = one_at_a_time_logits(path, texts)[:, 0]
    expected, _, _ = bin_labels(scores, {"kind": "quantile", "n": 3})
    np.testing.assert_array_equal(labels.labels, expected)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert labels.forward_tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert [c["role"] for c in labels.compute] == ["selection_forward"]
    assert labels.compute[0]["tokens"] == labels.forward_tokens
    # a second pass is served by the score cache and reports the same tokens
    again = agent.label(dm, ctx())
    assert again.info["scorer"]["scores_from_cache"] and again.forward_tokens == labels.forward_tokens


def test_quality_scorer_names_are_checked_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"method\.agent_options\.quality\.scorer.*did you mean 'perplexity_small'"
    ):
        QualityAgent(scorer="perplexity_smal")
    with pytest.raises(ConfigError, match="does not score the pool"):
        QualityAgent(scorer="random")
    with pytest.raises(ConfigError, match=r"method\.agent_options\.quality\.scorer_options\.path is not set"):
        QualityAgent(scorer="classifier")


def test_quality_scorer_option_errors_name_the_agent_key(tmp_path):
    dm = datamodule(small_pool(), tmp_path)
    with pytest.raises(ConfigError, match=r"method\.agent_options\.quality\.scorer_options\.mode") as error:
        QualityAgent(scorer="density", scorer_options={"embedder": "tfidf", "mode": "fast"}).label(dm, ctx())
    assert "\n" not in str(error.value)


# -- the classifier scorer ---------------------------------------------------------------------------------
def test_classifier_scores_and_labels_equal_one_text_at_a_time(tmp_path):
    texts = [WORDS["sport"], "bank " * 30, "oven", WORDS["money"] + " " + WORDS["cooking"]]
    regressor = TextClassifierScorer.from_pretrained(tiny_bert(tmp_path / "r", 1), batch_size=3)
    np.testing.assert_allclose(
        regressor.scores(texts), one_at_a_time_logits(tmp_path / "r", texts)[:, 0], atol=1e-5
    )
    classifier = TextClassifierScorer.from_pretrained(tiny_bert(tmp_path / "c", 3, seed=1), output="label")
    expected = one_at_a_time_logits(tmp_path / "c", texts).argmax(axis=1)
    np.testing.assert_array_equal(classifier.labels(texts), expected)
    assert classifier.label_names == list(TOPICS)
    assert classifier.score_texts(texts).tolist() == expected.astype(float).tolist()
    assert "output=label" in classifier.fingerprint and "output=score" in regressor.fingerprint
    with pytest.raises(ConfigError, match="regression head"):
        TextClassifierScorer.from_pretrained(tmp_path / "c", output="score")


def test_a_missing_classifier_is_a_one_line_error(tmp_path):
    from p3bench.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="cannot load the classifier") as error:
        TextClassifierScorer.from_pretrained(tmp_path / "nothing-here")
    assert "\n" not in str(error.value)


# -- domain ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not PILE.is_file(), reason=f"{PILE} is absent")
def test_domain_agent_on_the_pile_sample_has_its_14_domains():
    splits = load_dataset_splits("pile", data_files=str(PILE))
    dm = datamodule(splits)
    labels = build_agent("domain", {"field": "domain"}).label(dm, ctx())
    assert labels.n_categories == 14 == len(splits.info["domains"])
    assert labels.categories == sorted(splits.info["domains"])
    assert [labels.categories[c] for c in labels.labels] == [ex.meta["domain"] for ex in splits.train]
    assert labels.forward_tokens == 0 and labels.compute == []


def test_domain_agent_refuses_oracle_fields_and_missing_fields(tmp_path):
    for field in ("is_junk", "dup_group"):
        with pytest.raises(
            ConfigError, match=r"method\.agent_options\.domain\.field=.*oracle field"
        ) as error:
            DomainAgent(field=field)
        assert "\n" not in str(error.value)
    dm = datamodule(small_pool())
    with pytest.raises(ConfigError, match=r"method\.agent_options\.domain\.field='source'.*'doc-0'") as error:
        DomainAgent(field="source").label(dm, ctx())
    assert "\n" not in str(error.value)


# -- topic -------------------------------------------------------------------------------------------------
def test_topic_kmeans_labels_equal_the_coverage_samplers_clusters(tmp_path):
    splits = small_pool()
    dm = datamodule(splits, tmp_path)
    labels = TopicAgent(n_clusters=3, embedder="tfidf", cluster_seed=4).label(dm, ctx())
    sampler = ClusterSampler(
        splits,
        dm.tokenizer,
        seed=0,
        max_length=64,
        cache_dir=None,
        embedder="tfidf",
        n_clusters=3,
        cluster_seed=4,
    )
    np.testing.assert_array_equal(labels.labels, sampler.clusters().labels)
    assert labels.categories == ["cluster_0", "cluster_1", "cluster_2"]
    # the three planted topics are the three clusters
    topic_of = [ex.meta["domain"] for ex in splits.train]
    assert {len({t for t, c in zip(topic_of, labels.labels, strict=True) if c == k}) for k in range(3)} == {1}


def test_topic_classifier_labels_are_the_argmax_class(tmp_path):
    path = tiny_bert(tmp_path / "topic", num_labels=3, seed=2)
    splits = small_pool(9)
    labels = build_agent(
        "topic", {"kind": "classifier", "classifier": {"path": str(path)}}, progress=False
    ).label(datamodule(splits), ctx())
    expected = one_at_a_time_logits(path, [ex.target for ex in splits.train]).argmax(axis=1)
    np.testing.assert_array_equal(labels.labels, expected)
    assert labels.categories == list(TOPICS) and labels.forward_tokens > 0


def test_topic_options_are_checked():
    with pytest.raises(ConfigError, match=r"method\.agent_options\.topic\.kind"):
        TopicAgent(kind="lda")
    with pytest.raises(ConfigError, match=r"method\.agent_options\.topic\.classifier\.path"):
        TopicAgent(kind="classifier")
    with pytest.raises(ConfigError, match=r"method\.agent_options\.topic\.n_clusters"):
        TopicAgent(n_clusters=0)


# -- the registry and users' agents -------------------------------------------------------------------------
def test_unknown_agents_and_options_are_one_line_errors_naming_the_closest():
    with pytest.raises(ConfigError, match="unknown agent 'qualty'.*did you mean 'quality'") as error:
        build_agent("qualty", {})
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"method\.agent_options\.domain\.feild.*did you mean 'field'"):
        build_agent("domain", {"feild": "domain"})


def test_users_can_register_their_own_agent(monkeypatch):
    monkeypatch.setattr(AGENTS, "_entries", dict(AGENTS._entries))

    @AGENTS.register("length")
    class LengthAgent:
        def __init__(self, threshold: int = 40) -> None:
            self.threshold = threshold

        def label(self, datamodule, ctx):
            long = [len(ex.target) > self.threshold for ex in datamodule.pool]
            return AgentLabels("length", ["short", "long"], np.asarray(long, dtype=np.int64))

    assert "length" in AGENTS.names()
    labels = build_agent("length", {"threshold": 60}, progress=False).label(datamodule(small_pool()), ctx())
    assert labels.categories == ["short", "long"] and labels.labels.shape == (36,)


def test_agent_labels_are_validated():
    with pytest.raises(ValueError, match="outside"):
        AgentLabels("x", ["a"], np.array([0, 1]))
    with pytest.raises(ValueError, match="duplicate"):
        AgentLabels("x", ["a", "a"], np.array([0, 1]))
    labels = AgentLabels("x", ["a", "b", "c"], np.array([2, 0, 2]))
    assert labels.counts().tolist() == [1, 0, 2] and labels.members(2).tolist() == [0, 2]
