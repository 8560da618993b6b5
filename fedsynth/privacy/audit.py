"""The privacy officer's report: every site's budget, trainings and releases, verified.

Built only from ledgers and public keys (never from what the software printed), after
:func:`~fedsynth.privacy.ledger.verify_ledger` has checked them and recomputed every
epsilon. Written as Markdown and as self-contained HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import (
    DP_STATISTIC,
    DP_TRAINING,
    RELEASE,
    TRAINING,
    Verification,
    read_ledger,
    verify_ledger,
)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def site_sections(ledger_path: Path, public_key_path: Path) -> list[Section]:
    verification: Verification = verify_ledger(ledger_path, load_public_key(public_key_path))
    entries = read_ledger(ledger_path).entries
    site = entries[0].get("site", ledger_path.stem) if entries else ledger_path.stem
    status = "VERIFIED" if verification.ok else "FAILED VERIFICATION"
    head = Section(f"Site {site}: ledger {status}")
    head.paragraphs.append(
        f"Ledger `{ledger_path}`, public key `{public_key_path}`: {len(entries)} entries; chain, hashes and "
        "signatures checked, and every epsilon recomputed from its mechanism by the accountant."
    )
    for problem in verification.failures():
        head.paragraphs.append(f"PROBLEM: {problem}")
    releases = [e for e in entries if e.get("type") == RELEASE]
    if releases:
        last = releases[-1]
        budget, spent = last.get("budget") or {}, last.get("spent") or {}
        recomputed = next((c.recomputed_epsilon for c in verification.checks if c.index == last.get("index")), None)
        if budget:
            left = float(budget["epsilon"]) - float(recomputed if recomputed is not None else spent.get("epsilon", 0))
            head.paragraphs.append(
                f"Budget: epsilon {_fmt(budget['epsilon'])} at delta {_fmt(budget['delta'])}. Spent (composed "
                f"over every DP entry, {spent.get('accountant', 'rdp')} accountant, recomputed): "
                f"{_fmt(recomputed)}. Left: {_fmt(left)}."
            )
    if any(not (e.get("mechanism") or {}).get("secure_rng", True) for e in entries if e.get("mechanism")):
        head.paragraphs.append(
            "Noise was drawn from PyTorch's default generator, not a cryptographically secure one (torchcsprng was "
            "not installed): the accounting holds for the mechanism, but a floating-point or RNG attack on the "
            "noise is not ruled out."
        )
    if any(e.get("type") == TRAINING for e in entries):
        head.paragraphs.append(
            "NOT PRIVATE: this ledger records training WITHOUT differential privacy; releases from it carry no "
            "DP guarantee."
        )
    trainings = Section(
        f"{site}: trainings and DP statistics",
        headers=["#", "time", "run", "DP", "epsilon (stored / recomputed)", "delta", "noise", "sample rate",
                 "steps", "clip", "accountant", "secure RNG", "data fingerprint"],
    )
    checks = {c.index: c for c in verification.checks}
    for e in entries:
        if e.get("type") not in (DP_TRAINING, TRAINING, DP_STATISTIC):
            continue
        m = e.get("mechanism") or {}
        c = checks.get(e.get("index"))
        kind = {DP_TRAINING: "yes", TRAINING: "NO",
                DP_STATISTIC: f"yes (statistic: {(e.get('details') or {}).get('statistic', '?')})"}[e["type"]]
        trainings.rows.append([
            _fmt(e.get("index")), _fmt(e.get("time")), _fmt(e.get("run_id")),
            kind,
            f"{_fmt(e.get('epsilon'))} / {_fmt(c.recomputed_epsilon if c else None)}" if m else "infinite",
            _fmt(m.get("delta")), _fmt(m.get("noise_multiplier")), _fmt(m.get("sample_rate")), _fmt(m.get("steps")),
            _fmt(m.get("max_grad_norm")), _fmt(m.get("accountant")), _fmt(m.get("secure_rng")),
            str(e.get("dataset_fingerprint", ""))[:12],
        ])
    rel = Section(
        f"{site}: releases",
        headers=["#", "time", "run", "private", "images", "per class", "gate dropped", "shortfall",
                 "membership-inference AUC", "content hash"],
    )
    for e in releases:
        gate = e.get("gate") or {}
        rel.rows.append([
            _fmt(e.get("index")), _fmt(e.get("time")), _fmt(e.get("run_id")), "yes" if e.get("private") else "NO",
            _fmt(e.get("n_images")), ", ".join(f"{k} {v}" for k, v in (e.get("per_class") or {}).items()),
            _fmt(gate.get("dropped")) if gate.get("enabled", True) else "gate off", _fmt(gate.get("shortfall")),
            _fmt(e.get("membership_auc"), 3), str(e.get("content_hash", ""))[:12],
        ])
    rel.paragraphs.append(
        "Gate: synthetic images closer to a training image than the chosen quantile of real-to-real "
        "nearest-neighbour distances are dropped and replaced. The gate reads the training images, so its "
        "decisions are outside the DP accounting. Membership-inference AUC: a distance-to-closest-release "
        "attack telling training images from held-out ones; 0.5 is chance."
    )
    return [head, trainings, rel]


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [p + "\n" for p in s.paragraphs]
        if s.headers:
            out.append("| " + " | ".join(s.headers) + " |")
            out.append("|" + "---|" * len(s.headers))
            out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in s.rows]
            if not s.rows:
                out.append("| " + " | ".join(["-"] * len(s.headers)) + " |")
            out.append("")
    return "\n".join(out)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f0f0f0}"
    ".bad{color:#b00020;font-weight:600}"
)


def render_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        for p in s.paragraphs:
            cls = " class='bad'" if p.startswith(("PROBLEM", "NOT PRIVATE")) else ""
            parts.append(f"<p{cls}>{esc(p)}</p>")
        if s.headers:
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in s.headers) + "</tr>")
            for row in s.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(pairs: list[tuple[Path, Path]], out_dir: Path, title: str = "fedsynth privacy audit") -> list[Path]:
    sections: list[Section] = []
    for ledger, key in pairs:
        sections += site_sections(ledger, key)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "privacy_audit.md", out_dir / "privacy_audit.html"
    md.write_text(render_markdown(title, sections))
    page.write_text(render_html(title, sections))
    return [md, page]
