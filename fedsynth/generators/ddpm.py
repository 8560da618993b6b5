"""Class-conditional denoising diffusion on diffusers' ``UNet2DModel``.

Training follows DDPM (Ho et al. 2020): a noise level t is drawn per example, the image
is noised by the DDPM scheduler and the UNet predicts the noise. The class enters
through the UNet's class embedding (``num_class_embeds``); one extra "null" class,
used for a ``label_dropout`` share of the examples, makes classifier-free guidance
possible at sampling time (Ho & Salimans 2022). Sampling uses a DDIM scheduler built
from the same noise schedule (``sampling_steps`` steps) and an exponential moving average
of the weights (diffusers' ``EMAModel``).

Under DP-SGD (Dockhorn et al. 2022, "Differentially private diffusion models") each
private example is used with ``augmentation_multiplicity`` noise levels per step and
its per-example gradient is the mean over them, taken before clipping: the clipped
quantity is still one example's gradient, so the accounting is unchanged while the
gradient estimate is far less noisy. GroupNorm throughout keeps per-sample gradients
per sample; Opacus computes them with its hooks mode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedsynth.config import DDPMSection
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.generators.base import (
    FitReport,
    Generator,
    check_strength,
    run_epochs,
)
from fedsynth.privacy.dp import DPPlan, PrivateTraining
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import exchangeable, load_exchangeable, seeded


def _unet(cfg: DDPMSection, resolution: int, num_classes: int = 2):
    from diffusers import UNet2DModel

    levels = len(cfg.block_out_channels)
    if resolution % (2 ** (levels - 1)):
        raise ValueError(f"resolution {resolution} is not divisible by 2^{levels - 1} (block_out_channels)")
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:  # self-attention at the coarsest level only: cheap, and where it helps
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        num_class_embeds=num_classes + 1,  # the last is the "no label" class of classifier-free guidance
        add_attention=cfg.attention,
    )


class Denoiser(nn.Module):
    """``forward(x, t, y) -> predicted noise``: the UNet as Opacus needs it (one tensor out,
    a per-sample timestep tensor in)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=y).sample


class DiffusionGenerator(Generator):
    config_class = DDPMSection

    def __init__(self, config: DDPMSection | None = None, resolution: int = 32, seed: int = 0, device: str = "auto",
                 classes: tuple[str, ...] = CLASS_NAMES):
        from diffusers import DDIMScheduler, DDPMScheduler

        super().__init__(resolution, seed, device, classes)
        self.config = config or DDPMSection()
        self.null_class = self.num_classes  # the "no label" class used for classifier-free guidance
        with seeded(self.seed):
            self.denoiser = Denoiser(_unet(self.config, self.resolution, self.num_classes))
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type="epsilon",
        )
        # "trailing" spacing keeps the last sampling step at the noisiest level: better with few steps
        self.sampler = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        self.ema_state: dict[str, torch.Tensor] | None = None
        self.denoiser.to(self.device)
        # on a GPU: channels-last convolutions and bf16 autocast, which is where they help
        self._fast = self.device.type == "cuda"
        if self._fast:
            self.denoiser.to(memory_format=torch.channels_last)

    # ---- training ----------------------------------------------------------------------
    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        privacy: DPPlan | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        loader = self.training_loader(images, labels, privacy, self.config.epochs, self.config.batch_size)
        with seeded(self.seed + 1):
            return self._train(loader, progress, privacy)

    def _train(self, loader: DataLoader, progress: ProgressFn | None, privacy: DPPlan | None) -> FitReport:
        from diffusers.training_utils import EMAModel

        cfg = self.config
        model = self.denoiser
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        step_model, dp = model, None
        if privacy is not None:
            dp = PrivateTraining(privacy)
            step_model, opt, loader = dp.wrap(model, opt, loader)
        ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
        k = cfg.augmentation_multiplicity if privacy is not None else 1
        gen = torch.Generator().manual_seed(self.seed + 4)

        def step(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, float]:
            b = xb.shape[0]
            # bf16 autocast on a GPU (not under DP: Opacus's per-sample hooks want full precision)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._fast and privacy is None):
                loss = self._loss(step_model, xb.to(self.device), yb.to(self.device), k, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if k > 1 and b > 0:
                _average_replicas(model, b, k)
            opt.step()
            ema.step(model.parameters())
            return {"loss": loss.item()}

        report = run_epochs(self.family, cfg.epochs, loader, step, progress, private=privacy is not None)
        if dp is not None:
            step_model.remove_hooks()
            report.privacy = dp.result()
        # keep the EMA weights for sampling; the raw weights stay for federated averaging
        self.ema_state = {n: p.detach().clone() for n, p in zip(
            [n for n, _ in model.named_parameters()], ema.shadow_params)}
        self.fitted = True
        return report

    def _loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """Mean noise-prediction error; with ``k`` > 1 each example appears k times in a row."""
        if k > 1:
            x0, y = x0.repeat_interleave(k, 0), y.repeat_interleave(k, 0)
        n = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (n,), generator=gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        drop = torch.rand(n, generator=gen).to(self.device) < self.config.label_dropout
        y = torch.where(drop, torch.full_like(y, self.null_class), y)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        per_row = F.mse_loss(model(noisy, t, y), noise, reduction="none").flatten(1).mean(1)
        return per_row.sum() / max(n, 1)  # = mean; an empty Poisson batch still takes its noise-only step

    # ---- sampling -----------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray:
        self._require_fitted()
        y_all = self.check_samples(n, labels)
        net = self._sampling_net()
        gen = torch.Generator().manual_seed(self.seed + 7 if seed is None else seed)
        self.sampler.set_timesteps(self.config.sampling_steps)
        out = np.empty((len(y_all), self.resolution, self.resolution), dtype=np.float32)
        for start in range(0, len(y_all), self._batch()):
            y = torch.from_numpy(y_all[start : start + self._batch()]).to(self.device)
            x = torch.randn((len(y), 1, self.resolution, self.resolution), generator=gen).to(self.device)
            x = self._denoise(net, x, y, self.sampler.timesteps)
            out[start : start + len(y)] = ((x[:, 0].clamp(-1, 1) + 1) / 2).float().cpu().numpy()
        return out

    @torch.inference_mode()
    def edit(self, n: int, source: int, target: int, strength: float,
             seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """SDEdit (Meng et al. 2022): sample ``n`` images of class ``source``, noise them back to the
        fraction ``strength`` of the sampling schedule and denoise them as class ``target``: the
        higher the strength, the more of the image is redrawn (0 keeps it, 1 samples anew)."""
        self._require_fitted()
        strength = check_strength(strength)
        self.check_samples(1, target)
        src = self.sample(n, source, seed)
        if strength == 0 or n == 0:
            return src, src.copy()
        net = self._sampling_net()
        gen = torch.Generator().manual_seed((self.seed + 11 if seed is None else seed) + 1)
        self.sampler.set_timesteps(self.config.sampling_steps)
        steps = self.sampler.timesteps
        first = min(len(steps) - 1, int(round((1 - strength) * len(steps))))
        out = np.empty_like(src)
        for start in range(0, n, self._batch()):
            x0 = torch.from_numpy(src[start : start + self._batch()])[:, None].to(self.device) * 2 - 1
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            x = self.noise_scheduler.add_noise(x0, noise, steps[first : first + 1].to(self.device))
            y = torch.full((len(x0),), int(self.check_samples(1, target)[0]), device=self.device)
            x = self._denoise(net, x, y, steps[first:])
            out[start : start + len(x0)] = ((x[:, 0].clamp(-1, 1) + 1) / 2).float().cpu().numpy()
        return src, out

    def _batch(self) -> int:
        return self.config.sample_batch_size or (256 if self.device.type == "cuda" else 32)

    def _denoise(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """DDIM steps with classifier-free guidance from ``x`` at ``timesteps[0]`` down to an image."""
        b = len(y)
        y_both = torch.cat([y, torch.full_like(y, self.null_class)])
        for t in timesteps:
            tt = torch.full((2 * b,), int(t), device=self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._fast):
                eps = net(torch.cat([x, x]).contiguous(memory_format=torch.channels_last), tt, y_both).float()
            cond, uncond = eps[:b], eps[b:]
            x = self.sampler.step(uncond + self.config.guidance_scale * (cond - uncond), t, x).prev_sample
        return x

    def _sampling_net(self) -> nn.Module:
        """A copy with the EMA weights, channels-last: on a CPU too, where inference at 32 px
        is faster that way (benchmarks/ddpm_sampling.py); training keeps NCHW, where it was not."""
        import copy

        net = copy.deepcopy(self.denoiser)
        if self.ema_state is not None:
            params = dict(net.named_parameters())
            with torch.no_grad():
                for name, value in self.ema_state.items():
                    params[name].copy_(value)
        return net.to(memory_format=torch.channels_last).eval()

    # ---- persistence ----------------------------------------------------------------------
    def sampling_state(self) -> dict[str, torch.Tensor]:
        return dict(self._sampling_net().state_dict())

    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None:
        self.denoiser.load_state_dict(state)
        self.ema_state = None
        self.fitted = True

    def training_state(self) -> dict[str, np.ndarray]:
        return exchangeable(self.denoiser.state_dict())

    def load_training_state(self, state: dict[str, np.ndarray]) -> None:
        load_exchangeable(self.denoiser, state)
        self.ema_state = None
        self.fitted = True



def _average_replicas(model: nn.Module, b: int, k: int) -> None:
    """Turn Opacus's per-row gradients (b*k rows) into per-example gradients (b rows): the
    mean over each example's k noise levels, before the optimizer clips them."""
    for p in model.parameters():
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            continue
        if gs.shape[0] != b * k:
            raise RuntimeError(f"expected {b * k} per-row gradients, got {gs.shape[0]}")
        p.grad_sample = gs.view(b, k, *gs.shape[1:]).mean(dim=1)
