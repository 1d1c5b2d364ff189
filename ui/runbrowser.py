"""Toy Lab runs that open from a link: the URL key ``run=<id>`` names a run of the run index; a
session opened from it shows that run's results and time travel from its saved files
(``dmdcore.saved``), without re-running. A run browser lists the index (filters: teacher,
dataset, d) and opens any run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

RUN_QP = "run"                    # URL key: the run index id
OPEN_KEY = "toylab_open_run"      # the run id this session shows (when it has no job)
CMP_QP = "cmp"                    # URL key: run ids to compare, comma-separated ("cmp=3,7")
CMP_KEY = "rb_compare"            # the comparison multiselect


def run_id_of(root: Path, run_dir: str | None) -> int | None:
    """Index id of a run directory (None when it is not in the index)."""
    if not run_dir:
        return None
    from dmdcore.runs import RunIndex

    try:
        return RunIndex(root).get(run_dir).id
    except (KeyError, ValueError, OSError):
        return None


def parse_run_param(raw) -> int:
    """The ``run=`` URL value → run id; ValueError naming the key when it is not a positive integer."""
    text = str(raw[-1] if isinstance(raw, (list, tuple)) else raw).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"run: {text!r} is not a run id (a positive integer from the run index)")
    return int(text)


def parse_cmp_param(raw) -> list[int]:
    """The ``cmp=`` URL value → run ids (in order, no repeats); ValueError naming the key."""
    text = str(raw[-1] if isinstance(raw, (list, tuple)) else raw).strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"cmp: {text!r} is not a comma-separated list of run ids (e.g. cmp=3,7)")
    return list(dict.fromkeys(int(p) for p in parts))


def compare_from_link(root: Path, raw) -> tuple[list[int], list[str]]:
    """Run ids of a ``cmp=`` link that are in the run index (kind experiment/distill), and messages
    for the rest (a bad value, an id not in the index)."""
    from dmdcore.runs import RunIndex

    try:
        ids = parse_cmp_param(raw)
    except ValueError as exc:
        return [], [f"URL parameter 'cmp': {exc}"]
    try:
        known = {r.id for r in RunIndex(root).list() if r.kind in ("experiment", "distill")}
    except (ValueError, OSError) as exc:
        return [], [f"URL parameter 'cmp': cannot read the run index ({exc})"]
    missing = [i for i in ids if i not in known]
    msgs = [f"URL parameter 'cmp': run {i} is not in the run index of {root}" for i in missing]
    return [i for i in ids if i in known], msgs


@st.cache_resource(max_entries=8, show_spinner="Opening the saved run…")
def _load(path: str, mtime: float):
    from dmdcore.saved import saved_view

    return saved_view(path)


def open_saved(root: Path, run_id: int):
    """(record, Snapshot-like view, basins) of run ``run_id``; ValueError with a clear message."""
    from dmdcore.jobs import Snapshot
    from dmdcore.runs import RunIndex

    try:
        rec = RunIndex(root).get(run_id)
    except KeyError:
        raise ValueError(f"run: {run_id} is not in the run index of {root}") from None
    metrics_path = Path(rec.path) / "metrics.csv"
    mtime = os.path.getmtime(metrics_path) if metrics_path.exists() else 0.0
    v = _load(rec.path, mtime)
    status = v["status"] or {}
    snap = Snapshot(
        job_id=f"run-{run_id}", state=str(status.get("status", rec.status)), phase=None,
        step=int(status.get("step", rec.step) or 0), total_steps=None, steps_per_s=None, eta_s=None,
        message=str(status.get("message", "")), metrics=list(v["metrics"]), train_log=[], z=v["z"],
        teacher_samples=v["teacher_samples"], student_samples=v["student_samples"], history=list(v["history"]),
        modes=v["modes"], run_dir=rec.path)
    return rec, snap, v


def browser(root: Path, *, can_open: bool) -> int | None:
    """The run browser (an expander): the index, filtered; returns a run id to open, or None."""
    from dmdcore.runs import RunIndex

    with st.expander("Saved runs (run index) — open any run",
                     expanded=len(st.session_state.get(CMP_KEY) or ()) >= 2):  # a comparison link opens it
        try:
            recs = [r for r in RunIndex(root).list() if r.kind in ("experiment", "distill")]
        except (ValueError, OSError) as exc:
            st.error(f"Cannot read the run index: {exc}")
            return None
        if not recs:
            st.info("No saved runs yet: a distillation started here is saved and listed.")
            return None
        df = pd.DataFrame([{"id": r.id, "teacher": r.teacher_source or "trained in run", "dataset": r.dataset,
                            "d": r.dim, "status": r.status, "step": r.step,
                            "ΔE": None if r.delta_e is None else round(r.delta_e, 4),
                            "sweep": r.sweep or "", "path": r.path} for r in recs])
        c1, c2, c3 = st.columns(3)
        teachers = c1.multiselect("Teacher", sorted(df["teacher"].unique()), key="rb_teacher")
        datasets = c2.multiselect("Dataset", sorted(df["dataset"].dropna().unique()), key="rb_dataset")
        dims = c3.multiselect("d", sorted(int(d) for d in df["d"].dropna().unique()), key="rb_dim")
        if teachers:
            df = df[df["teacher"].isin(teachers)]
        if datasets:
            df = df[df["dataset"].isin(datasets)]
        if dims:
            df = df[df["d"].isin(dims)]
        st.dataframe(df, hide_index=True, key="rb_table")
        if not len(df):
            return None
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        pick = c1.selectbox("Run", df["id"].tolist()[::-1], key="rb_pick",
                            format_func=lambda i: f"run {i}: " + Path(df.loc[df['id'] == i, 'path'].iloc[0]).name)
        if not can_open:
            c2.caption("Stop the running job to open another run.")
        if c2.button("Open run", key="rb_open", disabled=not can_open):
            return int(pick)
        compare(df["id"].tolist(), {r.id: r for r in recs})
    return None


def compare(ids: list[int], recs: dict) -> None:
    """Pick two or more runs (Toy Lab runs and sweep cells) and overlay their ΔE, W₂² and loss
    curves, with a table of the config fields that differ."""
    import json

    from dmdcore.runs import RunDir
    from ui import curves

    if any(i not in ids for i in st.session_state.get(CMP_KEY) or ()):  # filtered out: keep the shown ones
        st.session_state[CMP_KEY] = [i for i in st.session_state[CMP_KEY] if i in ids]
    pick = st.multiselect("Compare runs (two or more; the URL keeps them: cmp=…)", ids[::-1], key=CMP_KEY,
                          format_func=lambda i: f"run {i}: " + Path(recs[i].path).name)
    if len(pick) < 2:
        return
    frames, configs = {}, {}
    for i in pick:
        rd = RunDir(recs[i].path)
        try:
            frames[f"run {i}"] = pd.DataFrame(rd.read_metrics())
            configs[f"run {i}"] = json.loads(json.dumps(rd.read_config()["experiment"]))
        except (ValueError, OSError, KeyError) as exc:
            st.warning(f"run {i}: cannot read its files ({exc})")
    if len(frames) < 2:
        return
    st.plotly_chart(curves.compare_figure(frames), key="rb_compare_fig", config={"displaylogo": False})
    diff = curves.config_differences(configs)
    st.markdown("**Config fields that differ**" if len(diff) else "The configs are identical.")
    if len(diff):
        st.dataframe(diff, hide_index=True, key="rb_compare_diff")
