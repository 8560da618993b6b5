"""Procedural chest X-ray phantoms, so the demo and the tests run anywhere with no data.

Each phantom is drawn in normalised coordinates (x to the image right, y down, both in
[-1, 1]) and rendered at the requested resolution: a soft-tissue thorax, two lung
fields cut by the diaphragm domes, the heart shadow to the image right (the patient's
left in a PA view), spine and mediastinum, clavicles and curved posterior ribs. The
pose (rotation, scale, shift), contrast (gamma, window) and noise vary per image.
Pneumonia is drawn as patchy opacities inside the lungs: a few blobs of varying size
and density, modulated by low-frequency noise, from faint to dense (``subtype`` "bacteria",
lobar-like consolidation). With ``virus`` > 0 that share of the pneumonia patients is drawn
as viral pneumonia instead: a bilateral, perihilar, finely reticular haze (``subtype``
"virus"), so the three-class task (normal / bacteria / virus) can be run on phantoms. The
choice is drawn from its own random stream: with ``virus=0`` the images are the same.

With ``markers`` > 0 a share of the images also carry what real X-rays carry near their
borders and what generators copy: a burned-in laterality letter (L or R) or a short
text-like bar of blocks in a corner, or a bright round ECG lead over the chest
(``fedsynth.data.markers`` finds and removes them). The markers are drawn from their own
random stream, so the images under them are exactly the images drawn with ``markers=0``.

Nothing here is a medical image: outputs made from phantoms say so (``phantom=True``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedsynth.data.dataset import ImageSet


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine[0, 0].numpy()


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, with a sigmoid edge of relative width ``edge``."""
    return 1.0 / (1.0 + np.exp((d - 1.0) / edge))


def _ellipse(x, y, cx, cy, ax, ay):
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


class _Anatomy:
    """Per-patient anatomy; each image of the patient re-draws pose, contrast and noise."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.body_w = u(0.95, 1.15)
        self.lung_w = u(0.27, 0.34)
        self.lung_h = u(0.48, 0.6)
        self.lung_gap = u(0.34, 0.42)
        self.lung_y = u(-0.12, 0.0)
        self.heart_w = u(0.22, 0.33)
        self.heart_h = u(0.2, 0.27)
        self.heart_x = u(0.06, 0.16)
        self.dome_y = u(0.42, 0.52)
        self.rib_spacing = u(0.15, 0.19)
        self.rib_curve = u(0.25, 0.45)
        self.tissue = u(0.55, 0.7)
        self.lung_dark = u(0.32, 0.42)


def _render(
    rng: np.random.Generator, anatomy: _Anatomy, size: int, pneumonia: bool, viral: bool = False
) -> np.ndarray:
    u = rng.uniform
    lin = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y0, x0 = np.meshgrid(lin, lin, indexing="ij")
    # pose: inverse-map the pixel grid into the anatomy frame
    theta = np.deg2rad(u(-7, 7))
    scale = u(0.9, 1.08)
    dx, dy = u(-0.07, 0.07, size=2)
    c, s = np.cos(theta), np.sin(theta)
    x = (c * (x0 - dx) + s * (y0 - dy)) / scale
    y = (-s * (x0 - dx) + c * (y0 - dy)) / scale

    a = anatomy
    body = _soft(_ellipse(x, y, 0.0, 0.2, a.body_w, 1.05), 0.03)
    img = 0.06 + a.tissue * body

    # lungs: ellipses widening towards the base, cut by the diaphragm domes
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        cx = side * a.lung_gap
        widen = 1.0 + 0.35 * np.clip((y - a.lung_y) / a.lung_h, -1, 1)
        d = _ellipse(x, y, cx, a.lung_y, a.lung_w * widen, a.lung_h)
        dome = a.dome_y + (0.04 if side < 0 else 0.0) - 0.12 * ((x - cx) / a.lung_w) ** 2
        below = _soft((y - dome) / 0.05 + 1.0, 0.4)  # ~1 above the dome, ~0 below
        lungs = np.maximum(lungs, _soft(d, 0.05) * below)
    heart = _soft(_ellipse(x, y, a.heart_x, a.lung_y + 0.42, a.heart_w, a.heart_h), 0.06)
    lungs = lungs * (1.0 - 0.85 * heart)
    texture = 0.03 * _smooth_noise(rng, size, 12)  # vascular markings
    img = img - a.lung_dark * lungs + texture * lungs

    # spine / mediastinum and clavicles
    img = img + 0.12 * _soft(np.abs(x) / 0.09, 0.15) * body
    for side in (-1.0, 1.0):
        t = (x - side * 0.3) / 0.32
        clav = np.abs(y - (-0.62 + 0.08 * t**2 - side * 0.03 * t)) / 0.025
        img = img + 0.08 * _soft(clav, 0.3) * (np.abs(t) < 1.0)

    # posterior ribs: curved bands across each hemithorax
    ribs = np.zeros_like(x)
    for k in range(9):
        base = a.lung_y - a.lung_h + 0.05 + k * a.rib_spacing
        for side in (-1.0, 1.0):
            xs = (x - side * 0.05) * side
            curve = base + a.rib_curve * (xs - 0.35) ** 2 - 0.05
            band = np.abs(y - curve) / 0.022
            ribs = np.maximum(ribs, _soft(band, 0.35) * (xs > 0.05) * (xs < a.lung_gap + a.lung_w + 0.05))
    img = img + u(0.03, 0.06) * ribs * body * _soft((y + 1.0) / (a.dome_y + 1.05), 0.03)

    if pneumonia and viral:
        # bilateral perihilar haze: strongest near each hilum, fading outwards, finely reticular
        haze = np.zeros_like(x)
        for side in (-1.0, 1.0):
            hx, hy = side * (a.lung_gap - 0.35 * a.lung_w), a.lung_y + u(0.0, 0.3) * a.lung_h
            haze += np.exp(-(((x - hx) ** 2) / (2 * u(0.2, 0.3) ** 2) + ((y - hy) ** 2) / (2 * u(0.3, 0.45) ** 2)))
        reticular = np.clip(0.5 + 0.9 * _smooth_noise(rng, size, max(8, size // 3)), 0.0, 1.5)
        img = img + u(0.12, 0.28) * np.clip(haze, 0, 1.2) * reticular * lungs
    elif pneumonia:
        opacity = np.zeros_like(x)
        n_patches = rng.integers(1, 4)
        for _ in range(n_patches):
            side = rng.choice([-1.0, 1.0])
            px = side * a.lung_gap + u(-0.6, 0.6) * a.lung_w
            py = a.lung_y + u(-0.2, 0.75) * a.lung_h  # lower zones more often
            r = u(0.14, 0.3)
            blob = np.exp(-(((x - px) ** 2 + ((y - py) / 1.3) ** 2) / (2 * r**2)))
            opacity += u(0.5, 1.0) * blob
        patchy = np.clip(0.65 + 0.6 * _smooth_noise(rng, size, 10), 0.0, 1.4)
        density = u(0.15, 0.4)
        img = img + density * np.clip(opacity, 0, 1.2) * patchy * lungs

    # exposure: gamma and window, then blur-free quantum noise
    img = np.clip(img, 0.0, 1.0) ** u(0.8, 1.25)
    lo, hi = u(-0.04, 0.05), u(0.85, 1.05)
    img = (img - lo) / (hi - lo)
    img = img + rng.normal(0.0, u(0.008, 0.03), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# Burned-in marker glyphs on a 5x4 cell grid (1 = ink), rendered antialiased at any size.
_GLYPHS = {
    "L": ("1000", "1000", "1000", "1000", "1111"),
    "R": ("1110", "1001", "1110", "1010", "1001"),
}
_MARKER_STREAM = 0x6D61726B  # "mark": the markers' random stream, apart from the anatomy's
_VIRUS_STREAM = 0x76697275  # "viru": which pneumonia patients are viral, apart from the anatomy's
_SUPERSAMPLE = 8  # sub-pixel samples per pixel side when stamping a marker (antialiasing)


def _stamp(img: np.ndarray, inside, top: float, left: float, h: float, w: float, value: float) -> None:
    """Paint ``value`` over the box (top, left, h, w) in pixels where ``inside(u, v)`` (u, v in [0, 1)) holds.

    Coverage is averaged over sub-pixel samples, so small markers are antialiased like a
    downsampled real one; the paint replaces the image in proportion to the coverage.
    """
    size = img.shape[0]
    r0, r1 = max(int(np.floor(top)), 0), min(int(np.ceil(top + h)), size)
    c0, c1 = max(int(np.floor(left)), 0), min(int(np.ceil(left + w)), size)
    if r1 <= r0 or c1 <= c0:
        return
    f = _SUPERSAMPLE
    rows = r0 + (np.arange((r1 - r0) * f) + 0.5) / f
    cols = c0 + (np.arange((c1 - c0) * f) + 0.5) / f
    u = (rows[:, None] - top) / h
    v = (cols[None, :] - left) / w
    hit = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    hit &= inside(np.clip(u, 0, 0.999), np.clip(v, 0, 0.999))
    cover = hit.reshape(r1 - r0, f, c1 - c0, f).mean(axis=(1, 3))
    patch = img[r0:r1, c0:c1]
    img[r0:r1, c0:c1] = patch * (1.0 - cover) + value * cover


def _glyph(letter: str):
    cells = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return cells[(u * cells.shape[0]).astype(int), (v * cells.shape[1]).astype(int)]

    return inside


def _blocks(count: int, fill: float):
    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (v * count) % 1.0 < fill

    return inside


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.25


_MARKER_CONTRAST = 0.3  # a planted marker is at least this much brighter than the pixels it covers
_MARKER_TRIES = 20  # positions tried for a visible marker; the darkest one is kept otherwise


def _plant_marker(rng: np.random.Generator, img: np.ndarray) -> None:
    """One marker on ``img`` (in place): a letter or a text bar in a corner, or an ECG lead on the chest.

    Markers are made to be seen, as real ones are (white on air, metal over the lungs): the
    position is redrawn until the marker is ``_MARKER_CONTRAST`` brighter than the median of
    the pixels under it (a marker painted over saturated tissue is invisible to anyone).
    """
    size = img.shape[0]
    u = rng.uniform
    kind = rng.integers(3)
    value = u(0.9, 1.0) if kind == 2 else u(0.85, 1.0)
    if kind == 2:  # ECG lead: a bright disc over the upper chest or the shoulders
        h = w = max(3.0, u(0.04, 0.07) * size)
        shape = _disc
    elif kind == 0:  # laterality letter
        h = max(4.0, u(0.07, 0.12) * size)
        w = 0.8 * h
        shape = _glyph("LR"[rng.integers(2)])
    else:  # a short line of burned-in text, drawn as blocks
        h = max(2.0, u(0.035, 0.06) * size)
        pitch = max(2.0, u(0.03, 0.05) * size)
        count = int(min(rng.integers(3, 7), max(2, 0.25 * size // pitch)))  # at most a quarter of the side
        w = pitch * count
        shape = _blocks(count, u(0.55, 0.75))
    best, best_under = (0.0, 0.0), np.inf
    for _ in range(_MARKER_TRIES):
        if kind == 2:
            top = (u(-0.6, 0.3) + 1) / 2 * size - h / 2
            left = (u(-0.65, 0.65) + 1) / 2 * size - w / 2
        else:
            top, left = u(0.02, 0.08) * size, u(0.02, 0.08) * size
            if rng.random() < 0.5:
                top = size - top - h
            if rng.random() < 0.5:
                left = size - left - w
        r0, c0 = max(int(top), 0), max(int(left), 0)
        under = float(np.median(img[r0:int(np.ceil(top + h)), c0:int(np.ceil(left + w))]))
        if under < best_under:
            best, best_under = (top, left), under
        if under <= value - _MARKER_CONTRAST:
            break
    _stamp(img, shape, best[0], best[1], h, w, value)


def make_phantoms(
    n: int,
    resolution: int = 32,
    *,
    prevalence: float = 0.5,
    images_per_patient: int = 2,
    seed: int = 0,
    markers: float = 0.0,
    virus: float = 0.0,
) -> ImageSet:
    """``n`` phantom CXRs with labels, subtypes and patient ids, deterministic by ``seed``.

    ``virus``: the share of pneumonia patients drawn as viral pneumonia (the others are
    bacterial); every image carries its ``subtype`` (normal / bacteria / virus) in ``meta``.

    ``markers``: the share of images (rounded to a count, chosen at random) that get one
    burned-in marker; the others, and the anatomy under the markers, are the same as with
    ``markers=0``.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0 < prevalence < 1:
        raise ValueError("prevalence must be in (0, 1)")
    if not 0 <= markers <= 1:
        raise ValueError("markers must be in [0, 1]")
    if not 0 <= virus <= 1:
        raise ValueError("virus must be in [0, 1]")
    virus_rng = np.random.default_rng([seed, _VIRUS_STREAM])
    rng = np.random.default_rng(seed)
    images = np.empty((n, resolution, resolution), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    patients = np.empty(n, dtype=object)
    subtypes = np.empty(n, dtype=object)
    i = 0
    p = 0
    while i < n:
        count = int(min(rng.integers(1, images_per_patient + 1), n - i))
        label = int(rng.random() < prevalence)
        viral = bool(label) and bool(virus_rng.random() < virus)
        patient_rng = np.random.default_rng(rng.integers(2**63))
        anatomy = _Anatomy(patient_rng)
        for _ in range(count):
            images[i] = _render(patient_rng, anatomy, resolution, bool(label), viral)
            labels[i] = label
            subtypes[i] = "virus" if viral else ("bacteria" if label else "normal")
            patients[i] = f"phantom-{p:05d}"
            i += 1
        p += 1
    origin = f"phantom(n={n}, seed={seed})"
    if markers > 0:
        marker_rng = np.random.default_rng([seed, _MARKER_STREAM])
        for j in marker_rng.choice(n, size=int(round(markers * n)), replace=False):
            _plant_marker(marker_rng, images[j])
        np.clip(images, 0.0, 1.0, out=images)
        origin = f"phantom(n={n}, seed={seed}, markers={markers:g})"
    if virus > 0:
        origin = origin[:-1] + f", virus={virus:g})"
    return ImageSet(
        images=images,
        labels=labels,
        patient=patients,
        origin=origin,
        phantom=True,
        meta={"subtype": subtypes.astype(str)},
    )
