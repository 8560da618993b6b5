"""Run a whole federation on one machine with Flower's simulation engine."""

from __future__ import annotations

import logging
import os
import warnings

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError
from fedsynth.server.orchestrator import ProgressFactory, no_progress
from fedsynth.server.rundir import METRICS_FILE, RunDir

log = logging.getLogger("fedsynth.server")


def backend_config(config: RunConfig) -> dict:
    fed = config.federation
    return {
        "client_resources": {"num_cpus": fed.cpus_per_site, "num_gpus": fed.gpus_per_site},
        "init_args": {"num_cpus": max(os.cpu_count() or 1, int(fed.cpus_per_site)), "logging_level": logging.ERROR,
                      "log_to_driver": True},
    }


def simulate(
    config: RunConfig,
    run_dir: RunDir | None = None,
    verbose: bool = False,
    progress: ProgressFactory = no_progress,
) -> tuple[RunDir, dict]:
    """Create the run directory, run the federation in Flower's simulation engine and
    return (run directory, metrics). Raises FederationError if the run could not finish."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fedsynth.client.client_app import app as client_app
    from fedsynth.server.server_app import make_server_app

    run_dir = run_dir or RunDir.create(config)
    result: dict = {}
    server_app = make_server_app(config, run_dir, on_done=result.update, progress=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=config.federation.num_sites,
                backend_config=backend_config(config),
                verbose_logging=verbose,
            )
        except Exception as err:
            cause = err.__cause__ or err
            if isinstance(cause, FederationError):
                raise cause from None
            raise FederationError(f"the simulation stopped: {cause}") from err
    if not result:
        if (run_dir.path / METRICS_FILE).is_file():
            import json

            result = json.loads((run_dir.path / METRICS_FILE).read_text())
        else:
            raise FederationError(f"the simulation ended without results; see the log above (run dir {run_dir.path})")
    return run_dir, result
