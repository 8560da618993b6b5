"""Binary classification metrics with confidence intervals.

* AUROC and AUPR (average precision) with stratified bootstrap percentile CIs:
  positives and negatives are resampled separately, so every resample keeps the
  test set's class counts.
* Sensitivity and specificity at a threshold fixed beforehand (never chosen on the
  test set), with Wilson score intervals.
* :class:`ScoreHistogram`: what a site returns instead of per-image scores. Class-wise
  counts of the classifier's logit in fixed bins let the server compute the pooled
  AUROC/AUPR over all sites' test splits (and bootstrap them by resampling each site's
  class-wise counts), while no per-image score, and so no per-patient record, leaves a
  site.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

LOGIT_RANGE = 16.0
BOOT_BLOCK = 64  # bootstrap resamples computed at once


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def aupr(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() == 0:
        return float("nan")
    return float(average_precision_score(labels, scores))


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def stratified_bootstrap(
    labels: np.ndarray,
    scores: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of ``statistic`` over resamples drawn within each class."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if n_boot <= 0 or pos.size == 0 or neg.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    resamples = (np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(n_boot))
    if statistic is auroc or statistic is aupr:
        # the same resamples, as counts per image, and the statistic computed for a block of them at
        # once from the sorted scores (a Python loop over sklearn took a quarter of a site's evaluation);
        # blocks keep memory at BOOT_BLOCK rows of the data, whatever n_boot
        if not np.isfinite(scores).all():
            raise ValueError("scores must be finite (NaN or infinity found)")
        kind = "auroc" if statistic is auroc else "aupr"
        stats = np.empty(n_boot)
        for start in range(0, n_boot, BOOT_BLOCK):
            counts = np.stack([np.bincount(next(resamples), minlength=labels.size)
                               for _ in range(min(BOOT_BLOCK, n_boot - start))]).astype(np.float64)
            stats[start : start + len(counts)] = _weighted_rank_statistic(labels, scores, counts, kind)
    else:
        stats = np.array([statistic(labels[idx], scores[idx]) for idx in resamples], dtype=np.float64)
    alpha = (1 - level) / 2
    return (float(np.nanquantile(stats, alpha)), float(np.nanquantile(stats, 1 - alpha)))


def _weighted_rank_statistic(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray, kind: str) -> np.ndarray:
    """AUROC or average precision (sklearn's definitions, ties included) of each row of ``counts``:
    the data set in which image i appears counts[r, i] times. Per distinct score, the weight of
    positives and negatives; AUROC is the chance a positive outranks a negative (ties count half),
    average precision the precision at each distinct threshold, from the highest, weighted by the
    recall it adds."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # one group per value
    c = counts[:, order]
    is_pos = (labels[order] == 1)
    p = np.add.reduceat(c * is_pos, starts, axis=1)  # (resamples, distinct values), ascending
    n = np.add.reduceat(c * ~is_pos, starts, axis=1)
    total_p, total_n = p.sum(axis=1), n.sum(axis=1)
    if kind == "auroc":
        below = np.cumsum(n, axis=1) - 0.5 * n  # negatives under each value, ties half
        return (p * below).sum(axis=1) / (total_p * total_n)
    p, n = p[:, ::-1], n[:, ::-1]  # from the highest threshold down
    tp, fp = np.cumsum(p, axis=1), np.cumsum(n, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return (p * precision).sum(axis=1) / total_p


def choose_threshold(labels: np.ndarray, probs: np.ndarray, rule: str = "youden") -> float:
    """Decision threshold on a validation split (synthetic in fedsynth; never the test set)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return 0.5
    fpr, tpr, thr = roc_curve(labels, probs)
    thr = np.clip(thr, 0.0, 1.0)
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))
    elif rule == "sensitivity-0.9":
        best = int(np.flatnonzero(tpr >= 0.9)[0])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    return float(thr[best])


@dataclass
class BinaryMetrics:
    n: int
    n_positive: int
    n_negative: int
    auroc: float
    auroc_ci: tuple[float, float]
    aupr: float
    aupr_ci: tuple[float, float]
    threshold: float
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    tp: int
    fp: int
    tn: int
    fn: int
    ci_level: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, (tuple, list)):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinaryMetrics:
        def nan(v: Any) -> Any:
            if v is None:
                return float("nan")
            if isinstance(v, list):
                return tuple(nan(x) for x in v)
            return v

        return cls(**{k: nan(v) for k, v in d.items()})


def _confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    tn = int(np.sum(~pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    return tp, fp, tn, fn


def _from_counts(
    n_pos: int,
    n_neg: int,
    auc: float,
    auc_ci: tuple[float, float],
    ap: float,
    ap_ci: tuple[float, float],
    threshold: float,
    confusion: tuple[int, int, int, int],
    level: float,
) -> BinaryMetrics:
    tp, fp, tn, fn = confusion
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    note = ""
    if n_pos == 0 or n_neg == 0:
        note = "only one class in the test split: AUROC is undefined"
    return BinaryMetrics(
        n=n_pos + n_neg,
        n_positive=n_pos,
        n_negative=n_neg,
        auroc=auc,
        auroc_ci=auc_ci,
        aupr=ap,
        aupr_ci=ap_ci,
        threshold=threshold,
        sensitivity=sens,
        sensitivity_ci=wilson_interval(tp, tp + fn, level),
        specificity=spec,
        specificity_ci=wilson_interval(tn, tn + fp, level),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        ci_level=level,
        note=note,
    )


def evaluate_scores(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BinaryMetrics:
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} differ in shape")
    return _from_counts(
        int((labels == 1).sum()),
        int((labels == 0).sum()),
        auroc(labels, probs),
        stratified_bootstrap(labels, probs, auroc, n_boot, level, seed),
        aupr(labels, probs),
        stratified_bootstrap(labels, probs, aupr, n_boot, level, seed + 1),
        threshold,
        _confusion(labels, probs, threshold),
        level,
    )


# ---- pooled metrics from per-site score histograms --------------------------------------


def _to_logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p) - np.log1p(-p), -LOGIT_RANGE, LOGIT_RANGE)


def uniform_edges(bins: int) -> np.ndarray:
    return np.linspace(-LOGIT_RANGE, LOGIT_RANGE, int(bins) + 1)


def adaptive_edges(logits: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges at the quantiles of a classifier's own logits (on its training data), so
    that the histogram keeps its resolution where the classifier's scores actually lie,
    however narrow their range; the outer bins reach to the ends of the logit range."""
    x = np.clip(np.asarray(logits, dtype=np.float64), -LOGIT_RANGE, LOGIT_RANGE)
    inner = np.unique(np.quantile(x, np.linspace(0, 1, int(bins) + 1)[1:-1]))
    return np.concatenate([[-LOGIT_RANGE - 1.0], inner, [LOGIT_RANGE + 1.0]])


@dataclass
class ScoreHistogram:
    """Class-wise counts of scores in logit bins (equal ones on [-16, 16] by default)."""

    positive: np.ndarray
    negative: np.ndarray

    @classmethod
    def from_scores(cls, labels: np.ndarray, probs: np.ndarray, bins: int | np.ndarray = 2000) -> ScoreHistogram:
        """Counts of ``probs``'s logits in ``bins`` equal bins on [-16, 16], or in the bins
        between the given logit ``edges`` (the outer bins are open-ended)."""
        labels = np.asarray(labels)
        edges = uniform_edges(bins) if np.isscalar(bins) else np.asarray(bins, dtype=np.float64)
        n_bins = len(edges) - 1
        idx = np.clip(np.searchsorted(edges, _to_logit(probs), side="right") - 1, 0, n_bins - 1)
        return cls(
            positive=np.bincount(idx[labels == 1], minlength=n_bins).astype(np.int64),
            negative=np.bincount(idx[labels == 0], minlength=n_bins).astype(np.int64),
        )

    def coarsened(self, min_count: int) -> ScoreHistogram:
        """Adjacent bins merged (from the lowest score up) until each group holds at least
        ``min_count`` images; a group's counts sit in its first bin, so histograms from
        different sites still add up bin by bin. Within a group scores count as tied."""
        if min_count <= 1:
            return ScoreHistogram(self.positive.copy(), self.negative.copy())
        pos, neg = np.zeros_like(self.positive), np.zeros_like(self.negative)
        total = self.positive + self.negative
        start, acc_p, acc_n = 0, 0, 0
        groups: list[list[int]] = []
        for i in range(len(total)):
            if acc_p + acc_n == 0:
                start = i
            acc_p += int(self.positive[i])
            acc_n += int(self.negative[i])
            if acc_p + acc_n >= min_count:
                groups.append([start, acc_p, acc_n])
                acc_p = acc_n = 0
        if acc_p + acc_n:  # a short last group joins the one before it
            if groups:
                groups[-1][1] += acc_p
                groups[-1][2] += acc_n
            else:
                groups.append([start, acc_p, acc_n])
        for first, p, n in groups:
            pos[first], neg[first] = p, n
        return ScoreHistogram(pos, neg)

    def __post_init__(self) -> None:
        self.positive = np.asarray(self.positive, dtype=np.int64)
        self.negative = np.asarray(self.negative, dtype=np.int64)
        if self.positive.shape != self.negative.shape or self.positive.ndim != 1:
            raise ValueError("positive and negative counts must be 1-D and of equal length")
        if (self.positive < 0).any() or (self.negative < 0).any():
            raise ValueError("histogram counts must be non-negative")


def _hist_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    p, n = pos.sum(), neg.sum()
    if p == 0 or n == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (p * n))


def _hist_aupr(pos: np.ndarray, neg: np.ndarray) -> float:
    p = pos.sum()
    if p == 0:
        return float("nan")
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    recall_step = pos[::-1] / p
    return float((recall_step * precision).sum())


def pooled_metrics(
    histograms: list[ScoreHistogram],
    confusions: list[tuple[int, int, int, int]],
    threshold: float,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BinaryMetrics:
    """Metrics over the union of the sites' test splits, from their histograms alone."""
    if not histograms:
        raise ValueError("no histogram to pool")
    pos = np.sum([h.positive for h in histograms], axis=0)
    neg = np.sum([h.negative for h in histograms], axis=0)
    auc, ap = _hist_auroc(pos, neg), _hist_aupr(pos, neg)
    auc_ci = ap_ci = (float("nan"), float("nan"))
    if n_boot > 0 and pos.sum() and neg.sum():
        rng = np.random.default_rng(seed)
        aucs, aps = np.empty(n_boot), np.empty(n_boot)
        for b in range(n_boot):
            bp = np.zeros_like(pos)
            bn = np.zeros_like(neg)
            for h in histograms:  # stratified by site and class
                for counts, acc in ((h.positive, bp), (h.negative, bn)):
                    total = counts.sum()
                    if total:
                        acc += rng.multinomial(total, counts / total)
            aucs[b], aps[b] = _hist_auroc(bp, bn), _hist_aupr(bp, bn)
        alpha = (1 - level) / 2
        auc_ci = (float(np.nanquantile(aucs, alpha)), float(np.nanquantile(aucs, 1 - alpha)))
        ap_ci = (float(np.nanquantile(aps, alpha)), float(np.nanquantile(aps, 1 - alpha)))
    confusion = tuple(int(sum(c[i] for c in confusions)) for i in range(4))
    return _from_counts(int(pos.sum()), int(neg.sum()), auc, auc_ci, ap, ap_ci, threshold, confusion, level)  # type: ignore[arg-type]


def format_metric(value: float, ci: tuple[float, float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    lo, hi = ci
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
