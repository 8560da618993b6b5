"""Flower ServerApp: carries the server's requests over Flower's Grid.

No ML or privacy logic lives here: :func:`serve` wraps the Grid in a
:class:`~fedsynth.server.transport.GridTransport` and runs the configured mode with the
site keys the server trusts. Who builds the app decides those keys: a deployment lists
them in ``federation.site_keys`` (:func:`deployment_registry`); a simulation gives each
simulated site a key pair first (the composition root, :mod:`fedsynth.simulation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsynth.config import RunConfig
from fedsynth.errors import ConfigError
from fedsynth.metrics_schema import RunMetrics
from fedsynth.progress import ProgressFactory, no_progress
from fedsynth.rundir import RunDir
from fedsynth.server.modes import run_mode
from fedsynth.server.transport import GridTransport, Transport

log = logging.getLogger("fedsynth.server")

ModeRunner = Callable[..., RunMetrics]
"""``run_mode``'s signature: (config, grid, transport, run_dir, registry, progress, on_round)."""


def deployment_registry(config: RunConfig) -> dict[str, Path]:
    """The public keys a deployed server trusts, by site name (``federation.site_keys``)."""
    if not config.federation.site_keys:
        raise ConfigError("federation.site_keys is empty: a deployed server needs each site's public key")
    registry = {name: Path(p) for name, p in config.federation.site_keys.items()}
    missing = [f"{n}: {p}" for n, p in registry.items() if not p.is_file()]
    if missing:
        raise ConfigError("federation.site_keys: public key file(s) not found: " + ", ".join(missing))
    return registry


def serve(grid: Grid, config: RunConfig, run_dir: RunDir, registry: dict[str, Path],
          progress: ProgressFactory = no_progress, on_round=None, runner: ModeRunner = run_mode) -> RunMetrics:
    transport: Transport = GridTransport(grid, config.federation.num_sites, config.federation.site_timeout_s,
                                         config.federation.connect_timeout_s)
    return runner(config, grid, transport, run_dir, registry, progress, on_round)


def make_server_app(
    config: RunConfig,
    run_dir: RunDir,
    registry: dict[str, Path],
    on_done: Callable[[RunMetrics], None] | None = None,
    progress: ProgressFactory = no_progress,
    on_round=None,
    runner: ModeRunner = run_mode,
) -> ServerApp:
    """A ServerApp bound to a config, a run directory and the keys it trusts."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        metrics = serve(grid, config, run_dir, registry, progress, on_round, runner)
        if on_done is not None:
            on_done(metrics)

    return app
