"""Temperature scaling from the class-wise score histograms sites return (never per-image scores).

A site's calibration histogram counts its held-out real images' logits, by class, in fixed
logit bins. Pooled over sites, the bins' centres and counts are enough to fit one
temperature ``T`` (calibrated probability = sigmoid(logit / T), Guo et al. 2017) by maximum
likelihood, to choose the decision threshold on the calibrated scores, and to compute the
expected calibration error (ECE) of any histogram before and after. Within a bin every image
is taken at the bin's centre, so these are binned estimates; with the default 24 bins over
[-8, 8] a bin is about 0.7 logit wide (few bins: under DP each carries its own noise).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from fedsynth.classifier.metrics import ScoreHistogram, choose_threshold

CALIBRATION_BINS = 24  # few, wide bins: under DP each bin carries its own noise
CALIBRATION_LOGIT_RANGE = 8.0
TEMPERATURE_RANGE = (0.05, 20.0)
ECE_BINS = 10


def calibration_edges() -> np.ndarray:
    """The logit bin edges of a calibration histogram (outer bins open-ended)."""
    inner = np.linspace(-CALIBRATION_LOGIT_RANGE, CALIBRATION_LOGIT_RANGE, CALIBRATION_BINS - 1)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def bin_centres(edges: np.ndarray) -> np.ndarray:
    """Each bin's centre in logit space; an open-ended outer bin sits half a neighbour's width out."""
    edges = np.asarray(edges, dtype=np.float64)
    lo, hi = edges[:-1].copy(), edges[1:].copy()
    finite = np.isfinite(edges)
    width = np.diff(edges[finite]).mean() if finite.sum() > 1 else 1.0
    lo[~np.isfinite(lo)] = hi[~np.isfinite(lo)] - width
    hi[~np.isfinite(hi)] = lo[~np.isfinite(hi)] + width
    return (lo + hi) / 2


def _pooled(histograms: list[ScoreHistogram]) -> tuple[np.ndarray, np.ndarray]:
    pos = np.sum([h.positive for h in histograms], axis=0).astype(np.float64)
    neg = np.sum([h.negative for h in histograms], axis=0).astype(np.float64)
    return np.clip(pos, 0, None), np.clip(neg, 0, None)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_temperature(histograms: list[ScoreHistogram], edges: np.ndarray) -> float:
    """The temperature that maximises the pooled binned likelihood; 1.0 when the histograms
    cannot determine one (one class only, or no images)."""
    pos, neg = _pooled(histograms)
    if pos.sum() < 1 or neg.sum() < 1:
        return 1.0
    z = bin_centres(edges)

    def nll(log_t: float) -> float:
        p = np.clip(_sigmoid(z / math.exp(log_t)), 1e-9, 1 - 1e-9)
        return float(-(pos * np.log(p) + neg * np.log1p(-p)).sum())

    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    return float(math.exp(minimize_scalar(nll, bounds=(lo, hi), method="bounded").x))


def threshold_after(histograms: list[ScoreHistogram], edges: np.ndarray, temperature: float, rule: str) -> float:
    """The decision threshold chosen by ``rule`` on the pooled calibrated scores (each image at
    its bin's centre)."""
    pos, neg = _pooled(histograms)
    probs = _sigmoid(bin_centres(edges) / temperature)
    counts_p, counts_n = np.rint(pos).astype(int), np.rint(neg).astype(int)
    labels = np.concatenate([np.ones(counts_p.sum()), np.zeros(counts_n.sum())])
    scores = np.concatenate([np.repeat(probs, counts_p), np.repeat(probs, counts_n)])
    return float(choose_threshold(labels, scores, rule))


def expected_calibration_error(histograms: list[ScoreHistogram], edges: np.ndarray, rescale: float = 1.0,
                               bins: int = ECE_BINS) -> float | None:
    """ECE (``bins`` equal-width probability bins, weighted by their images) of the pooled
    histograms, whose logits are first multiplied by ``rescale`` (the temperature, to undo a
    calibration and see the classifier as it was)."""
    pos, neg = _pooled(histograms)
    n = pos.sum() + neg.sum()
    if n < 1:
        return None
    probs = _sigmoid(bin_centres(edges) * rescale)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        count = pos[sel].sum() + neg[sel].sum()
        if count > 0:
            confidence = float((probs[sel] * (pos[sel] + neg[sel])).sum() / count)
            ece += count / n * abs(pos[sel].sum() / count - confidence)
    return float(ece)
