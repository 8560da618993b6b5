"""The app's HTML: plain strings, every value escaped, no external resources.

The page shell, the stylesheet and escaping are :mod:`fedsynth.presentation`'s, shared with
every other HTML page fedsynth makes. The app serves the stylesheet and its one script
(:data:`SCRIPT`) at ``/static/...``: the Content-Security-Policy allows no inline script or style.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fedsynth.presentation import PNG_DATA_URI, esc, fmt, page_shell, pct
from fedsynth.webapp.study import COMMENT_MAX, CONFIDENCE_MAX, CONFIDENCE_MIN

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


def layout(title: str, body: str, *, phantom_warning: str | None, run_id: str, blind: bool = False) -> str:
    """``blind``: a phase-1 page of a two-phase study, whose header links neither the generator
    nor the results (which would tell the reader that some images are synthetic)."""
    banner = f'<div class="caution" id="phantom-warning"><b>Phantom run.</b> {esc(phantom_warning)}</div>' \
        if phantom_warning else ""
    links = ('<a href="/">Score an X-ray</a>\n<a href="/study">Reader study</a>' if blind else
             '<a href="/">Score an X-ray</a><a href="/generate">Generate</a>\n<a href="/study">Reader study</a>\n'
             '<a href="/study/results">Study results</a><a href="/api/health">API</a>')
    bar = f'<header class="appbar"><b>fedsynth</b>{links}\n<span class="run">run {esc(run_id)}</span></header>'
    main = f"<main>{banner}{body}<p><small>{esc(DISCLAIMER)}</small></p></main>"
    return page_shell(f"{title} – fedsynth", f"{bar}\n{main}", stylesheet_url=CSS_URL, script_url=SCRIPT_URL)


# ---- scoring -----------------------------------------------------------------------------------


def score_page(*, info: dict, accept: str, max_bytes: int, csrf: str, result: dict | None = None,
               error: str | None = None, filename: str | None = None,
               error_title: str = "Cannot score this file.") -> str:
    """``csrf``: the form's CSRF token. It travels in the form's action URL, not in a hidden field:
    the upload is streamed to disk by scoring.receive_upload, which reads the file part only. It is
    no credential (useless without this browser's session cookie) and no-referrer keeps it in."""
    err = f'<div class="error" id="error"><b>{esc(error_title)}</b> {esc(error)}</div>' if error else ""
    out = ""
    if result is not None:
        positive = result["prediction"] == "pneumonia"
        out = ood_notice(result) + f"""
<div class="card" id="result">
  <h2>Result{' for ' + esc(filename) if filename else ''}</h2>
  <div class="row">
    <div>
      <div class="muted">pneumonia probability</div>
      <div class="big {'pos' if positive else 'neg'}" id="probability">{result['probability']:.3f}</div>
      <p>threshold <b id="threshold">{result['threshold']:.3f}</b> &rarr;
         prediction <b id="prediction" class="{'pos' if positive else 'neg'}">{esc(result['prediction'])}</b><br>
         <small>scored at {result['resolution']} &times; {result['resolution']} px, preprocessed exactly as the
         classifier's training images (centre crop, resize)</small></p>
    </div>
    <figure><img class="view" id="input-image" alt="the image as the classifier sees it"
      src="{PNG_DATA_URI}{result['image_png_base64']}"><figcaption>what the classifier sees</figcaption>
    </figure>
    <figure><img class="view" id="overlay-image" alt="Grad-CAM heat map over the image"
      src="{PNG_DATA_URI}{result['overlay_png_base64']}">
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
  ({esc(info['arch'])}, {info['resolution']} px) returns the probability of pneumonia.</p>
  <input type="file" name="file" id="file" accept="{esc(accept)}" required>
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
        return ('<div class="caution" id="ood-warning"><b>Out of distribution.</b> This image is unlike the '
                "classifier's training images (out-of-distribution score "
                f"{fmt(result.get('ood_score'), 2)} &gt; {fmt(result.get('ood_threshold'), 2)}): it may not be a "
                "chest X-ray of the kind the classifier knows, and its score is unreliable.</div>")
    if flag is None:
        return ('<p class="muted" id="ood-unknown"><small>This classifier has no out-of-distribution reference '
                "(saved before fedsynth made one): an image unlike its training data is not flagged.</small></p>")
    return ""


# ---- generating -------------------------------------------------------------------------------


def generate_form(sources: list[str], classes: tuple[str, ...], req: dict[str, Any] | None = None, *,
                  max_images: int) -> str:
    """The request form of ``/generate``, filled in with ``req`` (the defaults when None)."""
    req = req or {"source": next(iter(sources), ""), "label": classes[-1], "edit_to": None, "strength": 0.5,
                  "n": 8, "seed": 0}

    def options(values, chosen) -> str:
        return "".join(f"<option value='{esc(v)}'{' selected' if v == chosen else ''}>{esc(v or '–')}"
                       "</option>" for v in values)

    return f"""
<h1>Synthetic X-rays to a specification</h1>
<div class="card"><form method="get" action="/generate" id="generate-form">
  <label>generator <select name="source">{options(sources, req['source'])}</select></label>
  <label>class <select name="label">{options(classes, req['label'])}</select></label>
  <label>images <input type="number" name="n" min="1" max="{max_images}" value="{req['n']}"></label>
  <label>edit to <select name="edit_to">{options(['', *classes], req['edit_to'] or '')}</select></label>
  <label>strength <input type="number" name="strength" min="0" max="1" step="0.05" value="{req['strength']}">
  </label>
  <label>seed <input type="number" name="seed" min="0" value="{req['seed']}"></label>
  <button type="submit" id="generate-button">Generate</button>
</form>
<p><small>Synthetic images only, sampled from the run's generators; nothing real is shown. The same seed draws
the same images. JSON: <code>/api/generate?label=pneumonia&amp;n=4</code></small></p></div>"""


def generated_images(result: dict[str, Any]) -> str:
    """The images ``/generate`` drew (each beside its edit, when asked), with the classifier's scores."""
    cells = []
    for i, im in enumerate(result["images"]):
        if "edited_png_base64" in im:
            cells.append(f"""<figure class="pair"><img class="view" alt="synthetic {i + 1}"
  src="{PNG_DATA_URI}{im['png_base64']}"><img class="view" alt="edited {i + 1}"
  src="{PNG_DATA_URI}{im['edited_png_base64']}"><figcaption>pneumonia {fmt(im['score'])} &rarr;
  {fmt(im['edited_score'])}; SSIM {im['ssim']:.3f}</figcaption></figure>""")
        else:
            cells.append(f"""<figure><img class="view" alt="synthetic {i + 1}"
  src="{PNG_DATA_URI}{im['png_base64']}"><figcaption>pneumonia {fmt(im['score'])}</figcaption></figure>""")
    req = result["request"]
    what = (f"{req['label']} edited to {req['edit_to']} at strength {req['strength']:g}" if req["edit_to"]
            else f"{req['label']}")
    return (f"<div class='card' id='generated'><h2>{len(result['images'])} synthetic {esc(what)} "
            f"({esc(result['family'])}, {result['resolution']} px, {esc(req['source'])})</h2>"
            f"<div class='row'>{''.join(cells)}</div><p><small>Classifier threshold {result['threshold']:.3f}. "
            "Synthetic images: for teaching and testing, not for diagnosis.</small></p></div>")


# ---- reader study ------------------------------------------------------------------------------


def study_disabled_page(reason: str) -> str:
    return f"""
<h1>Reader study</h1>
<div class="caution" id="study-disabled"><b>The reader study is not available here.</b> {esc(reason)}</div>"""


def study_invitation_page(*, n_images: int | None = None, error: str | None = None, blind: bool = False) -> str:
    """What a reader without a (valid) invitation sees; ``blind``: a two-phase study's, whose
    readers must not learn before phase 2 what the second question is."""
    err = f'<div class="error" id="error">{esc(error)}</div>' if error else ""
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
  <input type="hidden" name="csrf" value="{esc(csrf)}">
  <input type="hidden" name="image_id" value="{esc(image_id)}">
  <div class="row">
    <img class="study" id="study-image" alt="chest X-ray {position}" src="/study/image/{esc(image_id)}.png">
    <div>
      {controls}
    </div>
  </div>
</form>"""


def _progress(image_id: str, position: int, n_images: int, done: str = "Answered") -> str:
    return f"<p><small>Image id {esc(image_id)}. {done}: {position - 1} of {n_images}.</small></p>"


REAL_OR_SYNTHETIC = """<p><b>This image is</b><br>
      <button type="submit" name="answer" value="real" id="answer-real" class="alt">real</button>
      <button type="submit" name="answer" value="synthetic" id="answer-synthetic" class="alt">synthetic</button></p>"""


def study_image_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str,
                     notice: str | None = None) -> str:
    note = f'<div class="caution" id="notice">{esc(notice)}</div>' if notice else ""
    r = esc(reader)
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
    return f"""<p><label for="comment"><b>{esc(label)}</b> (optional, at most {COMMENT_MAX} characters)</label><br>
      <textarea name="comment" id="comment" rows="3" maxlength="{COMMENT_MAX}"></textarea></p>"""


def study_grade_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str, labels: tuple,
                     notice: str | None = None) -> str:
    """Phase 1 of a two-phase study: grade the image. Not a word about synthetic images."""
    note = f'<div class="caution" id="notice">{esc(notice)}</div>' if notice else ""
    r = esc(reader)
    buttons = "\n      ".join(
        f'<button type="submit" name="grade" value="{esc(c)}" id="grade-{esc(c)}" class="alt">'
        f'{esc(c)}</button>' for c in labels)
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
each one ({' or '.join(esc(c) for c in labels)}), say how confident you are if you like ({CONFIDENCE_MIN} = guessing,
{CONFIDENCE_MAX} = certain) and add a comment if you wish. Each image is graded once: the first grade counts. A
second, shorter phase follows once every image is graded. You can stop and come back later with your invitation
link.</small></p>
{form}
</div>"""


def study_reveal_page(*, reader: str, image_id: str, position: int, n_images: int, csrf: str, intro: str,
                      notice: str | None = None) -> str:
    """Phase 2 of a two-phase study: first the truth about the images, then real or synthetic."""
    note = f'<div class="caution" id="notice">{esc(notice)}</div>' if notice else ""
    form = _image_form("answer-form", csrf, image_id, position, f"""{_comment_box("Comment")}
      {REAL_OR_SYNTHETIC}
      {_progress(image_id, position, n_images)}""")
    return f"""
<h1>Reader study <small class="muted">– {esc(reader)}, phase 2 of 2, image {position} of {n_images}</small></h1>
<div class="caution" id="phase2-intro"><b>Phase 2 of 2: real or synthetic?</b> {esc(intro)}</div>
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
<div class="card" id="study-done"><p>Thank you, {esc(reader)}: you have graded all {n_images} images and answered
both phases.</p>
<p>The study's owner reads the results once every reader has finished.</p></div>"""
    return _one_phase_done(reader=reader, n_images=n_images)


def _one_phase_done(*, reader: str, n_images: int) -> str:
    return f"""
<h1>Reader study</h1>
<div class="card" id="study-done"><p>Thank you, {esc(reader)}: you have answered all {n_images} images.</p>
<p>The study's owner reads the results once every reader has finished.</p></div>"""


def study_error_page(message: str) -> str:
    return f"""
<h1>Reader study</h1>
<div class="error" id="error">{esc(message)}</div>
<p><a href="/study">Back to your next image</a></p>"""


def denied_page(message: str) -> str:
    return f"""
<h1>Not allowed</h1>
<div class="error" id="error">{esc(message)}</div>"""


def study_results_page(results: dict) -> str:
    rows = []
    for name, m in results["readers"].items():
        rows.append(f"<tr><td>{esc(name)}</td><td>{m['answered']}{'' if m['complete'] else ' (in progress)'}</td>"
                    f"<td>{pct(m['accuracy'])}</td><td>{pct(m['sensitivity'])}</td><td>{pct(m['specificity'])}</td>"
                    f"<td>{pct(m['pneumonia_accuracy'])} <small>({m['pneumonia_answered']})</small></td></tr>")
    o = results["overall"]
    rows.append(f"<tr><td><b>all readers</b></td><td>{o['answered']}</td><td>{pct(o['accuracy'])}</td>"
                f"<td>{pct(o['sensitivity'])}</td><td>{pct(o['specificity'])}</td>"
                f"<td>{pct(o['pneumonia_accuracy'])} <small>({o['pneumonia_answered']})</small></td></tr>")
    mistaken = "".join(
        f"""<figure class="card mistaken"><img class="thumb" alt="{esc(m['image_id'])}"
  src="/study/image/{esc(m['image_id'])}.png"><figcaption><b>{esc(m['truth'])}</b>
  {'(' + esc(m['label']) + ')' if m['label'] else ''}<br>mistaken {m['mistaken']} of {m['answers']}<br>
  <small>{esc(m['image_id'])}</small></figcaption></figure>"""
        for m in results["most_mistaken"]
    ) or "<p class='muted'>No image mistaken yet.</p>"
    comp = results["composition"]
    return f"""
<h1>Reader study results</h1>
<div class="caution">These results reveal which images are real: open them only when every reader has finished.</div>
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
        rows1.append(f"<tr><td>{esc(name) if name != 'all readers' else '<b>all readers</b>'}</td>"
                     f"<td>{m['graded']}{state}</td><td>{_ci(m['accuracy'])}</td><td>{_kappa(m['kappa'])}</td>"
                     f"<td>{_kappa(m['kappa_synthetic'])}</td><td>{_kappa(m['kappa_real'])}</td>"
                     f"<td>{fmt(m['mean_confidence'], 2)} <small>({m['confidence_given']})</small></td></tr>")
    rows2 = []
    for name, m in [*p2["readers"].items(), ("all readers", p2["overall"])]:
        state = "" if m.get("complete", True) else " (in progress)"
        rows2.append(f"<tr><td>{esc(name) if name != 'all readers' else '<b>all readers</b>'}</td>"
                     f"<td>{m['answered']}{state}</td><td>{_ci(m['accuracy'])}</td><td>{_ci(m['sensitivity'])}</td>"
                     f"<td>{_ci(m['specificity'])}</td><td>{_p_value(m['p_value_vs_chance'])}</td></tr>")
    fk = p1["fleiss_kappa"]
    fleiss = (f"<b>{fmt(fk['kappa'], 3)}</b> ({fk['readers']} readers, {fk['images']} images graded by all)"
              if fk["kappa"] is not None else f"– ({esc(fk.get('why_none', ''))})")
    unlabelled = (f"<p><small>{p1['real_images_without_label']} real images have no label (the site's data has "
                  "none): they are left out of phase 1's accuracy and kappa.</small></p>"
                  if p1["real_images_without_label"] else "")
    outside = (f"<p><small>{p2['outside_protocol']} answers were given before the reader graded the image (a "
               "one-phase study's database): left out.</small></p>" if p2["outside_protocol"] else "")
    comments = "".join(
        f"""<tr><td><code>{esc(c['image_id'])}</code><br><small>{esc(c['origin'])}"""
        f"""{', ' + esc(c['label']) if c['label'] else ''}</small></td><td>"""
        + "".join(f"<p><b>{esc(n['reader'])}</b>, phase {n['phase']}: <span class='comment'>"
                  f"{esc(n['comment'])}</span></p>" for n in c["comments"]) + "</td></tr>"
        for c in results["comments"]) or "<tr><td colspan='2' class='muted'>No comments yet.</td></tr>"
    mistaken = "".join(
        f"""<figure class="card mistaken"><img class="thumb" alt="{esc(m['image_id'])}"
  src="/study/image/{esc(m['image_id'])}.png"><figcaption><b>{esc(m['truth'])}</b>
  {'(' + esc(m['label']) + ')' if m['label'] else ''}<br>mistaken {m['mistaken']} of {m['answers']}<br>
  <small>{esc(m['image_id'])}</small></figcaption></figure>"""
        for m in results["most_mistaken"]
    ) or "<p class='muted'>No image mistaken yet.</p>"
    return f"""
<h1>Reader study results <small class="muted">– two phases</small></h1>
<div class="caution">These results reveal which images are real: open them only when every reader has finished.</div>
<div class="card" id="phase1-results">
<h2>Phase 1: blind grading</h2>
<p>{results['n_images']} images ({comp['real']} real, {comp['synthetic']} synthetic), graded
{' / '.join(esc(c) for c in p1['labels'])} without knowing that some are synthetic. Cohen's kappa of each reader's
grades against the reference ({esc(p1['reference'])}), on all images, on the synthetic and on the real ones;
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
