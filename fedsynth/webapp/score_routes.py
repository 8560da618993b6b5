"""Scoring routes: the upload form and its JSON twin, and the app's health.

Scoring needs no study token (it is not the study). The score form is protected against
CSRF: the page sets a random session cookie (HttpOnly, SameSite=Strict) and puts an HMAC of
it in the form; a POST without both, or with another session's token, is refused (403).
``POST /api/score`` stays open to scripts (curl): it changes nothing and returns the score
only to the caller; the app refuses it, like every POST, when a browser marks it cross-site.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

import fedsynth.webapp.pages as pages
from fedsynth import __version__
from fedsynth.presentation import png_base64
from fedsynth.webapp.context import SESSION_COOKIE, AppContext, Context, Denied, set_private_cookie
from fedsynth.webapp.scoring import (
    ACCEPT,
    Score,
    UploadError,
    heat_rgb,
    overlay_rgb,
    png_bytes,
    receive_upload,
    upscale,
)

router = APIRouter()


def score_json(ctx: AppContext, score: Score, filename: str | None) -> dict[str, Any]:
    return {
        "probability": score.probability,
        "threshold": score.threshold,
        "prediction": score.prediction,
        "resolution": score.resolution,
        # null when the run's classifier has no out-of-distribution reference (saved before fedsynth made one)
        "out_of_distribution": score.out_of_distribution,
        "ood_score": score.ood_score,
        "ood_threshold": score.ood_threshold,
        "heatmap_png_base64": png_base64(png_bytes(heat_rgb(score.heatmap))),
        "overlay_png_base64": png_base64(png_bytes(overlay_rgb(score.image, score.heatmap))),
        "image_png_base64": png_base64(png_bytes(upscale(score.image))),
        "filename": filename,
        "run_id": ctx.run_id,
    }


async def score_upload(ctx: AppContext, request: Request) -> tuple[dict[str, Any], str | None]:
    sink = None
    try:
        sink = await receive_upload(request, ctx.max_bytes)
        path, filename = sink.path, sink.filename
        result = await run_in_threadpool(lambda: score_json(ctx, ctx.scorer.score_file(path), filename))
        return result, filename
    finally:
        if sink is not None:
            sink.remove()


def score_page(ctx: AppContext, request: Request, status: int = 200, **kw: Any) -> HTMLResponse:
    """The page, its form signed for this browser's session (a new session when it has none)."""
    session = request.cookies.get(SESSION_COOKIE)
    fresh = not session or len(session) > 100
    if fresh:
        session = secrets.token_urlsafe(32)
    response = ctx.page("Score an X-ray", pages.score_page(
        info=ctx.info, accept=ACCEPT, max_bytes=ctx.max_bytes, csrf=ctx.csrf_for("score", session), **kw), status)
    if fresh:
        set_private_cookie(response, request, SESSION_COOKIE, session, "/")
    return response


@router.get("/", response_class=HTMLResponse)
def index(request: Request, ctx: Context) -> HTMLResponse:
    return score_page(ctx, request)


@router.post("/score", response_class=HTMLResponse)
async def score_form(request: Request, ctx: Context, csrf: str | None = None) -> HTMLResponse:
    try:  # before a byte of the upload is read
        ctx.check_csrf(csrf, "score", request.cookies.get(SESSION_COOKIE))
    except Denied as err:
        return score_page(ctx, request, err.status, error=str(err), error_title="Not scored.")
    try:
        result, filename = await score_upload(ctx, request)
    except UploadError as err:
        return score_page(ctx, request, err.status, error=str(err))
    return score_page(ctx, request, result=result, filename=filename)


@router.post("/api/score")
async def api_score(request: Request, ctx: Context) -> JSONResponse:
    try:
        result, _ = await score_upload(ctx, request)
    except UploadError as err:
        return ctx.problem(str(err), err.status)
    return ctx.answer(result)


@router.get("/api/health")
def health(ctx: Context) -> JSONResponse:
    return ctx.answer({"status": "ok", **ctx.info, "version": __version__, "reader_study": ctx.study is not None,
                       "max_upload_mb": ctx.max_bytes / 2**20})
