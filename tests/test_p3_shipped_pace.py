"""The pace of every shipped P3-family config, in the regime it ships: for the pool size, budget and number of
rounds each config runs, the admitted share per round follows the configured schedule (the budget's floor
never overrides it), the early rounds admit a minority of the pool, and the last round reaches all of it.

The pace is computed by the method's own :meth:`P3.pace` on the composed config, over a pool of the size the
config's dataset has (synthetic pools by their ``n_train``, MATH by its local train file), with random difficulties: the quantile pace's admitted share does not depend
on the values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from p3bench.data.example import DatasetSplits, Example
from p3bench.methods import METHODS
from p3bench.methods.p3 import P3
from tests.conftest import CONFIG_DIR, compose_config

#: MATH's local train file (7,500 problems) less the configured validation and test carve-outs
MATH_POOL = 7500 - 500 - 1000


def shipped_p3_runs() -> list[tuple[str, list[str], list[str] | None]]:
    """(label, overrides, budgets) of every run the shipped configs make with a P3-family method: the root
    default, each P3 experiment, and every method of the P3 sweep at each of its budgets (None: the
    config's own budget)."""
    runs: list[tuple[str, list[str], list[str] | None]] = [("default", [], None)]
    # p3_apps is left out: its pool is the hub's APPS train split, whose size is not known offline
    for name in ("p3_synthetic", "p3_math", "p3_math_small"):
        runs.append((name, [f"experiment={name}"], None))
    sweep = OmegaConf.load(CONFIG_DIR / "experiment" / "p3_synthetic_sweep.yaml")
    params = sweep.hydra.sweeper.params
    budgets = str(params.budget).split(",")
    for method in str(params.method).split(","):
        runs.append(
            (f"p3_synthetic_sweep {method}", ["experiment=p3_synthetic", f"method={method}"], budgets)
        )
    return runs


def pool_size(cfg) -> int:
    name = cfg.dataset.name
    if name == "synthetic_math":
        return int(cfg.dataset.params.n_train)
    if name == "math":
        max_train = cfg.dataset.params.get("max_train")
        return int(max_train) if max_train is not None else MATH_POOL
    raise AssertionError(f"no pool size known for dataset {name!r}")


def paced_method(cfg, n: int, budget: float | int) -> P3 | None:
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    cls = METHODS.get(method_cfg.pop("name"))
    if not issubclass(cls, P3):
        return None
    pool = [Example(id=f"ex{i}", prompt="", target="") for i in range(n)]
    splits = DatasetSplits(name=cfg.dataset.name, task="qa", train=pool, validation=pool[:1], test=pool[:1])
    method = cls(splits=splits, tokenizer=None, budget=budget, seed=0, **method_cfg)
    if not method.pace_cfg["enabled"] or method.pace_cfg["mode"] != "quantile":
        return None
    return method


@pytest.mark.parametrize(
    ("label", "overrides", "budgets"), shipped_p3_runs(), ids=[run[0] for run in shipped_p3_runs()]
)
def test_shipped_pace_restricts_as_configured(
    label: str, overrides: list[str], budgets: list[str] | None, tmp_path: Path
) -> None:
    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "cache")
    n = pool_size(cfg)
    difficulty = np.random.default_rng(0).random(n)
    for budget in budgets or [cfg.budget]:
        budget = OmegaConf.create({"b": budget}).b if isinstance(budget, str) else budget
        budget = int(budget) if float(budget) > 1 else float(budget)
        method = paced_method(cfg, n, budget)
        if method is None:
            continue
        rounds = int(cfg.trainer.max_epochs) // method.reselect_every_n_epochs
        shares = []
        for r in range(rounds):
            admitted, _, pace_round, info = method.pace(difficulty, r)
            if pace_round < 0:
                continue
            share = admitted.mean()
            shares.append(share)
            where = f"{label} budget {budget} round {r}"
            # the schedule decides: the budget's floor does not raise the admitted count
            assert not info["pace_floor_applied"], f"{where}: admits {share:.2f} by the floor"
            scheduled = method.pace_cfg["start"] + method.pace_cfg["step"] * pace_round
            assert share == pytest.approx(min(1.0, scheduled), abs=1 / n), where
            # and the DPP (or the random draw) has a real choice: more admitted than the budget
            assert admitted.sum() > method.budget_size, where
        assert shares[0] < 0.5, f"{label}: the first paced round admits {shares[0]:.2f} of the pool"
        assert shares[-1] == 1.0, f"{label}: the last round admits {shares[-1]:.2f}, not the whole pool"
