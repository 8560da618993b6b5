"""One round of federated averaging under SecAgg+, on Flower's own protocol code.

Flower 1.41 implements SecAgg+ (Bell et al. 2020) only on its legacy path: the server
side is :class:`flwr.server.workflow.SecAggPlusWorkflow`, driven by a legacy
``Strategy`` through a ``LegacyContext``; the site side is ``secaggplus_mod``
(:func:`fedsynth.client.client_app.secure_aggregation_mod`). This module runs that
workflow for a single round inside fedsynth's own round loop, so checkpoints, resume,
dropped sites and the ledgers work exactly as without secure aggregation.

What the server learns: the average of the sites' updates and, in the clear, each
site's signed ledger entries and counters. What it cannot do: check one site's arrays
(shape, NaN, signed hash). So a contribution that fails any check the server *can* make
voids the whole round's average (one site's share cannot be taken out of it), and a
non-finite or misshapen average is discarded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import FitIns, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedsynth.config import RunConfig
from fedsynth.protocol import (
    ModelUpdate,
    RoundRequest,
    decode_secure_update,
    encode_secure_round,
    error_origin,
    masked_keys,
)
from fedsynth.server.grid_views import RecordingGrid

log = logging.getLogger("fedsynth.server")


@dataclass
class SecureRoundOutcome:
    weights: dict[str, np.ndarray] | None  # the new global weights; None when there is no usable average
    contributions: dict[int, ModelUpdate] = field(default_factory=dict)  # node -> clear part of its update
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (node, site, reason)
    bytes_sent: dict[int, int] = field(default_factory=dict)  # node -> bytes over all protocol stages
    problem: str | None = None  # why there is no average, when there is none


class _Collect(Strategy):
    """The legacy strategy the workflow drives: it hands every site the round's
    instructions and keeps what comes back (the unmasked average, each site's metrics)."""

    def __init__(self, fitins: FitIns):
        self.fitins = fitins
        self.results: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, self.fitins) for proxy in client_manager.all().values()]

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)  # failures: recorded by RecordingGrid, with the sites' reasons
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_round(config: RunConfig, grid: Grid, request: RoundRequest, names: dict[str, str]) -> SecureRoundOutcome:
    """Run SecAgg+ for one round from ``request.weights``; ``names`` maps node ids to site names."""
    sa = config.federation.secure_aggregation
    assert sa is not None
    weights = request.weights
    fitins = encode_secure_round(request)
    strategy = _Collect(fitins)
    recording = RecordingGrid(grid)
    nodes = list(grid.get_node_ids())
    clients = SimpleClientManager()
    for node in nodes:
        clients.register(GridClientProxy(node_id=node, grid=recording, run_id=grid.run.run_id))
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy, client_manager=clients,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: request.round})
    context.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(fitins.parameters, True)
    # max_weight=1 with num_examples=1 at every site: a plain mean, quantized at full precision
    workflow = SecAggPlusWorkflow(sa.num_shares, sa.reconstruction_threshold, max_weight=1.0,
                                  clipping_range=sa.clipping_range, quantization_range=sa.quantization_range,
                                  timeout=config.federation.site_timeout_s)
    outcome = SecureRoundOutcome(weights=None)
    try:
        workflow(recording, context)
    except Exception as err:  # a protocol failure (e.g. a site sent arrays of the wrong shape)
        log.exception("secure aggregation failed")
        outcome.problem = f"secure aggregation failed: {type(err).__name__}: {err}"
    outcome.bytes_sent = dict(recording.bytes_sent)
    for node, reply in recording.errors.items():
        site, reason = error_origin(reply, names.get(str(node), f"node-{node}"))
        outcome.failures.append((node, site, reason))
    failed = {node for node, _, _ in outcome.failures}
    for proxy, fitres in strategy.results:
        try:
            outcome.contributions[proxy.node_id] = decode_secure_update(fitres)
        except Exception as err:  # its arrays are in the average already: the round cannot use it
            outcome.problem = f"a contribution's clear part is malformed: {type(err).__name__}: {err}"
            outcome.failures.append((proxy.node_id, names.get(str(proxy.node_id), f"node-{proxy.node_id}"),
                                     f"malformed reply: {type(err).__name__}: {err}"))
    for node in set(nodes) - failed - set(outcome.contributions):
        outcome.failures.append((node, names.get(str(node), f"node-{node}"),
                                 f"no reply within {config.federation.site_timeout_s:g} s or dropped out of SecAgg+"))
    if outcome.problem is not None:
        return outcome
    if not strategy.results:
        outcome.problem = "secure aggregation halted: too few sites completed the protocol (see the failures)"
        return outcome

    keys = masked_keys(weights)
    average = parameters_to_ndarrays(strategy.results[0][1].parameters)
    if len(average) != len(keys) or any(a.shape != weights[k].shape for a, k in zip(average, keys)):
        outcome.problem = "the unmasked average does not match the global model's arrays"
        return outcome
    if not all(np.isfinite(a).all() for a in average):
        outcome.problem = "the unmasked average has non-finite values"
        return outcome
    new = {k: (weights[k].astype(np.float64) + d).astype(weights[k].dtype) for k, d in zip(keys, average)}
    for k in weights:
        if k in new:
            continue
        values = [float(u.weights[k]) for u in outcome.contributions.values() if k in u.weights]
        if len(values) != len(outcome.contributions) or not np.isfinite(values).all():
            outcome.problem = f"counter {k} is missing or non-finite in a contribution"
            return outcome
        new[k] = np.asarray(np.mean(values), dtype=weights[k].dtype)
    outcome.weights = new
    return outcome
