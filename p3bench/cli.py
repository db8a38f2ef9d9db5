"""The ``p3bench`` command: one Hydra entry point for single runs (``p3bench``) and sweeps (``p3bench -m``).

What reaches the user: a finished run's summary (exit 0); a user error as one line ``p3bench: error: ...`` on
stderr and in the run's ``run.log`` (exit 2; in a sweep, one line per failed job, and the other jobs run);
Ctrl-C or SIGTERM, at any stage after the command's first import (the config schema), as ``p3bench:
interrupted by SIGINT`` (exit 130); anything else is a bug and prints its traceback (exit 1).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from p3bench.config_schema import composition_error_message  # registers the schema Hydra composes with
from p3bench.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    CheckpointError,
    ChecksFailed,
    Interrupted,
    P3BenchError,
    user_error_message,
)
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
                return unknown_name_message(f"{key} config", choice, known) + controls_note(key, known)
    return None


def controls_note(group: str, known: list[str]) -> str:
    """For the ``method`` group, which of its choices are controls (selections whose answer is known, to check
    a testbed, not methods to compare); nothing for other groups."""
    if group != "method":
        return ""
    from p3bench.methods import is_control

    controls = [name for name in known if is_control(name)]
    return f"; controls (known answer, not methods to compare): {', '.join(controls)}" if controls else ""


def task(cfg: Any) -> float | None:
    """Hydra's task function: one run. A user error goes into the run's ``run.log`` as one line and is
    returned to :func:`run_command` (a single run: Hydra would add its own line had the task raised) or
    printed naming the job and raised (a sweep job: the launcher records it and runs the other jobs). An
    interruption is noted in ``run.log`` (the run resumes with ``ckpt_path=last``).

    A finished run leaves a completion marker (:mod:`p3bench.sweeps`). A sweep job whose run directory has
    the marker of its own settings is skipped and returns what it returned then; one with a checkpoint but
    no such marker resumes from it; a DDP job starts its other processes on this job alone
    (:mod:`p3bench.sweep_ddp`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from p3bench import sweeps

    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = str(cfg.paths.output_dir)
    relaunch_resumed = False
    try:
        if sweep_job:
            decision = sweeps.relaunch_decision(output_dir, cfg)
            if decision.action == sweeps.SKIP:  # before the heavy imports: a finished sweep relaunches fast
                log.info("skipped: finished with the same config (%s)", output_dir)
                return decision.value
            sweeps.apply_relaunch_decision(decision, cfg)
            relaunch_resumed = decision.action == sweeps.RESUME
            if relaunch_resumed:
                log.info("%s: %s", output_dir, decision.reason)
        from p3bench.run import train_and_evaluate  # heavy imports after Hydra parsed the command line
        from p3bench.sweep_ddp import sweep_job_processes

        if sweep_job:
            with sweep_job_processes(output_dir, cfg.get("ckpt_path")):
                results = train_and_evaluate(cfg)
        else:
            results = train_and_evaluate(cfg)
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", Interrupted.last_signal)
        log_to_run_log(logging.WARNING, f"run interrupted by {name}: resume it with ckpt_path=last")
        raise
    except Exception as exc:
        message = user_error_message(exc) or method_option_message(exc, cfg) or instantiation_message(exc)
        if message is None:
            log.error("run failed: %s: %s", type(exc).__name__, exc)
            raise
        if relaunch_resumed and isinstance(exc, CheckpointError):
            message += f"; {sweeps.RESUME_HINT}"
        log_to_run_log(logging.ERROR, f"run failed: p3bench: error: {message}")
        USER_ERRORS.append(message)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        job = f"job {hydra_cfg.job.num} ({Path(hydra_cfg.runtime.output_dir).name})"
        print(f"p3bench: error: {job}: {message}", file=sys.stderr)
        if isinstance(exc, P3BenchError):
            raise
        raise P3BenchError(message) from exc
    value = results["metrics"].get("test/accuracy")
    sweeps.write_completion_marker(output_dir, cfg, value, list(HydraConfig.get().overrides.task))
    return value


#: the one-line user errors of this process's runs (a single run's, or each failed sweep job's)
USER_ERRORS: list[str] = []


def log_to_run_log(level: int, message: str) -> None:
    """Write ``message`` to the job's ``run.log`` only (the file handlers Hydra configured), where
    ``p3bench report`` reads why a run failed; the console gets the one line from :func:`main`."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def method_option_message(exc: BaseException, cfg: Any) -> str | None:
    """One line for a ValueError a method's own code raised about one of its options (``start must be a
    fraction in (0, 1] ...``): the message names the option, which is found among the ``method.*`` keys and
    named in full with its value. None when the error is not of that kind."""
    if not isinstance(exc, ValueError):
        return None
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename.replace(os.sep, "/"))
        tb = tb.tb_next
    if not any("/p3bench/methods/" in f or "/p3bench/algorithms/" in f for f in frames):
        return None
    text = " ".join(str(exc).split())
    match = re.match(r"([A-Za-z_]\w*)\b", text)
    if match is None:
        return None
    from p3bench.resume import flatten_config

    try:
        options = flatten_config(cfg.method)
    except Exception:  # an unresolvable method config is reported by the error itself
        return None
    keys = [key for key in options if key.rsplit(".", 1)[-1] == match.group(1)]
    if len(keys) != 1:
        return None
    key = keys[0]
    return f"method.{key}={options[key]!r} is invalid for method {cfg.method.name!r}: {text}"


def instantiation_message(exc: BaseException) -> str | None:
    """One line for a logger, callback or trainer that Hydra cannot build from the config (an argument its
    class does not take, say), naming the config key; None for other errors."""
    from hydra.errors import InstantiationException

    return composition_error_message(exc) if isinstance(exc, InstantiationException) else None


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (a KeyboardInterrupt naming the signal), so that both
    end the run the same way, with cleanup, a note in run.log and exit code 130."""

    def interrupt(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        Interrupted.last_signal = name
        raise Interrupted(name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


def main() -> None:
    """Console-script entry point: ``p3bench report ...`` reports on run directories, anything else runs."""
    install_interrupt_handlers()
    try:
        code = run_command(sys.argv[1:])
    except KeyboardInterrupt as exc:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not turn the exit into a traceback
        name = getattr(exc, "signal_name", Interrupted.last_signal)
        print(f"p3bench: interrupted by {name}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


def run_command(args: list[str]) -> int:
    """Run the command line ``args`` (Hydra reads them from ``sys.argv``) and return the exit code."""
    if args[:1] == ["report"]:
        from p3bench.report.cli import main as report_main

        return report_main(args[1:])
    if args[:1] == ["cache"]:
        from p3bench.cache_cli import main as cache_main

        return cache_main(args[1:])
    problem = check_group_overrides(args)
    if problem:
        print(f"p3bench: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the one line is written below
    logging.raiseExceptions = False  # a full disk must not turn every later log line into a traceback
    import hydra

    try:
        try:
            hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")(task)()
        except ChecksFailed as failed:  # a check before the run directory was created
            raise failed.error from None
    except Exception as exc:
        message = user_error_message(exc) or composition_error_message(exc)
        if message is None:
            raise
        if USER_ERRORS:  # sweep jobs: each printed its own line
            message = f"{len(USER_ERRORS)} sweep job(s) failed; each one's line is above and in its run.log"
        print(f"p3bench: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    if USER_ERRORS:  # a single run returned its error
        print(f"p3bench: error: {USER_ERRORS[-1]}", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


if __name__ == "__main__":
    main()
