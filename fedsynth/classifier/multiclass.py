"""Figures of the subtype task (one class per name of ``data.label_set``), from what sites may return.

A site never returns a per-image score. For a finer label set it returns, on its real test
split, the confusion matrix at the most probable class and, for every class c, a histogram
of P(c) split into images of class c and the others (one-vs-rest, in the same logit bins and
merged to the same minimum count as the binary histogram). The server pools them: per-class
one-vs-rest AUROC and AUPR with bootstrap CIs (stratified by site and class, as the binary
figures), the macro AUROC with its CI from the same draws, and accuracy, balanced accuracy and
per-class recall / precision from the pooled confusion matrix (Wilson intervals).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsynth.classifier.metrics import ScoreHistogram, _hist_aupr, _hist_auroc, wilson_interval


def confusion_matrix(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(C, C) counts: row the true class, column the most probable one."""
    n_classes = probs.shape[1]
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels, dtype=np.int64), probs.argmax(axis=1)), 1)
    return out


def class_histograms(labels: np.ndarray, probs: np.ndarray, edges: np.ndarray) -> list[ScoreHistogram]:
    """For every class c: the histogram of P(c), positives the images of class c."""
    labels = np.asarray(labels, dtype=np.int64)
    return [ScoreHistogram.from_scores((labels == c).astype(np.int64), probs[:, c], edges)
            for c in range(probs.shape[1])]


def check_class_block(classes: Any, confusion: Any, hists: list[ScoreHistogram], n_bins: int,
                      expected: tuple[str, ...], n_negative: int, n_positive: int) -> str | None:
    """Why a site's subtype figures cannot be pooled, or None: the run's label set, a square
    matrix of non-negative integers whose first row is the binary figures' negatives and whose
    other rows add up to their positives, and one histogram per class, each adding up to its
    row of the matrix (positives) and the rest of the test split (negatives)."""
    if classes != list(expected):
        return f"subtype.classes {str(classes)[:80]} is not the run's label set {list(expected)}"
    k = len(expected)
    if (not isinstance(confusion, list) or len(confusion) != k
            or any(not isinstance(row, list) or len(row) != k for row in confusion)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for row in confusion for v in row)):
        return f"subtype.confusion must be a {k}x{k} matrix of non-negative integers"
    m = np.asarray(confusion, dtype=np.int64)
    rows = m.sum(axis=1)
    if int(rows[0]) != n_negative or int(rows[1:].sum()) != n_positive:
        return "subtype.confusion does not add up to the test split's normal and pneumonia counts"
    if len(hists) != k:
        return f"{len(hists)} class histograms for {k} classes"
    n = int(rows.sum())
    for c, h in enumerate(hists):
        if len(h.positive) != n_bins:
            return f"the {expected[c]} histogram has {len(h.positive)} bins, expected {n_bins}"
        if int(h.positive.sum()) != int(rows[c]) or int(h.negative.sum()) != n - int(rows[c]):
            return f"the {expected[c]} histogram does not add up to its row of the confusion matrix"
    return None


def pooled_class_metrics(classes: tuple[str, ...], per_site: list[list[ScoreHistogram]],
                         confusions: list[np.ndarray], *, n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> dict[str, Any]:
    """The subtype figures over the union of the sites' test splits (see the module's docstring)."""
    k = len(classes)
    pos = [np.sum([site[c].positive for site in per_site], axis=0) for c in range(k)]
    neg = [np.sum([site[c].negative for site in per_site], axis=0) for c in range(k)]
    aucs = np.array([_hist_auroc(pos[c], neg[c]) for c in range(k)])
    aps = np.array([_hist_aupr(pos[c], neg[c]) for c in range(k)])
    alpha = (1 - level) / 2
    nan2 = (float("nan"), float("nan"))
    auc_ci, ap_ci, macro_ci = [nan2] * k, [nan2] * k, nan2
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws_auc, draws_ap = np.empty((n_boot, k)), np.empty((n_boot, k))
        for b in range(n_boot):
            for c in range(k):
                bp, bn = np.zeros_like(pos[c]), np.zeros_like(neg[c])
                for site in per_site:  # stratified by site and class, as the binary figures
                    for counts, acc in ((site[c].positive, bp), (site[c].negative, bn)):
                        total = counts.sum()
                        if total:
                            acc += rng.multinomial(total, counts / total)
                draws_auc[b, c], draws_ap[b, c] = _hist_auroc(bp, bn), _hist_aupr(bp, bn)

        def ci(x: np.ndarray) -> tuple[float, float]:
            x = x[np.isfinite(x)]
            return (float(np.quantile(x, alpha)), float(np.quantile(x, 1 - alpha))) if len(x) else nan2

        auc_ci = [ci(draws_auc[:, c]) for c in range(k)]
        ap_ci = [ci(draws_ap[:, c]) for c in range(k)]
        macro_ci = ci(np.nanmean(draws_auc, axis=1)) if np.isfinite(aucs).any() else nan2
    m = np.sum(confusions, axis=0).astype(np.int64)
    n, correct = int(m.sum()), int(np.trace(m))
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    per_class = {}
    for c, name in enumerate(classes):
        tp = int(m[c, c])
        per_class[name] = {
            "n": int(rows[c]), "auroc": _finite(aucs[c]), "auroc_ci": list(map(_finite, auc_ci[c])),
            "aupr": _finite(aps[c]), "aupr_ci": list(map(_finite, ap_ci[c])),
            "recall": tp / int(rows[c]) if rows[c] else None,
            "recall_ci": list(wilson_interval(tp, int(rows[c]), level)) if rows[c] else [None, None],
            "precision": tp / int(cols[c]) if cols[c] else None,
        }
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    return {
        "classes": list(classes),
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_ci": list(wilson_interval(correct, n, level)) if n else [None, None],
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_auroc": _finite(float(np.nanmean(aucs))) if np.isfinite(aucs).any() else None,
        "macro_auroc_ci": list(map(_finite, macro_ci)),
        "per_class": per_class,
        "confusion": m.tolist(),
        "ci_level": level,
    }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


__all__ = ["check_class_block", "class_histograms", "confusion_matrix", "pooled_class_metrics"]
