"""The run modes, server side. Substitution is fedsynth's own; the others are what a
user would otherwise pick, run in the same harness on the same sites and test splits:

* ``federated``: FedAvg over the GAN's weights (DP-SGD at each site, budgets composed
  across rounds in each ledger), then the server samples the global generator and trains
  the classifier on those synthetic images only;
* ``fedavg-classifier``: classic federated learning of the classifier on the sites' real
  images (DP-SGD at each site when ``privacy`` is set);
* ``centralized-real``: the classifier on the sites' real training images pooled in one
  place: possible only in a simulation, and the upper bound the others are measured
  against.

Every mode ends the same way: each site evaluates the classifier on its real test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.serverapp import Grid

from fedsynth.classifier.train import Classifier, build_trainable
from fedsynth.config import RunConfig
from fedsynth.data.dataset import CLASS_NAMES, concat, from_uint8, to_uint8
from fedsynth.errors import ConfigError, FederationError
from fedsynth.evaluation.grids import image_grid
from fedsynth.generators import build_generator
from fedsynth.generators.base import exchangeable, load_exchangeable
from fedsynth.protocol import CLASSIFIER_ROUND, GENERATOR_ROUND
from fedsynth.server.orchestrator import (
    Contribution,
    ProgressFactory,
    SiteFailure,
    Transport,
    evaluate_and_report,
    no_progress,
    run_substitution,
    save_release,
    train_on_pool,
)
from fedsynth.server.rounds import RoundsState, run_rounds
from fedsynth.server.rundir import CLASSIFIER_FILE, RunDir

log = logging.getLogger("fedsynth.server")

CENTRALIZED_WARNING = (
    "CENTRALIZED: the sites' real training images were pooled in one place. This is the simulation-only "
    "upper bound, not something a federation can do."
)


def run_mode(
    config: RunConfig,
    grid: Grid,
    transport: Transport,
    run_dir: RunDir,
    registry: dict[str, Path],
    progress: ProgressFactory = no_progress,
    on_round=None,
) -> dict:
    mode = config.run.mode
    if mode == "substitution":
        return run_substitution(config, transport, run_dir, registry, progress)
    if mode == "federated":
        return run_federated_generator(config, grid, transport, run_dir, registry, progress, on_round)
    if mode == "fedavg-classifier":
        return run_fedavg_classifier(config, grid, transport, run_dir, registry, on_round)
    if mode == "centralized-real":
        return run_centralized(config, transport, run_dir, progress)
    raise ConfigError(f"unknown run.mode {mode!r}")


def _contributions(state: RoundsState) -> list[Contribution]:
    out = []
    for site, info in sorted(state.sites.items()):
        rounds = [h["round"] for h in state.history if site in h.get("sites", [])]
        out.append(Contribution(site, "training", {**info, "rounds": rounds}, bool(info.get("private")),
                                dict(info.get("privacy", {})), bool(info.get("phantom"))))
    return out


def _extra(state: RoundsState) -> dict:
    return {"rounds": state.history, "resumed_from": state.resumed_from}


def _merge_bytes(transport: Transport, state: RoundsState) -> None:
    sent = getattr(transport, "bytes_sent", None)
    if sent is not None:
        for site, n in state.bytes_sent.items():
            sent[site] = sent.get(site, 0) + n


def run_federated_generator(config, grid, transport, run_dir, registry, progress, on_round) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    seed = config.run.seed
    init = build_generator(config.generator, config.data.resolution, seed=seed, device="cpu")
    weights, state = run_rounds(config, grid, run_dir, registry, GENERATOR_ROUND, init.training_state(), on_round)
    timings["rounds_s"] = time.perf_counter() - t0
    _merge_bytes(transport, state)
    contributions = _contributions(state)
    gen = build_generator(config.generator, config.data.resolution, seed=seed, device=config.run.device)
    gen.load_training_state(weights)
    gen.save(run_dir.file("generator.safetensors"))
    n = config.release.n_per_class * max(1, len(contributions))
    labels = np.repeat(np.arange(len(CLASS_NAMES)), n)
    images = gen.sample(len(labels), labels, seed=seed + 1)
    if not np.isfinite(images).all():
        raise FederationError("the global generator produces non-finite images" + (
            f" after client-level DP noise (noise multiplier {config.federation.client_dp.noise_multiplier}, "
            f"clipping norm {config.federation.client_dp.clipping_norm}, {len(contributions)} sites): with few "
            "sites the noise overwhelms the model" if config.federation.client_dp else ""))
    phantom = any(c.phantom for c in contributions)
    images = from_uint8(to_uint8(images))  # exactly what is kept, as for a site's release
    save_release(run_dir, "global", to_uint8(images), labels, phantom)
    k = config.evaluation.grid_images
    image_grid([(f"synthetic {name}", images[labels == c][:k]) for c, name in enumerate(CLASS_NAMES)],
               run_dir.file("grids/synthetic_global.png"), "global generator after federated averaging",
               phantom=phantom)
    clf = train_on_pool(config, images, labels, "synthetic (federated GAN)", phantom, [c.site for c in contributions],
                        run_dir, timings, progress)
    failures = [SiteFailure(**f) for f in state.failures]
    return evaluate_and_report(config, transport, run_dir, clf, contributions, failures, timings, t0, _extra(state),
                               synthetic={"global": (to_uint8(images), labels)})


def run_fedavg_classifier(config, grid, transport, run_dir, registry, on_round) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    private = config.privacy is not None
    arch, res = config.classifier_arch(), config.data.resolution
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(config.run.seed)
        init = build_trainable(arch, res, private)
    initial = exchangeable(init.state_dict())
    weights, state = run_rounds(config, grid, run_dir, registry, CLASSIFIER_ROUND, initial, on_round)
    timings["rounds_s"] = time.perf_counter() - t0
    _merge_bytes(transport, state)
    contributions = _contributions(state)
    header = {
        "arch": arch, "resolution": res, "threshold": 0.5, "dp_compatible": private,
        "trained_on": "real (federated averaging)", "threshold_rule": "fixed 0.5 (the server holds no validation "
        "data in classic FL)", "phantom": any(c.phantom for c in contributions),
    }
    model = build_trainable(arch, res, private)
    load_exchangeable(model, weights)
    clf = Classifier.from_state(header, model.state_dict(), device=config.run.device)
    clf.save(run_dir.file(CLASSIFIER_FILE))
    failures = [SiteFailure(**f) for f in state.failures]
    return evaluate_and_report(config, transport, run_dir, clf, contributions, failures, timings, t0, _extra(state))


def run_centralized(config, transport, run_dir, progress) -> dict:
    if config.federation.site_keys:
        raise ConfigError("run.mode=centralized-real pools real images in one place: it exists only in simulation")
    from fedsynth.client.site_data import simulated_sites

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    sites = simulated_sites(config)
    pool = concat([s.train for s in sites])
    contributions = [Contribution(s.name, "real_data", {"n_train": len(s.train), **s.train.class_counts()}, False,
                                  {}, bool(s.train.phantom)) for s in sites]
    clf = train_on_pool(config, pool.images, pool.labels, "real (pooled centrally)", pool.phantom,
                        [s.name for s in sites], run_dir, timings, progress)
    return evaluate_and_report(config, transport, run_dir, clf, contributions, [], timings, t0,
                               warnings=[CENTRALIZED_WARNING])
