"""Class-conditional DCGAN-style GAN for one-channel chest X-rays.

Generator: noise and a label embedding -> 4x4 feature map -> transposed-conv upsampling
(each followed by pixel norm, which is stateless so training and sampling behave the
same) -> tanh image. Discriminator: strided convs with GroupNorm (not BatchNorm: its
per-batch statistics mix samples, which DP-SGD's per-sample gradients forbid) and a
projection head for the label (Miyato & Koyama 2018). Sampling uses an exponential
moving average of the generator weights.

Only the discriminator sees real images; under DP the generator is post-processing.
Both real and fake rows go through one discriminator forward, so per-sample gradient
hooks see one batch (see DESIGN.md, privacy).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.config import GANSection
from fedsynth.generators.base import (
    FitReport,
    Generator,
    ProgressFn,
    check_sample_request,
    check_training_data,
    seeded,
)


def _levels(resolution: int) -> int:
    levels = int(math.log2(resolution)) - 2
    if resolution < 16 or 2 ** (levels + 2) != resolution:
        raise ValueError(f"resolution must be a power of two >= 16; got {resolution}")
    return levels


def diff_augment(x: torch.Tensor) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al. 2020) applied to every image the
    discriminator sees, real and fake alike: random brightness/contrast, integer
    translation by up to 1/8 of the side, and a cutout of half the side.

    Each row is transformed independently, so per-sample gradients stay per sample
    (DP-SGD safe). It keeps a discriminator trained on a few hundred images from
    memorising them, the usual failure of GANs on small sites.
    """
    b, _, h, w = x.shape
    dev = x.device
    # brightness and contrast, around each image's mean
    x = x + (torch.rand(b, 1, 1, 1, device=dev) - 0.5) * 0.4
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev) + 0.5) + mean
    # translation with zero (black) padding
    shift = h // 8
    dy = torch.randint(-shift, shift + 1, (b, 1, 1), device=dev)
    dx = torch.randint(-shift, shift + 1, (b, 1, 1), device=dev)
    yy = torch.arange(h, device=dev).view(1, h, 1) + dy
    xx = torch.arange(w, device=dev).view(1, 1, w) + dx
    valid = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).unsqueeze(1)
    flat = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).view(b, 1, h * w)
    x = torch.gather(x.reshape(b, 1, h * w), 2, flat).view(b, 1, h, w) * valid - (~valid).float()
    # cutout: a (h/2 x w/2) square set to the background level
    cy = torch.randint(0, h, (b, 1, 1), device=dev)
    cx = torch.randint(0, w, (b, 1, 1), device=dev)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    cut = ((ys - cy).abs() < h // 4) & ((xs - cx).abs() < w // 4)
    return torch.where(cut.unsqueeze(1), torch.full_like(x, -1.0), x)


class GeneratorNet(nn.Module):
    def __init__(self, resolution: int, latent_dim: int, base: int, num_classes: int = 2):
        super().__init__()
        levels = _levels(resolution)
        self.latent_dim = latent_dim
        top = base * 2 ** (levels - 1)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(2 * latent_dim, top * 16, bias=False)
        self.project_norm = nn.BatchNorm2d(top)
        self.top = top
        blocks: list[nn.Module] = []
        ch = top
        for _ in range(levels):
            out = max(base, ch // 2)
            blocks += [nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.body = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(ch, 1, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.top, 4, 4)
        h = F.relu(self.project_norm(h))
        return torch.tanh(self.to_image(self.body(h)))


class DiscriminatorNet(nn.Module):
    def __init__(self, resolution: int, base: int, num_classes: int = 2):
        super().__init__()
        levels = _levels(resolution)
        layers: list[nn.Module] = [nn.Conv2d(1, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base
        for _ in range(levels - 1):
            out = ch * 2
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.GroupNorm(min(8, out // 4), out), nn.LeakyReLU(0.2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.features = ch
        self.linear = nn.Linear(ch, 1)
        self.embed = nn.Embedding(num_classes, ch)
        nn.init.normal_(self.embed.weight, std=ch**-0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


class ConditionalGAN(Generator):
    family = "gan"

    def __init__(self, config: GANSection | None = None, resolution: int = 32, seed: int = 0, device: str = "auto"):
        super().__init__(resolution, seed, device)
        self.config = config or GANSection()
        _levels(self.resolution)
        with seeded(self.seed):
            self.generator = GeneratorNet(self.resolution, self.config.latent_dim, self.config.base_channels)
            self.discriminator = DiscriminatorNet(self.resolution, self.config.base_channels)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.generator.to(self.device)
        self.discriminator.to(self.device)
        self.generator_ema.to(self.device)

    # ---- training ----------------------------------------------------------------------
    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        privacy: Any = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        images, labels = check_training_data(images, labels, self.resolution)
        if privacy is not None:
            raise ValueError("privacy: DP training is wired through fedsynth.privacy; see issue 3")
        cfg = self.config
        x = torch.from_numpy(images)[:, None] * 2.0 - 1.0
        y = torch.from_numpy(labels)
        with seeded(self.seed + 1):
            loader_gen = torch.Generator().manual_seed(self.seed + 2)
            loader = DataLoader(
                TensorDataset(x, y),
                batch_size=min(cfg.batch_size, len(x)),
                shuffle=True,
                drop_last=len(x) >= 2 * cfg.batch_size,
                generator=loader_gen,
            )
            return self._train(loader, progress)

    def _train(self, loader: DataLoader, progress: ProgressFn | None) -> FitReport:
        cfg = self.config
        g, d = self.generator, self.discriminator
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_discriminator, betas=(cfg.beta1, 0.999))
        g.train()
        d.train()
        start = time.perf_counter()
        steps = seen = 0
        history: list[dict[str, float]] = []
        for epoch in range(cfg.epochs):
            sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
            batches = 0
            for xb, yb in loader:
                if xb.shape[0] == 0:
                    continue
                xb, yb = xb.to(self.device), yb.to(self.device)
                b = xb.shape[0]
                # discriminator: real and fake rows in one forward pass
                with torch.no_grad():
                    fake = g(torch.randn(b, cfg.latent_dim, device=self.device), yb)
                both = torch.cat([xb, fake])
                if cfg.diff_augment:
                    both = diff_augment(both)
                logits = d(both, torch.cat([yb, yb]))
                target = torch.cat([torch.ones(b, device=self.device), torch.zeros(b, device=self.device)])
                loss_d = F.binary_cross_entropy_with_logits(logits, target)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                # generator: non-saturating loss through the (frozen) discriminator
                yg = yb[torch.randperm(b, device=self.device)]
                d.requires_grad_(False)
                fake_g = g(torch.randn(b, cfg.latent_dim, device=self.device), yg)
                logits_g = d(diff_augment(fake_g) if cfg.diff_augment else fake_g, yg)
                loss_g = F.binary_cross_entropy_with_logits(logits_g, torch.ones(b, device=self.device))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                d.requires_grad_(True)
                steps += 1
                self._update_ema(steps)
                seen += b
                batches += 1
                sums["loss_d"] += loss_d.item()
                sums["loss_g"] += loss_g.item()
                sums["d_real"] += torch.sigmoid(logits[:b]).mean().item()
                sums["d_fake"] += torch.sigmoid(logits[b:]).mean().item()
            row = {k: v / max(batches, 1) for k, v in sums.items()}
            row["epoch"] = epoch + 1
            history.append(row)
            if progress is not None:
                progress(epoch + 1, cfg.epochs, row)
        self.fitted = True
        return FitReport(
            family=self.family,
            epochs=cfg.epochs,
            steps=steps,
            seconds=time.perf_counter() - start,
            images_seen=seen,
            history=history,
        )

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # warm-up: early on the average follows the weights closely, so a short run
        # (a few hundred steps) does not sample from a nearly untrained average
        decay = min(self.config.ema_decay, (1.0 + step) / (10.0 + step))
        for pe, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            be.copy_(b)

    # ---- sampling ------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray:
        self._require_fitted()
        y_all = check_sample_request(n, labels)
        out = np.empty((len(y_all), self.resolution, self.resolution), dtype=np.float32)
        gen = torch.Generator().manual_seed(self.seed + 7 if seed is None else seed)
        net = self.generator_ema if self.config.ema_decay > 0 else self.generator.eval()
        for start in range(0, len(y_all), 256):
            y = torch.from_numpy(y_all[start : start + 256]).to(self.device)
            z = torch.randn(len(y), self.config.latent_dim, generator=gen).to(self.device)
            img = (net(z, y)[:, 0] + 1.0) / 2.0
            out[start : start + len(y)] = img.clamp_(0, 1).cpu().numpy()
        return out

    # ---- persistence -----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"gan": self.config.model_dump(), "seed": self.seed}

    def sampling_state(self) -> dict[str, torch.Tensor]:
        net = self.generator_ema if self.config.ema_decay > 0 else self.generator
        return dict(net.state_dict())

    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator_ema.load_state_dict(state)
        self.generator.load_state_dict(state)
        self.fitted = True

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], resolution: int, device: str = "auto") -> ConditionalGAN:
        return cls(GANSection(**config["gan"]), resolution=resolution, seed=int(config.get("seed", 0)), device=device)
