"""Federated averaging rounds, driven by Flower's own strategy objects.

Each round, :class:`flwr.serverapp.strategy.FedAvg` (wrapped in Flower's
``DifferentialPrivacyServerSideFixedClipping`` with its RDP accountant when
``federation.client_dp`` is set) configures the round for the sites still taking part;
fedsynth sends the messages, checks every reply (error, silence past the timeout,
malformed arrays, NaN, a ledger or signature that does not verify) before the strategy
sees it, and drops a failing site from later rounds with its reason. A site whose budget
would be exceeded refuses the round itself and so stops taking part. After every round
the global weights and the loop's state are checkpointed in the run directory; a
restarted server resumes after the last completed round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.release import arrays_hash, check_signed, signed_privacy
from fedsynth.protocol import (
    ModelUpdate,
    RoundRequest,
    arrays_dict,
    arrays_record,
    content_bytes,
    decode_update,
    error_origin,
    round_config,
)
from fedsynth.server.orchestrator import SiteFailure, keep_ledger
from fedsynth.server.rundir import RunDir, write_json

log = logging.getLogger("fedsynth.server")

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"


class ActiveGrid(Grid):
    """A view of a Grid without the nodes that dropped out (strategies sample from it)."""

    def __init__(self, grid: Grid, excluded: set[int]):
        self._grid = grid
        self._excluded = excluded

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]

    def set_run(self, run):  # pragma: no cover - delegation
        return self._grid.set_run(run)

    @property
    def run(self):  # pragma: no cover - delegation
        return self._grid.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - delegation
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):  # pragma: no cover - delegation
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):  # pragma: no cover - delegation
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - delegation
        return self._grid.send_and_receive(messages, timeout=timeout)


@dataclass
class RoundsState:
    """Everything needed to resume: checkpointed after each completed round."""

    completed: int = 0
    excluded: dict[str, str] = field(default_factory=dict)  # node id -> site name
    # by name too: a restarted SuperLink gives nodes new ids, the site keeps its name
    excluded_sites: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # node id -> site name
    failures: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    sites: dict[str, dict] = field(default_factory=dict)  # site -> last round's info
    bytes_sent: dict[str, int] = field(default_factory=dict)
    accountant: dict | None = None
    resumed_from: int | None = None


class Checkpoints:
    def __init__(self, run_dir: RunDir):
        self.dir = run_dir.path / CHECKPOINT_DIR

    def save(self, round_no: int, weights: dict[str, np.ndarray], state: RoundsState) -> None:
        from safetensors.numpy import save_file

        self.dir.mkdir(exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
                  str(self.dir / f"round-{round_no:03d}.safetensors"))
        write_json(self.dir / STATE_FILE, asdict(state))  # last: the state names a complete checkpoint

    def load(self) -> tuple[RoundsState, dict[str, np.ndarray]] | None:
        from safetensors.numpy import load_file

        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        state = RoundsState(**json.loads(path.read_text()))
        weights = load_file(str(self.dir / f"round-{state.completed:03d}.safetensors"))
        return state, weights


def build_strategy(config: RunConfig, n_sites: int):
    cdp = config.federation.client_dp
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,  # fedsynth enforces federation.min_sites itself, with reasons
        min_available_nodes=1,
        weighted_by_key="uniform-weight" if cdp else "num-examples",
    )
    if cdp is None:
        return strategy
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cdp.delta,
            population_size=n_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=cdp.max_epsilon,
        )
    )
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, cdp.noise_multiplier, cdp.clipping_norm, n_sites, accountant=accountant
    )


def check_update(upd: ModelUpdate, reference: dict[str, np.ndarray], config: RunConfig,
                 registry: dict[str, Path], run_id: str | None = None, round_no: int | None = None) -> str | None:
    """Why an update cannot be averaged, or None."""
    if set(upd.weights) != set(reference):
        return "the update's arrays do not match the global model's"
    for k, ref in reference.items():
        arr = upd.weights[k]
        if arr.size != ref.size or (arr.ndim and ref.ndim and arr.shape != ref.shape):
            return f"array {k} has shape {arr.shape}, expected {ref.shape}"
        if not np.isfinite(arr.astype(np.float64, copy=False)).all():
            return f"array {k} has non-finite values"
    return check_signed_update(upd, arrays_hash(upd.weights), config, registry, run_id, round_no)


def check_signed_update(upd: ModelUpdate, digest: str | None, config: RunConfig, registry: dict[str, Path],
                        run_id: str | None = None, round_no: int | None = None) -> str | None:
    """Why an update's signed ledger is unacceptable, or None. ``digest``: the hash of the
    arrays that arrived, or None under secure aggregation, where they exist only in the
    average (everything else is checked the same way)."""
    if upd.n_examples <= 0:
        return f"num-examples must be positive, got {upd.n_examples}"
    key_path = registry.get(upd.site)
    key = load_public_key(key_path) if key_path is not None else None
    required = config.privacy.epsilon if config.privacy is not None else None
    return check_signed(upd.site, digest, ("n_examples", upd.n_examples), upd.meta.get("ledger"), key, required,
                        run_id, round_no)


def run_rounds(
    config: RunConfig,
    grid: Grid,
    run_dir: RunDir,
    registry: dict[str, Path],
    stage: str,
    initial: dict[str, np.ndarray],
    on_round: Callable[[int, RoundsState], None] | None = None,
) -> tuple[dict[str, np.ndarray], RoundsState]:
    """FedAvg rounds from ``initial`` (or the last checkpoint); returns the final weights."""
    fed = config.federation
    checkpoints = Checkpoints(run_dir)
    loaded = checkpoints.load()
    strategy = build_strategy(config, fed.num_sites)
    if loaded is not None:
        state, weights = loaded
        state.resumed_from = state.completed
        if state.accountant is not None and hasattr(strategy, "accountant"):
            strategy.accountant.load_state_dict(state.accountant)
        log.info("resuming after round %d from %s", state.completed, checkpoints.dir)
    else:
        state, weights = RoundsState(), dict(initial)
    excluded = {int(n) for n in state.excluded}

    def fail(site: str, reason: str, node: int | None, round_no: int) -> None:
        log.warning("round %d: %s dropped: %s", round_no, site, reason)
        state.failures.append(asdict(SiteFailure(site, f"round {round_no}", reason)))
        if node is not None:
            excluded.add(node)
            state.excluded[str(node)] = site
        if not site.startswith("node-") and site not in state.excluded_sites:
            state.excluded_sites.append(site)

    for round_no in range(state.completed + 1, fed.rounds + 1):
        started = time.perf_counter()
        active = ActiveGrid(grid, excluded)
        n_active = len(list(active.get_node_ids()))
        if n_active < fed.min_sites:
            raise FederationError(
                f"round {round_no}: only {n_active} site(s) still taking part, fewer than federation.min_sites="
                f"{fed.min_sites}. " + "; ".join(f"{f['site']}: {f['reason']}" for f in state.failures)
            )
        if fed.client_dp is not None and n_active != strategy.num_sampled_clients:
            log.warning("client-level DP needs a fixed cohort; %d of %d sites remain, so training stops",
                        n_active, strategy.num_sampled_clients)
            state.history.append({"round": round_no, "skipped": "client-level DP cohort broken by a dropped site"})
            break
        request = RoundRequest(run_dir.run_id, config, round_no, stage, weights, str(run_dir.path))
        if fed.secure_aggregation is not None:
            entry, new_weights = _secure_step(config, active, run_dir, registry, state, fail, request)
            weights = new_weights if new_weights is not None else weights
            entry["seconds"] = time.perf_counter() - started
            _finish_round(entry, round_no, weights, state, checkpoints, fed.rounds, on_round)
            continue
        messages = list(strategy.configure_train(round_no, arrays_record(weights), round_config(request), active))
        sent_to = {m.metadata.dst_node_id for m in messages}
        replies = list(grid.send_and_receive(messages, timeout=fed.site_timeout_s))
        valid: list[Message] = []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            name = state.names.get(str(node), f"node-{node}")
            if reply.has_error():
                fail(*error_origin(reply, name), node, round_no)
                continue
            try:
                upd = decode_update(reply.content)
            except Exception as err:  # malformed: never averaged
                fail(name, f"malformed reply: {type(err).__name__}: {err}", node, round_no)
                continue
            state.names[str(node)] = upd.site
            if upd.site in state.excluded_sites:  # dropped before a restart, now under a new node id
                excluded.add(node)
                state.excluded[str(node)] = upd.site
                log.warning("round %d: %s was dropped earlier; its update is not used", round_no, upd.site)
                continue
            state.bytes_sent[upd.site] = state.bytes_sent.get(upd.site, 0) + content_bytes(reply.content)
            if isinstance(upd.meta.get("ledger"), list) and upd.meta["ledger"]:
                keep_ledger(upd.site, upd.meta["ledger"], run_dir, registry)
            problem = check_update(upd, weights, config, registry, run_dir.run_id, round_no)
            if problem:
                fail(upd.site, f"update rejected: {problem}", node, round_no)
                continue
            valid.append(reply)
            private, privacy = signed_privacy(upd.meta["ledger"])  # from the verified ledger
            state.sites[upd.site] = {**{k: v for k, v in upd.meta.items() if k not in ("ledger", "privacy", "private")},
                                     "private": private, "privacy": privacy}
        for node in sent_to - answered:
            fail(state.names.get(str(node), f"node-{node}"), f"no reply within {fed.site_timeout_s:g} s", node,
                 round_no)
        if not valid:
            raise FederationError(f"round {round_no}: no usable update. " +
                                  "; ".join(f"{f['site']}: {f['reason']}" for f in state.failures[-len(sent_to):]))
        arrays, metrics = strategy.aggregate_train(round_no, valid)
        entry: dict[str, Any] = {
            "round": round_no,
            "sites": sorted(decode_update(r.content).site for r in valid),
            "seconds": time.perf_counter() - started,
        }
        if arrays is None:
            entry["skipped"] = "the strategy did not aggregate (see the log)"
        else:
            weights = arrays_dict(arrays)
        if hasattr(strategy, "accountant") and strategy.accountant is not None:
            spent = strategy.accountant.get_privacy_spent()
            entry["client_dp"] = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
            state.accountant = strategy.accountant.state_dict()
        _finish_round(entry, round_no, weights, state, checkpoints, fed.rounds, on_round)
    return weights, state


def _finish_round(entry: dict[str, Any], round_no: int, weights: dict[str, np.ndarray], state: RoundsState,
                  checkpoints: Checkpoints, rounds: int, on_round: Callable[[int, RoundsState], None] | None) -> None:
    state.history.append(entry)
    state.completed = round_no
    checkpoints.save(round_no, weights, state)
    log.info("round %d/%d done with %s (%.1f s)%s", round_no, rounds, ", ".join(entry["sites"]) or "no site",
             entry["seconds"], f"; skipped: {entry['skipped']}" if "skipped" in entry else "")
    if on_round is not None:
        on_round(round_no, state)


def _secure_step(config: RunConfig, active: Grid, run_dir: RunDir, registry: dict[str, Path], state: RoundsState,
                 fail: Callable[[str, str, int | None, int], None],
                 request: RoundRequest) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One round under SecAgg+: the history entry and the new weights (None: keep the old ones)."""
    from fedsynth.server.secure_aggregation import secure_round

    round_no = request.round
    outcome = secure_round(config, active, request, state.names)
    for node, site, reason in outcome.failures:
        fail(site, reason, node, round_no)
    rejected = []
    for node, upd in outcome.contributions.items():
        state.names[str(node)] = upd.site
        state.bytes_sent[upd.site] = state.bytes_sent.get(upd.site, 0) + outcome.bytes_sent.get(node, 0)
        if isinstance(upd.meta.get("ledger"), list) and upd.meta["ledger"]:
            keep_ledger(upd.site, upd.meta["ledger"], run_dir, registry)
        if upd.site in state.excluded_sites:
            problem = "the site was dropped earlier"
        else:
            problem = check_signed_update(upd, None, config, registry, run_dir.run_id, round_no)
        if problem:
            rejected.append(upd.site)
            fail(upd.site, f"update rejected: {problem}", node, round_no)
            continue
        private, privacy = signed_privacy(upd.meta["ledger"])
        state.sites[upd.site] = {**{k: v for k, v in upd.meta.items() if k not in ("ledger", "privacy", "private")},
                                 "private": private, "privacy": privacy}
    entry: dict[str, Any] = {"round": round_no, "secure_aggregation": "SecAgg+",
                             "sites": sorted(u.site for u in outcome.contributions.values())}
    if not outcome.contributions and outcome.problem:
        raise FederationError(f"round {round_no}: no usable update under secure aggregation: {outcome.problem}. " +
                              "; ".join(f"{site}: {reason}" for _, site, reason in outcome.failures))
    if rejected:
        # one site's share cannot be taken out of a masked sum: the whole average goes
        entry["skipped"] = (f"the secure average includes a rejected update ({', '.join(rejected)}); "
                            "discarded, the global weights stay as they were")
        return entry, None
    if outcome.weights is None:
        entry["skipped"] = outcome.problem or "no average"
        return entry, None
    return entry, outcome.weights

