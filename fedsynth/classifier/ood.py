"""The out-of-distribution reference a classifier carries: is an input like its training images?

At the end of training, the per-dimension mean and variance of the classifier's penultimate
features on its training split go into the classifier file's header with a threshold, the
OOD_QUANTILE quantile of its validation split's distances. A new image whose diagonal
Mahalanobis distance to that reference is above the threshold is flagged (``predict``,
``evaluate`` and the web app warn, and score it anyway).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fedsynth.classifier.models import embed

OOD_QUANTILE = 0.99
OOD_REFERENCE = "the classifier's synthetic validation split"
OOD_VAR_FLOOR = 1e-2  # times the mean variance: a feature that barely varies in training cannot dominate


def check_ood(ood: Any) -> None:
    """ValueError unless ``ood`` is the OOD reference :func:`ood_reference` writes."""
    def numbers_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in v)

    if not isinstance(ood, dict):
        raise ValueError("the classifier header's ood statistics must be a JSON object")
    mean, var, t = ood.get("mean"), ood.get("var"), ood.get("threshold")
    if not numbers_list(mean) or not numbers_list(var) or len(mean) != len(var) or min(var) <= 0:
        raise ValueError("the classifier header's ood statistics need 'mean' and 'var' lists of equal length "
                         "(finite numbers, variances above 0)")
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
        raise ValueError(f"the classifier header's ood threshold {repr(t)[:40]} is not a finite number >= 0")


def _sig6(x: float) -> float:
    return float(f"{float(x):.6g}")


@torch.inference_mode()
def embed_all(model: nn.Module, x: torch.Tensor, dev: torch.device | str, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [embed(model, x[i : i + batch_size].to(dev)).double().cpu().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def ood_distance(features: np.ndarray, mean: Any, var: Any) -> np.ndarray:
    """Diagonal Mahalanobis distance of each row of ``features`` (N, D), as the root mean square
    over dimensions of the standardised deviations (about 1 for a typical reference row)."""
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    z2 = (np.asarray(features, dtype=np.float64) - mean) ** 2 / var
    return np.sqrt(z2.mean(axis=1))


def ood_reference(model: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor,
                  dev: torch.device | str) -> dict[str, Any]:
    """The header's ``ood`` entry: per-dimension mean and variance of the penultimate features on
    the training split (variances floored at OOD_VAR_FLOOR times their mean), and the threshold,
    the OOD_QUANTILE quantile of the validation split's distances. Floats to 6 significant digits
    (the distances are computed from the rounded statistics, as a loaded classifier computes them)."""
    feats = embed_all(model, x_train, dev)
    var = feats.var(axis=0)
    var = np.maximum(var, max(OOD_VAR_FLOOR * float(var.mean()), 1e-12))
    mean = [_sig6(v) for v in feats.mean(axis=0)]
    var_r = [_sig6(v) for v in var]
    val = ood_distance(embed_all(model, x_val, dev), mean, var_r)
    return {"mean": mean, "var": var_r, "threshold": _sig6(np.quantile(val, OOD_QUANTILE)),
            "quantile": OOD_QUANTILE, "reference": OOD_REFERENCE}
