"""Quality-score samplers of the 19-sampler comparison (Sachdeva et al., "How to Train Data-Efficient LLMs",
arXiv 2402.09668): Ask-LLM (§3.1, Algorithm 1) and perplexity filtering (App. B.5).

Both score every pool example once with a separate model (not the model being trained) and keep the top
``budget`` by score, without replacement and without sampling, as the paper does. Scores are cached under
``cache_dir/scores`` keyed by the scorer's fingerprint and the pool's texts, so a sweep over budgets and seeds
scores each pool once per scorer.

A selection's forward tokens are the non-padding tokens the scorer's model processes over the pool: the
scorer's own tokenization of each text after its truncation, inside the Ask-LLM prompt for Ask-LLM (plus one
decoder-start token per text for a seq2seq judge), BOS included for perplexity. They are counted whether or
not the score cache served the scores (the cache sidecar keeps the count; an older sidecar without it is
recounted with the tokenizer). Training a stand-in is not a pass over the pool for selection and is not in
the forward tokens; how it was trained (steps, batch size, tokens, ...) is in the round's ``scorer.standin``.
Both go into the round's compute in FLOPs (:mod:`p3bench.compute`): the scorer's pass at ``2N`` per token
(a seq2seq judge's encoder and decoder each with their own parameters), a stand-in's training at ``6N``.

Where the scorer comes from (``source``, set for a whole sweep by the top-level ``quality_scorers`` key):

- ``hub``: the paper's families by name, loaded through transformers (``offline=false`` to download, or from
  the local cache): Flan-T5-{Small, ..., XXL} for Ask-LLM; for perplexity, causal LMs of increasing size
  (Pythia by default) and intermediate checkpoints of one of them (hub revisions ``stepN``). The paper's
  perplexity proxies are T5; how it computes a T5 perplexity is not stated, so the configs use causal LMs.
- ``standin``: small local models trained here (:mod:`p3bench.models.standins`), named by the same sizes and
  checkpoints. Every result made with one records ``scorer.standin`` (what it is and how it was trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from p3bench.compute import model_size
from p3bench.data import load_dataset_splits
from p3bench.errors import ConfigError
from p3bench.methods.base import SelectionContext
from p3bench.methods.options import choice, merge_options
from p3bench.methods.pool_scoring import PoolScores, PoolScoringMethod, example_text
from p3bench.models import standins
from p3bench.scoring.ask_llm import ASK_LLM_TEMPLATE, MODEL_KINDS, NORMALISATIONS, AskLLMScorer
from p3bench.scoring.cache import CachedScores
from p3bench.scoring.perplexity import PerplexityScorer
from p3bench.sharded import sharded_scores_counted

SOURCES = ("standin", "hub")
BANDS = ("low", "middle", "high")


HUB_DEFAULTS: dict[str, Any] = {"name_or_path": None, "revision": None, "dtype": "auto", "offline": True}
SCORING_DEFAULTS: dict[str, Any] = {"batch_size": 16, "max_tokens": None}


class ModelScoredSampler(PoolScoringMethod):
    """A sampler whose scores come from a separate model (a hub model or a local stand-in)."""

    name: ClassVar[str] = "model_scored"
    #: the scorer a named variant uses unless its config says otherwise (``hub`` and ``standin`` keys)
    preset: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        *args: Any,
        source: str = "standin",
        hub: dict[str, Any] | None = None,
        scoring: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.source = choice("source", source, SOURCES)
        self.hub = merge_options("hub", {**HUB_DEFAULTS, **self.preset.get("hub", {})}, hub)
        self.scoring = merge_options(
            "scoring", {**SCORING_DEFAULTS, **self.preset.get("scoring", {})}, scoring
        )
        if self.source == "hub" and not self.hub["name_or_path"]:
            raise ConfigError(
                "method.source=hub needs method.hub.name_or_path: expected a hub id or a local path"
            )

    def device(self, ctx: SelectionContext | None) -> str:
        module = ctx.module if ctx is not None else None
        if module is not None:
            return str(module.device)
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def standin_settings(self, what: str, **extra: Any) -> standins.TrainingSettings:
        """How the stand-in is trained, from ``method.standin``; stand-ins live in the cache."""
        if self.cache_dir is None:
            raise ConfigError(
                f"{what} stand-in is trained into the cache: expected paths.cache_dir to be set"
            )
        cfg = self.standin
        return standins.TrainingSettings(
            steps=int(cfg["steps"]),
            batch_size=int(cfg["batch_size"]),
            lr=float(cfg["lr"]),
            seed=int(cfg["seed"]),
            **extra,
        )

    def record_compute(
        self, name: str, scorer: Any, cached: CachedScores, standin: dict[str, Any] | None, **replay: Any
    ) -> None:
        """Report the scorer's pass over the pool and, for a stand-in, its training to the round's compute
        ledger (:mod:`p3bench.compute`). A seq2seq scorer's decoder reads one start token per text; the rest
        of the forward tokens are its encoder's. ``replay``: the texts (and template) a stand-in trained on,
        for a ``standin.json`` written before stand-ins recorded their training tokens."""
        size = model_size(scorer.model)
        decoder = len(self.pool) if size.decoder_params is not None and cached.forward_tokens else 0
        ledger = self.compute_ledger
        ledger.add(name, "selection_forward", size, cached.forward_tokens - decoder, decoder_tokens=decoder)
        if standin is not None:
            encoder, decoder = standins.training_tokens(standin, scorer.tokenizer, **replay)
            ledger.add(name, "selection_train", size, encoder, decoder_tokens=decoder)

    def cached(self, scorer: Any) -> CachedScores:
        """The scorer's scores of the pool through the score cache, with their forward tokens (the same
        whether or not the cache served them); split across processes under a process group."""
        folder = None if self.cache_dir is None else Path(self.cache_dir) / "scores"
        return sharded_scores_counted(scorer, self.texts(), folder)


# -- Ask-LLM ---------------------------------------------------------------------------------------------------

ASK_STANDIN_DEFAULTS: dict[str, Any] = {
    "size": "xl",
    "steps": 200,
    "batch_size": 16,
    "lr": 1.0e-3,
    "max_text_words": 80,
    "seed": 0,
    # curated text the stand-in learns to call informative (its degraded copies are the negatives)
    "reference": [],
}


class AskLLM(ModelScoredSampler):
    """ASK-LLM (arXiv 2402.09668, §3.1, Algorithm 1): ask an instruction-tuned model whether each example is
    informative for pre-training (the paper's Figure 3 prompt, ``template``) and keep the ``budget`` examples
    with the highest P("yes") (top-k, no sampling). ``normalisation`` is ``full`` (softmax over the whole
    vocabulary, the paper's "softmax probability of the token 'yes'") or ``yes_no`` (yes against no only); the
    paper leaves this open, so it is recorded with the scores. Scores are reported as log P(yes), the paper's
    plotted score.
    """

    name: ClassVar[str] = "ask_llm"
    preset: ClassVar[dict[str, dict[str, Any]]] = {
        "hub": {"name_or_path": "google/flan-t5-xl"},
        "scoring": {"max_tokens": 128},
    }

    def __init__(
        self,
        *args: Any,
        template: str | None = None,
        normalisation: str = "full",
        yes_tokens: list[str] | None = None,
        no_tokens: list[str] | None = None,
        model_kind: str = "auto",
        standin: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.template = ASK_LLM_TEMPLATE if template is None else str(template)
        if "{text}" not in self.template:
            raise ConfigError(
                "method.template has no {text} placeholder: expected one where the example goes"
            )
        self.normalisation = choice("normalisation", normalisation, NORMALISATIONS)
        self.yes_tokens = list(yes_tokens or ["yes"])
        self.no_tokens = list(no_tokens or ["no"])
        self.model_kind = choice("model_kind", model_kind, MODEL_KINDS)
        self.standin = merge_options(
            "standin", {**ASK_STANDIN_DEFAULTS, **self.preset.get("standin", {})}, standin
        )
        self.standin_texts: list[str] = []  # what the stand-in judge trained on (set when it is built)

    def model_path(self) -> tuple[str, dict[str, Any] | None]:
        if self.source == "hub":
            return str(self.hub["name_or_path"]), None
        cfg = self.standin
        if not cfg["reference"]:
            raise ConfigError(
                "method.standin.reference is empty: expected datasets of curated text for the Ask-LLM stand-in"
            )
        settings = self.standin_settings("an Ask-LLM")
        self.standin_texts = reference_texts(cfg["reference"], exclude=set(self.texts()))
        path = standins.ask_llm_judge(
            self.standin_texts,
            str(cfg["size"]),
            self.template,
            self.cache_dir,
            settings=settings,
            max_text_words=int(cfg["max_text_words"]),
            progress=self.progress,
        )
        return str(path), standins.read_standin_record(path)

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        path, record = self.model_path()
        scorer = AskLLMScorer.from_pretrained(
            path,
            model_kind=self.model_kind,
            template=self.template,
            yes_tokens=self.yes_tokens,
            no_tokens=self.no_tokens,
            normalisation=self.normalisation,
            max_text_tokens=None if self.scoring["max_tokens"] is None else int(self.scoring["max_tokens"]),
            batch_size=int(self.scoring["batch_size"]),
            device=self.device(ctx),
            dtype=self.hub["dtype"],
            revision=self.hub["revision"] if self.source == "hub" else None,
            offline=bool(self.hub["offline"]) if self.source == "hub" else True,
            progress=self.progress,
        )
        cached = self.cached(scorer)
        p_yes = cached.scores
        model = path if self.source == "hub" else f"standin:{self.standin['size']}"
        self.record_compute(
            f"ask_llm:{model}", scorer, cached, record, texts=self.standin_texts, template=self.template
        )
        info = {
            "scorer": {
                "kind": "ask_llm",
                "source": self.source,
                "model": model,
                "normalisation": self.normalisation,
                "fingerprint": scorer.fingerprint,
                "scores_from_cache": cached.from_cache,
                "standin": record,
            }
        }
        return PoolScores(
            values=np.log(np.clip(p_yes, 1e-300, 1.0)), forward_tokens=cached.forward_tokens, info=info
        )

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        return self.top_k(scores.values, self.budget_size), {}


def reference_texts(specs: list[dict[str, Any]], exclude: set[str]) -> list[str]:
    """Texts of the reference datasets (all their splits), without any text that is also in the pool."""
    texts: list[str] = []
    for spec in specs:
        spec = dict(spec)
        unknown = sorted(set(spec) - {"name", "params", "max_docs"})
        if unknown:
            raise ConfigError(
                f"method.standin.reference entry has unknown keys {unknown}: expected name, params, max_docs"
            )
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError(
                f"a reference dataset {spec!r} has no name: expected {{name: ..., params: ...}}"
            )
        max_docs = spec.pop("max_docs", None)
        splits = load_dataset_splits(str(name), **dict(spec.pop("params", {}) or {}))
        docs = [
            example_text(ex.prompt, ex.target, "prompt_and_target")
            for split in (splits.train, splits.validation, splits.test)
            for ex in split
        ]
        docs = [d for d in docs if d not in exclude]
        texts.extend(docs if max_docs is None else docs[: int(max_docs)])
    return texts


# -- perplexity filters ------------------------------------------------------------------------------------------

PPL_STANDIN_DEFAULTS: dict[str, Any] = {
    "size": "large",
    "steps": 400,
    "batch_size": 16,
    "lr": 2.0e-3,
    "seed": 0,
    # a fraction of training for an intermediate checkpoint (the paper's 20k..700k of 1M steps); null: final
    "checkpoint": None,
}


class PerplexityFilter(ModelScoredSampler):
    """Perplexity filtering (arXiv 2402.09668, App. B.5): a proxy language model scores each example and the
    lowest-perplexity ``budget`` examples are kept (``band=low``, the paper's filter; the paper plots the
    negated perplexity). ``band=middle`` keeps the middle of the ranking (dropping both tails equally) and
    ``band=high`` the highest, for comparison. The paper's proxies are T5 models of five sizes and five
    checkpoints of T5-Large; here they are causal LMs (see the module docstring).
    """

    name: ClassVar[str] = "perplexity"
    preset: ClassVar[dict[str, dict[str, Any]]] = {"hub": {"name_or_path": "EleutherAI/pythia-410m"}}

    def __init__(self, *args: Any, band: str = "low", standin: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.band = choice("band", band, BANDS)
        self.standin = merge_options(
            "standin", {**PPL_STANDIN_DEFAULTS, **self.preset.get("standin", {})}, standin
        )

    def model_path(self) -> tuple[str, dict[str, Any] | None]:
        if self.source == "hub":
            return str(self.hub["name_or_path"]), None
        cfg = self.standin
        settings = self.standin_settings("a perplexity", max_length=self.max_length)
        fraction = cfg["checkpoint"]
        paths = standins.causal_proxy_checkpoints(
            self.texts(), str(cfg["size"]), self.cache_dir, settings=settings, progress=self.progress
        )
        step = (
            settings.steps if fraction is None else standins.checkpoint_steps(settings.steps, [fraction])[0]
        )
        if step not in paths:
            raise ConfigError(
                f"method.standin.checkpoint={fraction!r} is not in the saved series: expected null or one of "
                f"{list(standins.CHECKPOINT_FRACTIONS)}"
            )
        return str(paths[step]), standins.read_standin_record(paths[step])

    def pool_scores(self, ctx: SelectionContext | None) -> PoolScores:
        path, record = self.model_path()
        scorer = PerplexityScorer.from_pretrained(
            path,
            revision=self.hub["revision"] if self.source == "hub" else None,
            max_tokens=None if self.scoring["max_tokens"] is None else int(self.scoring["max_tokens"]),
            batch_size=int(self.scoring["batch_size"]),
            device=self.device(ctx),
            dtype=self.hub["dtype"],
            offline=bool(self.hub["offline"]) if self.source == "hub" else True,
            progress=self.progress,
        )
        # a text with no token to predict has no perplexity: rank it last
        cached = self.cached(scorer)
        perplexity = np.nan_to_num(cached.scores, nan=np.inf)
        self.record_compute(self.compute_name(path, record), scorer, cached, record, texts=self.texts())
        info = {
            "scorer": {
                "kind": "perplexity",
                "source": self.source,
                "model": path if self.source == "hub" else f"standin:{self.standin['size']}",
                "revision": self.hub["revision"] if self.source == "hub" else None,
                "checkpoint": self.standin["checkpoint"] if self.source == "standin" else None,
                "fingerprint": scorer.fingerprint,
                "scores_from_cache": cached.from_cache,
                "standin": record,
            },
            "band": self.band,
        }
        return PoolScores(
            values=-np.asarray(perplexity, dtype=np.float64), forward_tokens=cached.forward_tokens, info=info
        )

    def compute_name(self, path: str, record: dict[str, Any] | None) -> str:
        """The proxy's name in the compute breakdown: the hub model (and revision) or the stand-in (and the
        step of an intermediate checkpoint)."""
        if self.source == "hub":
            revision = self.hub["revision"]
            return f"perplexity:{path}" + ("" if revision is None else f"@{revision}")
        name = f"perplexity:standin:{self.standin['size']}"
        if self.standin["checkpoint"] is not None and record is not None:
            name += f"@step{record['step']}"
        return name

    def choose(self, scores: PoolScores, ctx: SelectionContext) -> tuple[np.ndarray, dict[str, Any]]:
        k, values = self.budget_size, scores.values
        # lowest perplexity first (exact ties by the id-hash order); examples without a perplexity last in
        # every band
        ranked = np.lexsort((self.tie_rank(), -values))
        finite = ranked[np.isfinite(values[ranked])]
        rest = ranked[~np.isfinite(values[ranked])]
        if self.band == "low":
            return np.sort(ranked[:k]), {}
        if self.band == "high":
            return np.sort(np.concatenate([finite[::-1], rest])[:k]), {}
        start = max(0, (len(finite) - k) // 2)
        return np.sort(np.concatenate([finite, rest])[start : start + k]), {"band_start_rank": int(start)}


# -- the named variants of the comparison ------------------------------------------------------------------------

SIZES = ("small", "base", "large", "xl", "xxl")
#: causal LMs of increasing size on the hub, standing in for the paper's T5-{Small..XXL} perplexity proxies
PYTHIA_SIZES = {"small": "70m", "base": "160m", "large": "410m", "xl": "1b", "xxl": "1.4b"}
#: the paper's T5-Large checkpoints (steps of 1M) as fractions of training, and the nearest Pythia-410m
#: revisions (143,000 steps, a checkpoint every 1,000)
CHECKPOINTS = {
    "20k": (0.02, "step3000"),
    "100k": (0.1, "step14000"),
    "300k": (0.3, "step43000"),
    "500k": (0.5, "step72000"),
    "700k": (0.7, "step100000"),
}


def _variant(
    base: type[ModelScoredSampler], class_name: str, name: str, preset: dict[str, Any], doc: str
) -> type:
    cls = type(class_name, (base,), {"name": name, "preset": preset, "__doc__": doc, "__module__": __name__})
    globals()[class_name] = cls
    return cls


for _size in SIZES:
    _variant(
        AskLLM,
        f"AskLLM{_size.capitalize()}",
        f"askllm_{_size}",
        {
            "hub": {"name_or_path": f"google/flan-t5-{_size}"},
            "standin": {"size": _size},
            "scoring": {"max_tokens": 128},
        },
        f"Ask-LLM with the {_size} scorer (Flan-T5-{_size.upper() if _size.startswith('x') else _size.capitalize()}"
        " on the hub, or the stand-in of that size).",
    )
    _variant(
        PerplexityFilter,
        f"Perplexity{_size.capitalize()}",
        f"perplexity_{_size}",
        {"hub": {"name_or_path": f"EleutherAI/pythia-{PYTHIA_SIZES[_size]}"}, "standin": {"size": _size}},
        f"Perplexity filter with the {_size} proxy (Pythia-{PYTHIA_SIZES[_size]} on the hub, or the stand-in).",
    )
for _step, (_fraction, _revision) in CHECKPOINTS.items():
    _variant(
        PerplexityFilter,
        f"PerplexityAt{_step.upper()}",
        f"perplexity_{_step}",
        {
            "hub": {"name_or_path": "EleutherAI/pythia-410m", "revision": _revision},
            "standin": {"size": "large", "checkpoint": _fraction},
        },
        f"Perplexity filter with the large proxy at {_fraction:.0%} of its training (the paper's T5-Large at "
        f"step {_step}; Pythia-410m at {_revision} on the hub).",
    )
