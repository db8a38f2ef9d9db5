"""Which run directories finished, failed or are unfinished, and what relaunching their sweep does to each.

A run finished when its results.json is complete; it carries a completion marker (p3bench/sweeps.py) when
the ``p3bench`` command ran it, and a relaunch of its sweep into the same ``hydra.sweep.dir`` skips it when
the job's settings are the ones the marker records. A failed run names the error its ``run.log`` recorded;
an unfinished one (interrupted, killed, still running) has neither results nor an error. A relaunch runs
both again, from their last checkpoint when they have one.
"""

from __future__ import annotations

from pathlib import Path

from p3bench.report.runs import FAILED, NOT_STARTED, OK, RUN_ELSEWHERE, UNFINISHED, RunRecord
from p3bench.results import RESULTS_FILE
from p3bench.sweeps import file_sha256

FINISHED = "finished"
#: the words of the status column, by the record's status
STATUS_WORDS = {OK: FINISHED, FAILED: "failed", UNFINISHED: "unfinished"}


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run directory has an intact checkpoint: what a relaunch resumes from
    (:func:`p3bench.sweeps.relaunch_decision` asks the same question)."""
    if not any((run_dir / "checkpoints").glob("*.ckpt")):
        return False
    from p3bench.checkpoints import CHECKPOINT_DIR, intact_checkpoints  # torch: only for such a run

    return bool(intact_checkpoints(run_dir / CHECKPOINT_DIR)[0])


def _again(run_dir: Path, why: str = "") -> str:
    return f"resumes from its last checkpoint{why}" if has_checkpoint(run_dir) else f"runs again{why}"


def relaunch_action(record: RunRecord) -> str:
    """What relaunching the run's sweep with unchanged settings does to it."""
    if record.status == OK:
        results_sha256 = file_sha256(record.path / RESULTS_FILE)
        if (
            results_sha256 is not None
            and (record.completion_marker or {}).get("results_sha256") == results_sha256
        ):
            return "skipped (same settings)"
        return _again(record.path, " (no completion marker of its results.json)")
    if record.status == RUN_ELSEWHERE:
        return "runs (finished in another directory)"
    if record.status == NOT_STARTED:
        return "runs"
    return _again(record.path)


def status_word(record: RunRecord) -> str:
    return STATUS_WORDS.get(record.status, record.status)


def run_status_table(records: list[RunRecord]) -> list[str]:
    """A Markdown table with one row per run directory and sweep entry: its status, why (for a run that did
    not finish) and what a relaunch does; a line of counts above it."""
    if not records:
        return ["No run directory was found."]
    counts: dict[str, int] = {}
    for record in records:
        counts[status_word(record)] = counts.get(status_word(record), 0) + 1
    lines = [
        ", ".join(f"{n} {word}" for word, n in sorted(counts.items()))
        + ". Relaunch: what relaunching the sweep into the same hydra.sweep.dir with the same settings does "
        "(a finished run is skipped; the others run again, from their last checkpoint when they have one).",
        "",
        "| run | status | relaunch | reason |",
        "|---|---|---|---|",
    ]
    for record in records:
        reason = (record.problem or "").replace("|", "\\|")
        lines.append(f"| {record.path} | {status_word(record)} | {relaunch_action(record)} | {reason} |")
    return lines
