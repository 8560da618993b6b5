"""Progress display for long work: rich progress bars on a terminal, log lines elsewhere.

Library code takes an optional ``ProgressFn`` (epoch, total, metrics) callback; the CLI
passes one made by :func:`epoch_bar`, tests pass nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedsynth.generators.base import ProgressFn

console = Console(stderr=True)


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
