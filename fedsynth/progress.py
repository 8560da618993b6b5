"""Progress display for long work: rich progress bars on a terminal, log lines elsewhere.

Library code takes an optional :data:`ProgressFn` (epoch, total, metrics) callback; the
server takes a :data:`ProgressFactory` that opens one per long step. The CLI passes
:func:`epoch_bar`; tests pass nothing (:func:`no_progress`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ProgressFn = Callable[[int, int, dict[str, float]], None]
"""Called after each epoch with (epoch, total_epochs, metrics)."""

ProgressFactory = Callable[[str, int], AbstractContextManager[ProgressFn | None]]
"""Opens a progress display for (description, total epochs); yields a ProgressFn or None."""

console = Console(stderr=True)


@contextlib.contextmanager
def no_progress(description: str, total: int) -> Iterator[None]:
    yield None


@contextlib.contextmanager
def epoch_bar(description: str, total: int) -> Iterator[ProgressFn]:
    """A progress bar over epochs; the callback shows the latest metrics beside it."""
    if not console.is_terminal:
        log = logging.getLogger("fedsynth")

        def log_epoch(epoch: int, total_: int, row: dict[str, float]) -> None:
            if epoch == total_ or epoch % max(1, total_ // 4) == 0:
                shown = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
                log.info("%s: epoch %d/%d %s", description, epoch, total_, shown)

        yield log_epoch
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(epoch: int, total_: int, row: dict[str, float]) -> None:
            info = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
            bar.update(task, completed=epoch, info=info)

        yield update
