"""The server trusts nothing unsigned: every kind of bad release is rejected, the run goes on."""

import copy

import numpy as np
import pytest

from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.config import PrivacySection
from fedsynth.privacy.accounting import Mechanism, epsilon
from fedsynth.privacy.keys import generate_keypair, load_private_key, sign
from fedsynth.privacy.ledger import Ledger, entry_hash
from fedsynth.privacy.release import content_hash
from fedsynth.protocol import Release
from fedsynth.rundir import RunDir
from fedsynth.server.checks import verify_release
from fedsynth.server.substitution import run_substitution
from fedsynth.simulation.local import LocalTransport
from fedsynth.simulation.registry import simulation_registry


@pytest.fixture
def released(tiny_config, tmp_path):
    """One honest release from site-0, and the server's registry."""
    cfg = tiny_config
    cfg.gate.membership_audit = False
    registry = simulation_registry(cfg, tmp_path)
    data = simulated_sites(cfg)[0]
    site = Site(data, simulated_site_state(cfg, tmp_path, data.name), None, device="cpu")
    return cfg, site.release(cfg, "run-1"), registry


def test_an_honest_release_is_accepted(released):
    cfg, rel, registry = released
    assert verify_release(rel, cfg, registry) is None
    assert rel.meta["ledger"][-1]["content_hash"] == content_hash(rel.images, rel.labels)


def test_tampered_pixels_are_rejected(released):
    cfg, rel, registry = released
    bad = copy.deepcopy(rel)
    bad.images[0, 0, 0] ^= 0xFF
    assert "does not match its signed hash" in verify_release(bad, cfg, registry)


def test_forged_signature_is_rejected(released, tmp_path):
    cfg, rel, registry = released
    bad = copy.deepcopy(rel)
    bad.images[0] = 0
    forger, _ = generate_keypair("mallory", tmp_path / "mallory")
    last = dict(bad.meta["ledger"][-1], content_hash=content_hash(bad.images, bad.labels))
    last["hash"] = entry_hash(last)
    last["signature"] = sign(load_private_key(forger), last["hash"].encode())
    bad.meta["ledger"][-1] = last
    assert "signature invalid" in verify_release(bad, cfg, registry)


def test_unsigned_and_unknown_sites_are_rejected(released):
    cfg, rel, registry = released
    unsigned = copy.deepcopy(rel)
    del unsigned.meta["ledger"]
    assert "unsigned release" in verify_release(unsigned, cfg, registry)
    assert "no public key is registered" in verify_release(rel, cfg, {})
    impostor = copy.deepcopy(rel)
    impostor.site = "site-1"  # claims to be another registered site
    assert "signature invalid" in verify_release(impostor, cfg, registry)


def test_non_private_release_rejected_when_the_run_requires_dp(released):
    cfg, rel, registry = released
    cfg.privacy = PrivacySection(epsilon=10)
    assert "requires DP" in verify_release(rel, cfg, registry)


def _signed_dp_release(tmp_path, site, trained_eps_mech, budget_eps, cfg):
    """A release ledger a modified site could sign: honest arithmetic, policy violations."""
    key_path, pub = generate_keypair(site, tmp_path / "rogue")
    key = load_private_key(key_path)
    led = Ledger(tmp_path / "rogue" / "ledger.jsonl", site)
    delta = 1e-5
    mech = trained_eps_mech
    eps = epsilon([mech], delta)
    train = led.append({"type": "dp-training", "run_id": "r", "dataset_fingerprint": "f",
                        "mechanism": {**mech.to_dict(), "delta": delta, "accountant": "rdp", "max_grad_norm": 1.0,
                                      "secure_rng": False}, "epsilon": eps}, key)
    images = np.zeros((4, cfg.data.resolution, cfg.data.resolution), np.uint8)
    labels = np.array([0, 1, 0, 1], np.uint8)
    led.append({"type": "release", "run_id": "r", "content_hash": content_hash(images, labels), "n_images": 4,
                "training_entry": train["hash"], "private": True, "budget": {"epsilon": budget_eps, "delta": delta},
                "spent": {"epsilon": eps, "delta": delta, "accountant": "rdp"}}, key)
    return Release(site, images, labels, {"ledger": led.entries(), "private": True}), {site: pub}, eps


def test_over_budget_and_over_requested_epsilon_are_rejected(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=20)
    rel, registry, eps = _signed_dp_release(tmp_path, "site-x", Mechanism(1.0, 0.1, 200), budget_eps=2.0, cfg=cfg)
    assert 2.0 < eps < 20
    assert "over budget" in verify_release(rel, cfg, registry)
    cfg.privacy = PrivacySection(epsilon=1.0)
    rel2, registry2, _ = _signed_dp_release(tmp_path / "b", "site-y", Mechanism(1.0, 0.1, 200), 50.0, cfg)
    assert "over the run's required 1" in verify_release(rel2, cfg, registry2)


class TamperingTransport(LocalTransport):
    """Changes site-1's images in transit."""

    def release(self, request, record):
        ok = super().release(request, record)
        for rel in ok:
            if rel.site == "site-1":
                rel.images = rel.images.copy()
                rel.images[:, 0, 0] = 255 - rel.images[:, 0, 0]
        return ok


def test_the_run_goes_on_without_a_rejected_release(tiny_config):
    cfg = tiny_config
    run_dir = RunDir.create(cfg)
    registry = simulation_registry(cfg, run_dir.sites_dir)
    sites = [Site(s, simulated_site_state(cfg, run_dir.sites_dir, s.name), None, device="cpu")
             for s in simulated_sites(cfg)]
    metrics = run_substitution(cfg, TamperingTransport(sites), run_dir, registry).model_dump(mode="json")
    assert metrics["sites"]["site-1"]["status"] == "failed"
    assert "signed hash" in metrics["sites"]["site-1"]["failures"][0]["reason"]
    assert metrics["sites"]["site-0"]["status"] == "ok" and metrics["pooled"] is not None
    assert (run_dir.path / "ledgers" / "site-0.jsonl").is_file()


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_a_budget_refusal_reaches_the_server_as_a_site_failure(tiny_config):
    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=8)
    cfg.sites.budgets = {"site-2": cfg.sites.budget.model_copy(update={"epsilon": 3.0})}
    cfg.gate.membership_audit = False
    run_dir = RunDir.create(cfg)
    registry = simulation_registry(cfg, run_dir.sites_dir)
    sites = [Site(s, simulated_site_state(cfg, run_dir.sites_dir, s.name), None, device="cpu")
             for s in simulated_sites(cfg)]
    metrics = run_substitution(cfg, LocalTransport(sites), run_dir, registry).model_dump(mode="json")
    assert metrics["sites"]["site-2"]["status"] == "failed"
    assert "BudgetExceeded" in metrics["sites"]["site-2"]["failures"][0]["reason"]
    assert metrics["private"] is True and not any("NOT PRIVATE" in w for w in metrics["warnings"])
    assert metrics["privacy"]["sites"]["site-0"]["epsilon"] <= 8 + 1e-9


def test_a_release_replayed_into_another_run_is_refused(released):
    cfg, rel, registry = released
    assert verify_release(rel, cfg, registry, "run-1") is None
    assert "replayed" in verify_release(rel, cfg, registry, "run-2")


def test_a_malformed_evaluation_is_rejected_not_pooled(tiny_config):
    from fedsynth.classifier.metrics import ScoreHistogram, evaluate_scores
    from fedsynth.protocol import EvalResult
    from fedsynth.server.checks import check_eval_result

    figures = evaluate_scores(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.4]), 0.5, n_boot=0).to_dict()
    good = EvalResult("s", figures, ScoreHistogram(np.array([1, 0, 0]), np.array([0, 2, 0])))
    assert check_eval_result(good, 3, 10) is None
    short = EvalResult("s", good.metrics, ScoreHistogram(np.array([1, 0]), np.array([0, 2])))
    assert "bins" in check_eval_result(short, 3, 10)
    lying = EvalResult("s", {**good.metrics, "n": 30}, good.histogram)
    assert "add up" in check_eval_result(lying, 3, 10)
    assert "lack" in check_eval_result(EvalResult("s", {"n": 3}, good.histogram), 3, 10)
