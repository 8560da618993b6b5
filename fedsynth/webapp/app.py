"""The web app: score an X-ray with a run's classifier; run a reader study at a site.

Every page has a JSON twin under ``/api``. Pages and JSON answers of a run trained on
phantoms say so. Routes:

========================================  ====================================================
``GET  /``                                the score page (upload form)
``POST /score``                           form upload -> the score page with the result
``POST /api/score``                       multipart upload (field ``file``) -> JSON score
``GET  /api/health``                      the run, its classifier, whether the study is on
``GET  /study[?reader=NAME]``             reader study: name form, then one image at a time
``POST /study/answer``                    form answer -> redirect to the reader's next image
``GET  /study/image/{id}.png``            a study image, scaled up for viewing
``GET  /study/results``                   results per reader and the most-mistaken images
``GET  /api/study``                       the study's size and composition
``GET  /api/study/next?reader=NAME``      the reader's next unanswered image
``POST /api/study/answer``                JSON ``{reader, image_id, answer, pneumonia?}``
``GET  /api/study/results``               results as JSON
========================================  ====================================================
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedsynth import __version__
from fedsynth.errors import DataError
from fedsynth.server.rundir import METRICS_FILE
from fedsynth.webapp import pages
from fedsynth.webapp.scoring import (
    ACCEPT,
    Score,
    Scorer,
    UploadError,
    b64,
    heat_rgb,
    overlay_rgb,
    png_bytes,
    receive_upload,
    upscale,
)
from fedsynth.webapp.study import (
    ANSWERS,
    AnswerStore,
    StudyError,
    StudySet,
    build_study_set,
    next_image,
    study_results,
    validate_reader,
)

DB_FILE = "reader_study.sqlite"
STUDY_VIEW_SIZE = 448  # pixels a study image is shown at
PHANTOM_WARNING = ("This run's classifier was trained on synthetic images made from PHANTOMS (procedural drawings, "
                   "not X-rays): its scores mean nothing for real patients, and the study images are not X-rays.")
STUDY_OFF = ("It runs at a site, where the real images are: start the app there with "
             "`fedsynth serve RUN_DIR --real-data PATH` (PATH: the site's images, an npz bundle or a folder, "
             "as for `fedsynth data ingest`).")


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"no {METRICS_FILE} in {run_dir}; is it a finished fedsynth run directory?")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def _load_real(real_data: str | Path, resolution: int):
    """The site's real images at the run's resolution, through the run's preprocessing.
    Labels when the data has them (for the optional pneumonia answers), else None."""
    from fedsynth.data.ingest import load_source

    try:
        ds, _ = load_source(real_data, resolution)
        return ds.images, ds.labels
    except DataError as err:
        if "label" not in str(err):
            raise
    ds, _ = load_source(real_data, resolution, labeled=False)
    return ds.images, None


def create_app(
    run_dir: str | Path,
    *,
    real_data: str | Path | None = None,
    db_path: str | Path | None = None,
    max_upload_mb: float = 20,
    study_size: int = 40,
    seed: int = 0,
) -> FastAPI:
    """The app for one finished run. The reader study is on only when ``real_data`` (the
    site's own images) is given; its answers go to ``db_path`` (default
    ``<run_dir>/reader_study.sqlite``)."""
    from fedsynth.classifier.predict import load_run_classifier
    from fedsynth.server.orchestrator import load_releases

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    if not max_upload_mb > 0:
        raise DataError(f"max_upload_mb must be positive, not {max_upload_mb}")
    clf = load_run_classifier(run_dir)
    metrics = _read_metrics(run_dir)
    phantom = bool(clf.meta.get("phantom")) or bool((metrics.get("data") or {}).get("phantom"))
    warning = PHANTOM_WARNING if phantom else None
    run_id = str(metrics.get("run_id") or run_dir.name)
    max_bytes = int(max_upload_mb * 2**20)
    scorer = Scorer(clf)

    study: StudySet | None = None
    store: AnswerStore | None = None
    if real_data is not None:
        real_images, real_labels = _load_real(real_data, clf.resolution)
        study = build_study_set(real_images, real_labels, load_releases(run_dir), study_size=study_size, seed=seed)
        store = AnswerStore(db_path if db_path is not None else run_dir / DB_FILE)
    image_png: dict[str, bytes] = {}

    info = {"run_id": run_id, "arch": clf.arch, "resolution": clf.resolution, "threshold": clf.threshold,
            "phantom": phantom}

    app = FastAPI(title="fedsynth", version=__version__, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.classifier = clf
    app.state.study = study
    app.state.store = store

    # ---- helpers ----------------------------------------------------------------------------

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(pages.layout(title, body, phantom_warning=warning, run_id=run_id), status_code=status)

    def answer(data: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse({**data, **({"phantom_warning": warning} if warning else {})}, status_code=status)

    def problem(detail: str, status: int) -> JSONResponse:
        return answer({"detail": detail}, status)

    def score_json(score: Score, filename: str | None) -> dict[str, Any]:
        return {
            "probability": score.probability,
            "threshold": score.threshold,
            "prediction": score.prediction,
            "resolution": score.resolution,
            "heatmap_png_base64": b64(png_bytes(heat_rgb(score.heatmap))),
            "overlay_png_base64": b64(png_bytes(overlay_rgb(score.image, score.heatmap))),
            "image_png_base64": b64(png_bytes(upscale(score.image))),
            "filename": filename,
            "run_id": run_id,
        }

    async def score_upload(request: Request) -> tuple[dict[str, Any], str | None]:
        sink = None
        try:
            sink = await receive_upload(request, max_bytes)
            path, filename = sink.path, sink.filename
            result = await run_in_threadpool(lambda: score_json(scorer.score_file(path), filename))
            return result, filename
        finally:
            if sink is not None:
                sink.remove()

    def score_page(status: int = 200, **kw: Any) -> HTMLResponse:
        return page("Score an X-ray", pages.score_page(info=info, accept=ACCEPT, max_bytes=max_bytes, **kw), status)

    def study_or_none() -> tuple[StudySet, AnswerStore] | None:
        return (study, store) if study is not None and store is not None else None

    def next_json(reader: str) -> dict[str, Any]:
        assert study is not None and store is not None
        image, n_done = next_image(study, store, reader)
        return {"reader": reader, "answered": n_done, "n_images": len(study), "done": image is None,
                "image": None if image is None else {"id": image.id, "url": f"/study/image/{image.id}.png",
                                                     "position": n_done + 1}}

    def parse_pneumonia(value: Any) -> bool | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
            return value.lower() in ("yes", "true")
        raise StudyError("pneumonia must be yes, no or left out")

    def record(reader: Any, image_id: Any, given: Any, pneumonia: Any) -> str:
        assert study is not None and store is not None
        name = validate_reader(reader if isinstance(reader, str) else None)
        if not isinstance(image_id, str) or image_id not in study.by_id:
            raise StudyError(f"no image {image_id!r} in this study", 404)
        if given not in ANSWERS:
            raise StudyError("answer must be 'real' or 'synthetic'")
        store.add(name, image_id, given, parse_pneumonia(pneumonia))
        return name

    # ---- errors -----------------------------------------------------------------------------

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api"):
            return problem(str(exc.detail), exc.status_code)
        return page("Not found" if exc.status_code == 404 else "Error",
                    f'<div class="error">{escape(str(exc.detail))}</div>', exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return problem("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 422)

    @app.middleware("http")
    async def no_store(request: Request, call_next):
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"  # scores and study images stay out of caches
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # ---- scoring ----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return score_page()

    @app.post("/score", response_class=HTMLResponse)
    async def score_form(request: Request) -> HTMLResponse:
        try:
            result, filename = await score_upload(request)
        except UploadError as err:
            return score_page(err.status, error=str(err))
        return score_page(result=result, filename=filename)

    @app.post("/api/score")
    async def api_score(request: Request) -> JSONResponse:
        try:
            result, _ = await score_upload(request)
        except UploadError as err:
            return problem(str(err), err.status)
        return answer(result)

    @app.get("/api/health")
    def health() -> JSONResponse:
        return answer({"status": "ok", **info, "version": __version__, "reader_study": study is not None,
                       "max_upload_mb": max_bytes / 2**20})

    # ---- reader study -----------------------------------------------------------------------

    @app.get("/study", response_class=HTMLResponse)
    def study_page(reader: str | None = None, already: str | None = None) -> HTMLResponse:
        if (s := study_or_none()) is None:
            return page("Reader study", pages.study_disabled_page(STUDY_OFF), 404)
        if reader is None:
            return page("Reader study", pages.study_start_page(n_images=len(s[0])))
        try:
            name = validate_reader(reader)
        except StudyError as err:
            return page("Reader study", pages.study_start_page(n_images=len(s[0]), error=str(err), reader=reader),
                        err.status)
        nxt = next_json(name)
        if nxt["done"]:
            return page("Reader study", pages.study_done_page(reader=name, n_images=len(s[0])))
        notice = f"You had already answered image {already}; your first answer is kept." if already else None
        return page("Reader study", pages.study_image_page(reader=name, image_id=nxt["image"]["id"],
                                                           position=nxt["image"]["position"],
                                                           n_images=len(s[0]), notice=notice))

    @app.post("/study/answer")
    async def study_answer_form(request: Request) -> Response:
        if study_or_none() is None:
            return page("Reader study", pages.study_disabled_page(STUDY_OFF), 404)
        form = await request.form(max_files=0, max_fields=8)  # four short fields, never a file
        reader, image_id = form.get("reader"), form.get("image_id")
        try:
            name = await run_in_threadpool(record, reader, image_id, form.get("answer"), form.get("pneumonia"))
        except StudyError as err:
            if err.status == 409:
                return RedirectResponse(pages.reader_url(str(reader).strip(), already=str(image_id)), 303)
            return page("Reader study", pages.study_start_page(n_images=len(study), error=str(err),
                                                               reader=str(reader or "")), err.status)
        return RedirectResponse(pages.reader_url(name), 303)

    @app.get("/study/image/{image_id}.png")
    def study_image(image_id: str) -> Response:
        if study is None:
            return problem("the reader study is not available here. " + STUDY_OFF, 404)
        im = study.by_id.get(image_id)
        if im is None:
            return problem(f"no image {image_id!r} in this study", 404)
        if image_id not in image_png:
            image_png[image_id] = png_bytes(upscale(im.pixels / 255.0, STUDY_VIEW_SIZE))
        return Response(image_png[image_id], media_type="image/png")

    @app.get("/study/results", response_class=HTMLResponse)
    def results_page() -> HTMLResponse:
        if (s := study_or_none()) is None:
            return page("Reader study results", pages.study_disabled_page(STUDY_OFF), 404)
        return page("Reader study results", pages.study_results_page(study_results(s[0], s[1].all())))

    @app.get("/api/study")
    def api_study() -> JSONResponse:
        if (s := study_or_none()) is None:
            return problem("the reader study is not available here. " + STUDY_OFF, 404)
        return answer({"enabled": True, "n_images": len(s[0]), "composition": s[0].counts(),
                       "resolution": s[0].resolution, "positive_class": "synthetic",
                       "answer_policy": "one answer per reader and image; a second answer is refused (409)"})

    @app.get("/api/study/next")
    def api_next(reader: str = "") -> JSONResponse:
        if study_or_none() is None:
            return problem("the reader study is not available here. " + STUDY_OFF, 404)
        try:
            return answer(next_json(validate_reader(reader)))
        except StudyError as err:
            return problem(str(err), err.status)

    @app.post("/api/study/answer")
    async def api_answer(request: Request) -> JSONResponse:
        if study_or_none() is None:
            return problem("the reader study is not available here. " + STUDY_OFF, 404)
        try:
            body = await request.json()
        except ValueError:
            return problem("send JSON: {reader, image_id, answer: real|synthetic, pneumonia?: true|false}", 400)
        if not isinstance(body, dict):
            return problem("send a JSON object", 400)
        try:
            name = await run_in_threadpool(record, body.get("reader"), body.get("image_id"), body.get("answer"),
                                           body.get("pneumonia"))
        except StudyError as err:
            return problem(str(err), err.status)
        return answer({"stored": {"reader": name, "image_id": body["image_id"], "answer": body["answer"]},
                       "next": next_json(name)}, 201)

    @app.get("/api/study/results")
    def api_results() -> JSONResponse:
        if (s := study_or_none()) is None:
            return problem("the reader study is not available here. " + STUDY_OFF, 404)
        return answer(study_results(s[0], s[1].all()))

    return app
