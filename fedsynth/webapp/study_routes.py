"""Reader-study routes: one image at a time for an invited reader, answers, results.

Who may do what (tokens: :class:`fedsynth.webapp.invitations.TokenStore`; rules: context.py):

* a reader's invitation token: the study pages, its images, the reader's next image, answers
  as that reader (the name comes from the invitation, never from the request);
* the owner's token: results (per reader, and which image is real), images, invitations, and
  the CSV exports of a two-phase study.

A two-phase study (``study_phases=2``, :mod:`fedsynth.webapp.phases`) asks each reader to grade
every image first (phase 1: a class, a confidence, a comment), without a word about synthetic
images on those pages or in that JSON, and only then real or synthetic (phase 2). The same
routes take both; a grade or an answer of the other phase is refused with 409.

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
    Denied,
    bearer_token,
    require_json,
    set_private_cookie,
)
from fedsynth.webapp.invitations import TOKEN_DAYS, Grant
from fedsynth.webapp.phases import PHASE2_NOTICE
from fedsynth.webapp.running_study import RunningStudy, Study
from fedsynth.webapp.scoring import png_bytes, upscale
from fedsynth.webapp.study import GRADES, PhaseError, StudyError, reader_key

STUDY_VIEW_SIZE = 448  # pixels a study image is shown at
FORM_FIELDS = 8  # the answer forms have at most five short fields (csrf, image_id, grade, confidence, comment)

router = APIRouter()


def check_claim(grant: Grant, claimed: Any) -> None:
    """A request may name its reader (older clients did); it must then be the invitation's."""
    if claimed is None or claimed == "":
        return
    if not isinstance(claimed, str) or reader_key(claimed) != grant.reader:
        raise Denied(f"this invitation is {grant.shown_as}'s: it answers as {grant.shown_as} only "
                     "(leave 'reader' out; the name comes from the invitation)", 403)


# ---- pages ------------------------------------------------------------------------------


@router.get("/study", response_class=HTMLResponse)
def study_page(request: Request, study: Study, token: str | None = None, already: str | None = None,
               reader: str | None = None) -> HTMLResponse:
    ctx, two_phase = study.ctx, study.two_phase
    raw = ctx.page_token(request, token, READER_COOKIE)
    if not raw:
        return ctx.page("Reader study", pages.study_invitation_page(n_images=len(study.study), blind=two_phase), 401,
                        blind=two_phase)
    try:
        grant = ctx.grant(raw, "reader", NEEDS_READER)
        check_claim(grant, reader)
    except Denied as err:
        return ctx.page("Reader study", pages.study_invitation_page(error=str(err), blind=two_phase),
                        err.status, blind=two_phase)
    nxt = study.next_json(grant)
    if nxt["done"]:
        response = ctx.page("Reader study", pages.study_done_page(reader=grant.shown_as or "",
                                                                  n_images=len(study.study),
                                                                  phases=ctx.study_phases))
    else:
        response = ctx.page("Reader study", _image_page(study, grant, nxt, already),
                            blind=two_phase and nxt["phase"] == 1)
    if token is not None:  # the link's token: keep it in the cookie from now on
        set_private_cookie(response, request, READER_COOKIE, raw, STUDY_PATH)
    return response


def _image_page(study: RunningStudy, grant: Grant, nxt: dict[str, Any], already: str | None) -> str:
    """The body of the reader's next image: a grade in phase 1 of a two-phase study, else real or synthetic."""
    shown = {"reader": grant.shown_as or "", "image_id": nxt["image"]["id"], "position": nxt["image"]["position"],
             "n_images": len(study.study), "csrf": study.ctx.csrf_for("reader", grant.token_hash)}
    if study.two_phase and nxt["phase"] == 1:
        notice = f"You had already graded image {already[:40]}; your first grade is kept." if already else None
        return pages.study_grade_page(**shown, labels=GRADES, notice=notice)
    notice = f"You had already answered image {already[:40]}; your first answer is kept." if already else None
    if study.two_phase:
        return pages.study_reveal_page(**shown, intro=PHASE2_NOTICE, notice=notice)
    return pages.study_image_page(**shown, notice=notice)


@router.post("/study/answer")
async def study_answer_form(request: Request, study: Study) -> Response:
    ctx = study.ctx
    form = await request.form(max_files=0, max_fields=FORM_FIELDS)
    raw = request.cookies.get(READER_COOKIE)
    if not raw:  # a SameSite=Strict cookie: missing on any request another site makes
        raise Denied(NO_READER_COOKIE, 403)
    grant = ctx.grant(raw, "reader", NEEDS_READER)
    ctx.check_csrf(form.get("csrf"), "reader", grant.token_hash)
    check_claim(grant, form.get("reader"))
    image_id = form.get("image_id")
    try:
        await run_in_threadpool(study.record, grant, form.get, form=True)
    except StudyError as err:
        if err.status == 409 and not isinstance(err, PhaseError):
            return RedirectResponse(pages.study_url(already=str(image_id)), 303)
        return ctx.page("Reader study", pages.study_error_page(str(err)), err.status,
                        blind=await run_in_threadpool(study.blind, grant))
    return RedirectResponse(pages.study_url(), 303)


@router.get("/study/image/{image_id}.png")
def study_image(request: Request, image_id: str, study: Study) -> Response:
    ctx = study.ctx
    raw = bearer_token(request) or request.cookies.get(READER_COOKIE) or request.cookies.get(OWNER_COOKIE)
    ctx.grant(raw, None, NEEDS_READER)
    im = study.study.by_id.get(image_id)
    if im is None:
        return ctx.problem(f"no image {image_id[:40]!r} in this study", 404)
    if image_id not in ctx.image_png:
        ctx.image_png[image_id] = png_bytes(upscale(im.pixels / 255.0, STUDY_VIEW_SIZE))
    return Response(ctx.image_png[image_id], media_type="image/png")


@router.get("/study/results", response_class=HTMLResponse)
def results_page(request: Request, study: Study, token: str | None = None) -> HTMLResponse:
    ctx = study.ctx
    raw = ctx.page_token(request, token, OWNER_COOKIE)
    ctx.grant(raw, "owner", NEEDS_OWNER)
    page = pages.study_phase_results_page if study.two_phase else pages.study_results_page
    response = ctx.page("Reader study results", page(study.results()))
    if token is not None:
        set_private_cookie(response, request, OWNER_COOKIE, token, STUDY_PATH)
    return response


@router.get("/study/export/{name}.csv")
def page_export(request: Request, name: str, study: Study) -> Response:
    """The owner's CSV from the results page: the owner's cookie (or a Bearer header), never ?token=."""
    study.ctx.grant(bearer_token(request) or request.cookies.get(OWNER_COOKIE), "owner", NEEDS_OWNER)
    return study.export(name)


# ---- JSON -------------------------------------------------------------------------------


@router.get("/api/study")
def api_study(request: Request, study: Study) -> JSONResponse:
    ctx, images = study.ctx, study.study
    grant = ctx.api_grant(request, None)
    you = {"role": grant.role, "reader": grant.shown_as}
    if study.two_phase and grant.role == "reader":
        you["phase"] = study.phase_of(grant)
    if study.two_phase and you.get("phase") == 1:  # nothing about the second question yet
        return ctx.answer({"enabled": True, "n_images": len(images), "resolution": images.resolution, "phases": 2,
                           "answer_policy": "phase 1: one grade per reader and image; a second grade is "
                                            "refused (409). Phase 2 opens once every image is graded.",
                           "you": you}, blind=True)
    policy = ("one answer per reader and image; a second answer is refused (409)" if not study.two_phase else
              "phase 1: one grade per reader and image, without a word about synthetic images; phase 2, once "
              "every image is graded: real or synthetic, one answer per reader and image; a second grade or "
              "answer is refused (409)")
    return ctx.answer({"enabled": True, "n_images": len(images), "composition": images.counts(),
                       "resolution": images.resolution, "positive_class": "synthetic",
                       "answer_policy": policy, "phases": ctx.study_phases, "you": you})


@router.get("/api/study/next")
def api_next(request: Request, study: Study, reader: str | None = None) -> JSONResponse:
    grant = study.ctx.api_grant(request, "reader")
    check_claim(grant, reader)
    nxt = study.next_json(grant)
    return study.ctx.answer(nxt, blind=study.two_phase and nxt["phase"] == 1)


@router.post("/api/study/answer")
async def api_answer(request: Request, study: Study) -> JSONResponse:
    ctx, two_phase = study.ctx, study.two_phase
    grant = ctx.api_grant(request, "reader")
    require_json(request)
    shape = ('{image_id, grade: ' + "|".join(GRADES) + ', confidence?: 1-5, comment?} in phase 1; '
             '{image_id, answer: real|synthetic, comment?} in phase 2') if two_phase else \
        "{image_id, answer: real|synthetic, pneumonia?: true|false}"
    try:
        body = await request.json()
    except ValueError:
        body = ValueError
    if not two_phase and body is ValueError:
        return ctx.problem(f"send JSON: {shape}", 400)
    if not two_phase and not isinstance(body, dict):
        return ctx.problem("send a JSON object", 400)
    if not isinstance(body, dict):
        hidden = await run_in_threadpool(study.blind, grant)
        if hidden:
            shape = '{image_id, grade: ' + "|".join(GRADES) + ", confidence?: 1-5, comment?}"
        return ctx.problem(f"send a JSON object: {shape}", 400, blind=hidden)
    check_claim(grant, body.get("reader"))
    try:
        stored = await run_in_threadpool(study.record, grant, body.get, form=False)
    except StudyError as err:
        return ctx.problem(str(err), err.status, blind=two_phase and await run_in_threadpool(study.blind, grant))
    nxt = await run_in_threadpool(study.next_json, grant)
    return ctx.answer({"stored": {"reader": grant.shown_as, "image_id": body["image_id"], **stored},
                       "next": nxt}, 201, blind=two_phase and nxt["phase"] == 1)


@router.get("/api/study/results")
def api_results(request: Request, study: Study) -> JSONResponse:
    study.ctx.api_grant(request, "owner")
    return study.ctx.answer(study.results())


@router.get("/api/study/export/{name}.csv")
def api_export(request: Request, name: str, study: Study) -> Response:
    """The owner's CSV of one phase of a two-phase study (Bearer owner token)."""
    study.ctx.api_grant(request, "owner")
    return study.export(name)


@router.post("/api/study/invitations")
async def api_invite(request: Request, study: Study) -> JSONResponse:
    """The owner invites a reader: ``{"reader": NAME, "days"?: 30, "reissue"?: false}`` -> the
    invitation's token and link, shown this once."""
    ctx = study.ctx
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
    try:
        inv = await run_in_threadpool(study.tokens.invite, body.get("reader"), days=days, reissue=reissue)
    except StudyError as err:
        return ctx.problem(str(err), err.status)
    return ctx.answer({"reader": inv.shown_as, "token": inv.token, "url": inv.url(str(request.base_url)),
                       "expires": inv.expires}, 201)
