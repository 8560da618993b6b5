"""The web app in a real browser: headless Chromium driven by Playwright.

Skipped, with the reason, when the Playwright Python package or a Chromium binary is
missing (CI installs both: `apt-get install chromium`, `pip install playwright`). The
browser is Debian's Chromium (or $FEDSYNTH_CHROMIUM); Playwright never downloads one.

Also the script that takes the screenshots in docs/ (phantom data only):

    python -m tests.test_webapp_browser RUN_DIR SITE_NPZ docs/
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.filterwarnings("ignore:The anyio.abc.BlockingPortal alias is deprecated")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("FEDSYNTH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app) -> Iterator[str]:
    """uvicorn on a free localhost port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def browser_page(width: int = 1100, height: int = 900):
    """A page in a fresh headless Chromium (Playwright gives each launch a new profile dir).
    ``page.csp_violations`` collects the Content-Security-Policy violations the browser
    reports: the app's pages must cause none."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            page.csp_violations = []
            page.on("console", lambda msg: page.csp_violations.append(msg.text)
                    if "Content Security Policy" in msg.text else None)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser_ready():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Playwright Python package is not installed (pip install playwright; "
                    "no browser download is needed, the test uses Debian's chromium)")
    if chromium_path() is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set FEDSYNTH_CHROMIUM)")


@pytest.fixture(scope="module")
def site(tmp_path_factory, browser_ready):
    from tests.test_webapp import make_real, make_run

    root = tmp_path_factory.mktemp("browser")
    return make_run(root), make_real(root / "real.npz"), root


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_browser_uploads_an_xray_and_reads_the_probability(site):
    from fedsynth.classifier.predict import load_run_classifier
    from fedsynth.data.ingest import read_image_file
    from fedsynth.data.phantom import make_phantoms
    from fedsynth.data.preprocess import prepare
    from fedsynth.webapp import create_app

    run_dir, _, root = site
    xray = root / "chest.png"
    Image.fromarray((make_phantoms(1, 96, seed=4).images[0] * 255).round().astype(np.uint8)).save(xray)
    clf = load_run_classifier(run_dir)
    expected = float(clf.predict_proba(prepare(read_image_file(xray), clf.resolution)[None])[0])

    with serving(create_app(run_dir)) as url, browser_page() as page:
        page.goto(url + "/")
        assert "Score a chest X-ray" in page.inner_text("h1")
        assert "PHANTOMS" in page.inner_text("#phantom-warning")
        page.set_input_files("#file", str(xray))
        page.click("#score-button")
        page.wait_for_selector("#probability")
        shown = float(page.inner_text("#probability"))
        assert shown == pytest.approx(expected, abs=5e-4)
        assert page.inner_text("#threshold") == f"{clf.threshold:.3f}"
        # the prediction of the unrounded probability (the page shows 3 digits: 0.50079 reads 0.501 < 0.50090)
        assert page.inner_text("#prediction") == ("pneumonia" if expected >= clf.threshold else "normal")
        # both pictures decoded and laid out by the browser
        for sel in ("#input-image", "#overlay-image"):
            page.wait_for_function(f"() => {{ const i = document.querySelector('{sel}');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            assert page.eval_on_selector(sel, "img => img.naturalWidth") == 320

        # a bad file gets its reason on the page
        bad = root / "notes.png"
        bad.write_bytes(b"not an image")
        page.goto(url + "/")
        page.set_input_files("#file", str(bad))
        page.click("#score-button")
        assert "corrupt or not an image" in page.inner_text("#error")

        # the size check runs from the app's own script (no inline script under the CSP)
        big = root / "big.png"
        big.write_bytes(b"\x89PNG" + b"\0" * (21 * 2**20))
        page.goto(url + "/")
        page.set_input_files("#file", str(big))
        page.click("#score-button")
        assert "larger than 20 MB" in page.inner_text("#size-error")
        assert page.csp_violations == []


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_browser_reader_completes_a_study(site, tmp_path):
    from fedsynth.webapp import create_app

    run_dir, real, _ = site
    app = create_app(run_dir, real_data=real, db_path=tmp_path / "study.sqlite", study_size=4, seed=0)
    invitation = app.state.tokens.invite("Dr Browser").token  # what `fedsynth study invite` prints
    owner = app.state.tokens.issue_owner().token  # what `fedsynth serve` prints
    with serving(app) as url, browser_page() as page:
        page.goto(url + "/study")
        assert "by invitation" in page.inner_text("#invitation-needed")
        page.goto(url + "/study?token=" + invitation)  # the reader clicks the link
        assert "Dr Browser, image 1 of 4" in page.inner_text("h1")
        page.wait_for_function("() => !location.search.includes('token=')")  # the script took it out
        page.reload()  # the HttpOnly cookie carries the invitation now
        assert "Dr Browser, image 1 of 4" in page.inner_text("h1")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the token
        for k in range(4):
            heading = page.inner_text("h1")
            assert f"image {k + 1} of 4" in heading
            # the image arrives after the page; wait for it instead of racing a busy machine
            page.wait_for_function("() => { const i = document.querySelector('#study-image');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            assert page.eval_on_selector("#study-image", "img => img.naturalWidth") == 448
            if k == 0:
                page.check("input[name=pneumonia][value=yes]")
            page.click("#answer-real" if k % 2 == 0 else "#answer-synthetic")
        assert "answered all 4 images" in page.inner_text("#study-done")
        page.goto(url + "/study/results")
        assert "study's owner" in page.inner_text("#error")  # a reader's cookie opens no results
        page.goto(url + "/study/results?token=" + owner)
        table = page.inner_text("#results-table")
        assert page.csp_violations == []
    truth = [im.kind for im in app.state.study.images]
    given = ["real", "synthetic", "real", "synthetic"]
    correct = sum(t == g for t, g in zip(truth, given))
    assert re.search(rf"Dr Browser\s+4\s+{100 * correct / 4:.1f}%", table), table


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_browser_reader_completes_a_two_phase_study(site, tmp_path):
    """Phase 1 (grading, nothing said about synthetic images), then phase 2 (real or synthetic)."""
    from fedsynth.webapp import create_app

    run_dir, real, _ = site
    app = create_app(run_dir, real_data=real, db_path=tmp_path / "study2.sqlite", study_size=4, seed=0,
                     study_phases=2)
    invitation = app.state.tokens.invite("Dr Two").token
    owner = app.state.tokens.issue_owner().token
    ids = [im.id for im in app.state.study.images]
    wait_image = ("() => { const i = document.querySelector('#study-image');"
                  " return i && i.complete && i.naturalWidth > 0; }")
    with serving(app) as url, browser_page() as page:
        page.goto(url + "/study?token=" + invitation)
        for k in range(4):
            assert f"phase 1 of 2, image {k + 1} of 4" in page.inner_text("h1")
            text = page.inner_text("body")
            assert not re.search(r"synthetic|generat|\breal\b", text, re.I), text
            page.wait_for_function(wait_image, timeout=30_000)
            if k == 0:
                page.check("input[name=confidence][value='4']")
                page.fill("#comment", "dense right base\nsecond line")
            page.click("#grade-pneumonia" if k % 2 == 0 else "#grade-normal")
        # phase 2: told first, then the same images in the same order
        for k in range(4):
            assert f"phase 2 of 2, image {k + 1} of 4" in page.inner_text("h1")
            assert "some of them were synthetic" in page.inner_text("#phase2-intro")
            page.wait_for_function(wait_image, timeout=30_000)
            assert page.get_attribute("input[name=image_id]", "value") == ids[k]
            if k == 1:
                page.fill("#comment", "=looks generated")
            page.click("#answer-synthetic")
        assert "graded all 4 images" in page.inner_text("#study-done")
        page.goto(url + "/study/results?token=" + owner)
        phase1, phase2 = page.inner_text("#phase1-table"), page.inner_text("#phase2-table")
        comments = page.inner_text("#comments")
        with page.expect_download() as download:
            page.click("#export-phase1")
        exported = Path(download.value.path()).read_text()
        assert page.csp_violations == []
    assert re.search(r"Dr Two\s+4\s", phase1) and re.search(r"Dr Two\s+4\s+50\.0%", phase2), (phase1, phase2)
    assert "dense right base" in comments and "=looks generated" in comments
    grades = {g.image_id: g for g in app.state.store.all_grades()}
    assert [grades[i].grade for i in ids] == ["pneumonia", "normal", "pneumonia", "normal"]
    assert grades[ids[0]].confidence == 4 and grades[ids[0]].comment == "dense right base\nsecond line"
    assert exported.startswith("reader,image_id,") and exported.count("Dr Two") == 4


# ---- screenshots for docs/ ------------------------------------------------------------------------


def take_screenshots(run_dir: Path, site_npz: Path, out: Path) -> list[Path]:
    """The score page with a result and the reader-study page, on a phantom run."""
    import tempfile

    from fedsynth.classifier.predict import load_run_classifier
    from fedsynth.data.phantom import make_phantoms
    from fedsynth.data.preprocess import prepare_batch
    from fedsynth.webapp import create_app

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        xray = Path(tmp) / "phantom-chest.png"
        # a pneumonia phantom the run's classifier calls positive, so the heat map has something to show
        ds = make_phantoms(16, 256, seed=7)
        clf = load_run_classifier(run_dir)
        probs = clf.predict_proba(prepare_batch(ds.images, clf.resolution))
        hits = np.flatnonzero((ds.labels == 1) & (probs >= clf.threshold))
        image = ds.images[int(hits[0] if hits.size else np.flatnonzero(ds.labels == 1)[0])]
        Image.fromarray((image * 255).round().astype(np.uint8)).save(xray)
        app = create_app(run_dir, real_data=site_npz, db_path=Path(tmp) / "study.sqlite")
        invitation = app.state.tokens.invite("Reader 1").token
        with serving(app) as url, browser_page(1100, 860) as page:
            page.goto(url + "/")
            page.set_input_files("#file", str(xray))
            page.click("#score-button")
            page.wait_for_selector("#probability")
            score_png = out / "webapp-score.png"
            page.screenshot(path=str(score_png), full_page=True)
            page.goto(url + "/study?token=" + invitation)
            for answer in ("#answer-real", "#answer-synthetic"):
                page.click(answer)
            page.check("input[name=pneumonia][value=no]")
            study_png = out / "webapp-reader-study.png"
            page.screenshot(path=str(study_png), full_page=True)
    return [score_png, study_png]


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tests.test_webapp_browser RUN_DIR SITE_NPZ OUT_DIR")
    for path in take_screenshots(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])):
        print("wrote", path)
