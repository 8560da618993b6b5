"""A site's privacy state: its identity key, its ledger and its budget.

Layout of a site's state directory::

    <state_dir>/<site>.key     Ed25519 private key (mode 0600; never leaves the site)
    <state_dir>/<site>.pub     public key (give it to the server and the privacy officer)
    <state_dir>/ledger.jsonl   the append-only signed ledger
    <state_dir>/ledger.head    its signed head (last entry's index and hash): a truncated ledger no longer extends it
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.privacy.dp import Budget
from fedsynth.privacy.keys import SiteKeyError, generate_keypair, load_private_key
from fedsynth.privacy.ledger import Ledger

LEDGER_FILE = "ledger.jsonl"


@dataclass(frozen=True)
class SiteState:
    name: str
    state_dir: Path
    budget: Budget

    @property
    def key_path(self) -> Path:
        return self.state_dir / f"{self.name}.key"

    @property
    def public_key_path(self) -> Path:
        return self.state_dir / f"{self.name}.pub"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_FILE

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_path, self.name)

    def checked_entries(self) -> list[dict]:
        """The ledger as the site may spend from it: intact, signed by its own key, and extending
        its signed head (LedgerError otherwise: a damaged or rolled-back ledger stops the site)."""
        return self.ledger().checked_entries(self.signing_key().public_key())

    def signing_key(self) -> Ed25519PrivateKey:
        if not self.key_path.is_file():
            raise SiteKeyError(
                f"{self.name}: no signing key at {self.key_path}; create one with "
                f"`fedsynth keys generate --site {self.name} --out {self.state_dir}`"
            )
        return load_private_key(self.key_path)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the site's privacy lock: from the budget check to the last ledger entry of
        a request, no other request of this site can check or spend."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure_keys(self) -> Path:
        """Create the key pair if there is none (simulation); returns the public key path."""
        if not self.key_path.is_file():
            generate_keypair(self.name, self.state_dir)
        return self.public_key_path
