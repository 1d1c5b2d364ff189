"""The claim board as people read it: one block per claim of the study, its status word first.

``render_board(root)`` computes the board with ``dmdcore.claims`` from the newest sweep of each
preset under ``root`` and, for presets not run there, from the results the repository ships
(``dmdcore.shipped_results``), and draws it: status, claim, measured answer, reason and controls
(a number is never shown without its controls); ``compact`` (the Home page) leaves out the
sources, the note on shipped results and the table. Returns the BoardRows (None when the board cannot be read,
after an st.error naming why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

STATUS_COLORS = {"supported": "#2ca02c", "contradicted": "#d62728", "inconclusive": "#7f7f7f"}


def badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#6b6b6b")
    return f"<span style='background:{color};color:white;padding:2px 8px;border-radius:4px'>{status}</span>"


def render_board(root: Path, *, compact: bool = False, container: Any = None) -> list | None:
    from dmdcore import claims

    c = container if container is not None else st
    try:
        tables, sources = claims.tables_with_sources(root)
        rows = claims.claim_board(tables)
    except (ValueError, OSError) as exc:
        c.error(f"Claim board: {exc}")
        return None
    if not compact and any(not v.startswith("your sweep") for v in sources.values()):
        c.info("Presets you have not run here show the results this repository ships "
               "(checkpoints/results/, the runs behind docs/experiments.md): each claim names its source. "
               "Run a preset to replace its row with your own measurement.")
    for r in rows:  # a wide table hid the status column off-screen at 1400 px
        c.markdown(f"{badge(r.status)} &nbsp; **{r.claim}** &nbsp; (preset `{r.preset}`)", unsafe_allow_html=True)
        lines = [f"Measured: {r.answer}"] if r.answer else []
        lines += [f"Why: {r.reason}"] + ([f"Controls: {r.controls}"] if r.controls else [])
        if not compact:
            lines += [f"Source: {sources.get(r.preset, 'not run')}"]
        c.caption("  \n".join(lines))
    if not compact:
        with c.expander("The board as a table"):
            st.dataframe(claims.board_frame(rows, sources), hide_index=True, key="exp_claims_table")
    return rows
