import numpy as np
import pytest

from fedsynth.data.dataset import ImageSet
from fedsynth.data.partition import partition
from fedsynth.data.phantom import make_phantoms
from fedsynth.errors import DataError


def _keys(ds):
    return set(ds.patient_keys().tolist())


def _official(n_train=300, n_test=90, seed=0):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    patients = np.array([f"person{i // 2}" for i in range(n_train)] + [f"person{i // 2}" for i in range(n_test)])
    labels = np.concatenate(
        [np.repeat(rng.integers(0, 2, n_train // 2), 2), np.repeat(rng.integers(0, 2, n_test // 2), 2)]
    )
    split = np.array(["train"] * n_train + ["test"] * n_test)
    return ImageSet(rng.random((n, 8, 8), dtype=np.float32), labels, patient=patients, split=split)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_patient_disjoint_across_sites_and_splits(scheme):
    ds = make_phantoms(400, 16, seed=1, images_per_patient=3)
    sites = partition(ds, 4, scheme=scheme, alpha=1.0, seed=0, min_site_images=10)
    all_keys = []
    for s in sites:
        assert not (_keys(s.train) & _keys(s.test)), "a patient is on both sides of a site's split"
        all_keys.append(_keys(s.train) | _keys(s.test))
    for i in range(len(sites)):
        for j in range(i + 1, len(sites)):
            assert not (all_keys[i] & all_keys[j]), "a patient is at two sites"
    assert sum(len(s.train) + len(s.test) for s in sites) == len(ds)


def test_official_split_is_kept_and_patient_key_includes_split():
    ds = _official()
    sites = partition(ds, 3, seed=0)
    assert sum(len(s.test) for s in sites) == 90
    for s in sites:
        assert set(s.test.split) == {"test"} and set(s.train.split) == {"train"}
    # "person3" exists in both official splits but they are different children: both keys survive
    assert "train/person3" in ds.patient_keys() and "test/person3" in ds.patient_keys()


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_iid_balances_classes_and_sizes():
    ds = make_phantoms(600, 16, seed=2)
    sites = partition(ds, 3, scheme="iid", seed=0)
    sizes = [len(s.train) + len(s.test) for s in sites]
    prevalence = [np.concatenate([s.train.labels, s.test.labels]).mean() for s in sites]
    assert max(sizes) - min(sizes) <= 6
    assert max(prevalence) - min(prevalence) < 0.05


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_dirichlet_skews_labels():
    ds = make_phantoms(900, 16, seed=2)
    spread = []
    for seed in range(3):
        sites = partition(ds, 3, scheme="dirichlet", alpha=0.3, seed=seed, min_site_images=10)
        prev = [s.train.labels.mean() for s in sites]
        spread.append(max(prev) - min(prev))
    assert np.mean(spread) > 0.25  # iid would give about 0


def test_holdout_fraction_and_determinism():
    ds = make_phantoms(300, 16, seed=3)
    a = partition(ds, 2, seed=4, test_fraction=0.3)
    b = partition(ds, 2, seed=4, test_fraction=0.3)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.train.images, sb.train.images)
        frac = len(sa.test) / (len(sa.test) + len(sa.train))
        assert 0.2 < frac < 0.4


def test_impossible_requests_fail_clearly():
    ds = make_phantoms(20, 16, seed=0)
    with pytest.raises(DataError, match="patients cannot be split"):
        partition(ds, 50)
    with pytest.raises(DataError, match="at least 100 images"):
        partition(ds, 2, min_site_images=100)
    with pytest.raises(DataError, match="unknown partition scheme"):
        partition(ds, 2, scheme="random")
