"""The options of the multi-agent method (``conf/method/multi_agent.yaml``), checked once at construction:
each bad value is a one-line :class:`~p3bench.errors.ConfigError` naming ``method.<key>`` and what was
expected. Also the reference set the rewards are measured on (:func:`reference_examples`)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p3bench.data.example import Example, is_oracle_field
from p3bench.errors import ConfigError
from p3bench.methods.options import choice, merge_options
from p3bench.registry import unknown_name_message

#: the agents of the paper (arXiv 2410.08102, Sec. 3.3), in the order the console lists them
PAPER_AGENTS = ("quality", "domain", "topic")
TRANSFORMS = ("paper", "public_code")
CONSOLES = ("paper", "public_code")
TIES = ("random", "id_hash")
REFERENCE_SPLITS = ("validation",)

REWARD_DEFAULTS: dict[str, Any] = {
    "kind": "lookahead",
    "samples_per_category": 1,
    "unit_size": 4,
    "lookahead": {"optimizer": "train_state", "lr": 1.0e-3, "clip": 1.0},
    "gradient": {"dim": 1024, "per_example": "vmap", "normalise": False, "seed": 0},
}
REFERENCE_DEFAULTS: dict[str, Any] = {
    "split": "validation",
    "field": "domain",
    "values": None,
    "max_examples": 16,
    "batch_size": 16,
}
UPDATE_DEFAULTS: dict[str, Any] = {
    "eta": 0.1,
    "collaborative": True,
    "at_start": True,
    "transform": "paper",
    "console": "paper",
    "theta_floor": 0.0,
    "repetition_decay": 0.0,
    "standardise_rewards": False,
}


@dataclass(frozen=True)
class MultiAgentSettings:
    """The checked options: the agents and their options, the initial weight, and the ``reward``,
    ``reference`` and ``update`` groups merged over their defaults."""

    agents: tuple[str, ...]
    agent_options: dict[str, dict[str, Any]]
    initial_weight: float
    reward: dict[str, Any]
    reference: dict[str, Any]
    update: dict[str, Any]
    ties: str


def _int_at_least(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"method.{key}={value!r} is invalid: expected an integer >= {minimum}")
    return int(value)


def _number(key: str, value: Any, low: float, high: float | None = None, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"in ({low}, {high}]" if open_low and high is not None else f">= {low}"
        raise ConfigError(f"method.{key}={value!r} is invalid: expected a number {bound}")
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"method.{key}={value!r} is invalid: expected true or false")
    return value


def check_agents(agents: Any, known: Sequence[str]) -> tuple[str, ...]:
    """``method.agents`` as a tuple of distinct registered agent names (at least one)."""
    if isinstance(agents, str):
        agents = [agents]
    if not isinstance(agents, Sequence) or not agents:
        raise ConfigError(f"method.agents={agents!r} is invalid: expected a non-empty list of agent names")
    for name in agents:
        if name not in known:
            raise ConfigError(f"method.agents: {unknown_name_message('agent', name, list(known))}")
    if len(set(agents)) != len(agents):
        raise ConfigError(f"method.agents={list(agents)!r} names an agent twice: expected distinct agents")
    return tuple(str(a) for a in agents)


def check_agent_options(options: Any, known: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``method.agent_options``: a mapping agent name -> its options (for agents not in use too, so that an
    ablation keeps the full method's options)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"method.agent_options={options!r} is invalid: expected a mapping agent name -> options"
        )
    checked: dict[str, dict[str, Any]] = {}
    for name, block in options.items():
        if name not in known:
            raise ConfigError(f"method.agent_options: {unknown_name_message('agent', name, list(known))}")
        if block is not None and not isinstance(block, Mapping):
            raise ConfigError(
                f"method.agent_options.{name}={block!r} is invalid: expected a mapping of options"
            )
        checked[str(name)] = dict(block or {})
    return checked


def check_reward(given: Mapping[str, Any] | None, kinds: Sequence[str]) -> dict[str, Any]:
    reward = merge_options("reward", REWARD_DEFAULTS, given)
    if reward["kind"] not in kinds:
        raise ConfigError(
            f"method.reward.kind: {unknown_name_message('reward', reward['kind'], list(kinds))}"
        )
    _int_at_least("reward.samples_per_category", reward["samples_per_category"], 1)
    _int_at_least("reward.unit_size", reward["unit_size"], 1)
    for kind in kinds:
        block = reward.get(kind)
        if block is not None and not isinstance(block, Mapping):
            raise ConfigError(f"method.reward.{kind}={block!r} is invalid: expected a mapping of options")
    return reward


def check_reference(given: Mapping[str, Any] | None) -> dict[str, Any]:
    reference = merge_options("reference", REFERENCE_DEFAULTS, given)
    choice("reference.split", reference["split"], REFERENCE_SPLITS)
    field = reference["field"]
    if not isinstance(field, str) or not field:
        raise ConfigError(f"method.reference.field={field!r} is invalid: expected a metadata field name")
    if is_oracle_field(field):
        raise ConfigError(
            f"method.reference.field={field!r} is an oracle field (planted defects), which methods never read: "
            "expected another metadata field such as domain"
        )
    values = reference["values"]
    if isinstance(values, str):
        values = [values]
    if values is not None and (
        not isinstance(values, Sequence) or not values or not all(_is_field_value(v) for v in values)
    ):
        raise ConfigError(
            f"method.reference.values={values!r} is invalid: expected null (every example) or a list of "
            f"{field} values"
        )
    # as strings: reference_examples compares each example's value as a string
    reference["values"] = None if values is None else [str(v) for v in values]
    if reference["max_examples"] is not None:
        _int_at_least("reference.max_examples", reference["max_examples"], 1)
    _int_at_least("reference.batch_size", reference["batch_size"], 1)
    return reference


def _is_field_value(value: Any) -> bool:
    """A metadata value a reference set can be chosen by: a string or an integer (not a bool)."""
    return isinstance(value, str) or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def check_update(given: Mapping[str, Any] | None, reward_kind: str) -> dict[str, Any]:
    update = merge_options("update", UPDATE_DEFAULTS, given)
    update["eta"] = _number("update.eta", update["eta"], 0.0, 1.0, open_low=True)
    _flag("update.collaborative", update["collaborative"])
    _flag("update.at_start", update["at_start"])
    choice("update.transform", update["transform"], TRANSFORMS)
    choice("update.console", update["console"], CONSOLES)
    update["theta_floor"] = _number("update.theta_floor", update["theta_floor"], 0.0)
    update["repetition_decay"] = _number("update.repetition_decay", update["repetition_decay"], 0.0)
    _flag("update.standardise_rewards", update["standardise_rewards"])
    if update["standardise_rewards"] and update["transform"] == "public_code":
        raise ConfigError(
            "method.update.standardise_rewards=true scales the rewards of Eq. 4-8, which "
            "update.transform=public_code does not use: expected one of the two"
        )
    for key in ("transform", "console"):
        if update[key] == "public_code" and reward_kind != "lookahead":
            raise ConfigError(
                f"method.update.{key}=public_code transforms the post-step reference loss of a look-ahead: "
                f"expected method.reward.kind=lookahead (got {reward_kind!r})"
            )
    return update


def check_preset(name: str, preset: Mapping[str, Any], settings: MultiAgentSettings) -> None:
    """An ablation is its name: the agents (and the collaborative switch) its class fixes may not be set
    otherwise (``method=multi_agent`` with ``method.agents=...`` is the way to another combination)."""
    agents = preset.get("agents")
    if agents is not None and tuple(agents) != settings.agents:
        raise ConfigError(
            f"method.agents={list(settings.agents)} differs from method {name!r}'s agents {list(agents)}: "
            "expected the method's own, or method=multi_agent with method.agents=[...]"
        )
    collaborative = preset.get("update", {}).get("collaborative")
    if collaborative is not None and settings.update["collaborative"] != collaborative:
        raise ConfigError(
            f"method.update.collaborative={settings.update['collaborative']} contradicts method {name!r} "
            f"(collaborative={collaborative}): expected method=multi_agent for the other setting"
        )


def reference_examples(split: Sequence[Example], reference: Mapping[str, Any], seed: int) -> list[Example]:
    """The reference set: the examples of the reference split whose ``meta[field]`` is one of ``values``
    (all of them when ``values`` is null), at most ``max_examples`` of them taken in a seeded order, so
    that every process and every resume measures rewards on the same examples. Only ``meta[field]`` is read
    (never the whole ``meta``, which may hold oracle fields); its values are compared as strings (a field of
    ints is named ``["3"]``). A value that no example has is a one-line error listing the values there are."""
    field, values = reference["field"], reference["values"]
    if not split:
        raise ConfigError(
            f"method.reference.split={reference['split']!r} is empty: expected held-out examples to measure "
            "rewards on"
        )
    if values is None:
        chosen = list(split)
    else:
        found = [ex.meta.get(field) for ex in split]
        if all(v is None for v in found):
            raise ConfigError(
                f"method.reference.field={field!r} is not in the {reference['split']} examples' metadata: "
                "expected a field they carry, such as domain"
            )
        present = sorted({str(v) for v in found if v is not None})
        for value in values:
            if value not in present:
                raise ConfigError(
                    f"method.reference.values: {unknown_name_message(f'{field} value', value, present)}"
                )
        # compared as strings, as the check above: a field of ints (or other non-strings) selects its values
        keep = set(values)
        chosen = [ex for ex, v in zip(split, found, strict=True) if v is not None and str(v) in keep]
    order = np.random.default_rng([int(seed), 2410_08102]).permutation(len(chosen))
    cap = reference["max_examples"]
    return [chosen[i] for i in sorted(order[: len(chosen) if cap is None else int(cap)].tolist())]
