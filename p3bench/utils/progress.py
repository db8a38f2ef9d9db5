"""Progress bars for the long steps outside training, in the style of Lightning's, and one switch for them.

Every long step that runs outside Lightning's loops (scoring passes over the pool, embedding, DPP kernels and
greedy selection, density sketches, clustering, running many programs, training reference, stand-in and
warm-start models) builds its bar here::

    for batch in progress_bar(batches, desc="scoring (likelihood)", unit="batch", enabled=self.progress):
        ...

    with progress_bar(total=len(texts), desc="embed[minilm]", unit="text", enabled=self.progress) as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

When a bar is shown:

- the process-wide switch is on (:func:`set_progress_enabled`; on by default). A run sets it from the root
  config's ``progress`` key, which follows ``trainer.enable_progress_bar`` unless set, so ``progress=false``
  silences every bar here and ``trainer.enable_progress_bar=false`` silences Lightning's and these together;
- the caller's ``enabled`` is true (a method's, scorer's or embedder's own ``progress`` option: the steps of
  one method can be silenced alone);
- this process is global rank zero: ``torch.distributed``'s rank when a process group is initialised, else
  the ``RANK`` environment variable, else ``LOCAL_RANK`` (rank zero when none is set). Other processes get a
  disabled bar, so a distributed run draws each bar once.

How the bars look: like Lightning's own (``pytorch_lightning.callbacks.progress.TQDMProgressBar``). They are
instances of the bar class that progress bar uses (``Tqdm``, which pads numbers so that they do not flicker),
with its ``BAR_FORMAT`` (the rate always in items per second), written to ``sys.stdout`` with
``dynamic_ncols=True`` and ``smoothing=0`` (the average rate over the whole step, as Lightning's training
bar shows). A finished step's bar is cleared (``leave=False``, like Lightning's validation bar during
fitting) unless the caller asks to keep it. Because they share Lightning's stream and tqdm's registry of open
bars, a bar opened while Lightning's training bar is on screen (a selection made between epochs) takes the
next free line instead of overwriting it. Lightning is imported when the first bar is shown, not before.

Cost: a disabled bar is a plain disabled tqdm (its ``update`` returns at once). Steps update their bar once
per batch, chunk, block or program, never per token or per inner-loop iteration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm

__all__ = ["progress_bar", "progress_enabled", "progress_shown", "set_progress_enabled"]

_enabled = True


def set_progress_enabled(enabled: bool) -> None:
    """Switch every progress bar of this process on or off (on by default)."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    """Whether the process-wide switch is on."""
    return _enabled


def global_rank() -> int:
    """This process's global rank: ``torch.distributed``'s when a process group is initialised, else the
    ``RANK`` environment variable, else ``LOCAL_RANK``; 0 when none is set (or one does not parse)."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to draw a bar
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def progress_shown(enabled: bool = True) -> bool:
    """Whether a bar asked for with ``enabled`` is shown: the process-wide switch and ``enabled`` are on and
    this is global rank zero. Steps that drive another library's own bars (transformers' weight loading)
    silence them when this is False."""
    return _enabled and bool(enabled) and global_rank() == 0


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
) -> tqdm:
    """A progress bar over ``iterable`` (or one updated by hand up to ``total``), in Lightning's style.

    Shown only when :func:`progress_shown` says so (see the module docstring); otherwise a disabled tqdm
    that iterates ``iterable`` unchanged and ignores ``update``, ``set_postfix`` and ``close`` (its ``n`` is
    not counted). ``total`` defaults to ``len(iterable)`` when it has one; ``unit`` names what is counted.
    ``leave`` keeps the finished bar on screen. Use it as an iterable wrapper or as a context manager
    (``with progress_bar(...) as bar``), which closes the bar however the step ends.
    """
    if not progress_shown(enabled):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    # the bar class and format of Lightning's own progress bar, so that both look alike
    from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar

    return Tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
        file=sys.stdout,
        smoothing=0,
        bar_format=TQDMProgressBar.BAR_FORMAT,
    )
