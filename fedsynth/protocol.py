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
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsynth.classifier.metrics import ScoreHistogram
from fedsynth.config import RunConfig

TRAIN = "train"
EVALUATE = "evaluate"


@dataclass
class TrainRequest:
    run_id: str
    config: RunConfig
    run_dir: str = ""  # simulation only: where sites write their local outputs


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
    run_dir: str = ""


@dataclass
class EvalResult:
    site: str
    metrics: dict[str, Any]
    histogram: ScoreHistogram
    meta: dict[str, Any] = field(default_factory=dict)


# ---- encoding ---------------------------------------------------------------------------


def _config_record(**values: Any) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in values.items()})


def encode_train_request(req: TrainRequest) -> RecordDict:
    return RecordDict({"request": _config_record(run_id=req.run_id, config=req.config.to_json(), run_dir=req.run_dir)})


def decode_train_request(content: RecordDict) -> TrainRequest:
    rec = content.config_records["request"]
    return TrainRequest(
        run_id=str(rec["run_id"]), config=RunConfig.from_json(str(rec["config"])), run_dir=str(rec["run_dir"])
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
    return RecordDict(
        {
            "classifier": ArrayRecord(req.classifier_state),
            "request": _config_record(
                run_id=req.run_id,
                config=req.config.to_json(),
                classifier=json.dumps(req.classifier_header),
                run_dir=req.run_dir,
            ),
        }
    )


def decode_evaluate_request(content: RecordDict) -> EvaluateRequest:
    rec = content.config_records["request"]
    return EvaluateRequest(
        run_id=str(rec["run_id"]),
        config=RunConfig.from_json(str(rec["config"])),
        classifier_header=json.loads(str(rec["classifier"])),
        classifier_state=content.array_records["classifier"].to_torch_state_dict(),
        run_dir=str(rec["run_dir"]),
    )


def encode_eval_result(res: EvalResult) -> RecordDict:
    return RecordDict(
        {
            "evaluation": _config_record(
                site=res.site,
                metrics=json.dumps(res.metrics),
                meta=json.dumps(res.meta),
                histogram_positive=[int(v) for v in res.histogram.positive],
                histogram_negative=[int(v) for v in res.histogram.negative],
            )
        }
    )


def decode_eval_result(content: RecordDict) -> EvalResult:
    rec = content.config_records["evaluation"]
    return EvalResult(
        site=str(rec["site"]),
        metrics=json.loads(str(rec["metrics"])),
        histogram=ScoreHistogram(np.asarray(rec["histogram_positive"]), np.asarray(rec["histogram_negative"])),
        meta=json.loads(str(rec["meta"])),
    )
