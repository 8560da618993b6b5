"""TLS for the SuperLink: a private certificate authority and a server certificate it signs.

    ca.crt      the CA certificate: every SuperNode and every ``flwr`` user gets a copy
                (``--root-certificates``, ``root-certificates`` in the Flower config)
    ca.key      the CA's private key (mode 0600): keep it offline; it signs server certificates
    server.crt  the SuperLink's certificate, with SubjectAltNames for its host names / IPs
    server.key  the SuperLink's private key (mode 0600)

Keys are ECDSA on NIST P-384. The CA is a CA (basicConstraints CA:TRUE, pathlen 0,
keyCertSign + cRLSign); the server certificate is not (CA:FALSE, digitalSignature,
extendedKeyUsage serverAuth), names its hosts in subjectAltName (IP addresses as
iPAddress entries, names as dNSName) and links to the CA by key identifiers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.deploy.errors import DeployError
from fedsynth.deploy.files import prepare_dir, refuse_existing, write_file

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before "now"
_DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key]


def certificate_paths(out_dir: str | Path) -> CertificateFiles:
    out = Path(out_dir).expanduser()
    return CertificateFiles(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")


def _san(host: str) -> x509.GeneralName:
    host = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or len(host) > 253 or not _DNS_NAME.match(host):
        raise DeployError(f"--host {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(host.rstrip(".").lower())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificates(
    out_dir: str | Path,
    hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
    days: int = 365,
    ca_days: int = 3650,
    organization: str = "fedsynth federation",
) -> CertificateFiles:
    """Write ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key`` into ``out_dir``.

    ``hosts`` are the names and addresses SuperNodes and users will dial (the SuperLink's
    ``--superlink HOST:PORT``); each becomes a subjectAltName of the server certificate.
    Nothing is written if any of the four files exists already.
    """
    hosts = [h.strip() for h in hosts if h and h.strip()]
    if not hosts:
        raise DeployError("give at least one --host (the SuperLink's address as SuperNodes dial it)")
    if days < 1 or ca_days < days:
        raise DeployError(f"validity must be at least 1 day and the CA's ({ca_days}) at least the server's ({days})")
    sans = list(dict.fromkeys(_san(h) for h in hosts))
    out = prepare_dir(out_dir)
    files = certificate_paths(out)
    refuse_existing(files.all())

    now = dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} CA"),
    ])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
    ])
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(server_name)
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    written: list[Path] = []
    try:
        for path, data, private in (
            (files.ca_key, _key_pem(ca_key), True),
            (files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), False),
            (files.server_key, _key_pem(server_key), True),
            (files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), False),
        ):
            written.append(write_file(path, data, private))
    except DeployError:
        for p in written:  # all or nothing: never leave a half-made set behind
            p.unlink(missing_ok=True)
        raise
    return files
