"""The privacy officer's report: every site's budget, trainings and releases, verified.

Built only from ledgers and public keys (never from what the software printed), after
:func:`~fedsynth.privacy.ledger.verify_ledger` has checked them and recomputed every
epsilon. Written as Markdown and as self-contained HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.presentation import esc, markdown_table, page_shell, table
from fedsynth.privacy.keys import load_public_key
from fedsynth.privacy.ledger import (
    DP_STATISTIC,
    DP_TRAINING,
    RELEASE,
    TRAINING,
    EntryCheck,
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


@dataclass
class LedgerStatus:
    """One ledger as the officer's tools and the run report see it, checked once here."""

    site: str
    ledger: Path
    public_key: Path | None
    verified: bool | None  # None: could not be checked (no public key)
    n_entries: int = 0
    problems: list[str] = field(default_factory=list)
    spent_epsilon: float | None = None  # at the last release: recomputed by the accountant (reported, unverified)
    budget: dict | None = None  # the last release's budget statement
    non_private_trainings: int = 0
    n_train: int | None = None  # training images, from the last training entry of ``run_id``
    note: str = ""
    entries: list[dict] = field(default_factory=list)
    checks: dict[int, EntryCheck] = field(default_factory=dict)  # entry index -> its check


def check_ledger(ledger_path: Path, public_key_path: Path | None, run_id: str | None = None,
                 site: str | None = None) -> LedgerStatus:
    """Read and verify a ledger (chain, hashes, signatures, every epsilon recomputed from its
    mechanism); a damaged file is a finding in ``problems``, never an exception."""
    status = LedgerStatus(site or ledger_path.stem, ledger_path, public_key_path, None)
    try:
        entries = read_ledger(ledger_path).entries
        status.entries, status.n_entries = entries, len(entries)
        if entries and site is None:
            status.site = str(entries[0].get("site", ledger_path.stem))
        status.non_private_trainings = sum(e.get("type") == TRAINING for e in entries)
        ours = [e for e in entries if e.get("type") in (TRAINING, DP_TRAINING) and e.get("run_id") == run_id]
        if ours:
            n_train = (ours[-1].get("details") or {}).get("n_train")
            status.n_train = n_train if isinstance(n_train, int) else None
        releases = [e for e in entries if e.get("type") == RELEASE]
        if releases:
            status.budget = releases[-1].get("budget")
        if public_key_path is None:
            status.note = "no public key: the ledger cannot be verified"
            spent = (releases[-1].get("spent") or {}).get("epsilon") if releases else None
            status.spent_epsilon = float(spent) if isinstance(spent, (int, float)) else None
            return status
        result: Verification = verify_ledger(ledger_path, load_public_key(public_key_path))
        status.verified = result.ok
        status.problems = result.failures()
        status.checks = {c.index: c for c in result.checks}
        if releases:
            last = releases[-1].get("index")
            status.spent_epsilon = next((c.recomputed_epsilon for c in result.checks if c.index == last), None)
    except Exception as err:  # noqa: BLE001 - a damaged file is a finding, not a crash
        status.verified = False if public_key_path is not None else None
        status.problems.append(f"could not be checked: {type(err).__name__}: {err}")
    return status


def read_key_registry(path: Path) -> dict[str, Path]:
    """A key registry (YAML or JSON: site name -> public key file, relative to the registry)."""
    import yaml

    from fedsynth.errors import DataError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(f"key registry {path} cannot be read: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DataError(f"key registry {path} must map site names to public key files")
    return {site: (path.parent / p) if not Path(p).is_absolute() else Path(p) for site, p in data.items()}


def site_sections(ledger_path: Path, public_key_path: Path, key_origin: str = "given") -> tuple[list[Section],
                                                                                                 LedgerStatus]:
    st = check_ledger(ledger_path, public_key_path)
    entries, site = st.entries, st.site
    status = "VERIFIED" if st.verified else "FAILED VERIFICATION"
    head = Section(f"Site {site}: ledger {status}")
    head.paragraphs.append(
        f"Ledger `{ledger_path}`, public key `{public_key_path}`: {len(entries)} entries; chain, hashes and "
        "signatures checked, and every epsilon recomputed from its mechanism by the accountant."
    )
    if key_origin == "beside the ledger":
        head.paragraphs.append("PROBLEM: KEY NOT INDEPENDENT: the public key was taken from beside the ledger, not "
                               "from a registry the officer holds; whoever can replace the ledger can replace that "
                               "key too. Verify again with --keys.")
    for problem in st.problems:
        head.paragraphs.append(f"PROBLEM: {problem}")
    releases = [e for e in entries if e.get("type") == RELEASE]
    if releases:
        last = releases[-1]
        budget, spent = last.get("budget") or {}, last.get("spent") or {}
        recomputed = st.spent_epsilon
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
    checks = st.checks
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
    return [head, trainings, rel], st


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [p + "\n" for p in s.paragraphs]
        if s.headers:
            out += markdown_table(s.headers, s.rows or [["-"] * len(s.headers)])
            out.append("")
    return "\n".join(out)


def _alarming(paragraph: str) -> bool:
    return paragraph.startswith(("PROBLEM", "NOT PRIVATE"))


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<h1>{esc(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        parts += [f"<p class='bad'>{esc(p)}</p>" if _alarming(p) else f"<p>{esc(p)}</p>" for p in s.paragraphs]
        if s.headers:
            parts.append(table(s.headers, s.rows))
    return page_shell(title, "\n".join(parts))


def write_report(pairs: list[tuple[Path, Path, str]], out_dir: Path,
                 title: str = "fedsynth privacy audit") -> tuple[list[Path], list[LedgerStatus]]:
    """The audit of every (ledger, public key, where the key came from); returns the files
    written and each ledger's status."""
    sections: list[Section] = []
    statuses: list[LedgerStatus] = []
    for ledger, key, origin in pairs:
        secs, st = site_sections(ledger, key, origin)
        sections += secs
        statuses.append(st)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "privacy_audit.md", out_dir / "privacy_audit.html"
    md.write_text(render_markdown(title, sections))
    page.write_text(render_html(title, sections))
    return [md, page], statuses
