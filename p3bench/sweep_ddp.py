"""DDP training jobs inside a Hydra sweep (``p3bench -m ... trainer=ddp``) on one machine.

Lightning's ``ddp`` strategy starts the other processes of a job by running the command line again
(``lightning_fabric.strategies.launchers.subprocess_script._hydra_subprocess_cmd``): ``sys.argv`` plus
``hydra.run.dir``. In a sweep that command holds ``-m`` and the sweep's lists, so each child would run the
whole sweep, and ``hydra.run.dir`` is not the job's directory. Under a launcher that runs jobs in workers
(joblib, submitit, Ray) ``sys.argv`` and ``__main__`` are the worker's, not ``p3bench``'s.

:func:`sweep_job_processes` makes each child run this job only: ``python -m p3bench`` with the job's own
overrides (``hydra.overrides.task``, the sweep already expanded), the job's ``ckpt_path`` (a relaunch may
resume), the command's ``hydra.*`` settings that still apply to one run, and ``hydra.run.dir`` set to the job's
run directory (``hydra.output_subdir=null``: the job's ``.hydra`` files are the parent's). The children
compose the same config as the job (checked by ``tests/test_ddp_sweep.py``). After the job it restores the
environment Lightning set for its children (``LOCAL_RANK`` left set would make the next job of the same
worker wait for processes nobody starts) and ends the job's process group, so that the next DDP job of a
sequential launcher starts its own.

On a SLURM cluster (``hydra/launcher=slurm``) none of this is used: submitit starts ``tasks_per_node``
processes per node, each runs the job, and Lightning's ``SLURMEnvironment`` joins them
(``creates_processes_externally``), so no child command is built.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

#: environment variables Lightning's subprocess launcher sets in the job's process
LAUNCHER_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
#: ``hydra.*`` overrides of the sweep command that do not apply to one job's run
_SWEEP_ONLY = (
    "hydra.mode",
    "hydra/launcher",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra.sweeper",
    "hydra.sweep",
    "hydra.run.dir",
    "hydra.output_subdir",
    "hydra.job.name",
    "hydra.job.num",
    "hydra.job.id",
)
#: the Lightning modules whose launcher calls ``_hydra_subprocess_cmd`` by that name
_LAUNCHER_MODULES = (
    "lightning_fabric.strategies.launchers.subprocess_script",
    "pytorch_lightning.strategies.launchers.subprocess_script",
)


def override_key(override: str) -> str:
    """``trainer.devices`` for ``trainer.devices=2``, ``+a.b=1`` or ``~a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def _matches(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in prefixes)


def quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar (paths with ``=``, ``,`` or spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_child_command(
    task_overrides: Sequence[str],
    hydra_overrides: Sequence[str],
    run_dir: str,
    local_rank: int,
    ckpt_path: str | None = None,
) -> list[str]:
    """The command that runs process ``local_rank`` of one sweep job: the job's overrides (``ckpt_path``
    replaced by the job's own), the sweep command's ``hydra.*`` settings that apply to one run, and the job's
    run directory."""
    overrides = [o for o in task_overrides if override_key(o) != "ckpt_path"]
    if ckpt_path not in (None, ""):
        overrides.append(f"ckpt_path={quoted(str(ckpt_path))}")
    settings = [o for o in hydra_overrides if not _matches(override_key(o), _SWEEP_ONLY)]
    return [
        sys.executable,
        "-m",
        "p3bench",
        *overrides,
        *settings,
        f"hydra.run.dir={quoted(str(run_dir))}",
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]


@contextlib.contextmanager
def sweep_job_processes(run_dir: str, ckpt_path: str | None) -> Iterator[None]:
    """While the block runs, Lightning's ``ddp`` launcher starts this sweep job's other processes with
    :func:`job_child_command`; afterwards the launcher's environment variables are as they were and the
    job's process group is ended."""
    import importlib

    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    task_overrides = [str(o) for o in hydra_cfg.overrides.task]
    hydra_overrides = [str(o) for o in hydra_cfg.overrides.hydra]
    cwd = str(hydra_cfg.runtime.cwd)

    def child_command(local_rank: int) -> tuple[list[str], str]:
        return job_child_command(task_overrides, hydra_overrides, run_dir, local_rank, ckpt_path), cwd

    modules = [importlib.import_module(name) for name in _LAUNCHER_MODULES]
    originals: list[tuple[Any, Any]] = [
        (m, m._hydra_subprocess_cmd) for m in modules if hasattr(m, "_hydra_subprocess_cmd")
    ]
    environment = {name: os.environ.get(name) for name in LAUNCHER_ENVIRONMENT}
    for module, _ in originals:
        module._hydra_subprocess_cmd = child_command
    try:
        yield
    finally:
        for module, original in originals:
            module._hydra_subprocess_cmd = original
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        end_process_group()


def end_process_group() -> None:
    """Destroy the default process group if a job left one (Lightning keeps it for the process's life)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
