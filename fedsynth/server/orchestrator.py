"""The federation, server side: plain Python, independent of how messages travel.

``run_substitution`` asks every site for a synthetic release, checks and pools what
comes back, trains the classifier on synthetic images only, has every site evaluate it
on its local real test split and writes the run's outputs. A site that fails or does
not answer is recorded with its reason and the run goes on without it, as long as
``federation.min_sites`` sites remain.

How requests reach the sites is a :class:`Transport`: Flower's Grid in the ServerApp,
or direct calls in tests (:class:`LocalTransport`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import BinaryMetrics, pooled_metrics, uniform_edges
from fedsynth.classifier.train import Classifier, train_classifier
from fedsynth.client.site import Site
from fedsynth.config import RunConfig
from fedsynth.data.dataset import CLASS_NAMES, from_uint8, to_uint8
from fedsynth.errors import FederationError
from fedsynth.evaluation.alignment import match_by_class, match_histograms, reference_cdf
from fedsynth.evaluation.grids import image_grid
from fedsynth.evaluation.report import write_report
from fedsynth.generators.base import ProgressFn
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import canonical
from fedsynth.privacy.release import check_signed_release, signed_privacy
from fedsynth.protocol import (
    EvalResult,
    EvaluateRequest,
    Release,
    TrainRequest,
    content_bytes,
    encode_eval_result,
    encode_release,
)
from fedsynth.server.rundir import CLASSIFIER_FILE, METRICS_FILE, RunDir, write_json

log = logging.getLogger("fedsynth.server")

PHANTOM_WARNING = (
    "PHANTOM DATA: these results come from procedurally generated phantoms, not X-rays; "
    "they show the pipeline works, not that the classifier does."
)
NOT_PRIVATE_WARNING = "NOT PRIVATE: no site trained with differential privacy in this run."
PARTLY_PRIVATE_WARNING = "NOT PRIVATE at every site: these releases were trained without DP: {sites}."


ProgressFactory = Callable[[str, int], AbstractContextManager[ProgressFn | None]]


@contextlib.contextmanager
def no_progress(description: str, total: int) -> Iterator[None]:
    yield None


@dataclass
class SiteFailure:
    site: str
    stage: str
    reason: str


class Transport(Protocol):
    def release(self, request: TrainRequest) -> tuple[list[Release], list[SiteFailure]]: ...

    def evaluate(self, request: EvaluateRequest) -> tuple[list[EvalResult], list[SiteFailure]]: ...


class LocalTransport:
    """Calls :class:`Site` objects directly: the federation without Flower (tests, debugging)."""

    def __init__(self, sites: list[Site]):
        self.sites = sites
        self.bytes_sent: dict[str, int] = {}  # what each site would have put on the wire

    def _count(self, site: str, content) -> None:
        self.bytes_sent[site] = self.bytes_sent.get(site, 0) + content_bytes(content)

    def release(self, request: TrainRequest) -> tuple[list[Release], list[SiteFailure]]:
        ok, failed = [], []
        for site in self.sites:
            try:
                ok.append(site.release(request.config, request.run_id))
                self._count(site.name, encode_release(ok[-1]))
            except Exception as err:  # a failing site must not sink the run
                log.debug("site %s failed:\n%s", site.name, traceback.format_exc())
                failed.append(SiteFailure(site.name, "release", f"{type(err).__name__}: {err}"))
        return ok, failed

    def evaluate(self, request: EvaluateRequest) -> tuple[list[EvalResult], list[SiteFailure]]:
        clf = Classifier.from_state(request.classifier_header, request.classifier_state)
        ok, failed = [], []
        for site in self.sites:
            try:
                ok.append(site.evaluate(clf, request.config, request))
                self._count(site.name, encode_eval_result(ok[-1]))
            except Exception as err:
                failed.append(SiteFailure(site.name, "evaluate", f"{type(err).__name__}: {err}"))
        return ok, failed


def check_release(rel: Release, config: RunConfig) -> str | None:
    """Why a release cannot be pooled, or None when it can."""
    s = config.data.resolution
    imgs, labels = rel.images, rel.labels
    if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8:
        return f"images must be uint8, got {getattr(imgs, 'dtype', type(imgs).__name__)}"
    if imgs.ndim != 3 or imgs.shape[1:] != (s, s):
        return f"images must have shape (n, {s}, {s}), got {imgs.shape}"
    if labels.shape != (imgs.shape[0],):
        return f"labels must have shape ({imgs.shape[0]},), got {labels.shape}"
    if imgs.shape[0] == 0:
        return "empty release"
    if not np.isin(labels, (0, 1)).all():
        return f"labels must be 0 or 1, found {sorted(set(np.unique(labels).tolist()) - {0, 1})}"
    limit = 2 * config.release.n_per_class
    if imgs.shape[0] > limit:
        return f"{imgs.shape[0]} images exceed the requested {limit}"
    return None


def check_eval_result(res: EvalResult, n_bins: int, extra_bins: int) -> str | None:
    """Why an evaluation reply cannot be pooled, or None."""
    m = res.metrics
    missing = [k for k in ("n", "tp", "fp", "tn", "fn") if not isinstance(m.get(k), int)]
    if missing:
        return f"metrics lack {', '.join(missing)}"
    for name, h, bins in [("main", res.histogram, n_bins),
                          *((k, v, extra_bins) for k, v in res.extra_histograms.items())]:
        if len(h.positive) != bins:
            return f"{name} histogram has {len(h.positive)} bins, expected {bins}"
        if name == "main" and int(h.positive.sum() + h.negative.sum()) != m["n"]:
            return f"histogram counts {int(h.positive.sum() + h.negative.sum())} do not add up to n={m['n']}"
    if m["tp"] + m["fp"] + m["tn"] + m["fn"] != m["n"]:
        return "confusion counts do not add up to n"
    return None


def require_sites(n_ok: int, config: RunConfig, stage: str, failures: list[SiteFailure]) -> None:
    if n_ok < config.federation.min_sites:
        reasons = "; ".join(f"{f.site}: {f.reason}" for f in failures) or "no site answered"
        raise FederationError(
            f"only {n_ok} site(s) completed {stage}, fewer than federation.min_sites="
            f"{config.federation.min_sites}. {reasons}"
        )


def verify_release(rel: Release, config: RunConfig, registry: dict[str, Path], run_id: str | None = None) -> str | None:
    """Shape checks, then signature, chain, epsilon, budget and run checks; None when acceptable."""
    problem = check_release(rel, config)
    if problem:
        return problem
    key_path = registry.get(rel.site)
    key = load_public_key(key_path) if key_path is not None else None
    required = config.privacy.epsilon if config.privacy is not None else None
    return check_signed_release(rel.site, rel.images, rel.labels, rel.meta.get("ledger"), key, required, run_id)


def keep_ledger(site: str, ledger: list[dict], run_dir: RunDir, registry: dict[str, Path]) -> None:
    """Copy the site's ledger (as received, byte for byte) and its registered public key
    into the run directory, for ``fedsynth audit verify``."""
    if site not in registry:  # only registered sites; a name from the wire never becomes a path otherwise
        return
    ledgers = run_dir.path / "ledgers"
    ledgers.mkdir(exist_ok=True)
    (ledgers / f"{site}.jsonl").write_bytes(b"".join(canonical(e) + b"\n" for e in ledger))
    shutil.copyfile(registry[site], ledgers / f"{site}.pub")


@dataclass
class Contribution:
    """What one site contributed to training, as the run's outputs report it."""

    site: str
    key: str  # "release" (synthetic images) or "training" (federated rounds)
    info: dict
    private: bool
    privacy: dict
    phantom: bool


def run_substitution(
    config: RunConfig,
    transport: Transport,
    run_dir: RunDir,
    registry: dict[str, Path],
    progress: ProgressFactory = no_progress,
) -> dict:
    """Run one data-substitution round end to end; returns (and writes) metrics.json.

    ``registry`` maps each site's name to the public key the server trusts for it.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    failures: list[SiteFailure] = []

    # 1. sites train generators and release synthetic images
    log.info("asking sites for synthetic releases")
    releases, failed = transport.release(TrainRequest(run_dir.run_id, config, str(run_dir.path)))
    failures += failed
    accepted: list[Release] = []
    for rel in releases:
        problem = verify_release(rel, config, registry, run_dir.run_id)
        if isinstance(rel.meta.get("ledger"), list) and rel.meta["ledger"]:
            keep_ledger(rel.site, rel.meta["ledger"], run_dir, registry)
        if problem:
            log.warning("release from %s rejected: %s", rel.site, problem)
            failures.append(SiteFailure(rel.site, "release-check", problem))
        else:
            accepted.append(rel)
    accepted.sort(key=lambda r: r.site)
    require_sites(len(accepted), config, "a usable release", failures)
    timings["release_s"] = time.perf_counter() - t0
    phantom = any(r.meta.get("phantom") for r in accepted)

    # 2. pool and train the classifier on synthetic images only
    images = from_uint8(np.concatenate([r.images for r in accepted]))
    labels = np.concatenate([r.labels for r in accepted]).astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise FederationError("the pooled releases contain only one class; no classifier can be trained")
    _synthetic_grids(accepted, run_dir, config, phantom)
    for rel in accepted:
        save_release(run_dir, rel.site, rel.images, rel.labels, phantom)
    contributions = []
    for r in accepted:  # privacy figures from the verified, signed ledger, not the unsigned metadata
        private, privacy = signed_privacy(r.meta["ledger"])
        info = {k: v for k, v in r.meta.items() if k not in ("ledger", "privacy", "private")}
        contributions.append(Contribution(r.site, "release", {**info, "n_released": len(r.labels)}, private,
                                          privacy, bool(r.meta.get("phantom"))))
    extra: dict[str, Any] = {}
    synthetic = {r.site: (r.images, r.labels) for r in accepted}
    if config.alignment.enabled:
        images, extra["alignment"] = _align(images, labels, accepted, config)
        if extra["alignment"].get("applied"):
            # the sites judge what the classifier trained on: the aligned images, per origin
            ends = np.cumsum([len(r.labels) for r in accepted])
            synthetic = {r.site: (to_uint8(part), r.labels)
                         for r, part in zip(accepted, np.split(images, ends[:-1]))}
    clf = train_on_pool(config, images, labels, "synthetic", phantom, [r.site for r in accepted], run_dir,
                        timings, progress)
    return evaluate_and_report(config, transport, run_dir, clf, contributions, failures, timings, t0, extra,
                               synthetic=synthetic)


def _align(images: np.ndarray, labels: np.ndarray, releases: list[Release],
           config: RunConfig) -> tuple[np.ndarray, dict]:
    """Match the pooled synthetic intensities to the sites' pooled real histograms (class by
    class with ``alignment.by_class``)."""
    al = config.alignment
    shape = (2, al.bins) if al.by_class else (al.bins,)
    hists = {r.site: np.asarray(r.meta["intensity_histogram"], dtype=np.float64) for r in releases
             if r.meta.get("intensity_histogram") is not None}
    bad = [s for s, h in hists.items() if h.shape != shape or not np.isfinite(h).all()]
    for site in bad:
        log.warning("alignment: %s's histogram is malformed (expected shape %s); not used", site, shape)
        hists.pop(site)
    if not hists:
        return images, {"applied": False, "reason": "no site released a usable intensity histogram"}
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
        if skipped:
            info["classes_not_aligned"] = skipped
    else:
        aligned = match_histograms(images, reference_cdf(list(hists.values())))
    info.update(mean_intensity_before=float(images.mean()), mean_intensity_after=float(aligned.mean()))
    return aligned, info


def train_on_pool(
    config: RunConfig,
    images: np.ndarray,
    labels: np.ndarray,
    kind: str,
    phantom: bool,
    sites: list[str],
    run_dir: RunDir,
    timings: dict[str, float],
    progress: ProgressFactory,
) -> Classifier:
    """Train and save the classifier on pooled images (synthetic, or real in centralized-real)."""
    t1 = time.perf_counter()
    log.info("training the classifier on %d pooled %s images", len(labels), kind)
    with progress(f"classifier on pooled {kind} images", config.classifier.epochs) as on_epoch:
        clf = train_classifier(
            images,
            labels,
            config.classifier,
            arch=config.classifier_arch(),
            resolution=config.data.resolution,
            seed=config.run.seed,
            device=config.run.device,
            progress=on_epoch,
            trained_on=f"{kind} (phantom)" if phantom else kind,
            histogram_bins=config.evaluation.histogram_bins,
        )
    clf.meta["sites"] = sites
    clf.meta["phantom"] = phantom
    clf.save(run_dir.file(CLASSIFIER_FILE))
    timings["classifier_s"] = time.perf_counter() - t1
    return clf


def evaluate_and_report(
    config: RunConfig,
    transport: Transport,
    run_dir: RunDir,
    clf: Classifier,
    contributions: list[Contribution],
    failures: list[SiteFailure],
    timings: dict[str, float],
    t0: float,
    extra: dict | None = None,
    warnings: list[str] | None = None,
    synthetic: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """Every site evaluates ``clf`` on its real test split (and, given the pooled
    ``synthetic`` images by origin, measures fidelity and its own utility baselines);
    pool, write metrics.json and the score histograms behind the curves."""
    t2 = time.perf_counter()
    request = EvaluateRequest(run_dir.run_id, config, clf.header(), clf.state_dict(), str(run_dir.path))
    if synthetic and (config.evaluation.fidelity or config.evaluation.site_baselines):
        request.origin_names = sorted(synthetic)
        request.synthetic_images, request.synthetic_labels, request.synthetic_origin = _synthetic_sample(
            synthetic, request.origin_names, config.evaluation.fidelity_samples, config.run.seed)
    results, failed = transport.evaluate(request)
    failures = failures + failed
    valid, seen = [], set()
    for r in sorted(results, key=lambda r: r.site):
        problem = check_eval_result(r, len(clf.score_edges(config.evaluation.histogram_bins)) - 1,
                                    config.evaluation.histogram_bins)
        if problem is None and r.site in seen:
            problem = "a second evaluation from the same site"
        if problem:
            log.warning("evaluation from %s rejected: %s", r.site, problem)
            failures.append(SiteFailure(r.site, "evaluation-check", problem))
        else:
            valid.append(r)
            seen.add(r.site)
    results = valid
    require_sites(len(results), config, "an evaluation", failures)
    timings["evaluate_s"] = time.perf_counter() - t2
    pooled = _pool(results, lambda r: (r.histogram, r.metrics), clf.threshold, config)
    timings["total_s"] = time.perf_counter() - t0
    metrics = _metrics_document(config, run_dir, contributions, results, pooled, clf, failures, timings,
                                getattr(transport, "bytes_sent", {}))
    metrics["utility"] = _utility(results, pooled, config)
    metrics["fidelity"] = _fidelity(results)
    metrics.update(extra or {})
    metrics["warnings"] = list(warnings or []) + metrics["warnings"]
    histograms: dict[str, Any] = {
        name: {r.site: {"positive": h.positive.tolist(), "negative": h.negative.tolist()}
               for r in results for h in [r.histogram if name == "main" else r.extra_histograms.get(name)] if h}
        for name in ("main", "trtr", "real_plus_synthetic")
    }
    bins = config.evaluation.histogram_bins
    histograms["edges"] = {"main": clf.score_edges(bins).tolist(), "trtr": uniform_edges(bins).tolist(),
                           "real_plus_synthetic": uniform_edges(bins).tolist()}
    write_json(run_dir.file(HISTOGRAMS_FILE), histograms)
    write_json(run_dir.file(METRICS_FILE), metrics)
    write_report(run_dir.path)  # report.html; a part it cannot build is logged and noted on the page
    return metrics


HISTOGRAMS_FILE = "histograms.json"


def _synthetic_sample(synthetic: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], n: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` pooled synthetic images, drawn evenly from every origin."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(names))
    imgs, labels, origin = [], [], []
    for i, name in enumerate(names):
        x, y = synthetic[name]
        pick = rng.permutation(len(y))[:per]
        imgs.append(x[pick])
        labels.append(y[pick])
        origin.append(np.full(len(pick), i, dtype=np.uint8))
    return np.concatenate(imgs), np.concatenate(labels).astype(np.uint8), np.concatenate(origin)


def _pool(results: list[EvalResult], pick, threshold: float, config: RunConfig) -> BinaryMetrics | None:
    pairs = [pick(r) for r in results]
    pairs = [(h, m) for h, m in pairs if h is not None and m is not None]
    if not pairs:
        return None
    ev = config.evaluation
    return pooled_metrics([h for h, _ in pairs], [(m["tp"], m["fp"], m["tn"], m["fn"]) for _, m in pairs], threshold,
                          n_boot=ev.bootstrap, level=ev.ci_level, seed=config.run.seed)


def _utility(results: list[EvalResult], pooled: BinaryMetrics | None, config: RunConfig) -> dict:
    """Train-synthetic-test-real against the sites' own train-real-test-real and
    real-plus-synthetic classifiers, per site and pooled (the pooled baselines combine
    each site's own model on its own test split)."""
    out: dict[str, Any] = {"tstr": {"pooled": pooled.to_dict() if pooled else None,
                                    "sites": {r.site: r.metrics for r in results}}}
    for name in ("trtr", "real_plus_synthetic"):
        sites = {r.site: r.extra["utility"][name] for r in results if name in r.extra.get("utility", {})}
        if not sites:
            continue
        p = _pool([r for r in results if r.site in sites],
                  lambda r, n=name: (r.extra_histograms.get(n), r.extra["utility"][n]),
                  float("nan"), config)
        out[name] = {"pooled": p.to_dict() if p else None, "sites": sites}
    return out


def _fidelity(results: list[EvalResult]) -> dict:
    """Per site; pooled = the pooled sample's figures averaged over sites, weighted by their real images."""
    sites = {r.site: r.extra["fidelity"] for r in results if "fidelity" in r.extra}
    if not sites:
        return {}
    rows = [f["pooled"] for f in sites.values()]
    weights = np.array([f["n_real"] for f in rows], dtype=float)
    pooled = {k: float(np.average([f[k] for f in rows], weights=weights))
              for k in ("frechet_distance", "precision", "recall", "density", "coverage")}
    pooled["encoder"] = "each site's own (" + rows[0]["encoder"].split(" (")[0] + ")"
    return {"pooled": pooled, "sites": sites}


RELEASES_DIR = "releases"


def save_release(run_dir: RunDir, name: str, images_u8: np.ndarray, labels: np.ndarray, phantom: bool) -> Path:
    """Keep what the sites released: releases/<name>.npz (uint8 images, labels), the
    content their signatures cover (with alignment on, the classifier trained on these
    after the intensity mapping recorded in metrics.json). Synthetic images only; real
    images never reach the server."""
    out = run_dir.path / RELEASES_DIR
    out.mkdir(exist_ok=True)
    path = out / f"{name}.npz"
    np.savez_compressed(path, images=images_u8, labels=labels.astype(np.uint8), synthetic=np.array(True),
                        phantom=np.array(phantom))
    return path


def load_releases(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The synthetic images a run pooled, by site (or "global" for the federated generator)."""
    out = {}
    for path in sorted((Path(run_dir) / RELEASES_DIR).glob("*.npz")):
        with np.load(path) as z:
            out[path.stem] = (z["images"], z["labels"].astype(np.int64))
    return out


def _synthetic_grids(releases: list[Release], run_dir: RunDir, config: RunConfig, phantom: bool) -> None:
    k = config.evaluation.grid_images
    for rel in releases:
        rows = [
            (f"synthetic {name}", from_uint8(rel.images[rel.labels == c][:k]))
            for c, name in enumerate(CLASS_NAMES)
            if (rel.labels == c).any()
        ]
        image_grid(rows, run_dir.file(f"grids/synthetic_{rel.site}.png"), f"{rel.site}: released synthetic images",
                   phantom=phantom)


def _metrics_document(
    config: RunConfig,
    run_dir: RunDir,
    contributions: list[Contribution],
    results: list[EvalResult],
    pooled: BinaryMetrics | None,
    clf: Classifier,
    failures: list[SiteFailure],
    timings: dict[str, float],
    bytes_sent: dict[str, int],
) -> dict:
    sites: dict[str, dict] = {}
    for c in contributions:
        sites[c.site] = {"status": "ok", c.key: c.info}
    for res in results:
        sites.setdefault(res.site, {"status": "ok"})["evaluation"] = res.metrics
    for f in failures:
        entry = sites.setdefault(f.site, {})
        entry["status"] = "failed"
        entry.setdefault("failures", []).append(asdict(f))
    for name, n in bytes_sent.items():
        sites.setdefault(name, {"status": "failed"})["bytes_sent"] = int(n)
    phantom = any(c.phantom for c in contributions)
    warnings = []
    if phantom:
        warnings.append(PHANTOM_WARNING)
    not_private = [c.site for c in contributions if not c.private]
    if len(not_private) == len(contributions):
        warnings.append(NOT_PRIVATE_WARNING)
    elif not_private:
        warnings.append(PARTLY_PRIVATE_WARNING.format(sites=", ".join(not_private)))
    if failures:
        warnings.append("sites dropped or failed: " + ", ".join(sorted({f.site for f in failures})))
    return {
        "run_id": run_dir.run_id,
        "mode": config.run.mode,
        "fedsynth_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"source": config.data.source, "resolution": config.data.resolution, "phantom": phantom},
        "private": bool(contributions) and not not_private,
        "privacy": {
            "requested": config.privacy.model_dump() if config.privacy else None,
            "sites": {c.site: c.privacy for c in contributions},
        },
        "warnings": warnings,
        "sites": dict(sorted(sites.items())),
        "pooled": pooled.to_dict() if pooled else None,
        "classifier": {k: v for k, v in clf.header().items() if k != "history"},
        "failures": [asdict(f) for f in failures],
        "timings": timings,
    }
