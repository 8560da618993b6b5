"""The page shell: the ``<html>`` around a page's body, the same on every page fedsynth makes."""

from __future__ import annotations

from fedsynth.presentation.markup import esc
from fedsynth.presentation.style import STYLESHEET


def page_shell(title: str, body: str, *, stylesheet_url: str | None = None, script_url: str | None = None) -> str:
    """A whole HTML page around ``body`` (HTML already).

    Without ``stylesheet_url``: a self-contained document (class ``doc``), the stylesheet inline
    and no script, so it can be mailed, archived or opened offline. With it: a page of the web
    app (class ``app``), which links the stylesheet (and ``script_url``) because the app's
    Content-Security-Policy allows no inline style or script."""
    if stylesheet_url is None:
        kind, head = "doc", f"<style>{STYLESHEET}</style>"
    else:
        kind, head = "app", f"<link rel='stylesheet' href='{esc(stylesheet_url)}'>"
        if script_url is not None:
            head += f"<script src='{esc(script_url)}' defer></script>"
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title>{head}</head><body class='{kind}'>\n{body}\n</body></html>\n")
