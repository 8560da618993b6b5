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

from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedsynth import __version__
from fedsynth.errors import DataError
from fedsynth.rundir import RunDir, RunDirError
from fedsynth.webapp.context import PHANTOM_WARNING, AppContext
from fedsynth.webapp.score_routes import score_router
from fedsynth.webapp.scoring import Scorer
from fedsynth.webapp.study import AnswerStore, build_study_set
from fedsynth.webapp.study_routes import STUDY_OFF, STUDY_VIEW_SIZE, study_router

DB_FILE = "reader_study.sqlite"
__all__ = ["DB_FILE", "PHANTOM_WARNING", "STUDY_OFF", "STUDY_VIEW_SIZE", "create_app"]


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

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    if not max_upload_mb > 0:
        raise DataError(f"max_upload_mb must be positive, not {max_upload_mb}")
    clf = load_run_classifier(run_dir)
    try:
        run = RunDir.open_finished(run_dir)
        metrics = run.read_metrics()
    except RunDirError as err:
        raise DataError(f"{err} (is it a finished fedsynth run directory?)") from None
    ctx = AppContext(run_id=metrics.run_id or run_dir.name, classifier=clf, scorer=Scorer(clf),
                     phantom=bool(clf.meta.get("phantom")) or metrics.data.phantom,
                     max_bytes=int(max_upload_mb * 2**20))
    if real_data is not None:
        real_images, real_labels = _load_real(real_data, clf.resolution)
        ctx.study = build_study_set(real_images, real_labels, run.load_releases(), study_size=study_size, seed=seed)
        ctx.store = AnswerStore(db_path if db_path is not None else run_dir / DB_FILE)

    app = FastAPI(title="fedsynth", version=__version__, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.classifier = clf
    app.state.study = ctx.study
    app.state.store = ctx.store

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api"):
            return ctx.problem(str(exc.detail), exc.status_code)
        return ctx.page("Not found" if exc.status_code == 404 else "Error",
                        f'<div class="error">{escape(str(exc.detail))}</div>', exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return ctx.problem("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 422)

    @app.middleware("http")
    async def no_store(request: Request, call_next):
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"  # scores and study images stay out of caches
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    app.include_router(score_router(ctx))
    app.include_router(study_router(ctx))
    return app
