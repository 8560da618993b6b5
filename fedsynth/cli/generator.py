"""``fedsynth generator pretrain``: a warm-start checkpoint trained on public data only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly, setup_logging
from fedsynth.progress import console

generator_app = typer.Typer(help="Generators: warm starts from public data.", no_args_is_help=True)


@generator_app.command("pretrain")
@friendly
def pretrain(
    config: Optional[Path] = typer.Argument(None, help="Run config whose generator section to pretrain (default: the "
                                            "built-in demo's)."),
    out: Path = typer.Option(..., "--out", "-o", help="The checkpoint to write (use it as generator.init)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value, e.g. --set generator.family=dp-merf"),
    data: str = typer.Option("phantom", "--data", help="'phantom' (procedural, public by construction) or a public "
                             "CXR set (npz or folder) that cannot overlap any site's patients."),
    n: int = typer.Option(2000, "--n", help="Phantoms to draw (with --data phantom)."),
    public_source: str = typer.Option("", "--public-source", help="What the public data is, as the ledger should "
                                      "record it (required unless --data phantom)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantoms and of the training."),
) -> None:
    """Train the configured generator WITHOUT privacy on public data and save it as a warm start
    (generator.init). Never point it at a site's own images: they are not public."""
    from fedsynth.config import load_config
    from fedsynth.errors import ConfigError, DataError
    from fedsynth.generators import build_generator

    setup_logging(False)
    cfg = load_config(config, set_)
    gen_cfg = cfg.generator
    if not hasattr(gen_cfg, "init"):
        raise ConfigError(f"generator.family={gen_cfg.family} has no warm start (it is pretrained already)")
    res = cfg.data.resolution
    if data == "phantom":
        from fedsynth.data.phantom import make_phantoms

        if not 20 <= n <= 100_000:
            raise DataError(f"--n must be between 20 and 100000, not {n}")
        ds = make_phantoms(n, res, seed=seed)
        source = public_source or f"fedsynth procedural phantoms (n={n}, seed={seed}, {res} px)"
    else:
        from fedsynth.data.ingest import load_source

        if not public_source.strip():
            raise DataError("--public-source: say what the public data is (it goes into every site's ledger)")
        ds, _ = load_source(data, res)
        source = public_source
    gen = build_generator(gen_cfg.model_copy(update={"init": ""}), res, seed=seed, device=cfg.run.device)
    report = gen.fit(ds.images, ds.labels)
    digest = gen.save_pretrained(out, source)
    console.print(f"wrote {out} ({gen.family}, {res} px, trained {report.seconds:.0f} s on {len(ds)} public images: "
                  f"{source}); sha256 {digest[:16]}...; use it with --set generator.init={out}", highlight=False)
