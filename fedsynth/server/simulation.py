"""Run a whole federation on one machine with Flower's simulation engine."""

from __future__ import annotations

import logging
import os
import warnings

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError, FedsynthError
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
    engine: str = "ray",
    on_round=None,
) -> tuple[RunDir, dict]:
    """Create the run directory (or continue ``run_dir``), run the federation and return
    (run directory, metrics). ``engine``: "ray" is Flower's simulation engine;
    "inprocess" delivers messages by calling the ClientApp in this process (no Ray).
    Raises FederationError if the run could not finish."""
    if engine == "inprocess":
        return _simulate_inprocess(config, run_dir, progress, on_round)
    if engine != "ray":
        raise ValueError(f"unknown engine {engine!r} (use ray or inprocess)")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fedsynth.client.client_app import app as client_app
    from fedsynth.server.server_app import make_server_app

    run_dir = run_dir or RunDir.create(config)
    if not verbose:  # Flower logs run_simulation's deprecation at WARNING on every run
        logging.getLogger("flwr").setLevel(logging.ERROR)
    result: dict = {}
    server_app = make_server_app(config, run_dir, on_done=result.update, progress=progress, on_round=on_round)
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


def _simulate_inprocess(config, run_dir, progress, on_round) -> tuple[RunDir, dict]:
    from fedsynth.client.client_app import app as client_app
    from fedsynth.server.inprocess import InProcessGrid
    from fedsynth.server.server_app import serve

    run_dir = run_dir or RunDir.create(config)
    grid = InProcessGrid(client_app, config.federation.num_sites)
    try:
        return run_dir, serve(grid, config, run_dir, progress, on_round)
    except FedsynthError:
        raise
    except Exception as err:  # as the Ray engine does: one clear line, the traceback in the log
        log.exception("the simulation stopped")
        raise FederationError(f"the simulation stopped: {type(err).__name__}: {err}") from err
    finally:
        grid.close()
