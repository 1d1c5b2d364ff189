"""The written summary of a sweep: plain sentences computed from its results table.

For each swept axis: the trend over a numeric axis (endpoints with 95% CIs, Spearman ρ), or the
paired difference of each level to the reference level with its CI, sign count and the same per
level of every other axis (an effect whose sign flips between levels pools to ~0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dmdcore.sweep.jobs import FINISHED
from dmdcore.sweep.results import METRIC_COLUMNS, VERDICT_TEXT_COLUMNS, aggregate, mean_ci
from dmdcore.sweep.spec import is_replicate_axis


def _is_numeric_axis(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _fmt(v: float) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _fmt_ci(m, lo, hi, n) -> str:
    ci = f"95% CI {_fmt(lo)} to {_fmt(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "no CI"
    return f"{_fmt(m)} ({ci}, n = {n})"


def _verdict(lo: float, hi: float) -> str:
    return ("the interval excludes 0" if (lo > 0 or hi < 0)
            else "the interval contains 0 (no detectable effect at this n)")


def _sign_count(diff: np.ndarray, label: str) -> str:
    """'ΔE lower in k of n pairs (higher in j, equal in e; two-sided sign test p = …)'."""
    lower, higher = int((diff < 0).sum()), int((diff > 0).sum())
    n = len(diff)
    text = f"{label} lower in {lower} of {n} pairs"
    extra = [f"higher in {higher}"] if higher else []
    if n - lower - higher:
        extra.append(f"equal in {n - lower - higher}")
    if lower + higher >= 2:
        from scipy import stats

        p = float(stats.binomtest(lower, lower + higher, 0.5).pvalue)
        extra.append(f"two-sided sign test p = {p:.3f}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _ordered_levels(col: pd.Series) -> list:
    """Distinct values of a column: sorted when numeric or boolean, else in order of appearance."""
    vals = list(dict.fromkeys(col.tolist()))
    if all(isinstance(v, (bool, np.bool_)) for v in vals) or _is_numeric_axis(vals):
        return sorted(vals)
    return vals


def summarize(table: pd.DataFrame, axes: list[str] | None = None, metric: str = "delta_e") -> str:
    """A short written summary of what the measured numbers show, computed from ``table``.

    For each swept axis (except replicate axes ``seed`` / ``*.seed``): a numeric axis with ≥ 3
    levels → ΔE at the lowest and highest level (mean, 95% CI, n) per combination of the other
    axes plus the Spearman rank correlation of ΔE with the axis over cells; any other axis → for
    each level, the mean paired difference to the reference level (False for booleans, else the
    first level), matched on all other axes and the replicate axes, with its 95% t-interval, whether it
    excludes 0 and a sign count ("lower in k of n pairs", two-sided sign test); then the same paired
    difference separately at each level of every other non-replicate axis (pooling hides effects
    whose sign or size differs between those levels), and a sentence when the per-level intervals
    exclude 0 on opposite sides.
    Returns markdown-free plain sentences separated by newlines.
    """
    if axes is None:
        fixed = {"cell", "status", "message", "step", "n_eval", "wall_s", "run_dir", *METRIC_COLUMNS,
                 *VERDICT_TEXT_COLUMNS}
        axes = [c for c in table.columns if c not in fixed]
    done = table[(table["status"] == FINISHED) & table[metric].notna()] if len(table) else table
    n_total = len(table)
    label = "ΔE" if metric == "delta_e" else metric
    if len(done) == 0:
        return f"No cell has finished yet (0 of {n_total}): nothing to summarise."
    # copy verdicts: unreadable cells (invalid / below resolution) are left out, and cells measured
    # at different n (or d) are summarised separately, never pooled silently (sweep/verdicts.py)
    from dmdcore.sweep.verdicts import pool_groups, screen

    n_finished = len(done)
    done, lines = screen(done)
    if len(done) == 0:
        lines.insert(0, f"{n_finished} of {n_total} cells finished, none with a readable ΔE: nothing to summarise.")
    else:
        groups, pool_lines = pool_groups(done, axes)
        lines += pool_lines
        for name, g in groups:
            body = _summary_body(g, n_total, axes, metric, label)
            lines += [f"[{name}] {x}" for x in body] if name else body
    failed = table[table["status"].isin(["failed", "diverged", "stopped"])]
    if len(failed):
        lines.append(f"{len(failed)} cell(s) did not finish ({', '.join(sorted(set(failed['status'])))}); "
                     "they are left out of the numbers above.")
    return "\n".join(lines)


def _summary_body(done: pd.DataFrame, n_total: int, axes: list[str], metric: str, label: str) -> list[str]:
    """The summary sentences of cells measured alike (see summarize)."""
    n_eval = done["n_eval"].dropna()
    lines = [
        f"{len(done)} of {n_total} cells finished with a readable ΔE; ΔE ranges from {_fmt(done[metric].min())} "
        f"to {_fmt(done[metric].max())} (mean {_fmt(done[metric].mean())})"
        + (f", each ΔE computed on n = {int(n_eval.iloc[0])} noise vectors." if len(n_eval) and n_eval.nunique() == 1 else ".")
    ]
    swept = [a for a in axes if not is_replicate_axis(a) and a in done and done[a].astype(str).nunique() > 1]
    replicates = [a for a in axes if is_replicate_axis(a) and a in done]
    for axis in swept:
        others = [a for a in swept if a != axis]
        levels = list(dict.fromkeys(done[axis].tolist()))
        if _is_numeric_axis(levels) and len(levels) >= 3:
            lines.extend(_trend_lines(done, axis, others, metric, label))
        else:
            lines.extend(_paired_lines(done, axis, levels, others, replicates, metric, label))
    return lines


def _trend_lines(done: pd.DataFrame, axis: str, others: list[str], metric: str, label: str) -> list[str]:
    """Numeric axis with ≥ 3 levels: endpoints (mean, CI, n) and Spearman ρ per combination of
    the other axes (at most 6 combinations)."""
    lines = []
    agg = aggregate(done, axis, others, metric)
    groups = agg.groupby(others, sort=True) if others else [((), agg)]
    for gkey, g in list(groups)[:6]:
        g = g.sort_values(axis)
        a, b = g.iloc[0], g.iloc[-1]
        cond = ""
        if others:
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            cond = " [" + ", ".join(f"{o}={v}" for o, v in zip(others, gkey)) + "]"
        if len(g) < 2:  # the other levels' cells were all left out: no trend to state
            lines.append(f"{label} is readable only at {axis}={a[axis]:g}{cond}: "
                         f"{_fmt_ci(a['mean'], a['ci_low'], a['ci_high'], int(a['n']))}; no trend over {axis}.")
            continue
        cells = done
        for o, v in zip(others, gkey if others else ()):
            cells = cells[cells[o] == v]
        rho = _spearman(cells[axis].to_numpy(float), cells[metric].to_numpy(float))
        direction = "rose" if b["mean"] > a["mean"] else "fell"
        hi_row, lo_row = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
        overlap = (np.isfinite([a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"]]).all()
                   and not (a["ci_high"] < b["ci_low"] or b["ci_high"] < a["ci_low"]))
        lines.append(
            f"{label} {direction} from {_fmt_ci(a['mean'], a['ci_low'], a['ci_high'], int(a['n']))} at "
            f"{axis}={a[axis]:g} to {_fmt_ci(b['mean'], b['ci_low'], b['ci_high'], int(b['n']))} at "
            f"{axis}={b[axis]:g}{cond}; Spearman ρ = {_fmt(rho)} over {len(cells)} cells; the endpoint CIs "
            + ("overlap" if overlap else "do not overlap")
            + (f"; highest mean {_fmt(hi_row['mean'])} at {axis}={hi_row[axis]:g}, lowest "
               f"{_fmt(lo_row['mean'])} at {axis}={lo_row[axis]:g}." if len(g) >= 3 else ".")
        )
    return lines


def _paired_lines(done: pd.DataFrame, axis: str, levels: list, others: list[str], replicates: list[str],
                  metric: str, label: str) -> list[str]:
    """Categorical / two-level axis: paired difference of each level to the reference level
    (False for booleans, else the first level in grid order), matched on all other axes and the
    seed; pooled over the other axes, then separately at each level of each one (an effect whose
    sign flips between levels pools to ~0)."""
    lines = []
    if all(isinstance(v, (bool, np.bool_)) for v in levels):
        levels = sorted(levels)
    ref = levels[0]
    match = [*others, *replicates]
    piv = done.pivot_table(index=match, columns=axis, values=metric, aggfunc="mean") if match else None
    for lv in levels[1:6]:
        if piv is not None:
            diffs = (piv[lv] - piv[ref]).dropna() if (lv in piv and ref in piv) else pd.Series(dtype=float)
            diff = diffs.to_numpy(dtype=np.float64)
            # the level means over the matched pairs only, so that their difference is the mean
            # paired difference (means over all cells mix in cells of other configurations)
            m_ref = float(piv.loc[diffs.index, ref].mean()) if len(diff) else float("nan")
            m_lv = float(piv.loc[diffs.index, lv].mean()) if len(diff) else float("nan")
        else:
            m_ref = done[done[axis] == ref][metric].mean()
            m_lv = done[done[axis] == lv][metric].mean()
            diffs, diff = None, np.array([m_lv - m_ref])
        if len(diff) >= 2:
            m, lo, hi, n = mean_ci(diff)
            lines.append(
                f"Switching {axis} from {ref} to {lv} changed {label} by {m:+.3f} on average "
                f"(95% CI {lo:+.3f} to {hi:+.3f}, n = {n} matched pairs; means {_fmt(m_ref)} vs "
                f"{_fmt(m_lv)} over those pairs); {_verdict(lo, hi)}; {_sign_count(diff, label)}."
            )
        elif len(diff) == 1:
            where = "the one matched pair" if piv is not None else "the one cell of each"
            lines.append(f"{label} was {_fmt(m_ref)} with {axis}={ref} and {_fmt(m_lv)} with {axis}={lv} in "
                         f"{where} ({diff[0]:+.3f}): too few for a CI.")
        else:
            lines.append(f"No finished cell with {axis}={lv} has a counterpart with {axis}={ref} at the same "
                         f"{', '.join(match)}: not compared.")
        if diffs is None or len(diff) == 0:
            continue
        for o in others:
            lines.extend(_per_level_lines(done, diffs, axis, ref, lv, o, label))
    return lines


def _per_level_lines(done: pd.DataFrame, diffs: pd.Series, axis: str, ref, lv, o: str, label: str) -> list[str]:
    """The paired difference ``ref`` → ``lv`` of ``axis`` at each level of the other axis ``o``,
    and a sentence when the per-level intervals exclude 0 on opposite sides."""
    lines, per_level = [], []
    for v in _ordered_levels(done[o]):
        d = diffs[diffs.index.get_level_values(o) == v].to_numpy(dtype=np.float64)
        if len(d) == 0:
            continue
        if len(d) >= 2:
            m, lo, hi, n = mean_ci(d)
            per_level.append((v, m, lo, hi))
            lines.append(
                f"At {o}={v}: switching {axis} from {ref} to {lv} changed {label} by {m:+.3f} "
                f"(95% CI {lo:+.3f} to {hi:+.3f}, n = {n} matched pairs); {_verdict(lo, hi)}; "
                f"{_sign_count(d, label)}.")
        else:
            lines.append(
                f"At {o}={v}: switching {axis} from {ref} to {lv} changed {label} by {d[0]:+.3f} "
                f"(n = 1 matched pair: too few for a CI).")
    up = [x for x in per_level if x[2] > 0]
    down = [x for x in per_level if x[3] < 0]
    if up and down:
        lines.append(
            f"The effect of switching {axis} from {ref} to {lv} reverses sign across {o}: "
            f"{label} higher at "
            + ", ".join(f"{o}={x[0]} ({x[1]:+.3f})" for x in up) + " and lower at "
            + ", ".join(f"{o}={x[0]} ({x[1]:+.3f})" for x in down)
            + " (95% CIs exclude 0), so the pooled average hides both.")
    return lines


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan  # too few points, or a constant input: ρ is not defined
    from scipy import stats

    r = stats.spearmanr(x[ok], y[ok]).statistic
    return float(r)
