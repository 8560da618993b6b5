"""Split one dataset into K simulated sites, each with a local real train and test split.

Splits are patient-disjoint: all images of a patient (key: ``ImageSet.patient_keys``)
go to one site and to one side of its train/test split. When the dataset carries an
official split (``split == "test"``), train patients are spread over the sites' train
splits and test patients over their test splits, so the sites' test splits together
are exactly the official test set. Otherwise each site holds out ``test_fraction`` of
its patients, stratified by label.

Schemes: ``iid`` spreads each class's patients evenly; ``dirichlet`` gives each site a
share of each class drawn from Dirichlet(alpha) (label skew, as in Hsu et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsynth.data.dataset import ImageSet
from fedsynth.errors import DataError


@dataclass(frozen=True)
class SiteSplit:
    name: str
    train: ImageSet
    test: ImageSet
    # patients held out of training for calibrating the server's classifier (never trained on, never the test)
    calibration: ImageSet | None = None

    def summary(self) -> dict:
        out = {"site": self.name, "train": self.train.class_counts(), "test": self.test.class_counts()}
        if self.calibration is not None:
            out["calibration"] = self.calibration.class_counts()
        return out


def site_name(index: int) -> str:
    return f"site-{index}"


@dataclass(frozen=True)
class _Groups:
    """Patient groups: image indices per group and each group's label."""

    members: list[np.ndarray]
    label: np.ndarray
    size: np.ndarray


def _groups(ds: ImageSet, index: np.ndarray) -> _Groups:
    keys = ds.patient_keys()[index]
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    members = [index[inverse == g] for g in range(len(uniq))]
    # a patient's label: the majority of its images (ties -> pneumonia)
    label = np.array([int(ds.labels[m].mean() >= 0.5) for m in members], dtype=np.int64)
    size = np.array([len(m) for m in members], dtype=np.int64)
    return _Groups(members, label, size)


def _assign_iid(groups: _Groups, k: int, rng: np.random.Generator) -> np.ndarray:
    """Per class, give each patient to the site with the fewest images of that class."""
    site = np.empty(len(groups.members), dtype=np.int64)
    for c in (0, 1):
        load = np.zeros(k, dtype=np.int64)
        for g in rng.permutation(np.flatnonzero(groups.label == c)):
            s = int(np.flatnonzero(load == load.min())[rng.integers((load == load.min()).sum())])
            site[g] = s
            load[s] += groups.size[g]
    return site


def _assign_by_shares(groups: _Groups, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per class c, cut that class's shuffled patients at the cumulative shares[:, c]."""
    k = shares.shape[0]
    site = np.empty(len(groups.members), dtype=np.int64)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(groups.label == c))
        if idx.size == 0:
            continue
        cum = np.cumsum(groups.size[idx])
        bounds = np.cumsum(shares[:, c])[:-1] * cum[-1]
        site[idx] = np.minimum(np.searchsorted(bounds, cum - groups.size[idx] / 2.0), k - 1)
    return site


def _holdout(groups: _Groups, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean per group: True for the test side, stratified by label."""
    test = np.zeros(len(groups.members), dtype=bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(groups.label == c))
        if idx.size < 2:
            continue
        target = fraction * groups.size[idx].sum()
        taken = np.cumsum(groups.size[idx])
        n_test = max(1, min(idx.size - 1, int(np.searchsorted(taken, target) + 1)))
        test[idx[:n_test]] = True
    return test


def partition(
    ds: ImageSet,
    num_sites: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
    min_site_images: int = 10,
    max_tries: int = 200,
    calibration_fraction: float = 0.0,
) -> list[SiteSplit]:
    """``calibration_fraction`` > 0: each site also holds out that share of its training patients
    (stratified, patient-disjoint) as a calibration split; with 0 the splits are exactly as before."""
    if num_sites < 1:
        raise DataError("num_sites must be at least 1")
    if scheme not in ("iid", "dirichlet"):
        raise DataError(f"unknown partition scheme {scheme!r} (use 'iid' or 'dirichlet')")
    rng = np.random.default_rng(seed)
    all_idx = np.arange(len(ds))
    official = ds.split is not None and bool((ds.split == "test").any())
    if official:
        is_test = ds.split == "test"
        pools = [_groups(ds, all_idx[~is_test]), _groups(ds, all_idx[is_test])]
    else:
        pools = [_groups(ds, all_idx)]
    n_patients = len(pools[0].members)
    if n_patients < num_sites:
        raise DataError(f"{n_patients} patients cannot be split into {num_sites} sites")

    for _ in range(max_tries):
        if scheme == "iid":
            assignment = [_assign_iid(g, num_sites, rng) for g in pools]
        else:
            shares = rng.dirichlet(np.full(num_sites, alpha), size=2).T  # (sites, classes)
            assignment = [_assign_by_shares(g, shares, rng) for g in pools]
        sizes = np.bincount(assignment[0], weights=pools[0].size, minlength=num_sites)
        if sizes.min() >= min_site_images:
            break
    else:
        raise DataError(
            f"could not give every one of {num_sites} sites at least {min_site_images} images "
            f"in {max_tries} draws (partition={scheme}, alpha={alpha}); lower num_sites or "
            "min_site_images, or raise dirichlet_alpha"
        )

    sites = []
    for s in range(num_sites):
        if official:
            train_g, test_g = pools
            train_idx = _members(train_g, assignment[0] == s)
            test_idx = _members(test_g, assignment[1] == s)
        else:
            (g,) = pools
            mine = np.flatnonzero(assignment[0] == s)
            sub = _Groups([g.members[i] for i in mine], g.label[mine], g.size[mine])
            held = _holdout(sub, test_fraction, rng)
            train_idx = _members(sub, ~held)
            test_idx = _members(sub, held)
        calibration = None
        if calibration_fraction > 0:
            # its own generator, so that the train/test assignment is the same with and without it
            train_groups = _groups(ds, train_idx)
            held = _holdout(train_groups, calibration_fraction, np.random.default_rng([seed, 1, s]))
            calibration = ds.subset(_members(train_groups, held))
            train_idx = _members(train_groups, ~held)
        sites.append(SiteSplit(site_name(s), ds.subset(train_idx), ds.subset(test_idx), calibration))
    return sites


def _members(groups: _Groups, mask: np.ndarray) -> np.ndarray:
    chosen = [groups.members[i] for i in np.flatnonzero(mask)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
