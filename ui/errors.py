"""The pages' error boundary and safe text rendering.

``page_boundary()`` wraps a whole page run (app.py puts it around ``nav.run()``): any exception
that escapes a page becomes one ``st.error`` line — the exception's first line with server paths
reduced to file names, never a traceback — and the full traceback goes to the server log
(logger ``dmdlab.errors``). Streamlit's own control flow (rerun/stop) derives from
BaseException and passes through.

``md_escape(text)`` makes any value safe to show in a Markdown-rendering element (st.error,
st.caption, …): every Markdown / Streamlit-directive character is backslash-escaped, so a URL
parameter such as ``![x](http://…)`` or ``[Login](http://…)`` is shown as text, not as an image
or a link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import streamlit as st

log = logging.getLogger("dmdlab.errors")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=^&])")
_ABS_PATH = re.compile(r"(?<![\w.])(/(?:[\w.@+-]+/)+)([\w.@+-]*)")


_AUTOLINK = re.compile(r"(://|www\.|@)", re.IGNORECASE)


def md_escape(text) -> str:
    """``text`` with every Markdown/directive character escaped (shown literally); bare URLs,
    ``www.`` names and e-mail addresses get a zero-width space so GFM does not autolink them."""
    text = _AUTOLINK.sub(lambda m: m.group(1)[0] + "\u200b" + m.group(1)[1:], str(text))
    return _MD_SPECIAL.sub(r"\\\1", text)


def short_paths(text: str) -> str:
    """``text`` with absolute server paths cut to their last component."""
    return _ABS_PATH.sub(lambda m: m.group(2) or os.path.basename(m.group(1).rstrip("/")), str(text))


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, absolute paths shortened to their last component,
    at most 300 characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    first = short_paths(first)
    if len(first) > 300:
        first = first[:297] + "…"
    if isinstance(exc, ValueError) and first:
        return first  # our engine's messages already name the field
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def show_error(exc: BaseException, prefix: str = "") -> None:
    """Log the traceback; show one escaped line."""
    log.error("page error: %s", prefix or type(exc).__name__, exc_info=exc)
    st.error(md_escape(f"{prefix}{one_line(exc)}"))


@contextlib.contextmanager
def page_boundary(page: str = ""):
    """Catch any exception of a page run: one line on the page, the traceback in the log."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 — this is the boundary
        show_error(exc, prefix=f"{page + ': ' if page else ''}this page stopped: ")
