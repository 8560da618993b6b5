"""The ``fedsynth`` command line. Every command is a thin call into the packages.

Errors a user can cause print one clear message (exit code 2), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.table import Table

from fedsynth import __version__
from fedsynth.errors import FedsynthError
from fedsynth.progress import console

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="fedsynth",
    help="Federated, privacy-focused synthetic chest X-rays: train a pneumonia classifier "
    "on synthetic images that hospitals release instead of their X-rays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Ingest, fetch and generate data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="Site signing keys (Ed25519).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="The privacy officer's tools: verify ledgers, write the audit report.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def friendly(fn: F) -> F:
    """Turn user errors into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedsynthError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("flwr", "ray", "alembic", "matplotlib", "PIL", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"fedsynth {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    pass


# ---- simulate ------------------------------------------------------------------------------


def print_results(metrics: dict) -> None:
    from fedsynth.classifier.metrics import format_metric

    table = Table(title=f"run {metrics['run_id']}: classifier trained on synthetic images only, "
                        "tested on each site's real test split")
    for col in ("site", "status", "released", "test n", "AUROC [95% CI]", "AUPR [95% CI]", "sens", "spec"):
        table.add_column(col)
    for name, site in metrics["sites"].items():
        ev = site.get("evaluation")
        rel = site.get("release", {})
        if ev:
            table.add_row(
                name, site["status"], str(rel.get("n_released", "-")), str(ev["n"]),
                format_metric(ev["auroc"], ev["auroc_ci"]), format_metric(ev["aupr"], ev["aupr_ci"]),
                format_metric(ev["sensitivity"], (None, None)), format_metric(ev["specificity"], (None, None)),
            )
        else:
            reason = "; ".join(f["reason"] for f in site.get("failures", []))
            table.add_row(name, f"[red]{site.get('status', 'failed')}[/]", str(rel.get("n_released", "-")), "-",
                          reason[:60], "", "", "")
    pooled = metrics.get("pooled")
    if pooled:
        table.add_row(
            "[bold]pooled[/]", "", "", str(pooled["n"]), format_metric(pooled["auroc"], pooled["auroc_ci"]),
            format_metric(pooled["aupr"], pooled["aupr_ci"]), format_metric(pooled["sensitivity"], (None, None)),
            format_metric(pooled["specificity"], (None, None)),
        )
    console.print(table)
    privacy = (metrics.get("privacy") or {}).get("sites") or {}
    if privacy:
        ptable = Table(title="privacy, per site (every figure recomputable from runs/<id>/ledgers)")
        for col in ("site", "epsilon (this training)", "delta", "spent / budget", "gate dropped",
                    "membership-inference AUC"):
            ptable.add_column(col)
        for name, p in privacy.items():
            gate = p.get("gate") or {}
            budget = p.get("budget") or {}
            eps = p.get("epsilon")
            ptable.add_row(
                name, "not private" if eps is None else f"{eps:.3g}", "-" if p.get("delta") is None
                else f"{p['delta']:.2g}", f"{p.get('spent_epsilon', 0):.3g} / {budget.get('epsilon', '-')}",
                str(gate.get("dropped", "off")), "-" if p.get("membership_auc") is None
                else f"{p['membership_auc']:.3f}",
            )
        console.print(ptable)
    for w in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command()
@friendly
def simulate(
    config: Optional[Path] = typer.Argument(None, help="Run config (YAML). Default: the built-in demo."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set federation.num_sites=4"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower and Ray logs."),
    engine: str = typer.Option("ray", "--engine", help="ray: Flower's simulation engine; inprocess: no Ray, "
                                                        "sites run one after another in this process."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory "
                                                                  "(federated modes resume after the last round)."),
) -> None:
    """Simulate the whole federation on this machine with Flower's simulation engine."""
    from fedsynth.config import load_config
    from fedsynth.errors import ConfigError
    from fedsynth.progress import epoch_bar
    from fedsynth.server.rundir import CONFIG_FILE, METRICS_FILE, RunDir
    from fedsynth.server.simulation import simulate as run

    _logging(verbose)
    run_dir = None
    if resume is not None:
        if config is not None or set_:
            raise ConfigError("--resume continues a run with its own config.yaml; give no CONFIG or --set")
        run_dir = RunDir.open(resume) if (resume / CONFIG_FILE).is_file() else None
        if run_dir is None:
            raise ConfigError(f"{resume} is not a fedsynth run directory")
        if (resume / METRICS_FILE).is_file():
            raise ConfigError(f"{resume} finished already ({METRICS_FILE} exists)")
        config = resume / CONFIG_FILE
        if load_config(config).run.mode not in ("federated", "fedavg-classifier"):
            raise ConfigError("--resume continues the rounds of a federated run; a substitution run has none and "
                              "starting it again would make every site train (and spend budget) a second time")
    if engine not in ("ray", "inprocess"):
        raise ConfigError(f"--engine must be ray or inprocess, not {engine!r}")
    cfg = load_config(config, set_)
    console.print(
        f"fedsynth {__version__}: {cfg.federation.num_sites} sites, mode {cfg.run.mode}, "
        f"data {cfg.data.source} at {cfg.data.resolution} px, generator {cfg.generator.family}"
    )
    run_dir, metrics = run(cfg, run_dir=run_dir, verbose=verbose, progress=epoch_bar, engine=engine)
    print_results(metrics)
    console.print(f"outputs: {run_dir.path}")


# ---- report --------------------------------------------------------------------------------------
# `fedsynth report`: rebuild a run's self-contained report.html (fedsynth.evaluation.report).


@app.command()
@friendly
def report(
    run_dir: Path = typer.Argument(..., help="A finished run directory (with metrics.json)."),
    real_images: bool = typer.Option(True, "--real-images/--no-real-images",
                                     help="Embed the sites' real-vs-synthetic grids (present in simulations only)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show why a part of the report could not be built."),
) -> None:
    """Rebuild RUN_DIR/report.html: one self-contained page (images inlined, no scripts) for clinicians
    and privacy officers."""
    from fedsynth.evaluation.report import write_report

    _logging(verbose)
    path = write_report(run_dir, include_real=real_images)
    console.print(f"wrote {path} (open it in a browser)", highlight=False, soft_wrap=True)


# ---- compare -------------------------------------------------------------------------------------
# `fedsynth compare`: one table of key figures across runs (fedsynth.evaluation.compare).


@app.command()
@friendly
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Finished run directories."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table as Markdown here."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV here (raw numbers)."),
) -> None:
    """One table of key figures across runs: mode, privacy, pooled AUROC/AUPR, baselines, fidelity, cost."""
    from fedsynth.evaluation.compare import COLUMNS, display_rows, write_csv, write_markdown
    from fedsynth.evaluation.compare import compare as summarize_runs

    rows = summarize_runs(run_dirs)
    table = Table(title=f"{len(rows)} run(s): pooled figures over each run's real test splits")
    for column, header in COLUMNS:
        table.add_column(header, overflow="fold", no_wrap=column in ("run_id", "mode"))
    for cells in display_rows(rows):
        table.add_row(*cells)
    console.print(table)
    for path, write in ((out, write_markdown), (csv_path, write_csv)):
        if path is not None:
            console.print(f"wrote {write(rows, path)}", highlight=False, soft_wrap=True)


# ---- predict ---------------------------------------------------------------------------------


@app.command()
@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run directory (or a classifier .safetensors file)."),
    input: Path = typer.Argument(..., help="An npz bundle, a folder of PNG/JPEG/DICOM, or one image file."),
    out: Path = typer.Option(Path("scores.csv"), "--out", "-o", help="CSV to write: one row per input image."),
) -> None:
    """Score images with a run's classifier (preprocessed exactly as in training)."""
    from fedsynth.classifier.predict import load_run_classifier, write_csv
    from fedsynth.classifier.predict import predict as score

    clf = load_run_classifier(run_dir)
    rows, report = score(clf, input)
    write_csv(rows, out)
    n_ok = sum(r.status == "ok" for r in rows)
    console.print(f"scored {n_ok} image(s) at {clf.resolution} px, threshold {clf.threshold:.3f}; wrote {out}")
    if clf.meta.get("phantom"):
        console.print("[yellow]warning:[/] this classifier was trained on synthetic images made from PHANTOMS")
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)


# ---- data ------------------------------------------------------------------------------------


@data_app.command("ingest")
@friendly
def data_ingest(
    source: Path = typer.Argument(..., help="A folder of PNG/JPEG/DICOM (labels.csv or NORMAL/ PNEUMONIA/ folders), "
                                            "or an npz bundle."),
    out: Path = typer.Option(..., "--out", "-o", help="npz bundle to write."),
    resolution: int = typer.Option(64, "--resolution", "-r", help="Output size in pixels (square)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Ingestion report (JSON). "
                                                                  "Default: next to --out."),
) -> None:
    """Read a site's images into one npz bundle; list every skipped file with its reason."""
    from fedsynth.data.dataset import save_npz
    from fedsynth.data.ingest import load_source

    if not 8 <= resolution <= 1024:
        from fedsynth.errors import DataError

        raise DataError(f"--resolution must be between 8 and 1024 pixels, not {resolution}")
    ds, rep = load_source(source, resolution)
    save_npz(ds, str(out))
    report_path = report or out.with_suffix(".ingest.json")
    rep.write(report_path)
    console.print(rep.summary(), highlight=False)
    for s in rep.skipped:
        console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)
    console.print(f"wrote {out} and {report_path}")


@data_app.command("fetch")
@friendly
def data_fetch(
    dataset: str = typer.Argument(..., help="Dataset name: pneumoniamnist."),
    size: int = typer.Option(64, "--size", help="Image size: 28, 64, 128 or 224."),
    out: Path = typer.Option(Path("data"), "--out", "-o", help="Folder to download into."),
    url: Optional[str] = typer.Option(None, "--url", help="Mirror URL (the checksum is still verified)."),
    md5: Optional[str] = typer.Option(None, "--md5", help="Expected MD5 when --url names another file."),
) -> None:
    """Download a public dataset (needs internet), verified by checksum."""
    from fedsynth.data.fetch import fetch_pneumoniamnist
    from fedsynth.errors import DataError

    if dataset.lower() != "pneumoniamnist":
        raise DataError(f"unknown dataset {dataset!r}; available: pneumoniamnist")
    path = fetch_pneumoniamnist(size, out, url=url, md5=md5)
    console.print(f"PneumoniaMNIST {size} px verified at {path}; use it as data.source in a run config")


@data_app.command("phantom")
@friendly
def data_phantom(
    out: Path = typer.Option(..., "--out", "-o", help="npz bundle to write."),
    n: int = typer.Option(200, "--n", help="Number of images."),
    resolution: int = typer.Option(64, "--resolution", "-r"),
    prevalence: float = typer.Option(0.5, "--prevalence"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write procedural phantom CXRs (not medical images) as an npz bundle."""
    from fedsynth.data.dataset import save_npz
    from fedsynth.data.phantom import make_phantoms

    try:
        ds = make_phantoms(n, resolution, prevalence=prevalence, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    save_npz(ds, str(out))
    console.print(f"wrote {n} phantom images ({resolution} px) to {out}")


# ---- keys and audit ------------------------------------------------------------------------


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


# ---- config -----------------------------------------------------------------------------------


@app.command("config")
@friendly
def show_config(
    config: Optional[Path] = typer.Argument(None, help="Run config (YAML). Default: the built-in demo."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the resolved run config (every default filled in)."""
    from fedsynth.config import load_config

    cfg = load_config(config, set_)
    typer.echo(json.dumps(cfg.to_dict(), indent=2) if as_json else cfg.to_yaml())


# ---- serve ---------------------------------------------------------------------------------------
# `fedsynth serve`: the web app on a finished run (docs/webapp.md). The app lives in fedsynth.webapp.


@app.command()
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
) -> None:
    """Web app: score an X-ray (probability, threshold, Grad-CAM); with --real-data, a reader study."""
    import uvicorn

    from fedsynth.webapp import create_app

    web = create_app(run_dir, real_data=real_data, db_path=db, max_upload_mb=max_upload_mb, study_size=study_size,
                     seed=seed)
    study = web.state.study
    console.print(f"scoring: http://{host}:{port}/", highlight=False, soft_wrap=True)
    console.print(f"reader study: http://{host}:{port}/study ({len(study)} images)" if study is not None
                  else "reader study: off (give --real-data at a site)", highlight=False, soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can use the app"
                      + (" and see the site's real study images" if study is not None else ""), highlight=False)
    # no access log: it would keep readers' names and client addresses beside the answers
    uvicorn.run(web, host=host, port=port, log_level="info", ws="none", access_log=False)


# ---- deploy --------------------------------------------------------------------------------------
# The `fedsynth deploy` sub-app: TLS and SuperNode keys for Flower's deployment engine
# (docs/deployment.md). The logic lives in fedsynth.deploy; these commands only call it.

deploy_app = typer.Typer(help="Deployment on Flower's SuperLink/SuperNodes: TLS certificates, SuperNode keys.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


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


if __name__ == "__main__":  # pragma: no cover
    app()
