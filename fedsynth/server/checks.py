"""What the server checks in a site's reply before using it: one place for every check.

Each ``check_*`` returns why a reply cannot be used, or None. A reply that fails is
dropped with that reason; the run goes on with the others. A site's ledger copy is filed
in the run directory only for a registered site name (a name from the wire never becomes
a path otherwise).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedsynth.classifier.metrics import ScoreHistogram
from fedsynth.classifier.multiclass import check_class_block
from fedsynth.config import BINARY_LABELS, RunConfig
from fedsynth.errors import FederationError
from fedsynth.metrics_schema import BaselineFigures, Figures, SitePrivacy
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import canonical
from fedsynth.privacy.release import arrays_hash, check_signed, check_signed_release
from fedsynth.protocol import EvalResult, ModelUpdate, Release
from fedsynth.rundir import RunDir
from fedsynth.server.record import SiteFailure


def check_release(rel: Release, config: RunConfig) -> str | None:
    """Why a release's arrays cannot be pooled, or None when they can."""
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
    classes = config.data.label_set
    declared = rel.meta.get("label_set", list(BINARY_LABELS)) if isinstance(rel.meta, dict) else None
    if declared != list(classes):  # a release from before label sets was labelled normal / pneumonia
        return f"the release is labelled with the label set {str(declared)[:120]}; this run's is {list(classes)}"
    if not np.isin(labels, np.arange(len(classes))).all():
        bad = sorted(set(np.unique(labels).tolist()) - set(range(len(classes))))[:5]
        return f"labels must be class indices 0..{len(classes) - 1} of {list(classes)}, found {bad}"
    limit = len(classes) * config.release.n_per_class
    if imgs.shape[0] > limit:
        return f"{imgs.shape[0]} images exceed the requested {limit}"
    return None


def verify_release(rel: Release, config: RunConfig, registry: dict[str, Path], run_id: str | None = None) -> str | None:
    """Shape checks, then signature, chain, epsilon, budget and run checks; None when acceptable."""
    problem = check_release(rel, config)
    if problem:
        return problem
    key_path = registry.get(rel.site)
    key = load_public_key(key_path) if key_path is not None else None
    required = config.privacy.epsilon if config.privacy is not None else None
    return check_signed_release(rel.site, rel.images, rel.labels, rel.meta.get("ledger"), key, required, run_id)


RATES = ("auroc", "aupr", "sensitivity", "specificity")
BASELINE_NAMES = ("trtr", "real_plus_synthetic")
FIDELITY_KEYS = ("frechet_distance", "precision", "recall", "density", "coverage")


def _figures_problem(d: Any, what: str, model: type[Figures] = Figures) -> str | None:
    """Why ``d`` is not a consistent set of test-split figures, or None: every count a
    non-negative integer, the confusion counts adding up to the class counts, every rate and
    interval bound in [0, 1], the threshold finite."""
    if not isinstance(d, dict):
        return f"{what} must be an object"
    counts = ("n", "n_positive", "n_negative", "tp", "fp", "tn", "fn")
    bad = [k for k in counts if not (isinstance(d.get(k), int) and not isinstance(d.get(k), bool) and d[k] >= 0)]
    if bad:
        return f"{what} lack non-negative integer {', '.join(bad)}"
    try:
        f = model.model_validate(d)
    except ValidationError as err:
        e = err.errors()[0]
        return f"{what}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
    if f.n != f.n_positive + f.n_negative:
        return f"{what}: n={f.n} does not add up to n_positive + n_negative"
    if f.tp + f.fn != f.n_positive or f.fp + f.tn != f.n_negative:
        return f"{what}: the confusion counts do not add up to the class counts"
    for k in RATES:
        for v in (getattr(f, k), *getattr(f, f"{k}_ci")):
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                return f"{what}.{k} {v!r} is outside [0, 1]"
    if f.threshold is not None and not math.isfinite(f.threshold):
        return f"{what}.threshold is not finite"
    if not 0 < f.ci_level < 1:
        return f"{what}.ci_level must be in (0, 1)"
    return None


def _histogram_problem(h: ScoreHistogram, bins: int, figures: dict, what: str) -> str | None:
    if len(h.positive) != bins:
        return f"{what} histogram has {len(h.positive)} bins, expected {bins}"
    if int(h.positive.sum()) != figures["n_positive"] or int(h.negative.sum()) != figures["n_negative"]:
        return (f"{what} histogram counts {int(h.positive.sum())}/{int(h.negative.sum())} do not add up to the "
                f"test split's n_positive={figures['n_positive']}, n_negative={figures['n_negative']}")
    return None


def _fidelity_problem(block: Any) -> str | None:
    if not isinstance(block, dict) or "pooled" not in block or set(block) - {"pooled", "own_release", "real_reference"}:
        return "fidelity must hold 'pooled' (and optionally 'own_release', 'real_reference') figures"
    for which, f in block.items():
        if not isinstance(f, dict):
            return f"fidelity.{which} must be an object"
        n_real, n_syn = f.get("n_real"), f.get("n_synthetic")
        if not (isinstance(n_real, int) and not isinstance(n_real, bool) and n_real > 0):
            return f"fidelity.{which}.n_real must be a positive integer"
        if not (isinstance(n_syn, int) and not isinstance(n_syn, bool) and n_syn >= 0):
            return f"fidelity.{which}.n_synthetic must be a non-negative integer"
        for k in FIDELITY_KEYS:
            v = f.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                return f"fidelity.{which}.{k} must be a finite, non-negative number"
        if not isinstance(f.get("encoder"), str):
            return f"fidelity.{which}.encoder must be a string"
    return None


def check_eval_result(res: EvalResult, n_bins: int, extra_bins: int,
                      classes: tuple[str, ...] | None = None) -> str | None:
    """Why an evaluation reply cannot be pooled, or None. Everything in it is checked: the
    figures (consistent counts, rates in [0, 1]), the histograms (bins, counts adding up to
    the class counts) and, when present, the fidelity and utility blocks and their histograms,
    and the subtype figures (only where the classifier predicts the finer label set ``classes``)."""
    problem = _figures_problem(res.metrics, "metrics")
    if problem:
        return problem
    problem = _histogram_problem(res.histogram, n_bins, res.metrics, "main")
    if problem:
        return problem
    extra = res.extra if isinstance(res.extra, dict) else None
    if extra is None or set(extra) - {"fidelity", "utility", "error"}:
        return "extra may hold only fidelity, utility and error"
    if "error" in extra and not isinstance(extra["error"], str):
        return "extra.error must be a string"
    if "fidelity" in extra and (problem := _fidelity_problem(extra["fidelity"])):
        return problem
    utility = extra.get("utility", {})
    if not isinstance(utility, dict) or set(utility) - set(BASELINE_NAMES):
        return f"utility may hold only {', '.join(BASELINE_NAMES)}"
    if set(res.extra_histograms) - set(utility):
        return "a baseline histogram came without its figures"
    for name, figures in utility.items():
        if problem := _figures_problem(figures, f"utility.{name}", BaselineFigures):
            return problem
        if name in res.extra_histograms and (
                problem := _histogram_problem(res.extra_histograms[name], extra_bins, figures, name)):
            return problem
    if res.subtype or res.class_histograms:
        if classes is None or not isinstance(res.subtype, dict) or set(res.subtype) != {"classes", "confusion"}:
            return "subtype figures that this run did not ask for, or not as {classes, confusion}"
        return check_class_block(res.subtype["classes"], res.subtype["confusion"], res.class_histograms, extra_bins,
                                 classes, res.metrics["n_negative"], res.metrics["n_positive"])
    return None


def check_update(upd: ModelUpdate, reference: dict[str, np.ndarray], config: RunConfig,
                 registry: dict[str, Path], run_id: str | None = None, round_no: int | None = None) -> str | None:
    """Why an update cannot be averaged, or None."""
    if set(upd.weights) != set(reference):
        return "the update's arrays do not match the global model's"
    for k, ref in reference.items():
        arr = upd.weights[k]
        if arr.size != ref.size or (arr.ndim and ref.ndim and arr.shape != ref.shape):
            return f"array {k} has shape {arr.shape}, expected {ref.shape}"
        if not np.isfinite(arr.astype(np.float64, copy=False)).all():
            return f"array {k} has non-finite values"
    return check_signed_update(upd, arrays_hash(upd.weights), config, registry, run_id, round_no)


def check_signed_update(upd: ModelUpdate, digest: str | None, config: RunConfig, registry: dict[str, Path],
                        run_id: str | None = None, round_no: int | None = None) -> str | None:
    """Why an update's signed ledger is unacceptable, or None. ``digest``: the hash of the
    arrays that arrived, or None under secure aggregation, where they exist only in the
    average (everything else is checked the same way)."""
    if upd.n_examples <= 0:
        return f"num-examples must be positive, got {upd.n_examples}"
    key_path = registry.get(upd.site)
    key = load_public_key(key_path) if key_path is not None else None
    required = config.privacy.epsilon if config.privacy is not None else None
    return check_signed(upd.site, digest, ("n_examples", upd.n_examples), upd.meta.get("ledger"), key, required,
                        run_id, round_no)


RELEASE_INFO_KEYS = ("site", "run_id", "fedsynth_version", "generator", "train_counts", "test_counts", "label_set",
                     "train_class_counts", "released_per_class", "withheld_classes", "phantom", "gate", "markers",
                     "membership_auc", "membership_audit", "seconds")
MAX_INFO_BYTES = 64 * 1024  # a release's statistics are a few kB; more is not a statistic


def public_info(meta: Any, keys: tuple[str, ...] = RELEASE_INFO_KEYS) -> dict[str, Any]:
    """The part of a reply's unsigned metadata the run's outputs may show: known keys only,
    JSON values only, bounded in size (ValueError otherwise)."""
    if not isinstance(meta, dict):
        raise ValueError("the reply's metadata must be an object")
    info = {k: meta[k] for k in keys if k in meta}
    text = json.dumps(info, allow_nan=False)
    if len(text) > MAX_INFO_BYTES:
        raise ValueError(f"the reply's statistics take {len(text)} bytes, over {MAX_INFO_BYTES}")
    for name in ("train_counts", "test_counts", "released_per_class"):
        counts = info.get(name)
        if counts is not None and not (isinstance(counts, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())):
            raise ValueError(f"{name} must map classes to non-negative integers")
    return json.loads(text)


def checked_privacy(figures: dict[str, Any]) -> dict[str, Any]:
    """A site's privacy figures (from its verified ledger) as the metrics schema holds them;
    ValueError when a signed value is still not a number where a number belongs."""
    try:
        return SitePrivacy.model_validate(figures).model_dump()
    except ValidationError as err:
        e = err.errors()[0]
        raise ValueError(f"privacy.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def file_ledger(run_dir: RunDir, site: str, ledger: object, registry: dict[str, Path]) -> None:
    """Copy a site's ledger (as received, canonical lines) and its registered public key into
    the run directory, for ``fedsynth audit verify``. Unregistered names are ignored."""
    if site not in registry or not isinstance(ledger, list) or not ledger:
        return
    run_dir.keep_ledger(site, b"".join(canonical(e) + b"\n" for e in ledger), registry[site])


def require_sites(n_ok: int, config: RunConfig, stage: str, failures: list[SiteFailure]) -> None:
    if n_ok < config.federation.min_sites:
        reasons = "; ".join(f"{f.site}: {f.reason}" for f in failures) or "no site answered"
        raise FederationError(
            f"only {n_ok} site(s) completed {stage}, fewer than federation.min_sites="
            f"{config.federation.min_sites}. {reasons}"
        )
