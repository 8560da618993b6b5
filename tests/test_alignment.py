"""Post-hoc domain alignment: a (DP) intensity histogram per site, quantile matching at the server."""

import numpy as np
import pytest

from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.config import PrivacySection, load_config
from fedsynth.errors import ConfigError
from fedsynth.evaluation.alignment import (
    class_intensity_histograms,
    intensity_histogram,
    match_by_class,
    match_histograms,
    reference_cdf,
)
from fedsynth.privacy.accounting import Mechanism, epsilon
from fedsynth.privacy.dp import BudgetExceeded, plan_training, statistic_mechanism


def test_histogram_is_a_sensitivity_one_sum():
    rng = np.random.default_rng(0)
    imgs = rng.random((20, 8, 8)).astype(np.float32)
    h = intensity_histogram(imgs, 16)
    assert h.shape == (16,) and h.sum() == pytest.approx(20)
    one_more = intensity_histogram(np.concatenate([imgs, rng.random((1, 8, 8))]), 16)
    assert np.linalg.norm(one_more - h) <= 1.0 + 1e-9


def test_matching_moves_intensities_onto_the_reference():
    rng = np.random.default_rng(1)
    reference = np.clip(rng.normal(0.3, 0.05, (50, 16, 16)), 0, 1)  # dark, narrow
    synthetic = rng.random((40, 16, 16)).astype(np.float32)  # uniform
    cdf = reference_cdf([intensity_histogram(reference, 64)])
    aligned = match_histograms(synthetic, cdf)
    assert abs(aligned.mean() - reference.mean()) < 0.01 and abs(aligned.std() - reference.std()) < 0.01
    # monotone: pixel order is kept, only the values move
    flat_s, flat_a = synthetic.ravel(), aligned.ravel()
    assert (np.diff(flat_a[np.argsort(flat_s, kind="stable")]) >= 0).all()


def test_class_histograms_keep_sensitivity_one():
    rng = np.random.default_rng(2)
    imgs, labels = rng.random((30, 8, 8)), rng.integers(0, 2, 30)
    h = class_intensity_histograms(imgs, labels, 16)
    assert h.shape == (2, 16) and h.sum(axis=1) == pytest.approx([(labels == 0).sum(), (labels == 1).sum()])
    for c in (0, 1):  # one more image, of either class, moves the whole (2, bins) array by at most 1
        more = class_intensity_histograms(np.concatenate([imgs, rng.random((1, 8, 8))]), np.append(labels, c), 16)
        assert np.linalg.norm(more - h) <= 1.0 + 1e-9


def test_each_class_is_matched_to_its_own_reference():
    """A class-balanced synthetic pool matched to class-imbalanced real data: one pooled
    reference drags both classes to the majority's intensities; per class, each keeps its own."""
    rng = np.random.default_rng(3)
    real = np.concatenate([np.clip(rng.normal(0.3, 0.05, (10, 16, 16)), 0, 1),    # class 0: dark, rare
                           np.clip(rng.normal(0.7, 0.05, (90, 16, 16)), 0, 1)])   # class 1: bright, common
    real_labels = np.array([0] * 10 + [1] * 90)
    synthetic = rng.random((40, 16, 16)).astype(np.float32)
    labels = np.array([0, 1] * 20)
    per_class = class_intensity_histograms(real, real_labels, 64)
    aligned = match_by_class(synthetic, labels, {c: reference_cdf([per_class[c]]) for c in (0, 1)})
    assert abs(aligned[labels == 0].mean() - 0.3) < 0.02 and abs(aligned[labels == 1].mean() - 0.7) < 0.02
    pooled = match_histograms(synthetic, reference_cdf([intensity_histogram(real, 64)]))
    assert pooled[labels == 0].mean() > 0.5, "the pooled reference gives the rare class the common one's look"


def test_noisy_histograms_with_negative_counts_still_give_a_cdf():
    cdf = reference_cdf([np.array([3.0, -2.0, 5.0, 0.5]), np.array([-1.0, 4.0, 1.0, 0.0])])
    assert (np.diff(cdf) >= 0).all() and cdf[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        reference_cdf([np.array([-1.0, -2.0])])


def test_the_private_histogram_is_ledgered_and_budgeted(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.sites.budget = cfg.sites.budget.model_copy(update={"delta": 1e-3})
    cfg.privacy = PrivacySection(epsilon=4, delta=1e-3)
    cfg.alignment.enabled = True
    cfg.alignment.epsilon = 1.0
    cfg.gate.membership_audit = False
    data = simulated_sites(cfg)[0]
    counts = Mechanism(cfg.release.count_noise, 1.0, 1)  # the noisy class counts, inside privacy.epsilon
    plan = plan_training(cfg.privacy, len(data.train), cfg.generator.batch_size, cfg.generator.epochs,
                         reserved=(counts,))
    stat = statistic_mechanism(1.0, 1e-3, "rdp")
    train_only = epsilon([plan.mechanism(), counts], 1e-3)
    both = epsilon([plan.mechanism(), counts, stat], 1e-3)
    assert train_only <= 4 + 1e-9 and both > train_only

    cfg.sites.budget = cfg.sites.budget.model_copy(update={"epsilon": (train_only + both) / 2})
    state = simulated_site_state(cfg, tmp_path / "a", data.name)
    state.ensure_keys()
    with pytest.raises(BudgetExceeded):  # training alone would fit; training plus the histogram does not
        Site(data, state, None, device="cpu").release(cfg, "r")

    cfg.sites.budget = cfg.sites.budget.model_copy(update={"epsilon": 30.0})
    state = simulated_site_state(cfg, tmp_path / "b", data.name)
    state.ensure_keys()
    rel = Site(data, state, None, device="cpu").release(cfg, "r")
    types = [e["type"] for e in rel.meta["ledger"]]
    assert types == ["dp-statistic", "dp-training", "dp-statistic", "release"]  # counts, training, histogram
    stat_entry = rel.meta["ledger"][2]
    assert stat_entry["epsilon"] == pytest.approx(epsilon([stat], 1e-3)) and stat_entry["epsilon"] <= 1.0 + 1e-9
    exact = class_intensity_histograms(data.train.images, data.train.labels, cfg.alignment.bins)
    released = np.asarray(rel.meta["intensity_histogram"])
    assert released.shape == exact.shape == (2, cfg.alignment.bins)
    assert not np.allclose(released, exact), "the released histogram is noised"
    assert np.abs(released - exact).max() < 20 * stat.noise_multiplier, "noise of the accounted scale"
    assert rel.meta["ledger"][-1]["spent"]["epsilon"] == pytest.approx(both, rel=1e-6)


def test_alignment_is_for_substitution_runs():
    with pytest.raises(ConfigError, match="alignment"):
        load_config(overrides=["alignment.enabled=true", "run.mode=federated"])


@pytest.mark.parametrize("aligned,by_class", [(True, True), (True, False), (False, True)])
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_the_sites_evaluate_what_the_classifier_trained_on(tiny_config, aligned, by_class, monkeypatch):
    """Fidelity and the augmentation baseline at the sites use the pooled images the
    classifier saw: after alignment, the aligned ones, not the raw releases. The sample
    travels as released (so each site can trace it to the signed releases) with the
    intensity mapping, which the site applies before measuring."""
    from flwr.clientapp import ClientApp

    import fedsynth.client.evaluation as site_evaluation
    from fedsynth.client import client_app as real_app
    from fedsynth.data.dataset import to_uint8
    from fedsynth.protocol import decode_evaluate_request
    from fedsynth.rundir import RunDir, load_releases
    from fedsynth.simulation.engine import serve_simulation
    from fedsynth.simulation.inprocess import InProcessGrid

    cfg = tiny_config
    cfg.alignment.enabled = aligned
    cfg.alignment.by_class = by_class
    wire, measured = [], []
    app = ClientApp()
    real_extras = site_evaluation.site_extras

    def recording_extras(data, synthetic, *args, **kwargs):
        measured.append(to_uint8(synthetic))
        return real_extras(data, synthetic, *args, **kwargs)

    monkeypatch.setattr(site_evaluation, "site_extras", recording_extras)

    @app.train()
    def train(msg, ctx):
        return real_app.train(msg, ctx)

    @app.evaluate()
    def evaluate(msg, ctx):
        wire.append(decode_evaluate_request(msg.content).synthetic_images)
        return real_app.evaluate(msg, ctx)

    run_dir = RunDir.create(cfg)
    grid = InProcessGrid(app, cfg.federation.num_sites)
    try:
        m = serve_simulation(grid, cfg, run_dir).model_dump(mode="json")
    finally:
        grid.close()
    assert (m.get("alignment") or {}).get("applied", False) is aligned
    if aligned:
        assert m["alignment"]["by_class"] is by_class
    released = {img.tobytes() for images, _ in load_releases(run_dir.path).values() for img in images}
    assert np.mean([img.tobytes() in released for img in wire[0]]) == 1.0, "the sample travels as released"
    as_released = np.mean([img.tobytes() in released for img in measured[0]])
    if aligned:
        assert as_released < 0.5, "the sites measured the raw releases, not what the classifier trained on"
    else:
        assert as_released == 1.0
