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

from collections.abc import Callable
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
from fedsynth.webapp.phases import (
    PHASE2_NOTICE,
    clean_comment,
    clean_confidence,
    clean_grade,
    phase1_csv,
    phase2_csv,
    study_results,
)
from fedsynth.webapp.scoring import png_bytes, upscale
from fedsynth.webapp.study import (
    ANSWERS,
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    GRADES,
    PhaseError,
    StudyError,
    next_step,
    reader_key,
)

STUDY_VIEW_SIZE = 448  # pixels a study image is shown at
STUDY_OFF = ("It runs at a site, where the real images are: start the app there with "
             "`fedsynth serve RUN_DIR --real-data PATH` (PATH: the site's images, an npz bundle or a folder, "
             "as for `fedsynth data ingest`).")
FORM_FIELDS = 8  # the answer forms have at most five short fields (csrf, image_id, grade, confidence, comment)
EXPORTS = ("phase1", "phase2")
ONE_PHASE_EXPORT = ("this study has one phase: the CSV exports are for two-phase studies "
                    "(fedsynth serve --study-phases 2); the results are at /api/study/results")


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


def given(value: Any) -> bool:
    return value is not None and value != ""


def study_router(ctx: AppContext) -> APIRouter:
    router = APIRouter()
    off_page = lambda title: ctx.page(title, pages.study_disabled_page(STUDY_OFF), 404)  # noqa: E731
    off_json = lambda: ctx.problem("the reader study is not available here. " + STUDY_OFF, 404)  # noqa: E731
    two_phase = ctx.study_phases == 2

    def phase_of(grant: Grant) -> int:
        assert ctx.study is not None and ctx.store is not None and grant.reader is not None
        return next_step(ctx.study, ctx.store, grant.reader)[0]

    def blind(grant: Grant) -> bool:
        """Whether this reader is in phase 1 of a two-phase study (must not read 'synthetic')."""
        return two_phase and phase_of(grant) == 1

    def next_json(grant: Grant) -> dict[str, Any]:
        assert ctx.study is not None and ctx.store is not None and grant.reader is not None
        phase, image, n_done = next_step(ctx.study, ctx.store, grant.reader)
        out: dict[str, Any] = {
            "reader": grant.shown_as, "answered": n_done, "n_images": len(ctx.study), "done": image is None,
            "image": None if image is None else {"id": image.id, "url": f"/study/image/{image.id}.png",
                                                 "position": n_done + 1},
            "phase": phase, "phases": ctx.study_phases}
        if two_phase and phase == 1:
            out["grades"] = list(GRADES)
            out["confidence"] = {"min": CONFIDENCE_MIN, "max": CONFIDENCE_MAX, "optional": True}
        elif two_phase:
            out["answers"] = list(ANSWERS)
            out["notice"] = PHASE2_NOTICE
        return out

    def record(grant: Grant, get: Callable[[str], Any], *, form: bool) -> dict[str, Any]:
        """Validate and store one grade or answer; what was stored. ``get``: a field of the body."""
        assert ctx.study is not None and ctx.store is not None and grant.reader is not None
        image_id = get("image_id")
        if not isinstance(image_id, str) or image_id not in ctx.study.by_id:
            raise StudyError(f"no image {str(image_id)[:40]!r} in this study", 404)
        if not two_phase:
            answer = get("answer")
            if not isinstance(answer, str) or answer not in ANSWERS:
                raise StudyError("answer must be 'real' or 'synthetic'")
            ctx.store.add(grant.reader, image_id, answer, parse_pneumonia(get("pneumonia")),
                          shown_as=grant.shown_as)
            return {"answer": answer}
        grade, answer = get("grade"), get("answer")
        phase, _, n_done = next_step(ctx.study, ctx.store, grant.reader)
        if given(grade) and given(answer):
            raise StudyError("send a grade (phase 1) or an answer (phase 2), not both")
        if given(get("pneumonia")):
            raise StudyError("pneumonia is not asked in a two-phase study: phase 1 grades each image")
        if not given(grade) and not given(answer):
            raise StudyError(f"grade must be one of {', '.join(GRADES)}" if phase == 1
                             else "answer must be 'real' or 'synthetic'")
        n = len(ctx.study)
        # the phase first: a phase-1 reader's refusal never repeats what the second question is
        if given(grade):
            if phase != 1:
                raise PhaseError(f"{grant.shown_as} is in phase 2 (real or synthetic): phase 1 is complete, all "
                                 f"{n} images are graded, and a grade is not changed; answer real or synthetic")
            grade = clean_grade(grade)
            confidence = clean_confidence(get("confidence"), form=form)
            comment = clean_comment(get("comment"))
            ctx.store.add_grade(grant.reader, image_id, grade, confidence, comment, shown_as=grant.shown_as)
            return {"phase": 1, "grade": grade, "confidence": confidence, "comment": comment}
        if phase != 2:
            raise PhaseError(f"{grant.shown_as} is in phase 1 (grading; {n_done} of {n} images graded): this "
                             "answer belongs to phase 2, which opens once every image is graded; send a grade")
        if not isinstance(answer, str) or answer not in ANSWERS:
            raise StudyError("answer must be 'real' or 'synthetic'")
        if given(get("confidence")):
            raise StudyError("confidence belongs to phase-1 grades, not to phase-2 answers")
        comment = clean_comment(get("comment"))
        ctx.store.add(grant.reader, image_id, answer, None, shown_as=grant.shown_as, comment=comment, phase=2)
        return {"phase": 2, "answer": answer, "comment": comment}

    def results() -> dict[str, Any]:
        assert ctx.study is not None and ctx.store is not None and ctx.tokens is not None
        return study_results(ctx.study, ctx.store.all(), names=ctx.tokens.names(), grades=ctx.store.all_grades(),
                             phases=ctx.study_phases)

    def export(name: str) -> Response:
        assert ctx.study is not None and ctx.store is not None and ctx.tokens is not None
        if not two_phase:
            return ctx.problem(ONE_PHASE_EXPORT, 404)
        if name not in EXPORTS:
            return ctx.problem(f"no export {name[:40]!r}: there are phase1.csv and phase2.csv", 404)
        names, grades = ctx.tokens.names(), ctx.store.all_grades()
        text = (phase1_csv(ctx.study, grades, names) if name == "phase1"
                else phase2_csv(ctx.study, ctx.store.all(), grades, names))
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reader-study-{name}.csv"'})

    # ---- pages ------------------------------------------------------------------------------

    @router.get("/study", response_class=HTMLResponse)
    def study_page(request: Request, token: str | None = None, already: str | None = None,
                   reader: str | None = None) -> HTMLResponse:
        if (s := ctx.study_or_none()) is None:
            return off_page("Reader study")
        raw = ctx.page_token(request, token, READER_COOKIE)
        if not raw:
            return ctx.page("Reader study", pages.study_invitation_page(n_images=len(s[0]), blind=two_phase), 401,
                            blind=two_phase)
        try:
            grant = ctx.grant(raw, "reader", NEEDS_READER)
            check_claim(grant, reader)
        except Denied as err:
            return ctx.page("Reader study", pages.study_invitation_page(error=str(err), blind=two_phase),
                            err.status, blind=two_phase)
        nxt = next_json(grant)
        name, n_images = grant.shown_as or "", len(s[0])
        if nxt["done"]:
            response = ctx.page("Reader study", pages.study_done_page(reader=name, n_images=n_images,
                                                                      phases=ctx.study_phases))
        else:
            image_id, position = nxt["image"]["id"], nxt["image"]["position"]
            csrf = ctx.csrf_for("reader", grant.token_hash)
            if two_phase and nxt["phase"] == 1:
                notice = f"You had already graded image {already[:40]}; your first grade is kept." if already else None
                body = pages.study_grade_page(reader=name, image_id=image_id, position=position, n_images=n_images,
                                              csrf=csrf, labels=GRADES, notice=notice)
            else:
                notice = (f"You had already answered image {already[:40]}; your first answer is kept."
                          if already else None)
                page = pages.study_reveal_page if two_phase else pages.study_image_page
                extra = {"intro": PHASE2_NOTICE} if two_phase else {}
                body = page(reader=name, image_id=image_id, position=position, n_images=n_images, csrf=csrf,
                            notice=notice, **extra)
            response = ctx.page("Reader study", body, blind=two_phase and nxt["phase"] == 1)
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
            await run_in_threadpool(record, grant, form.get, form=True)
        except StudyError as err:
            if err.status == 409 and not isinstance(err, PhaseError):
                return RedirectResponse(pages.study_url(already=str(image_id)), 303)
            return ctx.page("Reader study", pages.study_error_page(str(err)), err.status,
                            blind=await run_in_threadpool(blind, grant))
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
        page = pages.study_phase_results_page if two_phase else pages.study_results_page
        response = ctx.page("Reader study results", page(results()))
        if token is not None:
            set_private_cookie(response, request, OWNER_COOKIE, token, STUDY_PATH)
        return response

    # ---- JSON -------------------------------------------------------------------------------

    @router.get("/api/study")
    def api_study(request: Request) -> JSONResponse:
        if (s := ctx.study_or_none()) is None:
            return off_json()
        grant = ctx.api_grant(request, None)
        you = {"role": grant.role, "reader": grant.shown_as}
        if two_phase and grant.role == "reader":
            you["phase"] = phase_of(grant)
        if two_phase and you.get("phase") == 1:  # nothing about the second question yet
            return ctx.answer({"enabled": True, "n_images": len(s[0]), "resolution": s[0].resolution, "phases": 2,
                               "answer_policy": "phase 1: one grade per reader and image; a second grade is "
                                                "refused (409). Phase 2 opens once every image is graded.",
                               "you": you}, blind=True)
        policy = ("one answer per reader and image; a second answer is refused (409)" if not two_phase else
                  "phase 1: one grade per reader and image, without a word about synthetic images; phase 2, once "
                  "every image is graded: real or synthetic, one answer per reader and image; a second grade or "
                  "answer is refused (409)")
        return ctx.answer({"enabled": True, "n_images": len(s[0]), "composition": s[0].counts(),
                           "resolution": s[0].resolution, "positive_class": "synthetic",
                           "answer_policy": policy, "phases": ctx.study_phases, "you": you})

    @router.get("/api/study/next")
    def api_next(request: Request, reader: str | None = None) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        grant = ctx.api_grant(request, "reader")
        check_claim(grant, reader)
        nxt = next_json(grant)
        return ctx.answer(nxt, blind=two_phase and nxt["phase"] == 1)

    @router.post("/api/study/answer")
    async def api_answer(request: Request) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
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
            hidden = await run_in_threadpool(blind, grant)
            if hidden:
                shape = '{image_id, grade: ' + "|".join(GRADES) + ", confidence?: 1-5, comment?}"
            return ctx.problem(f"send a JSON object: {shape}", 400, blind=hidden)
        check_claim(grant, body.get("reader"))
        try:
            stored = await run_in_threadpool(record, grant, body.get, form=False)
        except StudyError as err:
            return ctx.problem(str(err), err.status, blind=two_phase and await run_in_threadpool(blind, grant))
        nxt = await run_in_threadpool(next_json, grant)
        return ctx.answer({"stored": {"reader": grant.shown_as, "image_id": body["image_id"], **stored},
                           "next": nxt}, 201, blind=two_phase and nxt["phase"] == 1)

    @router.get("/api/study/results")
    def api_results(request: Request) -> JSONResponse:
        if ctx.study_or_none() is None:
            return off_json()
        ctx.api_grant(request, "owner")
        return ctx.answer(results())

    @router.get("/api/study/export/{name}.csv")
    def api_export(request: Request, name: str) -> Response:
        """The owner's CSV of one phase of a two-phase study (Bearer owner token)."""
        if ctx.study_or_none() is None:
            return off_json()
        ctx.api_grant(request, "owner")
        return export(name)

    @router.get("/study/export/{name}.csv")
    def page_export(request: Request, name: str) -> Response:
        """The same CSV from the results page: the owner's cookie (or a Bearer header), never ?token=."""
        if ctx.study_or_none() is None:
            return off_json()
        ctx.grant(bearer_token(request) or request.cookies.get(OWNER_COOKIE), "owner", NEEDS_OWNER)
        return export(name)

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

