"""Flower ServerApp: carries the orchestrator's requests over Flower's Grid.

No ML or privacy logic lives here: :class:`GridTransport` turns requests into Flower
messages to every connected SuperNode and replies (or errors, or silence past the
timeout) back into results and :class:`~fedsynth.server.orchestrator.SiteFailure`.

``flwr run .`` uses the module-level ``app``, which reads ``config`` (a YAML path;
empty = built-in demo) from the run config in ``pyproject.toml``. ``fedsynth simulate``
builds its own app around an already-created run directory (:func:`make_server_app`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsynth.client.site_data import simulation_registry
from fedsynth.config import RunConfig, load_config
from fedsynth.errors import ConfigError
from fedsynth.protocol import (
    EvalResult,
    EvaluateRequest,
    Release,
    TrainRequest,
    content_bytes,
    decode_eval_result,
    decode_release,
    encode_evaluate_request,
    encode_train_request,
    error_origin,
)
from fedsynth.server.modes import run_mode
from fedsynth.server.orchestrator import ProgressFactory, SiteFailure, no_progress
from fedsynth.server.rundir import RunDir

log = logging.getLogger("fedsynth.server")


class GridTransport:
    """Sends one request to every SuperNode and gathers replies within a timeout."""

    def __init__(self, grid: Grid, expected_sites: int, timeout_s: float, connect_timeout_s: float = 600.0):
        self.grid = grid
        self.expected = expected_sites
        self.timeout = timeout_s
        self.connect_timeout = connect_timeout_s
        self.names: dict[int, str] = {}  # node id -> site name, learned from replies
        self.bytes_sent: dict[str, int] = {}  # per site, everything its replies carried

    def _nodes(self) -> list[int]:
        deadline = time.monotonic() + self.connect_timeout
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < self.expected and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < self.expected:
            log.warning("%d of %d expected sites connected; going on with them", len(nodes), self.expected)
        return sorted(nodes)

    def _broadcast(
        self, encode: Callable[[], RecordDict], message_type: str, stage: str
    ) -> tuple[list[tuple[int, RecordDict]], list[SiteFailure]]:
        nodes = self._nodes()
        messages = [Message(encode(), node, message_type, group_id=stage) for node in nodes]
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        ok, failed = [], []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                site, detail = error_origin(reply, self.names.get(node, f"node-{node}"))
                failed.append(SiteFailure(site, stage, detail))
            else:
                ok.append((node, reply.content))
        for node in nodes:
            if node not in answered:
                failed.append(
                    SiteFailure(self.names.get(node, f"node-{node}"), stage, f"no reply within {self.timeout:g} s")
                )
        return ok, failed

    def count(self, site: str, content: RecordDict) -> None:
        self.bytes_sent[site] = self.bytes_sent.get(site, 0) + content_bytes(content)

    def release(self, request: TrainRequest) -> tuple[list[Release], list[SiteFailure]]:
        replies, failed = self._broadcast(lambda: encode_train_request(request), MessageType.TRAIN, "release")
        out = []
        for node, content in replies:
            try:
                rel = decode_release(content)
            except Exception as err:  # malformed reply: reject, do not pool
                failed.append(SiteFailure(f"node-{node}", "release", f"malformed reply: {err}"))
                continue
            self.names[node] = rel.site
            self.count(rel.site, content)
            out.append(rel)
        return out, failed

    def evaluate(self, request: EvaluateRequest) -> tuple[list[EvalResult], list[SiteFailure]]:
        replies, failed = self._broadcast(lambda: encode_evaluate_request(request), MessageType.EVALUATE, "evaluate")
        out = []
        for node, content in replies:
            try:
                out.append(decode_eval_result(content))
                self.count(out[-1].site, content)
            except Exception as err:
                failed.append(SiteFailure(self.names.get(node, f"node-{node}"), "evaluate", f"malformed reply: {err}"))
        return out, failed


def site_registry(config: RunConfig, run_dir: RunDir) -> dict[str, Path]:
    """The public keys the server trusts, by site name.

    A deployment lists them in ``federation.site_keys``; a simulation gives each simulated
    site a key pair in its state directory (as each hospital would) and registers those.
    """
    if config.federation.site_keys:
        registry = {name: Path(p) for name, p in config.federation.site_keys.items()}
        missing = [f"{n}: {p}" for n, p in registry.items() if not p.is_file()]
        if missing:
            raise ConfigError("federation.site_keys: public key file(s) not found: " + ", ".join(missing))
        return registry
    return simulation_registry(config, run_dir.path)


def serve(grid: Grid, config: RunConfig, run_dir: RunDir, progress: ProgressFactory = no_progress,
          on_round=None) -> dict:
    transport = GridTransport(grid, config.federation.num_sites, config.federation.site_timeout_s,
                              config.federation.connect_timeout_s)
    return run_mode(config, grid, transport, run_dir, site_registry(config, run_dir), progress, on_round)


def make_server_app(
    config: RunConfig,
    run_dir: RunDir,
    on_done: Callable[[dict], None] | None = None,
    progress: ProgressFactory = no_progress,
    on_round=None,
) -> ServerApp:
    """A ServerApp bound to a config and a run directory created by the caller."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        metrics = serve(grid, config, run_dir, progress, on_round)
        if on_done is not None:
            on_done(metrics)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Flower streams the ServerApp's output to `flwr run --stream`: make fedsynth's lines part of it
    root = logging.getLogger("fedsynth")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    path = str(context.run_config.get("config", "") or "")
    config = load_config(Path(path) if path else None)
    run_dir = RunDir.create(config)
    log.info("run %s: writing to %s", run_dir.run_id, run_dir.path)
    metrics = serve(grid, config, run_dir)
    pooled = metrics.get("pooled") or {}
    log.info("run %s finished: pooled AUROC %s; metrics in %s", run_dir.run_id, pooled.get("auroc"),
             run_dir.file("metrics.json"))
