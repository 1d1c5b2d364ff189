"""Helpers for the Docs page: reading docs/*.md and the DMD-loop diagram (Graphviz DOT)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def read_doc(name: str, docs_dir: Path = DOCS_DIR) -> str | None:
    """Text of docs/<name>, or None when the file does not exist. name must be a bare file name."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name: {name!r} must be a plain file name inside docs/")
    path = docs_dir / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)


def split_math(md: str) -> list[tuple[str, str]]:
    """Split markdown into ("md", text) and ("latex", formula) parts: every display formula
    ``$$…$$`` (also one spanning lines or sitting in a list item) becomes its own part so the
    page renders it with ``st.latex`` — st.markdown leaves multi-line ``$$`` blocks as raw
    LaTeX.  Inline ``$…$`` stays in the markdown parts (st.markdown renders those)."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _DISPLAY_MATH.finditer(md):
        before = md[pos:m.start()]
        if before.strip():
            parts.append(("md", before))
        parts.append(("latex", " ".join(m.group(1).split())))
        pos = m.end()
    rest = md[pos:]
    if rest.strip():
        parts.append(("md", rest))
    return parts


# One DMD2 iteration (Yin et al. 2024, Alg. 1; two time-scale update rule). Top to bottom with
# 18/16 pt labels: left to right the chain was ~1900 pt wide and Streamlit scaled it into the page
# at ~9 px text; top to bottom it keeps ≥ 16 px at 1400 px (tests/e2e: rendered text height).
DMD_LOOP_DOT = r"""
digraph dmd {
  rankdir=TB; bgcolor="transparent"; nodesep=0.5; ranksep=0.45;
  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=18];
  edge [fontname="Helvetica", fontsize=16];
  z      [label="noise z ~ N(0, I)", shape=ellipse, fillcolor="#ffffff"];
  G      [label="student G\nx = D_G(σ_max·z; σ_max)", fillcolor="#fde8d7"];
  x      [label="sample x = G(z)", shape=ellipse, fillcolor="#ffffff"];
  noise  [label="noise it\nx_σ = x + σ·ε"];
  real   [label="teacher D_real (frozen)", fillcolor="#dff2df"];
  fake   [label="fake score D_fake", fillcolor="#f3e3f7"];
  grad   [label="DM gradient\n(D_real − D_fake)(x_σ; σ)\n/ mean|x − D_real|"];
  fakeloss [label="fake-score loss\nλ(σ)‖D_fake(x_σ;σ) − sg(x)‖²"];
  reg    [label="optional: regression\nλ_reg‖G(z_k) − T(z_k)‖²", style="rounded,dashed"];
  gan    [label="optional: GAN head on\nD_fake features", style="rounded,dashed"];
  z -> G -> x -> noise;
  noise -> real; noise -> fake;
  real -> grad; fake -> grad;
  grad -> G [label="generator step\n(every ratio-th iteration)", color="#d62728", fontcolor="#d62728"];
  x -> fakeloss [label="detached"];
  fakeloss -> fake [label="fake step\n(every iteration)", color="#1f77b4", fontcolor="#1f77b4"];
  reg -> G [style=dashed]; gan -> G [style=dashed]; gan -> fake [style=dashed];
}
"""
