"""Reader-study routes: one image at a time for an invited reader, answers, results.

Who may do what (tokens: :class:`fedsynth.webapp.invitations.TokenStore`; rules: context.py):

* a reader's invitation token: the study pages, its images, the reader's next image, answers
  as that reader (the name comes from the invitation, never from the request);
* the owner's token: results (per reader, and which image is real), images, invitations.

Pages take the token from the link's ``?token=`` once and keep it in a cookie; the JSON API
takes it from ``Authorization: Bearer`` only. The answer form carries a CSRF token (an HMAC
of the reader's token); JSON POSTs must be ``application/json``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

import fedsynth.webapp.pages as pages
from fedsynth.webapp.context import (
    NEEDS_OWNER,
    NEEDS_READER,
    NO_READER_COOKIE,
    OWNER_COOKIE,
    READER_COOKIE,
    STUDY_PATH,
    AppContext,
    Denied,
    bearer_token,
    require_json,
    set_private_cookie,
)
from fedsynth.webapp.invitations import TOKEN_DAYS, Grant
from fedsynth.webapp.scoring import png_bytes, upscale
from fedsynth.webapp.study import (
    ANSWERS,
    StudyError,
    next_image,
    reader_key,
    study_results,
)

STUDY_VIEW_SIZE = 448  # pixels a study image is shown at
STUDY_OFF = ("It runs at a site, where the real images are: start the app there with "
             "`fedsynth serve RUN_DIR --real-data PATH` (PATH: the site's images, an npz bundle or a folder, "
             "as for `fedsynth data ingest`).")
FORM_FIELDS = 8  # the answer form has four short fields, never a file


def parse_pneumonia(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    raise StudyError("pneumonia must be yes, no or left out")


def check_claim(grant: Grant, claimed: Any) -> None:
    """A request may name its reader (older clients did); it must then be the invitation's."""
    if claimed is None or claimed == "":
        return
    if not isinstance(claimed, str) or reader_key(claimed) != grant.reader:
        raise Denied(f"this invitation is {grant.shown_as}'s: it answers as {grant.shown_as} only "
                     "(leave 'reader' out; the name comes from the invitation)", 403)


def study_router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    off_page = lambda title: ctx.page(title, pages.study_disabled_page(STUDY_OFF), 404)  # noqa: E731
    off_json = lambda: ctx.problem("the reader study is not available here. " + STUDY_OFF, 404)  # noqa: E731

    def next_json(grant: Grant) -> dict[str, Any]:
        assert ctx.study is not None and ctx.store is not None and grant.reader is not None
        image, n_done = next_image(ctx.study, ctx.store, grant.reader)
        return {"reader": grant.shown_as, "answered": n_done, "n_images": len(ctx.study), "done": image is None,
                "image": None if image is None else {"id": image.id, "url": f"/study/image/{image.id}.png",
                                                     "position": n_done + 1}}

    def record(grant: Grant, image_id: Any, given: Any, pneumonia: Any) -> None:
        assert ctx.study is not None and ctx.store is not None and grant.reader is not None
        if not isinstance(image_id, str) or image_id not in ctx.study.by_id:
            raise StudyError(f"no image {str(image_id)[:40]!r} in this study", 404)
        if not isinstance(given, str) or given not in ANSWERS:
            raise StudyError("answer must be 'real' or 'synthetic'")
        ctx.store.add(grant.reader, image_id, given, parse_pneumonia(pneumonia), shown_as=grant.shown_as)

    def results() -> dict[str, Any]:
        assert ctx.study is not None and ctx.store is not None and ctx.tokens is not None
        return study_results(ctx.study, ctx.store.all(), names=ctx.tokens.names())

    # ---- pages ------------------------------------------------------------------------------

    @router.get("/study", response_class=HTMLResponse)
    def study_page(request: Request, token: str | None = None, already: str | None = None,
                   reader: str | None = None) -> HTMLResponse:
        if (s := ctx.study_or_none()) is None:
            return off_page("Reader study")
        raw = ctx.page_token(request, token, READER_COOKIE)
        if not raw:
            return ctx.page("Reader study", pages.study_invitation_page(n_images=len(s[0])), 401)
        try:
            grant = ctx.grant(raw, "reader", NEEDS_READER)
            check_claim(grant, reader)
        except Denied as err:
            return ctx.page("Reader study", pages.study_invitation_page(error=str(err)), err.status)
        nxt = next_json(grant)
        if nxt["done"]:
            response = ctx.page("Reader study", pages.study_done_page(reader=grant.shown_as or "", n_images=len(s[0])))
        else:
            notice = (f"You had already answered image {already[:40]}; your first answer is kept."
                      if already else None)
            response = ctx.page("Reader study", pages.study_image_page(
                reader=grant.shown_as or "", image_id=nxt["image"]["id"], position=nxt["image"]["position"],
                n_images=len(s[0]), csrf=ctx.csrf_for("reader", grant.token_hash), notice=notice))
        if token is not None:  # the link's token: keep it in the cookie from now on
            set_private_cookie(response, request, READER_COOKIE, raw, STUDY_PATH)
        return response

    @router.post("/study/answer")
    async def study_answer_form(request: Request) -> Response:
        if ctx.study_or_none() is None:
            return off_page("Reader study")
        form = await request.form(max_files=0, max_fields=FORM_FIELDS)
        raw = request.cookies.get(READER_COOKIE)
        if not raw:  # a SameSite=Strict cookie: missing on any request another site makes
            raise Denied(NO_READER_COOKIE, 403)
        grant = ctx.grant(raw, "reader", NEEDS_READER)
        ctx.check_csrf(form.get("csrf"), "reader", grant.token_hash)
        check_claim(grant, form.get("reader"))
        image_id = form.get("image_id")
        try:
            await run_in_threadpool(record, grant, image_id, form.get("answer"), form.get("pneumonia"))
        except StudyError as err:
            if err.status == 409:
                return RedirectResponse(pages.study_url(already=str(image_id)), 303)
            return ctx.page("Reader study", pages.study_error_page(str(err)), err.status)
        return RedirectResponse(pages.study_url(), 303)

    @router.get("/study/image/{image_id}.png")
    def study_image(request: Request, image_id: str) -> Response:
        if ctx.study is None:
            return off_json()
        raw = bearer_token(request) or request.cookies.get(READER_COOKIE) or request.cookies.get(OWNER_COOKIE)
        ctx.grant(raw, None, NEEDS_READER)
        im = ctx.study.by_id.get(image_id)
        if im is None:
            return ctx.problem(f"no image {image_id[:40]!r} in this study", 404)
        if image_id not in ctx.image_png:
            ctx.image_png[image_id] = png_bytes(upscale(im.pixels / 255.0, STUDY_VIEW_SIZE))
        return Response(ctx.image_png[image_id], media_type="image/png")

    @router.get("/study/results", response_class=HTMLResponse)
    def results_page(request: Request, token: str | None = None) -> HTMLResponse:
        if ctx.study_or_none() is None:
            return off_page("Reader study results")
        raw = ctx.page_token(request, token, OWNER_COOKIE)
        ctx.grant(raw, "owner", NEEDS_OWNER)
        response = ctx.page("Reader study results", pages.study_results_page(results()))
        if token is not None:
            set_private_cookie(response, request, OWNER_COOKIE, token, STUDY_PATH)
        return response

    # ---- JSON -------------------------------------------------------------------------------

    @router.get("/api/study")
    def api_study(request: Request) -> JSONResponse:
        if (s := ctx.study_or_none()) is None:
            return off_json()
        grant = ctx.api_grant(request, None)
        return ctx.answer({"enabled": True, "n_images": len(s[0]), "composition": s[0].counts(),
                           "resolution": s[0].resolution, "positive_class": "synthetic",
                           "answer_policy": "one answer per reader and image; a second answer is refused (409)",
                           "you": {"role": grant.role, "reader": grant.shown_as}})

    @router.get("/api/study/next")
    def api_next(request: Request, reader: str | None = None) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        grant = ctx.api_grant(request, "reader")
        check_claim(grant, reader)
        return ctx.answer(next_json(grant))

    @router.post("/api/study/answer")
    async def api_answer(request: Request) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        grant = ctx.api_grant(request, "reader")
        require_json(request)
        try:
            body = await request.json()
        except ValueError:
            return ctx.problem("send JSON: {image_id, answer: real|synthetic, pneumonia?: true|false}", 400)
        if not isinstance(body, dict):
            return ctx.problem("send a JSON object", 400)
        check_claim(grant, body.get("reader"))
        try:
            await run_in_threadpool(record, grant, body.get("image_id"), body.get("answer"), body.get("pneumonia"))
        except StudyError as err:
            return ctx.problem(str(err), err.status)
        return ctx.answer({"stored": {"reader": grant.shown_as, "image_id": body["image_id"],
                                      "answer": body["answer"]}, "next": next_json(grant)}, 201)

    @router.get("/api/study/results")
    def api_results(request: Request) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        ctx.api_grant(request, "owner")
        return ctx.answer(results())

    @router.post("/api/study/invitations")
    async def api_invite(request: Request) -> JSONResponse:
        """The owner invites a reader: ``{"reader": NAME, "days"?: 30, "reissue"?: false}`` -> the
        invitation's token and link, shown this once."""
        if ctx.study_or_none() is None:
            return off_json()
        ctx.api_grant(request, "owner")
        require_json(request)
        try:
            body = await request.json()
        except ValueError:
            return ctx.problem('send JSON: {"reader": NAME, "days"?: number, "reissue"?: true|false}', 400)
        if not isinstance(body, dict):
            return ctx.problem("send a JSON object", 400)
        days, reissue = body.get("days", TOKEN_DAYS), body.get("reissue", False)
        if isinstance(days, bool) or not isinstance(days, (int, float)):
            return ctx.problem("days must be a number", 400)  # the store checks its range
        if not isinstance(reissue, bool):
            return ctx.problem("reissue must be true or false", 400)
        assert ctx.tokens is not None
        try:
            inv = await run_in_threadpool(ctx.tokens.invite, body.get("reader"), days=days, reissue=reissue)
        except StudyError as err:
            return ctx.problem(str(err), err.status)
        return ctx.answer({"reader": inv.shown_as, "token": inv.token, "url": inv.url(str(request.base_url)),
                           "expires": inv.expires}, 201)

    return router

