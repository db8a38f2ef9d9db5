"""Multi-agent collaborative data selection (Bai et al., arXiv 2410.08102; ACL 2025 as "Efficient Pretraining
Data Selection for Language Models via Multi-Actor Collaboration"), its single- and two-agent ablations and
fixed equal mixing.

Each agent (:mod:`p3bench.methods.agents`: ``quality`` bins of a scorer, ``domain`` a metadata field,
``topic`` k-means clusters of sentence embeddings) puts every pool example in one of its categories and holds
a weight per category; a console mixes the agents with weights ``theta``. Every round (every
``reselect_every_n_steps`` optimiser steps, U) the method

1. labels the pool once per process (the agents' forward tokens count in the first round only);
2. draws ``reward.samples_per_category`` units of ``reward.unit_size`` examples from each (agent, category)
   with the round's seeded generator (a category smaller than a unit is drawn with replacement; an empty one
   is unobserved and keeps its weight) and measures each unit's reward with the live model on a reference
   set (:mod:`p3bench.scoring.rewards`: the reference loss before minus after one optimiser step on the unit,
   ``lookahead``, or the projected gradient dot product with the reference gradient, ``gradient``);
3. updates the agents and the console (:mod:`p3bench.algorithms.console`): the mean unit reward per category
   (Eq. 4), the sliding average ``w <- (1 - eta) w + eta R`` (Eq. 5), each agent's reward
   ``R_A = mean_j w_A^j R_A^j`` (Eq. 7) and ``theta_A <- theta_A + eta (R_A - mean R)`` (Eq. 8, clipped at
   ``update.theta_floor`` and normalised; ``multi_agent_fixed`` skips it and keeps equal weights);
4. scores the pool with ``S(x) = sum_A theta_A w_A^{c_A(x)}`` (Eq. 6), optionally decays the score of examples
   already selected (``update.repetition_decay``), and keeps the top ``budget`` examples for the next U steps.

The reference set is held out: the examples of the validation split whose ``reference.field`` is one of
``reference.values`` (a chosen domain, say), at most ``reference.max_examples`` of them in a seeded order.

Departures from the paper, and where they come from:

- **No RegMix initialisation.** The paper initialises each agent's weights from 512 proxy runs and a
  LightGBM regression (A.7.3); that is not built. Weights start at ``initial_weight`` (0) and ``theta`` at
  ``1 / len(agents)``, and with ``update.at_start`` the first round already updates them once at step 0.
  The public code starts every weight at 10 and normalises them, which is uniform as well.
- **Sign of Eq. 3.** The paper prints its influence with a minus sign (Koh and Liang's "change in loss");
  rewards here are "higher is better" (the reference loss falls), the direction Eq. 2 maximises.
- **The reward.** The paper's reward is an influence with gradients projected to 8,192 dimensions
  (``reward.kind=gradient`` is the TracIn/LESS form with ``H = I``); its public code uses a one-step
  look-ahead (one AdamW step at lr 1e-3 from the training optimiser's state, then the reference loss), which
  is the default here (``reward.kind=lookahead``) on units of a few examples instead of single documents.
- **The look-ahead's gradient clipping is the public code's**, not the paper's (which states none): the unit
  gradient's norm is clipped to ``reward.lookahead.clip`` (1.0 by default) before the step, as
  ``src/call_influence_mates/cal_influence.py`` clips to its ``grad_clip = 1.0`` before its AdamW step
  (``clip: 0`` turns it off). See :mod:`p3bench.scoring.lookahead`.
- **The look-ahead from the training state follows the training momentum.** With the default
  ``reward.lookahead.optimizer=train_state`` (the public code's AdamW step from the training optimiser's
  moments) every unit's step carries the direction of the last training steps (the Adam moments), so
  one unit's reward is blurred across categories: on the synthetic pool of
  ``tests/test_multi_agent_method.py`` the junk domain's reward turns positive once the model has trained
  on the reference domain. The tests that show the reference domain's weight rising and the junk's
  falling use the SGD variant (``reward.lookahead.optimizer=sgd``, with ``reward.lookahead.lr=0.05``): one
  plain step on the unit alone, no momentum.
- **Eq. 7 rewards the size of an agent's rewards, not their sign.** This follows the paper literally: with
  ``initial_weight=0`` the first update makes ``w_j = eta R_j``, so ``R_A = mean_j w_j R_j = eta mean_j
  R_j^2 >= 0``. An agent whose categories differ strongly in reward gains console weight (Eq. 8) even when
  its categories are harmful (all ``R_j < 0``).
- **The public code's variants** as named options: ``update.transform=public_code`` (the agent reward is
  ``exp(0.5 * post-step loss)``, applied per sample and normalised; it inverts Eq. 2, see
  :func:`p3bench.algorithms.console.public_code_agent_update`), ``update.console=public_code`` (its
  ``exp(0.6 loss) / 100 - 1`` signal and unclipped step; its bug of reading only the first three of 25
  entries is not reproduced) and ``update.repetition_decay`` (its ``1 / (1 + 0.1 n)`` for an example already
  selected ``n`` times; not in the paper).
- **eta and U are not given in the paper** (the code's eta is 0.1; its MATES baseline re-selects every 1,500
  steps): both are options, and the defaults are sized for a CPU run of a few hundred steps.
- **The scale of the rewards.** Eq. 8 moves ``theta`` by ``eta (R_A - mean R)`` with ``R_A`` a product of
  weights and rewards (Eq. 7), both on the scale of a look-ahead's loss change, so with small rewards the
  console hardly moves: at the shipped CPU scale ``theta`` moves by about 1e-5
  (``p3bench experiment=multi_agent_run trainer.max_epochs=1``: category rewards of -0.02 to 0.12, weights
  of 0.002 to 0.012, and ``theta`` within 1e-5 of 1/3 after three rounds), and ``multi_agent`` then selects
  as ``multi_agent_fixed`` does. Every round records the diagnostic ``console.theta_spread`` (largest minus
  smallest ``theta``), and the report's multi-agent table (:mod:`p3bench.report.agent_tables`) marks such a
  console "not moved". The documented remedy is ``update.standardise_rewards=true`` (not in the paper; off
  by default): it divides each round's unit rewards by their standard deviation over the round's units
  before Eq. 4, so that the updates move on a unit scale.
- The paper's reference tasks (LAMBADA, SQuAD, Jeopardy) are of the kind of its evaluation tasks; here the
  reference is held-out text of chosen domains, and evaluation is held-out perplexity.

Diagnostics of every round (flattened names, so that each reaches wandb as a line plot and the report draws
them): ``agents.<agent>.{weight,reward,n_units,selected_share,pool_share}.<category>`` (category names made
metric-safe), ``console.theta.<agent>``, ``console.agent_reward.<agent>``, ``console.mean_reward``,
``reward.{kind,reference_loss,seconds,forward_tokens,backward_tokens,units}``, ``updated`` (whether this
round measured rewards; ``update_skipped_no_optimizer`` when a per-epoch round 0 came before the training
optimiser that ``reward.lookahead.optimizer=train_state`` steps from), ``console.theta_spread``,
``seen_fraction`` and ``jaccard_previous_round``. The weights, ``theta``, the categories and a sha256 of each
agent's labels are the method's checkpointed state, so a run resumed mid-epoch continues with the same
weights; a resumed process labels the pool again, and labels that differ from the checkpoint's (a scorer
that reads the live model, changed options) are an error rather than a silent change of categories.
Labelling runs with the global torch, NumPy and ``random`` generators saved and restored around it (a
stand-in scorer trained on a cache miss seeds torch), so selection never moves the training's generators.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from p3bench.algorithms import console
from p3bench.errors import ConfigError
from p3bench.methods.agents import AGENTS, AgentLabels, build_agent
from p3bench.methods.base import Selection, SelectionContext, SelectionDataModule
from p3bench.methods.multi_agent_options import (
    PAPER_AGENTS,
    TIES,
    MultiAgentSettings,
    check_agent_options,
    check_agents,
    check_preset,
    check_reference,
    check_reward,
    check_update,
    reference_examples,
)
from p3bench.methods.options import choice
from p3bench.models.module import metric_safe
from p3bench.scoring.rewards import REWARDS, RewardResult, RewardUnit, reference_batches, unit_batches


class MultiAgent(SelectionDataModule):
    """Multi-agent collaborative selection (arXiv 2410.08102); see the module docstring. ``progress`` (default
    on) shows the agents' and the rewards' progress bars, unless the process-wide switch is off."""

    name = "multi_agent"

    #: what makes an ablation what it is (its agents, or no collaborative update); conf/method says the same
    preset: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *args: Any,
        agents: Sequence[str] | None = None,
        agent_options: Mapping[str, Any] | None = None,
        initial_weight: float = 0.0,
        reward: Mapping[str, Any] | None = None,
        reference: Mapping[str, Any] | None = None,
        update: Mapping[str, Any] | None = None,
        ties: str = "random",
        progress: bool = True,
        reselect_every_n_steps: int = 30,
        reselect_every_n_epochs: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            reselect_every_n_steps=reselect_every_n_steps,
            reselect_every_n_epochs=reselect_every_n_epochs,
            **kwargs,
        )
        self.settings = self._settings(agents, agent_options, initial_weight, reward, reference, update, ties)
        self.progress = bool(progress)
        self.reference = reference_examples(
            self.examples(self.settings.reference["split"]), self.settings.reference, self.seed
        )
        kind = self.settings.reward["kind"]
        try:
            self.reward_fn = REWARDS.get(kind)(**dict(self.settings.reward.get(kind) or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method.reward.{kind} is invalid: {err}") from None
        self.agents = {
            name: build_agent(name, self.settings.agent_options.get(name, {}), progress=self.progress)
            for name in self.settings.agents
        }
        # per process: the agents' labels of the pool (computed in the first round this process selects)
        self._labels: dict[str, AgentLabels] | None = None
        self._reference_batches: list[Any] | None = None
        # checkpointed: the agents' category names and weights, the console's weights
        self.categories: dict[str, list[str]] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.theta: dict[str, float] = console.equal_theta(self.settings.agents)
        self.label_tokens_counted = False
        # checkpointed: a sha256 of each agent's labels, which a resumed process's labels must match
        self.label_sha256: dict[str, str] = {}

    def _settings(
        self,
        agents: Sequence[str] | None,
        agent_options: Mapping[str, Any] | None,
        initial_weight: float,
        reward: Mapping[str, Any] | None,
        reference: Mapping[str, Any] | None,
        update: Mapping[str, Any] | None,
        ties: str,
    ) -> MultiAgentSettings:
        preset = self.preset
        known = AGENTS.names()
        agents = preset.get("agents", PAPER_AGENTS) if agents is None else agents
        reward_cfg = check_reward(reward, REWARDS.names())
        update_given = {**preset.get("update", {}), **dict(update or {})}
        if isinstance(initial_weight, bool) or not isinstance(initial_weight, (int, float)):
            raise ConfigError(f"method.initial_weight={initial_weight!r} is invalid: expected a number")
        choice("ties", ties, TIES)
        settings = MultiAgentSettings(
            agents=check_agents(agents, known),
            agent_options=check_agent_options(agent_options, known),
            initial_weight=float(initial_weight),
            reward=reward_cfg,
            reference=check_reference(reference),
            update=check_update(update_given, reward_cfg["kind"]),
            ties=str(ties),
        )
        check_preset(self.name, preset, settings)
        return settings

    # state --------------------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        return {
            "categories": {a: list(c) for a, c in self.categories.items()},
            "weights": {a: w.tolist() for a, w in self.weights.items()},
            "theta": dict(self.theta),
            "label_tokens_counted": self.label_tokens_counted,
            "label_sha256": dict(self.label_sha256),
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.categories = {a: [str(c) for c in cats] for a, cats in state.get("categories", {}).items()}
        self.weights = {a: np.asarray(w, dtype=np.float64) for a, w in state.get("weights", {}).items()}
        self.theta = {a: float(t) for a, t in state.get("theta", self.theta).items()}
        self.label_tokens_counted = bool(state.get("label_tokens_counted", False))
        # absent in a checkpoint written before the hashes were stored: the labels are then not checked
        self.label_sha256 = {a: str(h) for a, h in state.get("label_sha256", {}).items()}

    # the round ----------------------------------------------------------------------------------------------
    def select(self, ctx: SelectionContext) -> Selection:
        labels, label_tokens = self._agent_labels(ctx)
        diagnostics: dict[str, Any] = {}
        forward_tokens = label_tokens
        update = self.settings.update
        updated = ctx.module is not None and (ctx.round > 0 or update["at_start"])
        if updated and ctx.optimizer is None and getattr(self.reward_fn, "optimizer", None) == "train_state":
            # a per-epoch round 0 is selected while Lightning builds the optimiser: no training state to step
            # from yet, so the round selects on the initial weights
            updated = False
            diagnostics["update_skipped_no_optimizer"] = True
        if updated:
            units, result = self._measure(ctx, labels)
            forward_tokens += int(result.forward_tokens)
            diagnostics.update(self._update(units, result))
        diagnostics["updated"] = bool(updated)

        n = len(self.pool)
        scores = console.console_scores(
            {a: labels[a].labels for a in self.settings.agents}, self.weights, self.theta
        )
        if update["repetition_decay"] > 0:
            scores = console.repetition_decay(
                scores, self._times_selected(ctx.round), update["repetition_decay"]
            )
        if self.settings.ties == "random":
            tie_rank = console.random_tie_rank(n, ctx.rng)
        else:
            tie_rank = console.id_hash_tie_rank([ex.id for ex in self.pool])
        chosen = console.top_k(scores, self.budget_size, tie_rank)
        diagnostics.update(self._state_diagnostics(labels, chosen))
        diagnostics.update(self._overlap(ctx.round, chosen))
        return Selection(
            ids=[self.pool[i].id for i in chosen],
            scores=scores[chosen].tolist(),
            diagnostics=diagnostics,
            forward_tokens=forward_tokens,
        )

    # parts --------------------------------------------------------------------------------------------------
    def _agent_labels(self, ctx: SelectionContext) -> tuple[dict[str, AgentLabels], int]:
        """Every agent's labels of the pool, computed once per process; their forward tokens are counted in
        the first round of the run (not again in a resumed process, whose earlier rounds counted them).
        Labelling leaves the global torch, NumPy and ``random`` generators as it found them."""
        tokens = 0
        if self._labels is None:
            with global_rngs_kept(_cuda_devices(ctx)):
                self._labels = {name: agent.label(self, ctx) for name, agent in self.agents.items()}
            if not self.label_tokens_counted:
                tokens = sum(int(lab.forward_tokens) for lab in self._labels.values())
                for lab in self._labels.values():
                    lab.record_compute(self.compute_ledger)
                self.label_tokens_counted = True
            for name, lab in self._labels.items():
                self._check_labels(name, lab)
        return self._labels, tokens

    def _check_labels(self, name: str, lab: AgentLabels) -> None:
        categories = [str(c) for c in lab.categories]
        if len(lab.labels) != len(self.pool):
            raise RuntimeError(
                f"agent {name!r} labelled {len(lab.labels)} examples: expected {len(self.pool)}"
            )
        if name in self.categories and self.categories[name] != categories:
            raise RuntimeError(
                f"agent {name!r} has categories {categories} but the checkpoint has {self.categories[name]}: "
                "expected the same agent options as the run being resumed"
            )
        digest = labels_sha256(lab)
        if name in self.label_sha256 and self.label_sha256[name] != digest:
            raise RuntimeError(
                f"agent {name!r} labels the pool differently from the checkpoint being resumed (sha256 "
                f"{digest[:12]} vs {self.label_sha256[name][:12]}): expected the same labels, from the same "
                "agent options and a scorer that does not read the live model"
            )
        self.label_sha256[name] = digest
        self.categories[name] = categories
        if name not in self.weights:
            self.weights[name] = np.full(len(categories), self.settings.initial_weight, dtype=np.float64)

    def _units(self, ctx: SelectionContext, labels: Mapping[str, AgentLabels]) -> list[RewardUnit]:
        """The round's reward units: ``samples_per_category`` units of ``unit_size`` pool positions from each
        (agent, category), drawn from the round's generator (with replacement when the category is smaller
        than a unit); empty categories get none."""
        size = int(self.settings.reward["unit_size"])
        samples = int(self.settings.reward["samples_per_category"])
        units: list[RewardUnit] = []
        for agent in self.settings.agents:
            cats = np.asarray(labels[agent].labels, dtype=np.int64)
            for category in range(len(self.categories[agent])):
                members = np.flatnonzero(cats == category)
                if members.size == 0:
                    continue
                for _ in range(samples):
                    drawn = ctx.rng.choice(members, size=size, replace=members.size < size)
                    units.append(RewardUnit(tuple(int(i) for i in drawn), agent=agent, category=category))
        return units

    def _measure(
        self, ctx: SelectionContext, labels: Mapping[str, AgentLabels]
    ) -> tuple[list[RewardUnit], RewardResult]:
        """This round's units and their rewards under the live model."""
        units = self._units(ctx, labels)
        if self._reference_batches is None:
            size = int(self.settings.reference["batch_size"])
            self._reference_batches = reference_batches(self, self.reference, size)
        result = self.reward_fn(
            ctx.module,
            ctx.optimizer,
            unit_batches(self, units),
            self._reference_batches,
            self.compute_ledger,
            self.progress,
        )
        if len(result.values) != len(units):
            raise RuntimeError(f"the reward gave {len(result.values)} values for {len(units)} units")
        return units, result

    def _update(self, units: list[RewardUnit], result: RewardResult) -> dict[str, Any]:
        """Eq. 4, 5, 7 and 8 (or the public code's rules) from this round's unit rewards; returns the reward
        diagnostics."""
        update = self.settings.update
        values = np.asarray(result.values, dtype=np.float64)
        if update["standardise_rewards"]:
            # in units of the round's spread over units, so that Eq. 5-8 move on the scale of one standard
            # deviation whatever the loss scale; not centred, so a unit that raises the reference loss
            # stays < 0
            spread = float(values.std())
            values = values / spread if spread > 0 else values
        after = result.reference_loss_after
        post = None if after is None else np.asarray(after, dtype=np.float64)
        diagnostics: dict[str, Any] = {}
        agent_rewards: dict[str, float] = {}
        signals: dict[str, float] = {}
        for agent in self.settings.agents:
            n_cat = len(self.categories[agent])
            picks = [
                [k for k, u in enumerate(units) if u.agent == agent and u.category == j] for j in range(n_cat)
            ]
            observed = np.asarray([bool(p) for p in picks])
            rewards = np.asarray([values[p].mean() if p else np.nan for p in picks])  # Eq. 4
            weights = self.weights[agent]
            if update["transform"] == "public_code":
                if post is None:
                    raise RuntimeError("update.transform=public_code needs the look-ahead's post-step losses")
                weights = console.public_code_agent_update(weights, [post[p] for p in picks], update["eta"])
            else:
                weights = console.update_agent_weights(weights, rewards, update["eta"], observed)  # Eq. 5
            self.weights[agent] = weights
            agent_rewards[agent] = console.agent_reward(weights, np.nan_to_num(rewards), observed)  # Eq. 7
            if update["console"] == "public_code":
                signals[agent] = console.public_code_console_signal(weights, [post[p] for p in picks])
            keys = category_keys(self.categories[agent])
            for j, key in enumerate(keys):
                diagnostics[f"agents.{agent}.n_units.{key}"] = len(picks[j])
                if observed[j]:
                    diagnostics[f"agents.{agent}.reward.{key}"] = float(rewards[j])
        if update["collaborative"]:  # Eq. 8
            if update["console"] == "public_code":
                self.theta = console.public_code_console_update(self.theta, signals)
            else:
                self.theta = console.update_console(
                    self.theta, agent_rewards, update["eta"], update["theta_floor"]
                )
        for agent, value in agent_rewards.items():
            diagnostics[f"console.agent_reward.{agent}"] = value
        diagnostics["console.mean_reward"] = float(np.mean(list(agent_rewards.values())))
        diagnostics.update({f"reward.{key}": value for key, value in result.summary().items()})
        return diagnostics

    def _state_diagnostics(self, labels: Mapping[str, AgentLabels], chosen: np.ndarray) -> dict[str, Any]:
        """The weights after this round's update, ``theta``, and each category's share of the pool and of the
        selection."""
        out: dict[str, Any] = {}
        for agent in self.settings.agents:
            cats = np.asarray(labels[agent].labels, dtype=np.int64)
            n_cat = len(self.categories[agent])
            pool_counts = np.bincount(cats, minlength=n_cat)
            chosen_counts = np.bincount(cats[chosen], minlength=n_cat)
            for j, key in enumerate(category_keys(self.categories[agent])):
                out[f"agents.{agent}.weight.{key}"] = float(self.weights[agent][j])
                out[f"agents.{agent}.pool_share.{key}"] = float(pool_counts[j] / max(1, len(cats)))
                out[f"agents.{agent}.selected_share.{key}"] = float(chosen_counts[j] / max(1, len(chosen)))
            out[f"console.theta.{agent}"] = float(self.theta[agent])
        # whether the collaborative update has moved the mix at all: 0 means the console is fixed mixing
        thetas = [float(self.theta[agent]) for agent in self.settings.agents]
        out["console.theta_spread"] = max(thetas) - min(thetas)
        return out

    def _times_selected(self, round_index: int) -> np.ndarray:
        """How many earlier rounds selected each pool example (the repetition decay's counts)."""
        counts = np.zeros(len(self.pool), dtype=np.int64)
        for record in self.rounds:
            if record.round < round_index:
                counts[[self.index_of[i] for i in record.ids]] += 1
        return counts

    def _overlap(self, round_index: int, chosen: np.ndarray) -> dict[str, float]:
        ids = {self.pool[i].id for i in chosen}
        earlier = [r for r in self.rounds if r.round < round_index]
        seen = ids.union(*(r.ids for r in earlier))
        out = {"seen_fraction": len(seen) / len(self.pool)}
        if earlier:
            previous = set(earlier[-1].ids)
            out["jaccard_previous_round"] = len(previous & ids) / len(previous | ids)
        return out


def labels_sha256(lab: AgentLabels) -> str:
    """A sha256 of an agent's category names and its label of every pool example (in pool order)."""
    digest = hashlib.sha256(json.dumps([str(c) for c in lab.categories]).encode("utf-8"))
    digest.update(np.ascontiguousarray(lab.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def _cuda_devices(ctx: SelectionContext | None) -> list[int]:
    """The CUDA devices whose generators labelling may move: the live model's and the current one (none
    when CUDA is not in use, so that a CPU run never initialises it)."""
    devices: set[int] = set()
    device = getattr(getattr(ctx, "module", None), "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        devices.add(device.index if device.index is not None else torch.cuda.current_device())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.add(torch.cuda.current_device())
    return sorted(devices)


@contextlib.contextmanager
def global_rngs_kept(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Run the body with the global torch (CPU and ``cuda_devices``), NumPy and ``random`` generators saved,
    and restore them afterwards: what the body draws or seeds (a stand-in trained on a cache miss calls
    ``torch.manual_seed``) does not reach the training's draws."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def category_keys(categories: Sequence[str]) -> list[str]:
    """Metric-safe names of an agent's categories (``"Wikipedia (en)"`` -> ``"wikipedia_en"``), made unique
    with ``_2``, ``_3`` suffixes in order when two read the same."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for category in categories:
        key = metric_safe(category)
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}_{seen[key]}")
    return keys


# The ablations of the paper's Table 2 (conf/method/<name>.yaml says the same).
class MultiAgentQuality(MultiAgent):
    """The quality agent alone."""

    name = "multi_agent_quality"
    preset: ClassVar[dict[str, Any]] = {"agents": ("quality",)}


class MultiAgentDomain(MultiAgent):
    """The domain agent alone."""

    name = "multi_agent_domain"
    preset: ClassVar[dict[str, Any]] = {"agents": ("domain",)}


class MultiAgentTopic(MultiAgent):
    """The topic agent alone."""

    name = "multi_agent_topic"
    preset: ClassVar[dict[str, Any]] = {"agents": ("topic",)}


class MultiAgentQualityDomain(MultiAgent):
    """The quality and domain agents."""

    name = "multi_agent_quality_domain"
    preset: ClassVar[dict[str, Any]] = {"agents": ("quality", "domain")}


class MultiAgentQualityTopic(MultiAgent):
    """The quality and topic agents."""

    name = "multi_agent_quality_topic"
    preset: ClassVar[dict[str, Any]] = {"agents": ("quality", "topic")}


class MultiAgentDomainTopic(MultiAgent):
    """The domain and topic agents."""

    name = "multi_agent_domain_topic"
    preset: ClassVar[dict[str, Any]] = {"agents": ("domain", "topic")}


class MultiAgentFixed(MultiAgent):
    """All three agents mixed with fixed equal console weights: the agents still learn their category
    weights, the collaborative update (Eq. 8) is skipped (the paper's "without collaboration" row)."""

    name = "multi_agent_fixed"
    preset: ClassVar[dict[str, Any]] = {"update": {"collaborative": False}}
