"""The claim board: each of the study's five claims, the preset that tests it, the answer our runs
give (with its CI and controls) and a status word — ``supported``, ``contradicted`` or
``inconclusive`` — with the reason.

``claim_board(tables)`` takes ``{preset name: sweep results table}`` (``dmdcore.sweep.
results_table``; a preset missing from the mapping has not been run). Only finished cells whose
last evaluation satisfied the plateau criterion (``converged`` = 1, dmdcore.convergence) count;
a table without that column was made by older code and is not read. Tests, per claim:

* **dimension** (ΔE falls with d): ΔE at the highest d against the lowest d (mean and 95% CI over
  replicates), both among the dimensions whose teachers are at the quality target
  (W₂²(T,data) ≤ ``TEACHER_QUALITY_MAX``× the data floor; others are left out and named, since
  there dimension is confounded with teacher quality); supported when the high-d interval lies
  below the low-d one, contradicted when above, else inconclusive.
* **gan** (copying not caused by the GAN): paired difference ΔE(GAN) − ΔE(no GAN) over the GAN
  levels whose GAN/DM gradient ratio is ≥ 0.1 (``gan_dm_ratio``; a GAN too weak to matter proves
  nothing); contradicted when its 95% CI lies below 0 (with the GAN students copy more);
  supported when it lies within ±``EQUIVALENCE`` (no effect, measured precisely) or above 0
  (with the GAN students copy less, so the GAN is not what makes them copy); else inconclusive.
* **memorization** (copying not caused by memorization): per dimension, the 100-sample teachers
  must memorize more than the 20000-sample ones (``memorization`` column, every converged cell);
  at the dimensions where they do, the paired difference of ΔE between them is read as for the
  GAN (cells whose ΔE cannot be read leave the claim inconclusive, and the reason says so).
* **convergence** (ΔE monotone in the teacher's training steps): the extreme levels' intervals
  separate and no neighbouring step goes against the overall direction → supported; a step
  against it whose two intervals separate → contradicted; a reversal within the intervals, or
  overlapping extremes → inconclusive.
* **freedom** (teacher-initialised students copy more): paired difference ΔE(teacher-init) −
  ΔE(random-full); supported when its CI lies below 0, contradicted when above, else inconclusive.
  The reason names the dimensions where no pair could be read and why (their random-full students
  not converged, or converged with ΔE not readable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmdcore.sweep.results import mean_ci

STATUSES = ("supported", "contradicted", "inconclusive")
EQUIVALENCE = 0.05        # |ΔE difference| below which two conditions count as equal
MIN_GAN_RATIO = 0.1       # a GAN level needs at least this GAN/DM gradient ratio to be read
TEACHER_QUALITY_MAX = 1.5  # W₂²(T, data) / data floor above this: the teacher is not at the quality target
NOT_RUN = "not yet run with the current code"


@dataclass(frozen=True)
class Claim:
    key: str
    preset: str
    text: str


CLAIMS = (
    Claim("dimension", "dimension", "Copying grows with dimension: ΔE well above 0 in low d, near 0 in high d."),
    Claim("gan", "adversarial", "Copying is not caused by the adversarial (GAN) loss."),
    Claim("memorization", "memorization", "Copying is not caused by teacher memorization (100 vs 20000 samples)."),
    Claim("convergence", "convergence", "Copying changes monotonically with how converged the teacher is."),
    Claim("freedom", "freedom", "Teacher-initialised students copy more (lower ΔE) than random-initialised ones."),
)


@dataclass(frozen=True)
class BoardRow:
    claim: str
    preset: str
    answer: str       # the measured answer with CI and n ("" when not run)
    controls: str     # controls / power checks behind it
    status: str       # one of STATUSES
    reason: str


def _fmt(m, lo, hi, n) -> str:
    if n == 0 or not math.isfinite(m):
        return "n = 0"
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) and math.isfinite(hi) else " (no CI)"
    return f"{m:+.3f}{ci}, n = {n}"


def _pairs(n: int) -> str:
    return "pair" if n == 1 else "pairs"


def usable(table: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """Finished, converged cells of a results table, or (None, reason)."""
    if table is None or len(table) == 0:
        return None, NOT_RUN
    if "converged" not in table or table["converged"].isna().all():
        return None, NOT_RUN + " (its runs predate the plateau criterion)"
    from dmdcore.sweep.verdicts import screen

    done = table[(table["status"] == "finished") & (table["converged"] == 1)]
    if len(done) == 0:
        return None, f"no converged cell ({len(table)} cells ran; raise the step cap)"
    done, _ = screen(done)  # and whose ΔE can be read (copy verdict not invalid / unresolved)
    if len(done) == 0:
        return None, "no converged cell whose ΔE can be read (verdicts invalid or unresolved)"
    return done, ""


def _paired(done: pd.DataFrame, axis: str, level, ref) -> pd.Series:
    keys = [c for c in done.columns if c not in _value_columns(done) and c != axis]
    a = done[done[axis] == level].set_index(keys)["delta_e"]
    b = done[done[axis] == ref].set_index(keys)["delta_e"]
    return (a - b).dropna()


def _value_columns(df: pd.DataFrame) -> set:
    from dmdcore.sweep.results import METRIC_COLUMNS

    # everything but the sweep's axes: metrics, bookkeeping and the verdict words (which differ
    # between the levels compared, so pairing on them matched no cell at all)
    return set(METRIC_COLUMNS) | {"cell", "status", "message", "step", "n_eval", "wall_s", "run_dir",
                                  "verdict", "verdict_basis"}


def _equal_test(diff: pd.Series, what: str) -> tuple[str, str, str]:
    """"Copying is not caused by X" from the paired ΔE difference (with X − without X): a CI
    below 0 (X lowers ΔE: students copy more with it) contradicts the claim; a CI within
    ±EQUIVALENCE (no effect), or above 0 (X makes students copy less, so it cannot be what makes
    them copy) supports it; otherwise inconclusive."""
    m, lo, hi, n = mean_ci(diff.to_numpy(float))
    ans = f"ΔE difference {what}: {_fmt(m, lo, hi, n)} {_pairs(n)}"
    if n < 2 or not math.isfinite(lo):
        return ans, "inconclusive", "fewer than 2 converged pairs"
    if hi < 0:
        return ans, "contradicted", "the 95% CI lies below 0: students copy more with it"
    if -EQUIVALENCE <= lo and hi <= EQUIVALENCE:
        return ans, "supported", f"the 95% CI lies within ±{EQUIVALENCE}: no effect on ΔE"
    if lo > 0:
        return ans, "supported", ("the 95% CI lies above 0: students copy less with it, so it is not "
                                  "what makes them copy")
    return ans, "inconclusive", f"the CI contains 0 but is wider than ±{EQUIVALENCE}"


def _dimension(done: pd.DataFrame) -> tuple[str, str, str, str]:
    """ΔE at the lowest against the highest d whose teachers are at the quality target; a d whose
    teachers are not is left out (and named), since there the axis is confounded with teacher
    quality. Fewer than two such d: inconclusive."""
    all_dims = sorted(done["data.dim"].unique())
    quality = {d: teacher_quality(done[done["data.dim"] == d]) for d in all_dims}
    off = [d for d in all_dims if not quality[d] <= TEACHER_QUALITY_MAX]
    dims = [d for d in all_dims if d not in off]
    off_txt = ", ".join(f"d={d} ({quality[d]:.1f}×)" if math.isfinite(quality[d]) else f"d={d} (not recorded)"
                        for d in off)
    ends = (dims[0], dims[-1]) if len(dims) >= 2 else (all_dims[0], all_dims[-1])
    controls = _controls(done) + "; teacher W₂²(T,data) / data floor " + ", ".join(
        f"d={d}: {quality[d]:.1f}×" for d in dict.fromkeys((*ends, *off)) if math.isfinite(quality[d]))
    if len(dims) < 2:
        lo_d, hi_d = ends
        a = mean_ci(done[done["data.dim"] == lo_d]["delta_e"].to_numpy(float))
        b = mean_ci(done[done["data.dim"] == hi_d]["delta_e"].to_numpy(float))
        ans = f"ΔE at d={lo_d}: {_fmt(*a)}; at d={hi_d}: {_fmt(*b)}"
        if len(all_dims) < 2:
            return ans, controls, "inconclusive", "fewer than 2 dimensions with converged cells"
        return ans, controls, "inconclusive", (
            f"teachers not at the quality target (W₂²(T,data) ≤ {TEACHER_QUALITY_MAX}× the data floor) at "
            + off_txt + ": the dimension axis is confounded with teacher quality")
    lo_d, hi_d = ends
    a = mean_ci(done[done["data.dim"] == lo_d]["delta_e"].to_numpy(float))
    b = mean_ci(done[done["data.dim"] == hi_d]["delta_e"].to_numpy(float))
    ans = f"ΔE at d={lo_d}: {_fmt(*a)}; at d={hi_d}: {_fmt(*b)}"
    left_out = (f"; left out: {off_txt}, teachers not at the quality target (W₂²(T,data) ≤ "
                f"{TEACHER_QUALITY_MAX}× the data floor)") if off else ""
    if a[3] < 2 or b[3] < 2:
        return ans, controls, "inconclusive", "fewer than 2 converged cells at the lowest or highest d" + left_out
    if b[2] < a[1]:
        return ans, controls, "supported", "high-d interval lies below the low-d one" + left_out
    if b[1] > a[2]:
        return ans, controls, "contradicted", "ΔE is higher at the highest d than at the lowest" + left_out
    return ans, controls, "inconclusive", "the intervals overlap" + left_out


def teacher_quality(cells: pd.DataFrame) -> float:
    """Mean W₂²(T, data) / W₂²(data, data′) (the data floor at the same n and d) of the cells'
    teachers: 1 = as close to the data as a second data sample; NaN when not recorded."""
    if len(cells) == 0 or "w2_data_floor" not in cells or "w2_teacher_data" not in cells:
        return math.nan
    r = cells["w2_teacher_data"].to_numpy(float) / cells["w2_data_floor"].to_numpy(float)
    r = r[np.isfinite(r)]
    return float(np.mean(r)) if r.size else math.nan


def _controls(done: pd.DataFrame) -> str:
    parts = []
    for col, label in (("delta_e_twin", "twin ΔE(T′,T)"), ("resolution", "resolution")):
        if col in done and done[col].notna().any():
            parts.append(f"{label} {np.nanmean(done[col].to_numpy(float)):.3f}")
    return "; ".join(parts) or "no twin controls in these runs"


def _gan(done: pd.DataFrame):
    powered = done[done["loss"].str.startswith("dmd+gan") & (done["gan_dm_ratio"] >= MIN_GAN_RATIO)]
    levels = sorted(powered["loss"].unique())
    if not levels:
        return "", "no GAN level reached GAN/DM ratio ≥ 0.1", "inconclusive", "the GAN had no measurable power"
    diffs = pd.concat([_paired(done[done["loss"].isin([lv, "dmd"])], "loss", lv, "dmd") for lv in levels])
    ans, status, reason = _equal_test(diffs, "GAN − no GAN")
    ratio = f"GAN/DM gradient ratio {powered['gan_dm_ratio'].min():.2f}–{powered['gan_dm_ratio'].max():.2f} in {', '.join(levels)}"
    return ans, ratio + "; " + _controls(done), status, reason


def _memorization(done: pd.DataFrame, conv: pd.DataFrame | None = None):
    """Per dimension: do the 100-sample teachers memorize more than the 20000-sample ones
    (scores from every converged cell, ``conv``), and where they do, the paired ΔE difference of
    the cells whose ΔE can be read (``done``)."""
    conv = done if conv is None else conv
    groups = sorted(conv["data.dim"].unique()) if "data.dim" in conv else [None]
    parts, memorizing = [], []
    for d in groups:
        g = conv if d is None else conv[conv["data.dim"] == d]
        ms = np.nanmean(g[g["data.n_samples"] == 100]["memorization"].to_numpy(float))
        ml = np.nanmean(g[g["data.n_samples"] == 20000]["memorization"].to_numpy(float))
        parts.append(("" if d is None else f"d={d}: ") + f"{ms:.3f} vs {ml:.3f}")
        if math.isfinite(ms) and math.isfinite(ml) and ms > ml + 0.1:
            memorizing.append(d)
    controls = "memorization score 100-sample vs 20000-sample " + "; ".join(parts)
    if not memorizing:
        return "", controls, "inconclusive", "the 100-sample teachers did not measurably memorize"
    read = done if memorizing == [None] else done[done["data.dim"].isin(memorizing)]
    where = "" if memorizing == [None] else " at " + ", ".join(f"d={d}" for d in memorizing)
    diffs = _paired(read, "data.n_samples", 100, 20000)
    ans, status, reason = _equal_test(diffs, "100 − 20000 samples" + where)
    if len(diffs) < 2:
        reason = (f"the 100-sample teachers memorize{where}, but fewer than 2 pairs there have a "
                  "readable ΔE (converged, verdict not invalid or unresolved)")
    return ans, controls + "; " + _controls(done), status, reason


def _convergence(done: pd.DataFrame):
    levels = sorted(done["teacher.steps"].unique())
    stats = [mean_ci(done[done["teacher.steps"] == lv]["delta_e"].to_numpy(float)) for lv in levels]
    ans = "; ".join(f"{lv} steps: {s[0]:.3f}" for lv, s in zip(levels, stats))
    controls = "teacher W₂²(T,data) " + ", ".join(
        f"{np.nanmean(done[done['teacher.steps'] == lv]['w2_teacher_data'].to_numpy(float)):.3f}" for lv in levels)
    if len(levels) < 3 or any(s[3] < 2 for s in stats):
        return ans, controls, "inconclusive", "fewer than 3 levels with 2 converged cells"
    first, last = stats[0], stats[-1]
    up = last[0] > first[0]
    separated = last[1] > first[2] or last[2] < first[1]
    # a step between neighbouring levels against the overall direction is a reversal; it counts
    # only when the two levels' CIs separate (a dip within the CIs is not evidence)
    reversals, significant = [], []
    for (la, a), (lb, b) in zip(zip(levels, stats), zip(levels[1:], stats[1:])):
        if (b[0] < a[0]) == up and b[0] != a[0]:
            reversals.append(f"{la}→{lb} steps")
            if (up and b[2] < a[1]) or (not up and b[1] > a[2]):
                significant.append(f"{la}→{lb} steps")
    if significant:
        return ans, controls, "contradicted", "ΔE reverses direction beyond the CIs at " + ", ".join(significant)
    if separated and not reversals:
        return ans, controls, "supported", "level means monotone and the extremes' CIs separate"
    if separated:
        return ans, controls, "inconclusive", ("the extremes' CIs separate but ΔE reverses within the CIs at "
                                               + ", ".join(reversals))
    return ans, controls, "inconclusive", "the extreme levels' CIs overlap"


def _freedom(done: pd.DataFrame, table: pd.DataFrame | None = None):
    ref = "random-full" if (done["student"] == "random-full").any() else "random-init"
    diff = _paired(done, "student", "teacher-init", ref)
    m, lo, hi, n = mean_ci(diff.to_numpy(float))
    ans = f"ΔE(teacher-init) − ΔE({ref}): {_fmt(m, lo, hi, n)} {_pairs(n)}"
    controls = _controls(done)
    where = _unpaired_dims(diff, done, table, ref)
    if n < 2 or not math.isfinite(lo):
        return ans, controls, "inconclusive", "fewer than 2 converged pairs" + where
    if hi < 0:
        return ans, controls, "supported", "the 95% CI lies below 0" + where
    if lo > 0:
        return ans, controls, "contradicted", "teacher-initialised students copy less" + where
    return ans, controls, "inconclusive", "the CI contains 0" + where


def _unpaired_dims(diff: pd.Series, done: pd.DataFrame, table: pd.DataFrame | None, ref: str) -> str:
    """Where the paired test could not look: the dimensions with a readable teacher-init cell but
    no pair, and why the ``ref`` students there are out (not converged, or ΔE not readable), so a
    reader sees that an answer from low d says nothing about high d."""
    if "data.dim" not in done.columns or "data.dim" not in (diff.index.names or []):
        return ""
    paired = set(diff.index.get_level_values("data.dim"))
    missing = sorted(set(done.loc[done["student"] == "teacher-init", "data.dim"]) - paired)
    if not missing:
        return ""
    dims = lambda ds: ", ".join(f"d={d:g}" for d in ds)  # noqa: E731
    out = f"; pairs only at {dims(sorted(paired))}" if paired else "; no pairs"
    out += f"; no converged {ref} student with a readable ΔE at {dims(missing)}"
    if table is not None and {"student", "data.dim", "converged", "status"} <= set(table.columns):
        there = table[(table["student"] == ref) & table["data.dim"].isin(missing)]
        not_conv = int(((there["status"] != "finished") | (there["converged"] != 1)).sum())
        unread = len(there) - not_conv
        out += f" ({not_conv} not converged, {unread} converged with ΔE not readable)"
    return out


_TESTS = {"dimension": _dimension, "gan": _gan, "memorization": _memorization,
          "convergence": _convergence, "freedom": _freedom}


def claim_board(tables: dict) -> list[BoardRow]:
    """One BoardRow per claim in CLAIMS from ``{preset: results table}`` (see module docstring)."""
    rows = []
    for c in CLAIMS:
        table = tables.get(c.preset)
        done, why = usable(table)
        if done is None:
            rows.append(BoardRow(c.text, c.preset, "", "", "inconclusive", why))
            continue
        if c.key == "memorization":  # its power check reads every converged cell, readable or not
            conv = table[(table["status"] == "finished") & (table["converged"] == 1)]
            ans, controls, status, reason = _memorization(done, conv)
        elif c.key == "freedom":  # says why the dimensions without a pair have none
            ans, controls, status, reason = _freedom(done, table)
        else:
            ans, controls, status, reason = _TESTS[c.key](done)
        rows.append(BoardRow(c.text, c.preset, ans, controls, status, reason))
    return rows


def board_markdown(rows: list[BoardRow]) -> str:
    """The board as a markdown table (the opening table of docs/experiments.md)."""
    head = "| claim | preset | measured answer (95% CI, n) | controls | status | reason |"
    out = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.claim, f"`{r.preset}`", r.answer or "—", r.controls or "—", f"**{r.status}**", r.reason]
        out.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    return "\n".join(out)


def tables_from_sweeps(root) -> dict:
    """``{preset: results table}`` from the sweeps under ``root`` (``dmdcore.sweep.list_sweeps``):
    the newest non-quick sweep of each preset (":full" counts as its preset; quick sweeps are
    smoke tests and are not evidence)."""
    from dmdcore.sweep.results import list_sweeps, results_table
    from dmdcore.sweep.spec import preset_of

    tables: dict = {}
    for s in list_sweeps(root):  # newest first
        name = preset_of(s.get("name", ""))
        if s.get("quick") or name in tables or name not in {c.preset for c in CLAIMS}:
            continue
        tables[name] = results_table(s["path"])
    return tables


def tables_with_sources(root, shipped_dir=None) -> tuple[dict, dict]:
    """``({preset: results table}, {preset: where it came from})``: the newest non-quick sweep of
    each preset under ``root`` (``tables_from_sweeps``); a preset without one falls back to the
    results the repository ships (``dmdcore.shipped_results``, ``shipped_dir`` or its default),
    so a fresh install shows what was measured, and says so."""
    from dmdcore import shipped_results as sr
    from dmdcore.sweep.results import list_sweeps
    from dmdcore.sweep.spec import preset_of

    tables = tables_from_sweeps(root)
    sources = {}
    for s in list_sweeps(root):  # newest first, as tables_from_sweeps chose
        name = preset_of(s.get("name", ""))
        if name in tables and name not in sources and not s.get("quick"):
            sources[name] = f"your sweep `{s.get('name')}` ({s.get('path')})"
    for preset, (table, meta) in sr.shipped(shipped_dir).items():
        if preset not in tables and preset in {c.preset for c in CLAIMS}:
            tables[preset] = table
            sources[preset] = sr.describe(meta)
    return tables, sources


def board_frame(rows: list[BoardRow], sources: dict | None = None) -> pd.DataFrame:
    """The board as a table for display (status in its own column; ``sources``: where each
    preset's table came from, shown in a last column when given)."""
    out = pd.DataFrame([{"claim": r.claim, "preset": r.preset, "measured answer (95% CI, n)": r.answer,
                         "controls": r.controls, "status": r.status, "reason": r.reason} for r in rows])
    if sources is not None:
        out["source"] = [sources.get(r.preset, "not run") for r in rows]
    return out
