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
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsynth import __version__
from fedsynth.errors import FedsynthError
from fedsynth.privacy.accounting import ACCOUNTANTS, Mechanism, epsilon, same_epsilon
from fedsynth.privacy.keys import key_id, sign, verify

GENESIS = "0" * 64
DP_TRAINING = "dp-training"
TRAINING = "training"  # not private: recorded so the officer sees it
RELEASE = "release"
DP_STATISTIC = "dp-statistic"  # a noisy statistic of the real images (the alignment histogram, noisy evaluations)
EVALUATION = "evaluation"  # figures of the server's classifier on the real test split, outside DP (recorded, metered)
ENTRY_TYPES = (DP_TRAINING, TRAINING, RELEASE, DP_STATISTIC, EVALUATION)


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


MAX_LEDGER_BYTES = 256 * 2**20  # far above any real ledger (a line is about 1 kB); a bigger file is refused unread


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate key(s) {', '.join(dupes)}")
    return dict(pairs)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number a ledger may hold")


def parse_line(line: bytes) -> dict[str, Any]:
    """One ledger line as its entry, or ValueError saying why it is not one: not JSON, not an
    object, a duplicated key, a NaN or infinity, or bytes that are not exactly the canonical
    form of the entry (a line that verifies must mean one thing only)."""
    entry = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    if canonical(entry) != line:
        raise ValueError("not the canonical form of its entry (re-encoded, reordered or padded)")
    return entry


def read_ledger(path: str | Path) -> LedgerRead:
    """Parse a ledger file; damaged lines become problems, never exceptions."""
    path = Path(path)
    out = LedgerRead()
    if not path.exists():
        return out
    size = path.stat().st_size
    if size > MAX_LEDGER_BYTES:
        out.problems.append(f"the file is {size} bytes, over the {MAX_LEDGER_BYTES}-byte limit of a ledger; not read")
        return out
    raw = path.read_bytes()
    if not raw:
        return out
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # after the last newline: empty, or a torn write
    for number, line in enumerate(complete, start=1):
        try:
            out.entries.append(parse_line(line))
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            out.problems.append(f"line {number}: not a valid entry ({err})")
    if tail:
        out.torn_last_line = True
        out.problems.append(
            f"line {len(complete) + 1}: torn last line ({len(tail)} bytes without a newline): a write was "
            "interrupted; the entry it held is not valid and the ledger refuses appends until it is inspected"
        )
    return out


# ---- the signed head: what makes a rollback visible -------------------------------------------
# A chain proves that no entry was changed, inserted or reordered, but deleting the last
# entries leaves a valid chain. The head, a small signed record of the last entry's index and
# hash kept beside the ledger (and in every copy the server and the officer keep), pins the
# end: a ledger that does not extend its head was truncated or rolled back.


def head_path(ledger_path: str | Path) -> Path:
    return Path(ledger_path).with_suffix(".head")


def make_head(entries: list[dict[str, Any]], site: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    last = entries[-1]
    body = {"site": site, "entries": len(entries), "index": last["index"], "hash": last["hash"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "key_id": key_id(key.public_key())}
    return {**body, "signature": sign(key, canonical(body))}


def check_head(head: Any, public_key: Ed25519PublicKey) -> str | None:
    """Why ``head`` is not a valid signed head for this key, or None."""
    if not isinstance(head, dict):
        return "the head is not an object"
    body = {k: v for k, v in head.items() if k != "signature"}
    count, index = head.get("entries"), head.get("index")
    if not (isinstance(count, int) and isinstance(index, int) and not isinstance(count, bool)
            and count >= 1 and index == count - 1 and isinstance(head.get("hash"), str)):
        return "the head is malformed (entries, index, hash)"
    if not verify(public_key, canonical(body), str(head.get("signature", ""))):
        return "the head's signature is invalid for this public key"
    return None


def extends_head(entries: list[dict[str, Any]], head: dict[str, Any]) -> str | None:
    """Why ``entries`` do not extend the (already checked) ``head``, or None."""
    n = head["entries"]
    if len(entries) < n:
        return f"truncated or rolled back: the signed head records {n} entries, the ledger holds {len(entries)}"
    if entries[n - 1].get("hash") != head["hash"]:
        return f"rewritten: entry {n - 1} is not the one the signed head records"
    return None


def extends_copy(entries: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> str | None:
    """Why ``entries`` do not extend an ``earlier`` copy of the same ledger, or None."""
    if len(entries) < len(earlier):
        return f"truncated or rolled back: the earlier copy holds {len(earlier)} entries, this one {len(entries)}"
    for i, (now, then) in enumerate(zip(entries, earlier)):
        if canonical(now) != canonical(then):
            return f"rewritten: entry {i} differs from the earlier copy"
    return None


def read_head(path: str | Path) -> dict[str, Any] | None:
    """The head stored at ``path`` (None when there is none); LedgerError when unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if len(raw) > 64 * 1024:
            raise ValueError("too large for a head")
        head = json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise LedgerError(f"ledger head {path} cannot be read: {err}") from None
    return head


class Ledger:
    """Append-only ledger at ``path`` for one site, signed with that site's key, with its signed
    head at ``<ledger>.head``."""

    def __init__(self, path: str | Path, site: str):
        self.path = Path(path)
        self.site = site

    @property
    def head_path(self) -> Path:
        return head_path(self.path)

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
        """The entries, or LedgerError if any line is damaged (the head is not checked)."""
        read = read_ledger(self.path)
        if read.problems:
            raise LedgerError(f"ledger {self.path} is damaged: " + "; ".join(read.problems))
        return read.entries

    def checked_entries(self, public_key: Ed25519PublicKey) -> list[dict[str, Any]]:
        """The entries after the site's own checks, or LedgerError: every line intact, chain and
        signatures valid, and the ledger extending its signed head (nothing deleted at its end)."""
        entries = self.entries()
        result = verify_entries(entries, public_key, str(self.path))
        if not result.ok:
            raise LedgerError(f"ledger {self.path} does not verify: " + "; ".join(result.failures()[:3]))
        self._check_end(entries, public_key)
        return entries

    def _check_end(self, entries: list[dict[str, Any]], public_key: Ed25519PublicKey) -> None:
        head = read_head(self.head_path)
        if head is None:
            if entries:
                raise LedgerError(
                    f"ledger {self.path} has entries but no signed head ({self.head_path.name}): its end cannot be "
                    "checked, so entries may have been deleted. Restore the head with the ledger from the same "
                    "backup; if a person has confirmed the ledger is complete, anchor it anew with "
                    "`fedsynth audit anchor`")
            return
        problem = check_head(head, public_key) or extends_head(entries, head)
        if problem:
            raise LedgerError(f"ledger {self.path}: {problem}; the site refuses to spend from it")

    def write_head(self, entries: list[dict[str, Any]], key: Ed25519PrivateKey) -> None:
        """Sign and store the head for ``entries`` (atomically: a crash leaves the old head)."""
        if not entries:
            return
        tmp = self.head_path.with_suffix(".head.tmp")
        tmp.write_bytes(canonical(make_head(entries, self.site, key)) + b"\n")
        os.replace(tmp, self.head_path)

    def append(self, body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
        """Sign and append one entry, then move the signed head to it; returns the entry as written."""
        if body.get("type") not in ENTRY_TYPES:
            raise LedgerError(f"unknown ledger entry type {body.get('type')!r}")
        with self._locked() as fd:
            read = read_ledger(self.path)
            if read.problems:
                raise LedgerError(
                    f"ledger {self.path} is damaged, so nothing more is written to it: " + "; ".join(read.problems)
                )
            self._check_end(read.entries, key.public_key())  # never append to a rolled-back ledger
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
            # the line is durable first: a crash here leaves the head one entry behind, which the
            # ledger still extends; never a head ahead of its ledger
            self.write_head([*read.entries, entry], key)
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


MAX_STEPS = 1_000_000  # steps of one mechanism; beyond it the accountants' cost is unbounded (and no site trains so)
NOISE_RANGE = (1e-3, 1e6)  # noise multipliers outside it are not DP-SGD settings anyone runs; the accountants overflow


def _number(mech: dict[str, Any], key: str, lo: float, hi: float, integer: bool = False) -> float:
    v = mech.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{key}={v!r} is outside [{lo:g}, {hi:g}]")
    return v


def mechanism_of(entry: dict[str, Any]) -> Mechanism | None:
    """The entry's mechanism, or None for an entry without one; ValueError when it is malformed
    or outside the ranges an accountant can compute (so a crafted entry is a finding, not a crash)."""
    mech = entry.get("mechanism")
    if mech is None:
        return None
    if not isinstance(mech, dict):
        raise ValueError(f"mechanism must be an object, got {type(mech).__name__}")
    noise = _number(mech, "noise_multiplier", *NOISE_RANGE)
    rate = _number(mech, "sample_rate", 0.0, 1.0)
    steps = int(_number(mech, "steps", 0, MAX_STEPS, integer=True))
    if rate <= 0:
        raise ValueError("sample_rate must be > 0")
    _number(mech, "delta", 0.0, 1.0)
    if mech.get("accountant") not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {mech.get('accountant')!r}")
    return Mechanism(float(noise), float(rate), steps)


def dp_mechanisms(entries: list[dict[str, Any]]) -> list[Mechanism]:
    return [m for m in (mechanism_of(e) for e in entries) if m is not None]


MAX_LEDGER_ENTRIES = 50_000  # a site's whole history; each entry's epsilon is recomputed, so the cost is bounded


def _delta_and_accountant(d: Any, what: str) -> tuple[float, str]:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object")
    delta = _number(d, "delta", 0.0, 1.0)
    if not 0 < delta < 1:
        raise ValueError(f"{what}.delta must be in (0, 1)")
    if d.get("accountant") not in ACCOUNTANTS:
        raise ValueError(f"{what}.accountant must be one of {', '.join(ACCOUNTANTS)}")
    return float(delta), str(d["accountant"])


def _stored(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} {value!r} is not a finite, non-negative number")
    return float(value)


def _recompute(entry: dict[str, Any], before: list[Mechanism]) -> tuple[float | None, float | None]:
    """(stored, recomputed) epsilon of an entry, from its mechanism or, for a release's
    statement of what was spent, from the composition of every mechanism ``before`` it."""
    mech = mechanism_of(entry)
    if mech is not None:
        delta, accountant = _delta_and_accountant(entry["mechanism"], "mechanism")
        return _stored(entry.get("epsilon"), "stored epsilon"), epsilon([mech], delta, accountant)
    spent = entry.get("spent")
    if spent:
        delta, accountant = _delta_and_accountant(spent, "spent")
        value = epsilon(before, delta, accountant) if before else 0.0
        return _stored(spent.get("epsilon"), "spent epsilon"), value
    return None, None


def verify_ledger(path: str | Path, public_key: Ed25519PublicKey) -> Verification:
    """Check lines, chain, hashes and signatures, and recompute every epsilon."""
    read = read_ledger(path)
    return verify_entries(read.entries, public_key, str(path), list(read.problems))


def _check_entry(entry: dict[str, Any], position: int, prev: str, public_key: Ed25519PublicKey,
                 before: list[Mechanism], composable: bool, check: EntryCheck) -> None:
    if entry.get("index") != position or isinstance(entry.get("index"), bool):
        check.problems.append(f"index {entry.get('index')!r} where {position} was expected (an entry is missing)")
    if entry.get("type") not in ENTRY_TYPES:
        check.problems.append(f"unknown entry type {entry.get('type')!r}")
    if entry.get("prev_hash") != prev:
        check.problems.append("chain broken: prev_hash does not match the previous entry's hash")
    if entry.get("hash") != entry_hash(entry):
        check.problems.append("content changed: the entry's hash does not match its content")
    if not verify(public_key, str(entry.get("hash", "")).encode(), str(entry.get("signature", ""))):
        check.problems.append("signature invalid for this public key")
    if entry.get("spent") and not composable:
        check.problems.append("the spending it states cannot be recomputed: an earlier entry's mechanism is malformed")
        return
    try:
        stored, recomputed = _recompute(entry, before)
    except (KeyError, TypeError, ValueError, OverflowError, ArithmeticError) as err:
        check.problems.append(f"mechanism unreadable: {err}")
        return
    check.stored_epsilon, check.recomputed_epsilon = stored, recomputed
    if recomputed is not None and (stored is None or not same_epsilon(stored, recomputed)):
        check.problems.append(f"stored epsilon {stored} differs from the accountant's {recomputed:.6g}")


def verify_entries(
    entries: Any, public_key: Ed25519PublicKey, origin: str = "<entries>",
    problems: list[str] | None = None,
) -> Verification:
    """Same checks as :func:`verify_ledger` on already-parsed entries (e.g. sent with a release).
    Whatever ``entries`` holds, every problem is reported, never raised."""
    result = Verification(origin, problems=list(problems or []))
    if not isinstance(entries, list):
        result.problems.append(f"a ledger is a list of entries, got {type(entries).__name__}")
        return result
    if len(entries) > MAX_LEDGER_ENTRIES:
        result.problems.append(f"{len(entries)} entries, over the {MAX_LEDGER_ENTRIES} a ledger may hold; not checked")
        return result
    prev = GENESIS
    before: list[Mechanism] = []
    composable = True
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            result.problems.append(f"entry {position} is not an object")
            break
        index = entry.get("index")
        check = EntryCheck(index=index if isinstance(index, int) and not isinstance(index, bool) else position,
                           type=str(entry.get("type", "?"))[:40], ok=True)
        try:
            _check_entry(entry, position, prev, public_key, before, composable, check)
        except Exception as err:  # noqa: BLE001 - a crafted entry is a finding, never a crash
            check.problems.append(f"malformed entry: {type(err).__name__}: {err}")
        try:
            mech = mechanism_of(entry)
        except (TypeError, ValueError):  # reported above; later spending statements cannot be recomputed
            composable = False
        else:
            if mech is not None:
                before.append(mech)
        check.ok = not check.problems
        result.checks.append(check)
        prev = str(entry.get("hash"))
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
