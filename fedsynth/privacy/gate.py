"""The release gate and the membership-inference audit, run at the site before a release.

Gate: a synthetic image is dropped when it sits closer to some training image than real
images sit to each other -- its nearest-neighbour distance to the training set is below
the ``quantile`` of the real-to-real nearest-neighbour distances (exact duplicates in
the real data excluded, so they do not pull the threshold to zero). Distances are taken
in pixel space (RMS over [0, 1] pixels) and in a feature space (a fixed, seeded,
untrained convolutional encoder: random conv features are a cheap, data-free stand-in
for perceptual similarity); an image failing either is dropped. Dropped images are
replaced by new samples for up to ``max_rounds`` rounds and the count is recorded.

Audit: a distance-to-closest-record attack. Each real image's score is minus its
distance to the nearest released image; the attack's AUC for telling the site's
training images (members) from its held-out test images (non-members) is reported.
0.5 means the release tells an attacker nothing about membership by this test.

The gate looks at the private training images, so its decisions are not covered by the
DP accounting; it only removes near-copies and is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score, roc_curve

ENCODER_NAME = "random-conv-features (seed 0, untrained)"


class _RandomConvEncoder(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        ch = 1
        for out in (16, 32, 64):
            conv = nn.Conv2d(ch, out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (9 * ch)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            ch = out

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        feats = []
        for conv in self.convs:
            h = torch.relu(conv(h))
            feats.append(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))
        f = torch.cat(feats, dim=1)
        return f / (f.norm(dim=1, keepdim=True) + 1e-8)


_ENCODER: _RandomConvEncoder | None = None


def features(images: np.ndarray) -> np.ndarray:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = _RandomConvEncoder(0).eval()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None] * 2 - 1
    return torch.cat([_ENCODER(x[i : i + 512]) for i in range(0, len(x), 512)]).numpy()


def pixels(images: np.ndarray) -> np.ndarray:
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return flat / np.sqrt(flat.shape[1])  # Euclidean distance = RMS pixel difference


def nearest_distances(queries: np.ndarray, refs: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    r = torch.from_numpy(np.ascontiguousarray(refs, dtype=np.float32))
    out = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), 1024):
        d = torch.cdist(q[start : start + 1024], r)
        if exclude_self:
            idx = torch.arange(start, min(start + 1024, len(q)))
            d[torch.arange(len(idx)), idx] = float("inf")
        out[start : start + len(d)] = d.min(dim=1).values.double().numpy()
    return out


@dataclass
class Thresholds:
    pixel: float
    feature: float
    quantile: float


def thresholds(real: np.ndarray, quantile: float) -> Thresholds:
    """The ``quantile`` of real-to-real nearest-neighbour distances, per space. Exact duplicates
    in the real data say nothing about closeness, so each image counts once: they are removed
    by their bytes, not by a distance tolerance (cdist's float error near 0 is up to 1e-3,
    which no tolerance tells apart from a near-copy)."""
    real = np.asarray(real)
    flat = np.ascontiguousarray(real.reshape(len(real), -1))
    _, first = np.unique(flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel(),
                         return_index=True)
    unique = real[np.sort(first)]
    out = []
    for embed in (pixels, features):
        e = embed(unique)
        d = nearest_distances(e, e, exclude_self=True) if len(e) > 1 else np.zeros(0)
        out.append(float(np.quantile(d, quantile)) if d.size else 0.0)
    return Thresholds(pixel=out[0], feature=out[1], quantile=quantile)


def too_close(synthetic: np.ndarray, real: np.ndarray, t: Thresholds) -> np.ndarray:
    near_pixel = nearest_distances(pixels(synthetic), pixels(real)) < t.pixel
    near_feature = nearest_distances(features(synthetic), features(real)) < t.feature
    return near_pixel | near_feature


@dataclass
class GateResult:
    images: np.ndarray
    labels: np.ndarray
    requested: int
    dropped: int
    rounds: int
    shortfall: int
    thresholds: Thresholds | None
    encoder: str = ENCODER_NAME
    dropped_per_class: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict:
        out = asdict(self)
        del out["images"], out["labels"]
        out["dropped_per_class"] = {str(k): v for k, v in self.dropped_per_class.items()}
        return out


def release_gate(
    sample: Callable[[int, int, int], np.ndarray],
    per_class: dict[int, int],
    real: np.ndarray,
    real_labels: np.ndarray,
    quantile: float,
    max_rounds: int,
    seed: int,
) -> GateResult:
    """Sample ``per_class[c]`` images of each class c with ``sample(n, c, seed)``, dropping
    near-copies of real images of any class, re-sampling up to ``max_rounds`` rounds."""
    t = thresholds(real, quantile)
    kept_images, kept_labels = [], []
    dropped: dict[int, int] = {}
    rounds = 0
    shortfall = 0
    for c, want in per_class.items():
        have: list[np.ndarray] = []
        n_have = 0
        dropped[c] = 0
        for r in range(max_rounds):
            rounds = max(rounds, r + 1)
            need = want - n_have
            # ask for a little more than missing, in proportion to what was dropped so far
            batch = sample(int(need * (1 + dropped[c] / max(want, 1))) + 1, c, seed + 1000 * r + c)
            close = too_close(batch, real, t)
            dropped[c] += int(close.sum())
            ok = batch[~close][:need]
            have.append(ok)
            n_have += len(ok)
            if n_have >= want:
                break
        shortfall += want - n_have
        imgs = np.concatenate(have) if have else np.zeros((0, *real.shape[1:]), np.float32)
        kept_images.append(imgs)
        kept_labels.append(np.full(len(imgs), c, dtype=np.int64))
    return GateResult(
        images=np.concatenate(kept_images),
        labels=np.concatenate(kept_labels),
        requested=int(sum(per_class.values())),
        dropped=int(sum(dropped.values())),
        rounds=rounds,
        shortfall=int(shortfall),
        thresholds=t,
        dropped_per_class=dropped,
    )


def membership_audit(members: np.ndarray, non_members: np.ndarray, released: np.ndarray,
                     max_each: int = 1000, seed: int = 0) -> dict | None:
    """A distance-to-closest-released-image attack: score each image by minus its distance to
    the nearest released image and see how well that tells the site's training images
    (members) from its held-out ones (non-members).

    ``auc``: the attack's AUROC (0.5 is chance); ``tpr_at_1pct_fpr``: the share of members it
    flags when it may wrongly flag 1% of non-members (the figure that matters for a few
    exposed patients; chance is 0.01); ``control_auc``: the same attack pitting members
    against other members, as many as there are non-members: both sides are training
    images, so it shows the audit's own noise floor at this sample size."""
    if len(members) < 2 or len(non_members) == 0 or len(released) == 0:
        return None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(members))
    m = members[order[:max_each]]
    nm = non_members[rng.permutation(len(non_members))[:max_each]]
    rel = pixels(released)
    d_m, d_nm = nearest_distances(pixels(m), rel), nearest_distances(pixels(nm), rel)
    scores = -np.concatenate([d_m, d_nm])
    labels = np.concatenate([np.ones(len(m)), np.zeros(len(nm))])
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {"auc": float(roc_auc_score(labels, scores)), "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
           "n_members": int(len(m)), "n_non_members": int(len(nm)), "control_auc": None}
    # control: members against members the attack has not seen as members (disjoint halves)
    half = min(len(nm), len(members) // 2)
    if half >= 1:
        ctrl_in, ctrl_out = members[order[:half]], members[order[half:2 * half]]
        c_scores = -np.concatenate([nearest_distances(pixels(ctrl_in), rel), nearest_distances(pixels(ctrl_out), rel)])
        c_labels = np.concatenate([np.ones(half), np.zeros(half)])
        out["control_auc"] = float(roc_auc_score(c_labels, c_scores))
    return out


def membership_auc(members: np.ndarray, non_members: np.ndarray, released: np.ndarray,
                   max_each: int = 1000, seed: int = 0) -> float | None:
    """The attack's AUC alone (see :func:`membership_audit`)."""
    audit = membership_audit(members, non_members, released, max_each, seed)
    return None if audit is None else audit["auc"]
