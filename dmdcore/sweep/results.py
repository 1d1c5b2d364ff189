"""Results of a sweep: the results table, training curves, replicate statistics, the sweep list.

Everything here reads the run directories on disk (``DIR/sweep.json`` and ``DIR/cells/*``), so it
works on a sweep that is running, stopped, or was run by any executor.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dmdcore.sweep.jobs import FINISHED

# Columns of the results table taken from the last student evaluation row of metrics.csv.
METRIC_COLUMNS = ("delta_e", "delta_e_lo", "delta_e_hi", "e_pair", "e_ot", "e_ind", "w2", "w2_data",
                  "eta_teacher", "eta_student", "copy_rate", "retrieval",
                  "dim", "delta_e_twin", "delta_e_cross", "resolution", "delta_e_valid",
                  # plateau criterion at the last evaluation; ablation power (dmdcore.ablations)
                  "converged", "gan_dm_ratio", "memorization", "w2_teacher_data",
                  "w2_data_floor", "w2_floor", "copy_k")
# ... and the copy verdict's text columns (empty for runs made before it existed)
VERDICT_TEXT_COLUMNS = ("verdict", "verdict_basis")


def _manifest(out: Path) -> dict:
    """sweep.json of ``out`` as a dict with the fields the readers use; ValueError naming the
    file and the field when it is not valid JSON or not a sweep manifest."""
    p = out / "sweep.json"
    if not p.is_file():
        raise ValueError(f"out_dir: {str(out)!r} is not a sweep directory (no sweep.json)")
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise ValueError(f"sweep.json: {str(p)!r} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(man, dict):
        raise ValueError(f"sweep.json: {str(p)!r} holds a JSON {type(man).__name__}, not an object")
    spec, cells = man.get("spec"), man.get("cells")
    if not isinstance(spec, dict) or not isinstance(spec.get("grid", {}), dict):
        raise ValueError(f"sweep.json: {str(p)!r}: field spec is not an object with a grid")
    if not isinstance(cells, list) or not all(isinstance(c, dict) and isinstance(c.get("key"), str)
                                              and isinstance(c.get("overrides", {}), dict) for c in cells):
        raise ValueError(f"sweep.json: {str(p)!r}: field cells is not a list of {{key, overrides}} objects")
    return man


def _final_student_row(rows: list[dict]) -> dict:
    student = [r for r in rows if r.get("phase") == "student" and r.get("delta_e") is not None]
    return student[-1] if student else {}


def _last_wall(run) -> float | None:
    rows = run.read_timing()
    return float(rows[-1]["wall_s"]) if rows else None


def results_table(out_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per cell of the sweep in ``out_dir``, in grid order.

    Columns: ``cell``, one column per grid axis (named by its dotted key, or ``seed``),
    ``status``, ``message``, ``step``, ``n_eval`` (noises ΔE is computed on), ``wall_s`` (cell
    wall time in its worker, seconds), then the final student evaluation's METRIC_COLUMNS
    (``delta_e`` with its bootstrap CI ``delta_e_lo``/``delta_e_hi``, ``w2``, ``eta_teacher``,
    ``eta_student``, ``copy_rate`` …, and the copy verdict's ``dim``, ``delta_e_twin``,
    ``delta_e_cross``, ``resolution``, ``delta_e_valid``, ``verdict``, ``verdict_basis``; NaN /
    None where the cell has not finished an evaluation or predates the verdict), and ``run_dir``.
    """
    from dmdcore.runs import RunDir

    out = Path(out_dir)
    man = _manifest(out)
    axes = list(man["spec"]["grid"])
    rows = []
    for c in man["cells"]:
        run = RunDir(out / "cells" / c["key"])
        try:
            st = run.read_status() if run.path.is_dir() else None
            info = json.loads((run.path / "cell.json").read_text()) if (run.path / "cell.json").is_file() else {}
            info = info if isinstance(info, dict) else {}
            final = _final_student_row(run.read_metrics()) if run.path.is_dir() else {}
            n_eval = None
            if run.exists():
                n_eval = run.read_config().get("experiment", {}).get("eval", {}).get("n")
        except (ValueError, OSError, AttributeError) as exc:  # one bad cell never hides the others
            st, info, final, n_eval = {"status": "unreadable", "message": str(exc)}, {}, {}, None
        row = {"cell": c["key"]}
        row.update({a: c["overrides"].get(a) for a in axes})
        row.update({
            "status": (st or {}).get("status", "pending"),
            "message": (st or {}).get("message", ""),
            "step": (st or {}).get("step"),
            "n_eval": n_eval,
            # finished cells: the worker's wall time (cell.json); running ones: the time spent
            # in training steps so far (the last row of the run's timing.csv)
            "wall_s": info["wall_s"] if "wall_s" in info else (_last_wall(run) if run.path.is_dir() else None),
        })
        row.update({m: final.get(m) for m in METRIC_COLUMNS})
        row.update({m: final.get(m) for m in VERDICT_TEXT_COLUMNS})
        if final.get("n_eval") is not None:
            row["n_eval"] = final["n_eval"]  # what ΔE was actually measured on
        row["run_dir"] = str(run.path)
        rows.append(row)
    df = pd.DataFrame(rows)
    for m in (*METRIC_COLUMNS, "wall_s"):
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


def training_curves(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Long table of every cell's student evaluations: ``cell``, grid axes, ``step``,
    ``delta_e``, ``delta_e_lo``, ``delta_e_hi``, ``w2`` (one row per evaluation)."""
    from dmdcore.runs import RunDir

    out = Path(out_dir)
    man = _manifest(out)
    axes = list(man["spec"]["grid"])
    rows = []
    for c in man["cells"]:
        run = RunDir(out / "cells" / c["key"])
        for r in run.read_metrics() if run.path.is_dir() else []:
            if r.get("phase") != "student" or r.get("delta_e") is None:
                continue
            row = {"cell": c["key"], **{a: c["overrides"].get(a) for a in axes}}
            row.update({k: r.get(k) for k in ("step", "delta_e", "delta_e_lo", "delta_e_hi", "w2")})
            rows.append(row)
    cols = ["cell", *axes, "step", "delta_e", "delta_e_lo", "delta_e_hi", "w2"]
    return pd.DataFrame(rows, columns=cols)


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values, lo=None, hi=None) -> tuple[float, float, float, int]:
    """Mean and 95% CI of replicate values: Student-t interval over replicates when n ≥ 2;
    for a single value, its own bootstrap interval (``lo``, ``hi``) if given. Returns
    (mean, ci_low, ci_high, n)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n == 1:
        lo_v = float(lo[0]) if lo is not None and len(lo) and np.isfinite(lo[0]) else math.nan
        hi_v = float(hi[0]) if hi is not None and len(hi) and np.isfinite(hi[0]) else math.nan
        return (m, lo_v, hi_v, 1)
    half = _t_quantile(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return (m, m - half, m + half, n)


def aggregate(table: pd.DataFrame, x: str, by: list[str] | None = None, metric: str = "delta_e") -> pd.DataFrame:
    """Mean of ``metric`` over replicates for each (``by`` …, ``x``) with a 95% CI (see
    ``mean_ci``). Only finished cells count. Columns: *by, x, mean, ci_low, ci_high, n."""
    by = [b for b in (by or []) if b != x]
    done = table[(table["status"] == FINISHED) & table[metric].notna()]
    out_rows = []
    if done.empty:
        return pd.DataFrame(columns=[*by, x, "mean", "ci_low", "ci_high", "n"])
    keys = [*by, x]
    for key, g in done.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        lo = g[f"{metric}_lo"].to_numpy() if f"{metric}_lo" in g else None
        hi = g[f"{metric}_hi"].to_numpy() if f"{metric}_hi" in g else None
        m, a, b, n = mean_ci(g[metric].to_numpy(), lo, hi)
        out_rows.append({**dict(zip(keys, key)), "mean": m, "ci_low": a, "ci_high": b, "n": n})
    return pd.DataFrame(out_rows)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def list_sweeps(root: str | os.PathLike) -> list[dict]:
    """Sweeps stored as sub-directories of ``root`` (each with sweep.json and its run index),
    newest first: ``{"id", "name", "path", "state", "quick", "n_cells", "finished", "failed",
    "updated", "error"}``; counts come from the sweep's RunIndex. A sweep whose sweep.json or
    index.sqlite cannot be read is listed with state "unreadable" and the reason in ``error``
    (its id is the directory name); it never hides the others."""
    from dmdcore.runs import RunIndex

    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for p in root.glob("*/sweep.json"):
        try:
            man = _manifest(p.parent)
            recs = RunIndex(p.parent).list(sweep=man.get("id"), kind="experiment")
        except (ValueError, OSError) as exc:  # a bad sweep.json or index: listed as unreadable, never fatal
            found.append({"id": p.parent.name, "name": "", "path": str(p.parent), "state": "unreadable",
                          "quick": False, "n_cells": 0, "finished": 0, "failed": 0,
                          "updated": _mtime(p), "error": str(exc)})
            continue
        keys = {c["key"] for c in man["cells"]}
        recs = [r for r in recs if Path(r.path).name in keys]
        updated = man.get("updated", 0.0)
        found.append({
            "id": man.get("id") or p.parent.name, "name": man["spec"].get("name", ""), "path": str(p.parent),
            "state": man.get("state", ""), "quick": man.get("quick", False), "n_cells": len(keys),
            "finished": sum(r.status == FINISHED for r in recs),
            "failed": sum(r.status in ("failed", "diverged") for r in recs),
            "updated": updated if isinstance(updated, (int, float)) else 0.0, "error": "",
        })
    return sorted(found, key=lambda d: -d["updated"])
