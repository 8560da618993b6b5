"""Calibration, operating points and subgroups for a classifier scored on labelled X-rays.

Plain functions on labels (0 normal, 1 pneumonia) and predicted probabilities; every input is
checked at the door (:func:`check_scores`) and a bad one is a ValueError that says what is wrong.

* :func:`reliability_bins`, :func:`expected_calibration_error`, :func:`brier_score`,
  :func:`calibration_report`: equal-width probability bins, the count-weighted mean gap between
  each bin's observed pneumonia rate and its mean predicted probability (ECE), and the mean
  squared error of the probabilities (Brier).
* :func:`operating_point`, :func:`threshold_for_sensitivity`, :func:`operating_points`:
  sensitivity/specificity with Wilson intervals at a threshold, and the thresholds that reach a
  target sensitivity *on the data given*. Such a threshold is chosen on the evaluated data: it
  describes these images and is no validated operating point for new ones.
* :func:`age_bands`, :func:`group_values`, :func:`subgroup_metrics`: per-group n, prevalence,
  AUROC with a stratified bootstrap CI, sensitivity and specificity at a fixed threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsynth.classifier.metrics import auroc, stratified_bootstrap, wilson_interval

N_BINS = 10
SENSITIVITY_TARGETS = (0.90, 0.95)
AGE_BANDS = ((0, 17, "0-17"), (18, 39, "18-39"), (40, 64, "40-64"), (65, math.inf, "65+"))
MISSING = "(missing)"
CHOSEN_ON_DATA = ("chosen on the evaluated data: describes these images, not a validated operating point "
                  "for new ones")


def check_scores(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, probs float64) as 1-D arrays of one length; ValueError unless labels are 0/1
    and probabilities are finite numbers in [0, 1], at least one of each."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.ndim != 1 or probs.ndim != 1 or labels.shape != probs.shape:
        raise ValueError(f"labels and probabilities must be 1-D arrays of one length; got {labels.shape} and "
                         f"{probs.shape}")
    if labels.size == 0:
        raise ValueError("no scores given (0 images)")
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (pneumonia)")
    if probs.dtype.kind not in "biuf":
        raise ValueError(f"probabilities must be numbers; got dtype {probs.dtype}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must be finite numbers in [0, 1]")
    return labels.astype(np.int64), probs


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    return int(n_bins)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _interval(ci: tuple[float, float]) -> list[float | None]:
    return [_nan_to_none(ci[0]), _nan_to_none(ci[1])]


# ---- calibration -----------------------------------------------------------------------------


def bin_index(probs: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bins on [0, 1]: [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1] (the last one closed)."""
    return np.minimum((np.asarray(probs, dtype=np.float64) * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(labels: Any, probs: Any, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """One row per equal-width bin: its edges, its count, the mean predicted probability and the
    observed share of pneumonia in it (None for an empty bin)."""
    labels, probs = check_scores(labels, probs)
    n_bins = _check_bins(n_bins)
    idx = bin_index(probs, n_bins)
    rows = []
    for b in range(n_bins):
        inside = idx == b
        n = int(inside.sum())
        rows.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "n": n,
            "mean_probability": float(probs[inside].mean()) if n else None,
            "fraction_positive": float(labels[inside].mean()) if n else None,
        })
    return rows


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = N_BINS) -> float:
    """ECE: sum over equal-width bins of (bin count / N) x |observed pneumonia rate - mean probability|."""
    labels, probs = check_scores(labels, probs)
    n_bins = _check_bins(n_bins)
    idx = bin_index(probs, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    pos = np.bincount(idx, weights=labels.astype(np.float64), minlength=n_bins)
    conf = np.bincount(idx, weights=probs, minlength=n_bins)
    occupied = counts > 0
    gap = np.abs(pos[occupied] - conf[occupied]) / counts[occupied]
    return float((counts[occupied] / labels.size * gap).sum())


def brier_score(labels: Any, probs: Any) -> float:
    """Mean squared difference between the probability and the label (0 is perfect; 0.25 is a constant 0.5)."""
    labels, probs = check_scores(labels, probs)
    return float(np.mean((probs - labels) ** 2))


def calibration_report(labels: Any, probs: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    return {
        "n_bins": _check_bins(n_bins),
        "binning": "equal-width on [0, 1]; ECE weighted by bin counts",
        "ece": expected_calibration_error(labels, probs, n_bins),
        "brier": brier_score(labels, probs),
        "bins": reliability_bins(labels, probs, n_bins),
    }


# ---- operating points ------------------------------------------------------------------------


def operating_point(labels: Any, probs: Any, threshold: float, *, level: float = 0.95) -> dict[str, Any]:
    """Sensitivity and specificity (Wilson CIs) when an image is called pneumonia at probability >= threshold."""
    labels, probs = check_scores(labels, probs)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    fp = int(np.sum(pred & (labels == 0)))
    return {
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "sensitivity_ci": _interval(wilson_interval(tp, tp + fn, level)),
        "specificity": tn / (tn + fp) if tn + fp else None,
        "specificity_ci": _interval(wilson_interval(tn, tn + fp, level)),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "ci_level": level,
    }


def threshold_for_sensitivity(labels: Any, probs: Any, target: float) -> float:
    """The highest threshold whose sensitivity on these images is at least ``target`` (so the best
    specificity that reaches it): the k-th highest pneumonia score, k = ceil(target x positives)."""
    labels, probs = check_scores(labels, probs)
    if isinstance(target, bool) or not isinstance(target, (int, float, np.floating)) or not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1]; got {target!r}")
    positives = np.sort(probs[labels == 1])[::-1]
    if positives.size == 0:
        raise ValueError("no pneumonia image: no threshold reaches a sensitivity")
    k = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[k - 1])


def operating_points(labels: Any, probs: Any, run_threshold: float, *,
                     targets: tuple[float, ...] = SENSITIVITY_TARGETS, level: float = 0.95) -> list[dict[str, Any]]:
    """The run's threshold (fixed before these images were seen) and, per target sensitivity,
    the threshold reaching it on these images, each marked with how it was chosen."""
    rows = [{"name": "run threshold", "chosen_on": "the classifier's synthetic validation split, before testing",
             "descriptive": False, **operating_point(labels, probs, run_threshold, level=level)}]
    for target in targets:
        t = threshold_for_sensitivity(labels, probs, target)
        rows.append({"name": f"sensitivity >= {target:.0%} on this data", "target_sensitivity": float(target),
                     "chosen_on": CHOSEN_ON_DATA, "descriptive": True,
                     **operating_point(labels, probs, t, level=level)})
    return rows


# ---- subgroups -------------------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return True
    return str(v).strip().lower() in ("", "nan", "none", "na", "n/a", "unknown")


def age_bands(ages: Any) -> np.ndarray:
    """Numeric ages binned into 0-17, 18-39, 40-64, 65+ (fractional ages fall in the band below the
    next integer: 17.5 is 0-17); a missing age is '(missing)', anything else not a non-negative
    number keeps its text (an already-banded '40-49' stays a group of its own)."""
    out = []
    for v in np.asarray(ages, dtype=object).reshape(-1):
        if _is_missing(v):
            out.append(MISSING)
            continue
        try:
            age = float(str(v).strip())
        except ValueError:
            out.append(str(v).strip())
            continue
        if not math.isfinite(age) or age < 0:
            out.append(str(v).strip())
            continue
        out.append(next(name for lo, hi, name in AGE_BANDS if age < hi + 1 and age >= lo))
    return np.array(out, dtype=object)


def group_values(column: str, values: Any) -> np.ndarray:
    """A metadata column as group names: ages banded, other values as trimmed text, missing as '(missing)'."""
    if column == "age":
        return age_bands(values)
    return np.array([MISSING if _is_missing(v) else str(v).strip() for v in np.asarray(values, dtype=object)
                     .reshape(-1)], dtype=object)


def _group_order(column: str, names: set[str]) -> list[str]:
    if column == "age":
        bands = [name for _, _, name in AGE_BANDS if name in names]
        return bands + sorted(names - set(bands) - {MISSING}) + ([MISSING] if MISSING in names else [])
    return sorted(names - {MISSING}) + ([MISSING] if MISSING in names else [])


def subgroup_metrics(labels: Any, probs: Any, groups: Any, threshold: float, *, column: str = "",
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per group (age bands in age order, other groups alphabetically, missing last): n,
    pneumonia count and prevalence, AUROC with a stratified bootstrap CI (undefined where a group
    holds one class only) and sensitivity/specificity with Wilson CIs at ``threshold``."""
    labels, probs = check_scores(labels, probs)
    groups = np.asarray(groups, dtype=object).reshape(-1)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have one entry per image ({labels.size}); got {groups.shape}")
    names = group_values(column, groups) if column else np.array([str(g) for g in groups], dtype=object)
    rows = []
    for i, name in enumerate(_group_order(column, set(names.tolist()))):
        inside = names == name
        y, p = labels[inside], probs[inside]
        n_pos = int(y.sum())
        one_class = n_pos in (0, y.size)
        point = operating_point(y, p, threshold, level=level)
        rows.append({
            "group": name,
            "n": int(y.size),
            "n_positive": n_pos,
            "prevalence": n_pos / y.size,
            "auroc": _nan_to_none(auroc(y, p)),
            "auroc_ci": _interval(stratified_bootstrap(y, p, auroc, n_boot, level, seed + i)),
            "sensitivity": point["sensitivity"],
            "sensitivity_ci": point["sensitivity_ci"],
            "specificity": point["specificity"],
            "specificity_ci": point["specificity_ci"],
            "note": "one class only: AUROC undefined" if one_class else "",
        })
    return rows
