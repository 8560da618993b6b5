"""The run modes a federation can run, server side. Substitution is fedsynth's own
(:mod:`fedsynth.server.substitution`); the others are what a user would otherwise pick, run
in the same harness on the same sites and test splits:

* ``federated``: FedAvg over the generator's weights (DP-SGD at each site, budgets
  composed across rounds in each ledger), then the server samples the global generator and
  trains the classifier on those synthetic images only;
* ``fedavg-classifier``: classic federated learning of the classifier on the sites' real
  images (DP-SGD at each site when ``privacy`` is set).

``centralized-real`` pools the sites' real images, which only a simulation can do: it lives
in :mod:`fedsynth.simulation.centralized`. Every mode ends the same way: each site
evaluates the classifier on its real test split (:mod:`fedsynth.server.results`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.serverapp import Grid

from fedsynth.classifier.train import Classifier, build_trainable
from fedsynth.config import RunConfig
from fedsynth.data.dataset import from_uint8, to_uint8
from fedsynth.errors import ConfigError, FederationError
from fedsynth.evaluation.grids import image_grid
from fedsynth.generators import build_generator
from fedsynth.metrics_schema import RunMetrics
from fedsynth.progress import ProgressFactory, no_progress
from fedsynth.protocol import CLASSIFIER_ROUND, GENERATOR_ROUND
from fedsynth.rundir import CLASSIFIER_FILE, GENERATOR_FILE, RunDir
from fedsynth.server.record import Contribution, RunRecord, SiteFailure
from fedsynth.server.results import evaluate_and_report, train_on_pool
from fedsynth.server.rounds import RoundsState, run_rounds
from fedsynth.server.substitution import run_substitution
from fedsynth.server.transport import Transport
from fedsynth.torch_utils import exchangeable, load_exchangeable, seeded

log = logging.getLogger("fedsynth.server")


def run_mode(
    config: RunConfig,
    grid: Grid,
    transport: Transport,
    run_dir: RunDir,
    registry: dict[str, Path],
    progress: ProgressFactory = no_progress,
    on_round=None,
) -> RunMetrics:
    mode = config.run.mode
    if mode == "substitution":
        return run_substitution(config, transport, run_dir, registry, progress)
    if mode == "federated":
        return run_federated_generator(config, grid, transport, run_dir, registry, progress, on_round)
    if mode == "fedavg-classifier":
        return run_fedavg_classifier(config, grid, transport, run_dir, registry, on_round)
    if mode == "centralized-real":
        raise ConfigError("run.mode=centralized-real pools real images in one place: it exists only in simulation "
                          "(fedsynth simulate)")
    raise ConfigError(f"unknown run.mode {mode!r}")


def _record_rounds(record: RunRecord, state: RoundsState) -> None:
    """What the rounds leave in the run's record: contributions, failures, bytes, history."""
    for site, info in sorted(state.sites.items()):
        rounds = [h["round"] for h in state.history if site in h.get("sites", [])]
        record.contributions.append(Contribution(site, "training", {**info, "rounds": rounds},
                                                 bool(info.get("private")), dict(info.get("privacy", {})),
                                                 bool(info.get("phantom"))))
    record.failures += [SiteFailure(**f) for f in state.failures]
    for site, n in state.bytes_sent.items():
        record.count_bytes(site, n)
    record.extra.update(rounds=state.history, resumed_from=state.resumed_from)


def run_federated_generator(config, grid, transport, run_dir, registry, progress, on_round) -> RunMetrics:
    record = RunRecord()
    seed = config.run.seed
    init = build_generator(config.generator, config.data.resolution, seed=seed, device="cpu",
                           classes=config.data.label_set)
    with record.timed("rounds"):
        weights, state = run_rounds(config, grid, run_dir, registry, GENERATOR_ROUND, init.training_state(),
                                    on_round)
    gen = build_generator(config.generator, config.data.resolution, seed=seed, device=config.run.device,
                          classes=config.data.label_set)
    gen.load_training_state(weights)
    if gen.statistics_only:  # the sites sent their noisy statistics; fitting to their average is post-processing
        log.info("fitting the generator to the pooled statistic of %d site(s)", len(state.sites))
        with record.timed("generator"), progress("generator on the pooled statistic",
                                                 config.generator.steps) as on_step:
            gen.fit_statistic(on_step)
    gen.save(run_dir.file(GENERATOR_FILE))
    n = config.release.n_per_class * max(1, len(state.sites))
    # every class the fit learnt (a pooled dp-merf target the noise outweighs is left out, with a reason)
    for c, reason in gen.unfitted_reasons.items():
        log.warning("the global generator left out class %s: %s", gen.classes[c], reason)
    if not gen.fitted_classes:
        raise FederationError("the pooled statistic holds no class with a usable target: " +
                              "; ".join(f"{gen.classes[c]}: {r}" for c, r in gen.unfitted_reasons.items()))
    labels = np.repeat(np.asarray(gen.fitted_classes, dtype=np.int64), n)
    images = gen.sample(len(labels), labels, seed=seed + 1)
    if not np.isfinite(images).all():
        raise FederationError("the global generator produces non-finite images" + (
            f" after client-level DP noise (noise multiplier {config.federation.client_dp.noise_multiplier}, "
            f"clipping norm {config.federation.client_dp.clipping_norm}, {len(state.sites)} sites): with few "
            "sites the noise overwhelms the model" if config.federation.client_dp else ""))
    _record_rounds(record, state)
    phantom = any(c.phantom for c in record.contributions)
    images = from_uint8(to_uint8(images))  # exactly what is kept, as for a site's release
    run_dir.save_release("global", to_uint8(images), labels, phantom)
    k = config.evaluation.grid_images
    image_grid([(f"synthetic {name}", images[labels == c][:k]) for c, name in enumerate(gen.classes)],
               run_dir.grid_path("global"), "global generator after federated averaging", phantom=phantom)
    clf = train_on_pool(config, images, labels, f"synthetic (federated {gen.family})", phantom,
                        [c.site for c in record.contributions], run_dir, record, progress)
    return evaluate_and_report(config, transport, run_dir, clf, record,
                               synthetic={"global": (to_uint8(images), labels)}, registry=registry)


def run_fedavg_classifier(config, grid, transport, run_dir, registry, on_round) -> RunMetrics:
    record = RunRecord()
    private = config.privacy is not None
    arch, res, width = config.classifier_arch(), config.data.resolution, config.classifier.width
    with seeded(config.run.seed):
        init = build_trainable(arch, res, private, width=width)
    with record.timed("rounds"):
        weights, state = run_rounds(config, grid, run_dir, registry, CLASSIFIER_ROUND,
                                    exchangeable(init.state_dict()), on_round)
    _record_rounds(record, state)
    header = {
        "arch": arch, "resolution": res, "threshold": 0.5, "dp_compatible": private, "width": width,
        "trained_on": "real (federated averaging)", "threshold_rule": "fixed 0.5 (the server holds no validation "
        "data in classic FL)", "phantom": any(c.phantom for c in record.contributions),
        "intensity": config.classifier.intensity,
    }
    model = build_trainable(arch, res, private, width=width)
    load_exchangeable(model, weights)
    clf = Classifier.from_state(header, model.state_dict(), device=config.run.device)
    clf.save(run_dir.file(CLASSIFIER_FILE))
    return evaluate_and_report(config, transport, run_dir, clf, record, registry=registry)
