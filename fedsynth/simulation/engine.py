"""Run a whole federation on one machine: the composition root of server and sites.

The pattern of Flower's ``run_simulation(server_app=..., client_app=...)``: this module
builds both apps and hands them to an engine. It gives every simulated site its key pair
and the server the public keys (:func:`~fedsynth.simulation.registry.simulation_registry`),
and tells the sites where their own folders are (the run directory's ``sites/``), so
neither the server nor the wire needs to know about simulated sites.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError, FedsynthError
from fedsynth.metrics_schema import RunMetrics
from fedsynth.progress import ProgressFactory, no_progress
from fedsynth.rundir import METRICS_FILE, RunDir

log = logging.getLogger("fedsynth.server")


def backend_config(config: RunConfig) -> dict:
    fed = config.federation
    return {
        "client_resources": {"num_cpus": fed.site_cpus(), "num_gpus": fed.gpus_per_site},
        "init_args": {"num_cpus": max(os.cpu_count() or 1, math.ceil(fed.site_cpus())), "logging_level": logging.ERROR,
                      "log_to_driver": True},
    }


def simulate(
    config: RunConfig,
    run_dir: RunDir | None = None,
    verbose: bool = False,
    progress: ProgressFactory = no_progress,
    engine: str = "ray",
    on_round=None,
) -> tuple[RunDir, RunMetrics]:
    """Create the run directory (or continue ``run_dir``), run the federation and return
    (run directory, metrics). ``engine``: "ray" is Flower's simulation engine;
    "inprocess" delivers messages by calling the ClientApp in this process (no Ray).
    Raises FederationError if the run could not finish."""
    if engine not in ("ray", "inprocess"):
        raise ValueError(f"unknown engine {engine!r} (use ray or inprocess)")
    from fedsynth.client.client_app import make_client_app
    from fedsynth.simulation.centralized import simulation_mode
    from fedsynth.simulation.registry import simulation_registry

    run_dir = run_dir or RunDir.create(config)
    client_app = make_client_app(sites_root=run_dir.sites_dir)
    if engine == "inprocess":
        return run_dir, _simulate_inprocess(config, run_dir, client_app, progress, on_round)
    registry = simulation_registry(config, run_dir.sites_dir)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fedsynth.server.server_app import make_server_app

    if not verbose:  # Flower logs run_simulation's deprecation at WARNING on every run
        logging.getLogger("flwr").setLevel(logging.ERROR)
    result: list[RunMetrics] = []
    server_app = make_server_app(config, run_dir, registry, on_done=result.append, progress=progress,
                                 on_round=on_round, runner=simulation_mode)
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
    if result:
        return run_dir, result[0]
    if (run_dir.path / METRICS_FILE).is_file():
        return run_dir, run_dir.read_metrics()
    raise FederationError(f"the simulation ended without results; see the log above (run dir {run_dir.path})")


def serve_simulation(grid, config: RunConfig, run_dir: RunDir, progress: ProgressFactory = no_progress,
                     on_round=None) -> RunMetrics:
    """The server's side of a simulated federation on any Grid: the simulated sites' keys
    registered, every mode a simulation can run (centralized-real included)."""
    from fedsynth.server.server_app import serve
    from fedsynth.simulation.centralized import simulation_mode
    from fedsynth.simulation.registry import simulation_registry

    return serve(grid, config, run_dir, simulation_registry(config, run_dir.sites_dir), progress, on_round,
                 runner=simulation_mode)


def _simulate_inprocess(config, run_dir, client_app, progress, on_round) -> RunMetrics:
    from fedsynth.simulation.inprocess import InProcessGrid

    grid = InProcessGrid(client_app, config.federation.num_sites)
    try:
        return serve_simulation(grid, config, run_dir, progress, on_round)
    except FedsynthError:
        raise
    except Exception as err:  # as the Ray engine does: one clear line, the traceback in the log
        log.exception("the simulation stopped")
        raise FederationError(f"the simulation stopped: {type(err).__name__}: {err}") from err
    finally:
        grid.close()
