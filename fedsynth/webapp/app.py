"""The web app: score an X-ray with a run's classifier; run a reader study at a site.

Every page has a JSON twin under ``/api``. Pages and JSON answers of a run trained on
phantoms say so. Routes (R: a reader's invitation token, O: the owner's; pages take it from
``?token=`` once, then from a cookie; the JSON API from ``Authorization: Bearer``):

========================================  ==  ==============================================
``GET  /``                                    the score page (upload form)
``POST /score``                               form upload -> the score page (CSRF token)
``POST /api/score``                           multipart upload (field ``file``) -> JSON score
``GET  /api/health``                          the run, its classifier, whether the study is on
``GET  /study?token=T``                   R   reader study: one image at a time
``POST /study/answer``                    R   form answer or grade (CSRF token) -> the next image
``GET  /study/image/{id}.png``            RO  a study image, scaled up for viewing
``GET  /study/results?token=T``           O   results per reader and the most-mistaken images
``GET  /api/study``                       RO  the study's size and composition
``GET  /api/study/next``                  R   the reader's phase and next unanswered image
``POST /api/study/answer``                R   JSON ``{image_id, answer, pneumonia?}``; two phases:
                                              ``{image_id, grade, confidence?, comment?}`` in
                                              phase 1, ``{image_id, answer, comment?}`` in phase 2
``GET  /api/study/results``               O   results as JSON
``GET  /api/study/export/phase{1,2}.csv``  O   two phases: one phase's rows as CSV (Bearer)
``GET  /study/export/phase{1,2}.csv``      O   the same, with the results page's cookie
``POST /api/study/invitations``           O   JSON ``{reader, days?, reissue?}`` -> a new token
``GET  /static/fedsynth.{css,js}``            the pages' stylesheet and script
========================================  ==  ==============================================

Every response carries :data:`fedsynth.webapp.context.SECURITY_HEADERS`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import fedsynth.webapp.pages as pages
from fedsynth import __version__
from fedsynth.errors import DataError
from fedsynth.presentation import STYLESHEET, esc
from fedsynth.rundir import RunDir, RunDirError
from fedsynth.webapp.context import (
    CROSS_SITE,
    SECURITY_HEADERS,
    STUDY_OFF,
    AppContext,
    Denied,
    StudyOff,
    app_context,
    wants_json,
)
from fedsynth.webapp.generate_routes import RunGenerators
from fedsynth.webapp.generate_routes import router as generate_router
from fedsynth.webapp.invitations import TokenStore
from fedsynth.webapp.score_routes import router as score_router
from fedsynth.webapp.scoring import Scorer
from fedsynth.webapp.study import DB_FILE, STUDY_PHASES, AnswerStore, build_study_set
from fedsynth.webapp.study_routes import router as study_router

__all__ = ["create_app"]


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
    study_phases: int = 1,
) -> FastAPI:
    """The app for one finished run. The reader study is on only when ``real_data`` (the
    site's own images) is given; its answers go to ``db_path`` (default
    ``<run_dir>/reader_study.sqlite``), beside the hashes of the invitation tokens
    (:class:`TokenStore`; ``app.state.tokens``) that alone open it. ``study_phases``: 1 (real
    or synthetic) or 2 (blind grading first, then real or synthetic: :mod:`fedsynth.webapp.phases`)."""
    run_dir = Path(run_dir)
    ctx, run = _context(run_dir, max_upload_mb, study_phases)
    if real_data is not None:
        real_images, real_labels = _load_real(real_data, ctx.classifier.resolution)
        ctx.study = build_study_set(real_images, real_labels, run.load_releases(), study_size=study_size, seed=seed)
        db = Path(db_path) if db_path is not None else run_dir / DB_FILE
        ctx.store = AnswerStore(db, phases=study_phases)
        ctx.tokens = TokenStore(db)
        ctx.csrf_key = ctx.tokens.derive_key("csrf")  # a reader's open page stays valid across restarts

    # No docs UI: FastAPI's Swagger UI and ReDoc load scripts from a public CDN, which the CSP
    # forbids and a hospital network should not be asked to reach. No /api/openapi.json either:
    # nothing uses it (the routes take raw requests, so the schema would document little), and
    # docs/webapp.md is the API's reference.
    app = FastAPI(title="fedsynth", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = ctx
    app.state.generators = RunGenerators.of_run(run_dir)
    app.state.classifier = ctx.classifier
    app.state.study = ctx.study
    app.state.store = ctx.store
    app.state.tokens = ctx.tokens
    app.state.study_phases = study_phases
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Denied, denied)
    app.add_exception_handler(StudyOff, study_off)
    app.middleware("http")(security_headers)
    for router in (static_router, score_router, generate_router, study_router):
        app.include_router(router)
    return app


def _context(run_dir: Path, max_upload_mb: float, study_phases: int) -> tuple[AppContext, RunDir]:
    """The context of a finished run's app (its classifier, id, limits) and the run; DataError naming
    what is wrong."""
    from fedsynth.classifier.predict import load_run_classifier

    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    if not max_upload_mb > 0:
        raise DataError(f"max_upload_mb must be positive, not {max_upload_mb}")
    if isinstance(study_phases, bool) or study_phases not in STUDY_PHASES:
        raise DataError(f"a reader study has 1 or 2 phases (--study-phases), not {study_phases!r}")
    clf = load_run_classifier(run_dir)
    try:
        run = RunDir.open_finished(run_dir)
        metrics = run.read_metrics()
    except RunDirError as err:
        raise DataError(f"{err} (is it a finished fedsynth run directory?)") from None
    ctx = AppContext(run_id=metrics.run_id or run_dir.name, classifier=clf, scorer=Scorer(clf),
                     phantom=bool(clf.meta.get("phantom")) or metrics.data.phantom,
                     max_bytes=int(max_upload_mb * 2**20), study_phases=study_phases)
    return ctx, run


# ---- what every request shares ------------------------------------------------------------------


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    ctx = app_context(request)
    if request.url.path.startswith("/api"):
        return ctx.problem(str(exc.detail), exc.status_code)
    return ctx.page("Not found" if exc.status_code == 404 else "Error",
                    f'<div class="error">{esc(str(exc.detail))}</div>', exc.status_code)


async def invalid(request: Request, exc: RequestValidationError) -> Response:
    ctx = app_context(request)
    return ctx.problem("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 422)


async def denied(request: Request, exc: Denied) -> Response:
    ctx = app_context(request)
    blind = ctx.reader_path(request.url.path)
    if wants_json(request.url.path):
        return ctx.problem(str(exc), exc.status, blind=blind)
    return ctx.page("Not allowed", pages.denied_page(str(exc)), exc.status, blind=blind)


async def study_off(request: Request, exc: StudyOff) -> Response:
    ctx = app_context(request)
    if wants_json(request.url.path):
        return ctx.problem("the reader study is not available here. " + STUDY_OFF, 404)
    title = "Reader study results" if request.url.path == "/study/results" else "Reader study"
    return ctx.page(title, pages.study_disabled_page(STUDY_OFF), 404)


async def security_headers(request: Request, call_next):
    # A browser marks what another site (or another port of this host) makes it send:
    # nothing of that kind may change anything here. Tokens and CSRF tokens are the real
    # protection; this refuses such requests before they are read.
    if request.method not in ("GET", "HEAD", "OPTIONS") and \
            request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        response = await denied(request, Denied(CROSS_SITE, 403))
    else:
        response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    return response


static_router = APIRouter()


@static_router.get("/static/fedsynth.css", include_in_schema=False)
def stylesheet() -> Response:
    return PlainTextResponse(STYLESHEET, media_type="text/css")


@static_router.get("/static/fedsynth.js", include_in_schema=False)
def script() -> Response:
    return PlainTextResponse(pages.SCRIPT, media_type="text/javascript")
