"""``fedsynth deploy``: TLS and SuperNode keys for Flower's deployment engine (docs/deployment.md).
The logic lives in fedsynth.deploy; these commands only call it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly
from fedsynth.progress import console

deploy_app = typer.Typer(help="Deployment on Flower's SuperLink/SuperNodes: TLS certificates, SuperNode keys.",
                         no_args_is_help=True)


@deploy_app.command("certs")
@friendly
def deploy_certs(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ca.crt, ca.key, server.crt, server.key."),
    host: list[str] = typer.Option([], "--host", help="A name or IP SuperNodes and flwr users dial to reach the "
                                   "SuperLink (repeat for several). 127.0.0.1 and localhost are always added: "
                                   "the SuperLink dials itself there."),
    days: int = typer.Option(365, "--days", help="Validity of the server certificate, in days."),
    ca_days: int = typer.Option(3650, "--ca-days", help="Validity of the CA certificate, in days."),
) -> None:
    """Make a CA and a SuperLink server certificate signed by it (never overwrites)."""
    from fedsynth.deploy import make_certificates

    hosts = list(dict.fromkeys([*host, "127.0.0.1", "localhost"]))
    files = make_certificates(out, hosts, days=days, ca_days=ca_days)
    console.print(f"wrote {files.ca_cert} (give it to every SuperNode and flwr user), {files.ca_key} (private, "
                  f"0600: keep it offline), {files.server_cert} and {files.server_key} (private, 0600) for the "
                  f"SuperLink; the server certificate names {', '.join(hosts)}", highlight=False)


@deploy_app.command("node-keys")
@friendly
def deploy_node_keys(
    site: str = typer.Option(..., "--site", help="Site name (the key files are named after it)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <site>.node-auth.key and .pub."),
) -> None:
    """Make a SuperNode's authentication key pair (ECDSA P-384, OpenSSH format; never overwrites)."""
    from fedsynth.deploy import load_node_public_key, make_node_keys
    from fedsynth.deploy.node_keys import node_key_fingerprint

    files = make_node_keys(site, out)
    fingerprint = node_key_fingerprint(load_node_public_key(files.public_key))
    console.print(f"wrote {files.private_key} (private, 0600: --auth-supernode-private-key) and {files.public_key} "
                  f"(send to the federation operator for `flwr supernode register`); fingerprint {fingerprint}",
                  highlight=False)


@deploy_app.command("connection")
@friendly
def deploy_connection(
    address: str = typer.Option(..., "--address", help="The SuperLink as HOST:PORT."),
    root_certificates: Path = typer.Option(..., "--root-certificates", help="The federation's ca.crt."),
    name: str = typer.Option("fedsynth", "--name", help="Connection name for `flwr ... NAME`."),
    flwr_home: Optional[Path] = typer.Option(None, "--flwr-home", help="Flower's config folder "
                                             "(default: $FLWR_HOME or ~/.flwr)."),
) -> None:
    """Add a TLS SuperLink connection to the Flower CLI's config.toml (for flwr run/supernode/ls)."""
    import os

    from fedsynth.deploy.flower import write_flower_connection

    home = flwr_home or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    path = write_flower_connection(home, name, address, root_certificates)
    console.print(f"wrote connection {name!r} ({address}, trusting {root_certificates}) to {path}", highlight=False)


@deploy_app.command("check-site")
@friendly
def deploy_check_site(
    site_config: Path = typer.Argument(..., help="A hospital's site.yaml."),
) -> None:
    """Say what a hospital's security review would flag in its site config (exit 1 if anything)."""
    from fedsynth.config import load_site_config

    site = load_site_config(site_config)
    warnings = site.unsafe_policy()
    if not site.consortium_keys:
        warnings.append("consortium_keys is empty: fidelity and utility are measured only on this site's own release")
    for w in warnings:
        console.print(f"[yellow]warning:[/] {site.name}: {w}", highlight=False)
    if site.unsafe_policy():
        raise typer.Exit(1)
    console.print(f"{site.name}: DP required, release gate required, epsilon at most {site.policy.max_epsilon:g}, "
                  f"{site.policy.max_evaluations_per_run} evaluation(s) per run", highlight=False)

