"""How the server's requests reach the sites and their replies come back.

The orchestration code only sees :class:`Transport`: one request to every site, the
decoded replies back, and every failure (an error reply, a malformed reply, silence past
the timeout) and every byte a site sent recorded in the run's :class:`RunRecord`.
:class:`GridTransport` carries requests over Flower's Grid (simulation or deployment);
the simulation has a transport without Flower for tests and debugging
(:class:`fedsynth.simulation.local.LocalTransport`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsynth.protocol import (
    CalibrationResult,
    EvalResult,
    EvaluateRequest,
    Release,
    TrainRequest,
    content_bytes,
    decode_calibration,
    decode_eval_result,
    decode_release,
    encode_calibrate_request,
    encode_evaluate_request,
    encode_train_request,
    error_origin,
)
from fedsynth.server.record import RunRecord

log = logging.getLogger("fedsynth.server")


class Transport(Protocol):
    def release(self, request: TrainRequest, record: RunRecord) -> list[Release]: ...

    def evaluate(self, request: EvaluateRequest, record: RunRecord) -> list[EvalResult]: ...

    def calibrate(self, request: EvaluateRequest, record: RunRecord) -> list[CalibrationResult]: ...


class GridTransport:
    """Sends one request to every SuperNode and gathers replies within a timeout."""

    def __init__(self, grid: Grid, expected_sites: int, timeout_s: float, connect_timeout_s: float = 600.0):
        self.grid = grid
        self.expected = expected_sites
        self.timeout = timeout_s
        self.connect_timeout = connect_timeout_s
        self.names: dict[int, str] = {}  # node id -> site name, learned from replies

    def _nodes(self) -> list[int]:
        deadline = time.monotonic() + self.connect_timeout
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < self.expected and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < self.expected:
            log.warning("%d of %d expected sites connected; going on with them", len(nodes), self.expected)
        return sorted(nodes)

    def _broadcast(self, encode: Callable[[], RecordDict], message_type: str, stage: str,
                   record: RunRecord) -> list[tuple[int, RecordDict]]:
        nodes = self._nodes()
        messages = [Message(encode(), node, message_type, group_id=stage) for node in nodes]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        ok = []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                site, detail = error_origin(reply, self.names.get(node, f"node-{node}"))
                record.fail(site, stage, detail)
            else:
                ok.append((node, reply.content))
        for node in nodes:
            if node not in answered:
                record.fail(self.names.get(node, f"node-{node}"), stage, f"no reply within {self.timeout:g} s")
        return ok

    def release(self, request: TrainRequest, record: RunRecord) -> list[Release]:
        out = []
        for node, content in self._broadcast(lambda: encode_train_request(request), MessageType.TRAIN, "release",
                                             record):
            try:
                rel = decode_release(content)
            except Exception as err:  # malformed reply: reject, do not pool
                record.fail(f"node-{node}", "release", f"malformed reply: {err}")
                continue
            self.names[node] = rel.site
            record.count_bytes(rel.site, content_bytes(content))
            out.append(rel)
        return out

    def evaluate(self, request: EvaluateRequest, record: RunRecord) -> list[EvalResult]:
        out = []
        for node, content in self._broadcast(lambda: encode_evaluate_request(request), MessageType.EVALUATE,
                                             "evaluate", record):
            known = self.names.get(node, f"node-{node}")
            try:
                res = decode_eval_result(content)
            except Exception as err:
                record.fail(known, "evaluate", f"malformed reply: {err}")
                continue
            if node in self.names and res.site != known:  # a node answers for the site it released as
                record.fail(known, "evaluate", f"the evaluation claims to come from {res.site!r}")
                continue
            record.count_bytes(res.site, content_bytes(content))
            out.append(res)
        return out

    def calibrate(self, request: EvaluateRequest, record: RunRecord) -> list[CalibrationResult]:
        out = []
        for node, content in self._broadcast(lambda: encode_calibrate_request(request), MessageType.QUERY,
                                             "calibrate", record):
            known = self.names.get(node, f"node-{node}")
            try:
                res = decode_calibration(content)
            except Exception as err:
                record.fail(known, "calibrate", f"malformed reply: {err}")
                continue
            if node in self.names and res.site != known:
                record.fail(known, "calibrate", f"the calibration claims to come from {res.site!r}")
                continue
            record.count_bytes(res.site, content_bytes(content))
            out.append(res)
        return out
