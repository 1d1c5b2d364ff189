"""Sweep results the repository ships, so a fresh offline install shows measured claims.

A shipped result is one JSON file per preset under ``checkpoints/results/`` holding the sweep's
results table (``dmdcore.sweep.results_table``: one row per cell with its axes, the final
student evaluation's metrics and copy verdict) and where it came from (``meta``: the sweep's
name and variant, when it finished, its wall / CPU seconds, the code's commit, the machine).
``export`` writes one from a sweep directory; ``load`` reads one back as a DataFrame that
``dmdcore.claims.claim_board`` reads exactly as it reads a live sweep. Nothing on screen is typed
in: every number comes from the table, which came from the runs.

The files are plain JSON (never pickle). ``load`` treats them as untrusted: a size cap, a row cap,
scalar cells only, and every refusal is a ValueError naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "results"
# DMD_SHIPPED_RESULTS (read at call time) points the app at another directory, e.g. an empty one
ENV = "DMD_SHIPPED_RESULTS"
FORMAT = "dmdcore.results.v1"
MAX_BYTES = 4 * 1024 * 1024
MAX_ROWS = 5000
# bookkeeping that only makes sense on the machine that ran the sweep
_DROPPED = ("run_dir",)


def _scalar(v):
    """A results-table cell as a JSON value: numpy scalars unwrapped, NaN → null, ±∞ → "inf"."""
    if hasattr(v, "item") and not isinstance(v, (bool, int, float, str)):
        v = v.item()  # a numpy scalar
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else v  # JSON has no infinity (resolution ∞)
    return str(v)


def _commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def export(sweep_dir: str | os.PathLike, out: str | os.PathLike, *, wall_s: float | None = None,
           cpu_s: float | None = None, commit: str | None = None, note: str = "") -> dict:
    """Write the results of the sweep in ``sweep_dir`` to ``out`` (JSON); returns its meta.
    ``wall_s`` / ``cpu_s``: the sweep's measured times (e.g. from ``/usr/bin/time``); ``commit``:
    the code that ran it (default: this checkout's HEAD)."""
    from dmdcore.sweep.results import _manifest, results_table
    from dmdcore.sweep.spec import preset_of

    sweep_dir = Path(sweep_dir)
    man = _manifest(sweep_dir)
    table = results_table(sweep_dir).drop(columns=[c for c in _DROPPED], errors="ignore")
    name = man["spec"].get("name", "")
    updated = man.get("updated")
    meta = {
        "preset": preset_of(name), "sweep": name, "variant": "full" if name.endswith("-full") else "default",
        "quick": bool(man.get("quick", False)), "axes": list(man["spec"]["grid"]),
        "cells": len(man["cells"]), "teachers": len({c["teacher_key"] for c in man["cells"]}),
        "finished": int((table["status"] == "finished").sum()),
        "converged": int(((table["status"] == "finished") & (table["converged"] == 1)).sum())
        if "converged" in table else 0,
        "measured": time.strftime("%Y-%m-%d", time.gmtime(updated)) if isinstance(updated, (int, float)) else None,
        "wall_s": wall_s, "cpu_s": cpu_s,
        "commit": commit or _commit(Path(__file__).resolve().parent.parent),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "note": note,
    }
    doc = {"format": FORMAT, "meta": meta, "columns": [str(c) for c in table.columns],
           "rows": [[_scalar(v) for v in row] for row in table.itertuples(index=False, name=None)]}
    from dmdcore.fsutil import atomic_write_text

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(doc, indent=None, separators=(",", ":"), ensure_ascii=False) + "\n")
    return meta


def _bad(path, what: str) -> ValueError:
    return ValueError(f"shipped results {str(path)!r}: {what}")


def load(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """``(results table, meta)`` from a file ``export`` wrote. Raises ValueError (naming the file
    and what is wrong) on anything else: too large, not JSON, wrong format, non-scalar cells."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise _bad(path, f"{size} bytes, more than the {MAX_BYTES} a results file may have")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"'format' is not {FORMAT!r}")
    meta, cols, rows = doc.get("meta"), doc.get("columns"), doc.get("rows")
    if not isinstance(meta, dict) or not isinstance(meta.get("preset"), str):
        raise _bad(path, "'meta' must be an object with a 'preset' string")
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols) or len(set(cols)) != len(cols):
        raise _bad(path, "'columns' must be a list of distinct strings")
    for need in ("cell", "status", "delta_e"):
        if need not in cols:
            raise _bad(path, f"'columns' lacks {need!r}")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise _bad(path, f"'rows' must be a list of at most {MAX_ROWS} rows")
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != len(cols):
            raise _bad(path, f"rows[{i}] must be a list of {len(cols)} values")
        for c, v in zip(cols, r):
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise _bad(path, f"rows[{i}].{c} is a {type(v).__name__}, not a number, string or null")
    table = pd.DataFrame(rows, columns=cols)
    if "resolution" in table:  # ∞ was written as a string (JSON has no infinity)
        table["resolution"] = pd.to_numeric(table["resolution"].replace({"inf": math.inf, "-inf": -math.inf}),
                                            errors="coerce")
    return table, meta


def results_dir() -> Path:
    return Path(os.environ.get(ENV) or RESULTS_DIR)


def shipped(directory: str | os.PathLike | None = None) -> dict[str, tuple[pd.DataFrame, dict]]:
    """``{preset: (table, meta)}`` for every ``*.json`` in ``directory`` (default ``results_dir()``;
    none: {}). A file that cannot be read raises ValueError naming it (the repository ships
    these; a broken one is a bug to see, not to hide)."""
    out: dict[str, tuple[pd.DataFrame, dict]] = {}
    d = Path(directory) if directory is not None else results_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        table, meta = load(p)
        out[meta["preset"]] = (table, meta)
    return out


def describe(meta: dict) -> str:
    """One line saying where a shipped table came from."""
    parts = [f"shipped run of `{meta.get('sweep')}`"]
    if meta.get("measured"):
        parts.append(f"finished {meta['measured']}")
    parts.append(f"{meta.get('converged', '?')}/{meta.get('cells', '?')} cells converged")
    if isinstance(meta.get("wall_s"), (int, float)):
        parts.append(f"{meta['wall_s']:.0f} s wall")
    if meta.get("commit"):
        parts.append(f"commit {str(meta['commit'])[:7]}")
    if meta.get("note"):
        parts.append(str(meta["note"]))
    return ", ".join(parts)
