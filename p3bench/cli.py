"""The ``p3bench`` command: one Hydra entry point for single runs (``p3bench``) and sweeps (``p3bench -m``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from p3bench.errors import P3BenchError
from p3bench.registry import unknown_name_message

log = logging.getLogger("p3bench")


def config_dir() -> Path:
    """``conf/`` inside an installed wheel, or the repository's top-level ``conf/`` in a checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf"


CONFIG_DIR = config_dir()


def group_choices(group: str) -> list[str]:
    path = CONFIG_DIR / group
    return sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []


def check_group_overrides(args: list[str]) -> str | None:
    """A one-line error for ``group=choice`` overrides naming a config that does not exist, else None.

    Hydra would reject them too, but with a multi-line message; this names the value, the known choices
    and the closest one. Sweep lists (``method=full,random``) are checked item by item.
    """
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if (
            "." in key
            or "/" in key
            or not (CONFIG_DIR / key).is_dir()
            or "(" in value
            or value in ("null", "")
        ):
            continue
        known = group_choices(key)
        for choice in value.split(","):
            if choice not in known:
                return unknown_name_message(f"{key} config", choice, known)
    return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task function: run one job, turning user errors into one line."""
    from p3bench.run import train_and_evaluate  # heavy imports after Hydra parsed the command line

    try:
        results = train_and_evaluate(cfg)
    except P3BenchError as exc:
        print(f"p3bench: error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(2)
        log.error("run failed: %s", exc)  # into the job's run.log, where a report finds why it failed
        raise  # in a sweep the launcher records the failed job
    except Exception as exc:
        log.error("run failed: %s: %s", type(exc).__name__, exc)
        raise
    return results["metrics"].get("test/accuracy")


def main() -> None:
    """Console-script entry point: ``p3bench report ...`` reports on run directories, anything else runs."""
    if sys.argv[1:2] == ["report"]:
        from p3bench.report.cli import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    problem = check_group_overrides(sys.argv[1:])
    if problem:
        print(f"p3bench: error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
