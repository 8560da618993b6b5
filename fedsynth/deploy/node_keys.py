"""A SuperNode's authentication key pair, in the format Flower reads.

Flower 1.41 authenticates a SuperNode by an ECDSA key on a NIST curve (P-384, as
``ssh-keygen -t ecdsa -b 384`` makes): the SuperNode signs every Fleet API request with
its private key, and the SuperLink accepts only public keys the operator registered with
``flwr supernode register``. The files are OpenSSH-formatted:

    <site>.node-auth.key   ``-----BEGIN OPENSSH PRIVATE KEY-----`` (mode 0600), for
                           ``flower-supernode --auth-supernode-private-key``
    <site>.node-auth.pub   ``ecdsa-sha2-nistp384 AAAA... fedsynth-supernode-<site>``, for
                           ``flwr supernode register``

This key identifies the hospital's *machine* to the SuperLink. It is not the site's
Ed25519 ledger signing key (``fedsynth keys generate``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsynth.deploy.errors import DeployError
from fedsynth.deploy.files import prepare_dir, refuse_existing, write_file

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # as SiteConfig.name
PRIVATE_SUFFIX = ".node-auth.key"
PUBLIC_SUFFIX = ".node-auth.pub"
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True)
class NodeKeyFiles:
    private_key: Path
    public_key: Path


def node_key_paths(site: str, out_dir: str | Path) -> NodeKeyFiles:
    out = Path(out_dir).expanduser()
    return NodeKeyFiles(out / f"{site}{PRIVATE_SUFFIX}", out / f"{site}{PUBLIC_SUFFIX}")


def make_node_keys(site: str, out_dir: str | Path) -> NodeKeyFiles:
    """Write the SuperNode authentication key pair of ``site``; never overwrite one."""
    if not SITE_NAME.match(site or ""):
        raise DeployError(f"site name {site!r}: use letters, digits, '.', '_' or '-' (starting with a letter/digit)")
    out = prepare_dir(out_dir)
    files = node_key_paths(site, out)
    refuse_existing([files.private_key, files.public_key])
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_file(files.private_key, private, private=True)
    try:
        write_file(files.public_key, public + f" fedsynth-supernode-{site}\n".encode(), private=False)
    except DeployError:
        files.private_key.unlink(missing_ok=True)
        raise
    return files


def load_node_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Read a SuperNode public key as ``flwr supernode register`` will (OpenSSH, NIST EC)."""
    p = Path(path).expanduser()
    try:
        key = serialization.load_ssh_public_key(p.read_bytes())
    except FileNotFoundError:
        raise DeployError(f"SuperNode public key not found: {p}") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise DeployError(f"{p} is not an OpenSSH public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise DeployError(f"{p}: Flower needs an ECDSA key on a NIST curve (P-256/384/521)")
    return key


def node_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it, to compare keys over the phone."""
    import base64

    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
