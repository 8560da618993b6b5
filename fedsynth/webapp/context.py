"""What every route of the web app shares: the run, its classifier, the study, and the
helpers that wrap answers in the app's page layout or JSON (with the phantom warning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse

import fedsynth.webapp.pages as pages
from fedsynth.classifier.train import Classifier
from fedsynth.webapp.scoring import Scorer
from fedsynth.webapp.study import AnswerStore, StudySet

PHANTOM_WARNING = ("This run's classifier was trained on synthetic images made from PHANTOMS (procedural drawings, "
                   "not X-rays): its scores mean nothing for real patients, and the study images are not X-rays.")


@dataclass
class AppContext:
    run_id: str
    classifier: Classifier
    scorer: Scorer
    phantom: bool
    max_bytes: int
    study: StudySet | None = None
    store: AnswerStore | None = None
    image_png: dict[str, bytes] = field(default_factory=dict)  # study images, rendered once

    @property
    def warning(self) -> str | None:
        return PHANTOM_WARNING if self.phantom else None

    @property
    def info(self) -> dict[str, Any]:
        clf = self.classifier
        return {"run_id": self.run_id, "arch": clf.arch, "resolution": clf.resolution, "threshold": clf.threshold,
                "phantom": self.phantom}

    def page(self, title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(pages.layout(title, body, phantom_warning=self.warning, run_id=self.run_id),
                            status_code=status)

    def answer(self, data: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse({**data, **({"phantom_warning": self.warning} if self.warning else {})},
                            status_code=status)

    def problem(self, detail: str, status: int) -> JSONResponse:
        return self.answer({"detail": detail}, status)

    def study_or_none(self) -> tuple[StudySet, AnswerStore] | None:
        return (self.study, self.store) if self.study is not None and self.store is not None else None
