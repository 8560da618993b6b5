"""LoRA fine-tuning of a Stable Diffusion checkpoint that the site has on disk.

The pretrained VAE, text encoder and UNet stay frozen; low-rank adapters (peft) on the
UNet's attention projections learn chest X-rays from the site's images, prompted by
label ("chest x-ray, pneumonia" / "chest x-ray, no finding"). Ten percent of the training
prompts are empty so that sampling can use classifier-free guidance. Images are
replicated to three channels for the VAE and averaged back to one after decoding.

Nothing is downloaded: the checkpoint is a local diffusers folder (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), and a missing or
incomplete folder is refused with a message that says what is missing. Under DP-SGD only
the LoRA parameters train, so only they are wrapped by Opacus.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedsynth.config import SDLoRASection
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.errors import ConfigError
from fedsynth.generators.base import (
    FitReport,
    Generator,
    run_epochs,
)
from fedsynth.privacy.dp import DPPlan, PrivateTraining
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import seeded

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PROMPT_DROPOUT = 0.1


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder, or a ConfigError naming what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"generator.checkpoint: no Stable Diffusion folder at {p}")
    missing = [name for name in ("model_index.json", *PARTS) if not (p / name).exists()]
    if missing:
        raise ConfigError(f"generator.checkpoint {p} is incomplete: missing {', '.join(missing)} "
                          "(expected a diffusers pipeline folder saved with save_pretrained)")
    for part in ("unet", "vae", "text_encoder"):
        if not any((p / part).glob("*.safetensors")) and not any((p / part).glob("*.bin")):
            raise ConfigError(f"generator.checkpoint {p}: {part}/ has no weights (*.safetensors or *.bin)")
    return p


class _Denoiser(nn.Module):
    """``forward(noisy, t, text) -> noise``: the conditional UNet as Opacus needs it."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=text).sample


class StableDiffusionLoRA(Generator):
    config_class = SDLoRASection

    def __init__(self, config: SDLoRASection, resolution: int = 64, seed: int = 0, device: str = "auto",
                 classes: tuple[str, ...] = CLASS_NAMES):
        super().__init__(resolution, seed, device, classes)
        self.config = config
        self.path = check_checkpoint(config.checkpoint)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the weights are local
        import diffusers
        import transformers
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        for lib in (diffusers, transformers):  # their per-file progress bars and notices are noise here
            lib.utils.logging.set_verbosity_error()
            lib.utils.logging.disable_progress_bar()

        kw = {"local_files_only": True}
        try:
            self.vae = AutoencoderKL.from_pretrained(self.path, subfolder="vae", **kw)
            self.unet = UNet2DConditionModel.from_pretrained(self.path, subfolder="unet", **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder", **kw)
            self.tokenizer = CLIPTokenizer.from_pretrained(self.path, subfolder="tokenizer", **kw)
            self.noise_scheduler = DDPMScheduler.from_pretrained(self.path, subfolder="scheduler", **kw)
        except (OSError, ValueError) as err:
            raise ConfigError(f"generator.checkpoint {self.path} cannot be loaded: {err}") from None
        self.sampler = DDIMScheduler.from_config(self.noise_scheduler.config)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if resolution % scale:
            raise ConfigError(f"data.resolution {resolution} is not divisible by the VAE's factor {scale}")
        for m in (self.vae, self.unet, self.text_encoder):
            m.requires_grad_(False)
            m.eval()
        with seeded(self.seed):
            self.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha,
                                             target_modules=list(config.target_modules), init_lora_weights="gaussian"))
        for m in (self.vae, self.unet, self.text_encoder):
            m.to(self.device)

    # ---- helpers ---------------------------------------------------------------------------
    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    @torch.no_grad()
    def _text(self) -> torch.Tensor:
        """Embeddings of one prompt per class of the label set, then the empty prompt (at index
        ``num_classes``): the normal prompt for class 0, the pneumonia prompt for the binary
        set's class 1, the pneumonia prompt with the class's name for a finer set's others."""
        c = self.config
        prompts = [c.prompt_normal] + [c.prompt_pneumonia if self.num_classes == 2 else f"{c.prompt_pneumonia}, {name}"
                                       for name in self.classes[1:]]
        tokens = self.tokenizer([*prompts, ""], padding="max_length",
                                max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    @torch.no_grad()
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.repeat(1, 3, 1, 1)
        return self.vae.encode(rgb).latent_dist.mean * self.vae.config.scaling_factor

    # ---- training --------------------------------------------------------------------------
    def fit(self, images: np.ndarray, labels: np.ndarray, privacy: DPPlan | None = None,
            progress: ProgressFn | None = None) -> FitReport:
        cfg = self.config
        loader = self.training_loader(images, labels, privacy, cfg.epochs, cfg.batch_size)
        text = self._text()
        denoiser = _Denoiser(self.unet)
        opt = torch.optim.AdamW(self.lora_parameters(), lr=cfg.lr)
        with seeded(self.seed + 1):
            step_model, dp = denoiser, None
            if privacy is not None:
                dp = PrivateTraining(privacy)
                step_model, opt, loader = dp.wrap(denoiser, opt, loader)
            gen = torch.Generator().manual_seed(self.seed + 4)

            def step(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, float]:
                b = xb.shape[0]
                latents = self._latents(xb.to(self.device))
                noise = torch.randn(latents.shape, generator=gen).to(self.device)
                t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
                t = t.to(self.device)
                drop = torch.rand(b, generator=gen).to(self.device) < PROMPT_DROPOUT
                yb = yb.to(self.device)
                cond = text[torch.where(drop, torch.full_like(yb, self.num_classes), yb)]
                noisy = self.noise_scheduler.add_noise(latents, noise, t)
                per_row = F.mse_loss(step_model(noisy, t, cond), noise, reduction="none").flatten(1).mean(1)
                loss = per_row.sum() / max(b, 1)  # = mean; an empty Poisson batch still takes its noise step
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return {"loss": loss.item()}

            self.unet.train()
            report = run_epochs(self.family, cfg.epochs, loader, step, progress, private=privacy is not None)
            if dp is not None:
                step_model.remove_hooks()
                report.privacy = dp.result()
        self.unet.eval()
        self.fitted = True
        return report

    # ---- sampling --------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray:
        self._require_fitted()
        y_all = self.check_samples(n, labels)
        cfg = self.config
        text = self._text()
        gen = torch.Generator().manual_seed(self.seed + 7 if seed is None else seed)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.resolution // scale
        channels = self.unet.config.in_channels
        self.sampler.set_timesteps(cfg.sampling_steps)
        out = np.empty((len(y_all), self.resolution, self.resolution), dtype=np.float32)
        for start in range(0, len(y_all), cfg.sample_batch_size):
            y = torch.from_numpy(y_all[start : start + cfg.sample_batch_size]).to(self.device)
            b = len(y)
            lat = torch.randn((b, channels, side, side), generator=gen).to(self.device)
            lat = lat * self.sampler.init_noise_sigma
            both = torch.cat([text[y], text[self.num_classes].expand(b, -1, -1)])
            for t in self.sampler.timesteps:
                eps = self.unet(torch.cat([lat, lat]), t, encoder_hidden_states=both).sample
                guided = eps[b:] + cfg.guidance_scale * (eps[:b] - eps[b:])
                lat = self.sampler.step(guided, t, lat).prev_sample
            rgb = self.vae.decode(lat / self.vae.config.scaling_factor).sample
            gray = rgb.mean(dim=1).clamp(-1, 1)
            out[start : start + b] = ((gray + 1) / 2).float().cpu().numpy()
        return out

    # ---- persistence: the adapters only; the checkpoint stays where the site keeps it ----------
    def sampling_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(self.unet))

    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.unet, state)
        self.fitted = True

    def training_state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.sampling_state().items()}

    def load_training_state(self, state: dict[str, np.ndarray]) -> None:
        self.load_sampling_state({k: torch.as_tensor(v) for k, v in state.items()})

