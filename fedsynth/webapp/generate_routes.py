"""Synthetic X-rays to a specification, in the browser: ``GET /generate`` and ``GET /api/generate``.

The page samples up to ``MAX_IMAGES`` images of one class from one of the run's generators
(the federation's global one, or in a simulation each site's own) and, when asked, edits
them towards the other class at a strength, showing each pair with the run classifier's
pneumonia probability before and after and the SSIM to the source. Synthetic only: no
real image is read. Requests change nothing, so they are plain GETs (no CSRF token); every
parameter is checked and a bad one is answered with 400 naming it.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from fedsynth.config import check_label_set
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.rundir import GENERATOR_FILE, RunDir
from fedsynth.webapp.context import AppContext
from fedsynth.webapp.scoring import b64, png_bytes, upscale

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


def generate_router(ctx: AppContext, run_dir: Path) -> APIRouter:
    router = APIRouter()
    sources = available_generators(run_dir)
    classes = run_label_set(run_dir)
    loaded: dict[str, Any] = {}

    def generator(name: str):
        if name not in loaded:
            from fedsynth.generators import load_generator

            loaded[name] = load_generator(sources[name], device="cpu")
        return loaded[name]

    def run(req: dict[str, Any]) -> dict[str, Any]:
        from fedsynth.evaluation.editing import ssim

        gen = generator(req["source"])
        cls = classes.index(req["label"])
        clf = ctx.classifier
        scored = clf.resolution == gen.resolution

        def scores(x: np.ndarray) -> list[float] | None:
            return clf.predict_proba(x).astype(float).tolist() if scored else None

        out: dict[str, Any] = {"request": req, "family": gen.family, "resolution": gen.resolution,
                               "threshold": clf.threshold, "synthetic": True}
        if req["edit_to"] is None:
            images = gen.sample(req["n"], cls, seed=req["seed"])
            out["images"] = [{"png_base64": b64(png_bytes(upscale(im))), "score": s}
                             for im, s in zip(images, scores(images) or [None] * len(images))]
            return out
        try:
            src, edited = gen.edit(req["n"], cls, classes.index(req["edit_to"]), req["strength"],
                                   seed=req["seed"])
        except NotImplementedError as err:
            raise BadRequest(str(err)) from None
        before, after = scores(src) or [None] * len(src), scores(edited) or [None] * len(src)
        out["images"] = [{"png_base64": b64(png_bytes(upscale(a))), "edited_png_base64": b64(png_bytes(upscale(b))),
                          "score": s0, "edited_score": s1, "ssim": ssim(a, b)}
                         for a, b, s0, s1 in zip(src, edited, before, after)]
        return out

    def form(req: dict[str, Any] | None) -> str:
        req = req or {"source": next(iter(sources), ""), "label": classes[-1], "edit_to": None, "strength": 0.5,
                      "n": 8, "seed": 0}

        def options(values, chosen) -> str:
            return "".join(f"<option value='{escape(v)}'{' selected' if v == chosen else ''}>{escape(v or '–')}"
                           "</option>" for v in values)

        return f"""
<h1>Synthetic X-rays to a specification</h1>
<div class="card"><form method="get" action="/generate" id="generate-form">
  <label>generator <select name="source">{options(list(sources), req['source'])}</select></label>
  <label>class <select name="label">{options(classes, req['label'])}</select></label>
  <label>images <input type="number" name="n" min="1" max="{MAX_IMAGES}" value="{req['n']}"></label>
  <label>edit to <select name="edit_to">{options(['', *classes], req['edit_to'] or '')}</select></label>
  <label>strength <input type="number" name="strength" min="0" max="1" step="0.05" value="{req['strength']}">
  </label>
  <label>seed <input type="number" name="seed" min="0" value="{req['seed']}"></label>
  <button type="submit" id="generate-button">Generate</button>
</form>
<p><small>Synthetic images only, sampled from the run's generators; nothing real is shown. The same seed draws
the same images. JSON: <code>/api/generate?label=pneumonia&amp;n=4</code></small></p></div>"""

    def figures(result: dict[str, Any]) -> str:
        def p(x) -> str:
            return "–" if x is None else f"{x:.3f}"

        cells = []
        for i, im in enumerate(result["images"]):
            if "edited_png_base64" in im:
                cells.append(f"""<figure class="pair"><img class="view" alt="synthetic {i + 1}"
  src="data:image/png;base64,{im['png_base64']}"><img class="view" alt="edited {i + 1}"
  src="data:image/png;base64,{im['edited_png_base64']}"><figcaption>pneumonia {p(im['score'])} &rarr;
  {p(im['edited_score'])}; SSIM {im['ssim']:.3f}</figcaption></figure>""")
            else:
                cells.append(f"""<figure><img class="view" alt="synthetic {i + 1}"
  src="data:image/png;base64,{im['png_base64']}"><figcaption>pneumonia {p(im['score'])}</figcaption></figure>""")
        req = result["request"]
        what = (f"{req['label']} edited to {req['edit_to']} at strength {req['strength']:g}" if req["edit_to"]
                else f"{req['label']}")
        return (f"<div class='card' id='generated'><h2>{len(result['images'])} synthetic {escape(what)} "
                f"({escape(result['family'])}, {result['resolution']} px, {escape(req['source'])})</h2>"
                f"<div class='row'>{''.join(cells)}</div><p><small>Classifier threshold {result['threshold']:.3f}. "
                "Synthetic images: for teaching and testing, not for diagnosis.</small></p></div>")

    @router.get("/generate", response_class=HTMLResponse)
    async def generate_page(request: Request) -> HTMLResponse:
        params = dict(request.query_params)
        if not sources:
            return ctx.page("Generate", "<div class='error'>This run directory holds no generator.</div>", 404)
        if "label" not in params:
            return ctx.page("Generate", form(None))
        try:
            req = parse_request(params, sources, classes)
            result = await run_in_threadpool(run, req)
        except BadRequest as err:
            return ctx.page("Generate", f"<div class='error' id='error'>{escape(str(err))}</div>" + form(None), 400)
        return ctx.page("Generate", form(req) + figures(result))

    @router.get("/api/generate")
    async def api_generate(request: Request) -> JSONResponse:
        if not sources:
            return ctx.problem("this run directory holds no generator", 404)
        try:
            req = parse_request(dict(request.query_params), sources, classes)
            return ctx.answer(await run_in_threadpool(run, req))
        except BadRequest as err:
            return ctx.problem(str(err), 400)

    return router
