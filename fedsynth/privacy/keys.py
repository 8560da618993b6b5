"""Ed25519 site keys: a site signs its ledger entries and releases; others verify.

Private keys are PEM (PKCS#8) files readable by their owner only; public keys are PEM
(SubjectPublicKeyInfo) files that a site hands to the server and to its privacy officer.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsynth.errors import FedsynthError

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SiteKeyError(FedsynthError):
    """A key file is missing or is not an Ed25519 key."""


def generate_keypair(site: str, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<out_dir>/<site>.key`` (mode 0600) and ``<site>.pub``; never overwrite silently."""
    if not SITE_NAME.fullmatch(site):
        raise SiteKeyError(f"site name {site!r} must be letters, digits, '.', '_' or '-' (and not start with one "
                           "of the last three)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{site}.key", out / f"{site}.pub"
    if not overwrite and (key_path.exists() or pub_path.exists()):
        raise SiteKeyError(f"{key_path} or {pub_path} exists already; refusing to replace a site's key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise SiteKeyError(f"private key not found: {path}") from None
    except (ValueError, TypeError) as err:
        raise SiteKeyError(f"{path} is not a PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SiteKeyError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise SiteKeyError(f"public key not found: {path}") from None
    except (ValueError, TypeError) as err:
        raise SiteKeyError(f"{path} is not a PEM public key: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SiteKeyError(f"{path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (first 16 hex of SHA-256 of its raw bytes)."""
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def verify(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
