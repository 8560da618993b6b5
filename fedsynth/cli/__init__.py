"""The ``fedsynth`` command line. Every command is a thin call into the packages.

Errors a user can cause print one clear message (exit code 2), never a traceback. Each
module here holds one group of commands; this one assembles them into one app.
"""

from __future__ import annotations

import typer

from fedsynth import __version__
from fedsynth.cli.data import data_app
from fedsynth.cli.deploy import deploy_app
from fedsynth.cli.generator import generate, generator_app, stress
from fedsynth.cli.privacy import audit_app, keys_app
from fedsynth.cli.run import compare, evaluate, predict, report, show_config, simulate
from fedsynth.cli.serve import serve
from fedsynth.cli.study import study_app

app = typer.Typer(
    name="fedsynth",
    help="Federated, privacy-focused synthetic chest X-rays: train a pneumonia classifier "
    "on synthetic images that hospitals release instead of their X-rays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fedsynth {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    pass


app.command()(simulate)
app.command()(report)
app.command()(compare)
app.command()(predict)
app.command()(generate)
app.command()(stress)
app.command()(evaluate)
app.command("config")(show_config)
app.command()(serve)
app.add_typer(data_app, name="data")
app.add_typer(generator_app, name="generator")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(deploy_app, name="deploy")
app.add_typer(study_app, name="study")

__all__ = ["app"]
