"""The Home page's schematic: what copying vs remapping looks like.

The maps here are hand-made closed forms (not trained models), built so the picture is exact:
noise z ~ N(0, I₂) is sent by a "teacher" to one of 8 Gaussian modes according to the angular
sector of z; a *copying* student uses the same sector→mode rule, a *remapping* student a
permuted one. Both students have exactly the teacher's output distribution; only the pairing
differs — which is what ΔE measures.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.plots import _gl_points, position_colors

N_MODES = 8


def schematic_maps(n: int = 800, seed: int = 0):
    """Returns (z, teacher, copying_student, remapping_student), each (n, 2) float32.

    Mode centres c_k = 2·(cos θ_k, sin θ_k), θ_k = 2πk/8; the mode of z is its angular sector
    k(z) = ⌊8·atan2(z₂, z₁)/2π⌋ mod 8; T(z) = c_k(z) + 0.15·z, remapper R(z) = c_π(k(z)) + 0.15·ρ(z)
    with the fixed permutation π(k) = 3k + 1 mod 8 and ρ the rotation taking sector k(z) to π(k(z)).
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    theta = 2 * np.pi * np.arange(N_MODES) / N_MODES
    centres = 2.0 * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    k = np.floor(N_MODES * (np.arctan2(z[:, 1], z[:, 0]) % (2 * np.pi)) / (2 * np.pi)).astype(int)
    k = np.clip(k, 0, N_MODES - 1)
    perm = (3 * np.arange(N_MODES) + 1) % N_MODES
    teacher = centres[k] + 0.15 * z
    # rotate z from sector k into sector π(k): N(0, I) is rotation-invariant, so the remapper's
    # output has exactly the teacher's distribution (each mode: c_m + 0.15·(z in sector m))
    ang = (perm[k] - k) * 2 * np.pi / N_MODES
    rz = np.stack([np.cos(ang) * z[:, 0] - np.sin(ang) * z[:, 1],
                   np.sin(ang) * z[:, 0] + np.cos(ang) * z[:, 1]], axis=1)
    remap = centres[perm[k]] + 0.15 * rz
    return (z.astype(np.float32), teacher.astype(np.float32), teacher.astype(np.float32).copy(),
            remap.astype(np.float32))


def schematic_figure(n: int = 800, seed: int = 0, height: int = 330) -> go.Figure:
    """One WebGL figure: noise | teacher | copying student | remapping student, same colors."""
    z, t, s_copy, s_remap = schematic_maps(n, seed)
    colors = position_colors(z)
    fig = make_subplots(rows=1, cols=4, horizontal_spacing=0.04, subplot_titles=(
        "Noise z<br>(colored by position)", "Teacher T(z)", "Student that copies<br>(same pairing)",
        "Student that remaps<br>(same samples)"))  # two lines: one line ran past the figure's edge at 1400 px
    for c, pts in enumerate((z, t, s_copy, s_remap), start=1):
        fig.add_trace(_gl_points(pts, colors, f"panel{c}", 4.0), row=1, col=c)
        fig.update_xaxes(showticklabels=False, row=1, col=c)
        fig.update_yaxes(showticklabels=False, scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    fig.update_layout(height=height, margin=dict(l=5, r=5, t=56, b=5), uirevision="home")
    return fig
