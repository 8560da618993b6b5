"""DP mean-embedding matching: a bounded statistic, its one Gaussian release, its accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsynth.config import MeanEmbeddingSection, PrivacySection, load_config
from fedsynth.generators import FAMILIES, MeanEmbeddingGenerator, build_generator, load_generator
from fedsynth.generators.mean_embedding import MECHANISM_NAME, PATCH_MECHANISM_NAME, RandomFourierFeatures
from fedsynth.privacy.accounting import Mechanism, epsilon
from fedsynth.privacy.dp import BudgetExceeded, plan_statistic
from tests.conftest import few_of_class_zero, simulated_site_of

RES = 16
TINY = MeanEmbeddingSection(n_frequencies=32, steps=20, batch_size=8, base_channels=8, latent_dim=8)


@pytest.fixture(scope="module")
def features():
    return RandomFourierFeatures(TINY, RES, torch.device("cpu"))


PATCHES = TINY.model_copy(update={"features": "image+patches", "patch_frequencies": 16})


@pytest.fixture(scope="module")
def patch_features():
    return RandomFourierFeatures(PATCHES, RES, torch.device("cpu"))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, RES, RES), elements=st.floats(0, 1, width=32)))
@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_every_image_has_a_feature_vector_of_norm_one(features, images):
    phi = features(torch.from_numpy(images))
    assert torch.allclose(phi.norm(dim=1), torch.ones(3), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, RES, RES), elements=st.floats(0, 1, width=32)))
@pytest.mark.slow
def test_with_patches_every_feature_vector_has_norm_at_most_one(patch_features, images):
    phi = patch_features(torch.from_numpy(images))
    assert phi.shape == (3, patch_features.size) and bool((phi.norm(dim=1) <= 1.0 + 1e-5).all())
    # the constant keeps its weight, so the noisy sums still count each class
    assert torch.allclose(phi[:, -1], torch.full((3,), PATCHES.count_weight))


def test_a_flat_image_reaches_the_norm_bound_with_patches(patch_features):
    # every patch of a flat image is the same, so the quadrant means are unit vectors: the bound is tight
    phi = patch_features(torch.full((2, RES, RES), 0.3))
    assert torch.allclose(phi.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("res", [RES, 12, 20], ids=["grid 7", "grid 10", "grid 8, border pixels unseen"])
def test_the_patch_block_is_a_quadrant_average_of_per_patch_features(res):
    patch_features = RandomFourierFeatures(PATCHES, res, torch.device("cpu"))
    x = torch.rand(4, 1, res, res, generator=torch.Generator().manual_seed(0))
    side, stride = patch_features.patch_side, patch_features.patch_stride
    cols = torch.nn.functional.unfold(x, side, stride=stride).transpose(1, 2) @ patch_features.w_patch
    per_patch = torch.cat([torch.cos(cols), torch.sin(cols)], dim=2)  # (N, L, 2G)
    grid = round(len(cols[0]) ** 0.5)
    expected = torch.nn.functional.adaptive_avg_pool2d(per_patch.transpose(1, 2).reshape(4, -1, grid, grid), 2)
    g = PATCHES.patch_frequencies
    block = patch_features(x)[:, 2 * TINY.n_frequencies:-1]
    scale = patch_features.patch_weight / (2 * g**0.5)
    assert torch.allclose(block.view(4, 2 * g, 4), expected.flatten(2) * scale, atol=1e-6)
    assert bool((patch_features(x).norm(dim=1) <= 1.0 + 1e-5).all())


def test_the_whole_image_features_are_the_same_with_or_without_patches(features, patch_features):
    x = torch.rand(3, RES, RES, generator=torch.Generator().manual_seed(1))
    ratio = patch_features.image_weight / features.image_weight
    assert torch.allclose(patch_features(x)[:, :2 * TINY.n_frequencies], features(x)[:, :-1] * ratio, atol=1e-6)


@pytest.mark.parametrize("config", [TINY, PATCHES], ids=["image", "image+patches"])
def test_removing_one_image_moves_the_sums_by_at_most_one(phantoms16, config):
    gen = MeanEmbeddingGenerator(config, RES)
    gen.release_statistic(phantoms16.images, phantoms16.labels)
    full = gen.statistic.clone()
    for i in range(len(phantoms16.labels)):
        keep = np.arange(len(phantoms16.labels)) != i
        gen.release_statistic(phantoms16.images[keep], phantoms16.labels[keep])
        assert float((full - gen.statistic).norm()) <= 1.0 + 1e-6
    counts = full[:, -1] / config.count_weight
    assert counts.round().tolist() == [float((phantoms16.labels == c).sum()) for c in (0, 1)]


@pytest.mark.parametrize("features", ["image", "image+patches"])
def test_the_release_is_noisy_and_its_epsilon_is_the_accountants(phantoms16, features):
    plan = plan_statistic(PrivacySection(epsilon=1.0, delta=1e-5), len(phantoms16))
    # 2 x 8001 noisy coordinates or more: their std is within 10% of sigma with overwhelming probability (12 SE)
    gen = MeanEmbeddingGenerator(TINY.model_copy(update={"n_frequencies": 4000, "features": features}), RES)
    result = gen.release_statistic(phantoms16.images, phantoms16.labels, plan)
    noisy = gen.statistic.clone()
    gen.release_statistic(phantoms16.images, phantoms16.labels)
    residual = (noisy - gen.statistic).flatten()
    assert abs(float(residual.std()) / plan.noise_multiplier - 1) < 0.1  # std = sigma x sensitivity 1
    mech = result["mechanism"]
    assert mech["name"] == (MECHANISM_NAME if features == "image" else PATCH_MECHANISM_NAME)
    assert mech["sample_rate"] == 1.0 and mech["steps"] == 1
    assert mech["features"]["kind"].endswith("patches") == (features == "image+patches")
    assert result["epsilon"] == pytest.approx(epsilon([Mechanism(mech["noise_multiplier"], 1.0, 1)], 1e-5, "rdp"))
    assert result["epsilon"] <= 1.0 + 1e-6 and result["epsilon"] > 0.9


def test_fit_sample_save_and_load(phantoms16, tmp_path):
    gen = build_generator(TINY, RES, seed=1, device="cpu")
    assert FAMILIES["dp-merf"] is MeanEmbeddingGenerator and gen.statistics_only
    report = gen.fit(phantoms16.images, phantoms16.labels)
    assert report.steps == TINY.steps and report.history and report.privacy is None
    a = gen.sample(6, np.array([0, 1, 0, 1, 0, 1]), seed=3)
    assert a.shape == (6, RES, RES) and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    gen.save(tmp_path / "g.safetensors")
    again = load_generator(tmp_path / "g.safetensors", device="cpu")
    np.testing.assert_array_equal(again.sample(6, np.array([0, 1, 0, 1, 0, 1]), seed=3), a)


def test_a_malformed_statistic_is_refused():
    gen = MeanEmbeddingGenerator(TINY, RES)
    with pytest.raises(ValueError, match="shape"):
        gen.load_training_state({"statistic": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="finite"):
        gen.load_training_state({"statistic": np.full(tuple(gen.statistic.shape), np.nan)})
    with pytest.raises(ValueError, match="only 'statistic'"):
        gen.load_training_state({"statistic": np.zeros(tuple(gen.statistic.shape)), "extra": np.zeros(1)})


def _merf_config(tmp_path, *extra):
    from conftest import tiny_overrides

    over = [o for o in tiny_overrides(tmp_path) if not o.startswith("generator.")]
    # 600 phantoms: each site has enough images per class that its noisy class means carry signal (a class
    # whose target the noise outweighs is left out, below)
    return load_config(None, [*over, "data.phantom.n_images=600", "generator.family=dp-merf", "generator.steps=15",
                              "generator.n_frequencies=32",
                              "generator.base_channels=8", "generator.latent_dim=8", "generator.batch_size=8",
                              "privacy.epsilon=2", "evaluation.fidelity=false", "evaluation.site_baselines=false",
                              *extra])


@pytest.mark.parametrize("features", ["image", "image+patches"])
def test_substitution_with_dp_merf_verifies_and_recomputes(tmp_path, seeded_dp_noise, features):
    from fedsynth.privacy.keys import load_public_key
    from fedsynth.privacy.ledger import DP_TRAINING, verify_ledger
    from fedsynth.simulation import simulate

    run_dir, m = simulate(_merf_config(tmp_path, f"generator.features={features}",
                                       "generator.patch_frequencies=16"), engine="inprocess")
    assert m.private and all(s.status == "ok" for s in m.sites.values())
    for _site, ledger, pub in run_dir.ledger_files():
        v = verify_ledger(ledger, load_public_key(pub))
        assert v.ok, v.failures()
        training = next(c for c in v.checks if c.type == DP_TRAINING)
        assert training.stored_epsilon == pytest.approx(training.recomputed_epsilon) and training.stored_epsilon <= 2


def test_federated_dp_merf_sends_only_the_statistic_once(tmp_path, seeded_dp_noise):
    from fedsynth.simulation import simulate

    with pytest.raises(Exception, match="exactly 1 round"):
        _merf_config(tmp_path, "run.mode=federated", "federation.rounds=2")
    run_dir, m = simulate(_merf_config(tmp_path, "run.mode=federated", "federation.rounds=1"), engine="inprocess")
    assert m.pooled is not None and m.private
    assert [r["sites"] for r in m.rounds] == [["site-0", "site-1", "site-2"]]
    # each site sent its sums (2 classes x (2 x 32 + 1) float64) and its evaluation, not a generator
    assert all(s.bytes_sent < 200_000 for s in m.sites.values())
    entries = [line for line in (run_dir.ledgers_dir / "site-0.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and MECHANISM_NAME in entries[0]


def test_a_statistic_over_the_budget_is_refused_before_any_release(tmp_path, phantoms16):
    from fedsynth.client.site import Site
    from fedsynth.client.site_data import simulated_site_state, simulated_sites

    cfg = _merf_config(tmp_path, "privacy.epsilon=5", "sites.budget.epsilon=4")
    data = simulated_sites(cfg)[0]
    state = simulated_site_state(cfg, tmp_path / "sites", data.name)
    state.ensure_keys()
    with pytest.raises(BudgetExceeded):
        Site(data, state, None, device="cpu").release(cfg, "run-1")
    assert state.ledger().entries() == []  # nothing was released, nothing recorded


# ---- a class whose noisy target is noise: left out of the fit and of the release ----------------------

def _fitted_with_normal_as_noise(phantoms16) -> MeanEmbeddingGenerator:
    """A generator fitted to a statistic whose 2 normal images are buried in noise of norm ~24."""
    gen = MeanEmbeddingGenerator(TINY, RES, seed=0)
    keep = few_of_class_zero(phantoms16.labels, 2)
    gen.release_statistic(phantoms16.images[keep], phantoms16.labels[keep])
    noise = torch.randn(gen.statistic.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise[-1] = 0.0  # the count coordinate stays 2: the target is (2 images + noise of norm ~24) / 2
    gen.statistic[0] += 3.0 * noise
    gen.fit_statistic()
    return gen


def _resaved(gen, tmp_path, **meta_changes):
    """``gen`` saved, then written again with its metadata changed (a value of None drops the key)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    gen.save(tmp_path / "g.safetensors")
    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as fh:
        meta = {**fh.metadata(), **meta_changes}
    save_file(load_file(str(tmp_path / "g.safetensors")), str(tmp_path / "changed.safetensors"),
              metadata={k: v for k, v in meta.items() if v is not None})
    return tmp_path / "changed.safetensors"


def test_a_class_whose_noisy_target_is_noise_is_left_out_of_the_fit_and_cannot_be_sampled(phantoms16):
    gen = _fitted_with_normal_as_noise(phantoms16)
    assert gen.fitted_classes == (1,)
    assert "outweighs any signal" in gen.unfitted_reasons[0] and "about 2 images" in gen.unfitted_reasons[0]
    with pytest.raises(ValueError, match="class normal was left out of the fit"):
        gen.sample(3, 0)
    assert gen.sample(3, 1).shape == (3, RES, RES)


def test_a_saved_generator_remembers_the_classes_its_fit_left_out(phantoms16, tmp_path):
    gen = _fitted_with_normal_as_noise(phantoms16)
    assert gen.fitted_classes == (1,)
    gen.save(tmp_path / "g.safetensors")
    again = load_generator(tmp_path / "g.safetensors", device="cpu")
    assert again.fitted_classes == (1,) and again.unfitted_reasons == gen.unfitted_reasons
    with pytest.raises(ValueError, match="class normal was left out of the fit"):
        again.sample(3, 0)
    np.testing.assert_array_equal(again.sample(3, 1, seed=2), gen.sample(3, 1, seed=2))


@pytest.mark.parametrize("field, message", [
    ("{not json", "not JSON"),
    ('["normal"]', "must map class names to reasons"),
    ('{"normal": 3}', "must map class names to reasons"),
    ('{"normal": "' + "x" * 1001 + '"}', "must map class names to reasons"),
    ('{"covid": "noise"}', "names 'covid', not one of"),
])
def test_a_saved_generator_with_a_malformed_left_out_field_is_refused(phantoms16, tmp_path, field, message):
    gen = build_generator(TINY, RES, seed=1, device="cpu")
    gen.fit(phantoms16.images, phantoms16.labels)
    with pytest.raises(ValueError, match=message):
        load_generator(_resaved(gen, tmp_path, unfitted_classes=field), device="cpu")


def test_a_generator_saved_before_the_field_existed_loads_with_every_class(phantoms16, tmp_path):
    gen = build_generator(TINY, RES, seed=1, device="cpu")
    gen.fit(phantoms16.images, phantoms16.labels)
    assert load_generator(_resaved(gen, tmp_path, unfitted_classes=None), device="cpu").fitted_classes == (0, 1)


def test_no_class_with_a_usable_target_fits_nothing_and_samples_nothing():
    gen = MeanEmbeddingGenerator(TINY, RES)
    report = gen.fit_statistic()  # the statistic before any release: zero images of every class
    assert gen.fitted_classes == () and report.steps == 0
    assert "noisy image count is 0.0, below 1" in gen.unfitted_reasons[0]
    with pytest.raises(ValueError, match="left out of the fit"):
        gen.sample(1, 1)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (6, RES, RES), elements=st.floats(0, 1, width=32)),
       st.lists(st.integers(0, 1), min_size=6, max_size=6).filter(lambda ls: 0 < sum(ls) < 6))
def test_a_noiseless_target_is_never_left_out(features, images, labels):
    """Without noise a class mean is a mean of vectors of norm ``a``: the rule can only drop noise."""
    labels = np.asarray(labels)
    phi = features(torch.from_numpy(images)).double()
    sums = torch.stack([phi[torch.from_numpy(labels == c)].sum(0) for c in (0, 1)])
    means, counts = features.means(sums.float())
    assert MeanEmbeddingGenerator(TINY, RES).left_out(means, counts) == {}


def test_a_site_withholds_a_class_its_noisy_target_left_out_and_keeps_the_spent_budget(tmp_path, fixed_dp_noise):
    from fedsynth.privacy.ledger import DP_TRAINING, RELEASE

    # epsilon 10: noise std ~0.5 on 4,001 coordinates, a noise norm ~33: the pneumonia images' mean
    # outweighs it, 6 normal images cannot (a noisy count of 14 would still leave noise of norm ~2.4 in the mean)
    cfg = _merf_config(tmp_path, "privacy.epsilon=10", "generator.n_frequencies=2000")
    site, state, _ = simulated_site_of(tmp_path, cfg, lambda y: few_of_class_zero(y, 6))
    release = site.release(cfg, "run-1")
    assert set(np.unique(release.labels)) == {1}
    assert release.meta["withheld_classes"]["normal"].startswith("not fitted: its noisy")
    assert release.meta["released_per_class"] == {"pneumonia": cfg.release.n_per_class}
    assert [e["type"] for e in state.ledger().entries()] == [DP_TRAINING, RELEASE]


def test_a_site_with_no_usable_class_records_what_it_spent_and_releases_nothing(tmp_path, fixed_dp_noise):
    from fedsynth.errors import DataError
    from fedsynth.privacy.ledger import DP_TRAINING

    # epsilon 0.2: noise std ~20 on 4,001 coordinates; 3 images of a class are nothing beside it
    cfg = _merf_config(tmp_path, "privacy.epsilon=0.2", "release.min_class_images=1", "generator.n_frequencies=2000")
    site, state, _ = simulated_site_of(tmp_path, cfg, lambda y: np.concatenate([np.flatnonzero(y == c)[:3]
                                                                               for c in (0, 1)]))
    with pytest.raises(DataError, match="no class left to release.*normal: not fitted.*pneumonia: not fitted"):
        site.release(cfg, "run-1")
    assert [e["type"] for e in state.ledger().entries()] == [DP_TRAINING]  # the statistic's budget is on record


# ---- under DP the release decisions read noisy counts, and exact counts stay at the site ---------------

def test_under_dp_merf_a_class_is_released_by_its_noisy_count_not_its_true_one(tmp_path, fixed_dp_noise):
    # 60 normal images, min_class_images 61: the true count alone would withhold normal before any
    # release; under DP the site decides on the statistic's noisy count (about 60, never the true one)
    cfg = _merf_config(tmp_path, "privacy.epsilon=10", "release.min_class_images=61")
    site, _, data = simulated_site_of(tmp_path, cfg, lambda y: few_of_class_zero(y, 60))
    release = site.release(cfg, "run-1")
    assert int((data.train.labels == 0).sum()) == 60 and int((data.train.labels == 1).sum()) > 61
    assert release.meta["withheld_classes"]["normal"].startswith("its noisy image count is ")
    assert "release.min_class_images=61" in release.meta["withheld_classes"]["normal"]
    assert set(np.unique(release.labels)) == {1}


def test_a_private_release_sends_no_exact_counts_and_a_public_one_does(tmp_path, fixed_dp_noise):
    cfg = _merf_config(tmp_path / "dp", "privacy.epsilon=10")
    private = simulated_site_of(tmp_path / "dp", cfg)[0].release(cfg, "run-1")
    assert private.meta["private"] is True
    assert private.meta["train_counts"] is None and private.meta["test_counts"] is None
    cfg = _merf_config(tmp_path / "plain", "privacy=null")
    site, _, data = simulated_site_of(tmp_path / "plain", cfg)
    public = site.release(cfg, "run-1")
    assert public.meta["private"] is False
    assert public.meta["train_counts"] == data.train.class_counts()
