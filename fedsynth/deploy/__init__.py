"""Deployment helpers: TLS certificates, SuperNode authentication keys, Flower commands.

A real federation runs on Flower's deployment engine: one SuperLink (the server) and one
SuperNode per hospital, over TLS, with every SuperNode authenticated by a key pair whose
public half the federation operator registered beforehand (``docs/deployment.md``).

* :func:`make_certificates` writes a small certificate authority and a server certificate
  signed by it (for the SuperLink);
* :func:`make_node_keys` writes a SuperNode's authentication key pair in the format Flower
  reads (OpenSSH, ECDSA on NIST P-384);
* :mod:`fedsynth.deploy.flower` builds the ``flower-superlink`` / ``flower-supernode`` /
  ``flwr`` command lines and the Flower CLI's connection file.

These SuperNode keys authenticate a *machine* to the SuperLink. They are distinct from a
site's Ed25519 *ledger signing* keys (``fedsynth keys generate``), which sign releases and
privacy-ledger entries and which the server lists in ``federation.site_keys``.
"""

from fedsynth.deploy.certs import CertificateFiles, make_certificates
from fedsynth.deploy.errors import DeployError
from fedsynth.deploy.node_keys import NodeKeyFiles, load_node_public_key, make_node_keys

__all__ = [
    "CertificateFiles",
    "DeployError",
    "NodeKeyFiles",
    "load_node_public_key",
    "make_certificates",
    "make_node_keys",
]
