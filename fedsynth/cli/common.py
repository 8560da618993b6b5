"""What every command shares: user errors as one red line, logging, the console."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from fedsynth.errors import FedsynthError
from fedsynth.progress import console

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn user errors into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedsynthError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool) -> None:
    """Rich, wrapped lines on a terminal; plain, unwrapped, uncoloured lines with a time stamp
    when the output goes to a file or a pipe (and Ray's worker lines without colour codes)."""
    import os

    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = PLAIN_FORMAT
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True)
    for noisy in ("flwr", "ray", "alembic", "matplotlib", "PIL", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
