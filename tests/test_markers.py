"""Burned-in markers: planted on phantoms, found, and painted out without touching the rest."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.data.markers import clean_markers, detect_markers, marker_rate, remove_markers
from fedsynth.data.phantom import make_phantoms


@pytest.fixture(scope="module")
def planted():
    clean = make_phantoms(200, resolution=64, seed=3)
    marked = make_phantoms(200, resolution=64, seed=3, markers=1.0)
    return clean.images, marked.images


def test_markers_leave_the_anatomy_under_them_unchanged(planted):
    clean, marked = planted
    changed = np.abs(marked - clean) > 1e-6
    # every image got a marker, and a marker covers a small part of the image only
    assert changed.reshape(len(changed), -1).any(axis=1).all()
    assert changed.mean() < 0.05


def test_planted_markers_are_found_and_clean_images_mostly_are_not(planted):
    clean, marked = planted
    recall = detect_markers(marked).touched.mean()
    false_alarms = marker_rate(clean)
    assert recall >= 0.7, recall
    assert false_alarms <= 0.15, false_alarms
    assert recall - false_alarms >= 0.6


def test_removal_changes_only_masked_pixels_and_stays_in_range(planted):
    _, marked = planted
    cleaned, report = clean_markers(marked)
    assert cleaned.shape == marked.shape and cleaned.dtype == marked.dtype
    assert np.array_equal(cleaned[~report.masks], marked[~report.masks])
    assert cleaned.min() >= 0.0 and cleaned.max() <= 1.0
    assert not np.shares_memory(cleaned, marked)
    # the fill brings the planted pixels back towards the anatomy under them
    clean, _ = planted
    hit = report.masks & (np.abs(marked - clean) > 0.1)
    assert hit.any()
    assert np.abs(cleaned[hit] - clean[hit]).mean() < np.abs(marked[hit] - clean[hit]).mean()


def test_harmonic_fill_of_a_constant_surrounding_is_that_constant():
    img = np.full((1, 16, 16), 0.4, dtype=np.float32)
    img[0, 6:9, 6:9] = 1.0
    mask = np.zeros_like(img, dtype=bool)
    mask[0, 6:9, 6:9] = True
    out = remove_markers(img, mask)
    assert np.allclose(out, 0.4, atol=1e-6)


def test_summary_holds_counts_only(planted):
    _, marked = planted
    summary = detect_markers(marked[:20]).summary()
    assert summary["images"] == 20
    assert all(isinstance(v, (int, float)) for v in summary.values())


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((2, 3, 4, 4))])
def test_wrong_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        detect_markers(bad)


def test_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="masks"):
        remove_markers(np.zeros((2, 8, 8), np.float32), np.zeros((2, 4, 4), bool))


def test_markers_share_is_validated():
    with pytest.raises(ValueError, match="markers"):
        make_phantoms(4, markers=1.5)
