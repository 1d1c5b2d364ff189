"""Copy verdicts in sweep summaries: which cells a summary may pool, and what it must say.

ΔE is only comparable at the same evaluation n and dimension d (its finite-n bias depends on
both, docs/metrics.md), and a cell whose ΔE is invalid or below its resolution says nothing
about copying.  ``screen(done, axes)`` returns the cells a summary may use and the sentences
that say what was left out and why; ``pool_groups(done, axes)`` splits cells measured at
different n (or d, unless d is a swept axis) instead of pooling them silently.
"""

from __future__ import annotations

import math

import pandas as pd

from dmdcore.verdict_text import VERDICT_LABELS, resolution_text

_NOT_READABLE = ("invalid", "unresolved")


def verdict_counts(done: pd.DataFrame) -> str | None:
    """'verdicts: partially remaps 3, unresolved at this n and d 2' over cells that have one."""
    if "verdict" not in done:
        return None
    v = done["verdict"].dropna()
    v = v[v.astype(str) != ""]
    if not len(v):
        return None
    counts = v.value_counts()
    return "Verdicts of the finished cells: " + ", ".join(f"{VERDICT_LABELS.get(k, k)} {n}" for k, n in counts.items()) + "."


def screen(done: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop cells whose ΔE cannot be read (verdict invalid or unresolved) and cells whose student
    had not converged at its last evaluation (``converged`` = 0, dmdcore.convergence); say which
    and why."""
    kept, lines = _screen_verdicts(done)
    if "converged" in kept and kept["converged"].notna().any():
        unconv = kept["converged"] != 1
        if unconv.any():
            cells = list(kept.loc[unconv, "cell"].astype(str)) if "cell" in kept else []
            shown = "; ".join(cells[:8]) + (f"; … {len(cells) - 8} more" if len(cells) > 8 else "")
            lines.append(f"{int(unconv.sum())} cell(s) left out because their student had not converged at its last "
                         f"evaluation (plateau criterion, docs/metrics.md){': ' + shown if shown else ''}.")
            kept = kept[~unconv]
    return kept, lines


def _screen_verdicts(done: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop cells whose ΔE cannot be read (verdict invalid or unresolved); say which and why."""
    lines = []
    counts = verdict_counts(done)
    if counts:
        lines.append(counts)
    if "verdict" not in done or not done["verdict"].notna().any():
        lines.append("These runs predate the copy verdict: no controls (twin, references, resolution) — "
                     "ΔE below is not checked against its nulls.")
        return done, lines
    bad = done["verdict"].isin(_NOT_READABLE)
    if bad.any():
        parts = []
        for _, r in done[bad].iterrows():
            why = "not meaningful yet" if r["verdict"] == "invalid" else f"below its resolution {resolution_text(r.get('resolution'))}"
            parts.append(f"{r['cell']} (ΔE {r['delta_e']:.3f}, {why})" if not _nan(r.get("delta_e")) else f"{r['cell']} ({why})")
        shown = "; ".join(parts[:8]) + (f"; … {len(parts) - 8} more" if len(parts) > 8 else "")
        lines.append(f"{int(bad.sum())} cell(s) left out of the numbers below because their ΔE cannot be read: {shown}.")
    return done[~bad], lines


def _nan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def pool_groups(done: pd.DataFrame, axes: list[str]) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """Groups of cells measured at one n (and one d unless 'data.dim' is swept), with a label;
    a single unlabelled group when everything was measured alike."""
    keys = []
    if "n_eval" in done and done["n_eval"].dropna().nunique() > 1 and "eval.n" not in axes:
        keys.append("n_eval")
    if "dim" in done and done["dim"].dropna().nunique() > 1 and "data.dim" not in axes:
        keys.append("dim")
    lines = []
    if "data.dim" in axes and "dim" in done and done["dim"].dropna().nunique() > 1:
        res = done.groupby("dim")["resolution"].first() if "resolution" in done else pd.Series(dtype=float)
        detail = ", ".join(f"d={int(d)}: {resolution_text(r)}" for d, r in res.items()) if len(res) else ""
        lines.append("ΔE is compared across dimensions here: at the same n its finite-sample bias grows with d "
                     "(remappings up to the resolution read as 0" + (f"; resolution {detail}" if detail else "")
                     + "), so a lower ΔE at higher d may be the estimator, not the student.")
    if not keys:
        return [("", done)], lines
    names = {"n_eval": "n", "dim": "d"}
    groups = []
    for key, g in done.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        groups.append((", ".join(f"{names[k]} = {int(v)}" for k, v in zip(keys, key)), g))
    lines.append("ΔE was measured at different " + " and ".join(names[k] for k in keys)
                 + " across these cells; ΔE is not comparable across them, so each group is summarised separately.")
    return groups, lines
