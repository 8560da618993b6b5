"""Checks a site runs on synthetic images before they leave it (beyond the release gate)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsynth.classifier.metrics import wilson_interval
from fedsynth.data.markers import detect_markers


def check_release_markers(images: np.ndarray, action: str, check_images: int,
                          seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The burned-in marker check on synthetic images (N, H, W) about to be released.

    'report' detects on a random subset of ``check_images`` and keeps every image; 'drop'
    checks all and keeps only the images without a marker. Returns ``(kept_index, summary)``:
    the flagged share with its Wilson 95% interval, counts only.
    """
    if action not in ("report", "drop"):
        raise ValueError(f"release marker action must be 'report' or 'drop', got {action!r}")
    n = len(images)
    checked = (np.arange(n) if action == "drop"
               else np.sort(np.random.default_rng(seed).choice(n, size=min(n, check_images), replace=False)))
    report = detect_markers(images[checked])
    k, m = report.images_touched, report.n_images
    kept = np.flatnonzero(~report.touched) if action == "drop" else np.arange(n)
    return kept, {"action": action, "checked": m, "flagged": k, "share": k / m if m else 0.0,
                  "share_ci": list(wilson_interval(k, m)) if m else [0.0, 1.0],
                  "dropped": k if action == "drop" else 0}
