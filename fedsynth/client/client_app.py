"""Flower ClientApp: translates messages to and from :class:`fedsynth.client.site.Site`.

No ML or privacy logic lives here. Where the site's data comes from:

* simulation: ``partition-id`` in the node config picks this site's share of the
  dataset named by the run config (:mod:`fedsynth.client.site_data`);
* deployment: ``site-config`` in the node config (``flower-supernode --node-config
  'site-config="/etc/fedsynth/site-a.yaml"'``) names the site's own settings: its
  data, its keys and ledger, its budget (:mod:`fedsynth.client.deployment`).

A failure inside the site becomes an error reply whose reason starts with the site's
name, so the server can report which site failed and why.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedsynth.classifier.train import Classifier
from fedsynth.client.deployment import deployed_site, site_config_from_node
from fedsynth.client.site import Site
from fedsynth.client.site_data import simulated_site, simulated_site_state
from fedsynth.config import RunConfig
from fedsynth.data.partition import site_name
from fedsynth.errors import public_reason
from fedsynth.protocol import (
    SITE_ERROR,
    decode_calibrate_request,
    decode_evaluate_request,
    decode_round_request,
    decode_secure_round,
    decode_train_request,
    encode_calibration,
    encode_eval_result,
    encode_release,
    encode_secure_update,
    encode_update,
    is_round_request,
    is_secure_round,
)
from fedsynth.rundir import SITES_DIR

log = logging.getLogger("fedsynth.client")



def site_for(context: Context, config: RunConfig, run_id: str, sites_root: Path | None = None) -> Site:
    """The site this node is. ``sites_root``: where simulated sites keep their folders (the
    run directory's ``sites/``), given by the simulation that built this app; without it, a
    simulated node uses ``<run.output_dir>/<run_id>/sites`` (Flower's own launcher makes
    ``run.output_dir`` absolute before anything travels)."""
    node = context.node_config
    if "site-config" in node:
        data, state, site = deployed_site(node, config)
        out = site.output_dir or str(Path(site.state_dir) / "outputs")
        return Site(data, state, out, device=site.device, generator=site.generator, policy=site.policy,
                    consortium_keys={name: Path(p) for name, p in site.consortium_keys.items()})
    if "partition-id" in node:
        if int(node.get("num-partitions", config.federation.num_sites)) != config.federation.num_sites:
            raise RuntimeError(
                f"the simulation has {node['num-partitions']} SuperNodes but federation.num_sites is "
                f"{config.federation.num_sites}; start it with as many SuperNodes as sites"
            )
        data = simulated_site(config, int(node["partition-id"]))
        root = sites_root if sites_root is not None else Path(config.run.output_dir) / run_id / SITES_DIR
        state = simulated_site_state(config, root, data.name)
        state.ensure_keys()
        # a simulation plays every role: its sites' policy comes with the run config
        peers = {site_name(i): simulated_site_state(config, root, site_name(i)).public_key_path
                 for i in range(config.federation.num_sites)}
        return Site(data, state, root / data.name, device=config.run.device, policy=config.sites.policy,
                    consortium_keys=peers)
    raise RuntimeError("node config has neither 'site-config' (deployment) nor 'partition-id' (simulation)")


def _prepare_worker(config: RunConfig, context: Context) -> None:
    if "partition-id" in context.node_config:
        # simulated sites share one machine, one per reserved core: keep torch from
        # oversubscribing it. A deployed site keeps all of its own machine.
        torch.set_num_threads(config.federation.site_threads())
    # a Flower worker process has no logging set up; show the site's progress lines
    root = logging.getLogger("fedsynth")
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # a worker's root logger may print it again in its own format


def _site_label(context: Context) -> str:
    node = context.node_config
    if "site-config" in node:
        try:
            return site_config_from_node(node).name
        except Exception:  # the label of a failure must not fail itself
            return Path(str(node["site-config"])).stem
    if "partition-id" in node:
        return f"site-{int(node['partition-id'])}"
    return f"node-{context.node_id}"


def _error_reply(msg: Message, context: Context, err: BaseException) -> Message:
    log.error("%s failed:\n%s", _site_label(context), traceback.format_exc())
    reason = f"{_site_label(context)}: {public_reason(err)}"
    return Message(Error(code=SITE_ERROR, reason=reason), reply_to=msg)


class _Refused(Exception):
    pass


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` on the messages of a secure round (they carry its
    configs); every other message passes straight through. When the site itself refuses
    the round, its explained error goes back as it is instead of the mod's own failure."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    refusal: list[Message] = []

    def site_or_refusal(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if reply.has_error():
            refusal.append(reply)
            raise _Refused(reply.error.reason)
        return reply

    try:
        return secaggplus_mod(msg, context, site_or_refusal)
    except _Refused:
        return Message(refusal[0].error, reply_to=msg)


def train(msg: Message, context: Context, sites_root: Path | None = None) -> Message:
    """A train message: a release (substitution), a FedAvg round, or a round under SecAgg+."""
    try:
        if is_secure_round(msg.content):  # a round under SecAgg+: the mod masks what this returns
            rreq = decode_secure_round(msg.content)
            _prepare_worker(rreq.config, context)
            site = site_for(context, rreq.config, rreq.run_id, sites_root)
            sa = rreq.config.federation.secure_aggregation
            if sa is None:
                raise ValueError("a secure round arrived but the run config has no federation.secure_aggregation")
            update = site.train_round(rreq)
            return Message(encode_secure_update(update, rreq.weights, sa.clipping_range), reply_to=msg)
        if is_round_request(msg.content):  # a round of federated averaging (Flower's FedAvg message)
            rreq = decode_round_request(msg.content)
            _prepare_worker(rreq.config, context)
            site = site_for(context, rreq.config, rreq.run_id, sites_root)
            return Message(encode_update(site.train_round(rreq)), reply_to=msg)
        req = decode_train_request(msg.content)
        _prepare_worker(req.config, context)
        site = site_for(context, req.config, req.run_id, sites_root)
        release = site.release(req.config, req.run_id)
        return Message(encode_release(release), reply_to=msg)
    except Exception as err:  # reported to the server, which drops this site
        return _error_reply(msg, context, err)


def evaluate(msg: Message, context: Context, sites_root: Path | None = None) -> Message:
    """An evaluate message: score the server's classifier on this site's real test split."""
    try:
        req = decode_evaluate_request(msg.content)
        _prepare_worker(req.config, context)
        site = site_for(context, req.config, req.run_id, sites_root)
        clf = Classifier.from_state(req.classifier_header, req.classifier_state, device=req.config.run.device)
        result = site.evaluate(clf, req.config, req)
        return Message(encode_eval_result(result), reply_to=msg)
    except Exception as err:
        return _error_reply(msg, context, err)


def calibrate(msg: Message, context: Context, sites_root: Path | None = None) -> Message:
    """A calibration query: histograms of the classifier's scores on this site's calibration split."""
    try:
        req = decode_calibrate_request(msg.content)
        _prepare_worker(req.config, context)
        site = site_for(context, req.config, req.run_id, sites_root)
        clf = Classifier.from_state(req.classifier_header, req.classifier_state, device=req.config.run.device)
        return Message(encode_calibration(site.calibrate(clf, req.config, req)), reply_to=msg)
    except Exception as err:
        return _error_reply(msg, context, err)


def make_client_app(sites_root: Path | None = None) -> ClientApp:
    """The ClientApp; ``sites_root`` as for :func:`site_for` (a simulation passes its run's)."""
    client = ClientApp()

    @client.train(mods=[secure_aggregation_mod])
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, sites_root)

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, sites_root)

    @client.query()
    def _calibrate(msg: Message, context: Context) -> Message:
        return calibrate(msg, context, sites_root)

    return client


app = make_client_app()  # what Flower's launcher and a deployed SuperNode load (pyproject.toml)
