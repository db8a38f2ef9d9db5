"""P3: policy-driven difficulty, pace-adaptive selection and diversity (arXiv 2408.05541), and the
ablations and baselines built from the same parts.

Each round (every ``reselect_every_n_epochs`` epochs) the method

1. scores the pool with the current model (``difficulty.scorer``: ``likelihood``, ``steps``, ``pass_rate``
   or the dataset's ``level`` labels; ``difficulty.dynamic=false`` scores once with the initial model);
2. admits examples from easy to hard with a self-paced schedule (``pace``: the public code's growing
   quantile, easiest 20% in round 1 and +20% a round, or an absolute lambda with a growth factor,
   Kumar et al. 2010); the admitted set is never smaller than ``pace.candidate_factor`` x the budget, so
   the diversity step always has a choice;
3. picks the round's budget among the admitted examples with a DPP (``dpp``: kernel
   ``L = diag(q) S diag(q)``, quality q = the score, S from embeddings; fast greedy MAP, Chen et al. 2018),
   conditioned on the examples chosen in the previous round (``dpp.condition_on``) so that consecutive
   rounds differ; without the DPP it takes a random subset of the admitted (or the easiest or hardest);
4. trains on them with weight 1 (hard self-paced weights) or the soft SPL weights (``pace.weights``,
   Jiang et al. 2014).

A round's forward tokens are the non-padding tokens its models process over the pool: the scoring pass
(every round when ``difficulty.dynamic``; when static, the first round and any round that reruns it for the
``policy`` features; none for the ``level`` and ``uniform`` scorers), plus the DPP's sentence embedder (its
own tokenization after its truncation, special tokens included; 0 for ``tfidf``, and nothing extra for
``policy``, whose features come from the scoring pass). The pool is embedded once per run, so its tokens count in the first round that runs the DPP, whether
or not the embedding cache served the vectors (and not again after a resume). The round's compute in FLOPs
(:mod:`p3bench.compute`) counts the scoring pass with the run model's parameters and the embedding with the
embedder's.

Departures from the paper and its public code (2408.05541's method section and results could not be
checked; the public code is the reference): the policy embedding is the mean-pooled last hidden state of
the response (the code's first-token state is degenerate under causal attention), z-scored per dimension
over the pool as the code's v5/v7 do (the shipped config's default, as the code takes its features from
the current model), or the packaged MiniLM sentence embedder
or TF-IDF; the step score is computed in one pass instead of one per line (same value under causal
attention). The similarity of the default kernel (``dpp.kernel=rbf_blocked``) is an RBF
of the normalised embeddings (twice the median pairwise distance as bandwidth, a ridge of 1e-4) instead of
the code's cosine:
with 384-dimensional MiniLM features the cosine kernel has rank 384, so beyond a few hundred picks its
greedy ranks by quality alone (at 5,000 of 7,500 admitted it picked 93-99% of the top-k easiest), while the
code's 7B hidden states have thousands of dimensions, above its 1,000 picks a round. The RBF kernel is full
rank and keeps the pick more diverse than both the top-k easiest and a random subset of the admitted at the
budgets the bench runs (``benchmarks/dpp_diversity.py``); ``dpp.kernel=cosine`` is the code's similarity,
with a ridge ``S = F F^T + ridge I`` (or the code's restarts, ``dpp.fill=restart``) for budgets beyond its
rank. The quality enters as ``q = score ** dpp.quality_exponent`` (default 0.5; the code's is 1): in the
greedy's objective ``log det L_Y = 2 a sum_Y log q + log det S_Y`` an exponent ``a`` weighs quality against
diversity as the trade-off ``theta = 2a / (1 + 2a)`` of Chen et al. (arXiv 1709.05135, Sec. 4), so 0.5 gives
them equal weight, where the code's 1 (theta = 2/3) let the easiest clusters win once the model separates
easy from hard: with it (and a ridge of 1e-3), in the third and fifth rounds of the default run the pick's
cosine log-det fell below a random subset's.
Every round that runs the DPP records the check in its diagnostics: ``diversity_*`` (overlap with the
top-k easiest admitted, next to a random subset's expected overlap; mean pairwise cosine, cosine log-det and
mean score of the pick, of the top-k and of a random subset) and ``dpp_kernel_effective_rank``. The budget
is a count or a fraction of the pool per round; the P3 experiments use the code's 1,000 a round over five
rounds (or the same ratio to the pool). When the pace admits fewer than ``pace.candidate_factor`` x the
budget, ``pace.conflict`` says which wins: ``budget`` (default; the floor is recorded as
``pace_floor_applied``) or ``pace`` (the round trains on the admitted only).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from p3bench.algorithms.diversity import (
    KERNEL_RANK_SAMPLE,
    kernel_effective_rank,
    selection_diversity,
    standardized_columns,
)
from p3bench.algorithms.dpp import DEFAULT_RIDGE, FILLS, KERNELS, dpp_select
from p3bench.algorithms.pace import SelfPacedSchedule
from p3bench.compute import RUN_MODEL, model_size, record_embedding
from p3bench.embeddings import build_embedder
from p3bench.errors import ConfigError
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.methods.options import choice, merge_options
from p3bench.registry import unknown_name_message
from p3bench.scoring import SCORERS, ScoreResult, build_scorer
from p3bench.sharded import sharded_embeddings_counted
from p3bench.utils.hashing import id_hash_order

ORDERS = ("random", "easiest", "hardest")
TRANSFORMS = ("one_minus", "neg_log")
CONDITIONS = ("previous", "all", "none")
TEXTS = ("prompt", "target", "prompt_and_target")
SOFT_WEIGHTS = ("hard", "linear", "log")
PACE_MODES = ("quantile", "lambda")
CONFLICTS = ("budget", "pace")

DIFFICULTY_DEFAULTS: dict[str, Any] = {
    "scorer": "likelihood",
    "dynamic": True,
    "transform": "one_minus",
    "kwargs": {},
}
PACE_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "mode": "quantile",
    "start": 0.2,
    "step": 0.2,
    "lambda0": None,
    "growth": 1.3,
    "weights": "hard",
    "min_weight": 0.05,
    "candidate_factor": 1.5,
    "conflict": "budget",
    "warmup_rounds": 0,
}
DPP_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "embedder": "policy",
    "embedder_kwargs": {},
    "text": "prompt_and_target",
    "kernel": "rbf_blocked",
    "ridge": None,
    "bandwidth": None,
    "fill": "ridge",
    "quality": True,
    "quality_exponent": 0.5,
    "condition_on": "previous",
}


class P3(SelectionDataModule):
    """P3 and its ablations: score -> pace -> DPP, once per round. See the module docstring. ``progress``
    (default on) shows progress bars of the scoring pass, the embedding and the DPP, unless the process-wide
    switch (the run's root ``progress`` key, :mod:`p3bench.utils.progress`) is off."""

    name = "p3"

    #: the settings that make an ablation or baseline what it is, under whatever the caller passes
    preset: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *args: Any,
        difficulty: Mapping[str, Any] | None = None,
        pace: Mapping[str, Any] | None = None,
        dpp: Mapping[str, Any] | None = None,
        order: str | None = None,
        reselect_every_n_epochs: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        preset = self.preset
        if reselect_every_n_epochs is None:
            reselect_every_n_epochs = int(preset.get("reselect_every_n_epochs", 1))
        super().__init__(*args, reselect_every_n_epochs=reselect_every_n_epochs, **kwargs)
        self.difficulty_cfg = merge_options(
            "difficulty", {**DIFFICULTY_DEFAULTS, **preset.get("difficulty", {})}, difficulty
        )
        self.pace_cfg = merge_options("pace", {**PACE_DEFAULTS, **preset.get("pace", {})}, pace)
        self.dpp_cfg = merge_options("dpp", {**DPP_DEFAULTS, **preset.get("dpp", {})}, dpp)
        order = preset.get("order", "random") if order is None else order
        self.order = choice("order", order, ORDERS)
        self.progress = bool(progress)
        scorer_name = self.difficulty_cfg["scorer"]
        if scorer_name not in SCORERS:
            raise ConfigError(unknown_name_message("difficulty scorer", scorer_name, SCORERS.names()))
        choice("difficulty.transform", self.difficulty_cfg["transform"], TRANSFORMS)
        choice("pace.weights", self.pace_cfg["weights"], SOFT_WEIGHTS)
        choice("dpp.condition_on", self.dpp_cfg["condition_on"], CONDITIONS)
        choice("dpp.text", self.dpp_cfg["text"], TEXTS)
        choice("pace.mode", self.pace_cfg["mode"], PACE_MODES)
        choice("pace.conflict", self.pace_cfg["conflict"], CONFLICTS)
        warmup = self.pace_cfg["warmup_rounds"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"method.pace.warmup_rounds={warmup!r} must be an integer >= 0")
        choice("dpp.kernel", self.dpp_cfg["kernel"], KERNELS)
        choice("dpp.fill", self.dpp_cfg["fill"], FILLS)
        if self.pace_cfg["lambda0"] is not None and not float(self.pace_cfg["lambda0"]) > 0:
            raise ConfigError(
                f"method.pace.lambda0={self.pace_cfg['lambda0']} must be > 0 (or null: automatic)"
            )
        if self.pace_cfg["weights"] == "log" and (
            self.pace_cfg["mode"] != "quantile" or self.difficulty_cfg["transform"] != "one_minus"
        ):
            raise ConfigError(
                "method.pace.weights=log needs difficulties in [0, 1]: expected pace.mode=quantile and "
                "difficulty.transform=one_minus"
            )
        if (
            self.dpp_cfg["enabled"]
            and self.dpp_cfg["embedder"] == "policy"
            and not SCORERS.get(scorer_name).gives_features
        ):
            raise ConfigError(
                f"method.dpp.embedder=policy needs the policy's features from a teacher-forced scoring pass: "
                f"difficulty.scorer={scorer_name!r} has none (expected likelihood or steps, or an embedder such "
                "as minilm)"
            )
        self._check_pace_options()
        exponent = self.dpp_cfg["quality_exponent"]
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
            raise ConfigError(f"method.dpp.quality_exponent={exponent!r} must be a number > 0")
        if float(self.pace_cfg["candidate_factor"]) < 1.0:
            raise ConfigError(
                f"method.pace.candidate_factor={self.pace_cfg['candidate_factor']} must be >= 1"
            )
        scorer_kwargs = {"progress": self.progress, **dict(self.difficulty_cfg["kwargs"] or {})}
        if scorer_name in ("likelihood", "steps"):
            scorer_kwargs.setdefault("batch_size", self.eval_batch_size)
        if scorer_name == "pass_rate":
            scorer_kwargs.setdefault("seed", self.seed)
        self.scorer = build_scorer(scorer_name, **scorer_kwargs)
        self.static_scores: list[float] | None = None
        self.lambda0: float | None = None
        self._embeddings: np.ndarray | None = None
        # whether an earlier round of this run counted the DPP embedder's forward tokens
        self.embedding_tokens_counted = False
        self._ties: np.ndarray | None = None

    def _check_pace_options(self) -> None:
        """The pace's start, step and growth, checked at construction (one line naming the key), by building
        the schedule the rounds will use with a stand-in lambda0 where it is set later."""
        cfg = self.pace_cfg
        if not cfg["enabled"]:
            return
        try:
            if cfg["mode"] == "lambda":
                lambda0 = 1.0 if cfg["lambda0"] is None else float(cfg["lambda0"])
                SelfPacedSchedule(mode="lambda", lambda0=lambda0, growth=cfg["growth"])
            else:
                SelfPacedSchedule(mode="quantile", start=cfg["start"], step=cfg["step"])
        except (TypeError, ValueError) as err:
            key = next((k for k in ("start", "step", "growth", "lambda0") if str(err).startswith(k)), "mode")
            raise ConfigError(
                f"method.pace.{key}={cfg.get(key)!r} is invalid for method {self.name!r}: {err}"
            ) from None

    # state ---------------------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        return {
            "static_scores": self.static_scores,
            "lambda0": self.lambda0,
            "embedding_tokens_counted": self.embedding_tokens_counted,
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.static_scores = state.get("static_scores")
        self.lambda0 = state.get("lambda0")
        self.embedding_tokens_counted = bool(state.get("embedding_tokens_counted", False))

    # the round -------------------------------------------------------------------------------------------------
    def select(self, ctx: SelectionContext) -> Selection:
        n = len(self.pool)
        k = self.budget_size
        want_policy_features = self.dpp_cfg["enabled"] and self.dpp_cfg["embedder"] == "policy"
        result, forward_tokens = self._scores(ctx, want_policy_features)
        scores = np.clip(np.asarray(result.scores, dtype=float), 0.0, 1.0)
        difficulty = self._difficulty(scores)

        diagnostics: dict[str, Any] = {
            "scorer": self.scorer.name,
            "scored_this_round": result.forward_tokens > 0 or not self.scorer.needs_model,
            "mean_score": float(scores.mean()),
        }
        admitted, schedule, pace_round, pace_info = self.pace(difficulty, ctx.round)
        diagnostics.update(pace_info)
        candidates = np.flatnonzero(admitted)
        diagnostics["admitted"] = int(len(candidates))
        diagnostics["admitted_fraction"] = len(candidates) / n
        diagnostics.update(
            {f"score_{key}": value for key, value in result.diagnostics.items() if np.isscalar(value)}
        )

        if self.dpp_cfg["enabled"] and len(candidates) > k:
            chosen, dpp_info, dpp_tokens = self._dpp(ctx, candidates, scores, result)
            forward_tokens += dpp_tokens
            diagnostics.update(dpp_info)
        else:
            chosen = self._ordered(ctx, candidates, difficulty, k)

        weights = None
        if schedule is not None and self.pace_cfg["weights"] != "hard":
            order = self._tie_order()
            soft = np.empty(len(self.pool))
            soft[order] = schedule.soft_weights(difficulty[order], pace_round, self.pace_cfg["weights"])
            soft = soft[chosen]
            weights = np.maximum(soft, float(self.pace_cfg["min_weight"])).tolist()
        previous = set(self.rounds[-1].ids) if self.rounds else set()
        ids = [self.pool[i].id for i in chosen]
        if previous:
            diagnostics["jaccard_previous_round"] = len(previous & set(ids)) / len(previous | set(ids))
        diagnostics["per_level"] = dict(
            sorted(Counter(str(self.pool[i].meta.get("level")) for i in chosen).items())
        )
        return Selection(
            ids=ids,
            weights=weights,
            scores=scores[chosen].tolist(),
            diagnostics=diagnostics,
            forward_tokens=forward_tokens,
        )

    # parts -----------------------------------------------------------------------------------------------------
    def pace(
        self, difficulty: np.ndarray, round_index: int
    ) -> tuple[np.ndarray, SelfPacedSchedule | None, int, dict[str, Any]]:
        """The round's admitted mask over the pool, the schedule that made it (None when the pace is off or
        warming up), the schedule's own round (``round_index - pace.warmup_rounds``) and the diagnostics:
        ``pace_scheduled_fraction`` (what the schedule alone admits), ``pace_floor_applied`` (the budget's
        floor raised it), ``pace_threshold`` and, in lambda mode, ``pace_lambda``."""
        n = len(difficulty)
        pace_round = round_index - int(self.pace_cfg["warmup_rounds"])
        if not self.pace_cfg["enabled"]:
            return np.ones(n, dtype=bool), None, pace_round, {}
        if pace_round < 0:
            return np.ones(n, dtype=bool), None, pace_round, {"pace_warmup": True}
        schedule = self._schedule(difficulty)
        # equal difficulties are cut in a fixed pseudo-random order of the ids, not the pool's order
        order = self._tie_order()
        admitted = np.empty(n, dtype=bool)
        admitted[order] = schedule.admitted(difficulty[order], pace_round)
        scheduled = int(replace(schedule, min_admitted=0).admitted(difficulty, pace_round).sum())
        info: dict[str, Any] = {
            "pace_round": pace_round,
            "pace_scheduled_fraction": scheduled / n,
            "pace_floor_applied": bool(admitted.sum() > scheduled),
            "pace_threshold": float(schedule.threshold(difficulty, pace_round)),
        }
        if self.pace_cfg["mode"] == "lambda":
            info["pace_lambda"] = float(schedule.lambda_at(pace_round))
        return admitted, schedule, pace_round, info

    def _scores(self, ctx: SelectionContext, want_features: bool) -> tuple[ScoreResult, int]:
        """This round's scores: fresh from the current model, or the initial model's when static."""
        static = not self.difficulty_cfg["dynamic"]
        if static and self.static_scores is not None and not want_features:
            return ScoreResult(scores=np.asarray(self.static_scores)), 0
        if self.scorer.needs_model and ctx.module is None:
            raise RuntimeError(
                f"the {self.scorer.name!r} scorer needs the current model; run through the Trainer"
            )
        result = self.scorer.score(
            ctx.module,
            self.pool_items(),
            want_features=want_features and self.scorer.gives_features,
            round=ctx.round,
        )
        tokens = result.forward_tokens
        if tokens:  # the current model's pass over the pool, in the round's compute
            self.compute_ledger.add(RUN_MODEL, "selection_forward", model_size(ctx.module.model), tokens)
        if static:
            if self.static_scores is None:
                self.static_scores = [float(v) for v in result.scores]
            else:  # features only: keep the initial scores
                result.scores = np.asarray(self.static_scores)
        return result, tokens

    def _tie_order(self) -> np.ndarray:
        """A fixed pseudo-random order of the pool (by a hash of each id) for breaking exact ties."""
        if self._ties is None:
            self._ties = np.asarray(id_hash_order([ex.id for ex in self.pool]), dtype=np.int64)
        return self._ties

    def _difficulty(self, scores: np.ndarray) -> np.ndarray:
        if self.difficulty_cfg["transform"] == "neg_log":
            return -np.log(np.clip(scores, 1e-12, 1.0))
        return 1.0 - scores

    def _schedule(self, difficulty: np.ndarray) -> SelfPacedSchedule:
        cfg = self.pace_cfg
        # pace.conflict=budget: the budget wins, at least candidate_factor x budget are admitted;
        # pace.conflict=pace: the schedule wins, a round may train on fewer examples than the budget
        min_admitted = 0
        if cfg["conflict"] == "budget":
            min_admitted = min(len(difficulty), math.ceil(float(cfg["candidate_factor"]) * self.budget_size))
        if cfg["mode"] == "lambda":
            if cfg["lambda0"] is not None:
                self.lambda0 = float(cfg["lambda0"])
            elif self.lambda0 is None:
                # the first paced round's lambda admits the `start` quantile of that round's difficulties
                # (after pace.warmup_rounds rounds of training on a random budget)
                self.lambda0 = float(np.quantile(difficulty, float(cfg["start"])))
            return SelfPacedSchedule(
                mode="lambda", lambda0=self.lambda0, growth=float(cfg["growth"]), min_admitted=min_admitted
            )
        return SelfPacedSchedule(
            mode=cfg["mode"], start=float(cfg["start"]), step=float(cfg["step"]), min_admitted=min_admitted
        )

    def _ordered(
        self, ctx: SelectionContext, candidates: np.ndarray, difficulty: np.ndarray, k: int
    ) -> np.ndarray:
        if len(candidates) <= k:
            return candidates
        if self.order == "random":
            return np.sort(ctx.rng.choice(candidates, size=k, replace=False))
        tie_rank = np.empty(len(self.pool), dtype=np.int64)
        tie_rank[self._tie_order()] = np.arange(len(self.pool))
        ranked = candidates[np.lexsort((tie_rank[candidates], difficulty[candidates]))]
        return ranked[:k] if self.order == "easiest" else ranked[::-1][:k]

    def _features(self, result: ScoreResult) -> tuple[np.ndarray, int]:
        """Embeddings of the whole pool: the policy's (from this round's pass, z-scored per dimension over the
        pool as the public code does before its kernel: a small model's mean-pooled states share one large
        component, under which every pair looks alike), or a sentence embedder's,
        and the forward tokens to add to this round's: the sentence embedder's the first time in the run
        (the same whether or not the cache served the vectors), else 0."""
        name = self.dpp_cfg["embedder"]
        if name == "policy":
            if result.features is None:
                raise ConfigError(
                    "method.dpp.embedder=policy needs a teacher-forced scoring pass (difficulty.scorer=likelihood "
                    "or steps)"
                )
            return standardized_columns(result.features), 0
        if self._embeddings is None:
            kwargs = dict(self.dpp_cfg["embedder_kwargs"] or {})
            kwargs.setdefault("progress", self.progress)
            embedder = build_embedder(name, **kwargs)
            self._embeddings, tokens = sharded_embeddings_counted(embedder, self._texts(), self.cache_dir)
            if not self.embedding_tokens_counted:
                self.embedding_tokens_counted = True
                record_embedding(self.compute_ledger, embedder, tokens)
                return self._embeddings, tokens
        return self._embeddings, 0

    def _texts(self) -> list[str]:
        field = self.dpp_cfg["text"]
        if field == "prompt":
            return [ex.prompt for ex in self.pool]
        if field == "target":
            return [ex.target for ex in self.pool]
        return [f"{ex.prompt}\n{ex.target}" for ex in self.pool]

    def _dpp(
        self, ctx: SelectionContext, candidates: np.ndarray, scores: np.ndarray, result: ScoreResult
    ) -> tuple[np.ndarray, dict[str, Any], int]:
        cfg = self.dpp_cfg
        features, tokens = self._features(result)
        exponent = float(cfg["quality_exponent"])
        # the floor after the exponent: a score of 0 stays a quality the DPP cannot tell apart
        quality = np.clip(scores**exponent, 1e-6, 1.0) if cfg["quality"] else np.ones(len(scores))
        conditioned: list[int] = []
        if cfg["condition_on"] == "previous" and self.rounds:
            conditioned = [self.index_of[i] for i in self.rounds[-1].ids]
        elif cfg["condition_on"] == "all" and self.rounds:
            conditioned = sorted({self.index_of[i] for r in self.rounds for i in r.ids})
        outcome = dpp_select(
            features[candidates],
            self.budget_size,
            quality=quality[candidates],
            kernel=cfg["kernel"],
            ridge=self._ridge(),
            bandwidth=None if cfg["bandwidth"] is None else float(cfg["bandwidth"]),
            fill=cfg["fill"],
            preselected_features=features[conditioned] if conditioned else None,
            preselected_quality=quality[conditioned] if conditioned else None,
            progress=self.progress,
        )
        chosen = candidates[np.asarray(outcome.indices, dtype=np.int64)]
        topped_up = 0
        if len(chosen) < self.budget_size:
            # the kernel ran out of rank (fill=ridge with ridge=0, or qualities ~0 such as a pass rate of 0
            # on most problems): the DPP cannot tell the rest apart, so the budget is met at random
            rest = np.setdiff1d(candidates, chosen)
            topped_up = self.budget_size - len(chosen)
            chosen = np.concatenate([chosen, np.sort(ctx.rng.choice(rest, size=topped_up, replace=False))])
        info = {
            "dpp_kernel": cfg["kernel"],
            "dpp_conditioned_on": len(conditioned),
            "dpp_stopped_early": bool(outcome.stopped_early),
            "dpp_topped_up_at_random": topped_up,
            **{f"dpp_{name}": int(value) for name, value in outcome.work.items()},  # rbf_blocked's cost
            **self._diversity(ctx, features, chosen, candidates, scores),
        }
        return chosen, info, tokens

    def _ridge(self) -> float:
        """``dpp.ridge``, or the kernel's default (1e-4 for ``rbf_blocked``, 1e-3 for the others)."""
        ridge = self.dpp_cfg["ridge"]
        return DEFAULT_RIDGE[self.dpp_cfg["kernel"]] if ridge is None else float(ridge)

    def _diversity(
        self,
        ctx: SelectionContext,
        features: np.ndarray,
        chosen: np.ndarray,
        candidates: np.ndarray,
        scores: np.ndarray,
    ) -> dict[str, float]:
        """Whether the DPP did what its name says, in this round's regime: the pick against the top-k
        easiest admitted and a seeded random subset of the admitted, of the same size (overlap, mean
        pairwise cosine, cosine log-det, mean score: :func:`selection_diversity`, as ``diversity_*``), and
        how many of the admitted the kernel can keep apart (``dpp_kernel_effective_rank``, on a seeded
        sample of ``dpp_kernel_rank_sample`` of them; compare it with that sample's size and with k)."""
        cfg = self.dpp_cfg
        seed = int(np.random.default_rng([self.seed, ctx.round, 7]).integers(2**31))
        diversity = selection_diversity(features, chosen, scores, candidates, seed=seed)
        bandwidth = None if cfg["bandwidth"] is None else float(cfg["bandwidth"])
        sample = min(len(candidates), KERNEL_RANK_SAMPLE)
        rank = kernel_effective_rank(
            features[candidates],
            kernel=cfg["kernel"],
            bandwidth=bandwidth,
            ridge=self._ridge(),
            sample=sample,
            seed=seed,
        )
        return {
            **{f"diversity_{key}": value for key, value in diversity.items()},
            "dpp_kernel_effective_rank": rank,
            "dpp_kernel_rank_sample": sample,
        }


# The ablations and baselines: P3 with parts switched off or swapped (conf/method/<name>.yaml says the same).
class P3NoDPP(P3):
    """P3 without the DPP: policy difficulty and the pace, a random budget among the admitted."""

    name = "p3_no_dpp"
    preset: ClassVar[dict[str, Any]] = {"dpp": {"enabled": False}}


class P3NoSPL(P3):
    """P3 without the pace: the DPP with policy-difficulty quality over the whole pool every round."""

    name = "p3_no_spl"
    preset: ClassVar[dict[str, Any]] = {"pace": {"enabled": False}}


class P3Static(P3):
    """P3 with difficulty from the initial model only (scored once); pace and DPP still run every round."""

    name = "p3_static"
    preset: ClassVar[dict[str, Any]] = {"difficulty": {"dynamic": False}}


class SelfPacedLearning(P3):
    """Self-paced learning (Kumar, Packer & Koller, NeurIPS 2010): admit the examples whose current loss is
    under lambda, which grows by ``pace.growth`` each round; a random budget among them; no DPP.

    lambda0 is fixed once, after ``pace.warmup_rounds`` (default 1) rounds trained on a random budget of the
    whole pool: it is the ``pace.start`` quantile of the losses under that warmed-up model, so the first
    paced round admits that share and later rounds grow lambda by ``pace.growth``. SPL sets its initial
    threshold against an initialised model, so that a chosen share of the examples counts as easy; taken
    from an untrained model's losses instead (about 5.9 nats on synthetic_math against 0.9-1.5 after one
    epoch), lambda0 would admit the whole pool from the first trained round on, and ``spl`` would be a random
    subset re-drawn every round. ``pace.lambda0`` sets it by hand instead."""

    name = "spl"
    preset: ClassVar[dict[str, Any]] = {
        "difficulty": {"transform": "neg_log"},
        "pace": {"mode": "lambda", "warmup_rounds": 1},
        "dpp": {"enabled": False},
    }


class DiversityOnly(P3):
    """One DPP selection over the whole pool (MiniLM embeddings, no quality term), made once before
    training; the model being trained is not involved (the diversity half of P3 as a static baseline), so
    its forward tokens are the MiniLM embedding's."""

    name = "dpp"
    preset: ClassVar[dict[str, Any]] = {
        "reselect_every_n_epochs": 0,
        "difficulty": {"scorer": "uniform", "dynamic": False},
        "pace": {"enabled": False},
        "dpp": {"embedder": "minilm", "quality": False, "condition_on": "none"},
    }


class HardestFirst(P3):
    """The budget's highest-loss examples under the current model, re-ranked every epoch."""

    name = "hardest"
    preset: ClassVar[dict[str, Any]] = {
        "order": "hardest",
        "pace": {"enabled": False},
        "dpp": {"enabled": False},
    }


class EasiestFirst(P3):
    """The budget's lowest-loss examples under the current model, re-ranked every epoch."""

    name = "easiest"
    preset: ClassVar[dict[str, Any]] = {
        "order": "easiest",
        "pace": {"enabled": False},
        "dpp": {"enabled": False},
    }


class LevelCurriculum(P3):
    """An easy-to-hard curriculum on the dataset's own level labels (Bengio et al., ICML 2009): the pace
    admits levels from easy to hard (easiest 20% in round 1, +20% a round); a random budget among them."""

    name = "curriculum"
    preset: ClassVar[dict[str, Any]] = {
        "difficulty": {"scorer": "level", "dynamic": False},
        "dpp": {"enabled": False},
    }
