"""Words for a copy verdict: the same sentences on every page, in the CLI and in the docs.

Everything takes a *metrics row* (a dict with the metrics.csv columns, see
``dmdcore.verdict.report_row``) or a ``CopyReport``; rows of runs made before the verdict existed
lack the control columns and read as "controls absent".  No streamlit here (ui/verdict.py renders).
"""

from __future__ import annotations

import math
from typing import Any

VERDICT_LABELS = {
    "copies": "copies its own teacher",
    "same_map": "same map as any model of this data",
    "remaps": "remaps",
    "partial": "partially remaps",
    "unresolved": "unresolved at this n and d",
    "invalid": "ΔE not meaningful yet",
}


def as_row(src: Any) -> dict:
    """A metrics-row dict from a row or a CopyReport (references and ladder kept when present)."""
    if isinstance(src, dict):
        return src
    from dmdcore.verdict import LADDER, report_row

    row = report_row(src)
    row.update(references=dict(src.references), reference_population=dict(src.reference_population),
               ladder=tuple(src.ladder), reasons=list(src.reasons), bound=src.bound, ladder_top=LADDER[-1])
    return row


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if not math.isnan(f) else None


def fmt(x: Any, nd: int = 3) -> str:
    f = _num(x)
    return "—" if f is None else ("inf" if math.isinf(f) else f"{f:.{nd}f}")


def resolution_text(res: Any) -> str:
    """'0.05', '< 0.02' (every rung resolved) or '> 0.25' (none resolved)."""
    from dmdcore.verdict import LADDER

    f = _num(res)
    if f is None:
        return "absent"
    if f == 0:
        return f"< {LADDER[0]:.2f}"
    if math.isinf(f):
        return f"> {LADDER[-1]:.2f}"
    return f"{f:.2f}"


def has_controls(row: dict) -> bool:
    """Whether the row was written with the copy verdict (new columns present)."""
    return row.get("verdict") not in (None, "")


def headline(row: dict) -> str:
    """'ΔE 0.040 [0.031, 0.052] · n = 1024 · d = 64' (n/d 'unknown' in old rows)."""
    de = _num(row.get("delta_e"))
    if de is None:
        return "ΔE undefined"
    ci = ""
    if _num(row.get("delta_e_lo")) is not None and _num(row.get("delta_e_hi")) is not None:
        ci = f" [{fmt(row['delta_e_lo'])}, {fmt(row['delta_e_hi'])}]"
    n = row.get("n_eval")
    d = row.get("dim")
    return f"ΔE {de:.3f}{ci} · n = {n if n is not None else 'unknown'} · d = {d if d is not None else 'unknown'}"


def verdict_label(row: dict) -> str:
    v = row.get("verdict")
    if not has_controls(row):
        return "no verdict (run made before the copy verdict: controls absent)"
    if v == "copies" and _num(row.get("delta_e_twin")) is None:
        return "copies (no twin: this teacher vs any model not separated)"
    return VERDICT_LABELS.get(v, str(v))


def control_lines(row: dict) -> list[str]:
    """The controls beside ΔE, one line each ('absent' where the run has none)."""
    if not has_controls(row):
        return ["controls absent: this run predates the copy verdict (no twin, references or resolution)"]
    twin = row.get("delta_e_twin")
    lines = [
        f"independent teacher: ΔE(T′,T) = {fmt(twin)}, ΔE(S,T′) = {fmt(row.get('delta_e_cross'))}"
        if _num(twin) is not None else "independent teacher: absent (no twin for this teacher)",
        _resolution_line(row),
    ]
    refs = row.get("references")
    if refs:
        pops = row.get("reference_population", {})
        parts = [f"{k.replace('_', ' ')} {fmt(v)}" + (f" (population {fmt(pops[k])})" if k in pops and k != "copy" else "")
                 for k, v in refs.items()]
        lines.append("reference students read: " + "; ".join(parts))
    return lines


def _resolution_line(row: dict) -> str:
    from dmdcore.verdict import LADDER

    res = _num(row.get("resolution"))
    at = f"at n = {row.get('n_eval')}, d = {row.get('dim')}"
    if res is None:
        return "resolution: absent"
    if res == 0:
        return f"resolution: every reference remapping down to population ΔE {LADDER[0]:.2f} is seen {at}"
    if math.isinf(res):
        return f"resolution: even a remapping with population ΔE {LADDER[-1]:.2f} reads as 0 {at}"
    return f"resolution: remappings with population ΔE up to {res:.2f} read as 0 {at}"


def companion_lines(row: dict, n_modes: int | None = None) -> list[str]:
    """Copy rate and pair retrieval with their chance levels, and why they may disagree with ΔE."""
    out = []
    n = row.get("n_eval")
    cr, rt = _num(row.get("copy_rate")), _num(row.get("retrieval"))
    if n_modes is None and _num(row.get("copy_k")):
        n_modes = int(_num(row.get("copy_k")))  # the K the run scored its copy rate on
    if cr is not None:
        chance = f"{1.0 / n_modes:.3f} with {n_modes} equal modes" if n_modes else "1/K for K equal modes"
        out.append(f"copy rate {cr:.3f} (chance {chance})")
    if rt is not None:
        out.append(f"pair retrieval {rt:.3f} (chance {fmt(1.0 / n, 4) if n else '1/n'})")
    note = disagreement(row, n_modes)
    if note:
        out.append(note)
    return out


def disagreement(row: dict, n_modes: int | None = None) -> str | None:
    """A sentence when copy rate / retrieval and ΔE point different ways, else None."""
    de, cr, rt = _num(row.get("delta_e")), _num(row.get("copy_rate")), _num(row.get("retrieval"))
    v = row.get("verdict")
    if de is None:
        return None
    if cr is not None and cr > 0.9 and de > 0.1:
        return ("copy rate is high while ΔE is not small: the student keeps each noise's mode but moves it "
                "within the mode — copy rate only sees mode membership, ΔE sees positions.")
    if rt is not None and rt > 0.5 and v in ("unresolved", "partial") and de < 0.1:
        return ("pair retrieval is high while the verdict is not a copy: in high d each S(z) is nearest to its own "
                "T(z) long before the pairing is resolved — retrieval and ΔE both saturate; the resolution says how far.")
    if cr is not None and n_modes and cr < 2.0 / n_modes and de < 0.1 and v != "invalid":
        return ("copy rate is near chance while ΔE is small: the modes (k-means or true centres) may not match the "
                "student's samples; ΔE compares whole positions.")
    return None


def cli_lines(row: dict) -> list[str]:
    """What `runs show` and `distill` print for a metrics row."""
    lines = [f"{headline(row)} · verdict: {verdict_label(row)}"]
    if has_controls(row):
        if not row.get("delta_e_valid"):
            lines.append("  ΔE not meaningful yet: " + str(row.get("verdict_basis") or ""))
        else:
            lines.append("  because: " + str(row.get("verdict_basis") or ""))
    lines += ["  " + x for x in control_lines(row)]
    lines += ["  " + x for x in companion_lines(row)]
    return lines
