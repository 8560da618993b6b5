"""The federation without Flower: the server's requests as direct calls on :class:`Site` objects.

For tests and debugging: the same site and server logic as in the simulation and
deployment engines, with each reply's size counted as if it had travelled.
"""

from __future__ import annotations

import logging
import traceback

from fedsynth.classifier.train import Classifier
from fedsynth.client.site import Site
from fedsynth.protocol import (
    CalibrationResult,
    EvalResult,
    EvaluateRequest,
    Release,
    TrainRequest,
    content_bytes,
    encode_calibration,
    encode_eval_result,
    encode_release,
)
from fedsynth.server.record import RunRecord

log = logging.getLogger("fedsynth.server")


class LocalTransport:
    """Calls :class:`Site` objects directly (the server's :class:`~fedsynth.server.transport.Transport`)."""

    def __init__(self, sites: list[Site]):
        self.sites = sites

    def release(self, request: TrainRequest, record: RunRecord) -> list[Release]:
        out = []
        for site in self.sites:
            try:
                rel = site.release(request.config, request.run_id)
            except Exception as err:  # a failing site must not sink the run
                log.debug("site %s failed:\n%s", site.name, traceback.format_exc())
                record.fail(site.name, "release", f"{type(err).__name__}: {err}")
                continue
            record.count_bytes(site.name, content_bytes(encode_release(rel)))
            out.append(rel)
        return out

    def evaluate(self, request: EvaluateRequest, record: RunRecord) -> list[EvalResult]:
        clf = Classifier.from_state(request.classifier_header, request.classifier_state)
        out = []
        for site in self.sites:
            try:
                res = site.evaluate(clf, request.config, request)
            except Exception as err:
                record.fail(site.name, "evaluate", f"{type(err).__name__}: {err}")
                continue
            record.count_bytes(site.name, content_bytes(encode_eval_result(res)))
            out.append(res)
        return out

    def calibrate(self, request: EvaluateRequest, record: RunRecord) -> list[CalibrationResult]:
        clf = Classifier.from_state(request.classifier_header, request.classifier_state)
        out = []
        for site in self.sites:
            try:
                res = site.calibrate(clf, request.config, request)
            except Exception as err:
                record.fail(site.name, "calibrate", f"{type(err).__name__}: {err}")
                continue
            record.count_bytes(site.name, content_bytes(encode_calibration(res)))
            out.append(res)
        return out
