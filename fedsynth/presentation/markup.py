"""HTML and Markdown from plain values: escaping, tables, explanations, facts, inline images.

Every value is escaped on its way into HTML unless the caller says it is HTML already.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

PNG_DATA_URI = "data:image/png;base64,"  # a PNG inside the page: nothing is fetched from elsewhere


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already)."""
    cell = (lambda c: c) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    opening = f"<table class='{esc(cls)}'>" if cls else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def explain(*paragraphs: str) -> str:
    """Plain-language paragraphs beside a figure or table."""
    return "".join(f"<p class='explain'>{esc(p)}</p>" for p in paragraphs)


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A line of labelled facts (run, date, data, ...) under a page's title."""
    return "<dl class='facts'>" + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in pairs) + "</dl>"


def png_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_data_uri(data: bytes) -> str:
    return PNG_DATA_URI + png_base64(data)


def img(data: bytes, alt: str, cls: str = "") -> str:
    """A PNG inside the page (a data URI)."""
    return f"<img class='{esc(cls)}' alt='{esc(alt)}' src='{png_data_uri(data)}'>"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table; a ``|`` inside a cell becomes ``/`` (it would end the cell)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
