"""Process-wide resources and per-session helpers for the pages.

The one ``JobManager`` of the server process lives in ``st.cache_resource`` (cap from env
``DMD_MAX_JOBS``, default 2); a browser session's own job lives in ``st.session_state``.
Runs from the UI go under ``DMD_RUNS_DIR`` (default ``<repo>/runs``).
"""

from __future__ import annotations

import gc
import os
import re
import threading
from pathlib import Path

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parent.parent


def serialize_ast_parse() -> bool:
    """Make ``ast.parse`` run one call at a time in this process (idempotent; True when installed
    by this call).

    CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state
    (cpython#106905): two threads inside ``ast.parse`` at once — a thread switch can happen mid
    parse through a garbage-collector finalizer — end one of them with ``SystemError: AST
    constructor recursion depth mismatch``. In this server two threads do parse at once:
    Streamlit parses each page script on its first run (``magic.add_magic``), while the warm-up
    thread's imports (``torch._dynamo`` …) call ``ast.parse`` ~90 times through ``inspect``. A
    page then failed to render, at random. One re-entrant lock around ``ast.parse`` removes it.
    """
    import ast

    if getattr(ast.parse, "_dmd_serialized", False):
        return False
    original, lock = ast.parse, threading.RLock()

    def parse(*args, **kwargs):
        with lock:
            return original(*args, **kwargs)

    parse.__wrapped__ = original
    parse.__doc__ = original.__doc__
    parse._dmd_serialized = True
    ast.parse = parse
    return True


def runs_root() -> Path:
    """Directory that holds the UI's run directories and the run index (created if missing)."""
    root = Path(os.environ.get("DMD_RUNS_DIR") or REPO_ROOT / "runs")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _positive_int_env(name: str, default: int) -> int:
    """An integer >= 1 from environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name, str(default))
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer >= 1") from None
    if n < 1:
        raise ValueError(f"{name}: {n} not in [1, inf)")
    return n


def max_jobs() -> int:
    """Global cap on concurrently running jobs, from env DMD_MAX_JOBS (default 2)."""
    return _positive_int_env("DMD_MAX_JOBS", 2)


@st.cache_resource(show_spinner=False)
def _manager(cap: int):
    from dmdcore.jobs import JobManager

    mgr = JobManager(max_concurrent=cap)
    threading.Thread(target=_session_liveness, args=(mgr,), name="dmd-session-liveness", daemon=True).start()
    return mgr


def _session_liveness(mgr, interval: float = 5.0) -> None:
    """Heart-beat every job whose owning browser session is still connected (Streamlit's
    ``Runtime.is_active_session``); a closed tab stops the beats and the manager abandons its job
    after DMD_SESSION_TIMEOUT_S. Without a runtime (AppTest) every job is kept alive."""
    import time

    from streamlit import runtime

    while True:
        rt = runtime.get_instance() if runtime.exists() else None
        for job in mgr.jobs():
            if job.owner is not None and not job.done and (rt is None or rt.is_active_session(job.owner)):
                job.heartbeat()
        time.sleep(min(interval, mgr.session_timeout_s / 4))


def session_id() -> str | None:
    """The current browser session's id (the owner of the jobs it starts), None outside a run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def get_manager():
    """The server-wide JobManager (one per process and cap)."""
    return _manager(max_jobs())


def max_sweeps() -> int:
    """Concurrent sweeps across all sessions, from env DMD_MAX_SWEEPS (default 1: a sweep's
    worker pool already uses every core)."""
    return _positive_int_env("DMD_MAX_SWEEPS", 1)


@st.cache_resource(show_spinner=False)
def _sweep_slots(cap: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(cap)


def sweep_slots() -> threading.BoundedSemaphore:
    """The server-wide semaphore every Experiments-page sweep holds while it runs."""
    return _sweep_slots(max_sweeps())


@st.cache_resource(show_spinner=False)
def warm_up_process() -> threading.Thread:
    """Once per server process, off the request path: import the heavy lazily loaded modules,
    then move every object alive at that point out of the garbage collector's sight.

    * The first ``torch.optim.AdamW(...)`` imports ``torch._dynamo`` (and sympy): seconds of
      work that otherwise lands inside the first job's first step.
    * Those imports (plus torch, plotly, POT, scikit-learn) leave ~10⁶ long-lived objects.
      Every full collection of the cyclic GC walks all of them while holding the GIL, which
      starved the training thread of a live page (measured: 0.3 → >1 student steps/s on a
      loaded 2-core box). ``gc.freeze()`` (Python ≥ 3.7) puts the objects that exist now —
      module-level state that lives as long as the process anyway — in the permanent
      generation; collection of everything allocated later is unchanged.
    Returns the (daemon) thread doing it.
    """

    def _warm() -> None:
        import plotly.graph_objects  # noqa: F401
        import torch._dynamo  # noqa: F401

        import dmdcore.pairing  # noqa: F401  (POT, scikit-learn)
        import dmdcore.pipeline  # noqa: F401

        gc.collect()
        gc.freeze()

    t = threading.Thread(target=_warm, name="dmd-warmup", daemon=True)
    t.start()
    return t


# Page controls that survive a visit to another page. Streamlit forgets the value of a widget
# that a run does not draw, so going Experiments → Home → Experiments reset the chosen preset
# and an edited spec. Every run copies the live values of the listed widgets to shadow keys. On
# the first run of a page after another page was shown, the kept values are written back to
# their widget keys: those widgets are being created in the browser then, and a value written
# through the session state is what makes the browser show it (a value Streamlit merely kept is
# returned by the script but not displayed). Within a page nothing is written to widget keys, so a
# rerun (e.g. a sweep's progress) never overwrites an edit in progress. Only value widgets are
# listed: buttons, uploads and downloads cannot be set, and selections whose options change with
# the data (past sweeps, the image pair shown large) start fresh on purpose.
KEPT_CONTROLS = re.compile(
    r"^(exp_(preset|variant|quick|custom|workers|backend|ray_address|axis_.+|extra_.+|base_.+)"
    r"|img_((teacher|student)_(src|entry|path)|classes|per_class|seed0|steps|churn|batch|boot))$"
)
_SHADOW = "_kept::"
_PAGE = "_kept_page"


def keep_page_controls(page: str | None = None, state=None) -> int:
    """Remember the kept page controls of ``state`` (default ``st.session_state``) and, when
    ``page`` differs from the previous run's, write them back to their widget keys; called by
    app.py on every run with the page about to run. Returns how many values were written."""
    state = st.session_state if state is None else state
    entering = page is not None and state.get(_PAGE) != page
    if page is not None:
        state[_PAGE] = page
    written = 0
    keys = [str(k) for k in state.keys()]
    live = {k for k in keys if KEPT_CONTROLS.match(k)}
    for k in keys:
        if k.startswith(_SHADOW):
            name = k[len(_SHADOW):]
            if name not in live or entering:
                state[name] = state[k]
                written += 1
    for name in live:
        state[_SHADOW + name] = state[name]
    return written
