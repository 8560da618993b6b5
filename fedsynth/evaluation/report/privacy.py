"""The report's privacy sections: each site's DP figures beside its verified ledger, every
ledger entry with its check, and the federated rounds."""

from __future__ import annotations

from fedsynth.evaluation.report.run_data import RunData, dig
from fedsynth.metrics_schema import SitePrivacy
from fedsynth.presentation import as_number, esc, explain, fmt, fmt_g, fmt_seconds, table
from fedsynth.privacy.audit import LedgerStatus


def section_privacy(data: RunData) -> str:
    m = data.metrics
    names = sorted(set(m.privacy.sites) | set(data.ledgers) | set(data.sites))
    out = ["<section id='privacy'><h2>Privacy</h2>", _privacy_explained(data)]
    out.append(table(["site", "epsilon (this training)", "delta", "spent / budget (reported)", "gate dropped",
                      "membership-inference AUC", "ledger"], [_site_row(data, name) for name in names], "wide",
                     raw=True))
    cdp = [(r.get("round"), r["client_dp"]) for r in m.rounds or [] if isinstance(r.get("client_dp"), dict)]
    if cdp:
        out.append("<h3>Client-level DP on the averaged update</h3>")
        out.append(explain("Noise added by the server to the average of the sites' updates protects each whole "
                           "site's contribution (not single images); epsilon composes over the rounds."))
        out.append(table(["after round", "epsilon", "delta", "noisy releases"],
                         [[str(r), fmt_g(d.get("epsilon"), 4), fmt_g(d.get("delta"), 2), str(d.get("releases", "–"))]
                          for r, d in cdp]))
    out.append(audit_detail(data))
    out.append("</section>")
    return "".join(out)


def _privacy_explained(data: RunData) -> str:
    req = data.metrics.privacy.requested
    gated = any(p.gate for p in data.metrics.privacy.sites.values())
    return explain(
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
        "full audit: fedsynth audit report RUN_DIR.")


def _site_row(data: RunData, name: str) -> list[str]:
    """One site's row of the privacy table: what it reported beside what its ledger proves (HTML cells)."""
    m = data.metrics
    reported = name in m.privacy.sites
    p = m.privacy.sites.get(name) or SitePrivacy()
    st = data.ledgers.get(name)
    site = data.sites.get(name)
    ok = site is not None and site.status == "ok"
    trained_in_rounds = bool(site is not None and site.training)
    if data.mode == "centralized-real":
        eps_text = "none: real images pooled"
    elif not reported:
        eps_text = "?" if ok else "–"
    else:
        eps_text = "NOT PRIVATE" if p.epsilon is None else fmt_g(p.epsilon, 4)
    budget = p.budget or (st.budget if st else None) or {}
    spent_reported = as_number(p.spent_epsilon)
    if not m.privacy.requested and not spent_reported:
        spent = "– (no DP in this run)"  # a budget figure here would suggest a protection the run did not give
    elif budget:
        spent = (f"{fmt_g(spent_reported, 4)} / {fmt_g(budget.get('epsilon'), 4)} at delta "
                 f"{fmt_g(budget.get('delta'), 2)}")
    else:
        spent = fmt_g(spent_reported, 4)
    gate = p.gate or {}
    if gate:
        gate_text = (f"{gate.get('dropped', '?')} of {gate.get('requested', '?')}" if gate.get("enabled", True)
                     else "gate off") + (f", shortfall {gate['shortfall']}" if gate.get("shortfall") else "")
    else:
        gate_text = "n/a (model updates)" if trained_in_rounds else "–"
    if p.membership_auc is not None:
        mia = fmt(p.membership_auc)
    elif not p.model_dump(exclude_none=True):
        mia = "–"
    else:
        mia = "n/a" if trained_in_rounds or not gate else "not measured"
    return [esc(name), esc(eps_text), esc(fmt_g(p.delta, 2)), esc(spent), esc(gate_text), esc(mia),
            _ledger_cell(st, failed_early=not ok and not reported)]


def _ledger_cell(st: LedgerStatus | None, *, failed_early: bool) -> str:
    """The ledger's verification as the report's own check found it (HTML)."""
    if st is None:
        return "<span class='muted'>no ledger received</span>" + (
            "<div class='reason'>the site failed before sending anything to train on</div>" if failed_early else "")
    if st.verified is None:
        cell = f"<span class='warn'>UNVERIFIED</span><div class='reason'>{esc(st.note or '; '.join(st.problems))}</div>"
    elif st.verified:
        spent_text = (f"spent recomputed by the accountant: {fmt_g(st.spent_epsilon, 4)}"
                      if st.spent_epsilon else "no DP spending recorded")
        cell = f"<span class='ok'>VERIFIED</span><div class='reason'>{st.n_entries} entries; {spent_text}</div>"
    else:
        cell = ("<span class='bad'>FAILED</span><div class='reason'>"
                + esc("; ".join(st.problems[:3]) + (" ..." if len(st.problems) > 3 else "")) + "</div>")
    if st.non_private_trainings:
        cell += f"<div class='reason bad'>{st.non_private_trainings} training(s) WITHOUT DP in the ledger</div>"
    return cell


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
    rounds = data.metrics.rounds
    if data.mode not in ("federated", "fedavg-classifier") and not rounds:
        return ""
    rows = []
    for r in rounds or []:
        cdp = r.get("client_dp") or {}
        rows.append([str(r.get("round", "?")), ", ".join(r.get("sites") or []) or "–", fmt_seconds(r.get("seconds")),
                     r.get("skipped") or "", fmt_g(cdp.get("epsilon"), 4) if cdp else "–"])
    failures = [f for f in data.metrics.failures if f.stage.startswith("round")]
    out = ["<section id='rounds'><h2>Federated rounds</h2>",
           explain("Each round the server sent the current model to the sites, each trained it on its own images "
                   "and sent back its update; the server averaged the updates (FedAvg)"
                   + (", under secure aggregation: it only ever saw their average." if any(
                       r.get("secure_aggregation") for r in rounds or []) else "."))]
    if data.metrics.resumed_from:
        out.append(f"<p class='note'>This run was resumed after round {esc(data.metrics.resumed_from)}.</p>")
    out.append(table(["round", "sites taking part", "time", "note", "client-level epsilon"], rows) if rows
               else "<p class='note'>No round completed.</p>")
    if failures:
        out.append(table(["site", "stage", "reason"], [[f.site, f.stage, f.reason] for f in failures]))
    out.append("</section>")
    return "".join(out)
