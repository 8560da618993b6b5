"""The site's privacy ledger: append-only, hash-chained, Ed25519-signed JSON lines.

Every DP training and every release is one line. Each entry carries the hash of the
previous one (the first carries 64 zeros), its own SHA-256 over its canonical JSON, and
the site's signature over that hash. So a changed byte, a deleted or reordered entry,
or an entry signed by another key is visible to anyone holding the site's public key.

Writes are crash-safe: one ``write`` of a whole line under an exclusive lock, then
``fsync``. The file is never rewritten. A torn last line (a crash mid-write) is
detected and reported, never silently dropped; the ledger refuses further appends
until a person has looked at it.

Epsilon in an entry is what the accountant computed from the entry's own mechanism;
:func:`verify_ledger` recomputes it from the mechanism and flags any difference.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsynth import __version__
from fedsynth.errors import FedsynthError
from fedsynth.privacy.accounting import Mechanism, epsilon, same_epsilon
from fedsynth.privacy.keys import key_id, sign, verify

GENESIS = "0" * 64
DP_TRAINING = "dp-training"
TRAINING = "training"  # not private: recorded so the officer sees it
RELEASE = "release"
DP_STATISTIC = "dp-statistic"  # a noisy statistic of the real images (the alignment histogram)
ENTRY_TYPES = (DP_TRAINING, TRAINING, RELEASE, DP_STATISTIC)


class LedgerError(FedsynthError):
    """The ledger is damaged or cannot be appended to."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(canonical(body)).hexdigest()


def software_version() -> str:
    import opacus
    import torch

    return f"fedsynth {__version__}; opacus {opacus.__version__}; torch {torch.__version__}"


@dataclass
class LedgerRead:
    entries: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    torn_last_line: bool = False


def read_ledger(path: str | Path) -> LedgerRead:
    """Parse a ledger file; damaged lines become problems, never exceptions."""
    path = Path(path)
    out = LedgerRead()
    if not path.exists():
        return out
    raw = path.read_bytes()
    if not raw:
        return out
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # after the last newline: empty, or a torn write
    for number, line in enumerate(complete, start=1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as err:
            out.problems.append(f"line {number}: not a valid entry ({err})")
            continue
        out.entries.append(entry)
    if tail:
        out.torn_last_line = True
        out.problems.append(
            f"line {len(complete) + 1}: torn last line ({len(tail)} bytes without a newline): a write was "
            "interrupted; the entry it held is not valid and the ledger refuses appends until it is inspected"
        )
    return out


class Ledger:
    """Append-only ledger at ``path`` for one site, signed with that site's key."""

    def __init__(self, path: str | Path, site: str):
        self.path = Path(path)
        self.site = site

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """The entries, or LedgerError if any line is damaged."""
        read = read_ledger(self.path)
        if read.problems:
            raise LedgerError(f"ledger {self.path} is damaged: " + "; ".join(read.problems))
        return read.entries

    def append(self, body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
        """Sign and append one entry; returns it as written."""
        if body.get("type") not in ENTRY_TYPES:
            raise LedgerError(f"unknown ledger entry type {body.get('type')!r}")
        with self._locked() as fd:
            read = read_ledger(self.path)
            if read.problems:
                raise LedgerError(
                    f"ledger {self.path} is damaged, so nothing more is written to it: " + "; ".join(read.problems)
                )
            prev = read.entries[-1]["hash"] if read.entries else GENESIS
            entry = {
                **body,
                "index": len(read.entries),
                "site": self.site,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "software": software_version(),
                "key_id": key_id(key.public_key()),
                "prev_hash": prev,
            }
            entry["hash"] = entry_hash(entry)
            entry["signature"] = sign(key, entry["hash"].encode())
            line = canonical(entry) + b"\n"
            os.write(fd, line)
            os.fsync(fd)
        return entry


# ---- verification -------------------------------------------------------------------------


@dataclass
class EntryCheck:
    index: int
    type: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    stored_epsilon: float | None = None
    recomputed_epsilon: float | None = None


@dataclass
class Verification:
    path: str
    checks: list[EntryCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # file-level (torn line, unparsable line)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        out = list(self.problems)
        for c in self.checks:
            out += [f"entry {c.index} ({c.type}): {p}" for p in c.problems]
        return out


def mechanism_of(entry: dict[str, Any]) -> Mechanism | None:
    mech = entry.get("mechanism")
    if not mech:
        return None
    return Mechanism(float(mech["noise_multiplier"]), float(mech["sample_rate"]), int(mech["steps"]))


def dp_mechanisms(entries: list[dict[str, Any]]) -> list[Mechanism]:
    return [m for m in (mechanism_of(e) for e in entries) if m is not None]


def _recompute(entry: dict[str, Any], before: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(stored, recomputed) epsilon of an entry, from its mechanism or its composition."""
    mech = mechanism_of(entry)
    if mech is not None:
        m = entry["mechanism"]
        return entry.get("epsilon"), epsilon([mech], float(m["delta"]), str(m["accountant"]))
    spent = entry.get("spent")
    if spent:
        mechs = dp_mechanisms(before)
        value = epsilon(mechs, float(spent["delta"]), str(spent["accountant"])) if mechs else 0.0
        return spent.get("epsilon"), value
    return None, None


def verify_ledger(path: str | Path, public_key: Ed25519PublicKey) -> Verification:
    """Check lines, chain, hashes and signatures, and recompute every epsilon."""
    read = read_ledger(path)
    return verify_entries(read.entries, public_key, str(path), list(read.problems))


def verify_entries(
    entries: list[dict[str, Any]], public_key: Ed25519PublicKey, origin: str = "<entries>",
    problems: list[str] | None = None,
) -> Verification:
    """Same checks as :func:`verify_ledger` on already-parsed entries (e.g. sent with a release)."""
    result = Verification(origin, problems=list(problems or []))
    prev = GENESIS
    before: list[dict[str, Any]] = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            result.problems.append(f"entry {position} is not an object")
            break
        check = EntryCheck(index=int(entry.get("index", -1)), type=str(entry.get("type", "?")), ok=True)
        if entry.get("index") != position:
            check.problems.append(f"index {entry.get('index')} where {position} was expected (an entry is missing)")
        if entry.get("prev_hash") != prev:
            check.problems.append("chain broken: prev_hash does not match the previous entry's hash")
        recomputed_hash = entry_hash(entry)
        if entry.get("hash") != recomputed_hash:
            check.problems.append("content changed: the entry's hash does not match its content")
        if not verify(public_key, str(entry.get("hash", "")).encode(), str(entry.get("signature", ""))):
            check.problems.append("signature invalid for this public key")
        try:
            stored, recomputed = _recompute(entry, before)
        except (KeyError, TypeError, ValueError) as err:
            stored = recomputed = None
            check.problems.append(f"mechanism unreadable: {err}")
        check.stored_epsilon, check.recomputed_epsilon = stored, recomputed
        if recomputed is not None and (stored is None or not same_epsilon(float(stored), recomputed)):
            check.problems.append(f"stored epsilon {stored} differs from the accountant's {recomputed:.6g}")
        check.ok = not check.problems
        result.checks.append(check)
        prev = str(entry.get("hash"))
        before.append(entry)
    return result


def spent_epsilon(entries: list[dict[str, Any]], delta: float, accountant: str) -> float:
    """Composed epsilon of every DP mechanism in ``entries`` at ``delta``."""
    mechs = dp_mechanisms(entries)
    return epsilon(mechs, delta, accountant) if mechs else 0.0


def non_private(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trainings without DP in the ledger. Whatever data they used (a different split or
    resolution of the same patients has another fingerprint), their outputs void any DP
    guarantee for those patients, so a site's ledger with one gives no more DP."""
    return [e for e in entries if e.get("type") == TRAINING]
