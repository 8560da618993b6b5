"""``report.html``: one self-contained page per run, for a clinician and a privacy officer.

Built from the files in the run directory only (``config.yaml``, ``metrics.json``,
``histograms.json``, ``grids/*.png``, ``sites/*/real_vs_synthetic_*.png``, ``ledgers/``),
so ``fedsynth report RUN_DIR`` rebuilds it at any time. The ledgers are verified with the
privacy audit's own code (chain, signatures, every epsilon recomputed) rather than
trusting the figures in ``metrics.json``.

The page has no script and no external resource: images are PNG data URIs and the CSS is
inline, so it can be mailed, archived or opened offline. A part that cannot be built (a
missing or damaged optional file, an unexpected value) is logged and replaced by a note;
only a folder that is not a finished run (no readable ``metrics.json``) is an error.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedsynth.errors import FedsynthError
from fedsynth.server.rundir import CONFIG_FILE, METRICS_FILE

log = logging.getLogger("fedsynth.report")

REPORT_FILE = "report.html"
HISTOGRAMS_FILE = "histograms.json"  # written by fedsynth.server.orchestrator.evaluate_and_report
LEDGERS_DIR = "ledgers"
MAX_CURVE_BOOTSTRAP = 1000  # resamples for the curve bands (the run's evaluation.bootstrap, at most this)


class ReportError(FedsynthError):
    """The folder is not a finished run: no report can be built."""


# ---- plain-language text ------------------------------------------------------------------------

MODES = {
    "substitution": "Data substitution: each hospital trained an image generator on its own X-rays and sent "
                    "only synthetic images; the server trained the classifier on those synthetic images alone.",
    "federated": "Federated generator: the hospitals trained one shared image generator by federated averaging "
                 "(only model weights travelled); the server sampled it and trained the classifier on those "
                 "synthetic images alone.",
    "fedavg-classifier": "Baseline, classic federated learning: the classifier itself was trained by federated "
                         "averaging on the hospitals' real X-rays (only model weights travelled).",
    "centralized-real": "Baseline, centralized: all hospitals' real training X-rays were pooled in one place. "
                        "Possible only in a simulation; the upper bound the other modes are measured against.",
}

MAIN_LABEL = {
    "substitution": "synthetic only (server)",
    "federated": "synthetic only, federated GAN (server)",
    "fedavg-classifier": "federated averaging on real (server)",
    "centralized-real": "real, pooled centrally (server)",
}

BASELINES = {
    "trtr": ("site's own real images", "each site's classifier trained on its own real training images "
                                       "(train-real-test-real)"),
    "real_plus_synthetic": ("site's real + synthetic", "each site's classifier trained on its own real images "
                                                       "plus the pooled synthetic sample (augmentation)"),
}

EXPLAIN = {
    "auroc": "AUROC: the chance that the classifier scores a random pneumonia X-ray higher than a random normal "
             "one. 0.5 is a coin toss, 1.0 is perfect.",
    "aupr": "AUPR (average precision): how well pneumonia cases rank above normal ones, judged on the pneumonia "
            "cases found; its chance level is the share of pneumonia in the test set.",
    "sens": "Sensitivity: share of pneumonia X-rays the classifier flags. Specificity: share of normal X-rays it "
            "leaves unflagged. Both at the decision threshold fixed before testing (never tuned on the test "
            "images).",
    "ci": "Brackets give the {level:.0%} confidence interval: stratified bootstrap for AUROC and AUPR, Wilson "
          "intervals for sensitivity and specificity. Wide intervals mean few test images.",
}


# ---- formatting ---------------------------------------------------------------------------------


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def as_number(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def fmt(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def fmt_g(x: Any, digits: int = 3) -> str:
    v = as_number(x)
    return "–" if v is None else f"{v:.{digits}g}"


def fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    v = as_number(value)
    if v is None:
        return "n/a"
    lo, hi = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    if as_number(lo) is None or as_number(hi) is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def fmt_bytes(n: Any) -> str:
    v = as_number(n)
    if v is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return str(n)


def fmt_seconds(s: Any) -> str:
    v = as_number(s)
    if v is None:
        return "–"
    if v < 120:
        return f"{v:.1f} s"
    return f"{v / 60:.1f} min"


def table(headers: list[str], rows: list[list[str]], cls: str = "", raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    cell = (lambda c: c) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def explain(*paragraphs: str) -> str:
    return "".join(f"<p class='explain'>{esc(p)}</p>" for p in paragraphs)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(data: bytes, alt: str, cls: str = "") -> str:
    return f"<img class='{cls}' alt='{esc(alt)}' src='{png_uri(data)}'>"


# ---- the run's files ----------------------------------------------------------------------------


@dataclass
class LedgerStatus:
    site: str
    ledger: Path
    public_key: Path | None
    verified: bool | None  # None: could not be checked (no public key, unreadable)
    n_entries: int = 0
    problems: list[str] = field(default_factory=list)
    spent_epsilon: float | None = None  # recomputed by the accountant, at the budget's delta
    budget: dict | None = None
    non_private_trainings: int = 0
    n_train: int | None = None  # training images, from the last training entry of this run
    note: str = ""
    entries: list[dict] = field(default_factory=list)
    checks: dict[int, Any] = field(default_factory=dict)  # entry index -> the audit's EntryCheck


@dataclass
class RunData:
    path: Path
    metrics: dict
    config: dict
    histograms: dict
    problems: list[str] = field(default_factory=list)
    ledgers: dict[str, LedgerStatus] = field(default_factory=dict)
    include_real: bool = True  # embed the sites' real-vs-synthetic grids (simulation only)

    @property
    def mode(self) -> str:
        return str(self.metrics.get("mode") or dig(self.config, "run", "mode") or "?")

    @property
    def sites(self) -> dict[str, dict]:
        return self.metrics.get("sites") or {}

    @property
    def level(self) -> float:
        return float(dig(self.config, "evaluation", "ci_level") or 0.95)


def dig(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def load_run(run_dir: str | Path, include_real: bool = True) -> RunData:
    """Read a finished run; ReportError when ``run_dir`` is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory")
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        what = "an unfinished run" if (path / CONFIG_FILE).is_file() else "not a fedsynth run directory"
        raise ReportError(f"{path} is {what} (no {METRICS_FILE}); a report needs a finished run")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{metrics_path} cannot be read: {err}") from None
    if not isinstance(metrics, dict):
        raise ReportError(f"{metrics_path} is not a fedsynth metrics document")
    data = RunData(path.resolve(), metrics, {}, {}, include_real=include_real)
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text())
        data.config = config if isinstance(config, dict) else {}
    except (OSError, yaml.YAMLError) as err:
        data.problems.append(f"{CONFIG_FILE} could not be read ({err}); the configuration is not shown")
    hist_path = path / HISTOGRAMS_FILE
    if hist_path.is_file():
        try:
            hists = json.loads(hist_path.read_text())
            data.histograms = hists if isinstance(hists, dict) else {}
        except (OSError, ValueError) as err:
            data.problems.append(f"{HISTOGRAMS_FILE} could not be read ({err}); no curves")
    try:
        data.ledgers = verify_ledgers(path, metrics.get("run_id"))
    except Exception as err:  # noqa: BLE001 - a report problem must never fail a run
        log.warning("report: ledgers could not be verified: %s", err, exc_info=True)
        data.problems.append(f"the ledgers could not be verified ({type(err).__name__}: {err})")
    return data


def verify_ledgers(run_dir: Path, run_id: str | None) -> dict[str, LedgerStatus]:
    """Each ``ledgers/<site>.jsonl`` checked against ``ledgers/<site>.pub`` with the privacy
    audit's verification (chain, hashes, signatures, every epsilon recomputed)."""
    from fedsynth.privacy.keys import load_public_key
    from fedsynth.privacy.ledger import RELEASE, TRAINING, read_ledger, verify_ledger

    out: dict[str, LedgerStatus] = {}
    folder = run_dir / LEDGERS_DIR
    if not folder.is_dir():
        return out
    for ledger in sorted(folder.glob("*.jsonl")):
        site = ledger.stem
        pub = ledger.with_suffix(".pub")
        status = LedgerStatus(site, ledger, pub if pub.is_file() else None, None)
        out[site] = status
        try:
            entries = read_ledger(ledger).entries
            status.entries, status.n_entries = entries, len(entries)
            status.non_private_trainings = sum(e.get("type") == TRAINING for e in entries)
            ours = [e for e in entries if e.get("type") in (TRAINING, "dp-training") and e.get("run_id") == run_id]
            if ours:
                status.n_train = dig(ours[-1], "details", "n_train")
            releases = [e for e in entries if e.get("type") == RELEASE]
            if releases:
                status.budget = releases[-1].get("budget")
            if status.public_key is None:
                status.note = "no public key in ledgers/: the ledger cannot be verified"
                spent = dig(releases[-1], "spent", "epsilon") if releases else None
                status.spent_epsilon = as_number(spent)
                continue
            result = verify_ledger(ledger, load_public_key(status.public_key))
            status.verified = result.ok
            status.problems = result.failures()
            status.checks = {c.index: c for c in result.checks}
            if releases:
                last = releases[-1].get("index")
                status.spent_epsilon = next((c.recomputed_epsilon for c in result.checks if c.index == last), None)
        except Exception as err:  # noqa: BLE001 - a damaged file is a finding, not a crash
            status.verified = False if status.public_key is not None else None
            status.problems.append(f"could not be checked: {type(err).__name__}: {err}")
    return out


# ---- warnings -----------------------------------------------------------------------------------


@dataclass
class Banner:
    tag: str
    text: str
    kind: str  # css class


def banners(data: RunData) -> list[Banner]:
    m = data.metrics
    out: list[Banner] = []
    for w in m.get("warnings") or []:
        w = str(w)
        upper = w.upper()
        if upper.startswith("PHANTOM"):
            out.append(Banner("PHANTOM DATA", w.split(":", 1)[-1].strip(), "phantom"))
        elif upper.startswith("NOT PRIVATE"):
            out.append(Banner("NOT PRIVATE", w.split(":", 1)[-1].strip(), "danger"))
        elif upper.startswith("CENTRALIZED"):
            out.append(Banner("CENTRALIZED", w.split(":", 1)[-1].strip(), "central"))
        elif "dropped" in w or "failed" in w:
            out.append(Banner("SITES DROPPED", w, "dropped"))
        else:
            out.append(Banner("WARNING", w, "dropped"))
    tags = {b.tag for b in out}
    if dig(m, "data", "phantom") and "PHANTOM DATA" not in tags:
        out.insert(0, Banner("PHANTOM DATA", "these results come from procedurally generated phantoms, not "
                                             "X-rays.", "phantom"))
    if m.get("private") is False and "NOT PRIVATE" not in tags:
        out.append(Banner("NOT PRIVATE", "no differential privacy guarantee covers every site's data in this "
                                         "run.", "danger"))
    failed = sorted(s for s, v in data.sites.items() if v.get("status") != "ok")
    if failed and "SITES DROPPED" not in tags:
        out.append(Banner("SITES DROPPED", "sites dropped or failed: " + ", ".join(failed), "dropped"))
    if data.mode == "centralized-real" and "CENTRALIZED" not in tags:
        out.append(Banner("CENTRALIZED", "real images were pooled in one place (simulation-only upper bound).",
                          "central"))
    if not dig(m, "data", "phantom") and _png_files(data)[1]:
        out.append(Banner("CONTAINS REAL IMAGES", "the Images section embeds real X-rays from the sites' "
                          "real-vs-synthetic grids (a simulation keeps them in the run directory). Share this page "
                          "only with people allowed to see the data, or rebuild it with: fedsynth report RUN_DIR "
                          "--no-real-images.", "central"))
    bad = sorted(s for s, st in data.ledgers.items() if st.verified is False)
    if bad:
        out.append(Banner("LEDGER VERIFICATION FAILED", "the privacy ledger of " + ", ".join(bad) + " failed "
                          "verification: its privacy figures cannot be trusted (see Privacy).", "danger"))
    return out


# ---- sections -----------------------------------------------------------------------------------


def section_header(data: RunData) -> str:
    m = data.metrics
    created = str(m.get("created") or "")
    if "T" in created:
        created = created.replace("T", " ")
        if len(created) > 19 and created[19] in "+-":
            created = created[:19] + " " + created[19:]
    source = dig(m, "data", "source") or dig(data.config, "data", "source") or "?"
    facts = [
        ("Run", m.get("run_id") or data.path.name),
        ("Mode", data.mode),
        ("Data", f"{source}" + (" (phantoms: not medical images)" if dig(m, "data", "phantom") else "")
         + (f", {dig(m, 'data', 'resolution')} px" if dig(m, "data", "resolution") else "")),
        ("Date", created or "–"),
        ("Wall time", fmt_seconds(dig(m, "timings", "total_s"))),
        ("Software", f"fedsynth {m.get('fedsynth_version', '?')}"),
    ]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    out = [f"<header><h1>fedsynth run report</h1><dl class='facts'>{dl}</dl>"]
    out.append(f"<p class='mode'>{esc(MODES.get(data.mode, data.mode))}</p>")
    for b in banners(data):
        out.append(f"<div class='banner {b.kind}'><strong>{esc(b.tag)}</strong> {esc(b.text)}</div>")
    for p in data.problems:
        out.append(f"<div class='note'>Report note: {esc(p)}</div>")
    out.append("</header>")
    return "".join(out)


def section_glance(data: RunData) -> str:
    m = data.metrics
    pooled = m.get("pooled") or {}
    sites = data.sites
    ok = sum(1 for s in sites.values() if s.get("status") == "ok")
    eps = [as_number(p.get("spent_epsilon")) for p in (dig(m, "privacy", "sites") or {}).values()]
    eps = [e for e in eps if e is not None]
    if m.get("private"):
        privacy = f"DP, max ε spent {max(eps):.3g}" if eps else "DP"
    elif data.mode == "centralized-real":
        privacy = "none (real images pooled)"
    else:
        privacy = "NOT PRIVATE"
    level = f"{data.level:.0%} CI"

    def ci(d: dict, key: str) -> str:
        lo, hi = (list(d.get(f"{key}_ci") or []) + [None, None])[:2]
        return f"{level} {fmt(lo)} to {fmt(hi)}" if as_number(lo) is not None and as_number(hi) is not None else ""

    n = pooled.get("n")
    cards = [
        ("Pooled AUROC", fmt(pooled.get("auroc")), ci(pooled, "auroc") or "no interval"),
        ("Pooled AUPR", fmt(pooled.get("aupr")),
         ci(pooled, "aupr") + (f"; chance {pooled['n_positive'] / n:.2f}" if n else "")),
        ("Sensitivity / specificity", f"{fmt(pooled.get('sensitivity'), 2)} / {fmt(pooled.get('specificity'), 2)}",
         f"at threshold {fmt(pooled.get('threshold'))}" if as_number(pooled.get("threshold")) is not None else ""),
        ("Sites", f"{ok} of {len(sites)} completed", f"tested on {n} real X-rays" if n else "no evaluation"),
        ("Privacy", privacy, "DP-SGD at every site's generator" if m.get("private") else
         ("" if data.mode == "centralized-real" else "no DP guarantee")),
    ]
    cells = "".join(f"<div class='card'><div class='k'>{esc(k)}</div><div class='v'>{esc(v)}</div>"
                    f"<div class='s'>{esc(s)}</div></div>" for k, v, s in cards)
    return (f"<section id='glance'><h2>At a glance</h2><div class='cards'>{cells}</div>"
            + explain("The server's classifier was tested by each hospital on its own real test X-rays, which "
                      "never left the hospital; only the figures came back. Details and plain-language "
                      "explanations of each figure follow below.") + "</section>")


def _describe_generator(gen: dict) -> str:
    if not isinstance(gen, dict) or not gen:
        return "–"
    fam = gen.get("family", "?")
    keys = {"gan": ("epochs", "latent_dim", "base_channels", "batch_size", "loss"),
            "ddpm": ("epochs", "block_out_channels", "sampling_steps", "batch_size"),
            "sd-lora": ("checkpoint", "rank", "epochs", "sampling_steps")}.get(fam, ("epochs",))
    return f"{fam} (" + ", ".join(f"{k} {gen[k]}" for k in keys if k in gen) + ")"


def section_config(data: RunData) -> str:
    c = data.config
    if not c:
        return ("<section id='config'><h2>Configuration</h2><p class='note'>config.yaml is missing or "
                "unreadable.</p></section>")
    fed, priv, ev = c.get("federation") or {}, c.get("privacy"), c.get("evaluation") or {}
    mode = dig(c, "run", "mode", default="?")
    part = fed.get("partition", "?")
    if part == "dirichlet":
        part += f" label skew (alpha {fed.get('dirichlet_alpha')})"
    rows = [
        ["Mode", str(mode)],
        ["Sites", f"{fed.get('num_sites', '?')} sites, partition {part}; the run goes on with at least "
                  f"{fed.get('min_sites', 1)}"],
    ]
    d = c.get("data") or {}
    src = str(d.get("source", "?"))
    if src == "phantom":
        src += f" ({dig(d, 'phantom', 'n_images')} procedural images, not medical)"
    rows.append(["Data", f"{src}; {d.get('resolution', '?')} px; test fraction {d.get('test_fraction', '?')}"])
    if mode in ("federated", "fedavg-classifier"):
        rows.append(["Federated averaging", f"{fed.get('rounds')} rounds of {fed.get('local_epochs')} local "
                                            "epoch(s)"])
        sa = fed.get("secure_aggregation")
        rows.append(["Secure aggregation", "none: the server sees each site's update" if not sa else
                     f"SecAgg+ (the server sees only the average; updates clipped to +/-{sa.get('clipping_range')}, "
                     f"{sa.get('quantization_range')} quantization levels)"])
        cdp = fed.get("client_dp")
        rows.append(["Client-level DP", "none" if not cdp else
                     f"noise multiplier {cdp.get('noise_multiplier')}, clipping norm {cdp.get('clipping_norm')} "
                     f"(server side), delta {cdp.get('delta')}"])
    if mode in ("substitution", "federated"):
        rows.append(["Generator", _describe_generator(c.get("generator") or {})])
        for site, g in sorted((dig(c, "sites", "generators") or {}).items()):
            rows.append([f"Generator at {site}", _describe_generator(g)])
    rows.append(["Differential privacy (DP-SGD)", "none: NOT PRIVATE" if not priv else
                 f"target epsilon {priv.get('epsilon')} at delta {priv.get('delta') or 'default min(1e-5, 1/(10n))'}"
                 f", clipping norm {priv.get('max_grad_norm')}, {priv.get('accountant')} accountant, secure RNG "
                 f"{'yes' if priv.get('secure_rng') else 'no'}"])
    budget = dig(c, "sites", "budget") or {}
    text = f"epsilon {budget.get('epsilon')} at delta {budget.get('delta')} per site (over its whole ledger)"
    for site, b in sorted((dig(c, "sites", "budgets") or {}).items()):
        text += f"; {site}: epsilon {b.get('epsilon')} at delta {b.get('delta')}"
    rows.append(["Privacy budgets", text])
    if mode == "substitution":
        gate = c.get("gate") or {}
        rows.append(["Release gate", (f"on: drops synthetic images closer to a training image than the "
                                      f"{gate.get('quantile')} quantile of real-to-real distances"
                                      if gate.get("enabled") else "off")
                     + ("; membership-inference audit on" if gate.get("membership_audit") else "")])
        rows.append(["Release", f"{dig(c, 'release', 'n_per_class')} synthetic images per class and site"])
    align = c.get("alignment")
    if isinstance(align, dict):
        rows.append(["Domain alignment", "on: " + ", ".join(f"{k} {v}" for k, v in align.items() if k != "enabled")
                     if align.get("enabled") else "off"])
    cl = c.get("classifier") or {}
    arch = cl.get("arch")
    if arch == "auto":
        arch = "small-cnn" if int(d.get("resolution") or 0) <= 32 else "resnet18"
    rows.append(["Classifier", f"{arch}, {cl.get('epochs')} epochs, threshold rule {cl.get('threshold_rule')} "
                               "(chosen on a validation split, never on test images)"])
    rows.append(["Evaluation", f"{ev.get('bootstrap')} bootstrap resamples, {ev.get('ci_level')} intervals; "
                               f"fidelity {'on' if ev.get('fidelity') else 'off'}; site baselines "
                               f"{'on' if ev.get('site_baselines') else 'off'}"])
    rows.append(["Seed", str(dig(c, "run", "seed"))])
    full = yaml.safe_dump(c, sort_keys=False)
    return ("<section id='config'><h2>Configuration</h2>" + table(["setting", "value"], rows, "kv")
            + f"<details><summary>Full resolved config (config.yaml)</summary><pre>{esc(full)}</pre></details>"
            + "</section>")


def _counts(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return "–"
    total = sum(int(v) for v in d.values() if isinstance(v, (int, float)))
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in d.items()) + ")"


def _site_train(data: RunData, name: str, site: dict) -> str:
    for key in ("release", "real_data"):
        info = site.get(key) or {}
        if isinstance(info.get("train_counts"), dict):
            return _counts(info["train_counts"])
        if key == "real_data" and info:
            return _counts({k: v for k, v in info.items() if k != "n_train"})
    st = data.ledgers.get(name)
    if st is not None and st.n_train is not None:
        return str(st.n_train)
    n = dig(data.metrics, "utility", "trtr", "sites", name, "n_train")
    return str(n) if n is not None else "–"


def _site_test(site: dict) -> str:
    rel = site.get("release") or {}
    if isinstance(rel.get("test_counts"), dict):
        return _counts(rel["test_counts"])
    ev = site.get("evaluation") or {}
    if ev.get("n") is not None:
        return f"{ev['n']} (normal {ev.get('n_negative')}, pneumonia {ev.get('n_positive')})"
    return "–"


def section_sites(data: RunData) -> str:
    rows = []
    for name, site in data.sites.items():
        rel, tr, ev = site.get("release") or {}, site.get("training") or {}, site.get("evaluation") or {}
        if rel:
            released = _counts(rel.get("released_per_class")) if rel.get("released_per_class") else str(
                rel.get("n_released", "–"))
            withheld = rel.get("withheld_classes") or {}
            if withheld:
                released += " (withheld: " + ", ".join(f"{k}: {v}" for k, v in withheld.items()) + ")"
            gen = dig(rel, "generator", "family") or "–"
        elif tr:
            released = "model updates, rounds " + ", ".join(map(str, tr.get("rounds") or [])) if tr.get(
                "rounds") else "model updates"
            gen = (dig(data.config, "generator", "family") or "–") if data.mode == "federated" else "–"
        else:
            released, gen = ("real images (pooled centrally)" if site.get("real_data") else "–"), "–"
        status = site.get("status", "?")
        reasons = "; ".join(f"{f.get('stage')}: {f.get('reason')}" for f in site.get("failures") or [])
        status_html = ("<span class='ok'>ok</span>" if status == "ok" else f"<span class='bad'>{esc(status)}</span>")
        if reasons:
            status_html += f"<div class='reason'>{esc(reasons)}</div>"
        rows.append([esc(name), status_html, esc(_site_train(data, name, site)), esc(_site_test(site)),
                     esc(released), esc(gen),
                     esc(fmt_ci(ev.get("auroc"), ev.get("auroc_ci"))) if ev else "–",
                     esc(fmt_ci(ev.get("aupr"), ev.get("aupr_ci"))) if ev else "–",
                     esc(f"{fmt(ev.get('sensitivity'), 2)} / {fmt(ev.get('specificity'), 2)}") if ev else "–",
                     esc(fmt_bytes(site.get("bytes_sent")))])
    headers = ["site", "status", "train images", "test images (real)", "sent to the server", "generator",
               "AUROC [CI]", "AUPR [CI]", "sens / spec", "bytes sent"]
    return ("<section id='sites'><h2>Sites</h2>"
            + explain("One row per hospital. Training images never leave it; the test images are its own real "
                      "X-rays, on which it evaluates the server's classifier. 'Bytes sent' is everything the site "
                      "put on the wire (releases or model updates, and evaluation replies). A site that failed or "
                      "was dropped shows why; the run went on without it.")
            + table(headers, rows, "wide", raw=True) + "</section>")


def _metrics_row(label: str, d: dict | None) -> list[str]:
    d = d or {}
    return [label, str(d.get("n", "–")), fmt_ci(d.get("auroc"), d.get("auroc_ci")),
            fmt_ci(d.get("aupr"), d.get("aupr_ci")),
            fmt_ci(d.get("sensitivity"), d.get("sensitivity_ci"), 2),
            fmt_ci(d.get("specificity"), d.get("specificity_ci"), 2)]


def section_pooled(data: RunData) -> str:
    p = data.metrics.get("pooled")
    if not p:
        return ("<section id='pooled'><h2>Pooled results</h2><p class='note'>No site returned an evaluation: "
                "there are no pooled results.</p></section>")
    rows = [_metrics_row("all sites' real test X-rays", p)]
    conf = table(["", "classifier: pneumonia", "classifier: normal"], [
        ["truly pneumonia", f"{p.get('tp')} (true positives)", f"{p.get('fn')} (missed)"],
        ["truly normal", f"{p.get('fp')} (false alarms)", f"{p.get('tn')} (true negatives)"],
    ], "confusion")
    clf = data.metrics.get("classifier") or {}
    detail = (f"Classifier {clf.get('arch', '?')}, trained on {clf.get('trained_on', '?')} "
              f"({clf.get('n_train', '?')} images, {clf.get('n_val', '?')} held out for validation); decision "
              f"threshold {fmt(p.get('threshold'))} ({clf.get('threshold_rule', '?')}).")
    note = [p["note"]] if p.get("note") else []
    return ("<section id='pooled'><h2>Pooled results</h2>"
            + explain("All sites' real test X-rays taken together, computed from the class-wise score histograms "
                      "the sites returned (no per-image score leaves a site).")
            + table(["test set", "n", "AUROC [CI]", "AUPR [CI]", "sensitivity [CI]", "specificity [CI]"], rows)
            + conf
            + explain(EXPLAIN["auroc"], EXPLAIN["aupr"], EXPLAIN["sens"], EXPLAIN["ci"].format(level=data.level),
                      detail, *note)
            + "</section>")


def _curve_sets(data: RunData) -> list[tuple[str, str, dict]]:
    """(key, label, {site: counts}) for each classifier with histograms."""
    out = []
    for key, label in (("main", MAIN_LABEL.get(data.mode, "server's classifier")),
                       ("trtr", BASELINES["trtr"][0]), ("real_plus_synthetic", BASELINES["real_plus_synthetic"][0])):
        sites = data.histograms.get(key) or {}
        if isinstance(sites, dict) and sites:
            out.append((key, label, sites))
    return out


def curves_png(data: RunData) -> bytes | None:
    from fedsynth.evaluation.curves import pooled_curves

    sets = _curve_sets(data)
    if not sets:
        return None
    n_boot = min(int(dig(data.config, "evaluation", "bootstrap") or 0), MAX_CURVE_BOOTSTRAP)
    seed = int(dig(data.config, "run", "seed") or 0)
    edges = data.histograms.get("edges") if isinstance(data.histograms.get("edges"), dict) else {}
    curves = [pooled_curves(label, list(sites.values()), n_boot=n_boot, level=data.level, seed=seed,
                            edges=edges.get(key))
              for key, label, sites in sets]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"main": "#1f4e9c", "trtr": "#2e7d32", "real_plus_synthetic": "#c76b00"}
    styles = {"main": "-", "trtr": "--", "real_plus_synthetic": ":"}
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    prevalence = None
    for (key, _, _), c in zip(sets, curves):
        col, ls = colours[key], styles[key]
        lw = 2.2 if key == "main" else 1.6
        band_alpha = 0.22 if key == "main" else 0.10
        if not np.isnan(c.roc.fpr).all():
            ax_roc.plot(c.roc.fpr, c.roc.tpr, ls, color=col, lw=lw, label=f"{c.name}: AUROC {c.roc.auc():.3f}")
            if c.bands is not None:
                ax_roc.fill_between(c.bands.fpr_grid, c.bands.tpr_low, c.bands.tpr_high, color=col, alpha=band_alpha,
                                    lw=0)
        if not np.isnan(c.pr.recall).all():
            r, p = c.pr.recall[::-1], c.pr.precision[::-1]  # recall increasing; r[0] = 0 is sklearn's end point
            r, p = np.concatenate([[0.0], r[1:]]), np.concatenate([[p[1]], p[1:]])  # first step starts at recall 0
            ax_pr.plot(r, p, ls, color=col, lw=lw, drawstyle="steps-pre",
                       label=f"{c.name}: AUPR {c.pr.average_precision():.3f}")
            if c.bands is not None:
                ax_pr.fill_between(c.bands.recall_grid, c.bands.precision_low, c.bands.precision_high, color=col,
                                   alpha=band_alpha, lw=0, step="pre")
            prevalence = c.pr.prevalence if key == "main" or prevalence is None else prevalence
    ax_roc.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=(0, (2, 2)), label="chance")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="#999", lw=0.8, ls=(0, (2, 2)), label=f"chance ({prevalence:.2f})")
    n_pos, n_neg = curves[0].n_positive, curves[0].n_negative
    band = (f"shaded: {data.level:.0%} bootstrap band ({curves[0].bands.n_boot} resamples)"
            if curves[0].bands is not None else "no bootstrap band (bootstrap off)")
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title=f"ROC, pooled over {curves[0].n_sites} site(s): {n_pos} pneumonia, {n_neg} normal",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)",
              title=f"Precision-recall, pooled; {band}", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.25)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8, framealpha=0.9)
        ax.title.set_fontsize(9.5)
    if dig(data.metrics, "data", "phantom"):
        fig.suptitle("PHANTOM DATA - not medical images", color="#b35900", fontsize=10, fontweight="bold")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def section_curves(data: RunData) -> str:
    png = curves_png(data)
    if png is None:
        return ("<section id='curves'><h2>ROC and precision-recall curves</h2><p class='note'>No score "
                "histograms in this run (histograms.json): no curves.</p></section>")
    baselines = [k for k, _, _ in _curve_sets(data) if k != "main"]
    text = ["Each point is one decision threshold. ROC: how many pneumonia X-rays are caught (up) against how many "
            "normal X-rays are falsely flagged (right); the closer to the top-left corner, the better. "
            "Precision-recall: of the X-rays flagged, how many truly show pneumonia, as more cases are caught.",
            f"Curves pool all sites' real test X-rays; the shaded band is the {data.level:.0%} bootstrap band "
            "(each site's class-wise counts resampled)."]
    if baselines:
        text.append("Dashed and dotted lines: the sites' own baselines, " + "; ".join(
            BASELINES[k][1] for k in baselines) + ". Their scores are pooled over the sites, each site's model "
            "on its own test split.")
    return ("<section id='curves'><h2>ROC and precision-recall curves</h2>" + explain(*text)
            + img(png, "ROC and precision-recall curves", "plot") + "</section>")


def section_utility(data: RunData) -> str:
    u = dig(data.metrics, "utility") or {}
    present = [k for k in ("tstr", "trtr", "real_plus_synthetic") if u.get(k)]
    if not present or present == ["tstr"]:
        return ("<section id='utility'><h2>Utility: synthetic against real</h2><p class='note'>No site baselines "
                "in this run (evaluation.site_baselines off, or no site could train one): the server's classifier "
                "is in Pooled results.</p></section>")
    sites = sorted({s for k in present for s in (u[k].get("sites") or {})})
    rows = []
    labels = {"tstr": f"server's classifier: {MAIN_LABEL.get(data.mode, data.mode)}",
              "trtr": f"{BASELINES['trtr'][0]} (train-real-test-real)",
              "real_plus_synthetic": BASELINES["real_plus_synthetic"][0]}
    for k in present:
        row = _metrics_row(labels[k], u[k].get("pooled"))
        row += [fmt_ci(dig(u[k], "sites", s, "auroc"), dig(u[k], "sites", s, "auroc_ci")) for s in sites]
        rows.append(row)
    tstr_name = ("Train-synthetic-test-real (TSTR)" if data.mode in ("substitution", "federated")
                 else "The server's classifier")
    return ("<section id='utility'><h2>Utility: synthetic against real</h2>"
            + explain(f"{tstr_name} against what each hospital could do alone with its own real images "
                      "(train-real-test-real, TRTR) and with its real images plus the synthetic ones. All are "
                      "tested on the same real test X-rays. A synthetic-only classifier close to TRTR means the "
                      "synthetic images carry the useful signal; the pooled baselines combine each site's own "
                      "model on its own test split.")
            + table(["classifier", "n", "pooled AUROC [CI]", "pooled AUPR [CI]", "sensitivity [CI]",
                     "specificity [CI]"] + [f"AUROC {s}" for s in sites], rows, "wide")
            + "</section>")


def section_fidelity(data: RunData) -> str:
    f = dig(data.metrics, "fidelity") or {}
    if not f:
        return ("<section id='fidelity'><h2>Fidelity: how real the synthetic images look</h2><p class='note'>"
                "Fidelity was not measured in this run (evaluation.fidelity off, or no synthetic images).</p>"
                "</section>")
    rows = []
    keys = ("frechet_distance", "precision", "recall", "density", "coverage")
    for site, d in sorted((f.get("sites") or {}).items()):
        for which, label in (("pooled", "pooled synthetic sample"), ("own_release", "its own release")):
            r = d.get(which)
            if isinstance(r, dict):
                rows.append([site, label, str(r.get("encoder", "?")), f"{r.get('n_real', '–')} / "
                             f"{r.get('n_synthetic', '–')}"] + [fmt_g(r.get(k), 4) for k in keys])
    p = f.get("pooled")
    if isinstance(p, dict):
        rows.append(["pooled", "average over sites (weighted by real images)", str(p.get("encoder", "?")), "–"]
                    + [fmt_g(p.get(k), 4) for k in keys])
    return ("<section id='fidelity'><h2>Fidelity: how real the synthetic images look</h2>"
            + explain("Measured at each hospital, against its own real X-rays, in an encoder's feature space (the "
                      "encoder is named: Inception-v3 when its weights are available, else a small X-ray encoder "
                      "trained at the site; figures from different encoders cannot be compared).",
                      "Fréchet distance: how far apart the real and synthetic feature distributions are (lower is "
                      "closer; 0 is identical). Precision: share of synthetic images that look like some real "
                      "image (realism). Recall: share of the real images' variety the synthetic ones cover "
                      "(diversity). Density and coverage: sturdier versions of precision and recall (density can "
                      "exceed 1).")
            + table(["site", "synthetic images", "encoder", "real / synthetic n", "Fréchet distance", "precision",
                     "recall", "density", "coverage"], rows, "wide") + "</section>")


def section_privacy(data: RunData) -> str:
    m = data.metrics
    psites = dig(m, "privacy", "sites") or {}
    names = sorted(set(psites) | set(data.ledgers) | set(data.sites))
    rows = []
    for name in names:
        p = psites.get(name) or {}
        st = data.ledgers.get(name)
        site = data.sites.get(name) or {}
        eps = p.get("epsilon")
        if data.mode == "centralized-real":
            eps_text = "none: real images pooled"
        elif name not in psites:
            eps_text = "–" if site.get("status") != "ok" else "?"
        else:
            eps_text = "NOT PRIVATE" if eps is None else fmt_g(eps, 4)
        budget = p.get("budget") or (st.budget if st else None) or {}
        spent_reported = as_number(p.get("spent_epsilon"))
        if budget:
            spent = (f"{fmt_g(spent_reported, 4)} / {fmt_g(budget.get('epsilon'), 4)} at delta "
                     f"{fmt_g(budget.get('delta'), 2)}")
        else:
            spent = fmt_g(spent_reported, 4)
        gate = p.get("gate") or {}
        if gate:
            gate_text = (f"{gate.get('dropped', '?')} of {gate.get('requested', '?')}" if gate.get("enabled", True)
                         else "gate off") + (f", shortfall {gate['shortfall']}" if gate.get("shortfall") else "")
        else:
            gate_text = "n/a (model updates)" if dig(site, "training") else "–"
        if p.get("membership_auc") is not None:
            mia = fmt(p.get("membership_auc"))
        elif not p:
            mia = "–"
        else:
            mia = "n/a" if dig(site, "training") or not gate else "not measured"
        if st is None:
            ledger = "<span class='muted'>no ledger received</span>" + (
                "<div class='reason'>the site failed before sending anything to train on</div>"
                if site.get("status") != "ok" and name not in psites else "")
        elif st.verified is None:
            ledger = f"<span class='warn'>UNVERIFIED</span><div class='reason'>{esc(st.note or '; '.join(st.problems))}"
            ledger += "</div>"
        elif st.verified:
            spent_text = (f"spent recomputed by the accountant: {fmt_g(st.spent_epsilon, 4)}"
                          if st.spent_epsilon else "no DP spending recorded")
            ledger = f"<span class='ok'>VERIFIED</span><div class='reason'>{st.n_entries} entries; {spent_text}</div>"
        else:
            ledger = ("<span class='bad'>FAILED</span><div class='reason'>"
                      + esc("; ".join(st.problems[:3]) + (" ..." if len(st.problems) > 3 else "")) + "</div>")
        if st is not None and st.non_private_trainings:
            ledger += (f"<div class='reason bad'>{st.non_private_trainings} training(s) WITHOUT DP in the "
                       "ledger</div>")
        rows.append([esc(name), esc(eps_text), esc(fmt_g(p.get("delta"), 2)), esc(spent), esc(gate_text), esc(mia),
                     ledger])
    out = ["<section id='privacy'><h2>Privacy</h2>"]
    req = dig(m, "privacy", "requested")
    gated = any((p or {}).get("gate") for p in psites.values())
    out.append(explain(
        "Differential privacy (DP) bounds how much anything the software outputs can reveal about any single "
        "patient's X-ray: epsilon is the bound (smaller is more private; at most a few units is considered "
        "strong) and delta the small probability that the bound fails. Each site has a total budget over all its "
        "trainings; a request that would exceed it is refused before training.",
        "Requested for this run: " + (f"epsilon {req.get('epsilon')} at delta {req.get('delta') or 'default'}, "
                                      f"{req.get('accountant')} accountant." if req else "no DP (NOT PRIVATE)."),
        *(["Gate: synthetic images too close to a training image are dropped and replaced (memorization check); "
           "the gate reads the training images, so its decisions are outside the DP accounting. "
           "Membership-inference AUC: how well an attacker, given the released images, tells the site's training "
           "X-rays from held-out ones; 0.5 is chance, higher means leakage."] if gated else []),
        "Ledger: each site's append-only, hash-chained, signed record of every training and release. The report "
        "verified each ledger in ledgers/ with the privacy audit's code (chain, hashes, Ed25519 signatures) and "
        "recomputed every epsilon from its mechanism, without trusting the figures above. The privacy officer's "
        "full audit: fedsynth audit report RUN_DIR."))
    out.append(table(["site", "epsilon (this training)", "delta", "spent / budget (reported)", "gate dropped",
                      "membership-inference AUC", "ledger"], rows, "wide", raw=True))
    cdp = [(r.get("round"), r["client_dp"]) for r in m.get("rounds") or [] if isinstance(r.get("client_dp"), dict)]
    if cdp:
        out.append("<h3>Client-level DP on the averaged update</h3>")
        out.append(explain("Noise added by the server to the average of the sites' updates protects each whole "
                           "site's contribution (not single images); epsilon composes over the rounds."))
        out.append(table(["after round", "epsilon", "delta", "noisy releases"],
                         [[str(r), fmt_g(d.get("epsilon"), 4), fmt_g(d.get("delta"), 2), str(d.get("releases", "–"))]
                          for r, d in cdp]))
    detail = audit_detail(data)
    if detail:
        out.append(detail)
    out.append("</section>")
    return "".join(out)


def _mechanism(e: dict) -> str:
    m = e.get("mechanism") or {}
    if not m:
        return "none (NOT PRIVATE)" if e.get("type") == "training" else "–"
    return (f"noise {fmt_g(m.get('noise_multiplier'), 4)}, sample rate {fmt_g(m.get('sample_rate'), 3)}, "
            f"{m.get('steps')} steps, clip {m.get('max_grad_norm')}, delta {fmt_g(m.get('delta'), 2)}, "
            f"{m.get('accountant')}" + ("" if m.get("secure_rng", True) else ", default RNG"))


def audit_detail(data: RunData) -> str:
    """Every ledger entry with the verification's result for it, collapsed."""
    parts = []
    for name, st in sorted(data.ledgers.items()):
        if not st.entries:
            continue
        rows = []
        for e in st.entries:
            c = st.checks.get(e.get("index"))
            what = str(e.get("type", "?")) + (f" ({e['kind']})" if e.get("kind") else "")
            if e.get("type") == "release":
                gate = e.get("gate") or {}
                unit = "images" if "n_images" in e else "examples"
                detail = (f"{e.get('n_images', e.get('n_examples', '?'))} {unit}; "
                          f"private {'yes' if e.get('private') else 'NO'}"
                          + (f"; gate dropped {gate.get('dropped')}" if gate else "")
                          + (f"; MIA AUC {fmt(e.get('membership_auc'))}" if e.get("membership_auc") is not None else "")
                          + (f"; spent {fmt_g(dig(e, 'spent', 'epsilon'), 4)}" if e.get("spent") else ""))
            else:
                detail = _mechanism(e)
            if c is None:
                check = "not checked" if st.verified is None else "–"
            else:
                eps = (f"epsilon {fmt_g(c.stored_epsilon, 4)} stored, {fmt_g(c.recomputed_epsilon, 4)} recomputed; "
                       if c.recomputed_epsilon is not None else "")
                check = eps + ("ok" if c.ok else "FAILED: " + "; ".join(c.problems))
            rows.append([str(e.get("index", "?")), what, str(e.get("run_id", "")), str(e.get("time", "")), detail,
                         check])
        parts.append(f"<h4>{esc(name)}: {len(rows)} entries</h4>")
        parts.append(table(["#", "entry", "run", "time", "what", "verification"], rows, "audit wide"))
    if not parts:
        return ""
    return ("<details><summary>Every ledger entry and its check, per site</summary>" + "".join(parts)
            + "</details>")


def section_rounds(data: RunData) -> str:
    rounds = data.metrics.get("rounds")
    if data.mode not in ("federated", "fedavg-classifier") and not rounds:
        return ""
    rows = []
    for r in rounds or []:
        cdp = r.get("client_dp") or {}
        rows.append([str(r.get("round", "?")), ", ".join(r.get("sites") or []) or "–", fmt_seconds(r.get("seconds")),
                     r.get("skipped") or "", fmt_g(cdp.get("epsilon"), 4) if cdp else "–"])
    failures = [f for f in data.metrics.get("failures") or [] if str(f.get("stage", "")).startswith("round")]
    out = ["<section id='rounds'><h2>Federated rounds</h2>",
           explain("Each round the server sent the current model to the sites, each trained it on its own images "
                   "and sent back its update; the server averaged the updates (FedAvg)"
                   + (", under secure aggregation: it only ever saw their average." if any(
                       r.get("secure_aggregation") for r in rounds or []) else "."))]
    if data.metrics.get("resumed_from"):
        out.append(f"<p class='note'>This run was resumed after round {esc(data.metrics['resumed_from'])}.</p>")
    out.append(table(["round", "sites taking part", "time", "note", "client-level epsilon"], rows) if rows
               else "<p class='note'>No round completed.</p>")
    if failures:
        out.append(table(["site", "stage", "reason"], [[f.get("site", "?"), f.get("stage", "?"), f.get("reason", "")]
                                                       for f in failures]))
    out.append("</section>")
    return "".join(out)


def _png_files(data: RunData) -> tuple[list[Path], list[Path]]:
    server = sorted((data.path / "grids").glob("*.png")) if (data.path / "grids").is_dir() else []
    sites = sorted((data.path / "sites").glob("*/real_vs_synthetic_*.png")) if (data.path / "sites").is_dir() else []
    return server, sites if data.include_real else []


def section_grids(data: RunData) -> str:
    server, sites = _png_files(data)
    out = ["<section id='grids'><h2>Images</h2>"]
    if not data.include_real:
        out.append("<p class='note'>Built without the sites' real-vs-synthetic grids (--no-real-images): this "
                   "page holds no real image.</p>")
    if not server and not sites:
        out.append("<p class='note'>No image grids in this run (no synthetic images, e.g. a baseline mode).</p>")
    if server:
        out.append("<h3>Synthetic images the classifier was trained on, per class</h3>")
        out.append(explain(("Sampled by the server from the global generator after federated averaging."
                            if data.mode == "federated" else "As each site released them.")
                           + " Each row is one class (normal, pneumonia)."))
        out.append("<div class='grids'>" + "".join(_figure(p) for p in server) + "</div>")
    if sites:
        out.append("<h3>Real against synthetic, at each site</h3>")
        out.append(explain("Real X-rays next to synthetic ones of the same class, drawn by each site. In this "
                           "simulation these grids are in the run directory; in a deployment they stay at each "
                           "hospital, because they contain real pixels, and never reach the server."))
        out.append("<div class='grids'>" + "".join(_figure(p, f"{p.parent.name}: ") for p in sites) + "</div>")
    out.append("</section>")
    return "".join(out)


def _figure(path: Path, prefix: str = "") -> str:
    try:
        raw = path.read_bytes()
        if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG file")
    except (OSError, ValueError) as err:
        log.warning("report: image %s skipped: %s", path, err)
        return f"<figure><p class='note'>{esc(path.name)}: could not be read ({esc(err)})</p></figure>"
    caption = prefix + path.stem.replace("_", " ")
    return f"<figure>{img(raw, caption, 'grid')}<figcaption>{esc(caption)}</figcaption></figure>"


def section_footer(data: RunData) -> str:
    return ("<footer>" + esc(f"Built {time.strftime('%Y-%m-%d %H:%M:%S %z')} from the files in "
                             f"{data.path.name}/ (config.yaml, metrics.json, histograms.json, grids/, sites/, "
                             "ledgers/). Rebuild with `fedsynth report RUN_DIR`; compare runs with "
                             "`fedsynth compare RUN_DIR...`.") + "</footer>")


SECTIONS: list[tuple[str, Callable[[RunData], str]]] = [
    ("header", section_header),
    ("at a glance", section_glance),
    ("configuration", section_config),
    ("sites", section_sites),
    ("pooled results", section_pooled),
    ("curves", section_curves),
    ("utility", section_utility),
    ("fidelity", section_fidelity),
    ("privacy", section_privacy),
    ("rounds", section_rounds),
    ("images", section_grids),
    ("footer", section_footer),
]

CSS = """
:root{--ink:#1d2330;--muted:#5b6472;--line:#d5dae1;--head:#eef1f5;--accent:#1f4e9c}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);
 max-width:1180px;margin:0 auto;padding:1.2em 1.5em 3em;background:#fff}
h1{font-size:1.7em;margin:.2em 0 .4em}h2{font-size:1.3em;margin:1.8em 0 .4em;padding-bottom:.2em;
 border-bottom:2px solid var(--accent);color:var(--accent)}h3{font-size:1.08em;margin:1.2em 0 .3em}
h4{margin:1em 0 .2em;font-size:1em}
.facts{display:flex;flex-wrap:wrap;gap:.3em 1.8em;margin:0 0 .6em}.facts div{display:flex;gap:.4em}
.facts dt{color:var(--muted)}.facts dd{margin:0;font-weight:600}
.mode{margin:.2em 0 .8em;color:var(--ink)}
.banner{padding:.55em .9em;margin:.35em 0;border-radius:6px;font-size:1.02em;border-left:8px solid rgba(0,0,0,.25)}
.banner strong{letter-spacing:.04em;margin-right:.5em}
.banner.phantom{background:#fff1d6;color:#6b3a00;border-left-color:#e08a00}
.banner.danger{background:#b3261e;color:#fff}
.banner.dropped{background:#fde7e4;color:#8c1d18;border-left-color:#d93025}
.banner.central{background:#ede4f7;color:#4a2477;border-left-color:#7b3fbf}
.note{background:#f6f7f9;border:1px dashed var(--line);padding:.4em .7em;color:var(--muted)}
.explain{color:var(--muted);margin:.3em 0;max-width:70em}
.cards{display:flex;flex-wrap:wrap;gap:.7em;margin:.5em 0}
.card{flex:1 1 180px;border:1px solid var(--line);border-radius:8px;padding:.55em .8em;background:#fafbfc}
.card .k{color:var(--muted);font-size:.85em}.card .v{font-size:1.15em;font-weight:700;margin:.15em 0}
.card .s{color:var(--muted);font-size:.8em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.88em}
th,td{border:1px solid var(--line);padding:.3em .55em;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
table.wide{width:100%}table.wide td:first-child{white-space:nowrap}
table.kv td:first-child{white-space:nowrap;font-weight:600;background:#fafbfc}
table.audit{font-size:.8em}table.confusion td:first-child{font-weight:600}
.ok{color:#1b6e2a;font-weight:700}.bad{color:#b3261e;font-weight:700}.warn{color:#a05a00;font-weight:700}
.muted{color:var(--muted)}.reason{font-size:.85em;color:var(--muted);font-weight:400;max-width:28em}
.reason.bad{color:#b3261e}
img.plot{max-width:100%;border:1px solid var(--line);border-radius:6px}
.grids{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:0 1 560px;max-width:100%}
img.grid{width:100%;border:1px solid var(--line)}figcaption{font-size:.8em;color:var(--muted)}
details{margin:.5em 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f7f9;padding:.7em;overflow:auto;font-size:.8em;max-height:30em}
footer{margin-top:2.5em;color:var(--muted);font-size:.8em;border-top:1px solid var(--line);padding-top:.6em}
@media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def render(data: RunData) -> str:
    parts = []
    for name, build in SECTIONS:
        try:
            parts.append(build(data))
        except Exception as err:  # noqa: BLE001 - a report bug must never fail a finished run
            log.warning("report: the %s section could not be built: %s: %s", name, type(err).__name__, err,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            parts.append(f"<section><h2>{esc(name.capitalize())}</h2><p class='note'>This part of the report could "
                         f"not be built ({esc(type(err).__name__)}: {esc(err)}).</p></section>")
    run_id = data.metrics.get("run_id") or data.path.name
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>fedsynth report: {esc(run_id)}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(run_dir: str | Path, *, include_real: bool = True) -> Path:
    """Build ``RUN_DIR/report.html`` from the run directory's files; return its path.
    ``include_real=False`` leaves out the sites' real-vs-synthetic grids (a page to share).

    Raises :class:`ReportError` only when ``run_dir`` is not a finished run; a problem in
    any optional part (fidelity, utility, curves, images, ledgers, config) is logged and
    shown as a note in that part of the page."""
    data = load_run(run_dir, include_real=include_real)
    page = render(data)
    out = data.path / REPORT_FILE
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    log.debug("report: %s", out)
    return out
