"""Make every page run under app.py's router, even in Streamlit's legacy pages/-folder mode.

Streamlit keeps a legacy "pages/ folder" mode: while no session has yet called
``st.navigation``, a request for ``/<page>`` runs ``pages/<page>.py`` directly (no app.py:
no wide layout, a file-name sidebar). That happens to the first visitor of a freshly started
server who opens a shared Toy Lab link (and to every run under ``AppTest``, which resets that
mode before each run). ``ensure_router()`` at the top of a page detects the mode and runs
app.py in its place — the same nesting Streamlit itself does for the root page — then stops
the bare run. Widget events of the run are kept (no extra rerun).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


def ensure_router() -> None:
    """Run the page through app.py when Streamlit ran it bare in legacy pages/-folder mode."""
    from streamlit.runtime.pages_manager import PagesManager  # Streamlit internal (1.3x–1.6x)

    if getattr(PagesManager, "uses_pages_directory", False):
        # app.py's st.navigation leaves the legacy mode and runs the requested page
        runpy.run_path(str(APP_PATH), run_name="__main__")
        st.stop()
