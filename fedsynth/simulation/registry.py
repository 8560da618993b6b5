"""The simulated sites' keys: what each hospital would do before joining, done for all of them.

Every simulated site gets an Ed25519 key pair in its own state directory (its private key
stays there, as at a hospital), and the server is handed the public keys, exactly as a
deployment lists them in ``federation.site_keys``.
"""

from __future__ import annotations

from pathlib import Path

from fedsynth.client.site_data import simulated_site_state
from fedsynth.config import RunConfig
from fedsynth.data.partition import site_name


def simulation_registry(config: RunConfig, sites_root: str | Path) -> dict[str, Path]:
    """Give every simulated site a key pair (as each hospital would) and return the public
    keys the server registers, by site name. ``sites_root``: the run's ``sites/`` folder."""
    out = {}
    for i in range(config.federation.num_sites):
        state = simulated_site_state(config, sites_root, site_name(i))
        out[state.name] = state.ensure_keys()
    return out
