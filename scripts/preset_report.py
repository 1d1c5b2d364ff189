"""Markdown report of finished sweeps, as printed in docs/experiments.md.

    python scripts/preset_report.py runs/sweeps/dim [more sweep dirs ...]
    python scripts/preset_report.py --board [sweep dirs ...]   # the claim board (dmdcore.claims)
    python scripts/preset_report.py --board --shipped [dirs]   # ... presets without a dir from checkpoints/results/

    python scripts/preset_report.py --export checkpoints/results/dimension.json --time T DIR
        # ship DIR's results table (dmdcore.shipped_results); T: `/usr/bin/time -f "%U %S %e"` output

``--board`` prints the claim board that opens docs/experiments.md: each sweep directory's preset
(the name in its sweep.json, ":full" stripped) feeds its claim; a preset with no directory, or
runs made before the plateau criterion, is "inconclusive: not yet run with the current code".
With ``--shipped``, a preset with no directory is read from the results the repository ships
(``checkpoints/results/``, ``dmdcore.shipped_results``) instead, as the dashboard does on a
fresh install; the board in docs/experiments.md is printed this way.

For each sweep directory: a table with one row per grid point over the non-seed axes — how many
cells reached the plateau criterion (converged / finished) and their mean step count; ΔE mean with
a Student-t 95% CI over replicate seeds and n, over all finished cells, and the mean over the
converged ones only (the only cells verdicts and the claim board read); ΔE at the student's step 0
(the teacher copy before any DMD step); the controls ΔE(T′,T) and resolution; W₂²(S,T); the
teacher's W₂²(T,data) over the data floor W₂²(data,data′); the GAN/DM gradient ratio and the
memorization score where the sweep records them; the verdict counts; mean cell wall time — then
the summary that ``dmdcore.sweep.summarize`` writes. Every number is read from the sweep's own
run directories.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmdcore import sweep as sw  # noqa: E402
from dmdcore.runs import RunDir  # noqa: E402
from dmdcore.sweep.spec import preset_of  # noqa: E402




def _float(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return np.nan
    return f if np.isfinite(f) else np.nan


def cell_frame(out: Path) -> pd.DataFrame:
    man = json.loads((out / "sweep.json").read_text())
    table = sw.results_table(out)
    step0 = []
    for c in man["cells"]:
        rows = [r for r in RunDir(out / "cells" / c["key"]).read_metrics() if r.get("phase") == "student"]
        first = next((r for r in rows if int(r["step"]) == 0), None)
        step0.append(_float(first.get("delta_e")) if first else np.nan)
    table["delta_e_step0"] = step0
    return table


def _mean(g: pd.DataFrame, col: str, fmt: str = "{:.3f}") -> str:
    if col not in g:
        return "—"
    v = np.nanmean(g[col].to_numpy(float)) if g[col].notna().any() else np.nan
    if v == np.inf:  # resolution: no reference remapping was resolved at this n and d
        return "∞"
    return fmt.format(v) if np.isfinite(v) else "—"


def _verdicts(g: pd.DataFrame) -> str:
    if "verdict" not in g:
        return "—"
    counts = g["verdict"].fillna("—").astype(str).value_counts()
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# extra columns shown when a sweep has them (the ablation presets' power checks)
EXTRA = {"gan_dm_ratio": "GAN/DM ratio", "memorization": "memorization"}


def report(out: Path) -> str:
    man = json.loads((out / "sweep.json").read_text())
    spec = man["spec"]
    axes = [a for a in spec["grid"] if not sw.is_replicate_axis(a)]
    t = cell_frame(out)
    t = t[t["status"] == "finished"]
    if "w2_data_floor" in t and "w2_teacher_data" in t:
        t["teacher_quality"] = t["w2_teacher_data"].to_numpy(float) / t["w2_data_floor"].to_numpy(float)
    conv = t["converged"].fillna(0).astype(float) > 0 if "converged" in t else pd.Series(False, index=t.index)
    lines = [f"### `{spec['name']}` — {len(man['cells'])} cells, "
             f"{len({c['teacher_key'] for c in man['cells']})} teachers", ""]
    if spec.get("claim"):
        lines += [f"*Claim tested:* {spec['claim']}", ""]
    lines += ["Grid: " + "; ".join(f"`{k}` ∈ {json.dumps(v)}" for k, v in spec["grid"].items()), ""]
    extra = [c for c in EXTRA if c in t and t[c].notna().any()]
    head = [*axes, "converged", "steps", "ΔE (all finished) mean [95% CI], n", "ΔE converged only",
            "ΔE at step 0", "ΔE(T′,T)", "resolution", "W₂²(S,T)", "W₂²(T,data) / data floor",
            *(EXTRA[c] for c in extra), "verdicts", "cell s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = t.groupby(axes, sort=False, dropna=False) if axes else [((), t)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        gc = g[conv.loc[g.index]]
        m, lo, hi, n = sw.mean_ci(g["delta_e"].to_numpy(float), g["delta_e_lo"].to_numpy(float),
                                  g["delta_e_hi"].to_numpy(float))
        mc = np.nanmean(gc["delta_e"].to_numpy(float)) if len(gc) else np.nan
        vals = [*(str(k) for k in key), f"{len(gc)}/{len(g)}", _mean(g, "step", "{:.0f}"),
                f"{m:.3f} [{lo:.3f}, {hi:.3f}], {n}", f"{mc:.3f}" if np.isfinite(mc) else "—",
                _mean(g, "delta_e_step0"), _mean(g, "delta_e_twin"), _mean(g, "resolution", "{:.2f}"),
                _mean(g, "w2"), _mean(g, "teacher_quality", "{:.2f}×"),
                *(_mean(g, c) for c in extra), _verdicts(g), _mean(g, "wall_s", "{:.0f}")]
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", "Summary written by `dmdcore.sweep.summarize` from these runs:", ""]
    summary = sw.summarize(sw.results_table(out), list(spec["grid"]))
    lines += ["> " + line if line else ">" for line in summary.splitlines()]
    return "\n".join(lines)


def board(dirs: list[Path], shipped_dir: Path | None = None) -> str:
    """The claim board of ``dirs``; with ``shipped_dir``, presets without a directory are read from
    the results shipped there."""
    from dmdcore import claims
    from dmdcore import shipped_results as sr

    tables = {}
    for out in dirs:
        name = preset_of(json.loads((out / "sweep.json").read_text())["spec"]["name"])
        tables[name] = pd.concat([tables[name], sw.results_table(out)]) if name in tables else sw.results_table(out)
    if shipped_dir is not None:
        for name, (table, _meta) in sr.shipped(shipped_dir).items():
            tables.setdefault(name, table)
    return claims.board_markdown(claims.claim_board(tables))


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    ap.add_argument("--board", action="store_true", help="print the claim board of these sweep directories")
    ap.add_argument("--shipped", action="store_true",
                    help="with --board: presets without a sweep directory come from the shipped results "
                         "(checkpoints/results/, or $DMD_SHIPPED_RESULTS)")
    ap.add_argument("dirs", nargs="*", type=Path, help="sweep directories (python -m dmdcore sweep --out DIR)")
    ap.add_argument("--export", type=Path, metavar="OUT.json",
                    help="write the one sweep directory's results table to OUT.json (dmdcore.shipped_results)")
    ap.add_argument("--time", type=Path, metavar="FILE", action="append", default=[],
                    help="with --export: the sweep's `/usr/bin/time -f \"%%U %%S %%e\"` output (CPU and wall seconds); "
                         "give it once per segment of a resumed sweep and the times add up")
    ap.add_argument("--wall-only", type=float, metavar="SECONDS", action="append", default=[],
                    help="with --export: a segment of a resumed sweep whose wall time is known (e.g. from its start "
                         "and stop timestamps) but not its CPU time; it adds to the wall time and leaves CPU unknown")
    ap.add_argument("--note", default="", help="with --export: a short note stored with the results (e.g. how it was run)")
    ap.add_argument("--commit", help="with --export: the commit of the code that ran the sweep (default: this checkout's)")
    args = ap.parse_args(argv)
    if args.shipped and not args.board:
        ap.error("--shipped goes with --board")
    if not args.dirs and not args.board:
        ap.error("give at least one sweep directory")
    missing = [str(d) for d in args.dirs if not (d / "sweep.json").is_file()]
    if missing:
        ap.error("not a sweep directory (no sweep.json): " + ", ".join(missing))
    if args.export:
        if len(args.dirs) != 1:
            ap.error("--export takes exactly one sweep directory")
        wall = cpu = None
        for t in args.time:
            try:
                user, system, elapsed = (float(x) for x in t.read_text().split()[-3:])
            except ValueError:
                ap.error(f"--time {t}: expected the three numbers 'user sys elapsed'")
            wall, cpu = (wall or 0.0) + elapsed, (cpu or 0.0) + user + system
        for w in args.wall_only:
            if not w > 0:
                ap.error(f"--wall-only {w}: expected a positive number of seconds")
            wall = (wall or 0.0) + w
        if args.wall_only:
            cpu = None  # one segment's CPU time is unknown, so the total is too
        from dmdcore import shipped_results

        meta = shipped_results.export(args.dirs[0], args.export, wall_s=wall, cpu_s=cpu, commit=args.commit,
                                      note=args.note)
        print(f"{args.export}: {shipped_results.describe(meta)}")
        return 0
    if args.board:
        from dmdcore import shipped_results as sr

        print(board(args.dirs, sr.results_dir() if args.shipped else None))
        return 0
    for d in args.dirs:
        print(report(d))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
