"""Diffusion generators: a class-conditional DDPM on diffusers and LoRA on a local Stable
Diffusion checkpoint, behind the same interface as the GAN, with and without DP."""

from pathlib import Path

import numpy as np
import pytest

from fedsynth.config import DDPMSection, PrivacySection, SDLoRASection
from fedsynth.errors import ConfigError
from fedsynth.generators import build_generator, load_generator
from fedsynth.privacy.dp import plan_training
from tests.conftest import assert_images

TINY_DDPM = DDPMSection(block_out_channels=[8, 16], norm_num_groups=4, epochs=2, batch_size=16, sampling_steps=4,
                        sample_batch_size=8)


@pytest.fixture(scope="module")
def ddpm(phantoms16):
    gen = build_generator(TINY_DDPM, 16, seed=0, device="cpu")
    return gen, gen.fit(phantoms16.images, phantoms16.labels)


def test_ddpm_interface(ddpm, tmp_path):
    gen, report = ddpm
    assert report.family == "ddpm" and len(report.history) == 2 and np.isfinite(report.history[-1]["loss"])
    assert_images(gen.sample(5, 1), 5, 16)
    np.testing.assert_array_equal(gen.sample(3, 0, seed=1), gen.sample(3, 0, seed=1))
    assert not np.array_equal(gen.sample(3, 0, seed=1), gen.sample(3, 1, seed=1)), "the class conditions sampling"
    gen.save(tmp_path / "d.safetensors")
    again = load_generator(tmp_path / "d.safetensors", device="cpu")
    np.testing.assert_allclose(again.sample(3, 1, seed=2), gen.sample(3, 1, seed=2), atol=1e-5)


def test_ddpm_uses_a_null_class_for_guidance(ddpm):
    gen, _ = ddpm
    # one embedding per class of the label set, then the null class (index num_classes)
    assert gen.denoiser.unet.config.num_class_embeds == 3 and gen.null_class == 2
    assert gen.sampler.__class__.__name__ == "DDIMScheduler"
    assert gen.noise_scheduler.__class__.__name__ == "DDPMScheduler"


def test_ddpm_training_state_round_trips(ddpm):
    gen, _ = ddpm
    other = build_generator(TINY_DDPM, 16, seed=9, device="cpu")
    other.load_training_state(gen.training_state())
    for k, v in gen.training_state().items():
        np.testing.assert_array_equal(v, other.training_state()[k])


@pytest.mark.parametrize("attention", [False, True])
def test_ddpm_dp_training_is_accounted(phantoms16, attention):
    cfg = TINY_DDPM.model_copy(update={"epochs": 1, "attention": attention, "augmentation_multiplicity": 3})
    plan = plan_training(PrivacySection(epsilon=6, delta=1e-3), len(phantoms16), cfg.batch_size, cfg.epochs)
    report = build_generator(cfg, 16, seed=0, device="cpu").fit(phantoms16.images, phantoms16.labels, privacy=plan)
    mech = report.privacy["mechanism"]
    assert mech["steps"] == plan.steps and mech["noise_multiplier"] == plan.noise_multiplier
    assert 5.0 < report.privacy["epsilon"] <= 6.0 + 1e-9


def test_augmentation_multiplicity_averages_per_example_gradients():
    """k noise levels per example: Opacus's per-row gradients become one per example, the mean of its k rows."""
    import torch

    from fedsynth.generators.ddpm import _average_replicas

    lin = torch.nn.Linear(2, 1)
    rows = torch.arange(12.0).view(6, 1, 2)  # 2 examples x 3 replicas
    lin.weight.grad_sample = rows
    _average_replicas(lin, b=2, k=3)
    torch.testing.assert_close(lin.weight.grad_sample, torch.tensor([[[2.0, 3.0]], [[8.0, 9.0]]]))


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_ddpm_config_is_validated():
    with pytest.raises(ValueError, match="norm_num_groups"):
        DDPMSection(block_out_channels=[10, 20], norm_num_groups=8)
    with pytest.raises(ValueError, match="divisible"):
        build_generator(DDPMSection(block_out_channels=[8, 8, 8, 8, 8, 8], norm_num_groups=4), 16)


# ---- Stable Diffusion + LoRA -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tests.sd_tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_sd_lora_refuses_a_missing_or_incomplete_checkpoint(tmp_path, tiny_sd):
    with pytest.raises(ConfigError, match="no Stable Diffusion folder"):
        build_generator(SDLoRASection(checkpoint=str(tmp_path / "nope")), 16)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError, match="missing unet, vae, text_encoder, tokenizer, scheduler"):
        build_generator(SDLoRASection(checkpoint=str(partial)), 16)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError, match="vae/ has no weights"):
        build_generator(SDLoRASection(checkpoint=str(broken)), 16)


def test_sd_lora_trains_only_adapters_and_round_trips(tiny_sd, tmp_path):
    from fedsynth.data.phantom import make_phantoms

    ds = make_phantoms(24, 16, seed=2)
    cfg = SDLoRASection(checkpoint=str(tiny_sd), epochs=1, batch_size=8, sampling_steps=2, rank=2)
    gen = build_generator(cfg, 16, seed=0, device="cpu")
    frozen = {n: p.detach().clone() for n, p in gen.unet.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in gen.unet.named_parameters() if "lora_" in n}
    report = gen.fit(ds.images, ds.labels)
    assert report.family == "sd-lora" and np.isfinite(report.history[0]["loss"])
    for n, p in gen.unet.named_parameters():
        if "lora_" in n:
            continue
        assert np.array_equal(p.detach().numpy(), frozen[n].numpy()), f"{n} changed: only adapters may train"
    assert any(not np.array_equal(p.detach().numpy(), lora_before[n].numpy())
               for n, p in gen.unet.named_parameters() if "lora_" in n)
    assert_images(gen.sample(3, 1, seed=1), 3, 16)
    gen.save(tmp_path / "lora.safetensors")
    again = load_generator(tmp_path / "lora.safetensors", device="cpu")
    np.testing.assert_allclose(again.sample(2, 0, seed=4), gen.sample(2, 0, seed=4), atol=1e-5)


def test_sd_lora_with_dp_on_the_adapters(tiny_sd):
    from fedsynth.data.phantom import make_phantoms

    ds = make_phantoms(24, 16, seed=3)
    cfg = SDLoRASection(checkpoint=str(tiny_sd), epochs=1, batch_size=8, sampling_steps=2, rank=2)
    plan = plan_training(PrivacySection(epsilon=8, delta=1e-3), len(ds), cfg.batch_size, cfg.epochs)
    report = build_generator(cfg, 16, seed=0, device="cpu").fit(ds.images, ds.labels, privacy=plan)
    assert report.privacy["mechanism"]["steps"] == plan.steps and report.privacy["epsilon"] <= 8 + 1e-9


# ---- a site switches family; the federation runs unchanged -------------------------------------


def test_sites_choose_their_generator_family_and_the_federation_runs_unchanged(tiny_config, tiny_sd):
    from fedsynth.simulation import simulate

    cfg = tiny_config
    cfg.sites.budget = cfg.sites.budget.model_copy(update={"delta": 1e-3})
    cfg.privacy = PrivacySection(epsilon=8, delta=1e-3)
    cfg.sites.generators = {
        "site-1": TINY_DDPM.model_copy(update={"epochs": 1}),
        "site-2": SDLoRASection(checkpoint=str(tiny_sd), epochs=1, batch_size=8, sampling_steps=2, rank=2),
    }
    _, m = simulate(cfg, engine="inprocess")
    m = m.model_dump(mode="json")
    families = {k: v["release"]["generator"]["family"] for k, v in m["sites"].items()}
    assert families == {"site-0": "gan", "site-1": "ddpm", "site-2": "sd-lora"}
    assert m["private"] is True and all(v["status"] == "ok" for v in m["sites"].values())
    assert all(p["epsilon"] <= 8 + 1e-9 for p in m["privacy"]["sites"].values())
    assert Path(m["run_id"]).name
