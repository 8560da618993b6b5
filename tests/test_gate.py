"""The release gate drops near-copies of training images; the membership audit sees leaks."""

import numpy as np
import pytest

from fedsynth.data.phantom import make_phantoms
from fedsynth.privacy.gate import membership_auc, release_gate, thresholds


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_gate_drops_planted_copies_and_refills():
    real = make_phantoms(80, 16, seed=1)
    other = make_phantoms(400, 16, seed=2).images  # "synthetic": same distribution, not copies
    calls = {"n": 0}

    def sample(n, c, seed):
        calls["n"] += 1
        rng = np.random.default_rng(seed)
        out = other[rng.choice(len(other), n)]
        if calls["n"] == 1:  # the first batch carries 5 exact copies and 2 near copies of training images
            out[:5] = real.images[:5]
            out[5:7] = np.clip(real.images[5:7] + rng.normal(0, 0.002, (2, 16, 16)), 0, 1)
        return out.astype(np.float32)

    res = release_gate(sample, {0: 30, 1: 30}, real.images, real.labels, quantile=0.01, max_rounds=5, seed=0)
    assert res.dropped >= 7
    assert res.shortfall == 0 and len(res.images) == 60
    flat_real = real.images.reshape(len(real.images), -1)
    for img in res.images.reshape(len(res.images), -1):
        assert np.sqrt(((flat_real - img) ** 2).mean(axis=1)).min() > 0.01, "a near-copy was released"
    assert set(np.unique(res.labels)) == {0, 1}


def test_thresholds_ignore_exact_duplicates_in_the_real_data():
    real = make_phantoms(50, 16, seed=3).images
    with_dupes = np.concatenate([real, real[:10]])
    t = thresholds(with_dupes, 0.01)
    assert t.pixel > 0 and t.feature > 0


def test_membership_audit_detects_a_copying_release():
    ds = make_phantoms(200, 16, seed=4)
    members, non_members = ds.images[:100], ds.images[100:]
    copying = membership_auc(members, non_members, members[:80])
    independent = membership_auc(members, non_members, make_phantoms(80, 16, seed=5).images)
    assert copying > 0.85
    assert 0.35 < independent < 0.65
    assert membership_auc(members, non_members[:0], members) is None


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_membership_audit_reports_the_low_false_positive_regime_and_a_control():
    from fedsynth.privacy.gate import membership_audit

    ds = make_phantoms(300, 16, seed=4)
    members, non_members = ds.images[:200], ds.images[200:]
    copying = membership_audit(members, non_members, members[:80])
    # a release of 80 training images exposes those 80 exactly: at 1% false positives the attack
    # still finds them (80 of the 200 members it scored), far above chance (0.01)
    assert copying["tpr_at_1pct_fpr"] >= 0.4 and copying["n_members"] == 200 and copying["n_non_members"] == 100
    independent = membership_audit(members, non_members, make_phantoms(80, 16, seed=5).images)
    assert independent["tpr_at_1pct_fpr"] < 0.2
    # the control pits members against members: whatever the release, it cannot beat chance by much
    for audit in (copying, independent):
        assert audit["control_auc"] is not None and 0.3 < audit["control_auc"] < 0.7


def test_duplicated_training_images_do_not_open_the_gate_to_near_copies():
    real = make_phantoms(80, 16, seed=6).images
    with_dupes = np.concatenate([real, real[:40]])  # half the site's images twice (a re-scanned patient)
    t_dupes, t_clean = thresholds(with_dupes, 0.01), thresholds(real, 0.01)
    assert t_dupes.pixel == pytest.approx(t_clean.pixel) and t_dupes.feature == pytest.approx(t_clean.feature)
    near_copy = np.clip(real[:5] + np.random.default_rng(0).normal(0, 1e-3, real[:5].shape), 0, 1).astype(np.float32)
    from fedsynth.privacy.gate import too_close

    assert too_close(near_copy, with_dupes, t_dupes).all()
