"""``fedsynth keys`` and ``fedsynth audit``: a site's signing keys and the privacy officer's tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


def _earlier(path: Path, public_key, entries: list) -> str | None:
    """Why ``entries`` do not extend ``path`` (an earlier copy of the ledger, or a signed head)."""
    from fedsynth.privacy.ledger import check_head, extends_copy, extends_head, read_head, read_ledger

    if path.suffix == ".head":
        head = read_head(path)
        return (check_head(head, public_key) or extends_head(entries, head)) if head is not None else \
            f"{path} holds no head"
    earlier = read_ledger(path)
    if earlier.problems:
        return f"the earlier copy {path} is damaged: " + "; ".join(earlier.problems[:2])
    return extends_copy(entries, earlier.entries)


@audit_app.command("verify")
@friendly
def audit_verify(
    ledger: Path = typer.Argument(..., help="A site's ledger (JSON lines)."),
    public_key: Path = typer.Option(..., "--public-key", "-k", help="The site's public key (PEM), from a source "
                                    "you trust (the site itself, the consortium's key registry), not from beside "
                                    "the ledger."),
    since: list[Path] = typer.Option([], "--since", help="An earlier copy of this ledger (.jsonl) or a signed head "
                                     "(.head) it must extend: catches deleted entries (repeat for several)."),
) -> None:
    """Check every line, the chain and the signatures, recompute every epsilon, and check the ledger
    extends its signed head and every --since copy; exit 1 on any failure."""
    from fedsynth.errors import DataError
    from fedsynth.privacy.keys import load_public_key
    from fedsynth.privacy.ledger import head_path, read_ledger, verify_entries

    if not ledger.is_file():
        raise DataError(f"ledger not found: {ledger}")
    key = load_public_key(public_key)
    read = read_ledger(ledger)
    result = verify_entries(read.entries, key, str(ledger), list(read.problems))
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
    anchors = [*([head_path(ledger)] if head_path(ledger).is_file() else []), *since]
    for anchor in anchors:
        if not anchor.is_file():
            raise DataError(f"--since: not found: {anchor}")
        problem = _earlier(anchor, key, read.entries)
        if problem:
            result.problems.append(f"does not extend {anchor.name}: {problem}")
    if not anchors:
        console.print("[yellow]warning:[/] no signed head beside the ledger and no --since copy: deleted entries "
                      "at its end would not show. Check it against a copy you kept earlier.", highlight=False)
    for p in result.problems:
        console.print(f"[red]problem:[/] {p}", highlight=False)
    if not result.ok:
        console.print(f"[bold red]FAILED[/]: {len(result.failures())} problem(s)")
        raise typer.Exit(1)
    console.print(f"[bold green]VERIFIED[/]: {len(result.checks)} entries, every line canonical, chain intact, every "
                  "signature valid, every epsilon recomputed and matching"
                  + (f", extends {', '.join(a.name for a in anchors)}" if anchors else ""))


@audit_app.command("anchor")
@friendly
def audit_anchor(
    ledger: Path = typer.Argument(..., help="A site's ledger (JSON lines) that a person has confirmed is complete."),
    key: Path = typer.Option(..., "--key", help="The site's private key (<site>.key)."),
) -> None:
    """Write a new signed head for a ledger that verifies (after restoring a ledger without its head)."""
    from fedsynth.errors import DataError
    from fedsynth.privacy.keys import load_private_key
    from fedsynth.privacy.ledger import Ledger, verify_entries

    if not ledger.is_file():
        raise DataError(f"ledger not found: {ledger}")
    private = load_private_key(key)
    led = Ledger(ledger, "")
    entries = led.entries()
    result = verify_entries(entries, private.public_key(), str(ledger))
    if not result.ok or not entries:
        raise DataError(f"{ledger} does not verify with this key (or is empty): nothing anchored. "
                        + "; ".join(result.failures()[:3]))
    led.site = str(entries[0].get("site", ""))
    led.write_head(entries, private)
    console.print(f"wrote {led.head_path}: the ledger's end is now pinned at entry {len(entries) - 1}",
                  highlight=False)


@audit_app.command("report")
@friendly
def audit_report(
    ledgers: list[Path] = typer.Argument(..., help="Ledgers, or run directories (their ledgers/ folder is used)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="The key registry to trust: a YAML or JSON mapping of "
                                        "site name to public key file (as the server's federation.site_keys)."),
    public_key: list[Path] = typer.Option([], "--public-key", "-k",
                                          help="Public key per ledger, in order (instead of --keys)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for privacy_audit.md and .html (default: "
                                       "<run dir>/audit, or audit/ beside the first ledger)."),
) -> None:
    """Write the privacy audit (Markdown + HTML): budgets, trainings, releases, gate and MIA results;
    exit 1 when any ledger fails verification."""
    from fedsynth.errors import DataError
    from fedsynth.privacy.audit import read_key_registry, write_report

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
    if public_key and keys:
        raise DataError("give --keys or --public-key, not both")
    if public_key and len(public_key) != len(files):
        raise DataError(f"{len(public_key)} public keys for {len(files)} ledgers")
    trusted: list[tuple[Path, Path, str]] = []  # (ledger, key, where the key came from)
    if keys is not None:
        registry = read_key_registry(keys)
        for f in files:
            site = f.stem if f.stem != "ledger" else f.parent.name
            if site not in registry:
                raise DataError(f"--keys: {keys} has no key for site {site!r} (ledger {f})")
            trusted.append((f, registry[site], "registry"))
    elif public_key:
        trusted = [(f, k, "given") for f, k in zip(files, public_key)]
    else:
        trusted = [(f, f.with_suffix(".pub"), "beside the ledger") for f in files]
        console.print("[bold yellow]warning:[/] no --keys registry: trusting the .pub file found BESIDE each ledger. "
                      "Anyone who can replace a ledger can replace that key too; give the keys you hold yourself "
                      "(--keys registry.yaml).", highlight=False)
    if out is None:
        first = ledgers[0]
        out = first / "audit" if first.is_dir() else first.parent / "audit"
    written, statuses = write_report(trusted, out)
    console.print("wrote " + ", ".join(map(str, written)), highlight=False, soft_wrap=True)
    failed = [st.site for st in statuses if not st.verified]
    if failed:
        console.print(f"[bold red]FAILED[/]: the ledger of {', '.join(failed)} failed verification (see the report)")
        raise typer.Exit(1)
