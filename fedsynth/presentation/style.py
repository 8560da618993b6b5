"""fedsynth's one stylesheet, for every HTML page it writes or serves.

Two kinds of page share it (the shell, :func:`fedsynth.presentation.page.page_shell`, sets the
body's class): ``doc``, a self-contained document (the run report, an external evaluation, a
stress test, a privacy audit) that carries the stylesheet inline, and ``app``, a page of the
web app, which serves it at ``/static/fedsynth.css`` because its Content-Security-Policy allows
no inline style. The stylesheet names no ``url()`` and no ``@import``: a document stays
readable offline and the app loads nothing from elsewhere.
"""

STYLESHEET = """
:root{--ink:#1d2330;--muted:#5b6472;--line:#d5dae1;--head:#eef1f5;--accent:#1f4e9c;--bar:#1f3a5f;--ok:#1b6e2a;
 --bad:#b3261e;--amber:#a05a00}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);margin:0}
table{border-collapse:collapse}th,td{text-align:left}
.ok{color:var(--ok);font-weight:700}.bad{color:var(--bad);font-weight:700}.warn{color:var(--amber);font-weight:700}
.muted,small{color:var(--muted)}
figure{margin:0}figcaption{font-size:.8em;color:var(--muted)}
code{background:#eef0f3;padding:0 .25rem;border-radius:3px}

/* documents: a report to read, print or mail */
.doc,.doc *{box-sizing:border-box}
body.doc{max-width:1180px;margin:0 auto;padding:1.2em 1.5em 3em;background:#fff}
.doc h1{font-size:1.7em;margin:.2em 0 .4em}.doc h2{font-size:1.3em;margin:1.8em 0 .4em;padding-bottom:.2em;
 border-bottom:2px solid var(--accent);color:var(--accent)}.doc h3{font-size:1.08em;margin:1.2em 0 .3em}
.doc h4{margin:1em 0 .2em;font-size:1em}
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
.cards .card{flex:1 1 180px;border:1px solid var(--line);border-radius:8px;padding:.55em .8em;margin:0;
 background:#fafbfc}
.card .k{color:var(--muted);font-size:.85em}.card .v{font-size:1.15em;font-weight:700;margin:.15em 0}
.card .s{color:var(--muted);font-size:.8em}
.doc table{margin:.6em 0 1em;font-size:.88em}
.doc th,.doc td{border:1px solid var(--line);padding:.3em .55em;vertical-align:top}
.doc th{background:var(--head);font-weight:600}
table.wide{width:100%}table.wide td:first-child{white-space:nowrap}
table.kv td:first-child{white-space:nowrap;font-weight:600;background:#fafbfc}
table.audit{font-size:.8em}table.confusion td:first-child{font-weight:600}
.reason{font-size:.85em;color:var(--muted);font-weight:400;max-width:28em}.reason.bad{color:var(--bad)}
img.plot{max-width:100%;border:1px solid var(--line);border-radius:6px}
.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{flex:0 1 560px;max-width:100%}
img.grid{width:100%;border:1px solid var(--line)}
details{margin:.5em 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f6f7f9;padding:.7em;overflow:auto;font-size:.8em;max-height:30em}
footer{margin-top:2.5em;color:var(--muted);font-size:.8em;border-top:1px solid var(--line);padding-top:.6em}
@media print{.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}

/* the web app: a bar across the top, panels on grey */
body.app{background:#f5f6f8}
.appbar{background:var(--bar);color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.4rem;align-items:baseline}
.appbar b{font-size:1.1rem}.appbar a{color:#dbe7f5;text-decoration:none}.appbar a:hover{text-decoration:underline}
.appbar .run{margin-left:auto;color:#b9c8da}
.app main{max-width:980px;margin:1rem auto;padding:0 1.2rem}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:1rem 1.2rem;margin:0 0 1rem}
.caution,.error{border-radius:6px;padding:.6rem 1rem;margin:0 0 1rem}
.caution{background:#fff4d6;border:1px solid #e0b84c}.error{background:#fde8e8;border:1px solid #d9534f}
.big{font-size:2.2rem;font-weight:700}.pos{color:var(--bad)}.neg{color:#1b6e3a}
.row{display:flex;gap:1.2rem;flex-wrap:wrap}.app figcaption{font-size:.85rem}
img.view{width:320px;height:320px;border:1px solid #ccc;background:#000}
img.study{width:448px;height:448px;border:1px solid #ccc;background:#000}
img.thumb{width:96px;height:96px;border:1px solid #ccc}figure.mistaken{padding:.5rem;width:150px}
.app th,.app td{border-bottom:1px solid #e3e6ea;padding:.3rem .7rem}
button{font-size:1rem;padding:.45rem 1.1rem;border-radius:5px;border:1px solid var(--bar);background:var(--bar);
 color:#fff;cursor:pointer}button.alt{background:#fff;color:var(--bar)}
input[type=text]{font-size:1rem;padding:.35rem}
textarea{font:inherit;width:100%;max-width:30rem;box-sizing:border-box}.comment{white-space:pre-wrap}
fieldset{border:none;padding:0;margin:0 0 .8rem}legend{font-weight:700;padding:0}
"""
