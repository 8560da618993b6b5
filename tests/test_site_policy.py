"""The site's own rules, and the protections the review asked for: a policy the server cannot
relax, noise it cannot replay, replies without local paths, one request at a time."""

import threading
import time

import numpy as np
import pytest

from fedsynth.client.site import PolicyRefusal, Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.config import GANSection, PrivacySection, SitePolicy
from fedsynth.errors import public_reason
from fedsynth.generators import build_generator
from fedsynth.privacy.dp import BudgetExceeded, plan_training


def _site(cfg, tmp_path, policy=None, index=0):
    data = simulated_sites(cfg)[index]
    state = simulated_site_state(cfg, tmp_path, data.name)
    state.ensure_keys()
    return Site(data, state, None, device="cpu", policy=policy)


@pytest.mark.parametrize(
    "policy, change, expected",
    [
        (SitePolicy(require_dp=True), {}, "require_dp"),
        (SitePolicy(max_epsilon=2.0), {"privacy": PrivacySection(epsilon=5)}, "max_epsilon"),
        (SitePolicy(require_gate=True), {"gate_off": True}, "require_gate"),
        (SitePolicy(min_gate_quantile=0.05), {}, "min_gate_quantile"),
        (SitePolicy(allow_alignment=False), {"align": True}, "allow_alignment"),
    ],
)
def test_the_site_refuses_what_its_policy_forbids_before_any_work(tiny_config, tmp_path, monkeypatch, policy, change,
                                                                   expected):
    cfg = tiny_config
    if "privacy" in change:
        cfg.privacy = change["privacy"]
    if change.get("gate_off"):
        cfg.gate.enabled = False
    if change.get("align"):
        cfg.alignment.enabled = True
    import fedsynth.client.site as site_module

    monkeypatch.setattr(site_module, "build_generator", lambda *a, **k: pytest.fail("trained despite the policy"))
    site = _site(cfg, tmp_path, policy)
    with pytest.raises(PolicyRefusal, match=expected):
        site.release(cfg, "r")
    assert not site.state.ledger_path.exists()


def test_score_histograms_respect_the_policy(tiny_config, tmp_path):
    site = _site(tiny_config, tmp_path, SitePolicy(max_score_bins=50, min_bin_count=4))
    labels = np.array([0, 1] * 20)
    probs = np.linspace(0.01, 0.99, 40)
    h = site.score_histogram(labels, probs, np.linspace(-16, 16, 51))
    occupied = (h.positive + h.negative)[(h.positive + h.negative) > 0]
    assert occupied.sum() == 40 and occupied.min() >= 4
    with pytest.raises(PolicyRefusal, match="max_score_bins"):
        site.score_histogram(labels, probs, np.linspace(-16, 16, 2001))
    with pytest.raises(PolicyRefusal, match="malformed"):
        site.score_histogram(labels, probs, np.array([0.0, 1.0, 0.5, 2.0]))


def test_dp_noise_is_not_reproducible_from_the_run_config(phantoms16):
    """Same seed, same data: the non-private GAN trains identically, the DP one does not."""
    cfg = GANSection(epochs=1, base_channels=8, latent_dim=16, batch_size=16)

    def discriminator(privacy):
        gen = build_generator(cfg, 16, seed=4, device="cpu")
        gen.fit(phantoms16.images, phantoms16.labels, privacy=privacy)
        return np.concatenate([p.detach().numpy().ravel() for p in gen.discriminator.parameters()])

    np.testing.assert_array_equal(discriminator(None), discriminator(None))
    plan = plan_training(PrivacySection(epsilon=5, delta=1e-3), len(phantoms16), cfg.batch_size, cfg.epochs)
    assert not np.array_equal(discriminator(plan), discriminator(plan))


def test_failure_reasons_carry_no_local_paths():
    err = FileNotFoundError("no signing key at /var/lib/fedsynth/site-a/site-a.key; see /etc/fedsynth/site.yaml")
    reason = public_reason(err)
    assert "/var/lib" not in reason and "/etc" not in reason and reason.startswith("FileNotFoundError: no signing key")


def test_any_non_private_training_blocks_later_dp(tiny_config, tmp_path):
    cfg = tiny_config
    site = _site(cfg, tmp_path)
    site.release(cfg, "plain")  # not private: a "training" ledger entry
    cfg.data.resolution = 32  # another resolution: another dataset fingerprint, the same patients
    cfg.privacy = PrivacySection(epsilon=5)
    site32 = _site(cfg, tmp_path)
    with pytest.raises(BudgetExceeded, match="without DP"):
        site32.release(cfg, "private")


def test_one_request_at_a_time_per_site(tiny_config, tmp_path):
    site = _site(tiny_config, tmp_path)
    order = []

    def hold():
        with site.state.exclusive():
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    with site.state.exclusive():
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
