"""The agents of multi-agent collaborative data selection (Bai et al., arXiv 2410.08102, §3.3; ACL 2025 as
"Efficient Pretraining Data Selection for Language Models via Multi-Actor Collaboration").

An agent puts every pool example in one of its categories; the method (:mod:`p3bench.methods.multi_agent`)
holds a weight per category and the console mixes the agents (:mod:`p3bench.algorithms.console`). Agents are
registered components, built by name from ``method.agents`` and ``method.agent_options.<name>``::

    labels = build_agent("domain", {"field": "domain"}).label(datamodule, ctx)   # -> AgentLabels

- ``quality`` (:class:`QualityAgent`): scores from a p3bench scorer, cut into bins. The scorer is the
  score pass of any pool-scoring method by its registered name (``perplexity_small``, ``askllm_xl``,
  ``density``, ...; its options in ``scorer_options``), or ``classifier``: a local sequence-classification
  model (:mod:`p3bench.scoring.classifier`, e.g. the FineWeb-Edu regressor the paper uses). Bins are
  quantiles (``{kind: quantile, n: 5}``: equal shares of the pool) or fixed edges (``{kind: edges, edges:
  [1, 2, 3, 4]}``: the paper's five FineWeb-Edu intervals ``[j-1, j)`` and ``[4, 5]`` on 0-5 scores).
- ``domain`` (:class:`DomainAgent`): a metadata field, ``ex.meta[field]`` (the Pile's 14 ``domain``s, the
  sources of ``text_mix``). The paper uses SlimPajama's 7 sources.
- ``topic`` (:class:`TopicAgent`): k-means clusters of sentence embeddings (:meth:`ClusterSampler.clusters
  <p3bench.methods.coverage.ClusterSampler.clusters>`: the same clustering and cache as SemDeDup and
  Prototypes), or a topic classifier's argmax class (``kind: classifier``).

Register your own with ``AGENTS.register("name")`` on a class whose ``label(datamodule, ctx)`` returns
:class:`AgentLabels` (or ``AGENTS.register_lazy("name", "package.module:Class")``); its keyword options
come from ``method.agent_options.<name>``.

Departures from the paper: the paper's topic agent is a 13-topic BERT trained on GPT-4o labels of 10,000
Common Crawl clusters; k-means of the pool's own embeddings stands in for it (13 clusters by default), and
the classifier path takes such a model when one is at hand. The public code's quality bins exclude a score
of exactly 5; the paper's ``I_5 = [4, 5]`` is closed, and so is the last bin here. Quantile bins are not in
the paper: a stand-in scorer's scores (a negated perplexity, a log-probability) have no fixed scale.

Labels never read oracle fields: the domain agent reads only ``ex.meta[field]`` and refuses an oracle key
as its field. A label pass's tokens are in :attr:`AgentLabels.forward_tokens` and its models in
:attr:`AgentLabels.compute` (for the round's compute ledger; see :meth:`AgentLabels.record_compute`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from p3bench.compute import ComputeLedger, model_size
from p3bench.data.example import is_oracle_field
from p3bench.errors import ConfigError
from p3bench.methods.base import SelectionContext, SelectionDataModule
from p3bench.methods.pool_scoring import TEXT_FIELDS, PoolScoringMethod, example_text
from p3bench.registry import Registry, closest

__all__ = [
    "AGENTS",
    "Agent",
    "AgentLabels",
    "DomainAgent",
    "QualityAgent",
    "TopicAgent",
    "bin_labels",
    "build_agent",
    "edge_bins",
    "quantile_bins",
]

#: the paper's FineWeb-Edu intervals on 0-5 scores: [0,1), [1,2), [2,3), [3,4), [4,5]
PAPER_QUALITY_EDGES = (1.0, 2.0, 3.0, 4.0)
BIN_KINDS = ("quantile", "edges")
TOPIC_KINDS = ("kmeans", "classifier")
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "path": None,
    "offline": True,
    "batch_size": 16,
    "max_tokens": None,
    "dtype": None,
    "text": "prompt_and_target",
}


@dataclass(frozen=True)
class AgentLabels:
    """What an agent says about the pool: the category of every pool example (``labels``, int64 in
    ``[0, len(categories))``, in pool order), the categories' names, the forward tokens the labelling spent
    (scoring or embedding the pool; the same on a cache hit), the models it ran (``compute``:
    :class:`p3bench.compute.ComputeComponent` dicts for the round's ledger) and what it recorded (``info``:
    scorer, bin edges, clustering)."""

    agent: str
    categories: list[str]
    labels: NDArray[np.int64]
    forward_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    compute: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "categories", [str(c) for c in self.categories])
        if labels.ndim != 1:
            raise ValueError(
                f"agent {self.agent!r} labels have shape {labels.shape}: expected one per example"
            )
        if not self.categories:
            raise ValueError(f"agent {self.agent!r} has no categories: expected at least one")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"agent {self.agent!r} has duplicate category names: expected distinct names")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.categories)):
            raise ValueError(
                f"agent {self.agent!r} has labels outside [0, {len(self.categories)}): expected category indices"
            )

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    def counts(self) -> NDArray[np.int64]:
        """Pool examples per category."""
        return np.bincount(self.labels, minlength=self.n_categories).astype(np.int64)

    def members(self, category: int) -> NDArray[np.int64]:
        """Pool positions of ``category``'s examples, ascending."""
        return np.flatnonzero(self.labels == int(category)).astype(np.int64)

    def record_compute(self, ledger: ComputeLedger) -> None:
        """Add the labelling's models to ``ledger`` (once per run: labels are computed once)."""
        for component in self.compute:
            ledger.add_component(component)


@runtime_checkable
class Agent(Protocol):
    """An agent: ``label(datamodule, ctx)`` categorises the datamodule's pool."""

    def label(self, datamodule: SelectionDataModule, ctx: SelectionContext | None) -> AgentLabels: ...


AGENTS: Registry[type] = Registry("agent")


def _key(agent: str, option: str) -> str:
    return f"method.agent_options.{agent}.{option}"


def build_agent(name: str, options: Mapping[str, Any] | None = None, **defaults: Any) -> Agent:
    """The agent registered as ``name``, built with ``options`` (``method.agent_options.<name>``).

    ``defaults`` (e.g. ``progress``) are passed only where the agent's constructor takes them and
    ``options`` does not set them. An unknown name or option is a one-line :class:`ConfigError` naming the
    closest known one.
    """
    cls = AGENTS.get(str(name))
    options = dict(options or {})
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [p for p in parameters if parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        hint = closest(unknown[0], accepted)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(
            f"{_key(name, unknown[0])} is not an option of agent {name!r}: expected some of "
            f"{', '.join(accepted)}{suggestion}"
        )
    for key, value in defaults.items():
        if key not in options and (key in accepted or takes_any):
            options[key] = value
    agent = cls(**options)
    if not callable(getattr(agent, "label", None)):
        raise ConfigError(f"agent {name!r} ({cls.__name__}) has no label(datamodule, ctx): expected an Agent")
    return agent


# -- bins -----------------------------------------------------------------------------------------------------


def edge_bins(values: Sequence[float] | NDArray[np.float64], edges: Sequence[float]) -> NDArray[np.int64]:
    """Bin ``i`` holds ``edges[i-1] <= v < edges[i]``: ``len(edges) + 1`` bins, the first open below, the
    last open above (so with the paper's edges ``[1, 2, 3, 4]`` a score of 5 is in the fifth bin,
    ``[4, 5]``). A NaN goes to the first bin."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.digitize(values, np.asarray(edges, dtype=np.float64), right=False).astype(np.int64)
    labels[np.isnan(values)] = 0
    return labels


def quantile_bins(values: Sequence[float] | NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """The ``n - 1`` inner edges that cut the finite ``values`` into ``n`` equal shares (NumPy's linear
    quantiles). Tied values can make two edges equal, and a bin between them empty."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if n < 1:
        raise ValueError(f"n={n}: expected at least one bin")
    if finite.size == 0:
        return np.zeros(n - 1, dtype=np.float64)
    return np.quantile(finite, np.arange(1, n) / n)


def _edge_name(low: float | None, high: float | None) -> str:
    if low is None:
        return f"below_{high:g}"
    if high is None:
        return f"{low:g}_and_above"
    return f"{low:g}_to_{high:g}"


def bin_labels(
    values: Sequence[float] | NDArray[np.float64], bins: Mapping[str, Any], key: str = "method.bins"
) -> tuple[NDArray[np.int64], list[str], list[float]]:
    """Labels, category names and edges of ``values`` under ``bins`` (``{kind: quantile, n}`` or ``{kind:
    edges, edges}``); bad ``bins`` are a one-line error naming ``key``. Quantile bins are named ``q1``
    (lowest scores) to ``q<n>``; edge bins by their interval (``below_1``, ``1_to_2``, ...,
    ``4_and_above``)."""
    bins = dict(bins)
    kind = bins.get("kind")
    if kind not in BIN_KINDS:
        raise ConfigError(f"{key}.kind={kind!r} is not supported: expected one of {', '.join(BIN_KINDS)}")
    allowed = {"kind", "n"} if kind == "quantile" else {"kind", "edges"}
    unknown = sorted(set(bins) - allowed)
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown} for kind={kind}: expected {sorted(allowed)}")
    if kind == "quantile":
        n = bins.get("n", 5)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{key}.n={n!r} is invalid: expected an integer >= 1")
        edges = [float(e) for e in quantile_bins(values, n)]
        return edge_bins(values, edges), [f"q{i + 1}" for i in range(n)], edges
    raw = bins.get("edges")
    try:
        edges = [float(e) for e in raw]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}.edges={raw!r} is invalid: expected a list of numbers") from None
    if (
        not edges
        or not all(math.isfinite(e) for e in edges)
        or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
    ):
        raise ConfigError(f"{key}.edges={raw!r} is invalid: expected finite, strictly increasing numbers")
    bounds: list[float | None] = [None, *edges, None]
    names = [_edge_name(bounds[i], bounds[i + 1]) for i in range(len(edges) + 1)]
    return edge_bins(values, edges), names, edges


# -- shared pieces ---------------------------------------------------------------------------------------------


def _pool_texts(datamodule: SelectionDataModule, text: str) -> list[str]:
    return [example_text(ex.prompt, ex.target, text) for ex in datamodule.pool]


def _rename_keys(error: ConfigError, prefix: str) -> ConfigError:
    """``error`` with its ``method.<key>`` names moved under ``prefix`` (an inner method's options)."""
    return ConfigError(str(error).replace("method.", f"{prefix}."))


def _inner_method(
    cls: type[PoolScoringMethod], datamodule: SelectionDataModule, prefix: str, options: Mapping[str, Any]
) -> PoolScoringMethod:
    """A pool-scoring method on ``datamodule``'s pool and settings, to reuse its scoring or clustering."""
    try:
        return cls(
            datamodule.splits,
            datamodule.tokenizer,
            budget=datamodule.budget,
            seed=datamodule.seed,
            batch_size=datamodule.batch_size,
            max_length=datamodule.max_length,
            cache_dir=datamodule.cache_dir,
            **dict(options),
        )
    except ConfigError as error:
        raise _rename_keys(error, prefix) from None
    except TypeError as error:
        raise ConfigError(f"{prefix} has an option {cls.__name__} does not take: {error}") from None


def _classifier_labels(
    datamodule: SelectionDataModule,
    ctx: SelectionContext | None,
    options: Mapping[str, Any],
    output: str,
    key: str,
) -> tuple[NDArray[np.float64], int, dict[str, Any], list[dict[str, Any]], list[str]]:
    """Scores (or argmax classes) of the pool from a local classifier, through the score cache; returns the
    values, forward tokens, info, compute components and the class names."""
    from p3bench.scoring.classifier import TextClassifierScorer
    from p3bench.sharded import sharded_scores_counted

    given = dict(options)
    unknown = sorted(set(given) - set(CLASSIFIER_DEFAULTS) - {"progress"})
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}: expected some of {sorted(CLASSIFIER_DEFAULTS)}")
    cfg = {**CLASSIFIER_DEFAULTS, **given}
    if not cfg["path"]:
        raise ConfigError(f"{key}.path is not set: expected the directory of a sequence-classification model")
    if cfg["text"] not in TEXT_FIELDS:
        raise ConfigError(
            f"{key}.text={cfg['text']!r} is not supported: expected one of {', '.join(TEXT_FIELDS)}"
        )
    module = ctx.module if ctx is not None else None
    device = str(module.device) if module is not None else None
    try:
        scorer = TextClassifierScorer.from_pretrained(
            str(cfg["path"]),
            offline=bool(cfg["offline"]),
            batch_size=int(cfg["batch_size"]),
            device=device,
            dtype=cfg["dtype"],
            output=output,
            max_tokens=cfg["max_tokens"],
            progress=bool(cfg.get("progress", True)),
        )
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None
    folder = None if datamodule.cache_dir is None else Path(datamodule.cache_dir) / "scores"
    cached = sharded_scores_counted(scorer, _pool_texts(datamodule, str(cfg["text"])), folder)
    ledger = ComputeLedger()
    ledger.add(
        f"classifier:{scorer.model_identity}",
        "selection_forward",
        model_size(scorer.model),
        cached.forward_tokens,
    )
    info = {
        "kind": "classifier",
        "model": scorer.model_identity,
        "fingerprint": scorer.fingerprint,
        "scores_from_cache": cached.from_cache,
    }
    return cached.scores, int(cached.forward_tokens), info, ledger.to_list(), scorer.label_names


# -- the agents ------------------------------------------------------------------------------------------------


@AGENTS.register("quality")
class QualityAgent:
    """Quality categories (arXiv 2410.08102, §3.3): a scorer's score of every pool example, cut into bins.

    Args:
        scorer: ``classifier`` (a local sequence-classification model with a regression head; options
            ``path``, ``offline``, ``batch_size``, ``max_tokens``, ``dtype``, ``text``) or the registered name
            of a pool-scoring method whose score pass is used (``perplexity_small`` by default: a stand-in
            proxy's negated perplexity, higher = more likely; options are that method's, e.g.
            ``{standin: {steps: 50}}``).
        scorer_options: those options (``method.agent_options.quality.scorer_options``).
        bins: ``{kind: quantile, n: 5}`` (equal shares of the pool) or ``{kind: edges, edges: [1, 2, 3, 4]}``
            (the paper's five FineWeb-Edu intervals; a score of 5 is in the last one).
        progress: progress bars of the scoring pass.
    """

    name: ClassVar[str] = "quality"

    def __init__(
        self,
        scorer: str = "perplexity_small",
        scorer_options: Mapping[str, Any] | None = None,
        bins: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.scorer = str(scorer)
        self.scorer_options = dict(scorer_options or {})
        self.bins = dict(bins) if bins is not None else {"kind": "quantile", "n": 5}
        self.progress = bool(progress)
        bin_labels(np.zeros(0), self.bins, _key(self.name, "bins"))  # check the bins now
        if self.scorer != "classifier":
            self._method_class()
        elif not self.scorer_options.get("path"):
            raise ConfigError(
                f"{_key(self.name, 'scorer_options')}.path is not set: scorer=classifier expects the directory "
                "of a sequence-classification model with a regression head"
            )

    def _method_class(self) -> type[PoolScoringMethod]:
        from p3bench.methods import METHODS

        key = _key(self.name, "scorer")
        if self.scorer not in METHODS:
            known = ["classifier", *METHODS.names()]
            hint = closest(self.scorer, known)
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"{key}={self.scorer!r} is unknown: expected classifier or a pool-scoring method "
                f"(perplexity_small, askllm_small, ...){suggestion}"
            )
        cls = METHODS.get(self.scorer)
        if not (isinstance(cls, type) and issubclass(cls, PoolScoringMethod)):
            raise ConfigError(
                f"{key}={self.scorer!r} does not score the pool: expected classifier or a pool-scoring method "
                "(perplexity_small, askllm_small, density, ...)"
            )
        return cls

    def scores(
        self, datamodule: SelectionDataModule, ctx: SelectionContext | None
    ) -> tuple[NDArray[np.float64], int, dict[str, Any], list[dict[str, Any]]]:
        """The pool's scores (higher = better quality), forward tokens, info and compute components."""
        prefix = _key(self.name, "scorer_options")
        if self.scorer == "classifier":
            options = {"progress": self.progress, **self.scorer_options}
            values, tokens, info, compute, _ = _classifier_labels(datamodule, ctx, options, "score", prefix)
            return values, tokens, info, compute
        options = {"progress": self.progress, **self.scorer_options}
        method = _inner_method(self._method_class(), datamodule, prefix, options)
        try:
            result = method.pool_scores(ctx)
        except ConfigError as error:
            raise _rename_keys(error, prefix) from None
        info = {"kind": self.scorer, **result.info}
        return (
            np.asarray(result.values, dtype=np.float64),
            int(result.forward_tokens),
            info,
            method.compute_ledger.to_list(),
        )

    def label(self, datamodule: SelectionDataModule, ctx: SelectionContext | None) -> AgentLabels:
        values, tokens, info, compute = self.scores(datamodule, ctx)
        labels, names, edges = bin_labels(values, self.bins, _key(self.name, "bins"))
        info = {
            "scorer": info,
            "bins": {**self.bins, "edges": edges},
            "n_not_finite": int((~np.isfinite(values)).sum()),
        }
        return AgentLabels(self.name, names, labels, forward_tokens=tokens, info=info, compute=compute)


@AGENTS.register("domain")
class DomainAgent:
    """Domain categories (arXiv 2410.08102, §3.3: SlimPajama's sources): the value of a metadata field,
    ``ex.meta[field]`` (the Pile's ``domain``, ``text_mix``'s sources). Categories are the field's distinct
    values (as strings), sorted. An oracle field (a planted defect's record) or a field some pool example
    lacks is a one-line error naming ``method.agent_options.domain.field``."""

    name: ClassVar[str] = "domain"

    def __init__(self, field: str = "domain") -> None:
        key = _key(self.name, "field")
        if not isinstance(field, str) or not field:
            raise ConfigError(
                f"{key}={field!r} is invalid: expected the name of a metadata field such as domain"
            )
        if is_oracle_field(field):
            raise ConfigError(
                f"{key}={field!r} is an oracle field (planted defects, for reports only): expected a "
                "descriptive metadata field such as domain"
            )
        self.field = field

    def label(self, datamodule: SelectionDataModule, ctx: SelectionContext | None) -> AgentLabels:
        values = []
        for ex in datamodule.pool:
            try:
                values.append(str(ex.meta[self.field]))
            except KeyError:
                raise ConfigError(
                    f"{_key(self.name, 'field')}={self.field!r}: pool example {ex.id!r} has no meta[{self.field!r}]; "
                    "expected a metadata field every pool example has (e.g. domain)"
                ) from None
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index[v] for v in values], dtype=np.int64)
        return AgentLabels(self.name, names, labels, info={"field": self.field})


@AGENTS.register("topic")
class TopicAgent:
    """Topic categories (arXiv 2410.08102, §3.3). ``kind=kmeans``: spherical k-means of the pool's sentence
    embeddings into ``n_clusters`` clusters (the same clustering and cache as
    :meth:`p3bench.methods.coverage.ClusterSampler.clusters`, keyed by embeddings, k and ``cluster_seed``).
    ``kind=classifier``: a local topic classifier's argmax class (``classifier: {path, offline, batch_size,
    max_tokens, dtype, text}``), the paper's route (its 13-topic BERT); categories are its ``id2label``.
    """

    name: ClassVar[str] = "topic"

    def __init__(
        self,
        kind: str = "kmeans",
        n_clusters: int = 13,
        embedder: str = "minilm",
        embedder_kwargs: Mapping[str, Any] | None = None,
        cluster_seed: int = 0,
        classifier: Mapping[str, Any] | None = None,
        text: str = "prompt_and_target",
        progress: bool = True,
    ) -> None:
        if kind not in TOPIC_KINDS:
            raise ConfigError(
                f"{_key(self.name, 'kind')}={kind!r} is not supported: expected one of {', '.join(TOPIC_KINDS)}"
            )
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
            raise ConfigError(
                f"{_key(self.name, 'n_clusters')}={n_clusters!r} is invalid: expected an integer >= 1"
            )
        if text not in TEXT_FIELDS:
            raise ConfigError(
                f"{_key(self.name, 'text')}={text!r} is not supported: expected one of {', '.join(TEXT_FIELDS)}"
            )
        if kind == "classifier" and not (classifier or {}).get("path"):
            raise ConfigError(
                f"{_key(self.name, 'classifier')}.path is not set: kind=classifier expects the directory of a "
                "sequence-classification model"
            )
        self.kind = kind
        self.n_clusters = int(n_clusters)
        self.embedder = str(embedder)
        self.embedder_kwargs = dict(embedder_kwargs or {})
        self.cluster_seed = int(cluster_seed)
        self.classifier = dict(classifier or {})
        self.text = text
        self.progress = bool(progress)

    def label(self, datamodule: SelectionDataModule, ctx: SelectionContext | None) -> AgentLabels:
        if self.kind == "classifier":
            options = {"progress": self.progress, "text": self.text, **self.classifier}
            values, tokens, info, compute, names = _classifier_labels(
                datamodule, ctx, options, "label", _key(self.name, "classifier")
            )
            return AgentLabels(
                self.name, names, values.astype(np.int64), tokens, {"classifier": info}, compute
            )
        from p3bench.methods.coverage import ClusterSampler

        if self.n_clusters > len(datamodule.pool):
            raise ConfigError(
                f"{_key(self.name, 'n_clusters')}={self.n_clusters} is more than the pool's {len(datamodule.pool)} "
                "examples: expected at most one cluster per example"
            )
        sampler = _inner_method(
            ClusterSampler,
            datamodule,
            f"method.agent_options.{self.name}",
            {
                "embedder": self.embedder,
                "embedder_kwargs": self.embedder_kwargs,
                "n_clusters": self.n_clusters,
                "cluster_seed": self.cluster_seed,
                "text": self.text,
                "progress": self.progress,
            },
        )
        clusters = sampler.clusters()
        width = len(str(self.n_clusters - 1))
        names = [f"cluster_{i:0{width}d}" for i in range(clusters.n_clusters)]
        info = {
            "kind": "kmeans",
            "embedder": self.embedder,
            "n_clusters": clusters.n_clusters,
            "cluster_seed": self.cluster_seed,
        }
        return AgentLabels(
            self.name,
            names,
            np.asarray(clusters.labels, dtype=np.int64),
            forward_tokens=sampler.embedding_tokens(),
            info=info,
            compute=sampler.compute_ledger.to_list(),
        )
