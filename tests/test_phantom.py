import numpy as np
import pytest

from fedsynth.data.phantom import make_phantoms
from tests.conftest import assert_images


def test_shapes_range_and_flags():
    ds = make_phantoms(40, 32, seed=1)
    assert_images(ds.images, 40, 32)
    assert ds.phantom is True
    assert set(np.unique(ds.labels)) == {0, 1}
    assert ds.patient is not None and len(set(ds.patient)) < 40  # some patients have 2 images


def test_deterministic_by_seed():
    a = make_phantoms(10, 32, seed=5)
    b = make_phantoms(10, 32, seed=5)
    c = make_phantoms(10, 32, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_prevalence_is_respected():
    ds = make_phantoms(600, 16, prevalence=0.2, seed=0)
    assert 0.12 < ds.labels.mean() < 0.28


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_pneumonia_brightens_the_lungs():
    # opacities add density inside the lung fields: lower-lung pixels are brighter on average
    ds = make_phantoms(400, 32, seed=2)
    lower_lungs = ds.images[:, 14:24, 4:28].mean(axis=(1, 2))
    assert lower_lungs[ds.labels == 1].mean() > lower_lungs[ds.labels == 0].mean() + 0.01


def test_patient_images_share_a_label():
    ds = make_phantoms(200, 16, seed=4)
    for p in np.unique(ds.patient):
        assert len(set(ds.labels[ds.patient == p])) == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_phantoms(0, 32)
    with pytest.raises(ValueError):
        make_phantoms(10, 32, prevalence=1.5)
