"""The two-phase reader study (``fedsynth serve --study-phases 2``): its fields and its statistics.

Phase 1 grades every image blind: a class of :data:`fedsynth.data.dataset.CLASS_NAMES`, an
optional confidence 1-5 and an optional comment; the reader is not told that some images are
synthetic. Phase 2, open once every image is graded, shows the same images in the same order:
real or synthetic, and an optional comment.

Results (:func:`phase_results`, the owner's only):

* phase 1, per reader and pooled: Cohen's kappa (:func:`sklearn.metrics.cohen_kappa_score`) of
  the grades against the reference labels (the class a synthetic image was generated for, a
  real image's label; real images without a label are left out and counted) on all images, on
  the synthetic ones and on the real ones; accuracy; mean confidence; and Fleiss' kappa across
  readers on the images every reader graded (:func:`fleiss_kappa`);
* phase 2, per reader and pooled: accuracy, sensitivity and specificity (synthetic is the
  positive class) with exact Clopper-Pearson 95% intervals, and the two-sided exact binomial
  test of accuracy against 0.5 (chance);
* every comment, per image; and one CSV per phase (:func:`phase1_csv`, :func:`phase2_csv`).

Only answers given in phase 2 (after the reader graded every image) count. Others (a one-phase
study's database reopened as a two-phase one) are left out and counted under ``outside_protocol``.
"""

from __future__ import annotations

import csv
import io
import unicodedata
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.webapp.study import (
    ANSWERS,
    COMMENT_MAX,
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    GRADES,
    MOST_MISTAKEN,
    Answer,
    Grade,
    StudyError,
    StudyImage,
    StudySet,
    one_phase_results,
)

CONFIDENCE_LEVEL = 0.95
CSV_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as the start of a formula

PHASE2_NOTICE = ("Phase 1 is complete: thank you. Now the truth about these images: some of them were synthetic, "
                 "made by the federation's image generators; the others are this hospital's real X-rays. You will "
                 "see the same images again, in the same order. Say for each whether you think it is real or "
                 "synthetic.")


# ---- fields ------------------------------------------------------------------------------------


def clean_comment(value: Any) -> str | None:
    """A comment as stored: NFKC-normalized, line breaks made ``\\n``, trimmed; None when empty or
    left out. At most :data:`COMMENT_MAX` characters; no control character other than a line
    break. Raises StudyError (400) naming the field."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise StudyError("comment must be text (or left out)")
    text = unicodedata.normalize("NFKC", value.replace("\r\n", "\n"))
    bad = sorted({f"U+{ord(ch):04X}" for ch in text
                  if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cs")})
    if bad:
        raise StudyError(f"comment must not contain control characters other than line breaks ({', '.join(bad[:5])})")
    text = text.strip()
    if len(text) > COMMENT_MAX:
        raise StudyError(f"comment has at most {COMMENT_MAX} characters, not {len(text)}")
    return text or None


def clean_grade(value: Any) -> str:
    if not isinstance(value, str) or value not in GRADES:
        raise StudyError(f"grade must be one of {', '.join(GRADES)}")
    return value


def clean_confidence(value: Any, *, form: bool = False) -> int | None:
    """An int 1-5 or None (left out). A form sends text: '' is left out, '1'..'5' are numbers."""
    if value is None or (form and value == ""):
        return None
    if form and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not CONFIDENCE_MIN <= value <= CONFIDENCE_MAX:
        raise StudyError(f"confidence must be a whole number from {CONFIDENCE_MIN} to {CONFIDENCE_MAX} (or left out)")
    return value


# ---- statistics ------------------------------------------------------------------------------


def reference(im: StudyImage) -> str | None:
    """The label a grade is checked against: the conditioning class of a synthetic image, the
    label of a real one (None when the site's data has no labels)."""
    return None if im.label is None else CLASS_NAMES[im.label]


def cohen_kappa(given: list[str], truth: list[str]) -> float | None:
    """Cohen's kappa of two label lists; None when empty or undefined (both constant and equal)."""
    from sklearn.metrics import cohen_kappa_score

    if not given:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(given, truth, labels=list(GRADES)))
    return None if np.isnan(value) else value


def fleiss_kappa(table: np.ndarray) -> float | None:
    """Fleiss' kappa of an (images, categories) count table, every row summing to the same
    number of raters n >= 2: P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean P_i,
    p_j = sum_i n_ij / (N n), Pe = sum_j p_j^2, kappa = (P - Pe) / (1 - Pe). None when
    undefined (no image, fewer than 2 raters, or Pe = 1: every grade the same class)."""
    table = np.asarray(table, dtype=float)
    if table.ndim != 2 or len(table) == 0:
        return None
    n = table.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        return None
    n_raters = n[0]
    p_i = ((table**2).sum(axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_bar = p_i.mean()
    p_j = table.sum(axis=0) / (len(table) * n_raters)
    p_e = float((p_j**2).sum())
    if np.isclose(p_e, 1.0):
        return None
    return float((p_bar - p_e) / (1 - p_e))


def proportion(k: int, n: int) -> dict[str, Any]:
    """k of n with its exact Clopper-Pearson 95% interval (None when n = 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return {"k": 0, "n": 0, "value": None, "ci95": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE_LEVEL, method="exact")
    return {"k": k, "n": n, "value": k / n, "ci95": [float(ci.low), float(ci.high)]}


def chance_p_value(k: int, n: int) -> float | None:
    """Two-sided exact binomial test of k correct of n against 0.5."""
    from scipy.stats import binomtest

    return None if n == 0 else float(binomtest(k, n, 0.5, alternative="two-sided").pvalue)


def grade_metrics(rows: list[tuple[StudyImage, Grade]]) -> dict[str, Any]:
    """Phase 1 for one reader (or pooled): kappa against the reference on all, synthetic, real images."""
    refs = [(im, g, reference(im)) for im, g in rows]
    known = [(im, g, ref) for im, g, ref in refs if ref is not None]

    def kappa_on(kind: str | None) -> dict[str, Any]:
        part = [(g.grade, ref) for im, g, ref in known if kind is None or im.kind == kind]
        return {"kappa": cohen_kappa([a for a, _ in part], [b for _, b in part]), "n": len(part)}

    confidences = [g.confidence for _, g in rows if g.confidence is not None]
    return {
        "graded": len(rows),
        "accuracy": proportion(sum(g.grade == ref for _, g, ref in known), len(known)),
        "kappa": kappa_on(None),
        "kappa_synthetic": kappa_on("synthetic"),
        "kappa_real": kappa_on("real"),
        "real_without_label": sum(im.kind == "real" and ref is None for im, _, ref in refs),
        "mean_confidence": float(np.mean(confidences)) if confidences else None,
        "confidence_given": len(confidences),
        "grades": {c: sum(g.grade == c for _, g in rows) for c in GRADES},
    }


def answer_metrics(rows: list[tuple[StudyImage, Answer]]) -> dict[str, Any]:
    """Phase 2 for one reader (or pooled); synthetic is the positive class."""
    syn = [a.answer == "synthetic" for im, a in rows if im.kind == "synthetic"]
    real = [a.answer == "real" for im, a in rows if im.kind == "real"]
    correct = sum(syn) + sum(real)
    return {
        "answered": len(rows),
        "accuracy": proportion(correct, len(rows)),
        "sensitivity": proportion(sum(syn), len(syn)),
        "specificity": proportion(sum(real), len(real)),
        "p_value_vs_chance": chance_p_value(correct, len(rows)),
    }


def fleiss_over_readers(study: StudySet, grades_by_reader: dict[str, dict[str, Grade]]) -> dict[str, Any]:
    """Fleiss' kappa of every reader who graded, on the images all of them graded."""
    readers = [r for r, g in grades_by_reader.items() if g]
    common = [im.id for im in study.images if readers and all(im.id in grades_by_reader[r] for r in readers)]
    out: dict[str, Any] = {"kappa": None, "readers": len(readers), "images": len(common)}
    if len(readers) < 2:
        out["why_none"] = "fewer than 2 readers have graded"
    elif not common:
        out["why_none"] = "no image graded by every reader"
    else:
        table = np.array([[sum(grades_by_reader[r][i].grade == c for r in readers) for c in GRADES]
                          for i in common])
        out["kappa"] = fleiss_kappa(table)
        if out["kappa"] is None:
            out["why_none"] = "undefined: every grade is the same class"
    return out


def protocol_answers(answers: Iterable[Answer], grades: Iterable[Grade]) -> tuple[list[Answer], int]:
    """The answers given in phase 2 to an image the reader graded, and how many others there are."""
    graded = {(g.reader, g.image_id) for g in grades}
    kept, left_out = [], 0
    for a in answers:
        if a.phase == 2 and (a.reader, a.image_id) in graded:
            kept.append(a)
        else:
            left_out += 1
    return kept, left_out


def phase_results(study: StudySet, answers: list[Answer], grades: list[Grade],
                  names: dict[str, str] | None = None) -> dict[str, Any]:
    """``phase1``, ``phase2`` and ``comments`` of a two-phase study (see the module's docstring).
    ``answers`` are every answer in the store (those outside the protocol are counted, not used)."""
    names = names or {}
    shown = lambda key: names.get(key, key)  # noqa: E731
    n_grades = len(grades)
    grades = [g for g in grades if g.image_id in study.by_id]
    kept, outside = protocol_answers([a for a in answers if a.image_id in study.by_id], grades)

    by_reader_g: dict[str, dict[str, Grade]] = {}
    for g in grades:
        by_reader_g.setdefault(shown(g.reader), {})[g.image_id] = g
    by_reader_a: dict[str, list[tuple[StudyImage, Answer]]] = {}
    for a in kept:
        by_reader_a.setdefault(shown(a.reader), []).append((study.by_id[a.image_id], a))

    phase1_readers = {
        name: {**grade_metrics([(study.by_id[i], g) for i, g in rows.items()]), "complete": len(rows) == len(study)}
        for name, rows in sorted(by_reader_g.items())}
    phase2_readers = {name: {**answer_metrics(rows), "complete": len(rows) == len(study)}
                      for name, rows in sorted(by_reader_a.items())}

    comments = []
    phase2_notes = {(a.reader, a.image_id): a.comment for a in kept if a.comment}
    for im in study.images:
        notes = [{"reader": shown(g.reader), "phase": 1, "comment": g.comment}
                 for g in grades if g.image_id == im.id and g.comment]
        notes += [{"reader": shown(r), "phase": 2, "comment": c}
                  for (r, i), c in phase2_notes.items() if i == im.id]
        if notes:
            comments.append({"image_id": im.id, "truth": im.kind, "origin": im.origin, "label": reference(im),
                             "comments": sorted(notes, key=lambda n: (n["phase"], n["reader"]))})
    return {
        "phase1": {
            "labels": list(GRADES),
            "reference": "the class a synthetic image was generated for; a real image's label",
            "real_images_without_label": sum(im.kind == "real" and im.label is None for im in study.images),
            "readers": phase1_readers,
            "overall": grade_metrics([(study.by_id[g.image_id], g) for g in grades]),
            "fleiss_kappa": fleiss_over_readers(study, by_reader_g),
            "ignored_grades": n_grades - len(grades),  # of images no longer in the study set
        },
        "phase2": {
            "positive_class": "synthetic",
            "confidence_level": CONFIDENCE_LEVEL,
            "interval": "exact (Clopper-Pearson)",
            "test": "two-sided exact binomial test of accuracy against 0.5",
            "readers": phase2_readers,
            "overall": answer_metrics([(study.by_id[a.image_id], a) for a in kept]),
            "outside_protocol": outside,
        },
        "comments": comments,
    }


# ---- CSV -------------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting with =, +, -, @, tab or CR gets a leading
    apostrophe (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(CSV_DANGEROUS) else text


def _csv(header: list[str], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    return buf.getvalue()


def _positions(study: StudySet) -> dict[str, int]:
    return {im.id: k + 1 for k, im in enumerate(study.images)}


PHASE1_COLUMNS = ["reader", "image_id", "position", "truth", "origin", "reference_label", "grade", "correct",
                  "confidence", "comment", "answered_at"]
PHASE2_COLUMNS = ["reader", "image_id", "position", "truth", "origin", "reference_label", "answer", "correct",
                  "comment", "answered_at", "counted"]


def phase1_csv(study: StudySet, grades: list[Grade], names: dict[str, str] | None = None) -> str:
    """One row per (reader, image) graded, in reader then study order."""
    names, pos = names or {}, _positions(study)
    rows = sorted(((names.get(g.reader, g.reader), g) for g in grades if g.image_id in study.by_id),
                  key=lambda t: (t[0], pos[t[1].image_id]))
    out = []
    for name, g in rows:
        im = study.by_id[g.image_id]
        ref = reference(im)
        out.append([name, im.id, pos[im.id], im.kind, im.origin, ref, g.grade,
                    "" if ref is None else int(g.grade == ref), g.confidence, g.comment, g.answered_at])
    return _csv(PHASE1_COLUMNS, out)


def phase2_csv(study: StudySet, answers: list[Answer], grades: list[Grade],
               names: dict[str, str] | None = None) -> str:
    """One row per (reader, image) answered; ``counted`` 0 for an answer outside the protocol."""
    names, pos = names or {}, _positions(study)
    answers = [a for a in answers if a.image_id in study.by_id and a.answer in ANSWERS]
    kept = {(a.reader, a.image_id) for a in protocol_answers(answers, grades)[0]}
    rows = sorted(((names.get(a.reader, a.reader), a) for a in answers), key=lambda t: (t[0], pos[t[1].image_id]))
    out = []
    for name, a in rows:
        im = study.by_id[a.image_id]
        out.append([name, im.id, pos[im.id], im.kind, im.origin, reference(im), a.answer,
                    int(a.answer == im.kind), a.comment, a.answered_at, int((a.reader, a.image_id) in kept)])
    return _csv(PHASE2_COLUMNS, out)


def study_results(study: StudySet, answers: list[Answer], most_mistaken: int = MOST_MISTAKEN,
                  names: dict[str, str] | None = None, *, grades: list[Grade] | None = None,
                  phases: int = 1) -> dict:
    """A study's results: one-phase (:func:`fedsynth.webapp.study.one_phase_results`), or for a
    two-phase study (``phases=2``, with the phase-1 ``grades``) those figures on the phase-2
    answers given after grading, plus ``phase1``, ``phase2`` and ``comments`` (:func:`phase_results`)."""
    if phases != 2:
        return one_phase_results(study, answers, most_mistaken, names)
    kept = protocol_answers(answers, grades or [])[0]
    ignored = sum(a.image_id not in study.by_id for a in answers)
    return {**one_phase_results(study, [a for a in kept if a.image_id in study.by_id], most_mistaken, names),
            "ignored_answers": ignored, "phases": 2, **phase_results(study, answers, grades or [], names)}
