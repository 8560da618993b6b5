"""Class-conditional DCGAN-style GAN for one-channel chest X-rays.

Generator: noise -> 4x4 feature map -> transposed-conv upsampling, each followed by a
class-conditional BatchNorm (the label sets each channel's scale and shift; de Vries et
al. 2017, as in projection cGANs) -> tanh image. The generator never sees real images,
so BatchNorm is allowed there. Discriminator: strided convs with GroupNorm (not
BatchNorm: its per-batch statistics mix samples, which DP-SGD's per-sample gradients
forbid), optional differentiable augmentation of its inputs, and a projection head for
the label (Miyato & Koyama 2018). Sampling uses an exponential moving average of the
generator weights.

Only the discriminator sees real images; under DP the generator is post-processing.
Both real and fake rows go through one discriminator forward, so per-sample gradient
hooks see one batch (see DESIGN.md, privacy).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedsynth.config import GANSection
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.generators.base import (
    FitReport,
    Generator,
    check_sample_request,
    check_strength,
    run_epochs,
)
from fedsynth.privacy.dp import DPPlan, PrivateTraining
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import exchangeable, load_exchangeable, seeded


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


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift depend on the class (de Vries et al. 2017)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_to: torch.Tensor | None = None,
                mix: float = 0.0) -> torch.Tensor:
        gain, bias = self.gain(y), self.bias(y)
        if y_to is not None:  # an edit: the class's scale and shift moved towards another class's
            gain, bias = torch.lerp(gain, self.gain(y_to), mix), torch.lerp(bias, self.bias(y_to), mix)
        return self.norm(x) * gain[:, :, None, None] + bias[:, :, None, None]


class GeneratorNet(nn.Module):
    def __init__(self, resolution: int, latent_dim: int, base: int, num_classes: int = 2):
        super().__init__()
        levels = _levels(resolution)
        self.latent_dim = latent_dim
        top = base * 2 ** (levels - 1)
        self.project = nn.Linear(latent_dim, top * 16, bias=False)
        self.top = top
        self.norms = nn.ModuleList([ConditionalBatchNorm(top, num_classes)])
        self.ups = nn.ModuleList()
        ch = top
        for _ in range(levels):
            out = max(base, ch // 2)
            self.ups.append(nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=False))
            self.norms.append(ConditionalBatchNorm(out, num_classes))
            ch = out
        self.to_image = nn.Conv2d(ch, 1, 3, 1, 1)
        # channels-last weights make every convolution run channels-last (float32, same arithmetic):
        # a dp-merf fit step at 32 px took 0.99 s on one CPU thread in the default layout, 0.55 s in
        # this one (a scratch timing; README, Speed). The transposed convolutions take most of the time
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor, y: torch.Tensor, y_to: torch.Tensor | None = None,
                mix: float = 0.0) -> torch.Tensor:
        h = self.project(z).view(-1, self.top, 4, 4)
        h = F.relu(self.norms[0](h, y, y_to, mix))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = F.relu(norm(up(h), y, y_to, mix))
        return torch.tanh(self.to_image(h))


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


class DiscriminatorLoss(nn.Module):
    """The discriminator's loss as a per-row criterion of ``(logits, is_real)``: real rows are
    pushed up, fake rows down. Written as a criterion with torch's ``reduction`` attribute so
    that Opacus's ghost clipping (``privacy.grad_sample_mode: ghost``) can take the per-row
    losses it needs for its two backward passes; hooks and functorch use the mean."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
        if self.kind == "hinge":
            per_row = torch.where(is_real, F.relu(1.0 - logits), F.relu(1.0 + logits))
        else:
            per_row = F.softplus(torch.where(is_real, -logits, logits))  # BCE with targets 1 / 0
        return per_row if self.reduction == "none" else per_row.mean()


def _g_loss(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return -logits.mean() if kind == "hinge" else F.softplus(-logits).mean()


def edit_with_latents(net: GeneratorNet, latent_dim: int, resolution: int, device: torch.device, n: int, source: int,
                      target: int, strength: float, seed: int,
                      classes: tuple[str, ...] = CLASS_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """(images of ``source``, the same latents with the class moved towards ``target``)."""
    y0 = torch.from_numpy(check_sample_request(n, source, classes)).to(device)
    y1 = torch.from_numpy(check_sample_request(n, target, classes)).to(device)
    gen = torch.Generator().manual_seed(seed)
    src = np.empty((n, resolution, resolution), dtype=np.float32)
    out = np.empty_like(src)
    for start in range(0, n, 256):
        z = torch.randn(len(y0[start:start + 256]), latent_dim, generator=gen).to(device)
        a, b = y0[start:start + 256], y1[start:start + 256]
        src[start:start + len(a)] = ((net(z, a)[:, 0] + 1) / 2).clamp_(0, 1).cpu().numpy()
        out[start:start + len(a)] = ((net(z, a, b, strength)[:, 0] + 1) / 2).clamp_(0, 1).cpu().numpy()
    return src, out


class ConditionalGAN(Generator):
    config_class = GANSection

    def __init__(self, config: GANSection | None = None, resolution: int = 32, seed: int = 0, device: str = "auto",
                 classes: tuple[str, ...] = CLASS_NAMES):
        super().__init__(resolution, seed, device, classes)
        self.config = config or GANSection()
        _levels(self.resolution)
        with seeded(self.seed):
            self.generator = GeneratorNet(self.resolution, self.config.latent_dim, self.config.base_channels,
                                          self.num_classes)
            self.discriminator = DiscriminatorNet(self.resolution, self.config.discriminator_channels
                                                 or self.config.base_channels, self.num_classes)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.ema_steps = 0  # steps the average has seen, across federated rounds too (its warm-up)
        self.generator.to(self.device)
        self.discriminator.to(self.device)
        self.generator_ema.to(self.device)

    # ---- training ----------------------------------------------------------------------
    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        privacy: DPPlan | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Train on (images, labels); with a DP plan the discriminator trains with DP-SGD."""
        loader = self.training_loader(images, labels, privacy, self.config.epochs, self.config.batch_size,
                                      drop_last=True)
        with seeded(self.seed + 1):
            return self._train(loader, progress, privacy)

    def _train(self, loader: DataLoader, progress: ProgressFn | None, privacy: DPPlan | None) -> FitReport:
        cfg = self.config
        g, d = self.generator, self.discriminator
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_discriminator, betas=(cfg.beta1, 0.999))
        d_step = d
        d_criterion = DiscriminatorLoss(cfg.loss)
        dp = None
        if privacy is not None:
            # Only the discriminator sees real images, so only it is made private; the
            # generator learns through it and is post-processing of its DP outputs.
            dp = PrivateTraining(privacy)
            d_step, opt_d, loader = dp.wrap(d, opt_d, loader, criterion=d_criterion)
            d_criterion = dp.criterion  # under ghost clipping, Opacus's two-pass wrapper
        g.train()
        d.train()

        def step(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, float]:
            b = xb.shape[0]
            xb, yb = xb.to(self.device), yb.to(self.device)
            if privacy is not None:
                # a fixed number of fakes with random labels: nothing about the fake rows
                # may depend on which real images the Poisson sample drew
                n_fake = privacy.expected_batch_size
                y_fake = torch.randint(0, self.num_classes, (n_fake,), device=self.device)
            else:
                n_fake, y_fake = b, yb
            # discriminator: real and fake rows in one forward pass
            with torch.no_grad():
                fake = g(torch.randn(n_fake, cfg.latent_dim, device=self.device), y_fake)
            both = torch.cat([xb.to(fake.dtype), fake])
            if cfg.diff_augment:
                both = diff_augment(both)
            logits = d_step(both, torch.cat([yb, y_fake]))
            loss_d = d_criterion(logits, torch.arange(len(logits), device=logits.device) < b)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator: through the frozen discriminator, per-sample hooks off
            if dp is not None:
                d_step.disable_hooks()
            d.requires_grad_(False)
            yg = y_fake[torch.randperm(n_fake, device=self.device)]
            fake_g = g(torch.randn(n_fake, cfg.latent_dim, device=self.device), yg)
            logits_g = d(diff_augment(fake_g) if cfg.diff_augment else fake_g, yg)
            loss_g = _g_loss(logits_g, cfg.loss)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            d.requires_grad_(True)
            if dp is not None:
                d_step.enable_hooks()
            self.ema_steps += 1
            self._update_ema(self.ema_steps)
            return {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                    "d_real": torch.sigmoid(logits[:b]).mean().item() if b else 0.0,
                    "d_fake": torch.sigmoid(logits[b:]).mean().item()}

        report = run_epochs(self.family, cfg.epochs, loader, step, progress, private=privacy is not None)
        if dp is not None:
            d_step.remove_hooks()
            report.privacy = dp.result()
        self.fitted = True
        return report

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
        y_all = self.check_samples(n, labels)
        out = np.empty((len(y_all), self.resolution, self.resolution), dtype=np.float32)
        gen = torch.Generator().manual_seed(self.seed + 7 if seed is None else seed)
        net = self.generator_ema if self.config.ema_decay > 0 else self.generator.eval()
        for start in range(0, len(y_all), 256):
            y = torch.from_numpy(y_all[start : start + 256]).to(self.device)
            z = torch.randn(len(y), self.config.latent_dim, generator=gen).to(self.device)
            img = (net(z, y)[:, 0] + 1.0) / 2.0
            out[start : start + len(y)] = img.clamp_(0, 1).cpu().numpy()
        return out

    @torch.inference_mode()
    def edit(self, n: int, source: int, target: int, strength: float,
             seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The same latent codes drawn as class ``source`` and with the class-conditional norms
        moved ``strength`` of the way to class ``target`` (the anatomy the latent code sets stays)."""
        self._require_fitted()
        net = self.generator_ema if self.config.ema_decay > 0 else self.generator.eval()
        return edit_with_latents(net, self.config.latent_dim, self.resolution, self.device, n, source, target,
                                 check_strength(strength), self.seed + 7 if seed is None else seed, self.classes)

    # ---- persistence -----------------------------------------------------------------------
    def sampling_state(self) -> dict[str, torch.Tensor]:
        net = self.generator_ema if self.config.ema_decay > 0 else self.generator
        return dict(net.state_dict())

    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator_ema.load_state_dict(state)
        self.generator.load_state_dict(state)
        self.fitted = True

    def training_state(self) -> dict[str, np.ndarray]:
        """Everything federated averaging exchanges: the generator, its moving average (what
        is sampled from: under DP the raw generator carries the discriminator's noise, the
        average smooths it out) and the discriminator."""
        out = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        out.update({f"generator_ema.{k}": v for k, v in self.generator_ema.state_dict().items()})
        out.update({f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()})
        state = exchangeable(out)
        state["ema_steps"] = np.array([self.ema_steps], dtype=np.float64)
        return state

    def load_training_state(self, state: dict[str, np.ndarray]) -> None:
        expected = set(self.training_state())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(f"weights do not fit this GAN (missing {missing}, unexpected {extra})")
        for prefix, net in (("generator.", self.generator), ("generator_ema.", self.generator_ema),
                            ("discriminator.", self.discriminator)):
            load_exchangeable(net, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.ema_steps = int(round(float(np.asarray(state["ema_steps"]).ravel()[0])))
        self.fitted = True

