"""What every route of the web app shares: the run, its classifier, the study, and the
helpers that wrap answers in the app's page layout or JSON (with the phantom warning).
:func:`create_app <fedsynth.webapp.app.create_app>` keeps one :class:`AppContext` on
``app.state``; a route receives it as a FastAPI dependency (:data:`Context`).

Also the app's access rules (docs/webapp.md, "Who can see what"):

* study routes need a token: a reader's invitation (the study's images, the next image,
  answers) or the owner's (results: which image is real; invitations). Pages take it once
  from the link's ``?token=`` and keep it in an HttpOnly, SameSite=Strict cookie; the JSON
  API takes it only from ``Authorization: Bearer``, which a browser never sends cross-site;
* every state-changing form carries a CSRF token: an HMAC of the reader's token (the answer
  form) or of a per-browser session cookie (the score form), checked in constant time;
* :data:`SECURITY_HEADERS` go on every response.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

import fedsynth.webapp.pages as pages
from fedsynth.classifier.train import Classifier
from fedsynth.webapp.invitations import Grant, TokenStore
from fedsynth.webapp.scoring import Scorer
from fedsynth.webapp.study import AnswerStore, StudyError, StudySet

PHANTOM_WARNING = ("This run's classifier was trained on synthetic images made from PHANTOMS (procedural drawings, "
                   "not X-rays): its scores mean nothing for real patients, and the study images are not X-rays.")
# what a reader in phase 1 of a two-phase study sees instead: not a word about synthetic or real images
PHANTOM_WARNING_BLIND = ("This run was made from PHANTOMS (procedural drawings, not X-rays): the study images are "
                         "not X-rays, and grading them says nothing about patients.")

READER_COOKIE = "fedsynth_reader"  # a reader's invitation token, after the first page
OWNER_COOKIE = "fedsynth_owner"  # the owner's token, after the first results page
SESSION_COOKIE = "fedsynth_session"  # a browser's random session id: what the score form's CSRF token signs
AUTHENTICATE = 'Bearer realm="fedsynth reader study"'  # on every 401 (no browser prompts for Bearer)
STUDY_PATH = "/study"  # the study cookies go to the study pages and images only, never to /api

# The pages load one stylesheet and one script from this app (/static/...), no inline script or
# style, and images from this app or data: URIs (the score result).
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # invitation tokens travel in URLs: never in a Referer
    "Cache-Control": "no-store",  # scores and study images stay out of caches
    "Cross-Origin-Resource-Policy": "same-origin",  # no other site may embed a study image
    "Cross-Origin-Opener-Policy": "same-origin",
}

NEEDS_READER = ("this needs a reader's invitation: open the link the study's owner gave you, or send its token "
                "as 'Authorization: Bearer <token>'")
NEEDS_OWNER = ("the results (which images are real) are for the study's owner only: open the link "
               "`fedsynth serve` printed, or send the owner token as 'Authorization: Bearer <token>'")
OWNER_IS_NOT_A_READER = ("this is the study owner's token: it reads results and invites readers but does not "
                         "answer; invite a reader with `fedsynth study invite RUN_DIR --reader NAME`")
READER_IS_NOT_OWNER = ("a reader's invitation cannot open the results (they show which images are real): "
                       "only the study's owner can")
NEEDS_BEARER = "send the token as 'Authorization: Bearer <token>' (the JSON API takes it from that header only)"
NEEDS_JSON = ("send the body as JSON with 'Content-Type: application/json': other content types are refused, "
              "as a form on another site could send them")
FORM_CSRF = ("this form has no valid security token for your session (it came from another site, or from a page "
             "older than your session): open the page again and resubmit")
NO_READER_COOKIE = ("this answer carries no invitation (it came from another site, or cookies are off): open your "
                    "invitation link again")
CROSS_SITE = "cross-site requests that change anything are refused: use this app's own pages"
STUDY_OFF = ("It runs at a site, where the real images are: start the app there with "
             "`fedsynth serve RUN_DIR --real-data PATH` (PATH: the site's images, an npz bundle or a folder, "
             "as for `fedsynth data ingest`).")


class Denied(Exception):
    """A request without the right to what it asks; ``status`` 401 (no or bad token) or 403."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class StudyOff(Exception):
    """A study route asked of an app without a reader study (started without the site's images)."""


def wants_json(path: str) -> bool:
    """Whether a refusal at ``path`` is JSON (the API, a study image, a CSV export) rather than a page."""
    return path.startswith(("/api", "/study/image/", "/study/export/"))


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; Denied when the header is there but is not one."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(NEEDS_BEARER, 401)
    return token.strip()


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Denied(NEEDS_JSON, 403)


def set_private_cookie(response: Response, request: Request, name: str, value: str, path: str) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (never sent with another site's request),
    Secure when served over https; a session cookie: gone when the browser closes."""
    response.set_cookie(name, value, path=path, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


@dataclass
class AppContext:
    run_id: str
    classifier: Classifier
    scorer: Scorer
    phantom: bool
    max_bytes: int
    study: StudySet | None = None
    store: AnswerStore | None = None
    study_phases: int = 1  # 1: real or synthetic; 2: blind grading first (fedsynth.webapp.phases)
    tokens: TokenStore | None = None
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # the study's survives restarts
    image_png: dict[str, bytes] = field(default_factory=dict)  # study images, rendered once

    @property
    def warning(self) -> str | None:
        return PHANTOM_WARNING if self.phantom else None

    @property
    def info(self) -> dict[str, Any]:
        clf = self.classifier
        return {"run_id": self.run_id, "arch": clf.arch, "resolution": clf.resolution, "threshold": clf.threshold,
                "phantom": self.phantom}

    def warning_for(self, blind: bool) -> str | None:
        """The phantom warning; ``blind``: for a reader in phase 1 of a two-phase study."""
        return (PHANTOM_WARNING_BLIND if blind else PHANTOM_WARNING) if self.phantom else None

    def page(self, title: str, body: str, status: int = 200, *, blind: bool = False) -> HTMLResponse:
        """``blind``: a page for a reader in phase 1 of a two-phase study (no link to the generator
        or the results, and a phantom warning that says nothing about synthetic images)."""
        response = HTMLResponse(pages.layout(title, body, phantom_warning=self.warning_for(blind), run_id=self.run_id,
                                             blind=blind), status_code=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = AUTHENTICATE
        return response

    def answer(self, data: dict[str, Any], status: int = 200, *, blind: bool = False) -> JSONResponse:
        warning = self.warning_for(blind)
        return JSONResponse({**data, **({"phantom_warning": warning} if warning else {})}, status_code=status)

    def problem(self, detail: str, status: int, *, blind: bool = False) -> JSONResponse:
        response = self.answer({"detail": detail}, status, blind=blind)
        if status == 401:
            response.headers["WWW-Authenticate"] = AUTHENTICATE
        return response

    def reader_path(self, path: str) -> bool:
        """A path a reader of a two-phase study may meet in phase 1 (its pages, their JSON): answers
        there, refusals included, say nothing about synthetic images."""
        return self.study_phases == 2 and (path in ("/study", "/study/answer", "/api/study", "/api/study/next",
                                                    "/api/study/answer") or path.startswith("/study/image/"))

    def study_or_none(self) -> tuple[StudySet, AnswerStore] | None:
        return (self.study, self.store) if self.study is not None and self.store is not None else None

    # ---- tokens ------------------------------------------------------------------------------

    def grant(self, token: str | None, role: str | None, missing: str) -> Grant:
        """What ``token`` grants, required to be ``role`` ("reader", "owner"; None: either)."""
        if not token:
            raise Denied(missing, 401)
        assert self.tokens is not None
        try:
            grant = self.tokens.check(token)
        except StudyError as err:
            raise Denied(str(err), err.status) from None
        if role == "reader" and grant.role != "reader":
            raise Denied(OWNER_IS_NOT_A_READER, 403)
        if role == "owner" and grant.role != "owner":
            raise Denied(READER_IS_NOT_OWNER, 403)
        return grant

    def api_grant(self, request: Request, role: str | None) -> Grant:
        """The JSON API: the token comes from the Authorization header only."""
        return self.grant(bearer_token(request), role, NEEDS_OWNER if role == "owner" else NEEDS_READER)

    def page_token(self, request: Request, query_token: str | None, cookie: str) -> str | None:
        """A page's token: the link's ``?token=`` when given (it replaces the cookie), else the cookie."""
        return query_token if query_token is not None else request.cookies.get(cookie)

    # ---- CSRF --------------------------------------------------------------------------------

    def csrf_for(self, purpose: str, value: str) -> str:
        return hmac.new(self.csrf_key, f"{purpose}|{value}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def check_csrf(self, given: Any, purpose: str, value: str | None) -> None:
        if not isinstance(given, str) or not value or not hmac.compare_digest(
                given.encode("utf-8", "surrogatepass"), self.csrf_for(purpose, value).encode()):
            raise Denied(FORM_CSRF, 403)


def app_context(request: Request) -> AppContext:
    """The app's one context (a FastAPI dependency)."""
    return request.app.state.context


Context = Annotated[AppContext, Depends(app_context)]
