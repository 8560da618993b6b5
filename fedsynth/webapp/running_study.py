"""The reader study as its routes use it, when it runs: a reader's next image, recording a grade
or an answer, the owner's results and CSV exports.

The routes (:mod:`fedsynth.webapp.study_routes`) receive a :class:`RunningStudy` as a FastAPI
dependency; an app started without the site's real images has none, and every study route
answers :class:`~fedsynth.webapp.context.StudyOff` (404) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Response

from fedsynth.webapp.context import AppContext, Context, StudyOff
from fedsynth.webapp.invitations import Grant, TokenStore
from fedsynth.webapp.phases import (
    PHASE2_NOTICE,
    clean_comment,
    clean_confidence,
    clean_grade,
    phase1_csv,
    phase2_csv,
    study_results,
)
from fedsynth.webapp.study import (
    ANSWERS,
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    GRADES,
    AnswerStore,
    PhaseError,
    StudyError,
    StudySet,
    next_step,
)

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


def given(value: Any) -> bool:
    return value is not None and value != ""


@dataclass(frozen=True)
class RunningStudy:
    """The app's context with its study, answers and tokens, none of them missing."""

    ctx: AppContext
    study: StudySet
    store: AnswerStore
    tokens: TokenStore

    @property
    def two_phase(self) -> bool:
        return self.ctx.study_phases == 2

    def phase_of(self, grant: Grant) -> int:
        assert grant.reader is not None
        return next_step(self.study, self.store, grant.reader)[0]

    def blind(self, grant: Grant) -> bool:
        """Whether this reader is in phase 1 of a two-phase study (must not read 'synthetic')."""
        return self.two_phase and self.phase_of(grant) == 1

    def next_json(self, grant: Grant) -> dict[str, Any]:
        assert grant.reader is not None
        phase, image, n_done = next_step(self.study, self.store, grant.reader)
        out: dict[str, Any] = {
            "reader": grant.shown_as, "answered": n_done, "n_images": len(self.study), "done": image is None,
            "image": None if image is None else {"id": image.id, "url": f"/study/image/{image.id}.png",
                                                 "position": n_done + 1},
            "phase": phase, "phases": self.ctx.study_phases}
        if self.two_phase and phase == 1:
            out["grades"] = list(GRADES)
            out["confidence"] = {"min": CONFIDENCE_MIN, "max": CONFIDENCE_MAX, "optional": True}
        elif self.two_phase:
            out["answers"] = list(ANSWERS)
            out["notice"] = PHASE2_NOTICE
        return out

    def record(self, grant: Grant, get: Callable[[str], Any], *, form: bool) -> dict[str, Any]:
        """Validate and store one grade or answer; what was stored. ``get``: a field of the body."""
        assert grant.reader is not None
        image_id = get("image_id")
        if not isinstance(image_id, str) or image_id not in self.study.by_id:
            raise StudyError(f"no image {str(image_id)[:40]!r} in this study", 404)
        if not self.two_phase:
            answer = get("answer")
            if not isinstance(answer, str) or answer not in ANSWERS:
                raise StudyError("answer must be 'real' or 'synthetic'")
            self.store.add(grant.reader, image_id, answer, parse_pneumonia(get("pneumonia")),
                           shown_as=grant.shown_as)
            return {"answer": answer}
        grade, answer = get("grade"), get("answer")
        phase, _, n_done = next_step(self.study, self.store, grant.reader)
        if given(grade) and given(answer):
            raise StudyError("send a grade (phase 1) or an answer (phase 2), not both")
        if given(get("pneumonia")):
            raise StudyError("pneumonia is not asked in a two-phase study: phase 1 grades each image")
        if not given(grade) and not given(answer):
            raise StudyError(f"grade must be one of {', '.join(GRADES)}" if phase == 1
                             else "answer must be 'real' or 'synthetic'")
        n = len(self.study)
        # the phase first: a phase-1 reader's refusal never repeats what the second question is
        if given(grade):
            if phase != 1:
                raise PhaseError(f"{grant.shown_as} is in phase 2 (real or synthetic): phase 1 is complete, all "
                                 f"{n} images are graded, and a grade is not changed; answer real or synthetic")
            grade = clean_grade(grade)
            confidence = clean_confidence(get("confidence"), form=form)
            comment = clean_comment(get("comment"))
            self.store.add_grade(grant.reader, image_id, grade, confidence, comment, shown_as=grant.shown_as)
            return {"phase": 1, "grade": grade, "confidence": confidence, "comment": comment}
        if phase != 2:
            raise PhaseError(f"{grant.shown_as} is in phase 1 (grading; {n_done} of {n} images graded): this "
                             "answer belongs to phase 2, which opens once every image is graded; send a grade")
        if not isinstance(answer, str) or answer not in ANSWERS:
            raise StudyError("answer must be 'real' or 'synthetic'")
        if given(get("confidence")):
            raise StudyError("confidence belongs to phase-1 grades, not to phase-2 answers")
        comment = clean_comment(get("comment"))
        self.store.add(grant.reader, image_id, answer, None, shown_as=grant.shown_as, comment=comment, phase=2)
        return {"phase": 2, "answer": answer, "comment": comment}

    def results(self) -> dict[str, Any]:
        return study_results(self.study, self.store.all(), names=self.tokens.names(),
                             grades=self.store.all_grades(), phases=self.ctx.study_phases)

    def export(self, name: str) -> Response:
        """One phase's rows of a two-phase study as CSV (``name``: phase1 or phase2)."""
        if not self.two_phase:
            return self.ctx.problem(ONE_PHASE_EXPORT, 404)
        if name not in EXPORTS:
            return self.ctx.problem(f"no export {name[:40]!r}: there are phase1.csv and phase2.csv", 404)
        names, grades = self.tokens.names(), self.store.all_grades()
        text = (phase1_csv(self.study, grades, names) if name == "phase1"
                else phase2_csv(self.study, self.store.all(), grades, names))
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reader-study-{name}.csv"'})


def running_study(ctx: Context) -> RunningStudy:
    """The app's reader study (a FastAPI dependency); StudyOff when the app runs without one."""
    if ctx.study is None or ctx.store is None or ctx.tokens is None:
        raise StudyOff
    return RunningStudy(ctx, ctx.study, ctx.store, ctx.tokens)


Study = Annotated[RunningStudy, Depends(running_study)]
