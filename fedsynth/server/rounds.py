"""Federated averaging rounds, driven by Flower's own strategy objects.

Each round, :class:`flwr.serverapp.strategy.FedAvg` (wrapped in Flower's
``DifferentialPrivacyServerSideFixedClipping`` with its RDP accountant when
``federation.client_dp`` is set) configures the round for the sites still taking part.
fedsynth's checks sit in front of it as one more wrapper, :class:`CheckedStrategy` (the
pattern of Flower's own DP wrappers): every reply (error, silence past the timeout,
malformed arrays, NaN, a ledger or signature that does not verify) is checked before the
strategy sees it, and a failing site is dropped from later rounds with its reason. A
site whose budget would be exceeded refuses the round itself and so stops taking part.
Under SecAgg+ the same acceptance (:class:`UpdateIntake`) judges each site's clear part.
After every round the global weights and the loop's state are checkpointed in the run
directory; a restarted server resumes after the last completed round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from fedsynth.config import RunConfig
from fedsynth.errors import FederationError
from fedsynth.generators import FAMILIES
from fedsynth.privacy.release import signed_privacy
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
from fedsynth.rundir import RunDir
from fedsynth.server.checks import check_signed_update, check_update, checked_privacy, file_ledger, public_info
from fedsynth.server.grid_views import ActiveGrid
from fedsynth.server.record import SiteFailure
from fedsynth.server.secure_aggregation import secure_round

log = logging.getLogger("fedsynth.server")

UPDATE_INFO_KEYS = ("site", "round", "phantom")  # what of an update's unsigned metadata the outputs show


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
    heads: dict[str, list] = field(default_factory=dict)  # site -> [entries, last hash] of its last accepted ledger

    def fail(self, site: str, reason: str, node: int | None, round_no: int) -> None:
        """Drop ``site`` (and its node) from later rounds, with the reason."""
        log.warning("round %d: %s dropped: %s", round_no, site, reason)
        self.failures.append(asdict(SiteFailure(site, f"round {round_no}", reason)))
        if node is not None:
            self.excluded[str(node)] = site
        if not site.startswith("node-") and site not in self.excluded_sites:
            self.excluded_sites.append(site)

    def excluded_nodes(self) -> set[int]:
        return {int(n) for n in self.excluded}


class UpdateIntake:
    """Accepting one site's update, the same way in plain and secure rounds: learn its node's
    name, count its bytes, check its signed ledger (and, when the arrays are visible, their
    shapes, values and signed hash), file its ledger, record its privacy figures."""

    def __init__(self, config: RunConfig, run_dir: RunDir, registry: dict[str, Path], state: RoundsState):
        self.config, self.run_dir, self.registry, self.state = config, run_dir, registry, state

    def dropped_earlier(self, node: int, site: str, round_no: int) -> bool:
        """A site dropped before a restart, now under a new node id: its update is not used."""
        if site not in self.state.excluded_sites:
            return False
        self.state.excluded[str(node)] = site
        log.warning("round %d: %s was dropped earlier; its update is not used", round_no, site)
        return True

    def accept(self, node: int, upd: ModelUpdate, round_no: int, n_bytes: int,
               reference: dict[str, np.ndarray] | None) -> str | None:
        """Why the update cannot be used (the site is dropped with that reason), or None.
        ``reference``: the global weights the update must match, or None under secure
        aggregation, where the arrays exist only in the average."""
        state = self.state
        state.bytes_sent[upd.site] = state.bytes_sent.get(upd.site, 0) + n_bytes
        try:
            problem = self._problem(upd, round_no, reference)
            if problem is None:
                private, privacy = signed_privacy(upd.meta["ledger"])  # from the verified ledger
                info = {**public_info(upd.meta, UPDATE_INFO_KEYS), "private": private,
                        "privacy": checked_privacy(privacy)}
        except Exception as err:  # noqa: BLE001 - whatever an update holds, it costs only its own site
            problem = f"could not be checked: {type(err).__name__}: {err}"
        if problem:
            state.fail(upd.site, f"update rejected: {problem}", node, round_no)
            return problem
        ledger = upd.meta["ledger"]
        state.sites[upd.site] = info
        state.heads[upd.site] = [len(ledger), ledger[-1]["hash"]]
        file_ledger(self.run_dir, upd.site, ledger, self.registry)  # only now: a rejected reply never replaces it
        return None

    def _problem(self, upd: ModelUpdate, round_no: int, reference: dict[str, np.ndarray] | None) -> str | None:
        if reference is not None:
            problem = check_update(upd, reference, self.config, self.registry, self.run_dir.run_id, round_no)
        else:
            problem = check_signed_update(upd, None, self.config, self.registry, self.run_dir.run_id, round_no)
        if problem:
            return problem
        head = self.state.heads.get(upd.site)  # the ledger accepted last round: this one must extend it
        ledger = upd.meta["ledger"]
        if head is not None and (len(ledger) < head[0] or ledger[head[0] - 1].get("hash") != head[1]):
            return (f"its ledger does not extend the one accepted last round ({head[0]} entries): entries were "
                    "deleted or rewritten")
        return None


class CheckedStrategy(Strategy):
    """Flower's strategy with fedsynth's reply checks in front of it.

    ``configure_train`` is the wrapped strategy's; ``aggregate_train`` decodes and checks
    every reply through the :class:`UpdateIntake` and hands only the accepted ones on, so
    neither FedAvg nor Flower's DP wrapper ever sees a malformed or unsigned update."""

    def __init__(self, strategy: Strategy, intake: UpdateIntake):
        self.strategy = strategy
        self.intake = intake
        self.reference: dict[str, np.ndarray] = {}
        self.accepted_sites: list[str] = []

    @property
    def accountant(self):  # client-level DP: Flower's wrapper keeps the accountant
        return getattr(self.strategy, "accountant", None)

    @property
    def num_sampled_clients(self) -> int | None:
        return getattr(self.strategy, "num_sampled_clients", None)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.reference = arrays_dict(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state = self.intake.state
        valid, self.accepted_sites = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            name = state.names.get(str(node), f"node-{node}")
            if reply.has_error():
                state.fail(*error_origin(reply, name), node, server_round)
                continue
            try:
                upd = decode_update(reply.content)
                if not isinstance(upd.site, str) or not upd.site:
                    raise ValueError("the update names no site")
            except Exception as err:  # malformed: never averaged
                state.fail(name, f"malformed reply: {type(err).__name__}: {err}", node, server_round)
                continue
            state.names[str(node)] = upd.site
            if self.intake.dropped_earlier(node, upd.site, server_round):
                continue
            if self.intake.accept(node, upd, server_round, content_bytes(reply.content), self.reference) is None:
                valid.append(reply)
                self.accepted_sites.append(upd.site)
        if not valid:
            return None, None
        return self.strategy.aggregate_train(server_round, valid)

    def configure_evaluate(self, server_round, arrays, config, grid):  # evaluation is fedsynth's own
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None


def build_strategy(config: RunConfig, n_sites: int) -> Strategy:
    cdp = config.federation.client_dp
    # noisy sums (a statistics-only generator) average with equal weights: their ratio of averages is
    # the pooled mean, whatever each site's size; client-level DP wants equal weights too
    sums = config.run.mode == "federated" and FAMILIES[config.generator.family].statistics_only
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,  # fedsynth enforces federation.min_sites itself, with reasons
        min_available_nodes=1,
        weighted_by_key="uniform-weight" if cdp or sums else "num-examples",
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
    loaded = run_dir.load_checkpoint()
    if loaded is not None:
        saved, weights = loaded
        state = RoundsState(**saved)
        state.resumed_from = state.completed
        log.info("resuming after round %d from %s", state.completed, run_dir.checkpoint_dir)
    else:
        state, weights = RoundsState(), dict(initial)
    intake = UpdateIntake(config, run_dir, registry, state)
    strategy = CheckedStrategy(build_strategy(config, fed.num_sites), intake)
    if loaded is not None and state.accountant is not None and strategy.accountant is not None:
        strategy.accountant.load_state_dict(state.accountant)

    for round_no in range(state.completed + 1, fed.rounds + 1):
        started = time.perf_counter()
        active = ActiveGrid(grid, state.excluded_nodes())
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
        request = RoundRequest(run_dir.run_id, config, round_no, stage, weights)
        if fed.secure_aggregation is not None:
            entry, new_weights = _secure_step(config, active, intake, request)
        else:
            entry, new_weights = _plain_step(strategy, grid, active, request, fed.site_timeout_s)
        weights = new_weights if new_weights is not None else weights
        entry["seconds"] = time.perf_counter() - started
        if strategy.accountant is not None and fed.secure_aggregation is None:
            spent = strategy.accountant.get_privacy_spent()
            entry["client_dp"] = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
            state.accountant = strategy.accountant.state_dict()
        _finish_round(entry, round_no, weights, state, run_dir, fed.rounds, on_round)
    return weights, state


def _plain_step(strategy: CheckedStrategy, grid: Grid, active: Grid, request: RoundRequest,
                timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One round of FedAvg: the history entry and the new weights (None: keep the old ones)."""
    state, round_no = strategy.intake.state, request.round
    messages = list(strategy.configure_train(round_no, arrays_record(request.weights), round_config(request),
                                             active))
    sent_to = {m.metadata.dst_node_id for m in messages}
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    answered = {r.metadata.src_node_id for r in replies}
    failures_before = len(state.failures)
    arrays, _ = strategy.aggregate_train(round_no, replies)
    for node in sent_to - answered:
        state.fail(state.names.get(str(node), f"node-{node}"), f"no reply within {timeout:g} s", node, round_no)
    if not strategy.accepted_sites:
        raise FederationError(f"round {round_no}: no usable update. " +
                              "; ".join(f"{f['site']}: {f['reason']}" for f in state.failures[failures_before:]))
    entry: dict[str, Any] = {"round": round_no, "sites": sorted(strategy.accepted_sites)}
    if arrays is None:
        entry["skipped"] = "the strategy did not aggregate (see the log)"
        return entry, None
    return entry, arrays_dict(arrays)


def _secure_step(config: RunConfig, active: Grid, intake: UpdateIntake,
                 request: RoundRequest) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One round under SecAgg+: the history entry and the new weights (None: keep the old ones)."""
    state, round_no = intake.state, request.round
    outcome = secure_round(config, active, request, state.names)
    for node, site, reason in outcome.failures:
        state.fail(site, reason, node, round_no)
    rejected = []
    for node, upd in outcome.contributions.items():
        state.names[str(node)] = upd.site
        if upd.site in state.excluded_sites:
            rejected.append(upd.site)
            state.fail(upd.site, "update rejected: the site was dropped earlier", node, round_no)
        elif intake.accept(node, upd, round_no, outcome.bytes_sent.get(node, 0), reference=None) is not None:
            rejected.append(upd.site)
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


def _finish_round(entry: dict[str, Any], round_no: int, weights: dict[str, np.ndarray], state: RoundsState,
                  run_dir: RunDir, rounds: int, on_round: Callable[[int, RoundsState], None] | None) -> None:
    state.history.append(entry)
    state.completed = round_no
    run_dir.save_checkpoint(round_no, weights, asdict(state))
    log.info("round %d/%d done with %s (%.1f s)%s", round_no, rounds, ", ".join(entry["sites"]) or "no site",
             entry["seconds"], f"; skipped: {entry['skipped']}" if "skipped" in entry else "")
    if on_round is not None:
        on_round(round_no, state)
