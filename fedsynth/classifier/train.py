"""Train the pneumonia classifier (on synthetic images in fedsynth) and use it.

Model selection and the decision threshold come from a validation split of the
training data (synthetic), never from real test images.

Out-of-distribution (OOD) reference: after training, the classifier's penultimate-layer
features on its training split give a per-dimension mean and variance; an input's OOD score
is its diagonal Mahalanobis distance to them (root mean square of the standardised features,
so about 1 for a typical training image), and the input is flagged when the score exceeds the
99th percentile of the validation split's scores. Stored in the header as ``ood``.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedsynth import __version__
from fedsynth.classifier.intensity import METHODS as INTENSITY_METHODS
from fedsynth.classifier.intensity import normalize_intensity
from fedsynth.classifier.metrics import adaptive_edges, auroc, choose_threshold, uniform_edges
from fedsynth.classifier.models import build_classifier, pneumonia_logit
from fedsynth.classifier.ood import check_ood, embed_all, ood_distance, ood_reference
from fedsynth.config import ClassifierSection, check_label_set
from fedsynth.data.dataset import CLASS_NAMES, check_training_data
from fedsynth.progress import ProgressFn
from fedsynth.torch_utils import resolve_device, seeded

BLUR_SIGMA_MAX = 1.5  # pixels; chosen on the tuning split (README, Privacy: it keeps a classifier from keying
# on the pixel-level texture a DP generator leaves in one class, and is the blur of an acquisition shift)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image with its own ``sigma`` (pixels; 0 leaves it as it is), separable
    5-tap kernels applied as one grouped convolution."""
    b, _, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-(taps[None] ** 2) / (2 * s**2))
    k = torch.where(sigma[:, None] > 0.05, k / k.sum(1, keepdim=True), (taps[None] == 0).to(x.dtype))
    y = F.pad(x.reshape(1, b, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k.view(b, 1, 1, 5), groups=b)
    y = F.conv2d(y, k.view(b, 1, 5, 1), groups=b)
    return y.reshape(b, 1, h, w)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random small affine (rotation, scale, shift), blur, gamma/contrast and noise; x in [-1, 1]."""
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (torch.rand(b, *shape, generator=gen) * (hi - lo) + lo).to(dev)

    angle = u(-7, 7) * math.pi / 180
    scale = u(0.9, 1.1)
    shift = u(-0.06, 0.06, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = blur(x, u(0.0, BLUR_SIGMA_MAX))
    img = ((x + 1) / 2).clamp(0, 1) ** u(0.8, 1.25)[:, None, None, None]
    img = (img - 0.5) * u(0.85, 1.15)[:, None, None, None] + 0.5 + u(-0.05, 0.05)[:, None, None, None]
    img = img + torch.randn(x.shape, generator=gen).to(dev) * u(0.0, 0.02)[:, None, None, None]
    return img.clamp(0, 1) * 2 - 1


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if idx.size >= 2:
            val.append(idx[: max(1, int(round(fraction * idx.size)))])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx, val_idx


@dataclass
class Classifier:
    """A trained classifier with everything needed to score new images the same way."""

    model: nn.Module
    arch: str
    resolution: int
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        """The label set the classifier predicts: normal / pneumonia, or a finer one (its task)."""
        return tuple(self.meta.get("classes") or CLASS_NAMES)

    @torch.inference_mode()
    def _outputs(self, images: np.ndarray, batch_size: int) -> torch.Tensor:
        images = self._inputs(images)
        self.model.eval()
        dev = next(self.model.parameters()).device
        out = [self.model(torch.from_numpy(images[s : s + batch_size])[:, None].to(dev) * 2 - 1).float().cpu()
               for s in range(0, len(images), batch_size)]
        if out:
            return torch.cat(out)
        return torch.zeros((0,) if len(self.classes) == 2 else (0, len(self.classes)))

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """P(pneumonia) of each image (for a finer label set: 1 - P(normal))."""
        # a calibrated classifier divides its logit by the temperature fitted at the sites (calibration)
        logits = pneumonia_logit(self._outputs(images, batch_size)) / float(self.meta.get("temperature", 1.0))
        return torch.sigmoid(logits).numpy()

    def predict_class_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, C): each image's probability of every class of :attr:`classes` (the softmax of a
        finer task's logits; [1 - p, p] for a binary classifier)."""
        out = self._outputs(images, batch_size)
        if out.ndim == 1:
            p = torch.sigmoid(out / float(self.meta.get("temperature", 1.0))).numpy()
            return np.stack([1 - p, p], axis=1)
        return torch.softmax(out, dim=1).numpy()

    def _inputs(self, images: np.ndarray) -> np.ndarray:
        """``images`` checked against the classifier's input size and normalized as in training."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (self.resolution, self.resolution):
            raise ValueError(
                f"images must have shape (N, {self.resolution}, {self.resolution}); got {images.shape}"
            )
        return normalize_intensity(images, self.intensity)

    @property
    def intensity(self) -> str:
        """The intensity normalization applied to every input (``fedsynth.classifier.intensity``)."""
        return self.meta.get("intensity", "none")

    @property
    def ood(self) -> dict[str, Any] | None:
        """The header's OOD reference, or None for a classifier saved without one (before fedsynth
        computed it, or not trained by :func:`train_classifier`): then nothing is flagged."""
        return self.meta.get("ood") or None

    @torch.inference_mode()
    def ood_scores(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray | None:
        """Each image's diagonal Mahalanobis distance (RMS over feature dimensions) to the features of
        the classifier's training images; None when the classifier has no OOD reference."""
        ref = self.ood
        if ref is None:
            return None
        images = self._inputs(images)
        self.model.eval()
        dev = next(self.model.parameters()).device
        x = torch.from_numpy(images)[:, None] * 2 - 1
        features = embed_all(self.model, x, dev, batch_size)
        if features.shape[1] != len(ref["mean"]):
            raise ValueError(f"the classifier header's ood statistics have {len(ref['mean'])} dimensions; "
                             f"its {self.arch} has {features.shape[1]}")
        return ood_distance(features, ref["mean"], ref["var"])

    def is_ood(self, images: np.ndarray) -> np.ndarray:
        """True where an image's OOD score exceeds the reference threshold; all False (nothing can be
        said) for a classifier without an OOD reference (check :attr:`ood`)."""
        scores = self.ood_scores(images)
        if scores is None:
            return np.zeros(len(images), dtype=bool)
        return scores > float(self.ood["threshold"])

    def score_edges(self, default_bins: int) -> np.ndarray:
        """The logit bin edges sites use for this classifier's score histograms."""
        edges = self.meta.get("score_edges")
        return np.asarray(edges, dtype=np.float64) if edges else uniform_edges(default_bins)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def header(self) -> dict[str, Any]:
        return {"arch": self.arch, "resolution": self.resolution, "threshold": self.threshold, **self.meta}

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(path), metadata={"fedsynth_classifier": json.dumps(self.header())})

    @classmethod
    def from_state(cls, header: dict[str, Any], state: dict[str, torch.Tensor], device: str = "cpu") -> Classifier:
        """Rebuild a classifier from its header and weights; ValueError (with the reason) when
        the header is not one fedsynth wrote: an unknown arch, a resolution fedsynth never
        trains at, a threshold that is not a finite number in [0, 1], weights of another model."""
        arch, resolution, threshold, private, width = _check_header(header)
        classes = check_label_set(header.get("classes") or CLASS_NAMES)
        # a classifier trained with DP-SGD has GroupNorm where the plain one has BatchNorm
        model = build_trainable(arch, resolution, private, len(classes), width)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"classifier weights do not fit a {arch} at {resolution} px ({first})") from None
        model.to(resolve_device(device)).eval()
        meta = {k: v for k, v in header.items() if k not in ("arch", "resolution", "threshold")}
        if meta.get("intensity", "none") not in INTENSITY_METHODS:
            raise ValueError(f"the classifier header's intensity {repr(meta['intensity'])[:40]} is not one of "
                             f"{', '.join(INTENSITY_METHODS)}")
        if meta.get("ood") is not None:
            check_ood(meta["ood"])
        return cls(model, arch, resolution, threshold, meta)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Classifier:
        """Read a classifier file; ValueError naming ``path`` when it is not a usable one."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as err:  # not a safetensors file, truncated, an oversized header
            raise ValueError(f"{path}: not a readable classifier file ({type(err).__name__}: {err})") from None
        if "fedsynth_classifier" not in meta:
            raise ValueError(f"{path}: not a fedsynth classifier file")
        try:
            header = json.loads(meta["fedsynth_classifier"])
        except ValueError as err:
            raise ValueError(f"{path}: the classifier header is not valid JSON ({err})") from None
        try:
            _check_header(header)
            state = load_file(str(path))
            return cls.from_state(header, state, device)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        except Exception as err:  # the tensors themselves cannot be read
            raise ValueError(f"{path}: the classifier weights cannot be read ({type(err).__name__}: {err})") from None


KNOWN_ARCHS = ("small-cnn", "resnet18")
KNOWN_RESOLUTIONS = (16, 32, 64, 128, 256)  # those of the run config (data.resolution)


def _check_header(header: Any) -> tuple[str, int, float, bool, int]:
    """(arch, resolution, threshold, dp_compatible, width) of a classifier header; ValueError otherwise
    (``width``: the small CNN's, 32 in files written before it was a setting)."""
    if not isinstance(header, dict):
        raise ValueError(f"the classifier header must be a JSON object, not {type(header).__name__}")
    missing = [k for k in ("arch", "resolution", "threshold") if k not in header]
    if missing:
        raise ValueError(f"the classifier header lacks {', '.join(missing)}")
    arch, resolution, threshold = header["arch"], header["resolution"], header["threshold"]
    if arch not in KNOWN_ARCHS:
        raise ValueError(f"the classifier header names an unknown arch {repr(arch)[:40]} "
                         f"(known: {', '.join(KNOWN_ARCHS)})")
    integral = isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool)
    if not integral or resolution not in KNOWN_RESOLUTIONS:
        raise ValueError(f"the classifier header's resolution {repr(resolution)[:40]} is not one of "
                         f"{', '.join(map(str, KNOWN_RESOLUTIONS))}")
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold)
            or not 0.0 <= threshold <= 1.0):
        raise ValueError(f"the classifier header's threshold {repr(threshold)[:40]} is not a finite number "
                         "in [0, 1]; every image would be scored against a meaningless cut-off")
    private = header.get("dp_compatible", False)
    if not isinstance(private, (bool, np.bool_)):
        raise ValueError(f"the classifier header's dp_compatible {repr(private)[:40]} is not true or false")
    width = header.get("width", 32)
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or not 4 <= width <= 512:
        raise ValueError(f"the classifier header's width {repr(width)[:40]} is not an integer in [4, 512]")
    return arch, int(resolution), float(threshold), bool(private), int(width)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    config: ClassifierSection,
    *,
    arch: str,
    resolution: int,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn | None = None,
    trained_on: str = "synthetic",
    histogram_bins: int = 2000,
    classes: tuple[str, ...] = CLASS_NAMES,
) -> Classifier:
    """Train on (images, labels) with labels class indices of ``classes``: the binary task for
    normal / pneumonia, one softmax output per class for a finer label set (whose class 0 is
    normal: the binary score, threshold and histograms use 1 - P(normal)). The epoch kept is the
    one with the best validation AUROC (binary; macro one-vs-rest for a finer set)."""
    classes = check_label_set(classes)
    binary = len(classes) == 2
    images, labels = check_training_data(images, labels, resolution, classes)
    images = normalize_intensity(images, config.intensity)
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _stratified_split(labels, config.val_fraction, rng)
    if len(np.unique(labels[val_idx])) < len(classes):
        raise ValueError("the classifier's validation split needs " + ("both classes" if binary else "every class")
                         + "; release more images per class")
    x_all = torch.from_numpy(images)[:, None] * 2 - 1
    y_all = torch.from_numpy(labels).float() if binary else torch.from_numpy(labels)
    x_val = x_all[val_idx].to(dev)
    pneumonia = (labels > 0).astype(np.int64)  # the binary labels (= labels for the binary task)
    start = time.perf_counter()
    with seeded(seed):
        # channels-last: same float32 arithmetic, 1.6x faster per epoch on this project's CPU (benchmarks/speed.py)
        model = build_classifier(arch, resolution, len(classes), config.width)
        model = model.to(dev, memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(train_idx) / config.batch_size))
        total_steps = config.epochs * steps_per_epoch
        # one-cycle needs a few steps to warm up over; a tiny run keeps the learning rate flat
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.2)
                 if total_steps >= 10 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
        best: tuple[float, int, dict[str, torch.Tensor], float] | None = None
        history = []
        for epoch in range(config.epochs):
            model.train()
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
            total = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * config.batch_size : (s + 1) * config.batch_size]
                if len(idx) < 2:  # BatchNorm needs two rows
                    continue
                xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
                if config.augment:
                    xb = augment(xb, gen)
                out = model(xb)
                loss = F.binary_cross_entropy_with_logits(out, yb) if binary else F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            val_auc, val_loss = _validation(model, x_val, labels[val_idx], len(classes))
            row = {"epoch": epoch + 1, "loss": total / len(train_idx), "val_auroc": val_auc, "val_loss": val_loss}
            history.append(row)
            if progress is not None:
                progress(epoch + 1, config.epochs, row)
            # the best validation AUROC; ties (a synthetic split easy enough to saturate at 1.0) go to the
            # lower validation loss, not to the first epoch that reached it
            if best is None or (val_auc, -val_loss) > (best[0], best[3]):
                best = (val_auc, epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()},
                        -val_loss)
    assert best is not None
    model.load_state_dict(best[2])
    val_probs = _predict(model, x_val)
    threshold = choose_threshold(pneumonia[val_idx], val_probs, config.threshold_rule)
    train_probs = np.clip(_predict(model, x_all.to(dev)).astype(np.float64), 1e-12, 1 - 1e-12)
    score_edges = adaptive_edges(np.log(train_probs) - np.log1p(-train_probs), histogram_bins)
    ood = ood_reference(model, x_all[train_idx], x_all[val_idx], dev)
    return Classifier(
        model=model.eval(),
        arch=arch,
        resolution=resolution,
        threshold=threshold,
        meta={
            **({"width": config.width} if arch == "small-cnn" else {}),
            "trained_on": trained_on,
            "n_train": int(len(train_idx)),
            "n_val": int(len(val_idx)),
            "best_epoch": best[1],
            "val_auroc": best[0],
            "threshold_rule": config.threshold_rule,
            "intensity": config.intensity,
            "score_edges": score_edges.tolist(),
            "ood": ood,
            "seconds": time.perf_counter() - start,
            "history": history,
            "fedsynth_version": __version__,
            **({} if binary else {"classes": list(classes), "task": "subtype"}),
        },
    )


@torch.inference_mode()
def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + 512]) for i in range(0, len(x), 512)]).float().cpu()


def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """P(pneumonia) of each row of ``x``."""
    return torch.sigmoid(pneumonia_logit(_outputs(model, x))).numpy()


def _validation(model: nn.Module, x: torch.Tensor, labels: np.ndarray, n_classes: int) -> tuple[float, float]:
    """(AUROC, log loss) on the validation split: binary, or macro one-vs-rest AUROC and the
    cross-entropy for a finer label set."""
    out = _outputs(model, x)
    if n_classes == 2:
        p = np.clip(torch.sigmoid(out).numpy().astype(np.float64), 1e-7, 1 - 1e-7)
        return auroc(labels, p), float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))
    probs = torch.softmax(out, dim=1).numpy().astype(np.float64)
    aucs = [auroc((labels == c).astype(np.int64), probs[:, c]) for c in range(n_classes)]
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
    return float(np.nanmean(aucs)), loss


def build_trainable(arch: str, resolution: int, private: bool, num_classes: int = 2, width: int = 32) -> nn.Module:
    """The classifier as a federation trains it: DP-compatible (GroupNorm) when private."""
    from fedsynth.privacy.dp import make_dp_compatible

    model = build_classifier(arch, resolution, num_classes, width)
    return make_dp_compatible(model) if private else model


def train_local(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: ClassifierSection,
    *,
    epochs: int,
    seed: int,
    device: str = "auto",
    privacy=None,
) -> dict[str, Any]:
    """A site's local epochs of classifier training (classic FL); DP-SGD with a plan."""
    from torch.utils.data import DataLoader, TensorDataset

    from fedsynth.privacy.dp import PrivateTraining

    images, labels = check_training_data(images, labels, int(images.shape[-1]))
    images = normalize_intensity(images, config.intensity)
    if privacy is not None and (privacy.n != len(images) or privacy.epochs != epochs):
        raise ValueError(f"privacy: the plan was made for {privacy.n} images and {privacy.epochs} epochs; "
                         f"got {len(images)} images and {epochs} epochs")
    dev = resolve_device(device)
    model.to(dev).train()
    x = torch.from_numpy(images)[:, None] * 2 - 1
    y = torch.from_numpy(labels).float()
    batch = privacy.batch_size if privacy is not None else min(config.batch_size, len(x))
    start = time.perf_counter()
    with seeded(seed):
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=privacy is None, generator=gen)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        dp = None
        step_model = model
        if privacy is not None:
            dp = PrivateTraining(privacy)
            step_model, opt, loader = dp.wrap(model, opt, loader)
        total, seen, steps = 0.0, 0, 0
        for _ in range(epochs):
            for xb, yb in loader:
                if len(xb) == 0 and privacy is None:
                    continue
                xb, yb = xb.to(dev), yb.to(dev)
                if config.augment and len(xb):
                    xb = augment(xb, gen)
                # sum / n rather than mean: an empty Poisson batch still takes its (noise-only)
                # DP step, which the accountant has counted
                loss = F.binary_cross_entropy_with_logits(pneumonia_logit(step_model(xb)), yb,
                                                          reduction="sum") / max(len(xb), 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
                seen += len(xb)
                steps += 1
        if dp is not None:
            step_model.remove_hooks()
    return {
        "epochs": epochs,
        "loss": total / max(seen, 1),
        "images_seen": seen,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "privacy": dp.result() if dp is not None else None,
    }
