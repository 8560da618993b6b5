"""A deployed site: its own settings, named by its SuperNode's node config.

    flower-supernode ... --node-config 'site-config="/etc/fedsynth/site-a.yaml"'

The site config (:class:`fedsynth.config.SiteConfig`) says where the site's images are,
where its keys and ledger live, and its privacy budget: the site decides these, not the
server. The site loads its files (anything :func:`fedsynth.data.ingest.load_source`
reads) at the run's resolution and keeps a patient-disjoint local test split: the
source's own ``test`` split when it has one, else ``data.test_fraction`` of its patients.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path

from fedsynth.config import RunConfig, SiteConfig, load_site_config
from fedsynth.data.ingest import load_source
from fedsynth.data.partition import SiteSplit, partition
from fedsynth.privacy.dp import Budget
from fedsynth.privacy.state import SiteState

log = logging.getLogger("fedsynth.client")


@functools.lru_cache(maxsize=2)
def _load(path: str, name: str, resolution: int, seed: int, test_fraction: float,
          calibration: float = 0.0) -> SiteSplit:
    ds, report = load_source(path, resolution)
    log.info("%s: %s", name, report.summary())
    for skipped in report.skipped:
        log.warning("%s: skipped %s: %s", name, skipped.path, skipped.reason)
    (split,) = partition(ds, 1, seed=seed, test_fraction=test_fraction, min_site_images=2,
                         calibration_fraction=calibration)
    return replace(split, name=name)


def site_config_from_node(node_config: dict) -> SiteConfig:
    if "site-config" not in node_config:
        raise ValueError("this SuperNode has no 'site-config' in its node config (a path to the site's YAML)")
    return load_site_config(str(node_config["site-config"]))


def deployed_site(node_config: dict, config: RunConfig) -> tuple[SiteSplit, SiteState, SiteConfig]:
    site = site_config_from_node(node_config)
    for warning in site.unsafe_policy():  # the site's own log: its operator decides, the review reads it
        log.warning("%s: %s", site.name, warning)
    cal = config.calibration
    data = _load(site.data_path, site.name, config.data.resolution, config.run.seed, config.data.test_fraction,
                 cal.fraction if cal.enabled else 0.0)
    state = SiteState(site.name, Path(site.state_dir), Budget(site.budget.epsilon, site.budget.delta))
    return data, state, site
