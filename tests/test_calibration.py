"""Calibration from the sites' histograms: a temperature fitted on held-out real images, metered and recorded."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.classifier.metrics import ScoreHistogram
from fedsynth.classifier.temperature import (
    calibration_edges,
    expected_calibration_error,
    fit_temperature,
    threshold_after,
)


def _histogram(true_temperature: float, n: int = 20000, seed: int = 0) -> ScoreHistogram:
    """Labels drawn from sigmoid(z / T): a classifier whose logits z are overconfident by T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z / true_temperature))).astype(int)
    return ScoreHistogram.from_scores(labels, 1 / (1 + np.exp(-z)), calibration_edges())


@pytest.mark.parametrize("true_t", [0.7, 1.0, 2.5])
def test_the_temperature_is_recovered_from_histograms(true_t):
    hists = [_histogram(true_t, seed=s) for s in range(3)]  # three sites
    t = fit_temperature(hists, calibration_edges())
    assert t == pytest.approx(true_t, rel=0.1)
    before = expected_calibration_error(hists, calibration_edges())
    after = expected_calibration_error(hists, calibration_edges(), rescale=1 / t)
    assert after < 0.02 and (true_t == 1.0 or after < before)


def test_one_class_leaves_the_classifier_as_it_was():
    h = ScoreHistogram.from_scores(np.ones(50, int), np.full(50, 0.9), calibration_edges())
    assert fit_temperature([h], calibration_edges()) == 1.0


def test_the_threshold_is_chosen_on_the_calibrated_scores():
    hists = [_histogram(2.0)]
    t = fit_temperature(hists, calibration_edges())
    thr = threshold_after(hists, calibration_edges(), t, "youden")
    assert 0.2 < thr < 0.8


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_a_federation_calibrates_on_held_out_images_once_per_run(tiny_config):
    from fedsynth.client.evaluation import EvaluationRefused
    from fedsynth.client.site import Site
    from fedsynth.client.site_data import simulated_site_state, simulated_sites
    from fedsynth.protocol import EvaluateRequest
    from fedsynth.rundir import RunDir
    from fedsynth.server.substitution import run_substitution
    from fedsynth.simulation.local import LocalTransport
    from fedsynth.simulation.registry import simulation_registry

    cfg = tiny_config
    cfg.calibration.enabled = True
    cfg.data.phantom.n_images = 300
    cfg.evaluation.fidelity = cfg.evaluation.site_baselines = False
    run_dir = RunDir.create(cfg)
    registry = simulation_registry(cfg, run_dir.sites_dir)
    splits = simulated_sites(cfg)
    for s in splits:  # held out of training, apart from the test split
        assert s.calibration is not None and len(s.calibration)
        assert not set(s.calibration.patient_keys()) & set(s.train.patient_keys())
        assert not set(s.calibration.patient_keys()) & set(s.test.patient_keys())
    sites = [Site(s, simulated_site_state(cfg, run_dir.sites_dir, s.name), None, device="cpu",
                  consortium_keys=registry) for s in splits]
    m = run_substitution(cfg, LocalTransport(sites), run_dir, registry)
    cal = m.calibration
    assert cal["applied"] and cal["sites"] == ["site-0", "site-1", "site-2"] and cal["temperature"] > 0
    assert cal["n_images"] == sum(len(s.calibration) for s in splits)
    assert {"test_ece_before", "test_ece_after"} <= set(cal)
    entries = sites[0].state.ledger().entries()
    assert [e["details"].get("statistic", "")[:11] for e in entries if e["type"] == "evaluation"] == \
        ["calibration", "evaluation "]
    from fedsynth.classifier.train import Classifier

    clf = Classifier.load(run_dir.file("classifier.safetensors"))
    assert clf.meta["temperature"] == pytest.approx(cal["temperature"])
    with pytest.raises(EvaluationRefused, match="once per run"):
        sites[0].calibrate(clf, cfg, EvaluateRequest(m.run_id, cfg, clf.header(), clf.state_dict()))


def test_calibration_is_off_by_default_and_leaves_the_splits_as_they_were(tiny_config):
    from fedsynth.client.site_data import simulated_sites

    before = simulated_sites(tiny_config)
    assert all(s.calibration is None for s in before)
    tiny_config.calibration.enabled = True
    after = simulated_sites(tiny_config)
    for a, b in zip(after, before):
        assert np.array_equal(a.test.images, b.test.images), "the test split does not move"
        assert len(a.train) + len(a.calibration) == len(b.train)
