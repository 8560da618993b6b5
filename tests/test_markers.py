"""Burned-in markers: planted on phantoms, found, and painted out without touching the rest."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.data.markers import RELEASE_MAX_RATE, clean_markers, detect_markers, marker_rate, remove_markers
from fedsynth.data.phantom import make_phantoms


@pytest.fixture(scope="module")
def planted():
    clean = make_phantoms(200, resolution=64, seed=3)
    marked = make_phantoms(200, resolution=64, seed=3, markers=1.0)
    return clean.images, marked.images


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_markers_leave_the_anatomy_under_them_unchanged(planted):
    clean, marked = planted
    changed = np.abs(marked - clean) > 1e-6
    # every image got a marker, and a marker covers a small part of the image only
    assert changed.reshape(len(changed), -1).any(axis=1).all()
    assert changed.mean() < 0.05


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_planted_markers_are_found_and_clean_images_are_not(resolution):
    clean = make_phantoms(300, resolution=resolution, seed=3).images
    marked = make_phantoms(300, resolution=resolution, seed=3, markers=1.0).images
    recall = detect_markers(marked).touched.mean()
    false_alarms = marker_rate(clean)
    assert recall >= 0.8, recall  # measured: 0.84 at 32 px, 0.93 at 64 px
    assert false_alarms <= RELEASE_MAX_RATE, false_alarms  # measured: 0.01 and 0.0


@pytest.mark.slow  # over 1 s: outside the quick subset
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


@pytest.mark.slow  # over 0.6 s: outside the quick subset
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


def _marked_site(tmp_path, training, release):
    from fedsynth.client.site import Site
    from fedsynth.client.site_data import simulated_site_state, simulated_sites
    from fedsynth.config import load_config
    from tests.conftest import tiny_overrides

    cfg = load_config(None, [*tiny_overrides(tmp_path), "data.resolution=32", "data.phantom.markers=0.5",
                             f"data.markers.training={training}", f"data.markers.release={release}",
                             "data.markers.check_images=20"])
    data = simulated_sites(cfg)[0]
    state = simulated_site_state(cfg, tmp_path / "state", data.name)
    state.ensure_keys()
    return cfg, Site(data, state, tmp_path / "site-out", device="cpu")


@pytest.mark.parametrize("training", ["inpaint", "drop"])
def test_a_site_cleans_its_training_images_and_checks_its_release(tmp_path, training):
    cfg, site = _marked_site(tmp_path, training, "report")
    rel = site.release(cfg, "r")
    summary = rel.meta["markers"]
    n_train = len(site.data.train)
    assert summary["training"]["images"] == n_train
    assert summary["training"]["images_touched"] > 0
    expected_kept = n_train - summary["training"]["images_touched"] if training == "drop" else n_train
    assert summary["training"]["kept"] == expected_kept
    assert summary["release"]["checked"] == 20 and summary["release"]["dropped"] == 0
    lo, hi = summary["release"]["share_ci"]
    assert lo <= summary["release"]["share"] <= hi
    # the before/after grid of real images stays in the site's own folder; the reply carries counts only
    assert (tmp_path / "site-out" / "markers_before_after.png").is_file()
    assert all(isinstance(v, (int, float, str)) for v in summary["training"].values())


def test_under_dp_the_release_says_what_the_marker_step_did_but_sends_no_count_of_it(tmp_path):
    from fedsynth.config import PrivacySection

    cfg, site = _marked_site(tmp_path, "drop", "report")
    cfg.privacy = PrivacySection(epsilon=8)
    cfg.gate.membership_audit = False
    summary = site.release(cfg, "r").meta["markers"]
    assert summary["training"] == {"action": "drop", "counts": "not sent under DP"}
    assert summary["release"]["checked"] == 20  # synthetic images: their check is public


def test_drop_leaves_flagged_synthetic_images_out_of_the_release(tmp_path, monkeypatch):
    import fedsynth.client.site as site_module

    cfg, site = _marked_site(tmp_path, "keep", "drop")
    # a generator that copies markers: every other image it samples carries one
    marked = make_phantoms(200, resolution=32, seed=9, markers=1.0).images
    clean = make_phantoms(200, resolution=32, seed=9).images

    class Copying:
        family, init_info = "gan", None
        fitted_classes, unfitted_reasons = (0, 1), {}  # a generator that learnt both classes

        def fit(self, *a, **k):
            from fedsynth.generators.base import FitReport
            return FitReport(family="gan", epochs=1, steps=1, seconds=0.0, images_seen=0)

        def sample(self, n, c, seed=0):
            return np.where(np.arange(n)[:, None, None] % 2 == 0, marked[:n], clean[:n])

        def save(self, path):
            pass

    monkeypatch.setattr(site_module, "build_generator", lambda *a, **k: Copying())
    cfg.gate.enabled = False
    cfg.gate.membership_audit = False
    rel = site.release(cfg, "r")
    check = rel.meta["markers"]["release"]
    assert check["action"] == "drop" and check["checked"] == 48
    assert check["dropped"] >= 18  # 24 of the 48 carry one; the detector finds most
    assert len(rel.labels) == 48 - check["dropped"]
    assert "training" not in rel.meta["markers"]
