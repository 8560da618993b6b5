"""Shared fixtures. Tests run on a 2-core CPU with no GPU and no network."""

from __future__ import annotations

import inspect
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsynth.config import RunConfig, load_config
from fedsynth.data.phantom import make_phantoms

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

def _cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (PYTEST_XDIST_AUTO_NUM_WORKERS overrides). Each
    worker holds torch, and some start a Ray federation; more could run a many-core CI machine out
    of memory."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return min(4, _cores())


# The cores shared out among pytest-xdist's workers, at most 2 torch threads each (what the tests
# were written and checked with), so that parallel tests do not oversubscribe the machine.
torch.set_num_threads(max(1, min(2, _cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


def tiny_overrides(tmp_path: Path) -> list[str]:
    """A federation small enough for a unit test: 3 sites, 16 px, a few epochs."""
    return [
        f"run.output_dir={tmp_path / 'runs'}",
        "run.device=cpu",
        "data.resolution=16",
        "data.phantom.n_images=150",
        "generator.epochs=2",
        "generator.base_channels=8",
        "generator.latent_dim=16",
        "generator.batch_size=32",
        "release.n_per_class=24",
        "release.min_class_images=5",
        "classifier.epochs=2",
        "classifier.width=8",  # a sixteenth of the default's arithmetic: these runs test behaviour, not AUROC
        "evaluation.bootstrap=20",
        "evaluation.grid_images=4",
    ]


def few_of_class_zero(labels: np.ndarray, n0: int) -> np.ndarray:
    """Indices keeping only the first ``n0`` images of class 0 and every other image."""
    return np.concatenate([np.flatnonzero(labels == 0)[:n0], np.flatnonzero(labels != 0)])


def simulated_site_of(tmp_path: Path, cfg: RunConfig, keep=None):
    """(site, its state, its data): the config's first simulated site, its training images cut to the
    indices ``keep(labels)`` returns when given, its keys made."""
    from dataclasses import replace

    from fedsynth.client.site import Site
    from fedsynth.client.site_data import simulated_site_state, simulated_sites

    data = simulated_sites(cfg)[0]
    if keep is not None:
        data = replace(data, train=data.train.subset(keep(data.train.labels)))
    state = simulated_site_state(cfg, tmp_path / "sites", data.name)
    state.ensure_keys()
    return Site(data, state, None, device="cpu"), state, data


@pytest.fixture
def tiny_config(tmp_path: Path) -> RunConfig:
    return load_config(None, tiny_overrides(tmp_path))


@pytest.fixture
def fixed_dp_noise(monkeypatch):
    """The DP noise and Poisson batches from a generator seeded 0 at every draw (production draws
    them from OS entropy): a deterministic test of one mechanism."""
    monkeypatch.setattr("fedsynth.privacy.dp.entropy_generator", lambda: torch.Generator().manual_seed(0))


@pytest.fixture
def seeded_dp_noise(monkeypatch):
    """Each DP draw from its own seed, 0, 1, 2, ... in the order of the draws: a federation run in
    this process (sites one after another) is deterministic, and its sites' noise is independent
    (one seed for all would add the sites' noise up coherently in a pooled statistic)."""
    seeds = itertools.count()
    monkeypatch.setattr("fedsynth.privacy.dp.entropy_generator",
                        lambda: torch.Generator().manual_seed(next(seeds)))


@pytest.fixture(autouse=True, scope="session")
def clear_class_counts():
    """Under DP a GAN site decides which classes to release on noisy counts (noise std 20, released
    only 40 above release.min_class_images): a tiny site's 20-odd images per class would be withheld
    at random. Every test fixes that draw to counts every class clears (the tests of the decision
    itself fix their own); the mechanism, its ledger entry and its budget stay as they are."""
    from fedsynth.client.site import Site

    # session-wide, so that module-scoped federations see it too (a process the tests start, a Ray
    # worker, draws real noise: none of those runs a private GAN)
    patch = pytest.MonkeyPatch()
    patch.setattr(Site, "_count_noise", staticmethod(lambda counts, std: counts + 3 * std))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def phantoms16():
    return make_phantoms(120, 16, seed=3)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real X-rays not available at {SHARED_DATA}")
    return SHARED_DATA


def assert_images(arr: np.ndarray, n: int, size: int) -> None:
    assert arr.shape == (n, size, size)
    assert arr.dtype == np.float32
    assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1


@pytest.fixture
def flower_identity():
    """Flower stamps messages with the running task's identity; give tests one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


# ---- the quick subset -----------------------------------------------------------------------
# `pytest -m "not slow and not shared_data"` is the edit-test loop. Marking each training test
# by hand drifts as tests are added, so a test is also `slow` when its own code, or the code of
# a fixture it requests that is defined in tests/ (one level: not helpers they call), names one
# of these: a federation, a subprocess, a generator's or classifier's training, a release, or
# the web app's server. Tests these miss carry an explicit mark. Measured with
# benchmarks/speed.py (row quick_tests).
TRAINS = ("simulate(", "_serve(", "run_simulation", "subprocess", "Popen", ".fit(", "train_classifier(",
          "train_local(", "CliRunner", "serve_app(", "TestClient(", "make_release(", "release(")




def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow"):
            continue
        funcs = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info else ()):
            funcs += [d.func for d in defs if str(getattr(d, "baseid", "")).startswith("tests")]
        if any(f is not None and _source_names(f, TRAINS) for f in funcs):
            item.add_marker(pytest.mark.slow)
    # whole federations first, then the other slow tests, then the quick ones (a stable sort, so
    # each group keeps its order): pytest-xdist hands tests out in this order, and an end-to-end
    # run started last would leave one worker busy alone at the end
    def group(item) -> int:
        if item.get_closest_marker("slow") is None:
            return 2
        return 0 if _source_names(getattr(item, "function", None), END_TO_END) else 1

    items.sort(key=group)


END_TO_END = ("simulate(", "_serve(", "run_simulation", "subprocess", "Popen", '"simulate"')


def _source_names(func, tokens) -> bool:
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return any(token in src for token in tokens)
