"""Checkpoint files: written whole or not at all, and found again on resume.

Lightning's own writer serialises into memory and then writes through an fsspec transaction, whose temporary
file lies in the system's temporary directory; on another file system the commit is a copy, so a full disk
leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes into a temporary file in the
checkpoint's own directory and renames it into place (:func:`p3bench.utils.io.atomic_output`): a reader,
or a resume, sees the previous complete checkpoint or the new complete one.

On resume (:func:`find_resume_checkpoint`), ``ckpt_path=last`` is the newest intact checkpoint of the run
directory (the one with the most optimizer steps; ``last.ckpt`` on a tie), and a damaged file is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from p3bench.errors import CheckpointError
from p3bench.utils.io import atomic_output

LAST = "last"
CHECKPOINT_DIR = "checkpoints"
LAST_FILE = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing local files atomically in their own directory (remote
    ``scheme://`` paths keep Lightning's writer)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            with atomic_output(path, "wb") as handle:
                torch.save(checkpoint, handle)
        except RuntimeError as exc:
            # torch's zip writer turns a failed write (a full disk) into a RuntimeError: say what failed
            cause = _os_error_in(exc)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(path)) from exc


def _os_error_in(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors mapped lazily from the file); a file that does not load is a
    :class:`CheckpointError` naming it and why."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated zip, empty or foreign file: all mean the file cannot be resumed from
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is damaged ({reason})") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is damaged (not a Lightning checkpoint)")
    return checkpoint


def checkpoint_step(checkpoint: dict[str, Any]) -> int:
    """The optimizer steps a checkpoint had taken."""
    return int(checkpoint.get("global_step", 0))


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, loaded, and the newer files that were skipped because they are
    damaged (``(path, reason)``)."""

    path: Path
    checkpoint: dict[str, Any]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def global_step(self) -> int:
        return checkpoint_step(self.checkpoint)


def intact_checkpoints(directory: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, str]]]:
    """The checkpoints of ``directory`` that load, newest first (most optimizer steps, ``last.ckpt`` first
    on a tie), and the ones that do not, with the reason."""
    intact: list[tuple[Path, dict[str, Any]]] = []
    damaged: list[tuple[Path, str]] = []
    for path in sorted(directory.glob("*.ckpt")) if directory.is_dir() else []:
        try:
            intact.append((path, load_checkpoint(path)))
        except CheckpointError as exc:
            damaged.append((path, str(exc)))
    intact.sort(key=lambda item: (checkpoint_step(item[1]), item[0].name == LAST_FILE), reverse=True)
    return intact, damaged


def find_resume_checkpoint(ckpt_path: str | None, output_dir: str | Path) -> ResumePoint | None:
    """The checkpoint ``ckpt_path`` names, loaded: None for no resume, ``last`` for the newest intact
    checkpoint in the run directory's ``checkpoints/`` (newer damaged files are skipped and reported), any
    other value a checkpoint file. A missing or damaged file is a one-line :class:`CheckpointError` that
    points to the newest intact checkpoint, if there is one."""
    if ckpt_path in (None, ""):
        return None
    directory = Path(output_dir) / CHECKPOINT_DIR
    if ckpt_path == LAST:
        intact, damaged = intact_checkpoints(directory)
        if not intact:
            found = "; ".join(reason for _, reason in damaged) or f"no checkpoint in {directory}"
            raise CheckpointError(
                f"ckpt_path=last: {found}: expected an intact .ckpt file in the run directory (set "
                "hydra.run.dir to the run to resume, or start it again without ckpt_path)"
            )
        path, checkpoint = intact[0]
        newer = [(p, r) for p, r in damaged if p.stat().st_mtime >= path.stat().st_mtime]
        return ResumePoint(path, checkpoint, newer)
    path = Path(str(ckpt_path))
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path!r}: no checkpoint at {path} (expected a .ckpt file or 'last')"
        )
    try:
        return ResumePoint(path, load_checkpoint(path))
    except CheckpointError as exc:
        intact, _ = intact_checkpoints(path.parent)
        hint = (
            f"the newest intact checkpoint beside it is {intact[0][0]}: resume with ckpt_path={intact[0][0]}"
            if intact
            else "no intact checkpoint sits beside it: start the run again without ckpt_path"
        )
        raise CheckpointError(f"ckpt_path={ckpt_path!r}: {exc}; {hint}") from exc
