"""What the server checks in a site's reply before using it: one place for every check.

Each ``check_*`` returns why a reply cannot be used, or None. A reply that fails is
dropped with that reason; the run goes on with the others. A site's ledger copy is filed
in the run directory only for a registered site name (a name from the wire never becomes
a path otherwise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError
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
    if not np.isin(labels, (0, 1)).all():
        return f"labels must be 0 or 1, found {sorted(set(np.unique(labels).tolist()) - {0, 1})}"
    limit = 2 * config.release.n_per_class
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
