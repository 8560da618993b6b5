"""Intensity normalization: part of the classifier, applied the same way in training and prediction."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.classifier.intensity import normalize_intensity
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.config import ClassifierSection
from fedsynth.data.phantom import make_phantoms


# equalization is invariant to a monotone curve up to binning; CLAHE's clip limit keeps part of it
@pytest.mark.parametrize("method, left", [("equalize", 0.25), ("clahe", 0.6)])
def test_normalization_removes_a_global_contrast_curve(method, left):
    images = make_phantoms(20, resolution=32, seed=1).images
    shifted = images ** 2.0  # another scanner's gamma
    a, b = normalize_intensity(images, method), normalize_intensity(shifted, method)
    assert a.shape == images.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    # a monotone intensity change moves the normalized image much less than the raw one
    assert np.abs(a - b).mean() < left * np.abs(images - shifted).mean()


def test_none_is_the_identity_and_flat_images_survive():
    images = make_phantoms(3, resolution=16, seed=1).images
    assert normalize_intensity(images, "none") is images
    flat = np.full((2, 16, 16), 0.3, np.float32)
    for method in ("equalize", "clahe"):
        out = normalize_intensity(flat, method)
        assert np.isfinite(out).all() and np.allclose(out, 0.3)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="intensity"):
        normalize_intensity(np.zeros((1, 8, 8), np.float32), "gamma")


def test_the_classifier_file_carries_its_normalization(tmp_path):
    ds = make_phantoms(80, resolution=16, seed=2)
    cfg = ClassifierSection(epochs=1, intensity="clahe")
    clf = train_classifier(ds.images, ds.labels, cfg, arch="small-cnn", resolution=16, seed=0, device="cpu")
    assert clf.intensity == "clahe"
    clf.save(tmp_path / "c.safetensors")
    loaded = Classifier.load(tmp_path / "c.safetensors")
    assert loaded.intensity == "clahe"
    np.testing.assert_allclose(loaded.predict_proba(ds.images[:8]), clf.predict_proba(ds.images[:8]), atol=1e-6)
    # prediction normalizes the input: scoring pre-normalized images is not the same as scoring raw ones
    assert not np.allclose(loaded.predict_proba(normalize_intensity(ds.images[:8], "clahe")),
                           loaded.predict_proba(ds.images[:8]), atol=1e-6)


def test_a_header_with_an_unknown_normalization_is_refused(tmp_path):
    ds = make_phantoms(40, resolution=16, seed=2)
    clf = train_classifier(ds.images, ds.labels, ClassifierSection(epochs=1), arch="small-cnn", resolution=16,
                           device="cpu")
    with pytest.raises(ValueError, match="intensity"):
        Classifier.from_state({**clf.header(), "intensity": "magic"}, clf.state_dict())
