"""The web app's access rules (docs/webapp.md, "Who can see what"), attacked.

* the study's images, next image and answers need a reader's invitation token, bound to one
  reader; the results (the answer key) need the owner's token;
* every state-changing POST is CSRF-protected (form tokens, Bearer + application/json);
* every response carries the security headers; no docs UI pulls scripts from a CDN;
* look-alike reader names are one reader or refused.

Every hostile request must get a 4xx with a clear message, never a 5xx (TestClient raises
any server exception), and must leave no answer behind.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import string
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.data.phantom import make_phantoms
from fedsynth.webapp import create_app
from fedsynth.webapp.context import (
    CROSS_SITE,
    FORM_CSRF,
    NEEDS_BEARER,
    NEEDS_JSON,
    NEEDS_OWNER,
    NEEDS_READER,
    NO_READER_COOKIE,
    OWNER_IS_NOT_A_READER,
    READER_IS_NOT_OWNER,
    SECURITY_HEADERS,
)
from fedsynth.webapp.study import READER_NAME_MAX, StudyError, _scripts, reader_key, validate_reader
from tests.test_webapp import STUDY_SIZE, bearer, make_real, make_run, png

pytestmark = [pytest.mark.filterwarnings("ignore:The anyio.abc.BlockingPortal alias is deprecated")]

FUZZ = settings(deadline=None, derandomize=True, database=None,  # deterministic, writes nothing
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("webapp-security"))


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory) -> Path:
    return make_real(tmp_path_factory.mktemp("site") / "real.npz")


def _study(run_dir: Path, real_npz: Path, db: Path) -> SimpleNamespace:
    app = create_app(run_dir, real_data=real_npz, db_path=db, study_size=STUDY_SIZE, seed=0)
    tokens = app.state.tokens
    return SimpleNamespace(app=app, client=TestClient(app), tokens=tokens, store=app.state.store,
                           ann=tokens.invite("Ann").token, bob=tokens.invite("Bob").token,
                           owner=tokens.issue_owner().token, image=app.state.study.images[0].id)


@pytest.fixture
def study(run_dir, real_npz, tmp_path) -> SimpleNamespace:
    return _study(run_dir, real_npz, tmp_path / "study.sqlite")


@pytest.fixture(scope="module")
def shared(run_dir, real_npz, tmp_path_factory) -> SimpleNamespace:
    """One study for the property-based tests (hypothesis runs many examples on it)."""
    return _study(run_dir, real_npz, tmp_path_factory.mktemp("fuzz") / "study.sqlite")


@pytest.fixture(scope="module")
def scoring(run_dir) -> object:
    return create_app(run_dir)


def csrf_of(page) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)


def score_csrf_of(page) -> str:
    return re.search(r'action="/score\?csrf=([0-9a-f]{64})"', page.text).group(1)


def detail(r) -> str:
    """The message a refusal gives: the JSON detail, or the page's error box."""
    if r.headers["content-type"].startswith("application/json"):
        return r.json()["detail"]
    m = re.search(r'id="(?:error|invitation-needed)">(.*?)</div>', r.text, re.S)
    return html.unescape(m.group(1)) if m else ""


def assert_clear_4xx(r, status: int | tuple[int, ...], *fragments: str) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    text = detail(r)
    assert len(text) >= 15, r.text[:300]  # a sentence, not a bare code
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# ---- 1. tokens: who may see and do what ------------------------------------------------------

TOKEN_CASES = {  # kind -> (status, message fragment)
    "missing": (401, ""),
    "wrong": (401, "unknown or revoked token"),
    "short": (401, "not a fedsynth study token"),
    "bad-chars": (401, "not a fedsynth study token"),
    "huge": (401, "not a fedsynth study token"),
    "expired": (401, "expired on"),
    "revoked": (401, "unknown or revoked token"),
    "owner": (403, OWNER_IS_NOT_A_READER),
}


def token_for(study: SimpleNamespace, kind: str) -> str | None:
    if kind == "expired":
        study.tokens.clock = lambda: time.time() + 31 * 86400  # invitations last 30 days
    if kind == "revoked":
        assert study.tokens.revoke("ANN") == 1  # any case of the name
    return {"missing": None, "wrong": secrets.token_urlsafe(32), "short": "abc", "bad-chars": "<script>" * 6,
            "huge": "A" * 20_000, "expired": study.ann, "revoked": study.ann, "owner": study.owner}[kind]


READER_REQUESTS = ["api-next", "api-answer", "page", "image", "api-study"]


def reader_request(study: SimpleNamespace, what: str, token: str | None):
    c, auth = study.client, (bearer(token) if token is not None else {})
    if what == "api-next":
        return c.get("/api/study/next", headers=auth)
    if what == "api-answer":
        return c.post("/api/study/answer", json={"image_id": study.image, "answer": "real"}, headers=auth)
    if what == "page":
        return c.get("/study", params={"token": token} if token is not None else None)
    if what == "image":
        return c.get(f"/study/image/{study.image}.png", headers=auth)
    return c.get("/api/study", headers=auth)


@pytest.mark.parametrize("kind", TOKEN_CASES)
@pytest.mark.parametrize("what", READER_REQUESTS)
@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_study_routes_need_a_valid_reader_token(study, what, kind):
    status, message = TOKEN_CASES[kind]
    token = token_for(study, kind)
    r = reader_request(study, what, token)
    if kind == "owner" and what in ("image", "api-study"):  # the owner sees the images (results thumbnails)
        assert r.status_code == 200
        return
    if kind == "missing":
        message = "by invitation" if what == "page" else NEEDS_READER
    assert_clear_4xx(r, status, message)
    assert r.headers["content-type"] != "image/png" and "set-cookie" not in r.headers
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert study.store.all() == []


def test_a_valid_invitation_opens_the_study(study):
    for what in READER_REQUESTS:  # the control: the same requests with Ann's token succeed
        r = reader_request(study, what, study.ann)
        assert r.status_code in (200, 201), (what, r.text[:200])
    assert [a.reader for a in study.store.all()] == ["ann"]


@pytest.mark.parametrize("header", ["Basic QW5uOnB3", "Bearer", "Bearer    ", "Token abc", "bearer"])
def test_authorization_that_is_not_bearer_is_refused(study, header):
    r = study.client.get("/api/study/next", headers={"Authorization": header})
    assert_clear_4xx(r, 401, NEEDS_BEARER)


RESULT_CASES = {  # how the results are asked for -> (status, message)
    "api-missing": (401, NEEDS_OWNER),
    "api-reader": (403, READER_IS_NOT_OWNER),
    "api-wrong": (401, "unknown or revoked"),
    "api-expired": (401, "expired on"),
    "api-rotated": (401, "unknown or revoked"),  # an owner token from before the last `fedsynth serve`
    "api-owner-in-query": (401, NEEDS_OWNER),  # the API takes tokens from the header only
    "api-owner-in-cookie": (401, NEEDS_OWNER),
    "page-missing": (401, NEEDS_OWNER),
    "page-reader-link": (403, READER_IS_NOT_OWNER),
    "page-reader-cookie": (401, NEEDS_OWNER),  # a reader's cookie is no owner's
    "page-expired": (401, "expired on"),
    "invite-reader": (403, READER_IS_NOT_OWNER),
    "invite-missing": (401, NEEDS_OWNER),
}


@pytest.mark.parametrize("case", RESULT_CASES)
def test_results_and_invitations_are_for_the_owner_only(study, case):
    status, message = RESULT_CASES[case]
    c = study.client
    owner = study.owner
    if case.endswith("expired"):
        study.tokens.clock = lambda: time.time() + 31 * 86400
    if case == "api-rotated":
        study.tokens.issue_owner()
    if case == "page-reader-cookie":
        assert c.get("/study", params={"token": study.ann}).status_code == 200  # leaves Ann's cookie
    token = {"api-reader": study.ann, "api-wrong": secrets.token_urlsafe(32), "api-expired": owner,
             "api-rotated": owner, "page-reader-link": study.ann, "page-expired": owner,
             "invite-reader": study.ann}.get(case)
    if case.startswith("api"):
        headers = bearer(token) if token else {}
        if case == "api-owner-in-cookie":
            headers["cookie"] = f"fedsynth_owner={owner}"
        r = c.get("/api/study/results", headers=headers,
                  params={"token": owner} if case == "api-owner-in-query" else None)
    elif case.startswith("page"):
        r = c.get("/study/results", params={"token": token} if token else None)
    else:
        r = c.post("/api/study/invitations", json={"reader": "Eve"}, headers=bearer(token) if token else {})
    assert_clear_4xx(r, status, message)
    assert "most_mistaken" not in r.text and "results-table" not in r.text
    assert "Eve" not in study.tokens.names().values()


def test_the_owner_token_opens_results_and_invitations(study):
    r = study.client.get("/api/study/results", headers=bearer(study.owner))
    assert r.status_code == 200 and "most_mistaken" in r.json()
    r = study.client.post("/api/study/invitations", json={"reader": "Eve", "days": 2}, headers=bearer(study.owner))
    assert r.status_code == 201 and r.json()["reader"] == "Eve"
    assert study.client.get("/api/study/next", headers=bearer(r.json()["token"])).json()["reader"] == "Eve"


@pytest.mark.parametrize("claim", ["Bob", "bob", "Eve", "", 42, ["Ann"], "Ann\u0430"])
def test_a_token_answers_only_as_its_reader(study, claim):
    """The name comes from the invitation: Ann's token naming another reader is refused."""
    c, image = study.client, study.image
    r = c.post("/api/study/answer", json={"reader": claim, "image_id": image, "answer": "real"},
               headers=bearer(study.ann))
    if claim == "":  # no claim at all: answers as Ann
        assert r.status_code == 201 and r.json()["stored"]["reader"] == "Ann"
        assert [a.reader for a in study.store.all()] == ["ann"]
        return
    assert_clear_4xx(r, 403, "Ann's")
    if isinstance(claim, str):
        assert_clear_4xx(c.get("/api/study/next", params={"reader": claim}, headers=bearer(study.ann)), 403, "Ann's")
        csrf = csrf_of(c.get("/study", params={"token": study.ann}))
        r = c.post("/study/answer", data={"csrf": csrf, "reader": claim, "image_id": image, "answer": "real"})
        assert_clear_4xx(r, 403, "Ann's")
    assert study.store.all() == []


# ---- 2. CSRF -------------------------------------------------------------------------------------

FORM_CASES = {
    "no-csrf": FORM_CSRF, "other-readers-csrf": FORM_CSRF, "garbage-csrf": FORM_CSRF, "empty-csrf": FORM_CSRF,
    "no-cookie": NO_READER_COOKIE, "cross-site": CROSS_SITE, "same-site": CROSS_SITE,
}


@pytest.mark.parametrize("case", FORM_CASES)
def test_the_answer_form_needs_its_csrf_token(study, case):
    ann = study.client
    ann_csrf = csrf_of(ann.get("/study", params={"token": study.ann}))  # Ann's browser: her cookie
    bob = TestClient(study.app)
    bob_csrf = csrf_of(bob.get("/study", params={"token": study.bob}))  # another browser, another reader
    form = {"csrf": ann_csrf, "image_id": study.image, "answer": "real"}
    headers = {}
    client = ann
    if case == "no-csrf":
        del form["csrf"]
    elif case == "other-readers-csrf":
        form["csrf"] = bob_csrf
    elif case == "garbage-csrf":
        form["csrf"] = "0" * 64
    elif case == "empty-csrf":
        form["csrf"] = ""
    elif case == "no-cookie":  # what a SameSite=Strict cookie does on another site's request
        client = TestClient(study.app)
    else:
        headers["Sec-Fetch-Site"] = case
    r = client.post("/study/answer", data=form, headers=headers, follow_redirects=False)
    assert_clear_4xx(r, 403, FORM_CASES[case])
    assert study.store.all() == []
    r = ann.post("/study/answer", data={**form, "csrf": ann_csrf}, follow_redirects=False)  # the control
    assert r.status_code == 303 and [a.reader for a in study.store.all()] == ["ann"]


SCORE_CASES = ["no-cookie", "no-csrf", "other-session", "garbage", "cross-site", "same-site"]


@pytest.mark.parametrize("case", SCORE_CASES)
def test_the_score_form_needs_its_csrf_token(scoring, case):
    image = png(make_phantoms(1, 32, seed=2).images[0])
    me, other = TestClient(scoring), TestClient(scoring)
    mine, theirs = score_csrf_of(me.get("/")), score_csrf_of(other.get("/"))
    assert mine != theirs  # one token per browser session
    client, params, headers = me, {"csrf": mine}, {}
    if case == "no-cookie":
        client = TestClient(scoring)
    elif case == "no-csrf":
        params = {}
    elif case == "other-session":
        params = {"csrf": theirs}
    elif case == "garbage":
        params = {"csrf": "x" * 64}
    else:
        headers["Sec-Fetch-Site"] = case
    r = client.post("/score", params=params, headers=headers, files={"file": ("x.png", image, "image/png")})
    assert_clear_4xx(r, 403, CROSS_SITE if case.endswith("site") else FORM_CSRF)
    assert 'id="probability"' not in r.text
    r = me.post("/score", params={"csrf": mine}, files={"file": ("x.png", image, "image/png")})  # the control
    assert r.status_code == 200 and 'id="probability"' in r.text


def test_api_score_stays_open_to_scripts_but_not_to_other_sites(scoring):
    files = {"file": ("x.png", png(make_phantoms(1, 32, seed=2).images[0]), "image/png")}
    c = TestClient(scoring)
    assert c.post("/api/score", files=files).status_code == 200  # curl: no token needed for scoring
    assert_clear_4xx(c.post("/api/score", files=files, headers={"Sec-Fetch-Site": "cross-site"}), 403, CROSS_SITE)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "text/json", "application/jsonp",
                                   "application/json-patch+json", "application/x-json"])
@pytest.mark.parametrize("route", ["/api/study/answer", "/api/study/invitations"])
def test_json_posts_need_application_json(study, route, ctype):
    """What a form on another site can send (text/plain, urlencoded, multipart) is refused,
    even with the right token."""
    token = study.ann if route.endswith("answer") else study.owner
    body = json.dumps({"image_id": study.image, "answer": "real"} if route.endswith("answer")
                      else {"reader": "Zed"}).encode()
    headers = {**bearer(token), **({"content-type": ctype} if ctype else {})}
    assert_clear_4xx(study.client.post(route, content=body, headers=headers), 403, NEEDS_JSON)
    assert study.store.all() == [] and "Zed" not in study.tokens.names().values()
    for ok in ("application/json", "Application/JSON; charset=utf-8"):  # the control
        r = study.client.post(route, content=body, headers={**bearer(token), "content-type": ok})
        assert r.status_code in (201, 409) and (r.status_code == 201) == (ok == "application/json")


def test_the_json_api_ignores_cookies(study):
    """A browser sends cookies on its own; the API takes the token from the header only."""
    r = study.client.post("/api/study/answer", json={"image_id": study.image, "answer": "real"},
                          headers={"cookie": f"fedsynth_reader={study.ann}"})
    assert_clear_4xx(r, 401, NEEDS_READER)
    assert study.store.all() == []


# ---- 3. headers, 4. no docs UI -----------------------------------------------------------------


def _responses(study: SimpleNamespace) -> dict[str, object]:
    c = study.client
    return {
        "score page": c.get("/"),
        "health": c.get("/api/health"),
        "static css": c.get("/static/fedsynth.css"),
        "static js": c.get("/static/fedsynth.js"),
        "404 page": c.get("/nope"),
        "404 api": c.get("/api/nope"),
        "401 page": c.get("/study"),
        "401 api": c.get("/api/study/results"),
        "403 api": c.get("/api/study/results", headers=bearer(study.ann)),
        "403 cross-site": c.post("/api/score", headers={"Sec-Fetch-Site": "cross-site"}),
        "reader page": c.get("/study", params={"token": study.ann}),
        "image": c.get(f"/study/image/{study.image}.png", headers=bearer(study.ann)),
        "answer redirect": c.post("/study/answer", follow_redirects=False,
                                  data={"csrf": csrf_of(c.get("/study")), "image_id": study.image, "answer": "real"}),
        "results page": c.get("/study/results", params={"token": study.owner}),
        "score error": c.post("/score"),
    }


def test_every_response_carries_the_security_headers(study):
    assert "style-src 'self';" in SECURITY_HEADERS["Content-Security-Policy"]  # no 'unsafe-inline'
    for name, r in _responses(study).items():
        for header, value in SECURITY_HEADERS.items():
            assert r.headers.get(header) == value, (name, header, r.headers.get(header))
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    for directive in ("default-src 'self'", "img-src 'self' data:", "frame-ancestors 'none'", "form-action 'self'",
                      "base-uri 'none'", "script-src 'self'"):
        assert directive in csp


def test_pages_need_no_inline_script_or_style(study):
    """The CSP allows neither: every page must work without them."""
    for name, r in _responses(study).items():
        if not r.headers.get("content-type", "").startswith("text/html"):
            continue
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), name
        assert "<style" not in r.text and " style=" not in r.text, name
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', r.text):
            assert url.startswith(("/", "data:image/png;base64,")), (name, url)  # this app or data: only
        assert study.ann not in r.text and study.owner not in r.text, name  # a token never in a page
    assert "text/css" in _responses(study)["static css"].headers["content-type"]
    assert "javascript" in _responses(study)["static js"].headers["content-type"]


@pytest.mark.parametrize("url", ["/api/docs", "/api/redoc", "/docs", "/redoc", "/api/openapi.json", "/openapi.json",
                                 "/api/docs/oauth2-redirect"])
def test_no_docs_ui_and_no_openapi(study, url):
    r = study.client.get(url)
    assert r.status_code == 404 and "swagger" not in r.text.lower() and "cdn" not in r.text.lower()


@pytest.mark.parametrize("base", ["http://testserver", "https://testserver"])
def test_cookies_are_httponly_strict_and_scoped(study, base):
    c = TestClient(study.app, base_url=base)
    cookies = {
        "fedsynth_reader": c.get("/study", params={"token": study.ann}).headers["set-cookie"],
        "fedsynth_owner": c.get("/study/results", params={"token": study.owner}).headers["set-cookie"],
        "fedsynth_session": c.get("/").headers["set-cookie"],
    }
    for name, header in cookies.items():
        attrs = {a.strip().split("=")[0].lower(): a.strip() for a in header.split(";")}
        assert header.startswith(name + "=") and "httponly" in attrs, header
        assert attrs["samesite"].lower() == "samesite=strict", header
        assert attrs["path"] == ("Path=/" if name == "fedsynth_session" else "Path=/study"), header
        assert ("secure" in attrs) == base.startswith("https"), header
        assert "max-age" not in attrs and "expires" not in attrs  # gone when the browser closes
    # after the link, the cookie carries the reader: the next pages need no token in the URL
    r = c.get("/study")
    assert r.status_code == 200 and "Ann, image 1 of" in r.text and "set-cookie" not in r.headers


# ---- 5. look-alike names ----------------------------------------------------------------------


@pytest.mark.parametrize("name, key", [("Ann", "ann"), ("ANN", "ann"), ("\uff21\uff4e\uff4e", "ann"),
                                       ("\ufb01ona", "fiona"), ("\U0001d400nn", "ann"), ("E\u0301mile", "émile"),
                                       ("Stra\u00dfe", "strasse"), ("Ann\u00a0\u00a0Lee", "ann lee")])
def test_reader_keys_fold_case_and_compatibility_forms(name, key):
    assert reader_key(validate_reader(name)) == key


@pytest.mark.parametrize("name", ["\u0410nn", "P\u03b1ul", "J\u03bfhn", "Ann\u0430", "\u0391\u043d\u0430",
                                  "Ma\u0441\u0441i", "\u03bcAnn"])
def test_names_mixing_scripts_are_refused(study, name):
    with pytest.raises(StudyError, match="must not mix scripts") as err:
        validate_reader(name)
    assert err.value.status == 400
    r = study.client.post("/api/study/invitations", json={"reader": name}, headers=bearer(study.owner))
    assert_clear_4xx(r, 400, "must not mix scripts", "look-alike")


# ---- property-based: arbitrary input never crashes the app -----------------------------------

LOOKALIKE = st.text(alphabet=st.sampled_from("AaНнΑαοоEeЕе Éé.-_1ﬁＡ\u200b\u0301\u00a0ß"), max_size=45)
NAMES = st.one_of(st.text(max_size=60), LOOKALIKE)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)  # what a URL or form can carry
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=120)
COOKIE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~!*'()/+=:?@[]", max_size=80)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)


def _json_post(client: TestClient, url: str, body: object, token: str):
    # serialized here (ASCII escapes): the strings hypothesis draws may hold lone surrogates
    return client.post(url, content=json.dumps(body).encode(),
                       headers={**bearer(token), "content-type": "application/json"})


@settings(FUZZ, max_examples=150)
@given(name=NAMES)
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_any_reader_name_is_invited_or_refused_clearly(shared, name):
    r = _json_post(shared.client, "/api/study/invitations", {"reader": name}, shared.owner)
    assert r.status_code in (201, 400, 409), r.text
    if r.status_code == 201:
        shown = r.json()["reader"]
        assert shown == validate_reader(name) == validate_reader(shown) and len(shown) <= READER_NAME_MAX
        assert len(_scripts(shown)) <= 1 and reader_key(shown) in shared.tokens.names()
    else:
        assert_clear_4xx(r, (400, 409))
        assert "reader name" in r.json()["detail"] or "already has a valid invitation" in r.json()["detail"]


@settings(FUZZ, max_examples=100)
@given(name=NAMES, days=JSON, reissue=JSON)
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_any_invitation_body_is_handled(shared, name, days, reissue):
    r = _json_post(shared.client, "/api/study/invitations", {"reader": name, "days": days, "reissue": reissue},
                   shared.owner)
    assert r.status_code in (201, 400, 409), r.text
    if r.status_code != 201:
        assert_clear_4xx(r, (400, 409))


@settings(FUZZ, max_examples=100)
@given(token=HEADER_TEXT)
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_any_bearer_token_gets_a_clear_401(shared, token):
    for url in ("/api/study/next", "/api/study/results", f"/study/image/{shared.image}.png"):
        r = shared.client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert_clear_4xx(r, 401)


@settings(FUZZ, max_examples=100)
@given(token=TEXT)
def test_any_token_in_a_link_gets_a_clear_401(shared, token):
    c = TestClient(shared.app)  # no cookie from an earlier example
    for url in ("/study", "/study/results"):
        r = c.get(url, params={"token": token})
        assert_clear_4xx(r, 401)
        assert "set-cookie" not in r.headers


@settings(FUZZ, max_examples=100)
@given(cookie=COOKIE_TEXT, csrf=TEXT)
def test_any_cookie_and_csrf_get_a_clear_4xx(shared, cookie, csrf):
    c = TestClient(shared.app)
    headers = {"cookie": f"fedsynth_reader={cookie}; fedsynth_session={cookie}"}
    assert_clear_4xx(c.get("/study", headers=headers), 401)
    r = c.post("/study/answer", headers=headers, data={"csrf": csrf, "image_id": shared.image, "answer": "real"})
    assert_clear_4xx(r, (401, 403))
    r = c.post("/score", headers=headers, params={"csrf": csrf}, files={"file": ("x.png", b"123", "image/png")})
    assert_clear_4xx(r, 403, FORM_CSRF)


@settings(FUZZ, max_examples=150)
@given(body=st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "image_id": st.one_of(JSON, st.just("IMAGE")), "answer": st.one_of(JSON, st.sampled_from(["real", "synthetic"])),
    "pneumonia": st.one_of(JSON, st.sampled_from(["yes", "no", ""])), "reader": st.one_of(JSON, st.just("Ann"))})))
@pytest.mark.slow  # over 1 s: outside the quick subset
def test_any_answer_body_is_stored_or_refused_clearly(shared, body):
    if isinstance(body, dict) and body.get("image_id") == "IMAGE":
        body["image_id"] = shared.image
    r = _json_post(shared.client, "/api/study/answer", body, shared.ann)
    assert r.status_code in (201, 400, 403, 404, 409), r.text
    if r.status_code != 201:
        assert_clear_4xx(r, (400, 403, 404, 409))
    assert {a.reader for a in shared.store.all()} <= {"ann"}
