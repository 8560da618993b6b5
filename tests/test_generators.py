import numpy as np
import pytest
import torch

from fedsynth.config import GANSection
from fedsynth.generators import FAMILIES, build_generator, load_generator
from fedsynth.generators.gan import diff_augment
from tests.conftest import assert_images

TINY = GANSection(epochs=2, base_channels=8, latent_dim=16, batch_size=32)


@pytest.fixture(scope="module")
def fitted(phantoms16):
    gen = build_generator(TINY, 16, seed=0, device="cpu")
    report = gen.fit(phantoms16.images, phantoms16.labels)
    return gen, report


def test_fit_reports_training(fitted, phantoms16):
    gen, report = fitted
    assert report.family == "gan" and report.epochs == 2
    assert report.images_seen >= len(phantoms16)
    assert len(report.history) == 2 and np.isfinite(report.history[-1]["loss_d"])
    assert report.images_per_second > 0


def test_sample_shapes_labels_and_range(fitted):
    gen, _ = fitted
    assert_images(gen.sample(5, 1), 5, 16)
    assert_images(gen.sample(4, np.array([0, 1, 0, 1])), 4, 16)
    assert gen.sample(0, 1).shape == (0, 16, 16)


def test_sampling_is_seeded_and_conditional(fitted):
    gen, _ = fitted
    np.testing.assert_array_equal(gen.sample(6, 0, seed=3), gen.sample(6, 0, seed=3))
    assert not np.array_equal(gen.sample(6, 0, seed=3), gen.sample(6, 0, seed=4))
    assert not np.array_equal(gen.sample(6, 0, seed=3), gen.sample(6, 1, seed=3))  # the label matters


def test_training_is_reproducible(phantoms16):
    a = build_generator(TINY, 16, seed=11, device="cpu")
    b = build_generator(TINY, 16, seed=11, device="cpu")
    a.fit(phantoms16.images, phantoms16.labels)
    b.fit(phantoms16.images, phantoms16.labels)
    np.testing.assert_allclose(a.sample(4, 1, seed=0), b.sample(4, 1, seed=0), atol=1e-6)


def test_save_load_roundtrip(fitted, tmp_path):
    gen, _ = fitted
    path = tmp_path / "g.safetensors"
    gen.save(path)
    again = load_generator(path, device="cpu")
    assert again.family == "gan" and again.resolution == 16
    np.testing.assert_array_equal(again.sample(4, 1, seed=9), gen.sample(4, 1, seed=9))


def test_inputs_validated_at_the_door(phantoms16):
    gen = build_generator(TINY, 16, seed=0, device="cpu")
    with pytest.raises(ValueError, match="images must have shape"):
        gen.fit(phantoms16.images[:, :8, :8], phantoms16.labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        gen.fit(phantoms16.images, phantoms16.labels[:-1])
    with pytest.raises(ValueError, match="labels must be 0"):
        gen.fit(phantoms16.images, phantoms16.labels + 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gen.fit(phantoms16.images * 3, phantoms16.labels)
    with pytest.raises(RuntimeError, match="not fitted"):
        gen.sample(2, 0)
    with pytest.raises(ValueError, match="resolution"):
        build_generator(TINY, 24)
    with pytest.raises(ValueError, match="unknown generator family"):
        build_generator(object(), 16)


def test_sample_request_validated(fitted):
    gen, _ = fitted
    with pytest.raises(ValueError, match="n must be"):
        gen.sample(-1, 0)
    with pytest.raises(ValueError, match="labels must be one class or 3"):
        gen.sample(3, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be 0"):
        gen.sample(2, 2)


def test_not_a_generator_file(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(p))
    with pytest.raises(ValueError, match="not a fedsynth generator"):
        load_generator(p)


def test_discriminator_has_no_batchnorm():
    # DP-SGD needs per-sample gradients: no layer may mix samples in the discriminator
    gen = build_generator(TINY, 32, seed=0, device="cpu")
    kinds = {type(m).__name__ for m in gen.discriminator.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_diff_augment_is_per_sample():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    x.requires_grad_(True)
    out = diff_augment(x)
    out[0].sum().backward()
    # only row 0 of the input receives gradient from row 0 of the output
    assert x.grad[1:].abs().sum() == 0 and x.grad[0].abs().sum() > 0


def test_registry_lists_families():
    assert "gan" in FAMILIES


def test_federated_state_carries_the_moving_average_across_rounds(fitted, phantoms16):
    gen, report = fitted
    state = gen.training_state()
    assert state["ema_steps"][0] == report.steps
    assert any(k.startswith("generator_ema.") for k in state)
    nxt = build_generator(TINY, 16, seed=5, device="cpu")
    nxt.load_training_state(state)
    np.testing.assert_array_equal(nxt.sample(3, 1, seed=2), gen.sample(3, 1, seed=2))  # samples from the average
    again = nxt.fit(phantoms16.images, phantoms16.labels)
    assert nxt.training_state()["ema_steps"][0] == report.steps + again.steps
