"""Reader-study routes: one image at a time for a named reader, answers, results."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

import fedsynth.webapp.pages as pages
from fedsynth.webapp.context import AppContext
from fedsynth.webapp.scoring import png_bytes, upscale
from fedsynth.webapp.study import ANSWERS, StudyError, next_image, study_results, validate_reader

STUDY_VIEW_SIZE = 448  # pixels a study image is shown at
STUDY_OFF = ("It runs at a site, where the real images are: start the app there with "
             "`fedsynth serve RUN_DIR --real-data PATH` (PATH: the site's images, an npz bundle or a folder, "
             "as for `fedsynth data ingest`).")


def parse_pneumonia(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    raise StudyError("pneumonia must be yes, no or left out")


def study_router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    off_page = lambda title: ctx.page(title, pages.study_disabled_page(STUDY_OFF), 404)  # noqa: E731
    off_json = lambda: ctx.problem("the reader study is not available here. " + STUDY_OFF, 404)  # noqa: E731

    def next_json(reader: str) -> dict[str, Any]:
        assert ctx.study is not None and ctx.store is not None
        image, n_done = next_image(ctx.study, ctx.store, reader)
        return {"reader": reader, "answered": n_done, "n_images": len(ctx.study), "done": image is None,
                "image": None if image is None else {"id": image.id, "url": f"/study/image/{image.id}.png",
                                                     "position": n_done + 1}}

    def record(reader: Any, image_id: Any, given: Any, pneumonia: Any) -> str:
        assert ctx.study is not None and ctx.store is not None
        name = validate_reader(reader if isinstance(reader, str) else None)
        if not isinstance(image_id, str) or image_id not in ctx.study.by_id:
            raise StudyError(f"no image {image_id!r} in this study", 404)
        if given not in ANSWERS:
            raise StudyError("answer must be 'real' or 'synthetic'")
        ctx.store.add(name, image_id, given, parse_pneumonia(pneumonia))
        return name

    @router.get("/study", response_class=HTMLResponse)
    def study_page(reader: str | None = None, already: str | None = None) -> HTMLResponse:
        if (s := ctx.study_or_none()) is None:
            return off_page("Reader study")
        if reader is None:
            return ctx.page("Reader study", pages.study_start_page(n_images=len(s[0])))
        try:
            name = validate_reader(reader)
        except StudyError as err:
            return ctx.page("Reader study", pages.study_start_page(n_images=len(s[0]), error=str(err),
                                                                   reader=reader), err.status)
        nxt = next_json(name)
        if nxt["done"]:
            return ctx.page("Reader study", pages.study_done_page(reader=name, n_images=len(s[0])))
        notice = f"You had already answered image {already}; your first answer is kept." if already else None
        return ctx.page("Reader study", pages.study_image_page(reader=name, image_id=nxt["image"]["id"],
                                                               position=nxt["image"]["position"],
                                                               n_images=len(s[0]), notice=notice))

    @router.post("/study/answer")
    async def study_answer_form(request: Request) -> Response:
        if (s := ctx.study_or_none()) is None:
            return off_page("Reader study")
        form = await request.form(max_files=0, max_fields=8)  # four short fields, never a file
        reader, image_id = form.get("reader"), form.get("image_id")
        try:
            name = await run_in_threadpool(record, reader, image_id, form.get("answer"), form.get("pneumonia"))
        except StudyError as err:
            if err.status == 409:
                return RedirectResponse(pages.reader_url(str(reader).strip(), already=str(image_id)), 303)
            return ctx.page("Reader study", pages.study_start_page(n_images=len(s[0]), error=str(err),
                                                                   reader=str(reader or "")), err.status)
        return RedirectResponse(pages.reader_url(name), 303)

    @router.get("/study/image/{image_id}.png")
    def study_image(image_id: str) -> Response:
        if ctx.study is None:
            return off_json()
        im = ctx.study.by_id.get(image_id)
        if im is None:
            return ctx.problem(f"no image {image_id!r} in this study", 404)
        if image_id not in ctx.image_png:
            ctx.image_png[image_id] = png_bytes(upscale(im.pixels / 255.0, STUDY_VIEW_SIZE))
        return Response(ctx.image_png[image_id], media_type="image/png")

    @router.get("/study/results", response_class=HTMLResponse)
    def results_page() -> HTMLResponse:
        if (s := ctx.study_or_none()) is None:
            return off_page("Reader study results")
        return ctx.page("Reader study results", pages.study_results_page(study_results(s[0], s[1].all())))

    @router.get("/api/study")
    def api_study() -> JSONResponse:
        if (s := ctx.study_or_none()) is None:
            return off_json()
        return ctx.answer({"enabled": True, "n_images": len(s[0]), "composition": s[0].counts(),
                           "resolution": s[0].resolution, "positive_class": "synthetic",
                           "answer_policy": "one answer per reader and image; a second answer is refused (409)"})

    @router.get("/api/study/next")
    def api_next(reader: str = "") -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        try:
            return ctx.answer(next_json(validate_reader(reader)))
        except StudyError as err:
            return ctx.problem(str(err), err.status)

    @router.post("/api/study/answer")
    async def api_answer(request: Request) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        try:
            body = await request.json()
        except ValueError:
            return ctx.problem("send JSON: {reader, image_id, answer: real|synthetic, pneumonia?: true|false}", 400)
        if not isinstance(body, dict):
            return ctx.problem("send a JSON object", 400)
        try:
            name = await run_in_threadpool(record, body.get("reader"), body.get("image_id"), body.get("answer"),
                                           body.get("pneumonia"))
        except StudyError as err:
            return ctx.problem(str(err), err.status)
        return ctx.answer({"stored": {"reader": name, "image_id": body["image_id"], "answer": body["answer"]},
                           "next": next_json(name)}, 201)

    @router.get("/api/study/results")
    def api_results() -> JSONResponse:
        if (s := ctx.study_or_none()) is None:
            return off_json()
        return ctx.answer(study_results(s[0], s[1].all()))

    return router
