"""Flower's deployment engine, as fedsynth uses it (Flower 1.41).

One SuperLink serves the Fleet API (SuperNodes), the Control API (``flwr`` CLI) and the
Runtime API (its own ServerApp process) on a single HTTPS port. Facts this module encodes:

* TLS: ``flower-superlink --ssl-certfile server.crt --ssl-keyfile server.key
  --ssl-ca-certfile ca.crt``; SuperNodes verify it with ``--root-certificates ca.crt``,
  the ``flwr`` CLI with ``root-certificates`` in its connection (``config.toml`` in
  ``$FLWR_HOME``, default ``~/.flwr``). The SuperLink's own SuperExec dials the Runtime API
  at ``127.0.0.1:<port>`` with ``ca.crt``, so the server certificate must name 127.0.0.1.
* SuperNode authentication: ``--enable-supernode-auth`` on the SuperLink; each public key
  registered beforehand with ``flwr supernode register KEY.pub CONNECTION`` (Control API);
  ``flower-supernode --auth-supernode-private-key KEY``. A SuperNode whose key is not
  registered is refused at activation and exits with code 305.
* No package installs at run time: ``--disable-runtime-dependency-installation`` (or
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``): the FAB's dependencies must already
  be installed where the ServerApp and ClientApps run (``pip install fedsynth``).
* Each SuperNode runs a local Runtime API for its ClientApp processes (default
  127.0.0.1:9094): two SuperNodes on one machine need different ``--port`` values.
* Flower spawns ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name,
  so the environment's ``bin`` folder must be on ``PATH``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from fedsynth.deploy.certs import CertificateFiles
from fedsynth.deploy.errors import DeployError

CONFIG_FILE = "config.toml"  # Flower CLI's config file inside FLWR_HOME


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, as Flower's ``key="value"`` options expect."""
    if "\n" in value or '"' in value:
        raise DeployError(f"{value!r}: a path in a Flower option cannot contain quotes or newlines")
    return '"' + value.replace("\\", "\\\\") + '"'


def node_config(site_config: str | Path) -> str:
    """The ``--node-config`` value naming a site's YAML (read by the fedsynth ClientApp)."""
    return f"site-config={toml_string(str(Path(site_config).expanduser().resolve()))}"


def run_config(run_config_yaml: str | Path) -> str:
    """The ``flwr run --run-config`` value naming a run config YAML *on the SuperLink's machine*."""
    return f"config={toml_string(str(Path(run_config_yaml).expanduser().resolve()))}"


def flower_env(flwr_home: str | Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: offline-friendly, this Python's ``bin`` on PATH."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")  # no call home from a hospital network
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def superlink_command(
    certs: CertificateFiles, host: str = "127.0.0.1", port: int = 9093, database: str | Path | None = None
) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and no run-time installs."""
    cmd = [
        "flower-superlink",
        "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(certs.server_key),
        "--ssl-ca-certfile", str(certs.ca_cert),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", host,
        "--port", str(port),
    ]
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(
    superlink: str,
    root_certificates: str | Path,
    private_key: str | Path,
    site_config: str | Path,
    runtime_port: int = 9094,
    max_retries: int | None = None,
) -> list[str]:
    """``flower-supernode`` for one hospital: TLS to the SuperLink, authenticated, its site config."""
    cmd = [
        "flower-supernode",
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(private_key),
        "--node-config", node_config(site_config),
        "--port", str(runtime_port),
    ]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    return cmd


def write_flower_connection(
    flwr_home: str | Path, name: str, address: str, root_certificates: str | Path, make_default: bool = True
) -> Path:
    """Add (or replace) SuperLink connection ``name`` in ``$FLWR_HOME/config.toml``.

    Other connections in the file are kept. ``flwr run . NAME``, ``flwr supernode register
    KEY NAME`` and ``flwr ls NAME`` then reach the SuperLink over TLS, trusting ``ca.crt``.
    """
    import tomli_w

    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as Flower itself uses it
        import tomli as tomllib  # type: ignore[no-redef]

    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise DeployError(f"connection name {name!r}: use letters, digits, '-' or '_'")
    ca = Path(root_certificates).expanduser().resolve()
    if not ca.is_file():
        raise DeployError(f"root certificate not found: {ca}")
    home = Path(flwr_home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    data: dict = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise DeployError(f"{path} is not valid TOML: {err}") from None
    section = data.setdefault("superlink", {})
    section[name] = {"address": address, "root-certificates": str(ca)}
    if make_default or "default" not in section:
        section["default"] = name
    # "default" first, as Flower writes it
    data["superlink"] = {"default": section.pop("default"), **section}
    path.write_text(tomli_w.dumps(data))
    return path
