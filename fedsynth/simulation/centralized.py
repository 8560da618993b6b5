"""``centralized-real``: the classifier on the sites' real training images pooled in one place.

Possible only in a simulation, where one process can read every site's data, and the
upper bound the federated modes are measured against. The sites still evaluate it on
their own real test splits, through the server's transport, like every other mode.
"""

from __future__ import annotations

from pathlib import Path

from flwr.serverapp import Grid

from fedsynth.client.site_data import simulated_sites
from fedsynth.config import RunConfig
from fedsynth.data.dataset import concat
from fedsynth.data.labels import class_indices
from fedsynth.errors import ConfigError
from fedsynth.metrics_schema import RunMetrics
from fedsynth.progress import ProgressFactory, no_progress
from fedsynth.rundir import RunDir
from fedsynth.server.modes import run_mode
from fedsynth.server.record import Contribution, RunRecord
from fedsynth.server.results import evaluate_and_report, train_on_pool
from fedsynth.server.transport import Transport

CENTRALIZED_WARNING = (
    "CENTRALIZED: the sites' real training images were pooled in one place. This is the simulation-only "
    "upper bound, not something a federation can do."
)


def run_centralized(config: RunConfig, transport: Transport, run_dir: RunDir, registry: dict[str, Path],
                    progress: ProgressFactory = no_progress) -> RunMetrics:
    if config.federation.site_keys:
        raise ConfigError("run.mode=centralized-real pools real images in one place: it exists only in simulation")
    record = RunRecord(warnings=[CENTRALIZED_WARNING])
    sites = simulated_sites(config)
    pool = concat([s.train for s in sites])
    record.contributions = [Contribution(s.name, "real_data", {"n_train": len(s.train), **s.train.class_counts()},
                                         False, {}, bool(s.train.phantom)) for s in sites]
    clf = train_on_pool(config, pool.images, class_indices(pool, config.data.label_set), "real (pooled centrally)",
                        pool.phantom,
                        [s.name for s in sites], run_dir, record, progress)
    return evaluate_and_report(config, transport, run_dir, clf, record, registry=registry)


def simulation_mode(config: RunConfig, grid: Grid, transport: Transport, run_dir: RunDir,
                    registry: dict[str, Path], progress: ProgressFactory = no_progress,
                    on_round=None) -> RunMetrics:
    """Every mode a simulation can run: the federation's own, and centralized-real."""
    if config.run.mode == "centralized-real":
        return run_centralized(config, transport, run_dir, registry, progress)
    return run_mode(config, grid, transport, run_dir, registry, progress, on_round)
