"""The ServerApp that Flower's own launcher starts (``flwr run .``; see ``pyproject.toml``).

It composes the run from the config named in the run config (``config``, a YAML path;
empty = the built-in demo): in a deployment (``federation.site_keys`` set) the server trusts
those keys; in a simulation federation it first gives every simulated site its key pair,
as :func:`fedsynth.simulation.simulate` does. The run directory's path is made absolute
before anything travels, so the simulated sites find their folders in it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsynth.config import load_config
from fedsynth.logging_setup import ensure_logging
from fedsynth.rundir import METRICS_FILE, RunDir
from fedsynth.server.server_app import deployment_registry, serve
from fedsynth.simulation.engine import serve_simulation

log = logging.getLogger("fedsynth.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Flower streams the ServerApp's output to `flwr run --stream`: make fedsynth's lines part of it
    ensure_logging()
    path = str(context.run_config.get("config", "") or "")
    config = load_config(Path(path) if path else None)
    config.run.output_dir = str(Path(config.run.output_dir).resolve())
    run_dir = RunDir.create(config)
    log.info("run %s: writing to %s", run_dir.run_id, run_dir.path)
    if config.federation.site_keys:
        metrics = serve(grid, config, run_dir, deployment_registry(config))
    else:
        metrics = serve_simulation(grid, config, run_dir)
    auroc = metrics.pooled.auroc if metrics.pooled else None
    log.info("run %s finished: pooled AUROC %s; metrics in %s", run_dir.run_id, auroc, run_dir.file(METRICS_FILE))
