"""The app's HTML: plain strings, every value escaped, no external resources.

The stylesheet (:data:`CSS`) and the one script (:data:`SCRIPT`) are served by the app at
``/static/...``: the Content-Security-Policy allows no inline script or style.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from fedsynth.webapp.study import COMMENT_MAX, CONFIDENCE_MAX, CONFIDENCE_MIN

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f5f6f8}
header{background:#1f3a5f;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.4rem;align-items:baseline}
header b{font-size:1.1rem} header a{color:#dbe7f5;text-decoration:none} header a:hover{text-decoration:underline}
main{max-width:980px;margin:1rem auto;padding:0 1.2rem}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:1rem 1.2rem;margin:0 0 1rem}
.warn{background:#fff4d6;border:1px solid #e0b84c;border-radius:6px;padding:.6rem 1rem;margin:0 0 1rem}
.error{background:#fde8e8;border:1px solid #d9534f;border-radius:6px;padding:.6rem 1rem;margin:0 0 1rem}
.big{font-size:2.2rem;font-weight:700} .pos{color:#b3261e} .neg{color:#1b6e3a}
.row{display:flex;gap:1.2rem;flex-wrap:wrap} figure{margin:0} figcaption{font-size:.85rem;color:#555}
img.view{width:320px;height:320px;image-rendering:auto;border:1px solid #ccc;background:#000}
img.study{width:448px;height:448px;border:1px solid #ccc;background:#000}
img.thumb{width:96px;height:96px;border:1px solid #ccc}
table{border-collapse:collapse} th,td{border-bottom:1px solid #e3e6ea;padding:.3rem .7rem;text-align:left}
button{font-size:1rem;padding:.45rem 1.1rem;border-radius:5px;border:1px solid #1f3a5f;background:#1f3a5f;color:#fff;
cursor:pointer} button.alt{background:#fff;color:#1f3a5f} input[type=text]{font-size:1rem;padding:.35rem}
small,.muted{color:#5b6570} code{background:#eef0f3;padding:0 .25rem;border-radius:3px}
header .run{margin-left:auto;color:#b9c8da} figure.mistaken{padding:.5rem;width:150px}
textarea{font:inherit;width:100%;max-width:30rem;box-sizing:border-box} .comment{white-space:pre-wrap}
fieldset{border:none;padding:0;margin:0 0 .8rem} legend{font-weight:700;padding:0}
"""

CSS_URL = "/static/fedsynth.css"
SCRIPT_URL = "/static/fedsynth.js"
SCRIPT = """"use strict";
(function () {
  // the score form: refuse a file over the limit before uploading it
  var form = document.getElementById("score-form");
  if (form) {
    form.addEventListener("submit", function (e) {
      var f = document.getElementById("file").files[0];
      if (f && f.size > Number(form.dataset.maxBytes)) {
        e.preventDefault();
        document.getElementById("size-error").textContent = "this file is larger than " + form.dataset.maxLabel;
      }
    });
  }
  // an invitation link's token is now in a cookie: take it out of the address bar and the history
  if (/[?&]token=/.test(window.location.search) && window.history && window.history.replaceState) {
    var q = new URLSearchParams(window.location.search);
    q.delete("token");
    var rest = q.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
  }
})();
"""

DISCLAIMER = ("Research software, not a medical device: a score here is no diagnosis. "
              "Uploaded files are deleted after scoring and never stored.")


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def layout(title: str, body: str, *, phantom_warning: str | None, run_id: str, blind: bool = False) -> str:
    """``blind``: a phase-1 page of a two-phase study, whose header links neither the generator
    nor the results (which would tell the reader that some images are synthetic)."""
    banner = f'<div class="warn" id="phantom-warning"><b>Phantom run.</b> {escape(phantom_warning)}</div>' \
        if phantom_warning else ""
    links = ('<a href="/">Score an X-ray</a>\n<a href="/study">Reader study</a>' if blind else
             '<a href="/">Score an X-ray</a><a href="/generate">Generate</a>\n<a href="/study">Reader study</a>\n'
             '<a href="/study/results">Study results</a><a href="/api/health">API</a>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)} – fedsynth</title><link rel="stylesheet" href="{CSS_URL}">
<script src="{SCRIPT_URL}" defer></script></head>
<body><header><b>fedsynth</b>{links}
<span class="muted run">run {escape(run_id)}</span></header>
<main>{banner}{body}<p><small>{escape(DISCLAIMER)}</small></p></main></body></html>"""


# ---- scoring -----------------------------------------------------------------------------------


def score_page(*, info: dict, accept: str, max_bytes: int, csrf: str, result: dict | None = None,
               error: str | None = None, filename: str | None = None,
               error_title: str = "Cannot score this file.") -> str:
    """``csrf``: the form's CSRF token. It travels in the form's action URL, not in a hidden field:
    the upload is streamed to disk by scoring.receive_upload, which reads the file part only. It is
    no credential (useless without this browser's session cookie) and no-referrer keeps it in."""
    err = f'<div class="error" id="error"><b>{escape(error_title)}</b> {escape(error)}</div>' if error else ""
    out = ""
    if result is not None:
        positive = result["prediction"] == "pneumonia"
        out = ood_notice(result) + f"""
<div class="card" id="result">
  <h2>Result{' for ' + escape(filename) if filename else ''}</h2>
  <div class="row">
    <div>
      <div class="muted">pneumonia probability</div>
      <div class="big {'pos' if positive else 'neg'}" id="probability">{result['probability']:.3f}</div>
      <p>threshold <b id="threshold">{result['threshold']:.3f}</b> &rarr;
         prediction <b id="prediction" class="{'pos' if positive else 'neg'}">{escape(result['prediction'])}</b><br>
         <small>scored at {result['resolution']} &times; {result['resolution']} px, preprocessed exactly as the
         classifier's training images (centre crop, resize)</small></p>
    </div>
    <figure><img class="view" id="input-image" alt="the image as the classifier sees it"
      src="data:image/png;base64,{result['image_png_base64']}"><figcaption>what the classifier sees</figcaption>
    </figure>
    <figure><img class="view" id="overlay-image" alt="Grad-CAM heat map over the image"
      src="data:image/png;base64,{result['overlay_png_base64']}">
      <figcaption>Grad-CAM: red = regions that raised the pneumonia score</figcaption></figure>
  </div>
</div>"""
    return f"""
<h1>Score a chest X-ray</h1>
{err}
<div class="card">
<form method="post" action="/score?{urlencode({'csrf': csrf})}" enctype="multipart/form-data" id="score-form"
  data-max-bytes="{max_bytes}" data-max-label="{max_bytes / 2**20:.3g} MB">
  <p>PNG, JPEG or DICOM, at most {max_bytes / 2**20:.3g} MB. The run's classifier
  ({escape(info['arch'])}, {info['resolution']} px) returns the probability of pneumonia.</p>
  <input type="file" name="file" id="file" accept="{escape(accept)}" required>
  <button type="submit" id="score-button">Score</button>
  <span id="size-error" class="pos"></span>
</form>
<p><small>JSON API: <code>curl -F file=@xray.png http://HOST:PORT/api/score</code></small></p>
</div>
{out}"""


def ood_notice(result: dict) -> str:
    """The out-of-distribution warning above a result (a quiet note when the classifier cannot tell)."""
    flag = result.get("out_of_distribution")
    if flag:
        return ('<div class="warn" id="ood-warning"><b>Out of distribution.</b> This image is unlike the '
                "classifier's training images (out-of-distribution score "
                f"{fmt(result.get('ood_score'), 2)} &gt; {fmt(result.get('ood_threshold'), 2)}): it may not be a "
                "chest X-ray of the kind the classifier knows, and its score is unreliable.</div>")
    if flag is None:
        return ('<p class="muted" id="ood-unknown"><small>This classifier has no out-of-distribution reference '
                "(saved before fedsynth made one): an image unlike its training data is not flagged.</small></p>")
    return ""


# ---- reader study ------------------------------------------------------------------------------


def study_disabled_page(reason: str) -> str:
    return f"""
<h1>Reader study</h1>
<div class="warn" id="study-disabled"><b>The reader study is not available here.</b> {escape(reason)}</div>"""


def study_invitation_page(*, n_images: int | None = None, error: str | None = None, blind: bool = False) -> str:
    """What a reader without a (valid) invitation sees; ``blind``: a two-phase study's, whose
    readers must not learn before phase 2 what the second question is."""
    err = f'<div class="error" id="error">{escape(error)}</div>' if error else ""
    size = f"{n_images} chest X-rays" if n_images else "chest X-rays"
    return f"""
<h1>Reader study{'' if blind else ': real or synthetic?'}</h1>
{err}
<div class="card" id="invitation-needed">
<p>The reader study is by invitation. Open the link the study's owner gave you (it looks like
<code>http://HOST:PORT/study?token=...</code>): it shows you {size}, one at a time, under the name the
owner invited you with. Each link is for one reader; do not share it.</p>
<p><small>The owner creates one link per reader with
<code>fedsynth study invite RUN_DIR --reader NAME</code>.</small></p>
</div>"""


def _image_form(form_id: str, csrf: str, image_id: str, position: int, controls: str) -> str:
    """A study image beside its answer controls, in one form posting to /study/answer (CSRF and image id)."""
    return f"""<form method="post" action="/study/answer" id="{form_id}">
  <input type="hidden" name="csrf" value="{escape(csrf)}">
  <input type="hidden" name="image_id" value="{escape(image_id)}">
  <div class="row">
    <img class="study" id="study-image" alt="chest X-ray {position}" src="/study/image/{escape(image_id)}.png">
    <div>
      {controls}
    </div>
  </div>
</form>"""


def _progress(image_id: str, position: int, n_images: int, done: str = "Answered") -> str:
    return f"<p><small>Image id {escape(image_id)}. {done}: {position - 1} of {n_images}.</small></p>"


REAL_OR_SYNTHETIC = """<p><b>This image is</b><br>
      <button type="submit" name="answer" value="real" id="answer-real" class="alt">real</button>
      <button type="submit" name="answer" value="synthetic" id="answer-synthetic" class="alt">synthetic</button></p>"""


def study_image_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str,
                     notice: str | None = None) -> str:
    note = f'<div class="warn" id="notice">{escape(notice)}</div>' if notice else ""
    r = escape(reader)
    form = _image_form("answer-form", csrf, image_id, position, f"""<p><b>Pneumonia?</b> (optional)<br>
      <label><input type="radio" name="pneumonia" value="yes"> yes</label>
      <label><input type="radio" name="pneumonia" value="no"> no</label>
      <label><input type="radio" name="pneumonia" value="" checked> no answer</label></p>
      {REAL_OR_SYNTHETIC}
      {_progress(image_id, position, n_images)}""")
    return f"""
<h1>Reader study <small class="muted">– {r}, image {position} of {n_images}</small></h1>
{note}
<div class="card">
<p><small>You will see {n_images} chest X-rays, one at a time, in a fixed shuffled order. Some are this
hospital's real images; the others were made by the federation's image generators. Say whether you think each is
<b>real</b> or <b>synthetic</b>, and if you like whether it shows pneumonia. Each image is answered once: the first
answer counts. You can stop and come back later with your invitation link.</small></p>
{form}
</div>"""


def _comment_box(label: str) -> str:
    return f"""<p><label for="comment"><b>{escape(label)}</b> (optional, at most {COMMENT_MAX} characters)</label><br>
      <textarea name="comment" id="comment" rows="3" maxlength="{COMMENT_MAX}"></textarea></p>"""


def study_grade_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str, labels: tuple,
                     notice: str | None = None) -> str:
    """Phase 1 of a two-phase study: grade the image. Not a word about synthetic images."""
    note = f'<div class="warn" id="notice">{escape(notice)}</div>' if notice else ""
    r = escape(reader)
    buttons = "\n      ".join(
        f'<button type="submit" name="grade" value="{escape(c)}" id="grade-{escape(c)}" class="alt">'
        f'{escape(c)}</button>' for c in labels)
    scale = "".join(f'<label><input type="radio" name="confidence" value="{k}"> {k}</label> '
                    for k in range(CONFIDENCE_MIN, CONFIDENCE_MAX + 1))
    form = _image_form("grade-form", csrf, image_id, position, f"""<fieldset><legend>Confidence (optional)</legend>
      {scale}<label><input type="radio" name="confidence" value="" checked> no answer</label></fieldset>
      {_comment_box("Comment")}
      <p><b>Grade</b><br>
      {buttons}</p>
      {_progress(image_id, position, n_images, "Graded")}""")
    return f"""
<h1>Reader study <small class="muted">– {r}, phase 1 of 2, image {position} of {n_images}</small></h1>
{note}
<div class="card" id="phase1">
<p><small>Phase 1 of 2: grading. You will see {n_images} chest X-rays, one at a time, in a fixed shuffled order. Grade
each one ({' or '.join(escape(c) for c in labels)}), say how confident you are if you like ({CONFIDENCE_MIN} = guessing,
{CONFIDENCE_MAX} = certain) and add a comment if you wish. Each image is graded once: the first grade counts. A
second, shorter phase follows once every image is graded. You can stop and come back later with your invitation
link.</small></p>
{form}
</div>"""


def study_reveal_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str, intro: str,
                      notice: str | None = None) -> str:
    """Phase 2 of a two-phase study: first the truth about the images, then real or synthetic."""
    note = f'<div class="warn" id="notice">{escape(notice)}</div>' if notice else ""
    form = _image_form("answer-form", csrf, image_id, position, f"""{_comment_box("Comment")}
      {REAL_OR_SYNTHETIC}
      {_progress(image_id, position, n_images)}""")
    return f"""
<h1>Reader study <small class="muted">– {escape(reader)}, phase 2 of 2, image {position} of {n_images}</small></h1>
<div class="warn" id="phase2-intro"><b>Phase 2 of 2: real or synthetic?</b> {escape(intro)}</div>
{note}
<div class="card" id="phase2">
<p><small>Each image is answered once: the first answer counts. You can stop and come back later with your
invitation link.</small></p>
{form}
</div>"""


def study_done_page(*, reader: str, n_images: int, phases: int = 1) -> str:
    if phases == 2:
        return f"""
<h1>Reader study</h1>
<div class="card" id="study-done"><p>Thank you, {escape(reader)}: you have graded all {n_images} images and answered
both phases.</p>
<p>The study's owner reads the results once every reader has finished.</p></div>"""
    return _one_phase_done(reader=reader, n_images=n_images)


def _one_phase_done(*, reader: str, n_images: int) -> str:
    return f"""
<h1>Reader study</h1>
<div class="card" id="study-done"><p>Thank you, {escape(reader)}: you have answered all {n_images} images.</p>
<p>The study's owner reads the results once every reader has finished.</p></div>"""


def study_error_page(message: str) -> str:
    return f"""
<h1>Reader study</h1>
<div class="error" id="error">{escape(message)}</div>
<p><a href="/study">Back to your next image</a></p>"""


def denied_page(message: str) -> str:
    return f"""
<h1>Not allowed</h1>
<div class="error" id="error">{escape(message)}</div>"""


def study_results_page(results: dict) -> str:
    rows = []
    for name, m in results["readers"].items():
        rows.append(f"<tr><td>{escape(name)}</td><td>{m['answered']}{'' if m['complete'] else ' (in progress)'}</td>"
                    f"<td>{pct(m['accuracy'])}</td><td>{pct(m['sensitivity'])}</td><td>{pct(m['specificity'])}</td>"
                    f"<td>{pct(m['pneumonia_accuracy'])} <small>({m['pneumonia_answered']})</small></td></tr>")
    o = results["overall"]
    rows.append(f"<tr><td><b>all readers</b></td><td>{o['answered']}</td><td>{pct(o['accuracy'])}</td>"
                f"<td>{pct(o['sensitivity'])}</td><td>{pct(o['specificity'])}</td>"
                f"<td>{pct(o['pneumonia_accuracy'])} <small>({o['pneumonia_answered']})</small></td></tr>")
    mistaken = "".join(
        f"""<figure class="card mistaken"><img class="thumb" alt="{escape(m['image_id'])}"
  src="/study/image/{escape(m['image_id'])}.png"><figcaption><b>{escape(m['truth'])}</b>
  {'(' + escape(m['label']) + ')' if m['label'] else ''}<br>mistaken {m['mistaken']} of {m['answers']}<br>
  <small>{escape(m['image_id'])}</small></figcaption></figure>"""
        for m in results["most_mistaken"]
    ) or "<p class='muted'>No image mistaken yet.</p>"
    comp = results["composition"]
    return f"""
<h1>Reader study results</h1>
<div class="warn">These results reveal which images are real: open them only when every reader has finished.</div>
<div class="card">
<p>{results['n_images']} images ({comp['real']} real, {comp['synthetic']} synthetic). <b>Synthetic is the positive
class</b>: sensitivity = synthetic images called synthetic, specificity = real images called real. Accuracy near 50%
means readers could not tell real from synthetic.</p>
<table id="results-table"><tr><th>reader</th><th>answered</th><th>accuracy</th><th>sensitivity</th>
<th>specificity</th><th>pneumonia answers correct</th></tr>{''.join(rows)}</table>
</div>
<h2>Most often mistaken</h2>
<div class="row" id="most-mistaken">{mistaken}</div>
<p><small>JSON: <code>/api/study/results</code> with the owner token in <code>Authorization: Bearer</code>;
invite a reader: <code>fedsynth study invite RUN_DIR --reader NAME</code>.</small></p>"""


def _ci(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "–"
    lo, hi = p["ci95"]
    return f"{pct(p['value'])} <small>({pct(lo)}–{pct(hi)}; {p['k']}/{p['n']})</small>"


def _kappa(k: dict[str, Any]) -> str:
    return f"{fmt(k['kappa'], 2)} <small>(n={k['n']})</small>"


def _p_value(p: float | None) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def study_phase_results_page(results: dict) -> str:
    """The owner's results of a two-phase study: grading (kappa), real or synthetic (CIs), comments."""
    p1, p2, comp = results["phase1"], results["phase2"], results["composition"]
    rows1 = []
    for name, m in [*p1["readers"].items(), ("all readers", p1["overall"])]:
        state = "" if m.get("complete", True) else " (in progress)"
        rows1.append(f"<tr><td>{escape(name) if name != 'all readers' else '<b>all readers</b>'}</td>"
                     f"<td>{m['graded']}{state}</td><td>{_ci(m['accuracy'])}</td><td>{_kappa(m['kappa'])}</td>"
                     f"<td>{_kappa(m['kappa_synthetic'])}</td><td>{_kappa(m['kappa_real'])}</td>"
                     f"<td>{fmt(m['mean_confidence'], 2)} <small>({m['confidence_given']})</small></td></tr>")
    rows2 = []
    for name, m in [*p2["readers"].items(), ("all readers", p2["overall"])]:
        state = "" if m.get("complete", True) else " (in progress)"
        rows2.append(f"<tr><td>{escape(name) if name != 'all readers' else '<b>all readers</b>'}</td>"
                     f"<td>{m['answered']}{state}</td><td>{_ci(m['accuracy'])}</td><td>{_ci(m['sensitivity'])}</td>"
                     f"<td>{_ci(m['specificity'])}</td><td>{_p_value(m['p_value_vs_chance'])}</td></tr>")
    fk = p1["fleiss_kappa"]
    fleiss = (f"<b>{fmt(fk['kappa'], 3)}</b> ({fk['readers']} readers, {fk['images']} images graded by all)"
              if fk["kappa"] is not None else f"– ({escape(fk.get('why_none', ''))})")
    unlabelled = (f"<p><small>{p1['real_images_without_label']} real images have no label (the site's data has "
                  "none): they are left out of phase 1's accuracy and kappa.</small></p>"
                  if p1["real_images_without_label"] else "")
    outside = (f"<p><small>{p2['outside_protocol']} answers were given before the reader graded the image (a "
               "one-phase study's database): left out.</small></p>" if p2["outside_protocol"] else "")
    comments = "".join(
        f"""<tr><td><code>{escape(c['image_id'])}</code><br><small>{escape(c['origin'])}"""
        f"""{', ' + escape(c['label']) if c['label'] else ''}</small></td><td>"""
        + "".join(f"<p><b>{escape(n['reader'])}</b>, phase {n['phase']}: <span class='comment'>"
                  f"{escape(n['comment'])}</span></p>" for n in c["comments"]) + "</td></tr>"
        for c in results["comments"]) or "<tr><td colspan='2' class='muted'>No comments yet.</td></tr>"
    mistaken = "".join(
        f"""<figure class="card mistaken"><img class="thumb" alt="{escape(m['image_id'])}"
  src="/study/image/{escape(m['image_id'])}.png"><figcaption><b>{escape(m['truth'])}</b>
  {'(' + escape(m['label']) + ')' if m['label'] else ''}<br>mistaken {m['mistaken']} of {m['answers']}<br>
  <small>{escape(m['image_id'])}</small></figcaption></figure>"""
        for m in results["most_mistaken"]
    ) or "<p class='muted'>No image mistaken yet.</p>"
    return f"""
<h1>Reader study results <small class="muted">– two phases</small></h1>
<div class="warn">These results reveal which images are real: open them only when every reader has finished.</div>
<div class="card" id="phase1-results">
<h2>Phase 1: blind grading</h2>
<p>{results['n_images']} images ({comp['real']} real, {comp['synthetic']} synthetic), graded
{' / '.join(escape(c) for c in p1['labels'])} without knowing that some are synthetic. Cohen's kappa of each reader's
grades against the reference ({escape(p1['reference'])}), on all images, on the synthetic and on the real ones;
accuracy with its exact 95% interval; mean confidence (1-5; how many grades gave one).</p>
{unlabelled}
<table id="phase1-table"><tr><th>reader</th><th>graded</th><th>accuracy</th><th>kappa, all</th>
<th>kappa, synthetic</th><th>kappa, real</th><th>mean confidence</th></tr>{''.join(rows1)}</table>
<p id="fleiss">Fleiss' kappa across readers: {fleiss}</p>
</div>
<div class="card" id="phase2-results">
<h2>Phase 2: real or synthetic?</h2>
<p><b>Synthetic is the positive class</b>: sensitivity = synthetic images called synthetic, specificity = real images
called real. Exact (Clopper-Pearson) 95% intervals; p: two-sided exact binomial test of accuracy against 50% (chance).
Accuracy near 50% means readers could not tell real from synthetic.</p>
{outside}
<table id="phase2-table"><tr><th>reader</th><th>answered</th><th>accuracy</th><th>sensitivity</th>
<th>specificity</th><th>p vs 50%</th></tr>{''.join(rows2)}</table>
</div>
<h2>Most often mistaken (phase 2)</h2>
<div class="row" id="most-mistaken">{mistaken}</div>
<div class="card"><h2>Comments</h2><table id="comments">{comments}</table></div>
<p id="exports">Export (CSV, one row per reader and image): <a href="/study/export/phase1.csv" id="export-phase1">phase
1 grades</a>, <a href="/study/export/phase2.csv" id="export-phase2">phase 2 answers</a>.</p>
<p><small>JSON: <code>/api/study/results</code>; CSV: <code>/api/study/export/phase1.csv</code>,
<code>/api/study/export/phase2.csv</code>, each with the owner token in <code>Authorization: Bearer</code>;
invite a reader: <code>fedsynth study invite RUN_DIR --reader NAME</code>.</small></p>"""


def study_url(already: str | None = None) -> str:
    """The reader's next image (the reader comes from the invitation cookie, never from the URL)."""
    return "/study" + ("?" + urlencode({"already": already}) if already else "")
