"""Intensity normalization the classifier applies to every image it trains on or scores.

Scanners and hospitals differ in exposure, windowing and contrast curve; a classifier
trained at one site's levels can read another's as disease. Normalizing each image's
intensities on its own removes part of that shift before the network sees it:

* ``equalize``: global histogram equalization (each image's intensities mapped through
  its own cumulative histogram);
* ``clahe``: contrast-limited adaptive histogram equalization (scikit-image's
  ``equalize_adapthist``: equalization in tiles of 1/8 of the side, clip limit 0.01),
  which keeps local contrast without amplifying flat regions' noise.

The method is part of the classifier: it is written into the classifier file's header
(``intensity``) and ``predict_proba`` applies it to new images, so training and
prediction can never disagree. Per-image maps only, so they cost no privacy.
"""

from __future__ import annotations

import numpy as np

METHODS = ("none", "equalize", "clahe")
CLAHE_CLIP = 0.01
CLAHE_TILES = 8  # tiles per side


def normalize_intensity(images: np.ndarray, method: str) -> np.ndarray:
    """``images`` (N, H, W) float in [0, 1] normalized by ``method``; a new float32 array
    (the input itself for 'none')."""
    if method == "none":
        return images
    if method not in METHODS:
        raise ValueError(f"intensity method must be one of {', '.join(METHODS)}, got {method!r}")
    from skimage import exposure

    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        if float(img.max() - img.min()) < 1e-6:  # a flat image has no histogram to equalize
            out[i] = img
        elif method == "equalize":
            out[i] = exposure.equalize_hist(img, nbins=256)
        else:
            kernel = max(2, img.shape[0] // CLAHE_TILES)
            out[i] = exposure.equalize_adapthist(img, kernel_size=kernel, clip_limit=CLAHE_CLIP, nbins=256)
    return out
