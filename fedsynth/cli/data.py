"""``fedsynth data``: ingest a site's folder, fetch a public dataset, make phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly
from fedsynth.progress import console

data_app = typer.Typer(help="Ingest, fetch and generate data.", no_args_is_help=True)


@data_app.command("ingest")
@friendly
def data_ingest(
    source: Path = typer.Argument(..., help="A folder of PNG/JPEG/DICOM (labels.csv or NORMAL/ PNEUMONIA/ folders), "
                                            "or an npz bundle."),
    out: Path = typer.Option(..., "--out", "-o", help="npz bundle to write."),
    resolution: int = typer.Option(64, "--resolution", "-r", help="Output size in pixels (square)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Ingestion report (JSON). "
                                                                  "Default: next to --out."),
    max_megapixels: Optional[float] = typer.Option(None, "--max-megapixels", help="Skip images whose header "
                                                   "announces more megapixels than this, before decoding them. "
                                                   "Default: fedsynth.data.errors.MAX_PIXELS (64 MP)."),
) -> None:
    """Read a site's images into one npz bundle; list every skipped file with its reason."""
    from fedsynth.data.dataset import save_npz
    from fedsynth.data.ingest import load_source
    from fedsynth.errors import DataError

    if not 8 <= resolution <= 1024:
        raise DataError(f"--resolution must be between 8 and 1024 pixels, not {resolution}")
    if max_megapixels is not None and not 0 < max_megapixels <= 1000:
        raise DataError(f"--max-megapixels must be above 0 and at most 1000, not {max_megapixels}")
    report_path = report or out.with_suffix(".ingest.json")
    for name, path in (("--out", out), ("--report", report_path)):
        _writable(name, path)
    max_pixels = None if max_megapixels is None else int(max_megapixels * 1e6)
    ds, rep = load_source(source, resolution, max_pixels=max_pixels)
    try:
        save_npz(ds, str(out))
        rep.write(report_path)
    except OSError as err:
        raise DataError(f"cannot write {out} or {report_path} ({err.strerror or err})") from None
    console.print(rep.summary(), highlight=False)
    for s in rep.skipped:
        console.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)
    console.print(f"wrote {out} and {report_path}")


def _writable(option: str, path: Path) -> None:
    """A file can be written at ``path`` (its folder is created); DataError before any work otherwise."""
    from fedsynth.errors import DataError

    if path.is_dir():
        raise DataError(f"{option} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{option} {path}: cannot create its folder {path.parent} ({err.strerror or err})") from None


@data_app.command("fetch")
@friendly
def data_fetch(
    dataset: str = typer.Argument(..., help="The dataset to download. Available: pneumoniamnist (MedMNIST's "
                                  "PneumoniaMNIST, the Kermany pediatric set; sizes 28, 64, 128, 224)."),
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
    resolution: int = typer.Option(64, "--resolution", "-r", help="Image size in pixels (square)."),
    prevalence: float = typer.Option(0.5, "--prevalence", help="Share of phantoms drawn with pneumonia."),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawing (the same seed draws the same phantoms)."),
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
