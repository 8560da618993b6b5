"""The report's first sections: warnings, the header, at a glance, the configuration, the
sites and the pooled results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from fedsynth.evaluation.report.run_data import RunData, dig
from fedsynth.evaluation.report.wording import EXPLAIN, MODES
from fedsynth.metrics_schema import Figures, SiteRecord
from fedsynth.presentation import as_number, esc, explain, facts, fmt, fmt_bytes, fmt_ci, fmt_seconds, table


@dataclass
class Banner:
    tag: str
    text: str
    kind: str  # css class


def banners(data: RunData) -> list[Banner]:
    m = data.metrics
    out: list[Banner] = []
    for w in m.warnings:
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
    if m.data.phantom and "PHANTOM DATA" not in tags:
        out.insert(0, Banner("PHANTOM DATA", "these results come from procedurally generated phantoms, not "
                                             "X-rays.", "phantom"))
    if m.private is False and "NOT PRIVATE" not in tags:
        out.append(Banner("NOT PRIVATE", "no differential privacy guarantee covers every site's data in this "
                                         "run.", "danger"))
    failed = m.failed_sites()
    if failed and "SITES DROPPED" not in tags:
        out.append(Banner("SITES DROPPED", "sites dropped or failed: " + ", ".join(failed), "dropped"))
    if data.mode == "centralized-real" and "CENTRALIZED" not in tags:
        out.append(Banner("CENTRALIZED", "real images were pooled in one place (simulation-only upper bound).",
                          "central"))
    if not m.data.phantom and data.image_files()[1]:
        out.append(Banner("CONTAINS REAL IMAGES", "the Images section embeds real X-rays from the sites' "
                          "real-vs-synthetic grids (a simulation keeps them in the run directory). Share this page "
                          "only with people allowed to see the data, or rebuild it with: fedsynth report RUN_DIR "
                          "--no-real-images.", "central"))
    bad = sorted(s for s, st in data.ledgers.items() if st.verified is False)
    if bad:
        out.append(Banner("LEDGER VERIFICATION FAILED", "the privacy ledger of " + ", ".join(bad) + " failed "
                          "verification: its privacy figures cannot be trusted (see Privacy).", "danger"))
    return out


def section_header(data: RunData) -> str:
    m = data.metrics
    created = m.created
    if "T" in created:
        created = created.replace("T", " ")
        if len(created) > 19 and created[19] in "+-":
            created = created[:19] + " " + created[19:]
    source = m.data.source or dig(data.config, "data", "source") or "?"
    run_facts = [
        ("Run", m.run_id or data.path.name),
        ("Mode", data.mode),
        ("Data", f"{source}" + (" (phantoms: not medical images)" if m.data.phantom else "")
         + (f", {m.data.resolution} px" if m.data.resolution else "")),
        ("Date", created or "–"),
        ("Wall time", fmt_seconds(m.timings.total_s)),
        ("Software", f"fedsynth {m.fedsynth_version}"),
    ]
    out = [f"<header><h1>fedsynth run report</h1>{facts(run_facts)}"]
    out.append(f"<p class='mode'>{esc(MODES.get(data.mode, data.mode))}</p>")
    for b in banners(data):
        out.append(f"<div class='banner {b.kind}'><strong>{esc(b.tag)}</strong> {esc(b.text)}</div>")
    for p in data.problems:
        out.append(f"<div class='note'>Report note: {esc(p)}</div>")
    out.append("</header>")
    return "".join(out)


def section_glance(data: RunData) -> str:
    m = data.metrics
    pooled = m.pooled
    eps = m.spent_epsilons()
    if m.private:
        privacy = f"DP, max ε spent {max(eps):.3g}" if eps else "DP"
    elif data.mode == "centralized-real":
        privacy = "none (real images pooled)"
    else:
        privacy = "NOT PRIVATE"
    level = f"{data.level:.0%} CI"

    def ci(interval: Any) -> str:
        lo, hi = (list(interval or []) + [None, None])[:2]
        return f"{level} {fmt(lo)} to {fmt(hi)}" if as_number(lo) is not None and as_number(hi) is not None else ""

    n = pooled.n if pooled else None
    cards = [
        ("Pooled AUROC", fmt(pooled.auroc if pooled else None), (ci(pooled.auroc_ci) if pooled else "")
         or "no interval"),
        ("Pooled AUPR", fmt(pooled.aupr if pooled else None),
         (ci(pooled.aupr_ci) if pooled else "") + (f"; chance {pooled.n_positive / n:.2f}" if n else "")),
        ("Sensitivity / specificity", f"{fmt(pooled.sensitivity if pooled else None, 2)} / "
                                      f"{fmt(pooled.specificity if pooled else None, 2)}",
         f"at threshold {fmt(pooled.threshold)}" if pooled and as_number(pooled.threshold) is not None else ""),
        ("Sites", f"{len(m.ok_sites())} of {len(m.sites)} completed", f"tested on {n} real X-rays" if n
         else "no evaluation"),
        ("Privacy", privacy, "DP-SGD at every site's generator" if m.private else
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
    # without DP no budget is spent; a budget figure would suggest a protection the run did not give
    rows.append(["Privacy budgets", text if priv else "– (no DP in this run)"])
    if mode == "substitution":
        gate = c.get("gate") or {}
        rows.append(["Release gate", (f"on: drops synthetic images closer to a training image than the "
                                      f"{gate.get('quantile')} quantile of real-to-real distances"
                                      if gate.get("enabled") else "off")
                     + ("; membership-inference audit on" if gate.get("membership_audit") else "")])
        rows.append(["Release", f"{dig(c, 'release', 'n_per_class')} synthetic images per class and site"])
        mk = d.get("markers") or {}
        if mk.get("training", "keep") != "keep" or mk.get("release", "off") != "off":
            rows.append(["Burned-in markers", f"training images: {mk.get('training')}; release check: "
                                              f"{mk.get('release')}" + _marker_counts(data)])
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


def _site_train(data: RunData, name: str, site: SiteRecord) -> str:
    for info, real in ((site.release or {}, False), (site.real_data or {}, True)):
        if isinstance(info.get("train_counts"), dict):
            return _counts(info["train_counts"])
        if real and info:
            return _counts({k: v for k, v in info.items() if k != "n_train"})
    st = data.ledgers.get(name)
    if st is not None and st.n_train is not None:
        return str(st.n_train)
    trtr = data.metrics.utility.trtr
    n = trtr.sites[name].n_train if trtr and name in trtr.sites else None
    return str(n) if n is not None else "–"


def _site_test(site: SiteRecord) -> str:
    rel = site.release or {}
    if isinstance(rel.get("test_counts"), dict):
        return _counts(rel["test_counts"])
    ev = site.evaluation
    if ev is not None:
        return f"{ev.n} (normal {ev.n_negative}, pneumonia {ev.n_positive})"
    return "–"


def section_sites(data: RunData) -> str:
    rows = []
    for name, site in data.sites.items():
        rel, tr, ev = site.release or {}, site.training or {}, site.evaluation
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
            released, gen = ("real images (pooled centrally)" if site.real_data else "–"), "–"
        reasons = "; ".join(f"{f.stage}: {f.reason}" for f in site.failures)
        status_html = ("<span class='ok'>ok</span>" if site.status == "ok"
                       else f"<span class='bad'>{esc(site.status)}</span>")
        if reasons:
            status_html += f"<div class='reason'>{esc(reasons)}</div>"
        rows.append([esc(name), status_html, esc(_site_train(data, name, site)), esc(_site_test(site)),
                     esc(released), esc(gen),
                     esc(fmt_ci(ev.auroc, ev.auroc_ci)) if ev else "–",
                     esc(fmt_ci(ev.aupr, ev.aupr_ci)) if ev else "–",
                     esc(f"{fmt(ev.sensitivity, 2)} / {fmt(ev.specificity, 2)}") if ev else "–",
                     esc(fmt_bytes(site.bytes_sent))])
    headers = ["site", "status", "train images", "test images (real)", "sent to the server", "generator",
               "AUROC [CI]", "AUPR [CI]", "sens / spec", "bytes sent"]
    return ("<section id='sites'><h2>Sites</h2>"
            + explain("One row per hospital. Training images never leave it; the test images are its own real "
                      "X-rays, on which it evaluates the server's classifier. 'Bytes sent' is everything the site "
                      "put on the wire (releases or model updates, and evaluation replies). A site that failed or "
                      "was dropped shows why; the run went on without it.")
            + table(headers, rows, "wide", raw=True) + "</section>")


def metrics_row(label: str, d: Figures | None) -> list[str]:
    if d is None:
        return [label, "–", "n/a", "n/a", "n/a", "n/a"]
    return [label, str(d.n), fmt_ci(d.auroc, d.auroc_ci), fmt_ci(d.aupr, d.aupr_ci),
            fmt_ci(d.sensitivity, d.sensitivity_ci, 2), fmt_ci(d.specificity, d.specificity_ci, 2)]


def section_pooled(data: RunData) -> str:
    p = data.metrics.pooled
    if not p:
        return ("<section id='pooled'><h2>Pooled results</h2><p class='note'>No site returned an evaluation: "
                "there are no pooled results.</p></section>")
    rows = [metrics_row("all sites' real test X-rays", p)]
    conf = table(["", "classifier: pneumonia", "classifier: normal"], [
        ["truly pneumonia", f"{p.tp} (true positives)", f"{p.fn} (missed)"],
        ["truly normal", f"{p.fp} (false alarms)", f"{p.tn} (true negatives)"],
    ], "confusion")
    clf = data.metrics.classifier
    detail = (f"Classifier {clf.get('arch', '?')}, trained on {clf.get('trained_on', '?')} "
              f"({clf.get('n_train', '?')} images, {clf.get('n_val', '?')} held out for validation); decision "
              f"threshold {fmt(p.threshold)} ({clf.get('threshold_rule', '?')}).")
    note = [p.note] if p.note else []
    return ("<section id='pooled'><h2>Pooled results</h2>"
            + explain("All sites' real test X-rays taken together, computed from the class-wise score histograms "
                      "the sites returned (no per-image score leaves a site).")
            + table(["test set", "n", "AUROC [CI]", "AUPR [CI]", "sensitivity [CI]", "specificity [CI]"], rows)
            + conf
            + explain(EXPLAIN["auroc"], EXPLAIN["aupr"], EXPLAIN["sens"], EXPLAIN["ci"].format(level=data.level),
                      detail, *note)
            + "</section>")


def _marker_counts(data) -> str:
    """Each site's marker figures from its release statistics (counts only), as one clause."""
    parts = []
    for name, site in sorted(data.sites.items()):
        mk = (getattr(site, "release", None) or {}).get("markers") or {}
        tr, rel = mk.get("training") or {}, mk.get("release") or {}
        bits = []
        if tr:
            bits.append(f"{tr.get('images_touched')} of {tr.get('images')} training images touched")
        if rel:
            ci = rel.get("share_ci") or [None, None]
            bits.append(f"{fmt(rel.get('share'))} of {rel.get('checked')} released images flagged "
                        f"[{fmt(ci[0])}, {fmt(ci[1])}], {rel.get('dropped')} dropped")
        if bits:
            parts.append(f"{name}: " + ", ".join(bits))
    return (" (" + "; ".join(parts) + ")") if parts else ""
