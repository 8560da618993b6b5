"""Invitations to the reader study: one token per reader, an owner token for the results.

Tokens are ``secrets.token_urlsafe(32)``; the study's SQLite file keeps only their HMAC-SHA256
under a random secret of that database (see :class:`TokenStore`), and a reader token is bound
to the one reader it was minted for.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsynth.errors import DataError
from fedsynth.webapp.study import StudyError, _connect, _private_db, reader_key, validate_reader

TOKEN_DAYS = 30  # how long an invitation or an owner token is valid by default
TOKEN_DAYS_MAX = 366
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")  # what secrets.token_urlsafe(32) makes (43 characters)


TOKEN_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS token_secret (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        key BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS readers (
        reader     TEXT PRIMARY KEY,  -- reader_key(name): what answers.reader holds
        shown_as   TEXT NOT NULL,     -- the name as the owner typed it (NFKC)
        invited_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_hash TEXT PRIMARY KEY,  -- HMAC-SHA256 of the token under token_secret.key; never the token
        role       TEXT NOT NULL CHECK (role IN ('owner', 'reader')),
        reader     TEXT REFERENCES readers (reader),
        created_at TEXT NOT NULL,
        expires_at REAL NOT NULL,
        CHECK ((role = 'reader') = (reader IS NOT NULL))
    )""",
)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Grant:
    """What a valid token lets its bearer do: read results (owner) or answer as one reader."""

    role: str  # "owner" or "reader"
    reader: str | None  # the reader's key; None for the owner
    shown_as: str | None  # the reader's name as shown
    token_hash: str
    expires_at: float


@dataclass(frozen=True)
class Invitation:
    """A freshly minted token: shown once, never stored."""

    token: str
    role: str
    shown_as: str | None
    expires_at: float

    def url(self, base: str) -> str:
        path = "/study/results" if self.role == "owner" else "/study"
        return f"{base.rstrip('/')}{path}?token={self.token}"

    @property
    def expires(self) -> str:
        return _utc(self.expires_at)


class TokenStore:
    """Reader invitations and owner tokens, in the study's SQLite file.

    Tokens are ``secrets.token_urlsafe(32)``; only their HMAC-SHA256 under a random secret of
    this database is stored, and a presented token is checked with ``hmac.compare_digest``.
    Each reader token is bound to one reader; minting an owner token revokes the older ones.
    ``clock`` (epoch seconds) is what expiry is measured with.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        try:
            _private_db(self.path)
            with _connect(self.path) as db:
                for statement in TOKEN_SCHEMA:
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO token_secret (id, key) VALUES (1, ?)", (secrets.token_bytes(32),))
                self._secret = bytes(db.execute("SELECT key FROM token_secret WHERE id = 1").fetchone()[0])
        except (OSError, sqlite3.Error) as err:
            raise DataError(f"cannot open the reader-study database {self.path}: {err}") from None

    def _hash(self, token: str) -> str:
        return hmac.new(self._secret, token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def derive_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (e.g. signing CSRF tokens) that survives restarts, derived from the secret."""
        return hmac.new(self._secret, b"fedsynth-key|" + purpose.encode(), hashlib.sha256).digest()

    def _mint(self, db: sqlite3.Connection, role: str, reader: str | None, days: float) -> tuple[str, float]:
        if not 0 < days <= TOKEN_DAYS_MAX:
            raise StudyError(f"a token is valid for more than 0 and at most {TOKEN_DAYS_MAX} days, not {days}")
        now = self.clock()
        expires = now + days * 86400
        token = secrets.token_urlsafe(32)
        db.execute("INSERT INTO tokens (token_hash, role, reader, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                   (self._hash(token), role, reader, _utc(now), expires))
        return token, expires

    def invite(self, name: str | None, *, days: float = TOKEN_DAYS, reissue: bool = False) -> Invitation:
        """A new reader's invitation. A reader who already holds a valid invitation gets a new
        one only with ``reissue`` (the old one stops working): 'Ann' and 'ANN' are one reader."""
        shown = validate_reader(name)
        key = reader_key(shown)
        with _connect(self.path) as db:
            row = db.execute("SELECT shown_as FROM readers WHERE reader = ?", (key,)).fetchone()
            live = db.execute("SELECT COUNT(*) FROM tokens WHERE reader = ? AND expires_at > ?",
                              (key, self.clock())).fetchone()[0]
            if live and not reissue:
                raise StudyError(f"{row[0]!r} already has a valid invitation (reader names are compared ignoring "
                                 "case and compatibility forms, so this is the same reader); reissue it to get a "
                                 "new link, which revokes the old one", 409)
            if row is None:
                db.execute("INSERT INTO readers (reader, shown_as, invited_at) VALUES (?, ?, ?)",
                           (key, shown, _utc(self.clock())))
            else:
                shown = row[0]  # the reader keeps the name their answers are shown under
                db.execute("DELETE FROM tokens WHERE reader = ?", (key,))
            token, expires = self._mint(db, "reader", key, days)
        return Invitation(token, "reader", shown, expires)

    def issue_owner(self, *, days: float = TOKEN_DAYS) -> Invitation:
        """A new owner token (results and invitations); every older owner token stops working."""
        with _connect(self.path) as db:
            db.execute("DELETE FROM tokens WHERE role = 'owner'")
            token, expires = self._mint(db, "owner", None, days)
        return Invitation(token, "owner", None, expires)

    def revoke(self, name: str) -> int:
        """Revoke a reader's invitations (their answers stay); how many were revoked."""
        with _connect(self.path) as db:
            return db.execute("DELETE FROM tokens WHERE reader = ?", (reader_key(name),)).rowcount

    def names(self) -> dict[str, str]:
        """Every invited reader: key -> name as shown."""
        with _connect(self.path) as db:
            return dict(db.execute("SELECT reader, shown_as FROM readers").fetchall())

    def check(self, token: str) -> Grant:
        """What ``token`` grants; StudyError (401) when it is malformed, unknown, revoked or expired."""
        if not isinstance(token, str) or not TOKEN_RE.match(token):
            raise StudyError("this is not a fedsynth study token (a token is 43 letters, digits, '-' and '_', "
                             "as in the invitation link)", 401)
        digest = self._hash(token)
        with _connect(self.path) as db:
            row = db.execute("SELECT t.token_hash, t.role, t.reader, t.expires_at, r.shown_as FROM tokens t "
                             "LEFT JOIN readers r ON r.reader = t.reader WHERE t.token_hash = ?",
                             (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            raise StudyError("unknown or revoked token: ask the study's owner for a new invitation", 401)
        if row[3] <= self.clock():
            raise StudyError(f"this token expired on {_utc(row[3])}: ask the study's owner for a new invitation", 401)
        return Grant(row[1], row[2], row[4], row[0], row[3])
