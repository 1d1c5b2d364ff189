"""DMD Copying Lab — router only: pages live in pages/."""

import os

import streamlit as st

# Server-process threading policy, set before anything imports torch: one OpenMP thread per
# torch-using thread. Every thread that calls torch (each training job, each page run that
# samples a teacher) otherwise gets its own team of n_cores spinning OpenMP threads; on a
# 2-core server they fought over the cores and training ran ~10x slower with the page open
# (benchmarks/ui_overhead.py). Jobs get their parallelism from the DMD_MAX_JOBS cap instead.
# An explicit OMP_NUM_THREADS in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from ui.session import keep_page_controls, serialize_ast_parse  # noqa: E402  (no torch import here)

# Before any page starts a background thread: CPython 3.11's ast.parse is not safe to run in two
# threads at once (see ui.session.serialize_ast_parse).
serialize_ast_parse()


def _route() -> None:
    """The page router (every Streamlit run of this script)."""
    st.set_page_config(page_title="DMD Copying Lab", page_icon=":material/science:", layout="wide")

    nav = st.navigation(
        [
            st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page("pages/toy_lab.py", title="Toy Lab", icon=":material/science:"),
            st.Page("pages/experiments.py", title="Experiments", icon=":material/monitoring:"),
            st.Page("pages/images.py", title="Image models", icon=":material/image:"),
            st.Page("pages/docs.py", title="Docs", icon=":material/menu_book:"),
        ]
    )
    keep_page_controls(nav.url_path)  # Experiments / Image models controls outlive a visit elsewhere
    from ui.errors import page_boundary  # noqa: E402

    try:
        title = nav.title
    except AttributeError:  # bare mode (no Streamlit runtime): no page title to name
        title = ""
    with page_boundary(title):  # one error boundary for every page: one line on screen, traceback in the log
        nav.run()


# A sweep's spawn-ed worker process re-runs the server's main script as __mp_main__, outside
# Streamlit: it must not route (every st call warned "missing ScriptRunContext" there, and
# nav.title raised, so each worker died at start-up and browser-launched sweeps never ran).
if __name__ != "__mp_main__":
    _route()
