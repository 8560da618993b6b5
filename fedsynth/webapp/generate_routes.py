"""Synthetic X-rays to a specification, in the browser: ``GET /generate`` and ``GET /api/generate``.

The page samples up to ``MAX_IMAGES`` images of one class from one of the run's generators
(the federation's global one, or in a simulation each site's own) and, when asked, edits
them towards the other class at a strength, showing each pair with the run classifier's
pneumonia probability before and after and the SSIM to the source. Synthetic only: no
real image is read. Requests change nothing, so they are plain GETs (no CSRF token); every
parameter is checked and a bad one is answered with 400 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

import fedsynth.webapp.pages as pages
from fedsynth.classifier.train import Classifier
from fedsynth.config import check_label_set
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.presentation import esc, png_base64
from fedsynth.rundir import GENERATOR_FILE, RunDir
from fedsynth.webapp.context import Context
from fedsynth.webapp.scoring import png_bytes, upscale

MAX_IMAGES = 16
FEDERATION = "federation"


class BadRequest(ValueError):
    pass


def available_generators(run_dir: Path) -> dict[str, Path]:
    """Name -> generator file: the run's global generator, then every simulated site's own."""
    run = RunDir(run_dir.resolve(), run_dir.name)
    found = {}
    if run.file(GENERATOR_FILE).is_file():
        found[FEDERATION] = run.file(GENERATOR_FILE)
    if run.sites_dir.is_dir():
        for d in sorted(p for p in run.sites_dir.iterdir() if p.is_dir()):
            if (d / GENERATOR_FILE).is_file():
                found[d.name] = d / GENERATOR_FILE
    return found


def run_label_set(run_dir: Path) -> tuple[str, ...]:
    """The label set the run's generators condition on (its config's data.label_set)."""
    try:
        return check_label_set(RunDir.open(run_dir).read_config().get("data", {}).get("label_set") or CLASS_NAMES)
    except Exception:  # noqa: BLE001 - a run without a readable config was binary
        return CLASS_NAMES


def parse_request(params: dict[str, str], sources: dict[str, Path],
                  classes: tuple[str, ...] = CLASS_NAMES) -> dict[str, Any]:
    """The checked request; BadRequest naming the parameter otherwise."""
    def integer(name: str, default: int, lo: int, hi: int) -> int:
        raw = params.get(name, "")
        try:
            value = int(raw) if raw != "" else default
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, not {raw[:20]!r}") from None
        if not lo <= value <= hi:
            raise BadRequest(f"{name} must be between {lo} and {hi}, not {value}")
        return value

    source = params.get("source") or next(iter(sources), "")
    if source not in sources:
        raise BadRequest(f"source must be one of {', '.join(sources) or '(none: this run kept no generator)'}")
    label = params.get("label", classes[-1])
    if label not in classes:
        raise BadRequest(f"label must be one of {', '.join(classes)}")
    edit_to = params.get("edit_to") or None
    if edit_to is not None and edit_to not in classes:
        raise BadRequest(f"edit_to must be empty or one of {', '.join(classes)}")
    raw = params.get("strength", "")
    try:
        strength = float(raw) if raw != "" else 0.5
    except ValueError:
        raise BadRequest(f"strength must be a number, not {raw[:20]!r}") from None
    if not 0 <= strength <= 1:
        raise BadRequest(f"strength must be in [0, 1], not {strength}")
    return {"source": source, "label": label, "edit_to": edit_to, "strength": strength,
            "n": integer("n", 8, 1, MAX_IMAGES), "seed": integer("seed", 0, 0, 2**31 - 1)}


@dataclass
class RunGenerators:
    """The run's generators as the page offers them: name -> file, the label set they condition on,
    and each one loaded at its first use (kept for the next request)."""

    sources: dict[str, Path]
    classes: tuple[str, ...]
    loaded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_run(cls, run_dir: Path) -> RunGenerators:
        return cls(available_generators(run_dir), run_label_set(run_dir))

    def form(self, req: dict[str, Any] | None = None) -> str:
        """The request form, filled in with ``req`` (the defaults when None)."""
        return pages.generate_form(list(self.sources), self.classes, req, max_images=MAX_IMAGES)

    def generator(self, name: str):
        if name not in self.loaded:
            from fedsynth.generators import load_generator

            self.loaded[name] = load_generator(self.sources[name], device="cpu")
        return self.loaded[name]

    def run(self, req: dict[str, Any], clf: Classifier) -> dict[str, Any]:
        """Sample (or sample and edit) as ``req`` asks; each image with the classifier's score when the
        classifier reads the generator's resolution."""
        from fedsynth.evaluation.editing import ssim

        gen = self.generator(req["source"])
        cls = self.classes.index(req["label"])
        scored = clf.resolution == gen.resolution

        def scores(x: np.ndarray) -> list[float] | None:
            return clf.predict_proba(x).astype(float).tolist() if scored else None

        out: dict[str, Any] = {"request": req, "family": gen.family, "resolution": gen.resolution,
                               "threshold": clf.threshold, "synthetic": True}
        if req["edit_to"] is None:
            images = gen.sample(req["n"], cls, seed=req["seed"])
            out["images"] = [{"png_base64": png_base64(png_bytes(upscale(im))), "score": s}
                             for im, s in zip(images, scores(images) or [None] * len(images))]
            return out
        try:
            src, edited = gen.edit(req["n"], cls, self.classes.index(req["edit_to"]), req["strength"],
                                   seed=req["seed"])
        except NotImplementedError as err:
            raise BadRequest(str(err)) from None
        before, after = scores(src) or [None] * len(src), scores(edited) or [None] * len(src)
        out["images"] = [{"png_base64": png_base64(png_bytes(upscale(a))),
                          "edited_png_base64": png_base64(png_bytes(upscale(b))),
                          "score": s0, "edited_score": s1, "ssim": ssim(a, b)}
                         for a, b, s0, s1 in zip(src, edited, before, after)]
        return out


def run_generators(request: Request) -> RunGenerators:
    """The run's generators (a FastAPI dependency), found once when the app was built."""
    return request.app.state.generators


Generators = Annotated[RunGenerators, Depends(run_generators)]
router = APIRouter()


@router.get("/generate", response_class=HTMLResponse)
async def generate_page(request: Request, ctx: Context, gens: Generators) -> HTMLResponse:
    params = dict(request.query_params)
    if not gens.sources:
        return ctx.page("Generate", "<div class='error'>This run directory holds no generator.</div>", 404)
    if "label" not in params:
        return ctx.page("Generate", gens.form())
    try:
        req = parse_request(params, gens.sources, gens.classes)
        result = await run_in_threadpool(gens.run, req, ctx.classifier)
    except BadRequest as err:
        return ctx.page("Generate", f"<div class='error' id='error'>{esc(str(err))}</div>" + gens.form(), 400)
    return ctx.page("Generate", gens.form(req) + pages.generated_images(result))


@router.get("/api/generate")
async def api_generate(request: Request, ctx: Context, gens: Generators) -> JSONResponse:
    if not gens.sources:
        return ctx.problem("this run directory holds no generator", 404)
    try:
        req = parse_request(dict(request.query_params), gens.sources, gens.classes)
        return ctx.answer(await run_in_threadpool(gens.run, req, ctx.classifier))
    except BadRequest as err:
        return ctx.problem(str(err), 400)
