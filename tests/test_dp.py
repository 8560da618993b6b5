"""DP-SGD: calibration, budgets refused before training, epsilon equal to Opacus's own."""

import numpy as np
import pytest

from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site_state, simulated_sites
from fedsynth.config import GANSection, PrivacySection
from fedsynth.generators import build_generator
from fedsynth.privacy.accounting import Mechanism, default_delta, epsilon, noise_for_target
from fedsynth.privacy.dp import Budget, BudgetExceeded, PrivacyUnavailable, check_budget, plan_training
from fedsynth.privacy.ledger import RELEASE, verify_ledger
from tests.conftest import few_of_class_zero, simulated_site_of

TINY_GAN = GANSection(epochs=2, base_channels=8, latent_dim=16, batch_size=16)


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_noise_matches_the_facts_checked_for_kermany():
    # epsilon 10, delta 1e-5, sample rate 256/5216, 50 epochs (issue 3's facts)
    q = 256 / 5216
    steps = int(50 / q)
    assert noise_for_target(10, 1e-5, q, steps, "rdp") == pytest.approx(1.094, abs=0.005)
    assert noise_for_target(10, 1e-5, q, steps, "prv") == pytest.approx(1.045, abs=0.005)


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_plan_uses_opacus_sample_rate_and_a_sound_default_delta():
    plan = plan_training(PrivacySection(epsilon=8), n=500, batch_size=64, epochs=3)
    assert plan.sample_rate == pytest.approx(1 / 8) and plan.steps == 24
    assert plan.delta == default_delta(500) < 1 / 500
    assert epsilon([plan.mechanism()], plan.delta) <= 8.0 + 1e-9
    with pytest.raises(ValueError, match="not below 1/n"):
        plan_training(PrivacySection(epsilon=8, delta=0.05), n=50, batch_size=16, epochs=1)


def test_secure_rng_without_torchcsprng_is_refused():
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        with pytest.raises(PrivacyUnavailable, match="torchcsprng"):
            plan_training(PrivacySection(epsilon=8, secure_rng=True), n=100, batch_size=16, epochs=1)
    else:
        pytest.skip("torchcsprng is installed")


def test_recorded_epsilon_equals_opacus_accountant(phantoms16):
    plan = plan_training(PrivacySection(epsilon=5), len(phantoms16), TINY_GAN.batch_size, TINY_GAN.epochs)
    gen = build_generator(TINY_GAN, 16, seed=0, device="cpu")
    report = gen.fit(phantoms16.images, phantoms16.labels, privacy=plan)
    priv = report.privacy
    mech = priv["mechanism"]
    assert (mech["noise_multiplier"], mech["sample_rate"], mech["steps"]) == (
        plan.noise_multiplier, plan.sample_rate, plan.steps
    ), "the accountant counted exactly the planned steps"
    from opacus.accountants import RDPAccountant

    from fedsynth.privacy.accounting import RDP_ORDERS

    fresh = RDPAccountant()
    fresh.history = [(mech["noise_multiplier"], mech["sample_rate"], mech["steps"])]
    assert priv["epsilon"] == pytest.approx(fresh.get_epsilon(delta=plan.delta, alphas=RDP_ORDERS), rel=1e-12)
    assert 4.5 < priv["epsilon"] <= 5.0 + 1e-9


def test_empty_poisson_batches_do_not_break_training_or_accounting():
    from fedsynth.data.phantom import make_phantoms

    ds = make_phantoms(24, 16, seed=1)
    cfg = GANSection(epochs=3, base_channels=8, latent_dim=8, batch_size=2)  # q = 1/12: empty batches are common
    plan = plan_training(PrivacySection(epsilon=20, delta=1e-3), len(ds), cfg.batch_size, cfg.epochs)
    report = build_generator(cfg, 16, seed=0, device="cpu").fit(ds.images, ds.labels, privacy=plan)
    assert report.privacy["mechanism"]["steps"] == plan.steps == 36
    assert report.steps == 36


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_budget_composes_the_ledger_and_refuses():
    plan = plan_training(PrivacySection(epsilon=6, delta=1e-5), n=200, batch_size=20, epochs=2)
    prior = [{"type": "dp-training", "mechanism": {**plan.mechanism().to_dict(), "delta": 1e-5, "accountant": "rdp"},
              "dataset_fingerprint": "x"}]
    ok = check_budget("s", [], plan, Budget(10, 1e-5))
    assert ok.spent_before == 0 and ok.spent_after <= 6.0 + 1e-9
    # two such trainings compose (RDP) to about 7.6: within 10, over 7
    assert check_budget("s", prior, plan, Budget(10, 1e-5)).spent_after == pytest.approx(7.62, abs=0.05)
    with pytest.raises(BudgetExceeded, match="over the site's budget of 7"):
        check_budget("s", prior, plan, Budget(7, 1e-5))
    with pytest.raises(BudgetExceeded, match="budget delta"):
        check_budget("s", [], plan, Budget(100, 1e-6))
    tainted = [{"type": "training", "index": 0, "mechanism": None, "dataset_fingerprint": "x"}]
    with pytest.raises(BudgetExceeded, match="without DP on this site.s data"):
        check_budget("s", tainted, plan, Budget(100, 1e-5))


def test_over_budget_request_is_refused_before_any_training_step(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=10)
    cfg.sites.budget.epsilon = 5
    data = simulated_sites(cfg)[0]
    state = simulated_site_state(cfg, tmp_path, data.name)
    state.ensure_keys()
    site = Site(data, state, None, device="cpu")

    import fedsynth.client.site as site_module

    def no_training(*args, **kwargs):
        raise AssertionError("a generator was built although the budget forbids training")

    monkeypatch.setattr(site_module, "build_generator", no_training)
    with pytest.raises(BudgetExceeded, match="budget of 5"):
        site.release(cfg, "run-1")
    assert not state.ledger_path.exists() or state.ledger_path.read_bytes() == b""


def test_budget_composes_across_runs_of_one_site(tiny_config, tmp_path):
    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=4)
    cfg.sites.budget.epsilon = 5
    cfg.gate.membership_audit = False
    data = simulated_sites(cfg)[1]
    state = simulated_site_state(cfg, tmp_path, data.name)
    state.ensure_keys()
    site = Site(data, state, None, device="cpu")
    first = site.release(cfg, "run-1")
    assert first.meta["private"] and first.meta["privacy"]["epsilon"] <= 4 + 1e-9
    with pytest.raises(BudgetExceeded, match="already spent"):
        site.release(cfg, "run-2")  # two trainings at 4 compose to more than 5
    ledger = state.ledger().entries()
    assert [e["type"] for e in ledger] == ["dp-statistic", "dp-training", RELEASE]  # noisy class counts first
    assert verify_ledger(state.ledger_path, __import__("fedsynth.privacy.keys", fromlist=["x"]).load_public_key(
        state.public_key_path)).ok


def test_mechanism_rejects_nonsense():
    with pytest.raises(ValueError):
        Mechanism(0.0, 0.1, 10)
    with pytest.raises(ValueError):
        Mechanism(1.0, 1.5, 10)
    assert epsilon([], 1e-5) == 0.0
    with pytest.raises(ValueError, match="delta"):
        epsilon([Mechanism(1, 0.1, 1)], 0.0)
    assert np.isfinite(epsilon([Mechanism(1, 0.1, 1)], 1e-5, "prv"))


# ---- Opacus's per-sample gradient engines: the same clipped step, whichever computes it -----------

def _one_clipped_step(mode: str, criterion_kind: str):
    import dataclasses

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedsynth.generators.gan import DiscriminatorLoss, DiscriminatorNet
    from fedsynth.privacy.dp import PrivateTraining, make_dp_compatible

    torch.manual_seed(0)
    d = make_dp_compatible(DiscriminatorNet(16, 8, 2))
    start = torch.cat([p.detach().flatten() for p in d.parameters()])
    x, y = torch.randn(30, 1, 16, 16), torch.randint(0, 2, (30,))
    is_real = torch.arange(30) < 18
    # no noise and a small clipping bound: the step is the sum of clipped per-row gradients alone,
    # and every row is clipped, so an engine that got one row's norm wrong would move the weights
    plan = dataclasses.replace(plan_training(PrivacySection(epsilon=10, grad_sample_mode=mode), 300, 32, 1),
                               noise_multiplier=0.0, max_grad_norm=0.01)
    opt = torch.optim.SGD(d.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(torch.zeros(300, 1, 16, 16), torch.zeros(300, dtype=torch.long)), batch_size=32)
    dp = PrivateTraining(plan)
    model, opt, _ = dp.wrap(d, opt, loader, criterion=DiscriminatorLoss(criterion_kind))
    loss = dp.criterion(model(x, y), is_real)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return start, torch.cat([p.detach().flatten() for p in d.parameters()])


@pytest.mark.slow  # over 1 s: outside the quick subset
@pytest.mark.parametrize("kind", ["bce", "hinge"])
@pytest.mark.parametrize("mode", ["functorch", "ghost"])
def test_grad_sample_modes_take_the_same_clipped_step_as_hooks(mode, kind):
    import torch

    start, reference = _one_clipped_step("hooks", kind)
    other_start, other = _one_clipped_step(mode, kind)
    torch.testing.assert_close(other_start, start, rtol=0, atol=0)  # the same weights before the step
    assert (reference - start).norm() > 1e-4, "the step moved the weights"
    torch.testing.assert_close(other, reference, rtol=0, atol=1e-6)


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_ghost_clipping_trains_the_gan_with_the_planned_mechanism(phantoms16):
    plan = plan_training(PrivacySection(epsilon=5, grad_sample_mode="ghost"), len(phantoms16), TINY_GAN.batch_size,
                         TINY_GAN.epochs)
    report = build_generator(TINY_GAN, 16, seed=0, device="cpu").fit(phantoms16.images, phantoms16.labels,
                                                                     privacy=plan)
    mech = report.privacy["mechanism"]
    assert (mech["noise_multiplier"], mech["sample_rate"], mech["steps"]) == (
        plan.noise_multiplier, plan.sample_rate, plan.steps)
    assert report.privacy["epsilon"] == pytest.approx(epsilon([plan.mechanism()], plan.delta), rel=1e-9)
    assert all(np.isfinite(h["loss_d"]) for h in report.history)


def test_ghost_clipping_without_a_criterion_is_refused():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedsynth.privacy.dp import PrivateTraining

    plan = plan_training(PrivacySection(epsilon=5, grad_sample_mode="ghost"), 100, 16, 1)
    model = torch.nn.Linear(4, 1)
    loader = DataLoader(TensorDataset(torch.zeros(100, 4)), batch_size=16)
    with pytest.raises(ValueError, match="grad_sample_mode: ghost clipping needs the training loss"):
        PrivateTraining(plan).wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), loader)


@pytest.mark.parametrize("overrides, what", [
    (["generator.family=ddpm"], "generator family ddpm"),
    (["run.mode=fedavg-classifier"], "run.mode fedavg-classifier"),
])
def test_ghost_clipping_is_refused_where_the_loss_is_not_the_gans(overrides, what):
    from fedsynth.config import load_config
    from fedsynth.errors import ConfigError

    with pytest.raises(ConfigError, match=f"ghost clipping is built for the GAN's discriminator; {what}"):
        load_config(None, ["privacy.epsilon=5", "privacy.grad_sample_mode=ghost", *overrides])
    assert load_config(None, ["privacy.epsilon=5", "privacy.grad_sample_mode=ghost", "generator.family=gan"])


def test_auto_engine_is_ghost_clipping_with_a_criterion_and_hooks_without():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedsynth.generators.gan import DiscriminatorLoss, DiscriminatorNet
    from fedsynth.privacy.dp import PrivateTraining, make_dp_compatible

    plan = plan_training(PrivacySection(epsilon=5), 100, 16, 1)
    assert plan.grad_sample_mode == "auto", "the default"
    loader = DataLoader(TensorDataset(torch.zeros(100, 1, 16, 16), torch.zeros(100, dtype=torch.long)), batch_size=16)
    with_loss, without = PrivateTraining(plan), PrivateTraining(plan)
    d = make_dp_compatible(DiscriminatorNet(16, 8, 2))
    with_loss.wrap(d, torch.optim.SGD(d.parameters(), lr=0.1), loader, criterion=DiscriminatorLoss("bce"))
    linear = torch.nn.Linear(4, 1)
    without.wrap(linear, torch.optim.SGD(linear.parameters(), lr=0.1),
                 DataLoader(TensorDataset(torch.zeros(100, 4)), batch_size=16))
    assert (with_loss.grad_sample_mode, without.grad_sample_mode) == ("ghost", "hooks")
    assert without.criterion is None and with_loss.criterion is not None


# ---- under DP a DP-SGD family decides release.min_class_images on noisy, accounted counts ----------

@pytest.mark.parametrize("target,sample_rate,steps,count_noise", [
    (1.0, 1 / 82, 1640, 20.0),
    pytest.param(3.0, 0.05, 400, 5.0, marks=pytest.mark.slow),  # each search takes seconds: outside the quick subset
    pytest.param(10.0, 0.2, 50, 2.0, marks=pytest.mark.slow),
])
def test_noise_beside_a_reserved_mechanism_keeps_their_composition_within_target(target, sample_rate, steps,
                                                                                 count_noise):
    delta = 1e-5
    counts = Mechanism(count_noise, 1.0, 1)
    alone = noise_for_target(target, delta, sample_rate, steps)
    beside = noise_for_target(target, delta, sample_rate, steps, "rdp", (counts,))
    composed = epsilon([Mechanism(beside, sample_rate, steps), counts], delta)
    assert beside >= alone
    assert target - 0.02 <= composed <= target + 1e-9  # within target, and not needlessly below it
    # and the reservation was needed: the steps' own noise, beside the counts, overshoots the target
    assert epsilon([Mechanism(alone, sample_rate, steps), counts], delta) > target


def test_a_reserved_mechanism_that_alone_spends_the_target_is_refused():
    with pytest.raises(ValueError, match="reserved mechanisms alone spend"):
        noise_for_target(0.1, 1e-5, 0.1, 100, "rdp", (Mechanism(1.0, 1.0, 1),))


@pytest.mark.parametrize("true_normal,offset,released", [(3, +50.0, True), (10, +20.0, False), (10, -10.0, False)])
def test_a_dp_sgd_site_decides_min_class_images_on_noisy_counts_in_its_ledger(tiny_config, tmp_path, monkeypatch,
                                                                              true_normal, offset, released):
    import fedsynth.client.site as site_module
    from fedsynth.privacy.keys import load_public_key
    from fedsynth.privacy.ledger import DP_STATISTIC, DP_TRAINING, spent_epsilon

    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=4)
    cfg.gate.membership_audit = False
    drawn = []

    def offset_noise(values, noise_multiplier):  # a fixed draw, so the decision is known: pneumonia clears it
        drawn.append((values.copy(), noise_multiplier))
        return values + np.array([offset, 100.0])

    monkeypatch.setattr(site_module.Site, "_count_noise", staticmethod(offset_noise))
    site, state, data = simulated_site_of(tmp_path, cfg, lambda y: few_of_class_zero(y, true_normal))
    release = site.release(cfg, "run-1")
    assert drawn[0][1] == cfg.release.count_noise
    assert drawn[0][0].tolist() == [true_normal, int((data.train.labels == 1).sum())]  # the true counts, noised
    entries = state.ledger().entries()
    assert [e["type"] for e in entries] == [DP_STATISTIC, DP_TRAINING, RELEASE]
    assert entries[0]["mechanism"]["name"] == "gaussian (class counts, sensitivity 1)"
    assert entries[0]["mechanism"]["noise_multiplier"] == cfg.release.count_noise
    assert verify_ledger(state.ledger_path, load_public_key(state.public_key_path)).ok  # epsilons recomputed
    # the two mechanisms together stay within the run's epsilon; the training alone spends less
    assert entries[1]["epsilon"] < 4 <= spent_epsilon(entries, state.budget.delta, "rdp") + 0.02
    assert spent_epsilon(entries, state.budget.delta, "rdp") <= 4 + 1e-9
    # released when the noisy count less two noise deviations (2 x 20) reaches min_class_images=5
    if released:  # 3 true images, below min_class_images, yet the noisy count (53) decides
        assert set(np.unique(release.labels)) == {0, 1}
    else:  # noisy 30 or 0: not confidently 5 or more
        assert set(np.unique(release.labels)) == {1}
        assert release.meta["withheld_classes"]["normal"] == (
            f"its noisy image count is {true_normal + offset:.1f} (noise std 20), less than "
            "release.min_class_images=5 plus two standard deviations")


def test_without_dp_the_true_count_decides_and_no_count_is_noised(tiny_config, tmp_path, monkeypatch):
    import fedsynth.client.site as site_module

    monkeypatch.setattr(site_module.Site, "_count_noise", staticmethod(lambda *a: pytest.fail("noise drawn")))
    cfg = tiny_config
    cfg.gate.membership_audit = False
    site, state, _ = simulated_site_of(tmp_path, cfg, lambda y: few_of_class_zero(y, 3))
    release = site.release(cfg, "run-1")
    assert release.meta["withheld_classes"]["normal"] == "3 training images, fewer than release.min_class_images=5"
    assert "dp-statistic" not in [e["type"] for e in state.ledger().entries()]


def test_a_budget_the_noisy_counts_alone_would_spend_is_refused_before_any_training(tiny_config, tmp_path,
                                                                                   monkeypatch):
    import fedsynth.client.site as site_module
    from fedsynth.errors import ConfigError

    cfg = tiny_config
    cfg.privacy = PrivacySection(epsilon=0.1)  # release.count_noise=20 alone spends about 0.18 at delta 1e-5
    monkeypatch.setattr(site_module, "build_generator", lambda *a, **k: pytest.fail("a generator was built"))
    site, state, _ = simulated_site_of(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"release.count_noise=20\) spend epsilon 0.1\d+ .*privacy.epsilon=0.1"):
        site.release(cfg, "run-1")
    assert state.ledger().entries() == []
