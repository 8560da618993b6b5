"""DP mean-embedding matching (DP-MERF; Harder, Adamczewski and Park, AISTATS 2021).

A site touches its images exactly once, through one Gaussian mechanism: for each class c it
sums a feature vector over its images,

    S_c = sum over images x of class c of  phi(x),   phi(x) = [a * rff(x), b],   a^2 + b^2 = 1,

where ``rff(x)`` are random Fourier features of the whole image (cosines and sines of
``W x`` for ``n_frequencies`` Gaussian frequencies, scaled to unit norm: they approximate a
Gaussian kernel) and ``b`` is a constant whose sum counts the class. Every ``phi(x)`` has
norm exactly 1, so adding or removing one image moves the concatenated sums by at most 1:
the L2 sensitivity is 1 whatever the data, and Gaussian noise of std ``sigma`` on every
coordinate is the whole mechanism (one release, sample rate 1; the accountant computes its
epsilon, and ``fedsynth audit verify`` recomputes it from the ledger entry).

With ``features: image+patches`` the Fourier part is split in two halves of norm ``a / sqrt 2``:
the whole-image features above, and features of local patches (a quarter of the image's side,
half-overlapping: 7 x 7 of them at every resolution the config allows), each patch's unit-norm
Fourier features averaged within each quadrant of the image, and the four quadrant means
concatenated, each scaled by 1/2 (so four of them have norm at most 1). An average of unit
vectors has norm at most 1, so ``phi(x)`` has norm at most 1 and the sensitivity stays 1.
A kernel on whole 32 px images mostly sees the global layout of grey levels; the patch kernel
sees local texture (an opacity, a consolidation) wherever in the quadrant it lies.

Everything after the release is post-processing: a class-conditional generator (the GAN's
generator network) is trained to make images whose mean feature vector per class matches
the noisy class mean ``S_c / count_c`` (the maximum mean discrepancy in the kernel's
feature space). The frequencies are public randomness (``feature_seed``) and the
bandwidth comes from public phantoms, never from the site's images.

A class whose noisy target is farther from the origin than twice the largest norm a class mean
can have (``a``: every image's Fourier part has norm ``a``, at most ``a`` with patches, so their
mean has at most that) is
left out of the fit and of the release: by the triangle inequality its noise then has a norm
above ``a``, larger than any signal the class could carry. This happens to a class with a handful
of images at a site (label skew), whose target is then almost pure noise; fitted anyway, its
loss is orders of magnitude above the other classes' and, through the shared generator and
Adam's step sizes, spoils their fit too. The decision reads only the released statistic
(post-processing: no privacy cost).

The statistic from several sites adds up: in ``run.mode: federated`` each site sends only
its noisy sums, the server averages them (FedAvg with equal weights) and fits one generator
to the pooled class means, which see every site's images at the noise of one release per
site ("pool the sites' privacy, not their data").
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np
import torch

from fedsynth.config import MeanEmbeddingSection
from fedsynth.data.dataset import CLASS_NAMES, check_training_data
from fedsynth.generators.base import FitReport, Generator, check_strength
from fedsynth.generators.gan import GeneratorNet, edit_with_latents
from fedsynth.privacy.dp import DPPlan, GaussianStatistic, plan_statistic
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import exchangeable, load_exchangeable, seeded

NOISE_DOMINATED = 2.0  # a target beyond this multiple of the largest reachable mean norm is noise (above)
MECHANISM_NAME = "gaussian (class-wise sums of unit-norm random Fourier features, sensitivity 1)"
PATCH_MECHANISM_NAME = ("gaussian (class-wise sums of random Fourier features of the image and its patches, "
                        "norm at most 1, sensitivity 1)")
BANDWIDTH_PHANTOMS = 400  # public images the bandwidth is measured on


@functools.lru_cache(maxsize=8)
def bandwidth_phantoms(resolution: int) -> torch.Tensor:
    """The public images both kernels' bandwidths are measured on, (N, 1, S, S) in [0, 1]."""
    from fedsynth.data.phantom import make_phantoms

    return torch.from_numpy(make_phantoms(BANDWIDTH_PHANTOMS, resolution, seed=20211).images)[:, None]


def median_distance(rows: torch.Tensor) -> float:
    d = torch.cdist(rows, rows)
    return float(d[d > 0].median())


@functools.lru_cache(maxsize=8)
def phantom_bandwidth(resolution: int) -> float:
    """The median pairwise distance of public phantoms at ``resolution`` (pixels in [0, 1]):
    the kernel bandwidth's unit, chosen without looking at any site's images."""
    return median_distance(bandwidth_phantoms(resolution).flatten(1))


def patch_geometry(resolution: int) -> tuple[int, int]:
    """(side, stride) of the local patches: a quarter of the image's side, half-overlapping (7 x 7 patches
    when the side is a multiple of 8, as every resolution the config allows is; otherwise a few border
    pixels fall outside every patch, which changes no bound)."""
    side = max(2, resolution // 4)
    return side, max(1, side // 2)


@functools.lru_cache(maxsize=8)
def phantom_patch_bandwidth(resolution: int) -> float:
    """The median pairwise distance of 2,000 patches of public phantoms: the patch kernel's bandwidth unit."""
    side, stride = patch_geometry(resolution)
    cols = torch.nn.functional.unfold(bandwidth_phantoms(resolution), side, stride=stride)
    patches = cols.transpose(1, 2).reshape(-1, side * side)
    pick = torch.randperm(len(patches), generator=torch.Generator().manual_seed(20211))[:2000]
    return median_distance(patches[pick])


QUADRANTS = 4  # the patch features are averaged within each quadrant of the image (2 x 2)


class RandomFourierFeatures:
    """``phi(x) = [a cos(W x), a sin(W x)] / sqrt(F)`` and a constant ``b``; ``||phi(x)|| = 1`` (features: image).

    With ``features: image+patches``, ``[a/sqrt2 * rff(x), a/sqrt2 * patch features, b]``, norm at most 1
    (module docstring)."""

    def __init__(self, config: MeanEmbeddingSection, resolution: int, device: torch.device):
        self.resolution = resolution
        self.dim = resolution * resolution
        self.bandwidth = phantom_bandwidth(resolution) * config.bandwidth_scale
        gen = torch.Generator().manual_seed(config.feature_seed)
        self.w = (torch.randn(self.dim, config.n_frequencies, generator=gen) / self.bandwidth).to(device)
        self.b = config.count_weight
        self.a = math.sqrt(1.0 - self.b**2)  # the largest norm of the Fourier part (all of it but b)
        self.patches = config.features == "image+patches"
        # with patches the Fourier part is two halves of norm a / sqrt 2 each
        self.image_weight = self.patch_weight = self.a / math.sqrt(2.0) if self.patches else self.a
        self.size = 2 * config.n_frequencies + 1
        if self.patches:
            self.patch_side, self.patch_stride = patch_geometry(resolution)
            self.patch_bandwidth = phantom_patch_bandwidth(resolution) * config.bandwidth_scale
            # drawn after W from the same public seed, so the whole-image features are the same with or without
            self.w_patch = (torch.randn(self.patch_side**2, config.patch_frequencies, generator=gen)
                            / self.patch_bandwidth).to(device)
            self.size += QUADRANTS * 2 * config.patch_frequencies

    def describe(self) -> dict[str, Any]:
        """The features as the ledger records them (public: the mechanism's description)."""
        out: dict[str, Any] = {"kind": "random-fourier", "n_frequencies": self.w.shape[1],
                               "bandwidth": self.bandwidth, "count_weight": self.b}
        if self.patches:
            out.update(kind="random-fourier image+patches", patch_frequencies=self.w_patch.shape[1],
                       patch_side=self.patch_side, patch_stride=self.patch_stride,
                       patch_bandwidth=self.patch_bandwidth, patch_pooling="mean per quadrant")
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images ``x`` (N, S, S) or (N, 1, S, S) with pixels in [0, 1]."""
        n = len(x)
        proj = x.reshape(n, self.dim) @ self.w
        scale = self.image_weight / math.sqrt(self.w.shape[1])
        parts = [torch.cos(proj) * scale, torch.sin(proj) * scale]
        if self.patches:
            parts.append(self._patch_features(x.reshape(n, 1, self.resolution, self.resolution)))
        parts.append(torch.full((n, 1), self.b, device=x.device, dtype=proj.dtype))
        return torch.cat(parts, dim=1)

    def means(self, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-wise mean of the Fourier part, estimated class sizes) from (noisy) sums."""
        counts = sums[:, -1] / self.b
        return sums[:, :-1] / counts.clamp_min(1.0)[:, None], counts

    def _patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each patch's unit-norm Fourier features, averaged per quadrant; norm at most ``patch_weight``."""
        # every patch's projections at once: a strided convolution whose G filters are the frequencies
        filters = self.w_patch.T.reshape(-1, 1, self.patch_side, self.patch_side)
        proj = torch.nn.functional.conv2d(x, filters, stride=self.patch_stride)  # (N, G, grid, grid)
        per_patch = torch.cat([torch.cos(proj), torch.sin(proj)], dim=1)
        # 2 x 2 adaptive pooling: the mean over each quadrant's patches (an odd grid's middle row and column
        # count in both halves); four means of unit vectors, each scaled by 1/2
        quadrants = torch.nn.functional.adaptive_avg_pool2d(per_patch, 2).flatten(1)
        return quadrants * (self.patch_weight / math.sqrt(QUADRANTS * self.w_patch.shape[1]))


class MeanEmbeddingGenerator(Generator):
    config_class = MeanEmbeddingSection
    statistics_only = True

    def __init__(self, config: MeanEmbeddingSection | None = None, resolution: int = 32, seed: int = 0,
                 device: str = "auto", classes: tuple[str, ...] = CLASS_NAMES):
        super().__init__(resolution, seed, device, classes)
        self.config = config or MeanEmbeddingSection()
        with seeded(self.seed):
            self.generator = GeneratorNet(self.resolution, self.config.latent_dim, self.config.base_channels,
                                          self.num_classes).to(self.device)
        self.features = RandomFourierFeatures(self.config, self.resolution, self.device)
        # the released statistic: class-wise feature sums (noisy under DP); zeros before any release
        self.statistic = torch.zeros(self.num_classes, self.features.size, dtype=torch.float64)

    # ---- the one contact with private images -------------------------------------------------
    @classmethod
    def plan_privacy(cls, privacy: Any, n: int, config: Any, epochs: int | None = None,
                     calibrate_epochs: int | None = None, reserved: tuple = ()) -> DPPlan:
        if reserved:  # its release carries noisy class counts already (released_class_counts)
            raise ValueError("dp-merf releases its class counts with its statistic; it reserves no mechanism")
        return plan_statistic(privacy, n, sensitivity=1.0)

    def release_statistic(self, images: np.ndarray, labels: np.ndarray,
                          privacy: DPPlan | None = None) -> dict[str, Any] | None:
        """Sum the features per class (adding the plan's Gaussian noise); returns the mechanism
        and its epsilon under DP, None without."""
        images, labels = check_training_data(images, labels, self.resolution, self.classes)
        if privacy is not None and privacy.n != len(images):
            raise ValueError(f"privacy: the plan was made for {privacy.n} images; got {len(images)}")
        sums = torch.zeros(self.num_classes, self.features.size, dtype=torch.float64)
        x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
        with torch.no_grad():
            for start in range(0, len(x_all), 512):
                phi = self.features(x_all[start:start + 512].to(self.device)).double().cpu()
                sums.index_add_(0, y_all[start:start + 512], phi)
        if privacy is None:
            self.statistic = sums
            return None
        mechanism = GaussianStatistic(privacy, PATCH_MECHANISM_NAME if self.features.patches else MECHANISM_NAME)
        self.statistic = mechanism.noisy(sums)
        result = mechanism.result()
        result["mechanism"]["features"] = {**self.features.describe(), "seed": self.config.feature_seed}
        return result

    def released_class_counts(self) -> tuple[float, ...]:
        """The class sizes the (noisy) statistic estimates: its constant feature's sums over ``b``."""
        return tuple(float(v) for v in self.features.means(self.statistic.float())[1])

    # ---- post-processing ---------------------------------------------------------------------
    def fit(self, images: np.ndarray, labels: np.ndarray, privacy: DPPlan | None = None,
            progress: ProgressFn | None = None) -> FitReport:
        """Release the (noisy) class-wise feature sums, then fit the generator to them."""
        start = time.perf_counter()
        result = self.release_statistic(images, labels, privacy)
        report = self.fit_statistic(progress)
        report.seconds = time.perf_counter() - start
        report.images_seen = len(labels)
        report.privacy = result
        return report

    def left_out(self, means: torch.Tensor, counts: torch.Tensor) -> dict[int, str]:
        """The classes the fit leaves out, with the reason: no images, or a noisy target farther from
        the origin than ``NOISE_DOMINATED`` times the largest norm a class mean can have (its noise is
        then larger than any signal: module docstring). Reads only the released statistic."""
        norms, limit = means.norm(dim=1), NOISE_DOMINATED * self.features.a
        reasons = {}
        for c in range(self.num_classes):
            if counts[c] < 1.0:  # a class with no images has no target
                reasons[c] = f"its noisy image count is {float(counts[c]):.1f}, below 1"
            elif norms[c] > limit:
                reasons[c] = (f"its noisy target (norm {float(norms[c]):.2f}, about {float(counts[c]):.0f} images) "
                              f"is over {NOISE_DOMINATED:g}x the largest norm a class mean can have "
                              f"({self.features.a:.2f}): the DP noise outweighs any signal in it")
        return reasons

    def fit_statistic(self, progress: ProgressFn | None = None) -> FitReport:
        """Train the generator to match the class means of ``self.statistic`` (post-processing)."""
        cfg = self.config
        means, counts = self.features.means(self.statistic.float().to(self.device))
        self.unfitted_reasons = self.left_out(means, counts)
        classes = list(self.fitted_classes)
        start = time.perf_counter()
        if not classes:
            # not an exception: the statistic was released (its budget is spent) and the caller records it
            # before it refuses to release anything (a site) or to go on (the server)
            self.fitted = True
            return FitReport(self.family, epochs=1, steps=0, seconds=0.0, images_seen=0, history=[])
        g = self.generator.train()
        opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.05)
        y = torch.tensor(classes, device=self.device).repeat_interleave(cfg.batch_size)
        history: list[dict[str, float]] = []
        every = max(1, cfg.steps // 10)
        running = 0.0
        with seeded(self.seed + 1):
            for step in range(cfg.steps):
                z = torch.randn(len(y), cfg.latent_dim, device=self.device)
                phi = self.features((g(z, y) + 1.0) / 2.0)[:, :-1].view(len(classes), cfg.batch_size, -1)
                loss = ((phi.mean(dim=1) - means[classes]) ** 2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item()
                if (step + 1) % every == 0 or step + 1 == cfg.steps:
                    row = {"mmd2": running / (step % every + 1), "epoch": step + 1}
                    history.append(row)
                    running = 0.0
                    if progress is not None:
                        progress(step + 1, cfg.steps, row)
        g.eval()
        self.fitted = True
        return FitReport(self.family, epochs=1, steps=cfg.steps, seconds=time.perf_counter() - start,
                         images_seen=0, history=history)

    # ---- sampling --------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, labels: int | np.ndarray, seed: int | None = None) -> np.ndarray:
        self._require_fitted()
        y_all = self.check_samples(n, labels)
        left_out = sorted(set(np.unique(y_all).tolist()) - set(self.fitted_classes))
        if left_out:
            raise ValueError(f"labels: class {self.classes[left_out[0]]} was left out of the fit "
                             f"({self.unfitted_reasons[left_out[0]]})")
        out = np.empty((len(y_all), self.resolution, self.resolution), dtype=np.float32)
        gen = torch.Generator().manual_seed(self.seed + 7 if seed is None else seed)
        for start in range(0, len(y_all), 256):
            y = torch.from_numpy(y_all[start:start + 256]).to(self.device)
            z = torch.randn(len(y), self.config.latent_dim, generator=gen).to(self.device)
            out[start:start + len(y)] = ((self.generator(z, y)[:, 0] + 1.0) / 2.0).clamp_(0, 1).cpu().numpy()
        return out

    @torch.inference_mode()
    def edit(self, n: int, source: int, target: int, strength: float,
             seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As the GAN: the same latent codes, the class-conditional norms moved towards ``target``."""
        self._require_fitted()
        return edit_with_latents(self.generator, self.config.latent_dim, self.resolution, self.device, n, source,
                                 target, check_strength(strength), self.seed + 7 if seed is None else seed,
                                 self.classes)

    # ---- persistence and federated exchange -------------------------------------------------------
    def sampling_state(self) -> dict[str, torch.Tensor]:
        return dict(self.generator.state_dict())

    def load_sampling_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.load_state_dict(state)
        self.generator.eval()  # sampling uses BatchNorm's running statistics, as after fit
        self.fitted = True

    def warm_state(self) -> dict[str, np.ndarray]:
        """A warm start is the generator network (the statistic belongs to the private data)."""
        return exchangeable(self.generator.state_dict())

    def load_warm_state(self, state: dict[str, np.ndarray]) -> None:
        load_exchangeable(self.generator, state)
        self.fitted = False

    def training_state(self) -> dict[str, np.ndarray]:
        """What a federated round exchanges: the class-wise feature sums, nothing else."""
        return {"statistic": self.statistic.numpy().copy()}

    def load_training_state(self, state: dict[str, np.ndarray]) -> None:
        if set(state) != {"statistic"}:
            raise ValueError(f"a dp-merf state holds only 'statistic', got {sorted(state)[:3]}")
        stat = np.asarray(state["statistic"], dtype=np.float64)
        if stat.shape != tuple(self.statistic.shape) or not np.isfinite(stat).all():
            raise ValueError(f"statistic must be finite with shape {tuple(self.statistic.shape)}, got {stat.shape}")
        self.statistic = torch.from_numpy(stat.copy())
