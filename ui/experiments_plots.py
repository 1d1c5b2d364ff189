"""Plotly figures for the Experiments page (sweep results).

Inputs are the DataFrames of ``dmdcore.sweep``: ``results_table`` (one row per cell) and
``training_curves`` (one row per evaluation). Means and 95% CIs over replicates come from
``dmdcore.sweep.aggregate`` (Student-t over seeds; a single cell shows its bootstrap CI).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dmdcore.sweep import FINISHED, aggregate, is_replicate_axis

DELTA_E_DEF = ("ΔE = (E_pair − E_OT)/(E_ind − E_OT): 0 = the student copies the teacher's "
               "noise→sample pairing, ≈1 = no better than an independent pairing.")
# Legends to the right of the plot: a horizontal legend below it covered the x-axis title.
LEGEND = dict(orientation="v", yanchor="top", y=1.0, x=1.02, font=dict(size=12))
# Log axes: labelled ticks at 1-2-5 with their full values, placed explicitly from the data
# (Plotly's default labelled minor ticks with a single digit, "10 9 8 7 …", and its "D2" mode left
# a single labelled tick on a narrow plot spanning two decades).
LOG_TICKS = dict(type="log", dtick="D2", tickformat=".3~g")


def log_tick_values(values) -> list[float]:
    """Tick positions for a log axis covering the positive finite ``values``: 1-2-5 × 10^k inside
    the range (one per decade when that would exceed 9 ticks), widened by one step each side so
    the extreme points sit between labelled ticks. Empty when there are no positive values."""
    v = np.asarray(pd.to_numeric(pd.Series(list(values)), errors="coerce"), dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return []
    lo_k, hi_k = int(np.floor(np.log10(v.min()))), int(np.ceil(np.log10(v.max())))
    for mults in ((1, 2, 5), (1,)):
        cands = sorted(m * 10.0 ** k for k in range(lo_k, hi_k + 1) for m in mults)
        below = [c for c in cands if c <= v.min()]
        above = [c for c in cands if c >= v.max()]
        lo, hi = (below[-1] if below else cands[0]), (above[0] if above else cands[-1])
        ticks = [c for c in cands if lo <= c <= hi]
        if len(ticks) <= 9:
            return ticks
    return ticks


def log_axis(values) -> dict:
    """Plotly axis settings for a log axis with labelled ticks at ``log_tick_values(values)``."""
    ticks = log_tick_values(values)
    if len(ticks) < 2:
        return LOG_TICKS
    return dict(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{t:.3g}" for t in ticks])
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def condition_label(row: pd.Series | dict, axes: list[str]) -> str:
    """'a=1, b=x' for the given axes of one row ('all' when there are none)."""
    return ", ".join(f"{a.split('.')[-1]}={row[a]}" for a in axes) or "all"


def condition_axes(table: pd.DataFrame, axes: list[str], x: str | None) -> list[str]:
    """Swept axes other than ``x`` and replicate (seed) axes that take more than one value in ``table``."""
    return [a for a in axes if a != x and not is_replicate_axis(a) and a in table and table[a].astype(str).nunique() > 1]


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["status"] == FINISHED) & table["delta_e"].notna()]


def delta_e_vs_x_figure(table: pd.DataFrame, x: str, axes: list[str], *, log_x: bool = False,
                        metric: str = "delta_e", height: int = 420) -> go.Figure:
    """Mean ΔE (over seeds) vs the swept variable ``x`` with 95% CI error bars, one line per
    combination of the other swept axes."""
    conds = condition_axes(table, axes, x)
    agg = aggregate(table, x, conds, metric)
    fig = go.Figure()
    if len(agg):
        groups = agg.groupby(conds, sort=True) if conds else [((), agg)]
        for i, (key, g) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            g = g.sort_values(x)
            name = condition_label(dict(zip(conds, key)), conds)
            err_hi = (g["ci_high"] - g["mean"]).to_numpy(dtype=float)
            err_lo = (g["mean"] - g["ci_low"]).to_numpy(dtype=float)
            fig.add_trace(go.Scatter(
                x=g[x].tolist(), y=g["mean"], mode="lines+markers", name=name,
                line=dict(color=PALETTE[i % len(PALETTE)]),
                error_y=dict(type="data", symmetric=False, array=np.nan_to_num(err_hi),
                             arrayminus=np.nan_to_num(err_lo), visible=True),
                customdata=np.stack([g["n"].to_numpy(), g["ci_low"], g["ci_high"]], axis=1),
                hovertemplate=f"{x}=%{{x}}<br>mean ΔE=%{{y:.3f}}<br>95% CI %{{customdata[1]:.3f}}"
                              "–%{customdata[2]:.3f}<br>n=%{customdata[0]}<extra>%{fullData.name}</extra>",
            ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"ΔE vs {x} (mean over seeds, 95% CI)",
                      xaxis_title=x, yaxis_title="ΔE", legend=LEGEND)
    if log_x:
        fig.update_xaxes(**log_axis(table[x] if x in table else []))
    return fig


def curves_overlay_figure(curves: pd.DataFrame, axes: list[str], *, height: int = 400) -> go.Figure:
    """ΔE over student training steps, one line per cell, colored by condition (non-seed axes)."""
    fig = go.Figure()
    if len(curves):
        conds = condition_axes(curves, axes, None)
        labels = sorted({condition_label(r, conds) for _, r in curves.iterrows()})
        color = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}
        shown: set[str] = set()
        for cell, g in curves.groupby("cell", sort=False):
            g = g.sort_values("step")
            lab = condition_label(g.iloc[0], conds)
            fig.add_trace(go.Scatter(x=g["step"], y=g["delta_e"], mode="lines", name=lab, legendgroup=lab,
                                     showlegend=lab not in shown, line=dict(color=color[lab], width=1.5),
                                     hovertemplate=f"{cell}<br>step=%{{x}}<br>ΔE=%{{y:.3f}}<extra></extra>"))
            shown.add(lab)
        for y, text in ((1.0, "random pairing (ΔE 1)"), (0.0, "OT pairing (ΔE 0)")):
            fig.add_hline(y=y, line=dict(color="#888", dash="dot", width=1), annotation_text=text,
                          annotation_font_size=11, annotation_position="top left", name=f"chance:{y:g}")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), title="ΔE over training, every cell",
                      xaxis_title="student step", yaxis_title="ΔE", legend=LEGEND)
    return fig


def quality_vs_copying_figure(table: pd.DataFrame, axes: list[str], *, height: int = 400) -> go.Figure:
    """Scatter of final W₂²(student, teacher) (quality; lower = closer) vs final ΔE (copying),
    one point per finished cell with its bootstrap CI on ΔE."""
    done = _finished(table)
    done = done[done["w2"].notna()]
    fig = go.Figure()
    conds = condition_axes(done, axes, None)
    if len(done):
        labels = [condition_label(r, conds) for _, r in done.iterrows()]
        done = done.assign(_label=labels)
        for i, (lab, g) in enumerate(done.groupby("_label", sort=True)):
            lo = (g["delta_e"] - g["delta_e_lo"]).to_numpy(dtype=float)
            hi = (g["delta_e_hi"] - g["delta_e"]).to_numpy(dtype=float)
            fig.add_trace(go.Scatter(
                x=g["w2"], y=g["delta_e"], mode="markers", name=lab, text=g["cell"],
                marker=dict(color=PALETTE[i % len(PALETTE)], size=9),
                error_y=dict(type="data", symmetric=False, array=np.nan_to_num(hi), arrayminus=np.nan_to_num(lo)),
                hovertemplate="%{text}<br>W₂²=%{x:.4g}<br>ΔE=%{y:.3f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title="Quality vs copying (one point per cell)", xaxis_title="W₂²(student, teacher)",
                      yaxis_title="ΔE", legend=LEGEND)
    fig.update_xaxes(**log_axis(done["w2"]))
    return fig


def heatmap_figure(table: pd.DataFrame, x: str, y: str, *, metric: str = "delta_e", height: int = 400) -> go.Figure:
    """Mean ΔE over seeds (and any other axes) on the grid of two swept axes."""
    done = _finished(table)
    fig = go.Figure()
    if len(done):
        piv = done.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
        counts = done.pivot_table(index=y, columns=x, values=metric, aggfunc="count")
        text = [[f"{v:.3f} (n={int(c)})" if np.isfinite(v) else "" for v, c in zip(rv, rc)]
                for rv, rc in zip(piv.to_numpy(), counts.reindex_like(piv).fillna(0).to_numpy())]
        fig.add_trace(go.Heatmap(z=piv.to_numpy(), x=[str(c) for c in piv.columns], y=[str(i) for i in piv.index],
                                 text=text, texttemplate="%{text}", textfont=dict(size=13), colorscale="RdBu", zmin=0.0,
                                 zmax=max(1.0, float(np.nanmax(piv.to_numpy()))), colorbar=dict(title="ΔE")))
    # swept values are categories (data.dim 2, 16, 64 …), not a continuous axis
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), title=f"mean ΔE: {y} × {x}",
                      xaxis=dict(title=x, type="category"), yaxis=dict(title=y, type="category"))
    return fig
