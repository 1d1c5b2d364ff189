"""Training curves of a Toy Lab run, one figure per phase (no streamlit import).

The teacher phase (EDM training) and the student phase (DMD) count their own steps; their
curves never share an x axis: ``teacher_curves_figure`` plots teacher steps, and
``student_curves_figure`` plots generator steps of the student, with the time cursor (the
selected evaluation) drawn as a vertical line named ``"cursor"`` on every panel, and reference
lines where a metric has a chance level (ΔE = 1: a random pairing; 0: the optimal-transport
pairing; copy rate 1/K; pair retrieval 1/n).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSS_COLUMNS = ("loss", "loss_dm", "loss_fake", "loss_reg", "loss_gan_g", "loss_gan_d")
CURSOR = "cursor"  # name of the time-cursor shapes


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(np.nan, index=df.index)


def phase_rows(df: pd.DataFrame | None, phase: str) -> pd.DataFrame:
    """Rows of one phase (rows without a phase column count as student rows)."""
    if df is None or not len(df):
        return pd.DataFrame()
    if "phase" not in df.columns:
        return df if phase == "student" else pd.DataFrame()
    return df[df["phase"] == phase]


def _loss_traces(fig: go.Figure, log: pd.DataFrame, *, col: int) -> None:
    if not len(log):
        return
    x = _numeric(log, "phase_step") if "phase_step" in log.columns else _numeric(log, "step")
    for name in LOSS_COLUMNS:
        y = _numeric(log, name)
        ok = y.notna() & x.notna()
        if ok.any():
            fig.add_trace(go.Scatter(x=x[ok], y=y[ok], mode="lines", name=name, legendgroup="loss"),
                          row=1, col=col)


def _lines(fig: go.Figure, m: pd.DataFrame, cols: tuple[tuple[str, str], ...], *, col: int) -> None:
    step = _numeric(m, "step")
    for key, name in cols:
        y = _numeric(m, key)
        ok = y.notna() & step.notna()
        if ok.any():
            fig.add_trace(go.Scatter(x=step[ok], y=y[ok], mode="lines+markers", name=name), row=1, col=col)


def _layout(fig: go.Figure, *, n: int, xtitle: str, height: int, uirevision: str) -> go.Figure:
    for c in range(1, n + 1):
        fig.update_xaxes(title_text=xtitle, row=1, col=c, title_standoff=4)
    fig.update_annotations(font_size=13)  # subplot titles
    fig.update_layout(height=height, uirevision=uirevision, margin=dict(l=10, r=10, t=64, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.32, x=0))
    return fig


def teacher_curves_figure(metrics: pd.DataFrame | None, train_log: pd.DataFrame | None = None, *,
                          uirevision: str = "teacher-curves", height: int = 340) -> go.Figure:
    """Teacher phase: EDM loss | W₂²(T(z), data) | η(T), against teacher steps."""
    m, log = phase_rows(metrics, "teacher"), phase_rows(train_log, "teacher")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        "Teacher EDM loss", "W₂² teacher↔data", "Transport ineff. η(T)"))
    _loss_traces(fig, log if len(log) else m, col=1)
    _lines(fig, m, (("w2_data", "W₂²(T, data)"),), col=2)
    _lines(fig, m, (("eta_teacher", "η(T)"),), col=3)
    fig.update_yaxes(type="log", dtick="D2", tickformat=".2~g", row=1, col=1)
    return _layout(fig, n=3, xtitle="teacher step", height=height, uirevision=uirevision)


def chance_levels(metrics: pd.DataFrame | None, n_modes: int | None) -> dict[str, float]:
    """Chance levels of the student's pairing metrics: copy rate 1/K (an independent pairing over
    K equally likely modes) and pair retrieval 1/n (top-1 among n teacher samples; n from the
    rows' ``n_eval``). A level whose K or n is unknown is left out."""
    out: dict[str, float] = {}
    if n_modes and n_modes >= 1:
        out["copy_rate"] = 1.0 / n_modes
    m = phase_rows(metrics, "student")
    n = _numeric(m, "n_eval").dropna() if len(m) else pd.Series(dtype=float)
    if len(n) and n.iloc[-1] >= 1:
        out["retrieval"] = 1.0 / float(n.iloc[-1])
    return out


def student_curves_figure(metrics: pd.DataFrame | None, train_log: pd.DataFrame | None = None, *,
                          cursor: int | None = None, uirevision: str = "student-curves",
                          height: int = 380, n_modes: int | None = None) -> go.Figure:
    """Student phase: DMD losses | ΔE with its bootstrap CI | W₂² | η | copy rate and pair
    retrieval, against generator steps, with the time cursor at student step ``cursor`` on every
    panel and chance-level lines (ΔE 1 and 0; copy rate 1/K with ``n_modes`` = K; retrieval 1/n)."""
    m, log = phase_rows(metrics, "student"), phase_rows(train_log, "student")
    fig = make_subplots(rows=1, cols=5, horizontal_spacing=0.06, subplot_titles=(
        "Student losses", "ΔE (95% CI)", "W₂² student↔teacher", "Transport ineff. η",
        "Copy rate · retrieval"))
    _loss_traces(fig, log if len(log) else m, col=1)
    if len(m):
        step, de = _numeric(m, "step"), _numeric(m, "delta_e")
        lo, hi = _numeric(m, "delta_e_lo"), _numeric(m, "delta_e_hi")
        band = de.notna() & lo.notna() & hi.notna()
        if band.any():
            fig.add_trace(go.Scatter(x=pd.concat([step[band], step[band][::-1]]),
                                     y=pd.concat([hi[band], lo[band][::-1]]), fill="toself", mode="lines",
                                     line=dict(width=0), fillcolor="rgba(214,39,40,0.18)",
                                     name="ΔE 95% CI", hoverinfo="skip"), row=1, col=2)
        if de.notna().any():
            fig.add_trace(go.Scatter(x=step[de.notna()], y=de[de.notna()], mode="lines+markers", name="ΔE",
                                     line=dict(color="#d62728")), row=1, col=2)
            for y, text in ((1.0, "random pairing"), (0.0, "OT pairing")):
                fig.add_hline(y=y, line=dict(color="#888", dash="dot", width=1), row=1, col=2,
                              annotation_text=text, annotation_font_size=11,
                              annotation_position="top left")
    _lines(fig, m, (("w2", "W₂²(S, T)"), ("w2_data", "W₂²(S, data)")), col=2 + 1)
    _lines(fig, m, (("eta_student", "η(S)"), ("eta_teacher", "η(T)")), col=4)
    _lines(fig, m, (("copy_rate", "copy rate"), ("retrieval", "pair retrieval")), col=5)
    if len(m):
        chance = chance_levels(m, n_modes)
        # short labels inside the panel (a fifth of the figure): copy rate's at the left above its
        # line, retrieval's at the right above its own (the two lines can be ~0.1 apart)
        for key, text, pos in (("copy_rate", "chance 1/K", "top right"), ("retrieval", "chance 1/n", "top left")):
            if key in chance and _numeric(m, key).notna().any():
                fig.add_hline(y=chance[key], line=dict(color="#888", dash="dot", width=1), row=1, col=5,
                              annotation_text=f"{text} = {chance[key]:.3g}", annotation_font_size=11,
                              annotation_position=pos, name=f"chance:{key}")
        fig.update_yaxes(range=[0, 1.05], row=1, col=5)
    fig.update_yaxes(type="log", dtick="D2", tickformat=".2~g", row=1, col=1)
    if cursor is not None:
        for c in range(1, 6):
            fig.add_vline(x=cursor, line=dict(color="#444", width=1.5, dash="dash"), row=1, col=c, name=CURSOR,
                          exclude_empty_subplots=False)
    return _layout(fig, n=5, xtitle="student step", height=height, uirevision=uirevision)


def cursor_positions(fig: go.Figure) -> list[float]:
    """x of every time-cursor line of a figure (for tests)."""
    return [float(s.x0) for s in fig.layout.shapes if s.name == CURSOR]


def compare_figure(runs: dict[str, pd.DataFrame], *, height: int = 360) -> go.Figure:
    """Overlay of several runs' student curves: ΔE | W₂²(S, T) | generator loss, one color per
    run (``runs``: label → metrics rows as a DataFrame). Each trace is named "<label> · <metric>"."""
    from plotly.colors import qualitative

    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("ΔE", "W₂² student↔teacher", "Student loss (DMD)"))
    palette = qualitative.D3
    for i, (label, df) in enumerate(runs.items()):
        m = phase_rows(df, "student")
        color = palette[i % len(palette)]
        for col, (key, name) in enumerate((("delta_e", "ΔE"), ("w2", "W₂²"), ("loss_dm", "loss_dm")), start=1):
            step, y = _numeric(m, "step"), _numeric(m, key)
            ok = step.notna() & y.notna()
            if ok.any():
                fig.add_trace(go.Scatter(x=step[ok], y=y[ok], mode="lines+markers", name=f"{label} · {name}",
                                         legendgroup=label, showlegend=col == 1, line=dict(color=color)),
                              row=1, col=col)
    fig.add_hline(y=1.0, line=dict(color="#888", dash="dot", width=1), row=1, col=1,
                  annotation_text="random pairing", annotation_font_size=11, annotation_position="top left")
    fig.update_yaxes(type="log", dtick="D2", tickformat=".2~g", row=1, col=3)
    return _layout(fig, n=3, xtitle="student step", height=height, uirevision="compare")


def config_differences(configs: dict[str, dict]) -> pd.DataFrame:
    """The config fields (dotted keys) whose values differ between runs: one row per field, one
    column per run (``configs``: label → ExperimentConfig.to_dict())."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    flats = {label: flat(c) for label, c in configs.items()}
    keys = sorted(set().union(*flats.values())) if flats else []
    rows = [{"field": k, **{label: str(f.get(k, "—")) for label, f in flats.items()}} for k in keys
            if len({str(f.get(k, "—")) for f in flats.values()}) > 1]
    return pd.DataFrame(rows, columns=["field", *configs])
