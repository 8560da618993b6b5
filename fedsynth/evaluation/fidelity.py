"""Fidelity: how close synthetic images are to real ones, in an encoder's feature space.

* Fréchet distance between Gaussians fitted to real and synthetic features (FID when the
  encoder is Inception-v3; Heusel et al. 2017).
* Precision, recall, density and coverage (Naeem et al. 2020, k nearest neighbours):
  precision = share of synthetic samples inside some real sample's k-NN ball (realism),
  recall = share of real samples inside some synthetic sample's k-NN ball (diversity),
  density = how many real balls a synthetic sample falls in, over k (realism, robust to
  outliers), coverage = share of real samples whose ball holds a synthetic sample.

The encoder: Inception-v3 (ImageNet weights) when its weights are on disk
(``evaluation.inception_weights``; nothing is downloaded), otherwise a CXR encoder, a
small CNN trained to tell pneumonia from normal on the evaluating side's own real
training images, used up to its pooled penultimate layer. Fidelity is computed where
the real images are (at the site); only the figures travel, and each names its encoder.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg

from fedsynth.torch_utils import resolve_device

KNN = 5


@dataclass
class Fidelity:
    encoder: str
    n_real: int
    n_synthetic: int
    frechet_distance: float
    precision: float
    recall: float
    density: float
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- metrics on features -----------------------------------------------------------------


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r = np.cov(real, rowvar=False)
    s_f = np.cov(fake, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # handled below
        covmean = linalg.sqrtm(s_r @ s_f)
        if not np.isfinite(covmean).all():  # near-singular product: regularise, as the reference implementation does
            offset = np.eye(s_r.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s_r + offset) @ (s_f + offset))
    covmean = np.real(covmean)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2.0 * np.trace(covmean))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.topk(k + 1, largest=False).values[:, -1]  # the k-th neighbour, self excluded


def prdc(real: np.ndarray, fake: np.ndarray, k: int = KNN) -> dict[str, float]:
    r = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    f = torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32))
    k = min(k, len(r) - 1, len(f) - 1)
    if k < 1:
        raise ValueError("precision/recall need at least 2 real and 2 synthetic samples")
    real_radii, fake_radii = _knn_radii(r, k), _knn_radii(f, k)
    d = torch.cdist(r, f)  # (real, fake)
    inside_real = d < real_radii[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(dim=0).float().mean()),
        "recall": float((d < fake_radii[None, :]).any(dim=1).float().mean()),
        "density": float(inside_real.float().sum(dim=0).mean() / k),
        "coverage": float(inside_real.any(dim=1).float().mean()),
    }


# ---- encoders ------------------------------------------------------------------------------


class Encoder:
    name: str

    def features(self, images: np.ndarray) -> np.ndarray:  # images (N, S, S) in [0, 1]
        raise NotImplementedError


class InceptionEncoder(Encoder):
    """torchvision Inception-v3 pool features (2048-d) from weights on disk."""

    def __init__(self, weights: str | Path, device: str = "auto"):
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation.inception_weights: no file at {path}")
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        net.fc = nn.Identity()
        self.net = net.eval().to(resolve_device(device))
        self.name = f"inception-v3 (ImageNet weights from {path.name})"

    @torch.inference_mode()
    def features(self, images: np.ndarray) -> np.ndarray:
        dev = next(self.net.parameters()).device
        mean = torch.tensor([0.485, 0.456, 0.406], device=dev)[None, :, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], device=dev)[None, :, None, None]
        out = []
        for i in range(0, len(images), 64):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + 64], dtype=np.float32))[:, None].to(dev)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
            out.append(self.net((x.repeat(1, 3, 1, 1) - mean) / std).cpu().numpy())
        return np.concatenate(out)


class CXREncoder(Encoder):
    """A small CNN trained on real CXRs (pneumonia vs normal); features = its pooled last layer."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int, origin: str,
                 device: str = "auto"):
        from fedsynth.classifier.train import train_classifier
        from fedsynth.config import ClassifierSection

        clf = train_classifier(images, labels, ClassifierSection(epochs=epochs, augment=True), arch="small-cnn",
                               resolution=int(images.shape[-1]), seed=seed, device=device,
                               trained_on="real (fidelity encoder)")
        self.net = clf.model.eval()
        self.name = f"cxr-encoder (small CNN trained {epochs} epochs on {len(images)} real images of {origin})"

    @torch.inference_mode()
    def features(self, images: np.ndarray) -> np.ndarray:
        dev = next(self.net.parameters()).device
        out = []
        for i in range(0, len(images), 512):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + 512], dtype=np.float32))[:, None].to(dev)
            out.append(self.net.features(x * 2 - 1).flatten(1).cpu().numpy())
        return np.concatenate(out)


def fidelity(encoder: Encoder, real: np.ndarray, synthetic: np.ndarray, max_each: int = 2000,
             seed: int = 0) -> Fidelity:
    """Fidelity of ``synthetic`` against ``real`` (both (N, S, S) in [0, 1])."""
    rng = np.random.default_rng(seed)
    real = real[rng.permutation(len(real))[:max_each]]
    synthetic = synthetic[rng.permutation(len(synthetic))[:max_each]]
    fr, ff = encoder.features(real).astype(np.float64), encoder.features(synthetic).astype(np.float64)
    return Fidelity(encoder.name, len(real), len(synthetic), frechet_distance(fr, ff), **prdc(fr, ff))
