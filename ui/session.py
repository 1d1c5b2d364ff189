"""Process-wide resources and per-session helpers for the pages.

The one ``JobManager`` of the server process lives in ``st.cache_resource`` (cap from env
``DMD_MAX_JOBS``, default 2); a browser session's own job lives in ``st.session_state``.
Runs from the UI go under ``DMD_RUNS_DIR`` (default ``<repo>/runs``).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Directory that holds the UI's run directories and the run index (created if missing)."""
    root = Path(os.environ.get("DMD_RUNS_DIR") or REPO_ROOT / "runs")
    root.mkdir(parents=True, exist_ok=True)
    return root


def max_jobs() -> int:
    """Global cap on concurrently running jobs, from env DMD_MAX_JOBS (default 2)."""
    raw = os.environ.get("DMD_MAX_JOBS", "2")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"DMD_MAX_JOBS: {raw!r} is not an integer >= 1") from None
    if n < 1:
        raise ValueError(f"DMD_MAX_JOBS: {n} not in [1, inf)")
    return n


@st.cache_resource(show_spinner=False)
def _manager(cap: int):
    from dmdcore.jobs import JobManager

    return JobManager(max_concurrent=cap)


def get_manager():
    """The server-wide JobManager (one per process and cap)."""
    return _manager(max_jobs())
