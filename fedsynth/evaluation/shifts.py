"""Simulated acquisition shifts: what another scanner, protocol or post-processing does to an image.

Each shift kind has three graded strengths (mild, moderate, strong), used by the shift
benchmark (real test images) and by ``fedsynth stress`` (synthetic images only):

* ``contrast``: intensities scaled around each image's mean (factor);
* ``gamma``: intensities raised to a power;
* ``noise``: additive Gaussian noise (std, pixels in [0, 1]);
* ``blur``: Gaussian blur (sigma in pixels);
* ``resolution``: down-sampled to a side, then back (a lower-resolution detector).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedsynth.classifier.train import blur

SHIFTS: dict[str, tuple[float, ...]] = {
    "contrast": (0.8, 0.6, 0.4),
    "gamma": (0.7, 1.5, 2.0),
    "noise": (0.02, 0.05, 0.1),
    "blur": (0.7, 1.2, 2.0),
    "resolution": (0.75, 0.5, 0.375),  # the side kept, as a fraction of the image's (24, 16, 12 of 32 px)
}


def shifted(images: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """``images`` (N, S, S) in [0, 1] under one shift; a new float32 array in [0, 1]."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    if kind == "contrast":
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * level + mean
    elif kind == "gamma":
        x = x.clamp(0, 1) ** level
    elif kind == "noise":
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * level
    elif kind == "blur":
        x = blur(x, torch.full((len(x),), float(level)))
    elif kind == "resolution":
        side = x.shape[-1]
        small = max(2, int(round(side * level)))
        x = F.interpolate(F.interpolate(x, size=(small, small), mode="bilinear", antialias=True),
                          size=(side, side), mode="bilinear")
    else:
        raise ValueError(f"unknown shift {kind!r} (known: {', '.join(SHIFTS)})")
    return x.clamp(0, 1)[:, 0].numpy()
