"""How a fedsynth process shows its log lines, set up in this one place.

A command of fedsynth's CLI (``simulate``, ``report``, ``serve``, ...) calls
:func:`setup_logging` once, before any work. A process that fedsynth does not start itself,
a Flower worker running a site or the ServerApp that ``flwr run`` starts, calls
:func:`ensure_logging`: it shows fedsynth's lines there unless something already does.
"""

from __future__ import annotations

import logging
import os

from fedsynth.progress import console

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(name)s: %(message)s"  # the host process (Ray, flwr run) stamps its own time and origin
NOISY = ("flwr", "ray", "alembic", "matplotlib", "PIL", "filelock", "urllib3")  # below WARNING only with -v


def setup_logging(verbose: bool) -> None:
    """Rich, wrapped lines on a terminal; plain, unwrapped, uncoloured lines with a time stamp
    when the output goes to a file or a pipe (and Ray's worker lines without colour codes)."""
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = PLAIN_FORMAT
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def ensure_logging() -> None:
    """fedsynth's lines at INFO on stderr in a process whose logging nobody set up (a Flower worker,
    ``flwr run``'s ServerApp, which streams them to ``flwr run --stream``). Nothing changes where
    fedsynth's logger or the root logger already has a handler (the CLI's, a test's)."""
    ours = logging.getLogger("fedsynth")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(WORKER_FORMAT))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # a root handler set up later in the worker must not print each line again
