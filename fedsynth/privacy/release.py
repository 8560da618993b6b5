"""Signed releases: what a site attaches to its synthetic images, and what the server checks.

A release carries the site's whole ledger. Its last entry (type ``release``) names the
SHA-256 of the released images and labels, the training entry that produced them, the
gate's and the membership audit's results, the site's budget and what it has spent. The
server accepts the release only if, with the public key it has registered for the site,
the ledger verifies (chain, hashes, signatures, every epsilon recomputed), the content
hash matches what arrived, and the spending stays within the budget (and, when the run
asks for DP, the training was DP within the requested epsilon).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedsynth.privacy.ledger import DP_TRAINING, RELEASE, verify_entries

EPSILON_SLACK = 1e-6  # relative; the accountant's own calibration lands just under target


def content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    h.update(np.asarray(images.shape, dtype=np.int64).tobytes())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def image_digests(images: np.ndarray) -> list[str]:
    """One short SHA-256 digest per released image (uint8 pixels): what lets a site check that a
    synthetic sample it is asked to score against its real images came from a signed release."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    return [hashlib.sha256(img.tobytes()).hexdigest()[:32] for img in images]


def digests_hash(digests: list[str]) -> str:
    """The SHA-256 a release entry signs over its per-image digests, in release order."""
    return hashlib.sha256("".join(digests).encode("ascii")).hexdigest()


def arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over named arrays (a model update), independent of their order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + b"\0" + str(a.dtype).encode() + b"\0")
        h.update(np.asarray(a.shape, dtype=np.int64).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


def check_signed_release(
    site: str,
    images: np.ndarray,
    labels: np.ndarray,
    ledger: Any,
    public_key: Ed25519PublicKey | None,
    required_epsilon: float | None,
    run_id: str | None = None,
) -> str | None:
    """Why a release of synthetic images must be rejected, or None when it checks out."""
    return check_signed(site, content_hash(images, labels), ("n_images", len(labels)), ledger, public_key,
                        required_epsilon, run_id)


def check_signed(
    site: str,
    digest: str | None,
    count: tuple[str, int],
    ledger: Any,
    public_key: Ed25519PublicKey | None,
    required_epsilon: float | None,
    run_id: str | None = None,
    round_no: int | None = None,
) -> str | None:
    """Why a signed release (images, or a model update) must be rejected, or None.

    ``digest`` is the SHA-256 of what arrived, or None when the checker cannot see the
    content (an update under secure aggregation: only the average is visible); ``count`` names the signed size field and
    the size that arrived; ``run_id`` and ``round_no``, when given, must be the ones signed
    (an old release replayed into a new run is refused)."""
    if public_key is None:
        return f"unknown site {site!r}: no public key is registered for it"
    if not isinstance(ledger, list) or not ledger:
        return "unsigned release: no ledger attached"
    verification = verify_entries(ledger, public_key, "release ledger")
    if not verification.ok:
        return "ledger does not verify: " + "; ".join(verification.failures()[:3])
    last = ledger[-1]
    if last.get("type") != RELEASE:
        return "the ledger's last entry is not this release"
    if last.get("site") != site:
        return f"the signed release is from {last.get('site')!r}, not {site!r}"
    if run_id is not None and last.get("run_id") != run_id:
        return f"signed for run {last.get('run_id')!r}, not this run ({run_id!r}): a replayed release"
    if round_no is not None and last.get("round") != round_no:
        return f"signed for round {last.get('round')}, not round {round_no}"
    if digest is not None and last.get("content_hash") != digest:
        return "content does not match its signed hash (tampered in transit or by the sender)"
    field, n = count
    if int(last.get(field, -1)) != n:
        return f"signed entry says {field}={last.get(field)}, {n} arrived"
    training = next((e for e in ledger if e.get("hash") == last.get("training_entry")), None)
    if training is None:
        return "the training entry this release names is not in the ledger"
    spent, budget = last.get("spent") or {}, last.get("budget") or {}
    if required_epsilon is not None:
        if training.get("type") != DP_TRAINING:
            return "not trained with differential privacy, but this run requires DP"
        eps = float(training.get("epsilon", float("inf")))
        if eps > required_epsilon * (1 + EPSILON_SLACK) + 1e-9:
            return f"trained at epsilon {eps:.4g}, over the run's required {required_epsilon:g}"
        if not budget or spent.get("epsilon") is None:
            return "no budget statement in the signed release entry"
    if budget and spent.get("epsilon") is not None and float(spent["epsilon"]) > float(budget["epsilon"]) + 1e-9:
        return f"over budget: spent epsilon {float(spent['epsilon']):.4g} > budget {float(budget['epsilon']):g}"
    return None


def signed_privacy(ledger: list[dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """(private, figures) of a verified release, read from its signed ledger entries rather
    than from anything unsigned the site sent beside them."""
    last = ledger[-1]
    training = next((e for e in ledger if e.get("hash") == last.get("training_entry")), {})
    private = training.get("type") == DP_TRAINING
    mech = training.get("mechanism") or {}
    return private, {
        "epsilon": training.get("epsilon") if private else None,
        "delta": mech.get("delta") if private else None,
        "spent_epsilon": (last.get("spent") or {}).get("epsilon"),
        "budget": last.get("budget"),
        "gate": last.get("gate"),
        "membership_auc": last.get("membership_auc"),
        "membership_audit": last.get("membership_audit"),
        "ledger_entries": len(ledger),
    }
