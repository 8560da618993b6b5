"""Post-hoc domain alignment of synthetic intensities to the sites' real ones.

The Nano Banana study had to align its synthetic CXRs to the real domain before its
classifier transferred. Here each site releases one statistic of its real images, the
sum of their per-image intensity histograms (each image's histogram sums to 1, so one
image changes the sum by at most 1 in L2: sensitivity 1 under add/remove-one). In a DP
run the site adds Gaussian noise calibrated by the accountant to ``alignment.epsilon``,
and the release is a ledger entry like any DP training. The server sums the sites'
histograms into a reference distribution and maps the pooled synthetic pixels onto it
by quantile (histogram) matching, before training the classifier.
"""

from __future__ import annotations

import numpy as np


def intensity_histogram(images: np.ndarray, bins: int) -> np.ndarray:
    """Sum over images of each image's normalised intensity histogram on [0, 1]."""
    flat = np.clip(np.asarray(images, dtype=np.float64).reshape(len(images), -1), 0.0, 1.0)
    idx = np.minimum((flat * bins).astype(np.int64), bins - 1)
    per_image = np.stack([np.bincount(row, minlength=bins) for row in idx]).astype(np.float64)
    per_image /= per_image.sum(axis=1, keepdims=True)
    return per_image.sum(axis=0)


def class_intensity_histograms(images: np.ndarray, labels: np.ndarray, bins: int, num_classes: int = 2) -> np.ndarray:
    """(num_classes, bins): :func:`intensity_histogram` of each class's images. One image
    adds a unit-mass row to one class only, so the L2 sensitivity stays 1."""
    labels = np.asarray(labels)
    out = np.zeros((num_classes, bins), dtype=np.float64)
    for c in range(num_classes):
        if (labels == c).any():
            out[c] = intensity_histogram(images[labels == c], bins)
    return out


def add_gaussian_noise(hist: np.ndarray, noise_multiplier: float) -> np.ndarray:
    """The Gaussian mechanism on a sensitivity-1 sum: N(0, noise_multiplier^2) per bin,
    drawn from OS entropy (a seed the server could know would let it subtract the noise)."""
    rng = np.random.default_rng()
    return hist + rng.normal(0.0, noise_multiplier, size=hist.shape)


def reference_cdf(histograms: list[np.ndarray]) -> np.ndarray:
    """Pool (possibly noisy) histograms into a monotone CDF over the bins' upper edges."""
    total = np.clip(np.sum(histograms, axis=0), 0.0, None)  # noise can push counts below zero
    if total.sum() <= 0:
        raise ValueError("the pooled intensity histogram is empty")
    cdf = np.cumsum(total) / total.sum()
    return np.maximum.accumulate(cdf)


def match_histograms(images: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Map every pixel through the images' own empirical CDF and the reference's inverse."""
    bins = len(cdf)
    flat = np.asarray(images, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(len(flat), dtype=np.float64)
    ranks[order] = (np.arange(len(flat)) + 0.5) / len(flat)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # inverse of the reference CDF, piecewise linear through (0, 0) and each bin's upper edge
    xp = np.concatenate([[0.0], cdf])
    fp = edges
    keep = np.concatenate([[True], np.diff(xp) > 0])  # flat stretches (empty bins) carry no mass
    mapped = np.interp(ranks, xp[keep], fp[keep])
    return mapped.reshape(np.shape(images)).astype(np.float32)


def match_by_class(images: np.ndarray, labels: np.ndarray, cdfs: dict[int, np.ndarray]) -> np.ndarray:
    """:func:`match_histograms` class by class: each class's images onto its own reference
    (a class without one keeps its intensities)."""
    out = np.asarray(images, dtype=np.float32).copy()
    labels = np.asarray(labels)
    for c, cdf in cdfs.items():
        sel = labels == c
        if sel.any():
            out[sel] = match_histograms(out[sel], cdf)
    return out
