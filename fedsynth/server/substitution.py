"""Data substitution, fedsynth's own mode: every site releases signed synthetic images once.

The server asks every site for a release, verifies each one (shape, signature, chain,
every epsilon recomputed, budget), pools what checks out, optionally aligns the pooled
intensities to the sites' released histograms, trains the classifier on synthetic images
only and has every site evaluate it. A site that fails or sends something unusable is
recorded with its reason and the run goes on, as long as ``federation.min_sites`` remain.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.config import RunConfig
from fedsynth.data.dataset import CLASS_NAMES, from_uint8
from fedsynth.errors import FederationError
from fedsynth.evaluation.alignment import match_by_class, match_histograms, reference_cdf
from fedsynth.evaluation.grids import image_grid
from fedsynth.metrics_schema import RunMetrics
from fedsynth.privacy.release import image_digests, signed_privacy
from fedsynth.progress import ProgressFactory, no_progress
from fedsynth.protocol import Release, TrainRequest
from fedsynth.rundir import RunDir
from fedsynth.server.checks import checked_privacy, file_ledger, public_info, require_sites, verify_release
from fedsynth.server.record import Contribution, RunRecord
from fedsynth.server.results import evaluate_and_report, train_on_pool
from fedsynth.server.transport import Transport

log = logging.getLogger("fedsynth.server")


def run_substitution(
    config: RunConfig,
    transport: Transport,
    run_dir: RunDir,
    registry: dict[str, Path],
    progress: ProgressFactory = no_progress,
) -> RunMetrics:
    """Run one data-substitution round end to end; returns (and writes) the run's metrics.

    ``registry`` maps each site's name to the public key the server trusts for it.
    """
    record = RunRecord()

    # 1. sites train generators and release synthetic images; each release is checked as hostile
    log.info("asking sites for synthetic releases")
    accepted: list[Release] = []
    for rel in transport.release(TrainRequest(run_dir.run_id, config), record):
        site = rel.site if isinstance(rel.site, str) else repr(rel.site)
        try:
            problem = _accept(rel, config, registry, run_dir, record, {r.site for r in accepted})
        except Exception as err:  # noqa: BLE001 - whatever a reply holds, it costs only its own site
            problem = f"the release could not be checked: {type(err).__name__}: {err}"
        if problem:
            log.warning("release from %s rejected: %s", site, problem)
            record.fail(site, "release-check", problem)
        else:
            accepted.append(rel)
    accepted.sort(key=lambda r: r.site)
    require_sites(len(accepted), config, "a usable release", record.failures)
    record.mark("release")
    phantom = any(c.phantom for c in record.contributions)

    # 2. pool and train the classifier on synthetic images only
    images = from_uint8(np.concatenate([r.images for r in accepted]))
    labels = np.concatenate([r.labels for r in accepted]).astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise FederationError("the pooled releases contain only one class; no classifier can be trained")
    _synthetic_grids(accepted, run_dir, config, phantom)
    for rel in accepted:
        run_dir.save_release(rel.site, rel.images, rel.labels, phantom)
    # the sites judge what the classifier trained on: the released images (which they can check
    # against the signed releases) and the intensity mapping applied to them, if any
    synthetic = {r.site: (r.images, r.labels) for r in accepted}
    provenance = {r.site: {"entry": r.meta["ledger"][-1], "digests": image_digests(r.images)} for r in accepted}
    mapping = None
    if config.alignment.enabled:
        images, record.extra["alignment"], mapping = _align(images, labels, accepted, config)
    clf = train_on_pool(config, images, labels, "synthetic", phantom, [r.site for r in accepted], run_dir,
                        record, progress)
    return evaluate_and_report(config, transport, run_dir, clf, record, synthetic=synthetic, registry=registry,
                               provenance=provenance, alignment=mapping)


def _accept(rel: Release, config: RunConfig, registry: dict[str, Path], run_dir: RunDir, record: RunRecord,
            seen: set[str]) -> str | None:
    """Why a release cannot be pooled, or None after recording its contribution and filing its
    ledger (only then: a rejected reply never replaces the stored copy of an accepted one)."""
    if not isinstance(rel.site, str) or not rel.site:
        return "the release names no site"
    if rel.site in seen:
        return "a second release from the same site"
    problem = verify_release(rel, config, registry, run_dir.run_id)
    if problem:
        return problem
    private, privacy = signed_privacy(rel.meta["ledger"])  # from the verified, signed ledger
    info = public_info(rel.meta)
    record.contributions.append(Contribution(rel.site, "release", {**info, "n_released": len(rel.labels)}, private,
                                             checked_privacy(privacy), info.get("phantom") is True))
    file_ledger(run_dir, rel.site, rel.meta["ledger"], registry)
    return None


def _align(images: np.ndarray, labels: np.ndarray, releases: list[Release],
           config: RunConfig) -> tuple[np.ndarray, dict, dict | None]:
    """Match the pooled synthetic intensities to the sites' pooled real histograms (class by
    class with ``alignment.by_class``): (aligned images, what metrics.json says, the mapping
    the sites apply to the sample they evaluate, or None when nothing was aligned)."""
    al = config.alignment
    shape = (2, al.bins) if al.by_class else (al.bins,)
    hists = {r.site: np.asarray(r.meta["intensity_histogram"], dtype=np.float64) for r in releases
             if r.meta.get("intensity_histogram") is not None}
    bad = [s for s, h in hists.items() if h.shape != shape or not np.isfinite(h).all() or (np.abs(h) > 1e12).any()]
    for site in bad:
        log.warning("alignment: %s's histogram is malformed (expected shape %s); not used", site, shape)
        hists.pop(site)
    if not hists:
        return images, {"applied": False, "reason": "no site released a usable intensity histogram"}, None
    info: dict[str, Any] = {"applied": True, "bins": al.bins, "by_class": al.by_class, "sites": sorted(hists),
                            "epsilon_per_site": al.epsilon if config.privacy is not None else None}
    if al.by_class:
        cdfs, skipped = {}, []
        for c in (0, 1):
            try:
                cdfs[c] = reference_cdf([h[c] for h in hists.values()])
            except ValueError:  # no site had images of this class: leave it as generated
                skipped.append(CLASS_NAMES[c])
        aligned = match_by_class(images, labels, cdfs)
        mapping = {"by_class": True, "cdfs": {str(c): cdf.tolist() for c, cdf in cdfs.items()}}
        if skipped:
            info["classes_not_aligned"] = skipped
    else:
        cdf = reference_cdf(list(hists.values()))
        aligned = match_histograms(images, cdf)
        mapping = {"by_class": False, "cdf": cdf.tolist()}
    info.update(mean_intensity_before=float(images.mean()), mean_intensity_after=float(aligned.mean()))
    return aligned, info, mapping


def _synthetic_grids(releases: list[Release], run_dir: RunDir, config: RunConfig, phantom: bool) -> None:
    k = config.evaluation.grid_images
    for rel in releases:
        rows = [
            (f"synthetic {name}", from_uint8(rel.images[rel.labels == c][:k]))
            for c, name in enumerate(config.data.label_set)
            if (rel.labels == c).any()
        ]
        image_grid(rows, run_dir.grid_path(rel.site), f"{rel.site}: released synthetic images", phantom=phantom)
