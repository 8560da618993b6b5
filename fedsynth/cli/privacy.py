"""``fedsynth keys`` and ``fedsynth audit``: a site's signing keys and the privacy officer's tools."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedsynth.cli.common import friendly
from fedsynth.progress import console

keys_app = typer.Typer(help="Site signing keys (Ed25519).", no_args_is_help=True)
audit_app = typer.Typer(help="The privacy officer's tools: verify ledgers, write the audit report.",
                        no_args_is_help=True)


@keys_app.command("generate")
@friendly
def keys_generate(
    site: str = typer.Option(..., "--site", help="Site name (the key files are named after it)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <site>.key and <site>.pub."),
) -> None:
    """Make a site's Ed25519 key pair: <site>.key stays at the site, <site>.pub goes to the server."""
    from fedsynth.privacy.keys import generate_keypair, key_id, load_public_key

    key, pub = generate_keypair(site, out)
    console.print(f"wrote {key} (private, mode 0600) and {pub} (key id {key_id(load_public_key(pub))})")


@audit_app.command("verify")
@friendly
def audit_verify(
    ledger: Path = typer.Argument(..., help="A site's ledger (JSON lines)."),
    public_key: Path = typer.Option(..., "--public-key", "-k", help="The site's public key (PEM)."),
) -> None:
    """Check chain and signatures, recompute every epsilon; exit 1 on any failure."""
    from fedsynth.privacy.keys import load_public_key
    from fedsynth.privacy.ledger import verify_ledger

    if not ledger.is_file():
        from fedsynth.errors import DataError

        raise DataError(f"ledger not found: {ledger}")
    result = verify_ledger(ledger, load_public_key(public_key))
    table = Table(title=f"{ledger}")
    for col in ("#", "type", "epsilon stored", "epsilon recomputed", "check"):
        table.add_column(col)
    for c in result.checks:
        table.add_row(
            str(c.index), c.type,
            "-" if c.stored_epsilon is None else f"{c.stored_epsilon:.6g}",
            "-" if c.recomputed_epsilon is None else f"{c.recomputed_epsilon:.6g}",
            "[green]ok[/]" if c.ok else "[red]" + "; ".join(c.problems) + "[/]",
        )
    console.print(table)
    for p in result.problems:
        console.print(f"[red]problem:[/] {p}", highlight=False)
    if not result.ok:
        console.print(f"[bold red]FAILED[/]: {len(result.failures())} problem(s)")
        raise typer.Exit(1)
    console.print(f"[bold green]VERIFIED[/]: {len(result.checks)} entries, chain intact, every signature valid, "
                  "every epsilon recomputed and matching")


@audit_app.command("report")
@friendly
def audit_report(
    ledgers: list[Path] = typer.Argument(..., help="Ledgers, or run directories (their ledgers/ folder is used)."),
    public_key: list[Path] = typer.Option([], "--public-key", "-k",
                                          help="Public key per ledger, in order (default: <ledger>.pub beside it)."),
    out: Path = typer.Option(Path("audit"), "--out", "-o", help="Folder for privacy_audit.md and .html."),
) -> None:
    """Write the privacy audit (Markdown + HTML): budgets, trainings, releases, gate and MIA results."""
    from fedsynth.errors import DataError
    from fedsynth.privacy.audit import write_report

    files: list[Path] = []
    for item in ledgers:
        if item.is_dir():
            files += sorted((item / "ledgers").glob("*.jsonl")) if (item / "ledgers").is_dir() else \
                sorted(item.glob("*.jsonl"))
        else:
            files.append(item)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError("ledger not found: " + ", ".join(missing))
    if not files:
        raise DataError("no ledger found in " + ", ".join(map(str, ledgers)))
    if public_key and len(public_key) != len(files):
        raise DataError(f"{len(public_key)} public keys for {len(files)} ledgers")
    keys = public_key or [f.with_suffix(".pub") for f in files]
    written = write_report(list(zip(files, keys)), out)
    console.print("wrote " + ", ".join(map(str, written)))
