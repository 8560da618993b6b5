"""A deployed site's own data, named by its SuperNode's node config.

    flower-supernode ... --node-config 'site-name="site-a" data-path="/data/cxr"'

The site loads its files (any source :func:`fedsynth.data.ingest.load_source` reads) at
the run's resolution and keeps a patient-disjoint local test split: the source's own
``test`` split when it has one, else ``data.test_fraction`` of its patients.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

from fedsynth.config import RunConfig
from fedsynth.data.ingest import load_source
from fedsynth.data.partition import SiteSplit, partition

log = logging.getLogger("fedsynth.client")


@functools.lru_cache(maxsize=2)
def _load(path: str, name: str, resolution: int, seed: int, test_fraction: float) -> SiteSplit:
    ds, report = load_source(path, resolution)
    log.info("%s: %s", name, report.summary())
    for skipped in report.skipped:
        log.warning("%s: skipped %s: %s", name, skipped.path, skipped.reason)
    (split,) = partition(ds, 1, seed=seed, test_fraction=test_fraction, min_site_images=2)
    return replace(split, name=name)


def deployed_site_data(node_config: dict, config: RunConfig) -> SiteSplit:
    path = str(node_config["data-path"])
    name = str(node_config.get("site-name") or path.rstrip("/").split("/")[-1])
    return _load(path, name, config.data.resolution, config.run.seed, config.data.test_fraction)
