"""How fedsynth shows things to people: one layer for every HTML page.

A ground-floor package (every layer may use it; it imports none): escaping, tables and the
other pieces of markup (:mod:`~.markup`), numbers as a reader sees them (:mod:`~.numbers`),
matplotlib figures as PNG (:mod:`~.figures`), the page shell (:mod:`~.page`) and the one
stylesheet (:mod:`~.style`). The run report, the external evaluation, the stress test, the
privacy audit and the web app build their pages from these.
"""

from fedsynth.presentation.figures import figure_png, pyplot
from fedsynth.presentation.markup import (
    PNG_DATA_URI,
    esc,
    explain,
    facts,
    img,
    markdown_table,
    png_base64,
    png_data_uri,
    table,
)
from fedsynth.presentation.numbers import MISSING, as_number, fmt, fmt_bytes, fmt_ci, fmt_g, fmt_seconds, pct
from fedsynth.presentation.page import page_shell
from fedsynth.presentation.style import STYLESHEET

__all__ = [
    "MISSING", "PNG_DATA_URI", "STYLESHEET", "as_number", "esc", "explain", "facts", "figure_png", "fmt", "fmt_bytes",
    "fmt_ci", "fmt_g", "fmt_seconds", "img", "markdown_table", "page_shell", "png_base64", "png_data_uri", "pct",
    "pyplot", "table",
]
