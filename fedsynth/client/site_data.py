"""Where a site's real images come from.

In a simulation every virtual site derives its share of one dataset deterministically
from the run config and its partition id, the way Flower's own simulation templates
partition a dataset: no real image crosses from one simulated site to another, and
none goes to the server. The loaded dataset is cached per process, because Flower
reuses a worker process for many messages.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fedsynth.config import DataSection, FederationSection, RunConfig
from fedsynth.data.dataset import ImageSet
from fedsynth.data.ingest import load_source
from fedsynth.data.partition import SiteSplit, partition
from fedsynth.data.phantom import make_phantoms
from fedsynth.privacy.dp import Budget
from fedsynth.privacy.state import SiteState


def load_dataset(data: DataSection, seed: int) -> ImageSet:
    if data.source == "phantom":
        p = data.phantom
        return make_phantoms(
            p.n_images,
            data.resolution,
            prevalence=p.prevalence,
            images_per_patient=p.images_per_patient,
            seed=seed,
            markers=p.markers,
            virus=p.virus,
        )
    ds, _report = load_source(data.source, data.resolution)
    return ds


@functools.lru_cache(maxsize=4)
def _partitioned(data_json: str, federation_json: str, seed: int, calibration: float = 0.0) -> tuple[SiteSplit, ...]:
    data = DataSection.model_validate(json.loads(data_json))
    fed = FederationSection.model_validate(json.loads(federation_json))
    ds = load_dataset(data, seed)
    return tuple(
        partition(
            ds,
            fed.num_sites,
            scheme=fed.partition,
            alpha=fed.dirichlet_alpha,
            seed=seed,
            test_fraction=data.test_fraction,
            min_site_images=fed.min_site_images,
            calibration_fraction=calibration,
        )
    )


def simulated_sites(config: RunConfig) -> tuple[SiteSplit, ...]:
    """All simulated sites of a run (each process computes the same split)."""
    cal = config.calibration
    return _partitioned(config.data.model_dump_json(), config.federation.model_dump_json(), config.run.seed,
                        cal.fraction if cal.enabled else 0.0)


def simulated_site(config: RunConfig, partition_id: int) -> SiteSplit:
    sites = simulated_sites(config)
    if not 0 <= partition_id < len(sites):
        raise ValueError(f"partition id {partition_id} out of range for {len(sites)} sites")
    return sites[partition_id]


def simulated_site_state(config: RunConfig, sites_root: str | Path | None, name: str) -> SiteState:
    """A simulated site's keys, ledger and budget: in ``sites.state_dir/<name>`` when the
    config names one (several runs then share budgets), else in ``sites_root/<name>`` (the
    run directory's ``sites/`` folder)."""
    if config.sites.state_dir:
        root = Path(config.sites.state_dir)
    elif sites_root:
        root = Path(sites_root)
    else:
        raise ValueError("a simulated site needs its run's sites/ folder or sites.state_dir for its keys and ledger")
    b = config.sites.budget_for(name)
    return SiteState(name, root / name, Budget(b.epsilon, b.delta))
