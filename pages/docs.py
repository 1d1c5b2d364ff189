"""Docs / about: the metrics, every Toy Lab control, and the DMD loop in one diagram."""

import streamlit as st

from ui.docs import DMD_LOOP_DOT, read_doc, split_math
from ui.plots import DELTA_E_HELP
from ui.router import ensure_router

ensure_router()

st.title("Docs")
st.markdown(
    "What every number and every control in this lab means. Sources: Yin et al. 2023 (DMD), "
    "Yin et al. 2024 (DMD2), Karras et al. 2022 (EDM)."
)

tab_loop, tab_metrics, tab_controls = st.tabs(["The DMD loop", "Metrics", "Controls"])

with tab_loop:
    st.subheader("One DMD2 training iteration")
    st.graphviz_chart(DMD_LOOP_DOT, width="stretch")
    st.markdown(
        """
* The **generator** (student) G maps noise z to a sample in one step: x = D_G(σ_max·z; σ_max).
* The **fake score** D_fake is trained online to denoise the student's samples (the EDM loss);
  it takes `ratio` steps per generator step (the DMD2 two time-scale rule, 1:5 by default).
* The generator step noises x to x_σ and moves x along **D_real(x_σ; σ) − D_fake(x_σ; σ)**
  (normalised by mean|x − D_real|): toward where the teacher puts mass, away from where the
  student's own distribution does.
* Optional: the **regression** loss λ‖G(z_k) − T(z_k)‖² on pre-computed teacher ODE pairs
  (original DMD; it rewards copying explicitly) and the **GAN** loss on the fake score's
  last-hidden-layer features (DMD2).

Nothing in the distribution-matching gradient refers to *which* noise produced which sample —
whether the student keeps the teacher's pairing (copying) is an emergent property measured by ΔE.
"""
    )

with tab_metrics:
    st.subheader("Pairing inefficiency ΔE")
    st.latex(r"\Delta E = \frac{E_\mathrm{pair} - E_\mathrm{OT}}{E_\mathrm{ind} - E_\mathrm{OT}},\quad "
             r"E_\mathrm{pair} = \tfrac1n\sum_i \lVert s_i - t_i\rVert^2,\quad "
             r"E_\mathrm{OT} = \min_\pi \tfrac1n\sum_i \lVert s_i - t_{\pi(i)}\rVert^2,\quad "
             r"E_\mathrm{ind} = \tfrac1{n^2}\sum_{i,j}\lVert s_i - t_j\rVert^2")
    st.markdown(DELTA_E_HELP)
    st.info(
        "This is the product's documented reconstruction of the copying study's scale-invariant "
        "pairing inefficiency ΔE; the study's own normalisation may differ."
    )
    metrics_md = read_doc("metrics.md")
    if metrics_md is None:
        st.warning("docs/metrics.md (the metrics reference) is not in this checkout yet.")
    else:
        for kind, text in split_math(metrics_md):  # display formulas through st.latex
            if kind == "latex":
                st.latex(text)
            else:
                st.markdown(text)

with tab_controls:
    controls_md = read_doc("controls.md")
    if controls_md is None:
        st.error("docs/controls.md is missing from this checkout.")
    else:
        st.markdown(controls_md)
