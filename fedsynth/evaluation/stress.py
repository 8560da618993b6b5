"""Stress-testing a model with controlled synthetic X-rays (``fedsynth stress RUN_DIR MODEL``).

A run's generator draws a balanced synthetic set of each label; the model under test scores
it as drawn, under every simulated acquisition shift at three strengths
(``fedsynth.evaluation.shifts``), and on synthetic images edited from one class towards the
other at graded strengths (the generator's own ``edit``). Per axis and level the report
gives the AUROC against the conditioning labels (bootstrap 95% CI), the drop from the
unshifted set, each class's mean score, and the share of decisions that flip at the
model's threshold; per edit strength, how far scores move towards the requested class.

Synthetic images only: no real image is read. The labels are the generator's conditioning
labels, so an AUROC here measures agreement with the generator, not with a radiologist:
the axes are for comparing levels and models, not a clinical performance figure.

The model under test is one of:

* a fedsynth classifier (a run directory or its ``classifier.safetensors``): its own
  resolution, intensity normalization, temperature and threshold;
* a TorchScript module (``.pt``, ``.pth``, ``.ts``; ``torch.jit.load``, so only load a
  file you trust) or an ONNX model (``.onnx``, needs the optional ``onnxruntime``), with a
  stated input size; it gets (N, 1, S, S) float32 images in ``[0, 1]`` (``input_range
  'unit'``) or ``[-1, 1]`` (``'symmetric'``) and returns per image one logit or
  probability of pneumonia, or two class columns (softmaxed when logits).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth import __version__
from fedsynth.classifier.metrics import auroc, stratified_bootstrap
from fedsynth.data.dataset import CLASS_NAMES
from fedsynth.errors import DataError
from fedsynth.evaluation.editing import ssim
from fedsynth.evaluation.shifts import SHIFTS, shifted
from fedsynth.presentation import esc, figure_png, fmt, fmt_ci, img, page_shell, pyplot, table

STRESS_JSON = "stress.json"
STRESS_HTML = "stress.html"
EDIT_STRENGTHS = (0.25, 0.5, 0.75, 1.0)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
MAX_IMAGES = 5000  # per class: a stress set is for comparing levels, not a dataset


@dataclass
class ModelUnderTest:
    """A model as the stress test sees it: a name, an input side and a scoring function."""

    name: str
    kind: str  # fedsynth | torchscript | onnx
    resolution: int
    threshold: float
    score: Callable[[np.ndarray], np.ndarray]  # (N, S, S) in [0, 1] -> (N,) pneumonia probability


def _to_probability(out: np.ndarray, output: str) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 2 and out.shape[1] == 2:
        if output == "logit":
            z = out - out.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e[:, 1] / e.sum(axis=1)
        return out[:, 1]
    if out.ndim != 1:
        raise DataError(f"the model returned an array of shape {out.shape}; expected (N,), (N, 1) or (N, 2)")
    if output == "logit":
        return 1.0 / (1.0 + np.exp(-np.clip(out, -60, 60)))
    return out


def load_model(path: str | Path, *, input_size: int | None = None, input_range: str = "unit",
               output: str = "logit", threshold: float | None = None) -> ModelUnderTest:
    """The model under test from ``path`` (see the module doc); DataError naming what is wrong."""
    path = Path(path)
    if input_range not in ("unit", "symmetric"):
        raise DataError(f"input_range must be 'unit' or 'symmetric', not {input_range!r}")
    if output not in ("logit", "probability"):
        raise DataError(f"output must be 'logit' or 'probability', not {output!r}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise DataError(f"threshold must be in [0, 1], not {threshold}")
    if path.is_dir() or path.suffix == ".safetensors":
        from fedsynth.classifier.predict import load_run_classifier

        clf = load_run_classifier(path)
        return ModelUnderTest(path.name, "fedsynth", clf.resolution,
                              clf.threshold if threshold is None else threshold,
                              lambda x: clf.predict_proba(x).astype(np.float64))
    if not path.is_file():
        raise DataError(f"no model at {path}")
    if input_size is None or not 8 <= input_size <= 1024:
        raise DataError(f"{path.name}: a TorchScript or ONNX model needs --input-size (8 to 1024 px)")
    shift = (lambda x: x * 2 - 1) if input_range == "symmetric" else (lambda x: x)
    t = 0.5 if threshold is None else threshold
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        import torch

        try:
            with warnings.catch_warnings():  # deprecated upstream; still the format many models ship in
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # not TorchScript, truncated, a pickle of something else
            raise DataError(f"{path.name}: not a loadable TorchScript module ({type(err).__name__}: {err})") from None

        def score_ts(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                outs = [module(torch.from_numpy(shift(x[i:i + 256][:, None].astype(np.float32)))).float().numpy()
                        for i in range(0, len(x), 256)]
            return _to_probability(np.concatenate(outs), output)

        return ModelUnderTest(path.name, "torchscript", input_size, t, score_ts)
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise DataError("an ONNX model needs the optional onnxruntime package (pip install onnxruntime)") from None
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise DataError(f"{path.name}: not a loadable ONNX model ({type(err).__name__}: {err})") from None
        name = session.get_inputs()[0].name

        def score_onnx(x: np.ndarray) -> np.ndarray:
            outs = [session.run(None, {name: shift(x[i:i + 256][:, None].astype(np.float32))})[0]
                    for i in range(0, len(x), 256)]
            return _to_probability(np.concatenate(outs), output)

        return ModelUnderTest(path.name, "onnx", input_size, t, score_onnx)
    raise DataError(f"{path.name}: not a model fedsynth can load (a run directory, .safetensors, "
                    f"{', '.join(TORCHSCRIPT_SUFFIXES)} or .onnx)")


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[-1] == side:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=side < images.shape[-1])
    return x.clamp(0, 1)[:, 0].numpy()


def _checked_scores(model: ModelUnderTest, images: np.ndarray) -> np.ndarray:
    p = np.asarray(model.score(_resize(images, model.resolution)), dtype=np.float64)
    if p.shape != (len(images),):
        raise DataError(f"the model returned {p.shape} scores for {len(images)} images")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise DataError("the model's scores are not probabilities in [0, 1] (wrong --output?)")
    return p


def _level(classes: np.ndarray, names: tuple[str, ...], p: np.ndarray, base: np.ndarray | None, threshold: float,
           n_boot: int, seed: int) -> dict[str, Any]:
    """AUROC of pneumonia (any class but the first) and, per conditioning class, the mean score
    and the share called pneumonia."""
    labels = (classes > 0).astype(np.int64)
    row: dict[str, Any] = {
        "auroc": auroc(labels, p),
        "auroc_ci": list(stratified_bootstrap(labels, p, auroc, n_boot, seed=seed)) if n_boot else None,
        "mean_score": {name: float(p[classes == c].mean()) for c, name in enumerate(names)},
        "positive_rate": {name: float((p[classes == c] >= threshold).mean()) for c, name in enumerate(names)},
    }
    if base is not None:
        row["flipped"] = float(((p >= threshold) != (base >= threshold)).mean())
    return row


def stress_test(gen, model: ModelUnderTest, *, n_per_class: int = 200, n_edit: int = 32, seed: int = 0,
                n_boot: int = 200, shifts: dict[str, tuple[float, ...]] | None = None,
                strengths: tuple[float, ...] = EDIT_STRENGTHS) -> dict[str, Any]:
    """Every figure of a stress test (JSON-ready); see the module doc."""
    if not 2 <= n_per_class <= MAX_IMAGES:
        raise DataError(f"n_per_class must be between 2 and {MAX_IMAGES}, not {n_per_class}")
    if not 1 <= n_edit <= MAX_IMAGES:
        raise DataError(f"n_edit must be between 1 and {MAX_IMAGES}, not {n_edit}")
    shifts = SHIFTS if shifts is None else shifts
    start = time.perf_counter()
    names = tuple(getattr(gen, "classes", CLASS_NAMES))  # every class the generator conditions on
    images = np.concatenate([gen.sample(n_per_class, c, seed=seed + c) for c in range(len(names))]).astype(np.float32)
    labels = np.repeat(np.arange(len(names)), n_per_class)
    base = _checked_scores(model, images)
    result: dict[str, Any] = {
        "fedsynth_version": __version__,
        "model": {"name": model.name, "kind": model.kind, "resolution": model.resolution,
                  "threshold": model.threshold},
        "generator": {"family": gen.family, "resolution": gen.resolution},
        "n_per_class": n_per_class, "seed": seed, "bootstrap": n_boot,
        "labels_are": "the generator's conditioning labels (synthetic images only)",
        "classes": list(names),
        "unshifted": _level(labels, names, base, None, model.threshold, n_boot, seed),
        "shifts": {},
        "edits": {},
    }
    for kind, levels in shifts.items():
        rows = {}
        for i, level in enumerate(levels):
            p = _checked_scores(model, shifted(images, kind, level, seed=seed + i))
            row = _level(labels, names, p, base, model.threshold, n_boot, seed)
            row["auroc_drop"] = result["unshifted"]["auroc"] - row["auroc"]
            rows[str(level)] = row
        result["shifts"][kind] = rows
    pairs = [pair for c in range(1, len(names)) for pair in ((0, c), (c, 0))]  # normal <-> each other class
    for source, target in pairs:
        key = f"{names[source]}->{names[target]}"
        per = {}
        for strength in strengths:
            try:
                src, out = gen.edit(n_edit, source, target, strength, seed=seed + 11)
            except NotImplementedError as err:
                per = {"unavailable": str(err)}
                break
            before, after = _checked_scores(model, src), _checked_scores(model, out)
            toward = (after - before) if target > 0 else (before - after)
            per[str(strength)] = {
                "n": n_edit,
                "score_before": float(before.mean()), "score_after": float(after.mean()),
                "share_moved_toward_target": float((toward > 0).mean()),
                "share_decided_as_target": float(((after >= model.threshold) == (target > 0)).mean()),
                "ssim_to_source": float(np.mean([ssim(a, b) for a, b in zip(src, out)])),
            }
        result["edits"][key] = per
    result["seconds"] = time.perf_counter() - start
    return result


# ---- output ---------------------------------------------------------------------------------


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if (out / STRESS_JSON).exists() or (out / STRESS_HTML).exists():
        raise DataError(f"{out} already holds a stress test; choose another --out (nothing is overwritten)")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    return out


def _plot(result: dict[str, Any]) -> bytes:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.6), dpi=110)
    base = result["unshifted"]["auroc"]
    for kind, rows in result["shifts"].items():
        ax.plot([0, 1, 2, 3], [base] + [r["auroc"] for r in rows.values()], marker="o", label=kind)
    ax.set_xticks([0, 1, 2, 3], ["none", "mild", "moderate", "strong"])
    ax.set_ylabel("AUROC (conditioning labels)")
    ax.set_xlabel("shift strength")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def render_html(result: dict[str, Any]) -> str:
    m, g, u = result["model"], result["generator"], result["unshifted"]
    names = result.get("classes") or list(CLASS_NAMES)
    parts = [f"<h1>Stress test: {esc(m['name'])}</h1>",
             f"<p>{esc(m['kind'])} model at {m['resolution']} px, threshold {fmt(m['threshold'])}; "
             f"{result['n_per_class']} synthetic images per class from a {esc(g['family'])} generator at "
             f"{g['resolution']} px. Labels are the generator's conditioning labels: compare levels and models, "
             "this is not a clinical performance figure. Synthetic images only.</p>",
             "<section><h2>Unshifted</h2>" + table(
                 ["AUROC [95% CI]", *(f"mean score {n}" for n in names),
                  "called pneumonia: " + " / ".join(names)],
                 [[fmt_ci(u["auroc"], u["auroc_ci"]), *(fmt(u["mean_score"][n]) for n in names),
                   " / ".join(fmt(u["positive_rate"][n]) for n in names)]]) + "</section>"]
    rows = []
    for kind, levels in result["shifts"].items():
        for level, r in levels.items():
            rows.append([kind, level, fmt_ci(r["auroc"], r["auroc_ci"]), fmt(r["auroc_drop"]),
                         *(fmt(r["mean_score"][n]) for n in names), fmt(r["flipped"])])
    parts.append("<section><h2>Acquisition shifts</h2>" + img(_plot(result), "AUROC along each shift") + table(
        ["shift", "level", "AUROC [95% CI]", "drop", *(f"mean score {n}" for n in names),
         "decisions flipped"], rows, cls="wide") + "</section>")
    rows = []
    for key, per in result["edits"].items():
        if "unavailable" in per:
            rows.append([key, "–", per["unavailable"], "", "", "", ""])
            continue
        for strength, r in per.items():
            rows.append([key, strength, f"{fmt(r['score_before'])} -> {fmt(r['score_after'])}",
                         fmt(r["share_moved_toward_target"]), fmt(r["share_decided_as_target"]),
                         fmt(r["ssim_to_source"]), str(r["n"])])
    parts.append("<section><h2>Edits towards the other class</h2>" + table(
        ["edit", "strength", "mean score before -> after", "moved toward target", "decided as target",
         "SSIM to source", "images"], rows, cls="wide") + "</section>")
    parts.append(f"<footer>Written by fedsynth {esc(result['fedsynth_version'])} in {result['seconds']:.0f} s. "
                 "Research software, not a medical device.</footer>")
    return page_shell(f"fedsynth stress test: {m['name']}", "\n".join(parts))


def write_stress(out: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in ((STRESS_JSON, json.dumps(result, indent=2, allow_nan=False)), (STRESS_HTML,
                                                                                     render_html(result))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths[0], paths[1]
