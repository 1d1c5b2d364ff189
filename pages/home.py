"""Home: what copying is, one figure, links to every page, and a one-click start."""

import streamlit as st

from ui.claims import render_board
from ui.illustration import schematic_figure
from ui.toylab import START_HERE_VALUES, request_autostart
from ui.router import ensure_router
from ui.session import runs_root, warm_up_process

ensure_router()
warm_up_process()  # heavy imports + gc.freeze off the request path (see ui/session.py)

st.title("DMD Copying Lab")
st.markdown(
    """
**Distribution Matching Distillation (DMD)** trains a one-step *student* S to produce the same
*distribution* as a many-step diffusion *teacher* T. Nothing in that objective says *which* noise
vector z should land on *which* sample — so a student is free to **remap** noise. Li, Jones, Tong
and Bronstein (2026) report that high-dimensional students nonetheless **copy**: S(z) ≈ T(z) for
the same z. This lab measures whether they do — and our runs do not always agree (below).

This lab lets you watch that pairing form. We color every noise vector by its position, push the
same noise through teacher and student, and compare. The headline number is the **pairing
inefficiency ΔE** — 0 when the student copies the teacher's noise→sample pairing, ≈ 1 when the
pairing is no better than chance (definitions on the Docs page).
"""
)
st.plotly_chart(schematic_figure(), key="home_schematic", config={"displayModeBar": False})
st.caption(
    "Schematic with hand-made closed-form maps (not trained models): both students produce "
    "exactly the teacher's samples; only the noise→sample pairing differs."
)

left, right = st.columns([1, 2])
with left:
    if st.button("Start here: distill a shipped teacher", type="primary", key="start_here", icon=":material/play_arrow:"):
        request_autostart(st.session_state, START_HERE_VALUES)
        st.switch_page("pages/toy_lab.py")
with right:
    st.markdown(
        "Loads the shipped *8 Gaussians* toy teacher, opens the **Toy Lab** and distils it until "
        "the student reaches its plateau (measured: about 300 steps and 15 s of one CPU core; "
        "at most 1000 steps). The headline then says *converged at student step N*."
    )

st.subheader("What our runs found")
st.caption("Each claim of the study against this tool's own measurement (converged students, 95% CIs, "
           "controls): the runs shipped with the repository, or yours once you run a preset. Reasons, "
           "controls and sources on the Experiments page's Claim board; tables in docs/experiments.md.")
render_board(runs_root() / "sweeps", compact=True)

st.subheader("Pages")
st.page_link("pages/toy_lab.py", label="Toy Lab — live distillation on 2-D and R^d toys", icon=":material/science:")
st.page_link("pages/experiments.py", label="Experiments — sweeps and the run index", icon=":material/monitoring:")
st.page_link("pages/images.py", label="Image models — EDM / DMD2 checkpoints", icon=":material/image:")
st.page_link("pages/docs.py", label="Docs — metrics, controls and the DMD loop", icon=":material/menu_book:")
