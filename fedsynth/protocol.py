"""What travels between the server and a site, and its encoding as Flower records.

Both Flower apps only call ``encode_*`` / ``decode_*`` here; the site and server logic
work on the plain dataclasses. Everything a site can send is one of:

* :class:`Release`: synthetic images (uint8) with their labels, and site statistics
  (class counts, generator training report) -- never a real pixel;
* :class:`EvalResult`: metrics of the server's classifier on the site's local real
  test split, plus class-wise score histograms for pooling -- never a per-image score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsynth.classifier.metrics import ScoreHistogram
from fedsynth.config import MAX_CLASSES, RunConfig

SITE_ERROR = 1001  # Error.code of a failure a fedsynth site caught and explained
GENERATOR_ROUND = "generator-round"
CLASSIFIER_ROUND = "classifier-round"


@dataclass
class TrainRequest:
    run_id: str
    config: RunConfig


@dataclass
class RoundRequest:
    """One round of federated averaging: train from ``weights`` for local epochs."""

    run_id: str
    config: RunConfig
    round: int
    stage: str  # GENERATOR_ROUND or CLASSIFIER_ROUND
    weights: dict[str, np.ndarray]


@dataclass
class ModelUpdate:
    site: str
    weights: dict[str, np.ndarray]
    n_examples: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Release:
    site: str
    images: np.ndarray  # uint8 (n, S, S)
    labels: np.ndarray  # uint8 (n,)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateRequest:
    run_id: str
    config: RunConfig
    classifier_header: dict[str, Any]
    classifier_state: dict[str, torch.Tensor]
    # a sample of the pooled synthetic images (uint8), for fidelity and utility at the site
    synthetic_images: np.ndarray | None = None
    synthetic_labels: np.ndarray | None = None
    synthetic_origin: np.ndarray | None = None  # per row: index into origin_names
    origin_names: list[str] = field(default_factory=list)
    # per origin: its signed release entry and per-image digests, so a site can check that every
    # sampled image came from a signed release of the consortium before scoring it against real ones
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the intensity mapping the classifier's training images went through (alignment), applied at the
    # site to the verified sample: {"by_class": bool, "cdfs": {class: cdf}} or None
    alignment: dict[str, Any] | None = None


@dataclass
class EvalResult:
    site: str
    metrics: dict[str, Any]
    histogram: ScoreHistogram
    meta: dict[str, Any] = field(default_factory=dict)
    # site-side evaluation beyond the server's classifier: fidelity and utility figures, and
    # score histograms of the site's own baselines (keyed "trtr", "real_plus_synthetic")
    extra: dict[str, Any] = field(default_factory=dict)
    extra_histograms: dict[str, ScoreHistogram] = field(default_factory=dict)
    # the subtype task (a finer label set): {"classes": [...], "confusion": C x C counts} and, per
    # class in that order, the one-vs-rest histogram of its probability (fedsynth.classifier.multiclass)
    subtype: dict[str, Any] = field(default_factory=dict)
    class_histograms: list[ScoreHistogram] = field(default_factory=list)


@dataclass
class CalibrationResult:
    """Class-wise histograms of the server's classifier's logits on a site's calibration split
    (in the fixed calibration bins; noisy under DP) -- never a per-image score."""

    site: str
    histogram: ScoreHistogram
    meta: dict[str, Any] = field(default_factory=dict)


# ---- encoding ---------------------------------------------------------------------------


def _config_record(**values: Any) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in values.items()})


def encode_train_request(req: TrainRequest) -> RecordDict:
    return RecordDict({"request": _config_record(run_id=req.run_id, config=req.config.to_json())})


def decode_train_request(content: RecordDict) -> TrainRequest:
    rec = content.config_records["request"]
    return TrainRequest(
        run_id=str(rec["run_id"]), config=RunConfig.from_json(str(rec["config"]))
    )


def encode_release(rel: Release) -> RecordDict:
    arrays = ArrayRecord(
        {
            "images": Array(np.ascontiguousarray(rel.images, dtype=np.uint8)),
            "labels": Array(np.ascontiguousarray(rel.labels, dtype=np.uint8)),
        }
    )
    return RecordDict({"release": arrays, "release_meta": _config_record(site=rel.site, meta=json.dumps(rel.meta))})


def decode_release(content: RecordDict) -> Release:
    arrays = content.array_records["release"]
    meta = content.config_records["release_meta"]
    return Release(
        site=str(meta["site"]),
        images=arrays["images"].numpy(),
        labels=arrays["labels"].numpy(),
        meta=json.loads(str(meta["meta"])),
    )


def encode_evaluate_request(req: EvaluateRequest) -> RecordDict:
    records: dict[str, Any] = {
        "classifier": ArrayRecord(req.classifier_state),
        "request": _config_record(
            run_id=req.run_id,
            config=req.config.to_json(),
            classifier=json.dumps(req.classifier_header),
            origin_names=json.dumps(req.origin_names),
            provenance=json.dumps(req.provenance),
            alignment=json.dumps(req.alignment),
        ),
    }
    if req.synthetic_images is not None:
        records["synthetic"] = ArrayRecord({
            "images": Array(np.ascontiguousarray(req.synthetic_images, dtype=np.uint8)),
            "labels": Array(np.ascontiguousarray(req.synthetic_labels, dtype=np.uint8)),
            "origin": Array(np.ascontiguousarray(req.synthetic_origin, dtype=np.uint8)),
        })
    return RecordDict(records)


def decode_evaluate_request(content: RecordDict) -> EvaluateRequest:
    rec = content.config_records["request"]
    synthetic = content.array_records.get("synthetic")
    return EvaluateRequest(
        run_id=str(rec["run_id"]),
        config=RunConfig.from_json(str(rec["config"])),
        classifier_header=json.loads(str(rec["classifier"])),
        classifier_state=content.array_records["classifier"].to_torch_state_dict(),
        synthetic_images=synthetic["images"].numpy() if synthetic is not None else None,
        synthetic_labels=synthetic["labels"].numpy() if synthetic is not None else None,
        synthetic_origin=synthetic["origin"].numpy() if synthetic is not None else None,
        origin_names=json.loads(str(rec["origin_names"])),
        provenance=json.loads(str(rec.get("provenance", "{}"))),
        alignment=json.loads(str(rec.get("alignment", "null"))),
    )


def encode_eval_result(res: EvalResult) -> RecordDict:
    hists = {"main": res.histogram, **res.extra_histograms}
    values: dict[str, Any] = {"site": res.site, "metrics": json.dumps(res.metrics), "meta": json.dumps(res.meta),
                              "extra": json.dumps(res.extra), "histograms": json.dumps(sorted(hists))}
    for name, h in hists.items():
        values[f"hist_{name}_positive"] = [int(v) for v in h.positive]
        values[f"hist_{name}_negative"] = [int(v) for v in h.negative]
    if res.subtype:
        values["subtype"] = json.dumps(res.subtype)
        values["n_class_histograms"] = len(res.class_histograms)
        for i, h in enumerate(res.class_histograms):
            values[f"class_hist_{i}_positive"] = [int(v) for v in h.positive]
            values[f"class_hist_{i}_negative"] = [int(v) for v in h.negative]
    return RecordDict({"evaluation": _config_record(**values)})


def decode_eval_result(content: RecordDict) -> EvalResult:
    rec = content.config_records["evaluation"]
    hists = {
        name: ScoreHistogram(np.asarray(rec[f"hist_{name}_positive"]), np.asarray(rec[f"hist_{name}_negative"]))
        for name in json.loads(str(rec["histograms"]))
    }
    n_class = int(rec["n_class_histograms"]) if "subtype" in rec else 0
    if not 0 <= n_class <= MAX_CLASSES:
        raise ValueError(f"{n_class} class histograms: at most {MAX_CLASSES} classes")
    return EvalResult(
        site=str(rec["site"]),
        metrics=json.loads(str(rec["metrics"])),
        histogram=hists.pop("main"),
        meta=json.loads(str(rec["meta"])),
        extra=json.loads(str(rec["extra"])),
        extra_histograms=hists,
        subtype=json.loads(str(rec["subtype"])) if "subtype" in rec else {},
        class_histograms=[ScoreHistogram(np.asarray(rec[f"class_hist_{i}_positive"]),
                                         np.asarray(rec[f"class_hist_{i}_negative"])) for i in range(n_class)],
    )


def encode_calibrate_request(req: EvaluateRequest) -> RecordDict:
    """A calibration query carries the classifier only (no synthetic sample)."""
    return RecordDict({
        "classifier": ArrayRecord(req.classifier_state),
        "calibrate": _config_record(run_id=req.run_id, config=req.config.to_json(),
                                    classifier=json.dumps(req.classifier_header)),
    })


def decode_calibrate_request(content: RecordDict) -> EvaluateRequest:
    rec = content.config_records["calibrate"]
    return EvaluateRequest(run_id=str(rec["run_id"]), config=RunConfig.from_json(str(rec["config"])),
                           classifier_header=json.loads(str(rec["classifier"])),
                           classifier_state=content.array_records["classifier"].to_torch_state_dict())


def encode_calibration(res: CalibrationResult) -> RecordDict:
    return RecordDict({"calibration": _config_record(
        site=res.site, meta=json.dumps(res.meta), positive=[int(v) for v in res.histogram.positive],
        negative=[int(v) for v in res.histogram.negative])})


def decode_calibration(content: RecordDict) -> CalibrationResult:
    rec = content.config_records["calibration"]
    return CalibrationResult(site=str(rec["site"]), meta=json.loads(str(rec["meta"])),
                             histogram=ScoreHistogram(np.asarray(rec["positive"]), np.asarray(rec["negative"])))


# ---- federated rounds (Flower strategies put weights under "arrays", settings under "config";
# FedAvg wants exactly one ArrayRecord and one MetricRecord with "num-examples" back) ----------


def arrays_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def arrays_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def round_config(req: RoundRequest) -> ConfigRecord:
    return _config_record(run_id=req.run_id, config=req.config.to_json(), round=req.round, stage=req.stage)


def decode_round_request(content: RecordDict) -> RoundRequest:
    rec = content.config_records["config"]
    return RoundRequest(
        run_id=str(rec["run_id"]),
        config=RunConfig.from_json(str(rec["config"])),
        round=int(rec["round"]),
        stage=str(rec["stage"]),
        weights=arrays_dict(content.array_records["arrays"]),
    )


def is_round_request(content: RecordDict) -> bool:
    return "arrays" in content.array_records and "config" in content.config_records


def encode_update(upd: ModelUpdate) -> RecordDict:
    return RecordDict(
        {
            "arrays": arrays_record(upd.weights),
            "metrics": MetricRecord({"num-examples": int(upd.n_examples), "uniform-weight": 1}),
            "update_meta": _config_record(site=upd.site, meta=json.dumps(upd.meta)),
        }
    )


def decode_update(content: RecordDict) -> ModelUpdate:
    meta = content.config_records["update_meta"]
    return ModelUpdate(
        site=str(meta["site"]),
        weights=arrays_dict(content.array_records["arrays"]),
        n_examples=int(content.metric_records["metrics"]["num-examples"]),
        meta=json.loads(str(meta["meta"])),
    )


# ---- secure aggregation ------------------------------------------------------------------
# Flower's SecAgg+ (``SecAggPlusWorkflow`` / ``secaggplus_mod``) runs on its legacy records:
# the round travels as FitIns (weights as an ordered list, the request in its config) and
# the update as FitRes. Arrays are masked: they travel as differences from the global
# weights and the server only ever sees their average. 0-d arrays are counters (an
# EMA's step count), not learned from pixels: they travel in the clear, in the metrics.


def masked_keys(weights: dict[str, np.ndarray]) -> list[str]:
    return [k for k in weights if np.ndim(weights[k]) > 0]


def encode_secure_round(req: RoundRequest) -> Any:
    from flwr.common import FitIns, ndarrays_to_parameters

    keys = list(req.weights)
    config = dict(round_config(req))
    config["keys"] = json.dumps(keys)
    return FitIns(ndarrays_to_parameters([np.asarray(req.weights[k], order="C") for k in keys]), config)


def is_secure_round(content: RecordDict) -> bool:
    return "fitins.config" in content.config_records


def decode_secure_round(content: RecordDict) -> RoundRequest:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import recorddict_to_fitins

    ins = recorddict_to_fitins(content, keep_input=True)
    rec = ins.config
    keys = json.loads(str(rec["keys"]))
    arrays = parameters_to_ndarrays(ins.parameters)
    if len(keys) != len(arrays):
        raise ValueError(f"secure round: {len(arrays)} arrays for {len(keys)} names")
    return RoundRequest(
        run_id=str(rec["run_id"]),
        config=RunConfig.from_json(str(rec["config"])),
        round=int(rec["round"]),
        stage=str(rec["stage"]),
        weights=dict(zip(keys, arrays)),
    )


def encode_secure_update(upd: ModelUpdate, start: dict[str, np.ndarray], clipping_range: float) -> RecordDict:
    """The FitRes that ``secaggplus_mod`` masks: each site counts once (num_examples=1)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    deltas = []
    for k in masked_keys(start):
        d = upd.weights[k].astype(np.float64) - start[k].astype(np.float64)
        worst = float(np.abs(d).max()) if d.size else 0.0
        if not np.isfinite(worst) or worst > clipping_range:
            raise ValueError(
                f"the update of {k} changes a value by {worst:.3g}, beyond "
                f"federation.secure_aggregation.clipping_range={clipping_range:g}; sending it would clip it "
                "silently (raise the range, or lower the learning rate or local epochs)"
            )
        deltas.append(d.astype(np.float32))
    counters = {k: float(upd.weights[k]) for k in start if np.ndim(start[k]) == 0}
    res = FitRes(
        Status(Code.OK, "ok"),
        ndarrays_to_parameters(deltas),
        num_examples=1,
        metrics={"site": upd.site, "n_examples": int(upd.n_examples), "meta": json.dumps(upd.meta),
                 "counters": json.dumps(counters)},
    )
    return fitres_to_recorddict(res, keep_input=True)


def decode_secure_update(fitres: Any) -> ModelUpdate:
    """A site's clear part of a secure update (its arrays are only in the average)."""
    m = fitres.metrics
    counters = json.loads(str(m["counters"]))
    return ModelUpdate(site=str(m["site"]), weights={k: np.asarray(v) for k, v in counters.items()},
                       n_examples=int(m["n_examples"]), meta=json.loads(str(m["meta"])))


def content_bytes(content: RecordDict) -> int:
    """Bytes a message's content carries (arrays plus serialised values)."""
    total = 0
    for rec in content.array_records.values():
        total += sum(a.numpy().nbytes for a in rec.values())
    for group in (content.config_records, content.metric_records):
        for rec in group.values():
            total += sum(len(str(v).encode()) for v in rec.values())
    return total


def error_origin(reply: Message, fallback: str) -> tuple[str, str]:
    """(site, reason) of an error reply. fedsynth's ClientApp prefixes its explained
    failures with the site's name; anything else (a crash in Flower, a foreign app) is
    attributed to the node it came from."""
    reason = reply.error.reason or f"error code {reply.error.code}"
    if reply.error.code == SITE_ERROR:
        site, _, detail = reason.partition(": ")
        if detail:
            return site, detail
    return fallback, reason.strip().splitlines()[0] if reason.strip() else reason
