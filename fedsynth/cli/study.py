"""``fedsynth study``: the reader study's owner invites readers (docs/webapp.md).

Each command works on the study's SQLite database (default ``RUN_DIR/reader_study.sqlite``,
the one ``fedsynth serve`` uses), also while the app runs: it reads tokens from the database
on every request. A token is printed once, on stdout, and only its HMAC is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly
from fedsynth.progress import console

study_app = typer.Typer(help="Reader study: invite readers, revoke invitations, a new owner token.",
                        no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8000"
RUN_DIR_HELP = "The run directory the study is served from (fedsynth serve RUN_DIR --real-data ...)."
DB_HELP = "The study's database. Default: RUN_DIR/reader_study.sqlite (as for fedsynth serve --db)."
URL_HELP = "Where readers reach the app (the links printed start with it)."


def _tokens(run_dir: Path, db: Optional[Path]):
    from fedsynth.errors import DataError
    from fedsynth.webapp.invitations import TokenStore
    from fedsynth.webapp.study import DB_FILE

    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    return TokenStore(db if db is not None else run_dir / DB_FILE)


def _user_error(err: ValueError):
    from fedsynth.errors import DataError

    return DataError(str(err))


@study_app.command("invite")
@friendly
def invite(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    reader: str = typer.Option(..., "--reader", help="The reader's name or pseudonym (1-40 letters of one script, "
                               "digits, spaces, '.', '_', '-'): the only thing stored about them."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    days: float = typer.Option(30, "--days", help="How long the invitation is valid."),
    reissue: bool = typer.Option(False, "--reissue", help="A new link for a reader already invited; "
                                 "the old one stops working (their answers stay)."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
) -> None:
    """Invite one reader: prints their personal link (and its token for the JSON API) once."""
    from fedsynth.webapp.study import StudyError

    try:
        inv = _tokens(run_dir, db).invite(reader, days=days, reissue=reissue)
    except StudyError as err:
        raise _user_error(err) from None
    console.print(f"invitation for {inv.shown_as}, valid until {inv.expires}; shown this once, give it to "
                  "this reader only:", highlight=False, markup=False, soft_wrap=True)
    typer.echo(inv.url(url))
    typer.echo(f"token (JSON API, Authorization: Bearer): {inv.token}")


@study_app.command("revoke")
@friendly
def revoke(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    reader: str = typer.Option(..., "--reader", help="The reader whose invitation stops working."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Revoke a reader's invitation at once (their answers stay in the results)."""
    from fedsynth.errors import DataError

    if _tokens(run_dir, db).revoke(reader) == 0:
        raise DataError(f"no valid invitation for reader {reader!r}")
    console.print(f"revoked the invitation of {reader}", highlight=False, markup=False)


@study_app.command("owner-token")
@friendly
def owner_token(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    days: float = typer.Option(30, "--days", help="How long the token is valid."),
    url: str = typer.Option(DEFAULT_URL, "--url", help=URL_HELP),
) -> None:
    """A new owner token (results, invitations); the older owner token stops working."""
    from fedsynth.webapp.study import StudyError

    try:
        inv = _tokens(run_dir, db).issue_owner(days=days)
    except StudyError as err:
        raise _user_error(err) from None
    console.print(f"owner token, valid until {inv.expires}; shown this once, keep it private:",
                  highlight=False, markup=False, soft_wrap=True)
    typer.echo(inv.url(url))
    typer.echo(f"token (JSON API, Authorization: Bearer): {inv.token}")
