"""Burned-in markers on chest X-rays: find them, paint them out, and check a release for them.

Real X-rays carry laterality letters (L/R), burned-in text, ECG leads and other small
bright objects, mostly near the borders. A generator trained on them copies them, and a
classifier can learn one hospital's markers as a shortcut for the label. This module is
classical image processing (scipy.ndimage, no learned model):

* ``detect_markers`` finds small, bright, high-contrast blobs: a white top-hat (the image
  minus its grey opening with a square a little larger than a letter) keeps what is
  brighter than its surroundings and smaller than the square; its connected components
  are kept as markers when they are small, compact and bright enough. In the border band
  (where burned-in annotations sit) a lower contrast and a text-like elongation are
  allowed; inside it only round, very bright, small blobs count (ECG leads), so ribs,
  clavicles and the spine (long or large components) and pneumonic opacities (large and
  of low top-hat contrast) are not flagged.
* ``remove_markers`` fills the masked pixels with the harmonic interpolation of their
  surroundings (the discrete Laplace equation, solved exactly with the unmasked
  neighbours as boundary values): the fill joins its surroundings without an edge and,
  by the maximum principle, stays within their range.
* ``marker_rate`` is the share of images with a marker: the check for a synthetic
  release that copies markers.

What it can and cannot see depends on the resolution: at 64 px a letter is 4-8 pixels
tall and an ECG lead 2-4 pixels across, so it sees them as blobs, not as glyphs; thin
wires, tubes and faint text smaller than about two pixels, or markers drawn over bright
anatomy, are below what these rules can tell from anatomy. See ``benchmarks/markers.py``
for what it finds on the real Kermany images.

The masks and before/after images of real X-rays stay at the site: they are real pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import spsolve

from fedsynth.data.dataset import ImageSet

# ---- defaults ------------------------------------------------------------------------------
# Lengths are fractions of the image side S (so one setting serves 32, 64 and 128 px) with a
# floor in pixels where small images would round them to nothing; contrasts are in image units
# ([0, 1]). How they were chosen: on phantoms with planted markers (make_phantoms(markers=...),
# 32, 64 and 128 px: recall of the planted ones against flags on clean phantoms) and by looking
# at grids of flagged and unflagged real Kermany images at 64 and 128 px (benchmarks/markers.py).
# The real images have no marker ground truth, so the real-data side of the tuning is by eye.

BORDER = 0.15
"""Width of the border band on each side (fraction of S). Kermany's laterality letters sit
within about 0.12 S of an edge at 64 and 128 px (seen on the real images); phantom markers are
planted within 0.02-0.08 S of the corner plus their size."""

SMOOTH_SIGMA = 0.008
"""Gaussian pre-smoothing of the border search (fraction of S: 0.26 px at 32, 0.5 at 64, 1 at 128):
against per-pixel noise, less than would blur a 3-4 px letter at 32 px below the contrast."""

TOPHAT_SIZE = 0.14
"""Side of the top-hat's square (fraction of S, odd, at least 3 px): larger than a letter
(0.07-0.12 S) or an ECG lead, so they stay in the top-hat whole: 9 px at 64, 5 at 32, 19 at 128."""

RISE = 0.1
"""How far a border marker must rise above the larger bright region it touches (the area
top-hat: the image minus its area opening of OPENING_AREA). Pieces of anatomy that the square
top-hat cuts out (the strip of soft tissue beside a lung, a rib's end, noise on them) are
connected to their structure at their own level and do not rise: on clean phantoms they reach
0.09 at 64 px and 0.15 at 32; planted markers' 10th percentile is 0.18 at 64 and 0.09 at 32."""

OPENING_AREA = 0.015
"""Area of that opening (fraction of S^2: 15 px at 32, 61 at 64, 245 at 128): more than a
letter's ink, less than any anatomy."""

LEVELS = 32
"""Grey levels of the area opening's threshold decomposition (rise resolution 1/32)."""

GROW = 0.1
"""Top-hat level (image units) that outlines a candidate region."""

CORE = 0.5
"""Within a candidate region, the pixels above this share of its peak top-hat are the marker's
core, the component the rules judge: a letter touching the shoulder's edge is cut off from it."""

BORDER_CONTRAST = 0.25
"""Peak top-hat a component in the border band needs (planted markers: 0.85-1.0 paint at least
0.3 above what they cover)."""

MIN_AREA = 1
"""Fewest pixels a border marker has (at 32 px a letter's pieces are single pixels)."""

MAX_AREA = 0.012
"""Most pixels of a border marker (fraction of S^2: 49 px at 64, 12 at 32): a letter of
0.12 S is about 0.008 S^2 of ink plus its antialiased rim."""

MAX_EXTENT = 0.3
"""Longest bounding-box side of a border marker (fraction of S): a short line of text."""

MAX_ELONGATION = 10.0
"""Most elongation (ratio of the principal axes' lengths) of a border marker: a merged line of
text at 32 px reaches ~8; clavicles and ribs are longer than MAX_EXTENT."""

BLOB_SIGMA = 0.02
"""Scale (fraction of S, at least BLOB_SIGMA_MIN px) of the Hessian blob detector that finds
ECG leads inside the band: a disc of 0.04-0.07 S (planted leads; real leads are 2-4 px at 64)."""

BLOB_SIGMA_MIN = 0.7
"""Smallest blob scale in pixels."""

INNER_BLOB = 0.075
"""Blobness (scale-normalised weaker principal curvature, -sigma^2 lambda_2) a lead needs:
lines (ribs, clavicles, the spine's edges) curve in one direction only and stay near 0. Planted
leads: 10th percentile 0.08 (32 px) to 0.11 (128 px); clean phantoms: 99th percentile 0.06,
maximum 0.09 at 32 px and 0.066 at 64 px."""

INNER_CONTRAST = 0.3
"""Peak top-hat a lead inside the band needs."""

INNER_BRIGHTNESS = 0.7
"""Peak intensity a lead inside the band needs: metal is near white."""

INNER_MAX_AREA = 0.006
"""Most pixels of a lead (fraction of S^2: 24 px at 64; the blob region of a 0.07 S disc)."""

MASK_DILATION = 1
"""Pixels the mask grows by, so the antialiased rim of a marker is painted out too."""

RELEASE_MAX_RATE = 0.05
"""Suggested refusal level for ``marker_rate`` of a synthetic release: the detector flags at
most this share of clean phantoms (tests/test_markers.py); a release above it copies markers."""


@dataclass(frozen=True)
class MarkerReport:
    """What ``detect_markers`` found: one mask and one component count per image."""

    masks: np.ndarray  # (N, H, W) bool: marker pixels (dilated by MASK_DILATION)
    components: np.ndarray  # (N,) int: markers found per image

    @property
    def touched(self) -> np.ndarray:
        """(N,) bool: the images with at least one marker."""
        return self.components > 0

    @property
    def n_images(self) -> int:
        return int(self.components.shape[0])

    @property
    def images_touched(self) -> int:
        return int(self.touched.sum())

    @property
    def n_components(self) -> int:
        return int(self.components.sum())

    @property
    def pixel_share(self) -> float:
        """Share of all pixels that are marker pixels."""
        return float(self.masks.mean()) if self.masks.size else 0.0

    def summary(self) -> dict[str, Any]:
        """Counts only (no pixels): safe to log or to report beyond the site."""
        n = self.n_images
        touched = self.touched
        return {
            "images": n,
            "images_touched": self.images_touched,
            "share_touched": self.images_touched / n if n else 0.0,
            "components": self.n_components,
            "pixel_share": self.pixel_share,
            "pixel_share_touched": float(self.masks[touched].mean()) if touched.any() else 0.0,
        }

    def before_after(
        self, images: np.ndarray, cleaned: np.ndarray | None = None, *, k: int = 8, seed: int = 0
    ) -> list[tuple[str, np.ndarray]]:
        """Rows for a before/after grid of up to ``k`` flagged images (chosen at random by ``seed``).

        Returns ``[(name, images)]``: the images, the mask drawn over them, and the cleaned
        images (``remove_markers`` when ``cleaned`` is not given), each (k, H, W) in [0, 1].
        It is the input of ``fedsynth.evaluation.grids.image_grid``. Real pixels: keep the
        grid at the site.
        """
        images = _check_images(images)
        idx = np.flatnonzero(self.touched)
        if len(idx) > k:
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=k, replace=False))
        before = images[idx]
        after = (remove_markers(before, self.masks[idx]) if cleaned is None else np.asarray(cleaned)[idx])
        overlay = np.where(self.masks[idx], 1.0, 0.5 * before).astype(np.float32)
        return [
            ("flagged (before)", before),
            ("marker mask", overlay),
            ("markers removed", after.astype(np.float32)),
        ]


def _check_images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("images must be finite")
    return arr


def _odd(x: float, floor: int = 3) -> int:
    n = max(floor, int(round(x)))
    return n if n % 2 else n + 1


def blobness(images: np.ndarray, sigma: float) -> np.ndarray:
    """Bright-blob response: ``max(0, -sigma^2 lambda_2)``, lambda_2 the larger Hessian eigenvalue.

    Both principal curvatures of a bright blob are negative; a bright line's is ~0 along it,
    so ribs, clavicles and edges score low whatever their contrast.
    """
    s = (0, sigma, sigma)
    xx = ndi.gaussian_filter(images, s, order=(0, 0, 2), mode="nearest")
    yy = ndi.gaussian_filter(images, s, order=(0, 2, 0), mode="nearest")
    xy = ndi.gaussian_filter(images, s, order=(0, 1, 1), mode="nearest")
    lam2 = (xx + yy) / 2 + np.sqrt(((xx - yy) / 2) ** 2 + xy**2)
    return np.maximum(-lam2, 0.0) * sigma**2


def _area_opening(x: np.ndarray, area: float, levels: int) -> np.ndarray:
    """Grey area opening of each image, by threshold decomposition on ``levels`` grey levels.

    Each pixel gets the highest level at which it lies in a connected bright region of at
    least ``area`` pixels (rounded down to the level grid): bright regions smaller than
    ``area`` are lowered to the level where they join a larger one, whatever their shape,
    while long thin anatomy (ribs, clavicles, the body's edge) keeps its height.
    """
    out = np.zeros_like(x)
    for t in np.arange(1, levels, dtype=np.float32) / levels:
        above = x >= t
        if not above.any():
            break
        labels, _ = ndi.label(above, structure=_IN_IMAGE)
        big = np.bincount(labels.ravel()) >= area
        big[0] = False
        out[big[labels]] = t
    return out


def _features(labels: np.ndarray, n: int, **values: np.ndarray) -> dict[str, np.ndarray]:
    """Per component 1..n: area, centroid, elongation, bbox extent, image index, and the peak of each value."""
    index = np.arange(1, n + 1)
    _, h, w = labels.shape
    rr = np.broadcast_to(np.arange(h, dtype=np.float64)[None, :, None], labels.shape)
    cc = np.broadcast_to(np.arange(w, dtype=np.float64)[None, None, :], labels.shape)
    ones = np.ones(labels.shape)
    area = ndi.sum_labels(ones, labels, index) if n else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mr = ndi.sum_labels(rr, labels, index) / area
        mc = ndi.sum_labels(cc, labels, index) / area
        vrr = ndi.sum_labels(rr * rr, labels, index) / area - mr**2 + 1 / 12
        vcc = ndi.sum_labels(cc * cc, labels, index) / area - mc**2 + 1 / 12
        vrc = ndi.sum_labels(rr * cc, labels, index) / area - mr * mc
    disc = np.sqrt(np.maximum(((vrr - vcc) / 2) ** 2 + vrc**2, 0.0))
    big, small = (vrr + vcc) / 2 + disc, np.maximum((vrr + vcc) / 2 - disc, 1 / 12)
    extent = np.zeros(n)
    image = np.zeros(n, dtype=np.int64)
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n)):
        if sl is not None:
            extent[i] = max(sl[1].stop - sl[1].start, sl[2].stop - sl[2].start)
            image[i] = sl[0].start
    edge = np.minimum.reduce([mr + 0.5, h - 0.5 - mr, mc + 0.5, w - 0.5 - mc]) if n else np.zeros(0)
    out = {"area": area, "edge": edge / min(h, w), "elongation": np.sqrt(big / small), "extent": extent,
           "image": image}
    for name, v in values.items():
        out[name] = ndi.maximum(v, labels, index) if n else np.zeros(0)
    return out


_IN_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_IN_IMAGE[1] = True  # 8-connected within an image, never across the images of a stack


def _components(images: np.ndarray, p: dict[str, Any]) -> list[tuple[np.ndarray, dict, dict]]:
    """The two candidate sets (border, inner): labels, features and each rule's verdict per component."""
    side = min(images.shape[1:])
    sm = p["smooth_sigma"] * side
    smooth = ndi.gaussian_filter(images, (0, sm, sm), mode="nearest") if sm > 0 else images
    k = _odd(p["tophat_size"] * side)
    th = smooth - ndi.grey_opening(smooth, size=(1, k, k), mode="nearest")

    # border band: cores of the top-hat's bright regions, judged by size and shape
    labels, n = ndi.label(th >= p["grow"], structure=_IN_IMAGE)
    if n:
        peak = np.zeros(n + 1)
        peak[1:] = ndi.maximum(th, labels, np.arange(1, n + 1))
        labels, n = ndi.label(th >= np.maximum(p["grow"], p["core"] * peak[labels]), structure=_IN_IMAGE)
    rise = smooth - _area_opening(smooth, max(p["opening_area"] * side * side, 2), p["levels"]) if n else th
    f = _features(labels, n, contrast=th, rise=rise)
    border_rules = {
        "in_band": f["edge"] <= p["border"],
        "contrast": f["contrast"] >= p["border_contrast"],
        "rise": f["rise"] >= p["rise"],
        "min_area": f["area"] >= p["min_area"],
        "area": f["area"] <= max(p["max_area"] * side * side, p["min_area"]),
        "extent": f["extent"] <= max(p["max_extent"] * side, 2),
        "elongation": f["elongation"] <= p["max_elongation"],
    }
    out = [(labels, f, border_rules)]

    # inside the band: bright round blobs (ECG leads)
    sigma = max(p["blob_sigma"] * side, p["blob_sigma_min"])
    blob = blobness(images, sigma)
    labels, n = ndi.label((blob >= p["inner_blob"] / 2) & (th >= p["grow"]), structure=_IN_IMAGE)
    f = _features(labels, n, contrast=th, blob=blob, bright=images)
    inner_rules = {
        "inside": f["edge"] > p["border"],
        "blob": f["blob"] >= p["inner_blob"],
        "contrast": f["contrast"] >= p["inner_contrast"],
        "brightness": f["bright"] >= p["inner_brightness"],
        "area": f["area"] <= max(p["inner_max_area"] * side * side, 2),
    }
    out.append((labels, f, inner_rules))
    return out


def detect_markers(
    images: np.ndarray,
    *,
    border: float = BORDER,
    border_contrast: float = BORDER_CONTRAST,
    inner_contrast: float = INNER_CONTRAST,
    inner_blob: float = INNER_BLOB,
    inner_brightness: float = INNER_BRIGHTNESS,
    tophat_size: float = TOPHAT_SIZE,
    rise: float = RISE,
    opening_area: float = OPENING_AREA,
    levels: int = LEVELS,
    grow: float = GROW,
    core: float = CORE,
    smooth_sigma: float = SMOOTH_SIGMA,
    blob_sigma: float = BLOB_SIGMA,
    blob_sigma_min: float = BLOB_SIGMA_MIN,
    min_area: int = MIN_AREA,
    max_area: float = MAX_AREA,
    inner_max_area: float = INNER_MAX_AREA,
    max_extent: float = MAX_EXTENT,
    max_elongation: float = MAX_ELONGATION,
    mask_dilation: int = MASK_DILATION,
    batch: int = 512,
) -> MarkerReport:
    """Find burned-in markers in ``images`` (N, H, W) float in [0, 1]; see the module doc and defaults.

    ``border`` is the band's width as a fraction of the side. Set ``inner_blob`` above 1
    to look in the band only, ``border_contrast`` above 1 to look for leads only.
    ``batch`` images are processed at a time (memory only, the result does not depend on it).
    """
    p = dict(locals())
    del p["images"], p["batch"]
    images = _check_images(images)
    masks = np.zeros(images.shape, dtype=bool)
    counts = np.zeros(images.shape[0], dtype=np.int64)
    for start in range(0, images.shape[0], max(1, batch)):
        chunk = images[start:start + batch]
        found = np.zeros(chunk.shape, dtype=bool)
        for labels, _, rules in _components(chunk, p):
            keep = np.logical_and.reduce(list(rules.values()))
            if keep.any():
                found |= np.concatenate([[False], keep])[labels]
        if mask_dilation > 0 and found.any():
            found = ndi.binary_dilation(found, structure=_IN_IMAGE, iterations=mask_dilation)
        masks[start:start + batch] = found
        # one marker is one connected piece of the (dilated) mask: the parts of a letter count once
        grouped, n_groups = ndi.label(found, structure=_IN_IMAGE)
        if n_groups:
            first = np.array([sl[0].start for sl in ndi.find_objects(grouped)])
            np.add.at(counts, start + first, 1)
    return MarkerReport(masks=masks, components=counts)


def _harmonic_fill(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with the ``mask`` pixels replaced by the solution of Laplace's equation (4-neighbours).

    Unmasked neighbours are the boundary values; at the image edge the missing neighbours
    are left out (no flux). Every 4-connected masked region short of the whole image
    touches an unmasked pixel, so the system is non-singular; a fully masked image is
    returned unchanged (nothing to fill from).
    """
    h, w = img.shape
    out = img.astype(np.float64, copy=True)
    pts = np.flatnonzero(mask)
    if len(pts) == 0 or len(pts) == mask.size:
        return img.copy()
    pos = -np.ones(mask.size, dtype=np.int64)
    pos[pts] = np.arange(len(pts))
    r, c = np.divmod(pts, w)
    flat = out.ravel()
    diag = np.zeros(len(pts))
    rhs = np.zeros(len(pts))
    rows, cols = [], []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        diag += ok
        nb = rr[ok] * w + cc[ok]
        j = pos[nb]
        i = np.flatnonzero(ok)
        inner = j >= 0
        rows.append(i[inner])
        cols.append(j[inner])
        np.add.at(rhs, i[~inner], flat[nb[~inner]])
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    a = sparse.csr_matrix(
        (np.concatenate([diag, -np.ones(len(rows_a))]),
         (np.concatenate([np.arange(len(pts)), rows_a]), np.concatenate([np.arange(len(pts)), cols_a]))),
        shape=(len(pts), len(pts)),
    )
    flat[pts] = spsolve(a.tocsc(), rhs) if len(pts) > 1 else rhs / diag
    return out.astype(img.dtype)


def remove_markers(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``images`` with the ``masks`` pixels filled from their surroundings (harmonic inpainting).

    Unmasked pixels are returned unchanged; filled pixels stay within the range of the
    pixels around them (so within [0, 1]). A new array; the input is not modified.
    """
    images = _check_images(images)
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != images.shape:
        raise ValueError(f"masks must have the images' shape {images.shape}, got {masks.shape}")
    out = images.copy()
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        out[i] = _harmonic_fill(images[i], masks[i])
    return np.clip(out, 0.0, 1.0, out=out)


def clean_markers(images: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, MarkerReport]:
    """Detect (``kwargs`` as for ``detect_markers``) and remove in one call: ``(cleaned, report)``."""
    report = detect_markers(images, **kwargs)
    return remove_markers(images, report.masks), report


def marker_rate(images: np.ndarray, **kwargs: Any) -> float:
    """Share of ``images`` with at least one detected marker (``kwargs`` as for ``detect_markers``).

    The release check: compare with ``RELEASE_MAX_RATE`` (or the site's own real images
    after removal) and refuse or report a synthetic release that copies markers.
    """
    report = detect_markers(images, **kwargs)
    return report.images_touched / report.n_images if report.n_images else 0.0


# ---- at a site: before training, and on a release ------------------------------------------


def clean_training_set(train: ImageSet, action: str) -> tuple[ImageSet, MarkerReport | None]:
    """A site's real training images as a generator should see them, with ``action``:
    'keep' (unchanged, nothing detected), 'inpaint' (markers painted out) or 'drop' (images
    with a marker left out). Both are per-image maps, so DP on the result is DP on the
    site's images. Returns the set and the detection report (None for 'keep')."""
    if action == "keep" or len(train) == 0:
        return train, None
    if action not in ("inpaint", "drop"):
        raise ValueError(f"markers action must be 'keep', 'inpaint' or 'drop', got {action!r}")
    report = detect_markers(train.images)
    if action == "drop":
        return train.subset(np.flatnonzero(~report.touched)), report
    return replace(train, images=remove_markers(train.images, report.masks)), report
