"""The one Streamlit rendering of a copy verdict: ΔE with n, d, its controls and the verdict.

``render_verdict(src)`` takes a metrics-row-like dict (metrics.csv columns: delta_e, delta_e_lo,
delta_e_hi, n_eval, dim, delta_e_twin, delta_e_cross, resolution, delta_e_valid, verdict,
verdict_basis, copy_rate, retrieval) or a ``dmdcore.verdict.CopyReport``, so a page can show the
verdict of whichever evaluation the user selects.  Rows of runs made before the verdict existed
render with "controls absent".  Words come from ``dmdcore.verdict_text`` (shared with the CLI).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dmdcore import verdict_text as vt

COLORS = {
    "copies": "#1b7f3b", "same_map": "#1f5fa8", "partial": "#b86e00", "remaps": "#b3261e",
    "unresolved": "#6b6b6b", "invalid": "#9a9a9a",
}
HELP = ("Verdict from ΔE(S,T) and its controls on the same noise, n and d: an independent teacher T′ "
        "(same data, other seed), reference students (exact copy, noisy copy at the student's own "
        "per-pair error, within-mode remap, random permutation) and the resolution (the largest "
        "population ΔE that still reads as 0 here). See Docs → Metrics, 'What ΔE can and cannot tell'.")


def render_verdict(src: Any, *, container: Any = None, n_modes: int | None = None, compact: bool = False,
                   title: str | None = None, beside: str | None = None) -> dict:
    """Draw the verdict block into ``container`` (default: the page).  compact: no help icon
    (a sweep cell among many).  beside: HTML shown right under the verdict line, in the same block
    (the Toy Lab's convergence state).  Returns the row it rendered."""
    row = vt.as_row(src)
    c = container if container is not None else st
    v = row.get("verdict") if vt.has_controls(row) else None
    color = COLORS.get(v, "#6b6b6b")
    valid = bool(row.get("delta_e_valid")) if v is not None else True
    head = vt.headline(row)
    if not valid:
        head = f"<span style='color:#9a9a9a'>{head} (greyed: not meaningful yet)</span>"
    label = vt.verdict_label(row)
    prefix = f"**{title}** · " if title else ""
    c.markdown(
        f"{prefix}<span style='background:{color};color:white;padding:2px 8px;border-radius:4px'>"
        f"{label}</span> &nbsp; {head}" + (f"  \n{beside}" if beside else ""),
        unsafe_allow_html=True, help=None if compact else HELP,
    )
    basis = row.get("verdict_basis")
    if v is not None and basis:
        c.caption(("Not meaningful yet: " if not valid else "Because: ") + str(basis))
    lines = vt.control_lines(row) + vt.companion_lines(row, n_modes)
    c.caption("  \n".join(lines))
    return row
