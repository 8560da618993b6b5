"""The one preprocessing path: every image, in training and in prediction, goes through here.

A 2-D array of any size and dtype in [0, 1] is centre-cropped to a square (side =
the shorter edge) and resized with antialiasing to ``resolution`` x ``resolution``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def prepare(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop and resize one [0, 1] image to (resolution, resolution) float32."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    return prepare_batch(image[None], resolution)[0]


def prepare_batch(images: np.ndarray, resolution: int) -> np.ndarray:
    """Same as :func:`prepare` for a stack (N, H, W); vectorised when already square."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    n, h, w = images.shape
    if n == 0:
        return np.zeros((0, resolution, resolution), dtype=np.float32)
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images = images[:, top : top + side, left : left + side]
    if images.shape[1] == resolution:
        return np.ascontiguousarray(images, dtype=np.float32)
    out = []
    for start in range(0, n, 512):
        t = torch.from_numpy(np.ascontiguousarray(images[start : start + 512], dtype=np.float32))[:, None]
        r = F.interpolate(t, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out.append(r[:, 0].clamp_(0.0, 1.0).numpy())
    return np.concatenate(out)
