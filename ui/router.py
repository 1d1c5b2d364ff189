"""Make every page run under app.py's router, even on a fresh server's first deep link.

Streamlit keeps a legacy "pages/ folder" mode: while no session has yet called
``st.navigation``, a request for ``/<page>`` runs ``pages/<page>.py`` directly (no app.py:
no wide layout, a file-name sidebar). That happens to the first visitor of a freshly started
server who opens a shared Toy Lab link. ``ensure_router()`` at the top of a page detects that
mode, leaves it (the same switch ``st.navigation`` makes) and reruns, so app.py routes the
request — the URL, its query string and the session state are kept.
"""

from __future__ import annotations

import streamlit as st


def ensure_router() -> None:
    """Rerun through app.py when Streamlit ran this page in its legacy pages/-folder mode."""
    from streamlit.runtime.pages_manager import PagesManager  # Streamlit internal (1.3x–1.6x)

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
