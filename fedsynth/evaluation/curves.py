"""ROC and precision-recall curves from the sites' class-wise score histograms.

Sites return class-wise counts of the classifier's logit in fixed bins
(:class:`~fedsynth.classifier.metrics.ScoreHistogram`), never per-image scores. The
pooled curve sums the sites' counts; its operating points are the bin edges: "predict
pneumonia when the logit is at or above the lower edge of bin i". Only occupied bins
give a point, so when every distinct score falls in its own bin the curves are exactly
scikit-learn's ``roc_curve(..., drop_intermediate=False)`` and ``precision_recall_curve``.

The area under the ROC curve by the trapezoid rule equals
:func:`~fedsynth.classifier.metrics._hist_auroc` (ties within a bin count one half), and
the step-wise area under the PR curve equals ``_hist_aupr`` (average precision).

Confidence bands come from the same bootstrap as the pooled metrics: each site's
class-wise counts are resampled multinomially (stratified by site and class); each
resample's TPR is read on a fixed FPR grid and its precision on a fixed recall grid, and
the band is the percentile interval at ``level``. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsynth.classifier.metrics import LOGIT_RANGE

GRID_POINTS = 101  # points of the fixed FPR / recall grids the bands are read on


def _as_counts(histograms: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """(positive, negative) count arrays from ScoreHistograms, dicts or pairs."""
    out = []
    for h in histograms:
        if isinstance(h, dict):
            pos, neg = h["positive"], h["negative"]
        elif hasattr(h, "positive"):
            pos, neg = h.positive, h.negative
        else:
            pos, neg = h
        pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
        if pos.shape != neg.shape or pos.ndim != 1:
            raise ValueError("positive and negative counts must be 1-D and of equal length")
        out.append((pos, neg))
    if not out:
        raise ValueError("no histogram to pool")
    if len({p.shape for p, _ in out}) != 1:
        raise ValueError("the histograms have different numbers of bins")
    return out


def pool(histograms: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (positive, negative) counts: the sum of the sites' counts."""
    counts = _as_counts(histograms)
    return np.sum([p for p, _ in counts], axis=0), np.sum([n for _, n in counts], axis=0)


def bin_edges(bins: int) -> np.ndarray:
    """Logit bin edges of a ``bins``-bin histogram (as in ``ScoreHistogram.from_scores``)."""
    return np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins + 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class ROCCurve:
    fpr: np.ndarray  # non-decreasing, from 0 to 1
    tpr: np.ndarray
    thresholds: np.ndarray  # probability thresholds (lower bin edges), decreasing; the first is inf

    def auc(self) -> float:
        """Trapezoid area under the curve (equal to ``_hist_auroc``)."""
        if len(self.fpr) < 2:
            return float("nan")
        return float(np.sum(np.diff(self.fpr) * (self.tpr[1:] + self.tpr[:-1]) / 2))


@dataclass
class PRCurve:
    precision: np.ndarray  # scikit-learn's order: thresholds increasing, recall decreasing, last point (1, 0)
    recall: np.ndarray
    thresholds: np.ndarray  # probability thresholds (lower bin edges), increasing
    prevalence: float

    def average_precision(self) -> float:
        """Step-wise area, sum of (R_k - R_{k-1}) P_k (equal to ``_hist_aupr``)."""
        if len(self.recall) < 2:
            return float("nan")
        return float(-np.sum(np.diff(self.recall) * self.precision[:-1]))


def _operating_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) counts, highest threshold first, at the occupied bins only, and
    those bins' indices."""
    occupied = np.flatnonzero((pos + neg) > 0)[::-1]  # highest bin first
    tp = np.cumsum(pos[::-1])[::-1]  # tp[i]: positives in bins >= i
    fp = np.cumsum(neg[::-1])[::-1]
    return tp[occupied], fp[occupied], occupied


def roc_from_counts(pos: np.ndarray, neg: np.ndarray, edges: np.ndarray | None = None) -> ROCCurve:
    """The ROC curve of pooled class-wise counts; NaN arrays when a class is absent."""
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        nan = np.array([np.nan])
        return ROCCurve(nan, nan, nan)
    tp, fp, idx = _operating_points(pos, neg)
    thresholds = _sigmoid((bin_edges(len(pos)) if edges is None else np.asarray(edges, dtype=np.float64))[idx])
    return ROCCurve(np.concatenate([[0.0], fp / n]), np.concatenate([[0.0], tp / p]),
                    np.concatenate([[np.inf], thresholds]))


def pr_from_counts(pos: np.ndarray, neg: np.ndarray, edges: np.ndarray | None = None) -> PRCurve:
    """The precision-recall curve of pooled class-wise counts (scikit-learn's conventions)."""
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    p, n = pos.sum(), neg.sum()
    if p == 0:
        nan = np.array([np.nan])
        return PRCurve(nan, nan, nan, float("nan") if n == 0 else 0.0)
    tp, fp, idx = _operating_points(pos, neg)
    precision = tp / (tp + fp)  # every occupied bin has tp + fp > 0
    recall = tp / p
    thresholds = _sigmoid((bin_edges(len(pos)) if edges is None else np.asarray(edges, dtype=np.float64))[idx])
    return PRCurve(np.concatenate([precision[::-1], [1.0]]), np.concatenate([recall[::-1], [0.0]]),
                   thresholds[::-1], float(p / (p + n)))


def roc_curve(histograms: Sequence) -> ROCCurve:
    """Pooled ROC curve of the sites' histograms."""
    return roc_from_counts(*pool(histograms))


def pr_curve(histograms: Sequence) -> PRCurve:
    """Pooled precision-recall curve of the sites' histograms."""
    return pr_from_counts(*pool(histograms))


# ---- reading curves on fixed grids ------------------------------------------------------------


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR of a ROC curve (points joined by straight lines, as for the trapezoid area) at
    each FPR in ``grid``; on a vertical segment, its top."""
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    i = np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1)  # last point with fpr <= x
    j = np.minimum(i + 1, len(fpr) - 1)
    span = fpr[j] - fpr[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (grid - fpr[i]) / span, 0.0)
    return tpr[i] + np.clip(w, 0, 1) * (tpr[j] - tpr[i])


def precision_at(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision of a PR curve at each recall in ``grid`` (recall > 0), read as the step
    function average precision integrates: the precision of the first operating point,
    from the highest threshold down, whose recall reaches it. ``recall`` increasing."""
    recall, precision = np.asarray(recall, dtype=float), np.asarray(precision, dtype=float)
    i = np.clip(np.searchsorted(recall, grid, side="left"), 0, len(recall) - 1)
    return precision[i]


@dataclass
class CurveBands:
    """Bootstrap percentile bands of the pooled ROC and PR curves on fixed grids."""

    fpr_grid: np.ndarray
    tpr_low: np.ndarray
    tpr_high: np.ndarray
    recall_grid: np.ndarray
    precision_low: np.ndarray
    precision_high: np.ndarray
    level: float
    n_boot: int


def _rows_roc(bp: np.ndarray, bn: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR on ``grid`` for each bootstrap row of counts (n_boot, bins)."""
    p, n = bp.sum(axis=1, keepdims=True), bn.sum(axis=1, keepdims=True)
    tp = np.cumsum(bp[:, ::-1], axis=1) / p  # highest bin first; empty bins repeat a point
    fp = np.cumsum(bn[:, ::-1], axis=1) / n
    zeros = np.zeros((len(bp), 1))
    tp, fp = np.hstack([zeros, tp]), np.hstack([zeros, fp])
    return np.vstack([tpr_at(f, t, grid) for f, t in zip(fp, tp)])


def _rows_pr(bp: np.ndarray, bn: np.ndarray, grid: np.ndarray) -> np.ndarray:
    p = bp.sum(axis=1, keepdims=True)
    tp = np.cumsum(bp[:, ::-1], axis=1)
    fp = np.cumsum(bn[:, ::-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = tp / p
    return np.vstack([precision_at(r, q, grid) for r, q in zip(recall, precision)])


def bootstrap_bands(
    histograms: Sequence,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    grid_points: int = GRID_POINTS,
) -> CurveBands | None:
    """Percentile bands of TPR (on a fixed FPR grid) and precision (on a fixed recall
    grid) over ``n_boot`` resamples of each site's class-wise counts. None when there is
    nothing to resample (no bootstrap, or a class absent from the pooled test splits)."""
    counts = _as_counts(histograms)
    pos, neg = pool(counts)
    if n_boot <= 0 or pos.sum() == 0 or neg.sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    bp = np.zeros((n_boot, len(pos)), dtype=np.int64)
    bn = np.zeros_like(bp)
    for h_pos, h_neg in counts:  # stratified by site and class, as pooled_metrics resamples
        for c, acc in ((h_pos, bp), (h_neg, bn)):
            total = int(c.sum())
            if total:
                acc += rng.multinomial(total, c / total, size=n_boot)
    fpr_grid = np.linspace(0.0, 1.0, grid_points)
    recall_grid = np.linspace(0.0, 1.0, grid_points)[1:]  # precision at recall 0 is not defined
    tprs, precs = _rows_roc(bp, bn, fpr_grid), _rows_pr(bp, bn, recall_grid)
    alpha = (1 - level) / 2
    return CurveBands(
        fpr_grid, np.quantile(tprs, alpha, axis=0), np.quantile(tprs, 1 - alpha, axis=0),
        recall_grid, np.quantile(precs, alpha, axis=0), np.quantile(precs, 1 - alpha, axis=0),
        level, n_boot,
    )


@dataclass
class PooledCurves:
    """What the report plots for one classifier: pooled ROC and PR curves and their bands."""

    name: str
    roc: ROCCurve
    pr: PRCurve
    bands: CurveBands | None
    n_sites: int
    n_positive: int
    n_negative: int


def pooled_curves(name: str, histograms: Sequence, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0, edges: np.ndarray | None = None) -> PooledCurves:
    """``edges``: the histograms' logit bin edges (default: equal bins on [-16, 16])."""
    counts = _as_counts(histograms)
    pos, neg = pool(counts)
    return PooledCurves(name, roc_from_counts(pos, neg, edges), pr_from_counts(pos, neg, edges),
                        bootstrap_bands(counts, n_boot=n_boot, level=level, seed=seed),
                        len(counts), int(pos.sum()), int(neg.sum()))
