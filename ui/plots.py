"""Plotly figure builders for the dashboard.

Every function here takes plain numpy arrays / pandas DataFrames and returns a
``plotly.graph_objects.Figure``; nothing here imports streamlit or trains anything, so the
figures are unit-testable on their own. Point clouds use WebGL (``Scattergl``) traces with
float32 arrays, and each *panel group* is a single figure (one WebGL context per figure), so a
page stays well under the browser's WebGL-context limit however often it redraws. Pass a stable
``uirevision`` so that zoom/pan survive the live refreshes.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# A qualitative palette for modes/clusters (Plotly's "D3" + "Dark24" start; 20 distinct colors).
MODE_PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A",
    "#B68100", "#750D86", "#EB663B", "#511CFB",
)

TOP_MARGIN = 64  # px above the plot area: room for the toolbar above the (subplot) titles
DELTA_E_HELP = (
    "ΔE = (E_pair − E_OT) / (E_ind − E_OT): E_pair = mean‖S(z_i) − T(z_i)‖², E_OT = exact optimal-"
    "transport cost between the student and teacher sample sets, E_ind = cost of an independent "
    "pairing. 0 = the student copies the teacher's noise→sample pairing, ≈1 = no better than chance."
)


# ---------------------------------------------------------------------------------------------
# Colors
# ---------------------------------------------------------------------------------------------
def position_colors(points: np.ndarray, *, scale: float | None = None) -> np.ndarray:
    """Smooth 2-D color map of positions: hue = polar angle, saturation = radius.

    points: (n, 2) array (e.g. the evaluation noise z). scale: radius that maps to full
    saturation (default: the 95th percentile of the radii, so the map adapts to the cloud).
    Returns an (n,) array of CSS ``"rgb(r,g,b)"`` strings; nearby points get similar colors and
    the map is continuous everywhere except at the origin (where every hue fades to grey).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points: expected shape (n, 2), got {p.shape}")
    r = np.hypot(p[:, 0], p[:, 1])
    if scale is None:
        scale = float(np.percentile(r, 95)) if len(r) else 1.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    hue = (np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi)) % 1.0
    sat = np.clip(r / scale, 0.0, 1.0)
    out = np.empty(len(p), dtype=object)
    for i, (h, s) in enumerate(zip(hue, sat)):
        red, green, blue = colorsys.hls_to_rgb(h, 0.5, 0.15 + 0.85 * s)
        out[i] = f"rgb({int(255 * red)},{int(255 * green)},{int(255 * blue)})"
    return out


def mode_colors(modes: np.ndarray) -> np.ndarray:
    """Categorical colors for integer mode/cluster labels (n,) → (n,) CSS color strings."""
    m = np.asarray(modes)
    if m.ndim != 1:
        raise ValueError(f"modes: expected a 1-D integer array, got shape {m.shape}")
    pal = np.asarray(MODE_PALETTE, dtype=object)
    return pal[np.mod(m.astype(np.int64), len(pal))]


# ---------------------------------------------------------------------------------------------
# Projection to 2-D (PCA fitted once on teacher samples)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    """A fixed linear map R^d → R^2: identity for d = 2, else PCA of the teacher samples.

    mean: (d,), components: (2, d) orthonormal rows, explained: fraction of variance per
    component (2,) (1.0, 1.0 meaning "not a projection" when d = 2).
    """

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    is_identity: bool
    source: str = "teacher samples"  # what the PCA was fitted on (named in the axis titles)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, d) → (n, 2) float32."""
        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (n, {self.dim}), got {a.shape}")
        if self.is_identity:
            return a.copy()
        return ((a - self.mean) @ self.components.T).astype(np.float32)

    def axis_titles(self, what: str = "") -> tuple[str, str]:
        """Axis titles that say what the axes are: coordinates ``<what>₁, <what>₂`` (default x)
        for d = 2, else the PCA components and their explained variance."""
        if self.is_identity:
            sym = what or "x"
            return (f"{sym}₁", f"{sym}₂")
        return tuple(
            f"PC{k + 1} of {self.source} ({100 * self.explained[k]:.0f}% var)" for k in range(2)
        )


def fit_projection(teacher_samples: np.ndarray, source: str = "teacher samples") -> Projection:
    """Fit the 2-D projection once on teacher samples (n, d); identity when d == 2.
    ``source`` names what was fitted on, for the axis titles (e.g. "z" for the noise panel).

    PCA via SVD of the centred samples (float64), components ordered by explained variance.
    """
    t = np.asarray(teacher_samples, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        raise ValueError(f"teacher_samples: expected shape (n>=2, d>=2), got {t.shape}")
    d = t.shape[1]
    if d == 2:
        return Projection(np.zeros(2, np.float32), np.eye(2, dtype=np.float32), np.ones(2), True)
    mean = t.mean(axis=0)
    _, s, vt = np.linalg.svd(t - mean, full_matrices=False)
    var = s**2
    explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return Projection(mean.astype(np.float32), vt[:2].astype(np.float32), explained, False, source)


# ---------------------------------------------------------------------------------------------
# Panel group 1: noise / teacher / student / displacement (one figure, WebGL)
# ---------------------------------------------------------------------------------------------
def _gl_points(xy: np.ndarray, colors, name: str, size: float, selected=None) -> go.Scattergl:
    """Point i of the trace is row i (the same noise z_i in every panel). ``selected``: row
    indices to highlight (the others fade), or None. hoverinfo "none" (not "skip"): no hover
    label, but lasso/box selections still report the points."""
    xy = np.asarray(xy, dtype=np.float32)
    extra = {}
    if selected is not None:
        keep = [int(i) for i in selected if 0 <= int(i) < len(xy)]
        extra = dict(selectedpoints=keep, selected=dict(marker=dict(size=size * 1.6)),
                     unselected=dict(marker=dict(opacity=0.12)))
    return go.Scattergl(
        x=xy[:, 0], y=xy[:, 1], mode="markers", name=name, showlegend=False,
        marker=dict(color=list(colors), size=size, line=dict(width=0)),
        hoverinfo="none", **extra,
    )


POINT_TRACES = ("z", "T(z)", "S(z)", "S(z) end")  # pairing_figure traces whose point i is row i


def segments_xy(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polyline coordinates drawing one segment a_i → b_i per row, separated by NaN gaps.

    a, b: (n, 2). Returns x, y of length 3n (float32): a_0, b_0, nan, a_1, b_1, nan, …
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"a, b: expected equal shapes (n, 2), got {a.shape} and {b.shape}")
    n = a.shape[0]
    xy = np.full((n, 3, 2), np.nan, dtype=np.float32)
    xy[:, 0] = a
    xy[:, 1] = b
    xy = xy.reshape(3 * n, 2)
    return xy[:, 0], xy[:, 1]


def pairing_figure(
    z: np.ndarray,
    teacher: np.ndarray,
    student: np.ndarray | None,
    *,
    colors: np.ndarray,
    projection: Projection,
    noise_projection: Projection | None = None,
    uirevision: str = "pairing",
    max_segments: int = 2000,
    marker_size: float = 4.0,
    height: int = 420,
    student_title: str = "Student samples S(z)",
    selected: np.ndarray | None = None,
) -> go.Figure:
    """Four WebGL panels in one figure: noise z | T(z) | S(z) | segments T(z_i) → S(z_i).

    z, teacher, student: (n, d) arrays over the *same* noise (row i ↔ z_i); student may be None
    (not distilled yet). colors: (n,) CSS colors, the same for all panels so copying looks
    identical and remapping looks scrambled. projection: maps samples to 2-D (fitted once on
    teacher samples); noise_projection: for z (defaults to identity when d == 2, else PCA of z).
    max_segments: at most this many pair segments are drawn (the first ones, deterministic).
    selected: row indices (a lasso/box selection, a teacher mode) highlighted in every panel —
    the same noises z_i in z, T(z), S(z) and the displacement panel (only their segments drawn).
    Lasso is the default drag tool.
    """
    z = np.asarray(z, dtype=np.float32)
    teacher = np.asarray(teacher, dtype=np.float32)
    n = teacher.shape[0]
    if z.shape[0] != n or len(colors) != n:
        raise ValueError(f"z/teacher/colors: row counts differ ({z.shape[0]}, {n}, {len(colors)})")
    if student is not None:
        student = np.asarray(student, dtype=np.float32)
        if student.shape != teacher.shape:
            raise ValueError(f"student: shape {student.shape} != teacher shape {teacher.shape}")
    if noise_projection is None:
        noise_projection = fit_projection(z, source="z")
    z2 = noise_projection.transform(z)
    t2 = projection.transform(teacher)
    fig = make_subplots(
        rows=1, cols=4, horizontal_spacing=0.07,
        subplot_titles=("Noise z", "Teacher samples T(z)", student_title,
                        "Pair displacement T(zᵢ) → S(zᵢ)"),
    )
    fig.add_trace(_gl_points(z2, colors, "z", marker_size, selected), row=1, col=1)
    fig.add_trace(_gl_points(t2, colors, "T(z)", marker_size, selected), row=1, col=2)
    if student is not None:
        s2 = projection.transform(student)
        fig.add_trace(_gl_points(s2, colors, "S(z)", marker_size, selected), row=1, col=3)
        m = min(n, max_segments)
        rows = np.arange(m) if selected is None else np.asarray([i for i in selected if 0 <= i < m], np.int64)
        sx, sy = segments_xy(t2[rows], s2[rows])
        fig.add_trace(
            go.Scattergl(x=sx, y=sy, mode="lines", showlegend=False, hoverinfo="skip",
                         line=dict(width=1, color="rgba(80,80,80,0.45)"), name="T→S"),
            row=1, col=4,
        )
        fig.add_trace(_gl_points(s2[:m], colors[:m], "S(z) end", marker_size * 0.7, selected), row=1, col=4)
    nz = noise_projection.axis_titles("z")
    ns = projection.axis_titles()
    fig.update_xaxes(title_text=nz[0], row=1, col=1)
    fig.update_yaxes(title_text=nz[1], row=1, col=1)
    for c in (2, 3, 4):
        fig.update_xaxes(title_text=ns[0], row=1, col=c)
        fig.update_yaxes(title_text=ns[1], row=1, col=c)
    # Teacher, student and displacement share axes so that positions are comparable.
    fig.update_xaxes(matches="x2", row=1, col=3)
    fig.update_xaxes(matches="x2", row=1, col=4)
    fig.update_yaxes(matches="y2", row=1, col=3)
    fig.update_yaxes(matches="y2", row=1, col=4)
    fig.update_annotations(font_size=13)  # subplot titles
    # the top margin keeps the Plotly toolbar (drawn in the figure's top-right corner) above the titles
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=TOP_MARGIN, b=10), uirevision=uirevision,
                      dragmode="lasso")
    return fig


def selected_rows(selection: dict | None, fig_traces: tuple[str, ...]) -> np.ndarray | None:
    """Row indices of a Streamlit Plotly selection event on ``pairing_figure`` (points of any
    point trace; segment vertices ignored), or None when nothing is selected."""
    if not selection:
        return None
    pts = selection.get("points") or []
    rows = sorted({int(p["point_index"]) for p in pts
                   if 0 <= int(p.get("curve_number", -1)) < len(fig_traces)
                   and fig_traces[int(p["curve_number"])] in POINT_TRACES})
    return np.asarray(rows, np.int64) if rows else None


# ---------------------------------------------------------------------------------------------
# Panel group 2: mode transition matrix + basin maps (SVG/heatmap, no WebGL)
# ---------------------------------------------------------------------------------------------
def transition_figure(matrix: np.ndarray, copy_rate: float, *, uirevision: str = "modes",
                      height: int = 380) -> go.Figure:
    """Heatmap of P(student mode j | teacher mode i) (K, K), copy rate in the title."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix: expected a square (K, K) array, got {m.shape}")
    k = m.shape[0]
    fig = go.Figure(go.Heatmap(
        z=m, x=list(range(k)), y=list(range(k)), zmin=0.0, zmax=1.0, colorscale="Blues",
        # percentages (3 characters) stay readable at 12 px in a narrow 8 x 8 panel
        texttemplate="%{z:.0%}" if k <= 12 else None,
        textfont=dict(size=12 if k <= 8 else 10),
        hovertemplate="teacher mode %{y} → student mode %{x}: %{z:.3f}<extra></extra>",
        colorbar=dict(title="P", thickness=12),
    ))
    fig.update_layout(
        title=dict(text=f"Mode transition · copy rate {copy_rate:.3f}", font=dict(size=14)),
        xaxis_title="student mode", yaxis_title="teacher mode", height=height,
        xaxis=dict(dtick=1 if k <= 20 else None),
        yaxis=dict(autorange="reversed", dtick=1 if k <= 20 else None), uirevision=uirevision,
        margin=dict(l=10, r=10, t=TOP_MARGIN, b=10),
    )
    return fig


def basin_colors(teacher_map: np.ndarray, extent: float) -> list[str]:
    """One color per mode of a teacher basin map, taken from the noise color wheel
    (``position_colors``: hue = angle) at the centroid of the mode's basin, so a basin has the
    color of the noise that flows into it in the scatter panels. Modes absent from the map
    get their ``MODE_PALETTE`` color."""
    tm = np.asarray(teacher_map)
    g = tm.shape[0]
    axis = np.linspace(-extent, extent, g)
    gx, gy = np.meshgrid(axis, axis)
    k = int(tm.max()) + 1
    out = []
    for j in range(k):
        mask = tm == j
        if not mask.any():
            out.append(MODE_PALETTE[j % len(MODE_PALETTE)])
            continue
        c = np.array([[gx[mask].mean(), gy[mask].mean()]])
        r = float(np.hypot(*c[0]))
        # full saturation at the centroid's angle (a basin at the centre stays grey, as its noise)
        out.append(str(position_colors(c, scale=max(r, 1e-9) if r > 0.15 * extent else extent)[0]))
    return out


def basin_figure(teacher_map: np.ndarray, student_map: np.ndarray | None, extent: float, *,
                 uirevision: str = "basins", height: int = 380, colors: list[str] | None = None) -> go.Figure:
    """Side-by-side basin maps over the 2-D noise grid [-extent, extent]², with a legend of the
    modes.

    teacher_map / student_map: (G, G) integer mode labels, row index = z₂ (bottom→top),
    column index = z₁ (left→right). colors: one CSS color per mode, the same in both maps
    (default: ``basin_colors`` of the teacher map, i.e. the noise color wheel).
    """
    tm = np.asarray(teacher_map)
    if tm.ndim != 2:
        raise ValueError(f"teacher_map: expected (G, G) labels, got {tm.shape}")
    maps = [("Teacher basins: mode of T(z)", tm)]
    if student_map is not None:
        sm = np.asarray(student_map)
        if sm.shape != tm.shape:
            raise ValueError(f"student_map: shape {sm.shape} != teacher_map shape {tm.shape}")
        maps.append(("Student basins: mode of S(z)", sm))
    k = int(max(int(np.max(mp)) for _, mp in maps)) + 1
    colors = list(colors) if colors is not None else basin_colors(tm, extent)
    colors += [MODE_PALETTE[j % len(MODE_PALETTE)] for j in range(len(colors), k)]
    # A discrete colorscale: label j → colors[j].
    scale = []
    for j in range(k):
        scale += [(j / k, colors[j]), ((j + 1) / k, colors[j])]
    g = tm.shape[0]
    axis = np.linspace(-extent, extent, g, dtype=np.float32)
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=[t for t, _ in maps],
                        horizontal_spacing=0.1)
    for c, (_, mp) in enumerate(maps, start=1):
        fig.add_trace(go.Heatmap(
            z=mp.astype(np.float32) + 0.5, x=axis, y=axis, zmin=0, zmax=k, colorscale=scale,
            showscale=False, customdata=mp,
            hovertemplate="z=(%{x:.2f}, %{y:.2f}) → mode %{customdata}<extra></extra>",
        ), row=1, col=c)
        fig.update_xaxes(title_text="z₁", row=1, col=c, title_standoff=2)
        fig.update_yaxes(title_text="z₂", row=1, col=c, title_standoff=2, scaleanchor=f"x{'' if c == 1 else c}")
    for j in range(k):  # legend: one swatch per mode
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"mode {j}",
                                 marker=dict(symbol="square", size=12, color=colors[j])), row=1, col=1)
    fig.update_annotations(font_size=13)
    fig.update_layout(height=height, uirevision=uirevision, margin=dict(l=10, r=10, t=TOP_MARGIN, b=10),
                      legend=dict(title="mode", font=dict(size=12)))
    return fig


# ---------------------------------------------------------------------------------------------
# Panel group 3: curves
