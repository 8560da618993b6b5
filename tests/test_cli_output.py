"""The CLI's output off a terminal: plain lines a log file can hold (no colour codes, no wrapping)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys


def test_log_lines_are_plain_when_not_a_terminal(tmp_path):
    code = ("import logging; from fedsynth.logging_setup import setup_logging; setup_logging(False); "
            "logging.getLogger('fedsynth.site').info('site-0: ' + 'x' * 300)")
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "40"}
    env.pop("FORCE_COLOR", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr  # one line, not wrapped at 40 columns
    assert "\x1b[" not in out.stderr and "fedsynth.site: site-0: " + "x" * 300 in lines[0]
    assert lines[0][:4].isdigit(), "a time stamp first"


def test_ray_lines_lose_their_colour_codes_off_a_terminal(monkeypatch):
    from fedsynth.logging_setup import setup_logging

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    setup_logging(False)  # pytest captures the output: not a terminal
    assert os.environ.get("RAY_COLOR_PREFIX") == "0"
    logging.getLogger().handlers.clear()


def test_every_option_says_what_it_does():
    import click
    from typer.main import get_command

    from fedsynth.cli import app

    missing = []

    def walk(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        missing.extend(f"{' '.join(path)} {p.name}" for p in command.params
                       if isinstance(p, click.Option) and not p.help and p.name != "help")

    walk(get_command(app), [])
    assert missing == []


def _commands(command, path=()):
    import click

    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def test_every_argument_says_what_it_does_in_the_rendered_help():
    """Each positional argument's help text reaches --help as a user sees it (click 8.5 with Typer
    dropped it silently: an argument showed only its type)."""
    import re

    import click
    from typer.main import get_command
    from typer.testing import CliRunner

    from fedsynth.cli import app

    checked, missing = 0, []
    for path, command in _commands(get_command(app)):
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if not arguments:
            continue
        out = CliRunner().invoke(app, [*path, "--help"], terminal_width=100).output
        flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())  # the rendered panel, unwrapped
        for p in arguments:
            words = " ".join((getattr(p, "help", None) or "").split()[:4])
            checked += 1
            if not words or words not in flat:
                missing.append(f"{' '.join(path)} {p.name}")
    assert checked >= 10 and missing == []


def test_help_answers_without_importing_torch_or_flower():
    out = subprocess.run([sys.executable, "-c", "import sys; from fedsynth.cli import app\n"
                          "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
                          "print(sorted(m for m in ('torch', 'flwr', 'ray') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
