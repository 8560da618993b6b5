"""``fedsynth generator pretrain``: a warm-start checkpoint trained on public data only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedsynth.cli.common import friendly
from fedsynth.logging_setup import setup_logging
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


@friendly
def generate(
    source: Path = typer.Argument(..., help="A run directory (its global generator, or a site's with --site) or a "
                                  "generator .safetensors file."),
    label: str = typer.Option(..., "--label", help="The class to sample: normal or pneumonia, "
                              "or a name of the run's finer data.label_set."),
    n: int = typer.Option(16, "--n", help="Number of images."),
    site: Optional[str] = typer.Option(None, "--site", help="A simulated site's own generator (substitution mode)."),
    edit_to: Optional[str] = typer.Option(None, "--edit-to", help="Also change each image to this class, keeping "
                                          "its anatomy (GAN and dp-merf: the same latent code; DDPM: partial "
                                          "re-noising and guided denoising)."),
    strength: float = typer.Option(0.5, "--strength", help="How far an edit goes, 0 (unchanged) to 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draw (the same seed draws the same images)."),
    out: Path = typer.Option(Path("synthetic.npz"), "--out", "-o", help="npz bundle to write (uint8 images, "
                             "labels; with --edit-to also the source images); a PNG grid is written beside it."),
) -> None:
    """Sample synthetic X-rays of one class from a run's generator, or edit them to another class.
    Synthetic only: no real image is read or changed."""
    import json

    import numpy as np

    from fedsynth.errors import DataError
    from fedsynth.evaluation.editing import edit_report, find_generator, load_generator, parse_label, save_images
    from fedsynth.evaluation.grids import image_grid

    if not 1 <= n <= 10_000:
        raise DataError(f"--n must be between 1 and 10000, not {n}")
    if not 0 <= strength <= 1:
        raise DataError(f"--strength must be in [0, 1], not {strength}")
    gen = load_generator(find_generator(source, site), device="cpu")
    cls = parse_label(label, gen.classes)
    grid = out.with_suffix(".png")
    if edit_to is None:
        images = gen.sample(n, cls, seed=seed)
        save_images(out, images, np.full(n, cls), gen.classes)
        image_grid([(f"synthetic {label}", images[:8])], grid, f"{gen.family}: synthetic {label}")
        console.print(f"wrote {n} synthetic {label} images to {out} and {grid}", highlight=False)
        return
    target = parse_label(edit_to, gen.classes)
    clf = None
    run_dir = source if source.is_dir() else None
    if run_dir is not None and (run_dir / "classifier.safetensors").is_file():
        from fedsynth.classifier.train import Classifier

        clf = Classifier.load(run_dir / "classifier.safetensors")
    try:
        src, edited, report = edit_report(gen, n, cls, target, strength, seed, clf)
    except NotImplementedError as err:
        raise DataError(str(err)) from None
    save_images(out, edited, np.full(n, target), gen.classes, source_images=src)
    image_grid([(f"synthetic {label}", src[:8]), (f"edited to {edit_to} ({strength:g})", edited[:8])], grid,
               f"{gen.family}: {label} -> {edit_to}")
    summary = report.summary()
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {out}, {grid} and {out.with_suffix('.json')}: SSIM to source {summary['ssim_mean']:.3f}"
                  + (f", classifier's pneumonia probability {summary['score_before_mean']:.3f} -> "
                     f"{summary['score_after_mean']:.3f}" if clf is not None else "")
                  + (f", P({edit_to}) {summary['target_probability_before_mean']:.3f} -> "
                     f"{summary['target_probability_after_mean']:.3f}" if "target_probability_before_mean" in summary
                     else ""), highlight=False)


@friendly
def stress(
    source: Path = typer.Argument(..., help="A run directory (its global generator, or a site's with --site) or a "
                                  "generator .safetensors file: where the synthetic test images come from."),
    model: Path = typer.Argument(..., help="The model under test: a fedsynth run directory or classifier "
                                 ".safetensors, a TorchScript file (.pt/.pth/.ts) or an ONNX model (.onnx)."),
    site: Optional[str] = typer.Option(None, "--site", help="A simulated site's own generator (substitution mode)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="TorchScript/ONNX: the square input side "
                                             "in pixels (images are resized to it)."),
    input_range: str = typer.Option("unit", "--input-range", help="TorchScript/ONNX: pixel range the model "
                                    "expects: 'unit' [0, 1] or 'symmetric' [-1, 1]. Input shape (N, 1, S, S)."),
    output: str = typer.Option("logit", "--output", help="TorchScript/ONNX: what the model returns per image: "
                               "'logit' or 'probability' (one column, or two class columns)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Decision threshold on the probability "
                                              "(default: a fedsynth classifier's own, else 0.5)."),
    n: int = typer.Option(200, "--n", help="Synthetic images per class."),
    n_edit: int = typer.Option(32, "--n-edit", help="Images edited per direction and strength."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap resamples for the AUROC intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draws."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for stress.json and stress.html "
                                       "(default: stress-<model name>; never overwritten)."),
) -> None:
    """Stress-test a classifier with controlled synthetic X-rays: each label, graded acquisition shifts
    (contrast, gamma, noise, blur, resolution) and edits towards the other class at graded strengths;
    how its scores, decisions and AUROC change along each axis. Synthetic images only."""
    from fedsynth.evaluation.editing import find_generator, load_generator
    from fedsynth.evaluation.stress import check_out_dir, load_model, stress_test, write_stress

    target = check_out_dir(out or Path(f"stress-{model.stem if model.is_file() else model.name}"))
    mut = load_model(model, input_size=input_size, input_range=input_range, output=output, threshold=threshold)
    gen = load_generator(find_generator(source, site), device="cpu")
    result = stress_test(gen, mut, n_per_class=n, n_edit=n_edit, seed=seed, n_boot=bootstrap)
    json_path, html_path = write_stress(target, result)
    u = result["unshifted"]
    worst = max(((k, lv, r["auroc_drop"]) for k, rows in result["shifts"].items() for lv, r in rows.items()),
                key=lambda t: t[2])
    console.print(f"{mut.name}: AUROC {u['auroc']:.3f} on {len(result['classes']) * n} synthetic images; largest drop "
                  f"{worst[2]:.3f} under {worst[0]} {worst[1]}", highlight=False)
    console.print(f"wrote {json_path} and {html_path} (open it in a browser)", highlight=False, soft_wrap=True)
