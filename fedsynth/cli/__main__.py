"""python -m fedsynth.cli: the same app as the fedsynth command."""

from fedsynth.cli import app

app()
