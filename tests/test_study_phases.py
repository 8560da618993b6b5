"""The two-phase reader study (fedsynth serve --study-phases 2): blind grading, then real or synthetic.

Phase 1 grades every image (normal/pneumonia, confidence 1-5, comment) and never says that some
images are synthetic; phase 2 opens once every image is graded. Runs on the tiny run of
tests/test_webapp.py; the statistics are checked against hand-computed values on a
constructed study.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import beta

from fedsynth.errors import DataError
from fedsynth.webapp import create_app
from fedsynth.webapp.context import NEEDS_OWNER, READER_IS_NOT_OWNER
from fedsynth.webapp.phases import clean_comment, csv_cell, fleiss_kappa, phase1_csv, phase2_csv, study_results
from fedsynth.webapp.study import COMMENT_MAX, Answer, AnswerStore, Grade, StudyImage, StudySet
from tests.test_webapp import RES, make_real, make_run

pytestmark = [pytest.mark.filterwarnings("ignore:The anyio.abc.BlockingPortal alias is deprecated")]

N = 6  # study images: 3 real + 3 synthetic
REVEALING = re.compile(r"synthetic|generat|\breal\b", re.IGNORECASE)  # what a phase-1 reader must never read


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("phases"))  # a phantom run: the phantom warning is on every page


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory) -> Path:
    return make_real(tmp_path_factory.mktemp("site") / "real.npz")


@pytest.fixture
def app(run_dir, real_npz, tmp_path):
    return create_app(run_dir, real_data=real_npz, db_path=tmp_path / "study.sqlite", study_size=N, seed=0,
                      study_phases=2)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def invite(app, name: str) -> str:
    return app.state.tokens.invite(name).token


def owner_token(app) -> str:
    return app.state.tokens.issue_owner().token


def assert_blind(text: str, where: str = "") -> None:
    found = REVEALING.findall(text)
    assert not found, (where, found, text[:400])


def form_page(client: TestClient, token: str | None = None) -> tuple[str, str, str | None]:
    """The reader's page: its HTML, the form's CSRF token and the image id (None when done)."""
    r = client.get("/study", params={"token": token} if token else None)
    assert r.status_code == 200, r.text[:300]
    m = re.search(r'name="image_id" value="([0-9a-f]+)"', r.text)
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', r.text)
    return r.text, csrf.group(1) if csrf else "", m.group(1) if m else None


def grade_all(client: TestClient, token: str, grade=lambda im: "normal") -> None:
    """Grade every image the reader has not graded yet."""
    study, store = client.app.state.study, client.app.state.store
    done = store.graded(client.app.state.tokens.check(token).reader)
    for im in (im for im in study.images if im.id not in done):
        r = client.post("/api/study/answer", json={"image_id": im.id, "grade": grade(im)}, headers=bearer(token))
        assert r.status_code == 201, r.text


# ---- the flow ---------------------------------------------------------------------------------


def test_two_readers_through_both_phases_json_and_forms(app):
    study = app.state.study
    ids = [im.id for im in study.images]
    truth = {im.id: im.kind for im in study.images}
    refs = {im.id: ("normal", "pneumonia")[im.label] for im in study.images}
    assert study.counts() == {"real": 3, "synthetic": 3} and all(im.label in (0, 1) for im in study.images)
    assert set(refs.values()) == {"normal", "pneumonia"}  # both classes: a one-class reader's kappa is 0
    ann, bob = invite(app, "Ann"), invite(app, "Bob")
    api = TestClient(app)

    # Ann, through the JSON API. Phase 1: right on every image but the first; confidence k % 5 + 1
    seen = []
    for k in range(N):
        nxt = api.get("/api/study/next", headers=bearer(ann))
        assert nxt.status_code == 200
        assert_blind(nxt.text, f"next {k}")
        body = nxt.json()
        assert body["phase"] == 1 and body["phases"] == 2 and body["grades"] == ["normal", "pneumonia"]
        assert body["answered"] == k and body["done"] is False and body["image"]["position"] == k + 1
        image_id = body["image"]["id"]
        seen.append(image_id)
        grade = refs[image_id] if k else ("normal" if refs[image_id] == "pneumonia" else "pneumonia")
        r = api.post("/api/study/answer", headers=bearer(ann),
                     json={"image_id": image_id, "grade": grade, "confidence": k % 5 + 1,
                           "comment": f"ann grade {k}" if k < 2 else None})
        assert r.status_code == 201, r.text
        assert r.json()["stored"] == {"reader": "Ann", "image_id": image_id, "phase": 1, "grade": grade,
                                      "confidence": k % 5 + 1, "comment": f"ann grade {k}" if k < 2 else None}
        if k < N - 1:
            assert_blind(r.text, f"grade {k}")
    assert seen == ids  # the study's order
    # the last grade opened phase 2: now the reader is told
    nxt = api.get("/api/study/next", headers=bearer(ann)).json()
    assert nxt["phase"] == 2 and nxt["answered"] == 0 and nxt["image"]["id"] == ids[0]
    assert "some of them were synthetic" in nxt["notice"] and nxt["answers"] == ["real", "synthetic"]
    # Phase 2, the same images in the same order: everything called synthetic, one comment
    seen = []
    for k in range(N):
        nxt = api.get("/api/study/next", headers=bearer(ann)).json()
        assert nxt["phase"] == 2 and nxt["answered"] == k
        seen.append(nxt["image"]["id"])
        r = api.post("/api/study/answer", headers=bearer(ann),
                     json={"image_id": nxt["image"]["id"], "answer": "synthetic",
                           **({"comment": "looks too smooth"} if k == 0 else {})})
        assert r.status_code == 201 and r.json()["stored"]["answer"] == "synthetic"
    assert seen == ids
    assert api.get("/api/study/next", headers=bearer(ann)).json()["done"] is True

    # Bob, in the pages: grades every image 'pneumonia' with confidence 3; then answers the truth
    browser = TestClient(app)
    page, csrf, image_id = form_page(browser, bob)
    order = []
    while 'id="grade-form"' in page:
        assert_blind(page, "phase-1 page")
        assert 'href="/generate"' not in page and 'href="/study/results"' not in page
        order.append(image_id)
        r = browser.post("/study/answer", follow_redirects=False,
                         data={"csrf": csrf, "image_id": image_id, "grade": "pneumonia", "confidence": "3",
                               "comment": "Bob: <b>dense</b>\r\nleft base" if not order[1:] else ""})
        assert r.status_code == 303 and r.headers["location"] == "/study"
        page, csrf, image_id = form_page(browser)
    assert order == ids
    # phase 2: the page first tells the reader; the same order again
    order = []
    while 'id="answer-form"' in page:
        assert page.index('id="phase2-intro"') < page.index('id="study-image"')
        assert "some of them were synthetic" in page and "Phase 2 of 2" in page
        order.append(image_id)
        r = browser.post("/study/answer", follow_redirects=False,
                         data={"csrf": csrf, "image_id": image_id, "answer": truth[image_id], "comment": ""})
        assert r.status_code == 303
        page, csrf, image_id = form_page(browser)
    assert order == ids and 'id="study-done"' in page and "both phases" in page

    # the owner's results
    owner = owner_token(app)
    res = api.get("/api/study/results", headers=bearer(owner)).json()
    assert res["phases"] == 2 and res["n_images"] == N
    p1, p2 = res["phase1"], res["phase2"]
    a1, b1 = p1["readers"]["Ann"], p1["readers"]["Bob"]
    assert a1["graded"] == N and a1["complete"] and a1["accuracy"]["k"] == N - 1 and a1["accuracy"]["n"] == N
    assert a1["mean_confidence"] == pytest.approx(np.mean([k % 5 + 1 for k in range(N)]))
    assert b1["mean_confidence"] == 3 and b1["confidence_given"] == N
    assert b1["kappa"]["kappa"] == pytest.approx(0.0) and b1["kappa"]["n"] == N  # one class throughout
    assert b1["accuracy"]["k"] == sum(r == "pneumonia" for r in refs.values())
    assert p1["fleiss_kappa"]["readers"] == 2 and p1["fleiss_kappa"]["images"] == N
    a2, b2 = p2["readers"]["Ann"], p2["readers"]["Bob"]
    assert a2["accuracy"]["k"] == 3 and a2["sensitivity"]["value"] == 1.0 and a2["specificity"]["value"] == 0.0
    assert b2["accuracy"]["value"] == 1.0 and b2["p_value_vs_chance"] == pytest.approx(2 * 0.5**N)
    assert p2["overall"]["accuracy"] == {"k": 9, "n": 12, "value": 0.75, "ci95": pytest.approx(
        [beta.ppf(0.025, 9, 4), beta.ppf(0.975, 10, 3)])}
    assert p2["outside_protocol"] == 0
    assert res["readers"]["Bob"]["accuracy"] == 1.0 and res["readers"]["Ann"]["answered"] == N  # the legacy keys
    notes = {c["image_id"]: c["comments"] for c in res["comments"]}
    assert notes[ids[0]] == [{"reader": "Ann", "phase": 1, "comment": "ann grade 0"},
                             {"reader": "Bob", "phase": 1, "comment": "Bob: <b>dense</b>\nleft base"},
                             {"reader": "Ann", "phase": 2, "comment": "looks too smooth"}]
    assert notes[ids[1]] == [{"reader": "Ann", "phase": 1, "comment": "ann grade 1"}] and len(notes) == 2

    page = browser.get("/study/results", params={"token": owner})
    assert page.status_code == 200
    for tag in ('id="phase1-table"', 'id="phase2-table"', 'id="fleiss"', 'id="comments"',
                'href="/study/export/phase1.csv"', 'href="/study/export/phase2.csv"'):
        assert tag in page.text, tag
    assert "Bob: &lt;b&gt;dense&lt;/b&gt;" in page.text and "<b>dense</b>" not in page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text) and " style=" not in page.text
    csv_page = browser.get("/study/export/phase2.csv")  # the owner's cookie, from the results link
    assert csv_page.status_code == 200 and csv_page.text.count("\r\n") == 1 + 2 * N


def test_phase_one_never_mentions_synthetic_or_real(app):
    """Every page and JSON answer a phase-1 reader can meet, refusals included (a phantom run: its
    warning is reworded too)."""
    ann = invite(app, "Ann")
    image = app.state.study.images[0].id
    c = TestClient(app)
    seen = {
        "no token": c.get("/study"),
        "bad link": c.get("/study", params={"token": "x" * 43}),
        "api study": c.get("/api/study", headers=bearer(ann)),
        "api next": c.get("/api/study/next", headers=bearer(ann)),
        "page": c.get("/study", params={"token": ann}),
        "bad grade": c.post("/api/study/answer", json={"image_id": image, "grade": "maybe"}, headers=bearer(ann)),
        "no grade": c.post("/api/study/answer", json={"image_id": image}, headers=bearer(ann)),
        "not json": c.post("/api/study/answer", content=b"{", headers={**bearer(ann),
                                                                        "content-type": "application/json"}),
        "no object": c.post("/api/study/answer", json=[1], headers=bearer(ann)),
        "grade": c.post("/api/study/answer", json={"image_id": image, "grade": "normal"}, headers=bearer(ann)),
        "again": c.post("/api/study/answer", json={"image_id": image, "grade": "normal"}, headers=bearer(ann)),
        "early answer": c.post("/api/study/answer", json={"image_id": image, "answer": "real"},
                               headers=bearer(ann)),
        "early bad answer": c.post("/api/study/answer", json={"image_id": image, "answer": "maybe"},
                                   headers=bearer(ann)),
    }
    csrf = form_page(c)[1]
    seen["form error"] = c.post("/study/answer", data={"csrf": csrf, "image_id": image, "grade": "x"})
    seen["form repeat"] = c.post("/study/answer", data={"csrf": csrf, "image_id": image, "grade": "normal"})
    seen["form early answer"] = c.post("/study/answer", data={"csrf": csrf, "image_id": image, "answer": "real"})
    seen["bad csrf"] = c.post("/study/answer", data={"csrf": "0" * 64, "image_id": image, "grade": "normal"})
    for name, r in seen.items():
        if name.startswith("early"):  # the reader's request named an answer; the refusal does not repeat it
            assert r.status_code == 409 and "is in phase 1" in r.json()["detail"]
        assert_blind(r.text, name)
    assert "phantom_warning" in seen["api next"].json() and "PHANTOMS" in seen["page"].text
    assert "composition" not in seen["api study"].json() and seen["api study"].json()["you"]["phase"] == 1
    assert "already graded" in seen["form repeat"].text  # redirected to the next image with a notice
    assert seen["bad csrf"].status_code == 403 and seen["form error"].status_code == 400
    assert [a for a in app.state.store.all()] == [] and len(app.state.store.all_grades()) == 1
    # once phase 1 is complete the words are there
    grade_all(c, ann)
    assert "synthetic" in c.get("/study").text and "synthetic" in c.get("/api/study/next", headers=bearer(ann)).text


def test_answers_of_the_wrong_phase_are_refused(app):
    ann = invite(app, "Ann")
    c = TestClient(app)
    images = app.state.study.images
    r = c.post("/api/study/answer", json={"image_id": images[0].id, "answer": "real"}, headers=bearer(ann))
    assert r.status_code == 409 and "is in phase 1" in (d := r.json()["detail"]) and "0 of 6 images graded" in d
    csrf = form_page(c, ann)[1]
    r = c.post("/study/answer", data={"csrf": csrf, "image_id": images[0].id, "answer": "synthetic"},
               follow_redirects=False)
    assert r.status_code == 409 and "is in phase 1" in r.text
    assert app.state.store.all() == []
    grade_all(c, ann)
    r = c.post("/api/study/answer", json={"image_id": images[0].id, "grade": "pneumonia"}, headers=bearer(ann))
    assert r.status_code == 409 and "is in phase 2" in (d := r.json()["detail"]) and "phase 1 is complete" in d
    r = c.post("/study/answer", data={"csrf": csrf, "image_id": images[0].id, "grade": "pneumonia"},
               follow_redirects=False)
    assert r.status_code == 409 and "is in phase 2" in r.text
    assert {g.grade for g in app.state.store.all_grades()} == {"normal"}  # the first grades kept
    r = c.post("/api/study/answer", json={"image_id": images[0].id, "answer": "real"}, headers=bearer(ann))
    assert r.status_code == 201


def test_a_second_grade_is_refused_and_the_first_kept(app):
    ann = invite(app, "Ann")
    c = TestClient(app)
    image = app.state.study.images[2].id  # not the next one: any image of the study may be graded
    first = c.post("/api/study/answer", json={"image_id": image, "grade": "pneumonia", "confidence": 4,
                                              "comment": "first"}, headers=bearer(ann))
    assert first.status_code == 201
    r = c.post("/api/study/answer", json={"image_id": image, "grade": "normal", "confidence": 1, "comment": "second"},
               headers=bearer(ann))
    assert r.status_code == 409 and "already graded" in (d := r.json()["detail"]) and "first grade is kept" in d
    csrf = form_page(c, ann)[1]
    r = c.post("/study/answer", data={"csrf": csrf, "image_id": image, "grade": "normal"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/study?already={image}"
    (g,) = app.state.store.all_grades()
    assert (g.grade, g.confidence, g.comment) == ("pneumonia", 4, "first")


PHASE1_BAD = [
    ({"grade": "maybe"}, "grade"), ({"grade": 1}, "grade"), ({"grade": ["normal"]}, "grade"), ({"grade": ""}, "grade"),
    ({"grade": "Normal"}, "grade"), ({}, "grade"),
    ({"grade": "normal", "confidence": 0}, "confidence"), ({"grade": "normal", "confidence": 6}, "confidence"),
    ({"grade": "normal", "confidence": True}, "confidence"), ({"grade": "normal", "confidence": "3"}, "confidence"),
    ({"grade": "normal", "confidence": 2.5}, "confidence"), ({"grade": "normal", "confidence": 3.0}, "confidence"),
    ({"grade": "normal", "comment": 5}, "comment"), ({"grade": "normal", "comment": ["x"]}, "comment"),
    ({"grade": "normal", "comment": "x" * (COMMENT_MAX + 1)}, "comment"),
    ({"grade": "normal", "comment": "a\x00b"}, "comment"), ({"grade": "normal", "comment": "a\tb"}, "comment"),
    ({"grade": "normal", "comment": "\x1b[31mred"}, "comment"), ({"grade": "normal", "comment": "a\u0085b"}, "comment"),
    ({"grade": "normal", "comment": "lone \ud800"}, "comment"),
    ({"grade": "normal", "pneumonia": True}, "pneumonia"), ({"grade": "normal", "answer": "real"}, "not both"),
]


@pytest.mark.parametrize("body, field", PHASE1_BAD)
def test_bad_phase1_fields_are_refused_by_name(app, body, field):
    ann = invite(app, "Ann")
    c = TestClient(app)
    body = {"image_id": app.state.study.images[0].id, **body}
    r = c.post("/api/study/answer", content=json.dumps(body).encode(),  # ASCII escapes: lone surrogates travel
               headers={**bearer(ann), "content-type": "application/json"})
    assert r.status_code == 400 and field in r.json()["detail"], r.json()
    assert app.state.store.all_grades() == [] and app.state.store.all() == []


PHASE2_BAD = [
    ({"answer": "maybe"}, "answer"), ({"answer": True}, "answer"), ({}, "answer"),
    ({"answer": "real", "confidence": 3}, "confidence"), ({"answer": "real", "comment": {"a": 1}}, "comment"),
    ({"answer": "real", "comment": "y" * 1001}, "comment"), ({"answer": "real", "comment": "x\ry"}, "comment"),
    ({"answer": "real", "pneumonia": "yes"}, "pneumonia"),
]


@pytest.mark.parametrize("body, field", PHASE2_BAD)
def test_bad_phase2_fields_are_refused_by_name(app, body, field):
    ann = invite(app, "Ann")
    c = TestClient(app)
    grade_all(c, ann)
    r = c.post("/api/study/answer", json={"image_id": app.state.study.images[0].id, **body}, headers=bearer(ann))
    assert r.status_code == 400 and field in r.json()["detail"], r.json()
    assert app.state.store.all() == []


@pytest.mark.parametrize("form, field", [({"grade": "maybe"}, "grade"), ({"grade": "normal", "confidence": "9"},
                                         "confidence"), ({"grade": "normal", "confidence": "x"}, "confidence"),
                                         ({"grade": "normal", "comment": "z" * 1001}, "comment"),
                                         ({"grade": "normal", "comment": "a\x07b"}, "comment")])
def test_bad_form_fields_are_refused_by_name(app, form, field):
    c = TestClient(app)
    csrf = form_page(c, invite(app, "Ann"))[1]
    r = c.post("/study/answer", data={"csrf": csrf, "image_id": app.state.study.images[0].id, **form})
    assert r.status_code == 400 and 'id="error"' in r.text and field in r.text
    assert app.state.store.all_grades() == []


def test_comments_are_normalized():
    assert clean_comment(None) is None and clean_comment("") is None and clean_comment("  \n ") is None
    assert clean_comment("x" * COMMENT_MAX) == "x" * COMMENT_MAX
    assert clean_comment(" \uff21\ufb01 line\r\nnext ") == "Afi line\nnext"  # NFKC, CRLF -> LF, trimmed
    assert clean_comment("\uff1dSUM(A1)") == "=SUM(A1)"  # full-width = is NFKC-normalized (and CSV-guarded)


# ---- statistics, by hand ------------------------------------------------------------------------

T0, T1 = "2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z"
REFS = {"s1": 0, "s2": 1, "s3": 1, "r1": 0, "r2": 1, "r3": 0}  # s: synthetic (generated as), r: real (labelled)
NAMES = ("normal", "pneumonia")


def small_study(real_labels: bool = True) -> StudySet:
    pix = np.zeros((RES, RES), np.uint8)
    return StudySet([StudyImage(i, "synthetic" if i[0] == "s" else "real",
                                None if i[0] == "r" and not real_labels else label,
                                "real" if i[0] == "r" else "synthetic (site-0)", pix) for i, label in REFS.items()],
                    RES)


def grades_of(reader: str, given: dict[str, str], confidence=None) -> list[Grade]:
    return [Grade(reader, i, g, None if confidence is None else confidence.get(i), None, T0) for i, g in given.items()]


def answers_of(reader: str, given: dict[str, str], phase: int = 2) -> list[Answer]:
    return [Answer(reader, i, a, None, T1, None, phase) for i, a in given.items()]


PERFECT = {i: NAMES[label] for i, label in REFS.items()}
ALWAYS = {i: "pneumonia" for i in REFS}
MIXED = {"s1": "normal", "s2": "normal", "s3": "pneumonia", "r1": "pneumonia", "r2": "pneumonia", "r3": "normal"}


def test_phase1_kappas_accuracy_and_confidence_by_hand():
    study = small_study()
    grades = (grades_of("perfect", PERFECT, {"s1": 5, "s2": 4})
              + grades_of("always", ALWAYS) + grades_of("mixed", MIXED, {i: 2 for i in REFS}))
    res = study_results(study, [], grades=grades, phases=2)
    p1 = res["phase1"]["readers"]
    perfect, always, mixed = p1["perfect"], p1["always"], p1["mixed"]
    for key in ("kappa", "kappa_synthetic", "kappa_real"):
        assert perfect[key]["kappa"] == pytest.approx(1.0)
        assert always[key]["kappa"] == pytest.approx(0.0)  # one class throughout: no agreement beyond chance
    # mixed, all six: agreement 4/6, chance 1/2 (both 3 normal / 3 pneumonia): (2/3 - 1/2) / (1/2) = 1/3
    assert mixed["kappa"] == {"kappa": pytest.approx(1 / 3), "n": 6}
    # synthetic (refs n p p, grades n n p) and real (refs n p n, grades p p n): (2/3 - 4/9) / (5/9) = 2/5
    assert mixed["kappa_synthetic"] == {"kappa": pytest.approx(0.4), "n": 3}
    assert mixed["kappa_real"] == {"kappa": pytest.approx(0.4), "n": 3}
    assert mixed["accuracy"]["k"] == 4 and mixed["accuracy"]["value"] == pytest.approx(4 / 6)
    assert perfect["mean_confidence"] == 4.5 and perfect["confidence_given"] == 2
    assert always["mean_confidence"] is None and mixed["mean_confidence"] == 2
    assert always["grades"] == {"normal": 0, "pneumonia": 6} and all(m["complete"] for m in p1.values())
    # Fleiss, three readers, counts (normal, pneumonia) per image: s1 (2,1) s2 (1,2) s3 (0,3) r1 (1,2) r2 (0,3)
    # r3 (2,1): P_i 1/3,1/3,1,1/3,1,1/3 -> P = 5/9; p = (1/3, 2/3) -> Pe = 5/9: kappa 0
    fk = res["phase1"]["fleiss_kappa"]
    assert fk["kappa"] == pytest.approx(0.0, abs=1e-12) and fk["readers"] == 3 and fk["images"] == 6
    # perfect and mixed: P_i 1,0,1,0,1,1 -> P = 2/3; p = (1/2, 1/2) -> Pe = 1/2: kappa 1/3
    two = study_results(study, [], grades=grades_of("perfect", PERFECT) + grades_of("mixed", MIXED), phases=2)
    assert two["phase1"]["fleiss_kappa"]["kappa"] == pytest.approx(1 / 3)
    # a reader who graded one image only: Fleiss on that one image
    part = grades_of("perfect", PERFECT) + grades_of("mixed", MIXED) + grades_of("late", {"s2": "pneumonia"})
    fk = study_results(study, [], grades=part, phases=2)["phase1"]["fleiss_kappa"]
    # s2 only, counts (1, 2): P = 1/3, Pe = 5/9: kappa (1/3 - 5/9) / (4/9) = -1/2
    assert fk["images"] == 1 and fk["readers"] == 3 and fk["kappa"] == pytest.approx(-0.5)
    assert study_results(study, [], grades=part, phases=2)["phase1"]["readers"]["late"]["complete"] is False


def test_fleiss_kappa_formula():
    # the standard worked example (Fleiss 1971, as on Wikipedia): 10 subjects, 14 raters, 5 categories
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa(np.array([[2, 0], [0, 2]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0], [3, 0]])) is None  # every grade one class: undefined
    assert fleiss_kappa(np.array([[1, 0]])) is None and fleiss_kappa(np.zeros((0, 2))) is None  # one rater, none
    assert fleiss_kappa(np.array([[2, 0], [1, 2]])) is None  # unequal raters per image


def test_fleiss_needs_two_readers_and_a_common_image():
    study = small_study()
    one = study_results(study, [], grades=grades_of("perfect", PERFECT), phases=2)["phase1"]["fleiss_kappa"]
    assert one["kappa"] is None and "fewer than 2 readers" in one["why_none"]
    apart = grades_of("a", {"s1": "normal"}) + grades_of("b", {"s2": "normal"})
    fk = study_results(study, [], grades=apart, phases=2)["phase1"]["fleiss_kappa"]
    assert fk["kappa"] is None and fk["images"] == 0 and "no image graded by every reader" in fk["why_none"]
    none = study_results(study, [], grades=[], phases=2)["phase1"]
    assert none["fleiss_kappa"]["kappa"] is None and none["readers"] == {} and none["overall"]["kappa"]["kappa"] is None


def test_phase2_intervals_and_binomial_test_by_hand():
    study = small_study()
    truth = {i: ("synthetic" if i[0] == "s" else "real") for i in REFS}
    four = {"s1": "synthetic", "s2": "synthetic", "s3": "real", "r1": "real", "r2": "synthetic", "r3": "real"}
    grades = grades_of("perfect", PERFECT) + grades_of("four", MIXED) + grades_of("none", MIXED)
    answers = (answers_of("perfect", truth) + answers_of("four", four)
               + answers_of("none", {i: "real" if t == "synthetic" else "synthetic" for i, t in truth.items()}))
    p2 = study_results(study, answers, grades=grades, phases=2)["phase2"]
    perfect, four_, none = p2["readers"]["perfect"], p2["readers"]["four"], p2["readers"]["none"]
    # 6 of 6: Clopper-Pearson lower bound (alpha/2)^(1/n); two-sided p = 2 / 2^6
    assert perfect["accuracy"]["value"] == 1.0
    assert perfect["accuracy"]["ci95"] == pytest.approx([0.025 ** (1 / 6), 1.0])
    assert perfect["p_value_vs_chance"] == pytest.approx(2 / 64)
    # 0 of 6: upper bound 1 - (alpha/2)^(1/n); the same p
    assert none["accuracy"]["ci95"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 6)])
    assert none["p_value_vs_chance"] == pytest.approx(2 / 64) and none["sensitivity"]["value"] == 0.0
    # 4 of 6: P(X >= 4) = (15 + 6 + 1) / 64, two-sided 44/64; bounds are Beta quantiles
    assert four_["accuracy"]["k"] == 4 and four_["p_value_vs_chance"] == pytest.approx(44 / 64)
    assert four_["accuracy"]["ci95"] == pytest.approx([beta.ppf(0.025, 4, 3), beta.ppf(0.975, 5, 2)])
    assert four_["sensitivity"] == {"k": 2, "n": 3, "value": pytest.approx(2 / 3),
                                    "ci95": pytest.approx([beta.ppf(0.025, 2, 2), beta.ppf(0.975, 3, 1)])}
    assert four_["specificity"]["k"] == 2 and four_["specificity"]["n"] == 3
    # pooled: 10 of 18, two-sided exact test
    pooled = p2["overall"]
    assert pooled["accuracy"]["k"] == 10 and pooled["accuracy"]["n"] == 18
    from math import comb

    tail = sum(comb(18, k) for k in range(10, 19)) / 2**18
    assert pooled["p_value_vs_chance"] == pytest.approx(min(1.0, 2 * tail))
    assert p2["outside_protocol"] == 0 and p2["positive_class"] == "synthetic"


def test_answers_before_grading_are_left_out_and_counted():
    study = small_study()
    grades = grades_of("ann", PERFECT)
    answers = (answers_of("ann", {"s1": "synthetic"}) + answers_of("ann", {"s2": "real"}, phase=1)  # a one-phase answer
               + answers_of("bob", {"s1": "real"}))  # bob never graded
    res = study_results(study, answers, grades=grades, phases=2)
    assert res["phase2"]["outside_protocol"] == 2 and res["phase2"]["overall"]["answered"] == 1
    assert res["overall"]["answered"] == 1 and "bob" not in res["readers"]
    rows = list(csv.DictReader(io.StringIO(phase2_csv(study, answers, grades))))
    assert [(r["reader"], r["image_id"], r["counted"]) for r in rows] == [("ann", "s1", "1"), ("ann", "s2", "0"),
                                                                         ("bob", "s1", "0")]


def test_unlabelled_real_images_are_left_out_of_phase1_and_counted():
    study = small_study(real_labels=False)
    res = study_results(study, [], grades=grades_of("ann", PERFECT), phases=2)["phase1"]
    ann = res["readers"]["ann"]
    assert res["real_images_without_label"] == 3 and ann["real_without_label"] == 3
    assert ann["kappa_real"] == {"kappa": None, "n": 0} and ann["kappa"]["n"] == 3 and ann["accuracy"]["n"] == 3
    assert ann["kappa_synthetic"]["kappa"] == pytest.approx(1.0) and ann["graded"] == 6


def test_comments_per_image_in_results_and_csv():
    study = small_study()
    grades = [Grade("ann", "s1", "normal", 3, "=HYPERLINK(\"http://x\")", T0),
              Grade("bob", "s1", "pneumonia", None, "two\nlines, \"quoted\"", T0),
              Grade("ann", "r1", "normal", None, None, T0)]
    answers = [Answer("ann", "s1", "real", None, T1, "+1 looks real", 2), Answer("ann", "r1", "synthetic", None, T1,
                                                                             None, 2)]
    res = study_results(study, answers, grades=grades, phases=2, names={"ann": "Ann", "bob": "@Bob"})
    assert res["comments"] == [{"image_id": "s1", "truth": "synthetic", "origin": "synthetic (site-0)",
                                "label": "normal", "comments": [
                                    {"reader": "@Bob", "phase": 1, "comment": "two\nlines, \"quoted\""},
                                    {"reader": "Ann", "phase": 1, "comment": "=HYPERLINK(\"http://x\")"},
                                    {"reader": "Ann", "phase": 2, "comment": "+1 looks real"}]}]
    rows = list(csv.reader(io.StringIO(phase1_csv(study, grades, {"ann": "Ann", "bob": "@Bob"}))))
    assert rows[0] == ["reader", "image_id", "position", "truth", "origin", "reference_label", "grade", "correct",
                       "confidence", "comment", "answered_at"]
    assert rows[1:] == [["'@Bob", "s1", "1", "synthetic", "synthetic (site-0)", "normal", "pneumonia", "0", "",
                         "two\nlines, \"quoted\"", T0],
                        ["Ann", "s1", "1", "synthetic", "synthetic (site-0)", "normal", "normal", "1", "3",
                         "'=HYPERLINK(\"http://x\")", T0],
                        ["Ann", "r1", "4", "real", "real", "normal", "normal", "1", "", "", T0]]
    rows = list(csv.reader(io.StringIO(phase2_csv(study, answers, grades, {"ann": "Ann"}))))
    assert rows[1] == ["Ann", "s1", "1", "synthetic", "synthetic (site-0)", "normal", "real", "0", "'+1 looks real",
                       T1, "1"]
    assert rows[2][6:9] == ["synthetic", "0", ""]


@pytest.mark.parametrize("cell, safe", [("=1+1", "'=1+1"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
                                        ("\tx", "'\tx"), ("\rx", "'\rx"), ("a=b", "a=b"), ("", ""), (None, ""),
                                        (3, "3"), ("'quoted", "'quoted")])
def test_csv_cells_are_guarded_against_formulas(cell, safe):
    assert csv_cell(cell) == safe


# ---- exports: owner only --------------------------------------------------------------------------


def test_exports_are_for_the_owner_only(app):
    ann = invite(app, "Ann")
    c = TestClient(app)
    image = app.state.study.images[0].id
    c.post("/api/study/answer", json={"image_id": image, "grade": "normal", "comment": "=cmd|' /C calc'!A0"},
           headers=bearer(ann))
    owner = owner_token(app)
    for name in ("phase1", "phase2"):
        for url in (f"/api/study/export/{name}.csv", f"/study/export/{name}.csv"):
            r = c.get(url)
            assert r.status_code == 401 and NEEDS_OWNER in r.json()["detail"] and "image_id" not in r.text, url
            r = c.get(url, headers=bearer(ann))
            assert r.status_code == 403 and READER_IS_NOT_OWNER in r.json()["detail"], url
            r = c.get(url, params={"token": owner})  # never from the URL
            assert r.status_code == 401, url
            r = c.get(url, headers=bearer(owner))
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), url
            assert r.headers["content-disposition"] == f'attachment; filename="reader-study-{name}.csv"'
            assert r.headers["cache-control"] == "no-store"
    c.get("/study", params={"token": ann})  # Ann's cookie is no owner's
    assert c.get("/study/export/phase1.csv").status_code == 401
    r = c.get("/api/study/export/phase1.csv", headers=bearer(owner))
    rows = list(csv.reader(io.StringIO(r.text)))
    assert len(rows) == 2 and rows[1][0] == "Ann" and rows[1][9] == "'=cmd|' /C calc'!A0"
    assert c.get("/api/study/export/phase3.csv", headers=bearer(owner)).status_code == 404
    browser = TestClient(app)
    assert browser.get("/study/results", params={"token": owner}).status_code == 200
    assert browser.get("/study/export/phase1.csv").text == r.text  # the results page's cookie
    assert browser.get("/api/study/export/phase1.csv").status_code == 401  # the API ignores cookies


def test_one_phase_studies_have_no_exports(run_dir, real_npz, tmp_path):
    app = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "one.sqlite", study_size=N)
    r = TestClient(app).get("/api/study/export/phase1.csv", headers=bearer(owner_token(app)))
    assert r.status_code == 404 and "one phase" in r.json()["detail"]


# ---- one-phase studies and their databases ------------------------------------------------------


def test_one_phase_behaviour_is_unchanged(run_dir, real_npz, tmp_path):
    app = create_app(run_dir, real_data=real_npz, db_path=tmp_path / "one.sqlite", study_size=N)
    assert app.state.study_phases == 1
    c = TestClient(app)
    ann = invite(app, "Ann")
    nxt = c.get("/api/study/next", headers=bearer(ann)).json()
    assert nxt["phase"] == 1 and nxt["phases"] == 1 and "grades" not in nxt
    page = c.get("/study", params={"token": ann}).text
    assert 'id="answer-form"' in page and 'id="answer-synthetic"' in page and 'id="grade-form"' not in page
    image = nxt["image"]["id"]
    r = c.post("/api/study/answer", json={"image_id": image, "grade": "normal"}, headers=bearer(ann))
    assert r.status_code == 400 and "real' or 'synthetic" in r.json()["detail"]  # a grade is no answer here
    r = c.post("/api/study/answer", json={"image_id": image, "answer": "real", "comment": "ignored"},
               headers=bearer(ann))
    assert r.status_code == 201 and r.json()["stored"] == {"reader": "Ann", "image_id": image, "answer": "real"}
    res = c.get("/api/study/results", headers=bearer(owner_token(app))).json()
    assert res["phases"] == 1 and "phase1" not in res and res["readers"]["Ann"]["answered"] == 1
    db = sqlite3.connect(tmp_path / "one.sqlite")
    tables = sorted(t[0] for t in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    db.close()
    assert tables == ["answers", "readers", "token_secret", "tokens"]  # no two-phase tables in a one-phase study


def test_an_existing_one_phase_database_keeps_working(run_dir, real_npz, tmp_path):
    db_path = tmp_path / "old.sqlite"
    # a database as older fedsynth wrote it: the answers table only, an answer in it, mode 0644
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE answers (reader TEXT NOT NULL, image_id TEXT NOT NULL, answer TEXT NOT NULL CHECK "
               "(answer IN ('real', 'synthetic')), pneumonia INTEGER CHECK (pneumonia IN (0, 1)), answered_at TEXT "
               "NOT NULL, PRIMARY KEY (reader, image_id))")
    db.commit()
    db.close()
    os.chmod(db_path, 0o644)
    one = create_app(run_dir, real_data=real_npz, db_path=db_path, study_size=N)
    study = one.state.study
    ann = invite(one, "Ann")
    c = TestClient(one)
    for im in study.images[:2]:
        assert c.post("/api/study/answer", json={"image_id": im.id, "answer": "real"},
                      headers=bearer(ann)).status_code == 201
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    # reopened as one phase: as it was
    again = create_app(run_dir, real_data=real_npz, db_path=db_path, study_size=N)
    nxt = TestClient(again).get("/api/study/next", headers=bearer(ann)).json()
    assert nxt["answered"] == 2 and nxt["phase"] == 1
    # reopened as two phases: the new tables are added, the old answers stay and are counted as outside the protocol
    two = create_app(run_dir, real_data=real_npz, db_path=db_path, study_size=N, study_phases=2)
    c2 = TestClient(two)
    nxt = c2.get("/api/study/next", headers=bearer(ann)).json()
    assert nxt["phase"] == 1 and nxt["answered"] == 0
    grade_all(c2, ann)
    nxt = c2.get("/api/study/next", headers=bearer(ann)).json()
    assert nxt["phase"] == 2 and nxt["answered"] == 2  # the old answers are kept: one answer per image
    res = c2.get("/api/study/results", headers=bearer(owner_token(two))).json()
    assert res["phase2"]["outside_protocol"] == 2 and res["phase2"]["overall"]["answered"] == 0
    assert res["phase1"]["readers"]["Ann"]["graded"] == N
    db = sqlite3.connect(db_path)
    tables = sorted(t[0] for t in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    cols = [col[1] for col in db.execute("PRAGMA table_info(answers)")]
    db.close()
    assert tables == ["answers", "grades", "phase2_answers", "readers", "token_secret", "tokens"]
    assert cols == ["reader", "image_id", "answer", "pneumonia", "answered_at"]  # unchanged
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    # and the one-phase app still opens it, two-phase tables and all
    nxt = TestClient(create_app(run_dir, real_data=real_npz, db_path=db_path, study_size=N)).get(
        "/api/study/next", headers=bearer(ann)).json()
    assert nxt["answered"] == 2


def test_the_database_enforces_its_rules(tmp_path):
    store = AnswerStore(tmp_path / "s.sqlite", phases=2)
    db = sqlite3.connect(tmp_path / "s.sqlite")
    bad = [("r", "i", "maybe", None, None, T0), ("r", "i", "normal", 6, None, T0),
           ("r", "i", "normal", "three", None, T0), ("r", "i", "normal", 2.5, None, T0),
           ("r", "i", "normal", None, "x" * 1001, T0), ("r", "i", "normal", None, "", T0)]
    for values in bad:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("INSERT INTO grades VALUES (?, ?, ?, ?, ?, ?)", values)
    db.close()
    store.add_grade("r", "i", "normal", 5, None)
    with pytest.raises(Exception, match="already graded"):
        store.add_grade("r", "i", "pneumonia", None, None)
    with pytest.raises(DataError, match="1 or 2 phases"):
        AnswerStore(tmp_path / "t.sqlite", phases=3)


# ---- create_app and the CLI -----------------------------------------------------------------------


def test_study_phases_option(run_dir, real_npz, tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from fedsynth.cli import app as cli

    for bad in (0, 3, True, "2"):
        with pytest.raises(DataError, match="1 or 2 phases"):
            create_app(run_dir, real_data=real_npz, db_path=tmp_path / "x.sqlite", study_phases=bad)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append(application))
    result = CliRunner().invoke(cli, ["serve", str(run_dir), "--real-data", str(real_npz), "--db",
                                      str(tmp_path / "s.sqlite"), "--study-phases", "2"])
    assert result.exit_code == 0, result.output
    assert calls[0].state.study_phases == 2 and "two phases" in result.output
    result = CliRunner().invoke(cli, ["serve", str(run_dir), "--real-data", str(real_npz), "--db",
                                      str(tmp_path / "s.sqlite"), "--study-phases", "3"])
    assert result.exit_code == 2 and "1 or 2 phases" in result.output and len(calls) == 1


# ---- property-based: any body is stored or refused clearly, never a 5xx -----------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)
FIELD = {
    "image_id": st.one_of(JSON, st.just("IMAGE")), "grade": st.one_of(JSON, st.sampled_from(["normal", "pneumonia"])),
    "answer": st.one_of(JSON, st.sampled_from(["real", "synthetic"])),
    "confidence": st.one_of(JSON, st.integers(0, 6)), "comment": st.one_of(JSON, st.text(max_size=1100)),
    "pneumonia": JSON,
}


@pytest.fixture(scope="module")
def shared(run_dir, real_npz, tmp_path_factory):
    app = create_app(run_dir, real_data=real_npz, db_path=tmp_path_factory.mktemp("fuzz") / "s.sqlite",
                     study_size=N, study_phases=2)
    return app, TestClient(app), invite(app, "Ann"), invite(app, "Bob")


@settings(deadline=None, derandomize=True, database=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON, st.fixed_dictionaries({}, optional=FIELD)), who=st.sampled_from(["Ann", "Bob"]))
def test_any_two_phase_body_is_stored_or_refused_clearly(shared, body, who):
    app, client, ann, bob = shared
    if who == "Bob":
        grade_all(client, bob)  # Bob is in phase 2
    if isinstance(body, dict) and body.get("image_id") == "IMAGE":
        body["image_id"] = app.state.study.images[0].id
    r = client.post("/api/study/answer", content=json.dumps(body).encode(),
                    headers={**bearer(ann if who == "Ann" else bob), "content-type": "application/json"})
    assert r.status_code in (201, 400, 404, 409), r.text
    assert len(r.json().get("detail", "x" * 20)) >= 15
    if who == "Ann" and r.status_code != 201:
        assert_blind(r.text, "phase-1 refusal")
