"""``fedsynth serve``: the web app on a finished run (docs/webapp.md); the app lives in fedsynth.webapp."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly
from fedsynth.logging_setup import setup_logging
from fedsynth.progress import console


@friendly
def serve(
    run_dir: Path = typer.Argument(..., help="A finished run directory (classifier.safetensors, metrics.json)."),
    real_data: Optional[Path] = typer.Option(None, "--real-data", help="The site's real images (npz or folder, as "
                                             "for `data ingest`): turns the reader study on. Use at a site only."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    db: Optional[Path] = typer.Option(None, "--db", help="Reader-study answers (SQLite). "
                                      "Default: RUN_DIR/reader_study.sqlite."),
    max_upload_mb: float = typer.Option(20, "--max-upload-mb", help="Largest upload accepted for scoring."),
    study_size: int = typer.Option(40, "--study-size", help="Reader-study images: half real, half synthetic."),
    seed: int = typer.Option(0, "--seed", help="Seed of the reader study's draw and order."),
    study_phases: int = typer.Option(1, "--study-phases", help="1: readers answer real or synthetic. 2: they first "
                                     "grade every image blind (normal/pneumonia, confidence, comment), then answer "
                                     "real or synthetic on the same images."),
) -> None:
    """Web app: score an X-ray (probability, threshold, Grad-CAM); with --real-data, a reader study by
    invitation (prints the owner's results link once; invite readers with `fedsynth study invite`)."""
    import uvicorn

    from fedsynth.webapp import create_app

    setup_logging(False)
    web = create_app(run_dir, real_data=real_data, db_path=db, max_upload_mb=max_upload_mb, study_size=study_size,
                     seed=seed, study_phases=study_phases)
    study = web.state.study
    base = f"http://{host}:{port}"
    console.print(f"scoring: {base}/", highlight=False, soft_wrap=True)
    if study is None:
        console.print("reader study: off (give --real-data at a site)", highlight=False, soft_wrap=True)
    else:
        # a new owner token at every start (the older one stops working): printed this once, stored hashed
        owner = web.state.tokens.issue_owner()
        phases = ("" if study_phases == 1 else
                  " in two phases (blind grading, then real or synthetic)")
        console.print(f"reader study: {len(study)} images{phases}, by invitation only. Invite each reader with\n"
                      f"  fedsynth study invite {run_dir} --reader NAME" + (f" --db {db}" if db else "")
                      + f" --url {base}\n"
                      f"results (owner only; valid until {owner.expires}, shown this once, keep it private):",
                      highlight=False, soft_wrap=True, markup=False)
        typer.echo(owner.url(base))
        typer.echo(f"owner token (JSON API, Authorization: Bearer): {owner.token}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host} over plain http: anyone who can reach this machine "
                      "can score images" + (", and invitation tokens cross the network unencrypted"
                                            if study is not None else ""), highlight=False)
    # no access log: it would keep readers' names and client addresses beside the answers; no
    # log_config: uvicorn's lines go through fedsynth's own logging (setup_logging above)
    uvicorn.run(web, host=host, port=port, log_level="info", ws="none", access_log=False, log_config=None)
