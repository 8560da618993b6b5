"""Commands about runs: simulate one, rebuild its report, compare runs, score images, evaluate the classifier
on labelled images, show a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from fedsynth import __version__
from fedsynth.cli.common import friendly
from fedsynth.logging_setup import setup_logging
from fedsynth.progress import console

if TYPE_CHECKING:
    from fedsynth.metrics_schema import RunMetrics


def print_results(metrics: RunMetrics) -> None:
    from fedsynth.classifier.metrics import format_metric

    table = Table(title=f"run {metrics.run_id}: classifier trained on synthetic images only, "
                        "tested on each site's real test split")
    for col in ("site", "status", "released", "test n", "AUROC [95% CI]", "AUPR [95% CI]", "sens", "spec"):
        table.add_column(col)
    for name, site in metrics.sites.items():
        ev = site.evaluation
        released = str((site.release or {}).get("n_released", "-"))
        if ev:
            table.add_row(
                name, site.status, released, str(ev.n),
                format_metric(ev.auroc, ev.auroc_ci), format_metric(ev.aupr, ev.aupr_ci),
                format_metric(ev.sensitivity, (None, None)), format_metric(ev.specificity, (None, None)),
            )
        else:
            reason = "; ".join(f.reason for f in site.failures)
            table.add_row(name, f"[red]{site.status}[/]", released, "-", reason[:60], "", "", "")
    pooled = metrics.pooled
    if pooled:
        table.add_row(
            "[bold]pooled[/]", "", "", str(pooled.n), format_metric(pooled.auroc, pooled.auroc_ci),
            format_metric(pooled.aupr, pooled.aupr_ci), format_metric(pooled.sensitivity, (None, None)),
            format_metric(pooled.specificity, (None, None)),
        )
    console.print(table)
    privacy = metrics.privacy.sites
    if privacy:
        ptable = Table(title="privacy, per site (every figure recomputable from runs/<id>/ledgers)")
        for col in ("site", "epsilon (this training)", "delta", "spent / budget", "gate dropped",
                    "membership-inference AUC"):
            ptable.add_column(col)
        for name, p in privacy.items():
            gate = p.gate or {}
            budget = p.budget or {}
            ptable.add_row(
                name, "not private" if p.epsilon is None else f"{p.epsilon:.3g}", "-" if p.delta is None
                else f"{p.delta:.2g}", f"{p.spent_epsilon or 0:.3g} / {budget.get('epsilon', '-')}",
                str(gate.get("dropped", "off")), "-" if p.membership_auc is None else f"{p.membership_auc:.3f}",
            )
        console.print(ptable)
    for w in metrics.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


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
    from fedsynth.rundir import CONFIG_FILE, METRICS_FILE, RunDir
    from fedsynth.simulation import simulate as run

    setup_logging(verbose)
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
    console.print(f"outputs: {run_dir.path}", highlight=False, soft_wrap=True)
    console.print(f"open {run_dir.file('report.html')} in a browser: the whole run on one page", highlight=False,
                  soft_wrap=True)


# ---- report --------------------------------------------------------------------------------------
# `fedsynth report`: rebuild a run's self-contained report.html (fedsynth.evaluation.report).


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

    setup_logging(verbose)
    path = write_report(run_dir, include_real=real_images)
    console.print(f"wrote {path} (open it in a browser)", highlight=False, soft_wrap=True)


# ---- compare -------------------------------------------------------------------------------------
# `fedsynth compare`: one table of key figures across runs (fedsynth.evaluation.compare).


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


@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run directory (or a classifier .safetensors file)."),
    input: Path = typer.Argument(..., help="An npz bundle, a folder of PNG/JPEG/DICOM, or one image file."),
    out: Path = typer.Option(Path("scores.csv"), "--out", "-o", help="CSV to write: one row per input image."),
) -> None:
    """Score images with a run's classifier (preprocessed exactly as in training)."""
    from fedsynth.classifier.predict import check_output_path, load_run_classifier, write_csv
    from fedsynth.classifier.predict import predict as score

    check_output_path(out)  # a bad --out fails before anything is scored
    clf = load_run_classifier(run_dir)
    rows, report = score(clf, input)
    write_csv(rows, out)
    n_ok = sum(r.status == "ok" for r in rows)
    console.print(f"scored {n_ok} image(s) at {clf.resolution} px, threshold {clf.threshold:.3f}; wrote {out}")
    if clf.meta.get("phantom"):
        console.print("[yellow]warning:[/] this classifier was trained on synthetic images made from PHANTOMS")
    if clf.ood is None:
        console.print("note: this classifier has no out-of-distribution reference (saved before fedsynth computed "
                      "one); the ood column is empty", highlight=False)
    else:
        n_ood = sum(bool(r.ood) for r in rows)
        if n_ood:
            console.print(f"[yellow]warning:[/] {n_ood} of {n_ok} image(s) look out of distribution (unlike the "
                          "classifier's training images; ood column): their scores are unreliable", highlight=False)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)


@friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run directory (or a classifier .safetensors file)."),
    data: Path = typer.Argument(..., help="Labelled X-rays: an npz bundle (images, labels) or a folder with "
                                          "labels.csv or NORMAL/ and PNEUMONIA/ folders. Optional metadata for "
                                          "subgroup tables: npz arrays or labels.csv columns source, view, sex, age."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for evaluation.json and evaluation.html. "
                                       "Default: a new folder evaluation-<data name> beside DATA (-2, -3, ... "
                                       "appended when taken). Nothing is ever overwritten: a folder that already "
                                       "holds an evaluation is refused."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the AUROC/AUPR intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Validate a run's classifier on your own labelled X-rays: AUROC/AUPR with CIs, calibration, operating
    points, subgroups, out-of-distribution rate; writes evaluation.json and a self-contained evaluation.html
    (aggregate figures only, no per-image score) into a new folder evaluation-<data name> beside DATA
    unless --out says where.

    DATA: an npz bundle (images, labels) or a folder with labels.csv or NORMAL/ and PNEUMONIA/ folders.

    Subgroups: npz arrays or labels.csv columns source, view, sex, age (banded 0-17, 18-39, 40-64, 65+)."""
    from fedsynth.classifier.metrics import format_metric
    from fedsynth.evaluation.external import run_external_evaluation

    ev = run_external_evaluation(run_dir, data, out, n_boot=bootstrap, seed=seed)
    r = ev.result
    m, cal, ood = r["metrics"], r["calibration"], r["ood"]

    def ci(value, interval):  # None (not computable) reads n/a
        return format_metric(value, tuple(interval))

    console.print(f"evaluated {r['data']['n']} image(s) ({m['n_positive']} pneumonia) at "
                  f"{r['classifier']['resolution']} px: AUROC {ci(m['auroc'], m['auroc_ci'])}, "
                  f"AUPR {ci(m['aupr'], m['aupr_ci'])}", highlight=False)
    console.print(f"at threshold {m['threshold']:.3f}: sensitivity {ci(m['sensitivity'], m['sensitivity_ci'])}, "
                  f"specificity {ci(m['specificity'], m['specificity_ci'])}; ECE {cal['ece']:.3f}, "
                  f"Brier {cal['brier']:.3f}", highlight=False)
    if ood["available"]:
        console.print(f"out of distribution: {ood['n_flagged']} of {r['data']['n']} ({ood['rate']:.1%})",
                      highlight=False)
    for w in r["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for s in ev.report.skipped:
        console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)
    console.print(f"wrote {ev.json_path} and {ev.html_path} (open it in a browser)", highlight=False, soft_wrap=True)


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
