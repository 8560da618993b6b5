"""What a site measures beyond the server's classifier, on its own real images.

Given a sample of the pooled synthetic images (synthetic images may travel; real ones
may not), the site computes:

* fidelity of its own release and of the pooled sample against its real images, in an
  encoder's feature space (:mod:`fedsynth.evaluation.fidelity`);
* utility baselines (the lung-ultrasound study's comparisons): the same classifier
  trained on the site's own real training images (train-real-test-real) and on real
  plus synthetic (augmentation), both tested on the site's real test split.

Only figures and class-wise score histograms leave the site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedsynth.classifier.metrics import ScoreHistogram, evaluate_scores, uniform_edges
from fedsynth.classifier.train import train_classifier
from fedsynth.config import RunConfig
from fedsynth.data.partition import SiteSplit
from fedsynth.evaluation.fidelity import CXREncoder, Encoder, InceptionEncoder, fidelity

log = logging.getLogger("fedsynth.site")


def make_encoder(config: RunConfig, data: SiteSplit, seed: int, device: str) -> Encoder:
    ev = config.evaluation
    if ev.inception_weights:
        return InceptionEncoder(ev.inception_weights, device=device)
    return CXREncoder(data.train.images, data.train.labels, epochs=ev.encoder_epochs, seed=seed,
                      origin=data.name, device=device)


def site_extras(
    data: SiteSplit,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    own: np.ndarray | None,
    config: RunConfig,
    seed: int,
    device: str,
    histogram: Callable[[np.ndarray, np.ndarray, np.ndarray], ScoreHistogram],
) -> tuple[dict[str, Any], dict[str, ScoreHistogram]]:
    """(figures, histograms) for the site's evaluation reply. ``own``: the rows of the
    sample that came from this site's release, if any."""
    ev = config.evaluation
    extra: dict[str, Any] = {}
    hists: dict[str, ScoreHistogram] = {}
    real = np.concatenate([data.train.images, data.test.images])
    if ev.fidelity:
        encoder = make_encoder(config, data, seed, device)
        extra["fidelity"] = {"pooled": fidelity(encoder, real, synthetic, seed=seed).to_dict()}
        if own is not None and own.sum() >= 10:
            extra["fidelity"]["own_release"] = fidelity(encoder, real, synthetic[own], seed=seed).to_dict()
        if len(data.test) >= 10:  # the scale: two sets of real images of this site, in the same encoder
            extra["fidelity"]["real_reference"] = fidelity(encoder, data.train.images, data.test.images,
                                                           seed=seed).to_dict()
    if ev.site_baselines and len(np.unique(data.train.labels)) == 2 and len(data.test):
        test = data.test
        arch, res = config.classifier_arch(), config.data.resolution
        utility = {}
        for name, images, labels in (
            ("trtr", data.train.images, data.train.labels),
            ("real_plus_synthetic", np.concatenate([data.train.images, synthetic]),
             np.concatenate([data.train.labels, synthetic_labels])),
        ):
            clf = train_classifier(images, labels, config.classifier, arch=arch, resolution=res, seed=seed,
                                   device=device, trained_on=name)
            probs = clf.predict_proba(test.images)
            utility[name] = evaluate_scores(test.labels, probs, clf.threshold, n_boot=ev.bootstrap,
                                            level=ev.ci_level, seed=seed).to_dict()
            utility[name]["n_train"] = int(len(labels))
            hists[name] = histogram(test.labels, probs, uniform_edges(ev.histogram_bins))
            log.info("%s: %s AUROC %.3f", data.name, name, utility[name]["auroc"] or float("nan"))
        extra["utility"] = utility
    return extra, hists
