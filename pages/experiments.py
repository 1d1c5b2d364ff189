"""Experiments: pick or define a sweep, edit its grid, run it in the background, read the results.

Thin page over ``dmdcore.sweep``: the sweep runs on a ``SweepJob`` thread (worker processes do
the training) held in ``st.session_state``, so navigating away and back keeps its progress.
Sweeps live under ``<runs root>/sweeps/<name>-<time>/`` (each with its own run index).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from ui.errors import md_escape, short_paths

from ui.router import ensure_router

ensure_router()

from dmdcore import sweep as sw  # noqa: E402
from ui import experiments_plots as xp  # noqa: E402
from ui.session import max_sweeps, runs_root, sweep_slots  # noqa: E402
from ui.claims import render_board  # noqa: E402
from ui.verdict import render_verdict  # noqa: E402

JOB_KEY = "exp_sweep_job"
VIEW_KEY = "exp_view_dirs"
SEEN_KEY = "exp_seen_done"
CUSTOM = "custom (JSON spec)"
CUSTOM_EXAMPLE = {
    "name": "my-sweep",
    "description": "Dimension × GAN, two seeds, small and fast.",
    "base": {"data": {"dataset": "mixture", "n_modes": 8}, "teacher": {"width": 64, "steps": 400, "ema": 0.99},
             "distill": {"steps": 100, "batch": 128}, "eval": {"every": 25, "n": 1024, "bootstrap": 100}},
    "grid": {"data.dim": [2, 16, 64], "distill.gan": [False, True], "seed": [0, 1]},
    "quick": {"teacher.steps": 60, "distill.steps": 20, "eval.every": 10, "eval.n": 64},
}


def sweeps_root() -> Path:
    root = runs_root() / "sweeps"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _parse_json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _launch(spec, out_dir: Path, *, quick: bool, workers: int) -> None:
    backend = st.session_state.get("exp_backend", "local")
    address = None
    if backend == "ray":
        address = (st.session_state.get("exp_ray_address") or "").strip() or None
    job = sw.SweepJob(spec, out_dir, workers=workers, quick=quick, slots=sweep_slots(), backend=backend,
                      address=address)
    job.start()
    st.session_state[JOB_KEY] = job
    st.session_state[VIEW_KEY] = [str(out_dir)]
    st.session_state[SEEN_KEY] = None


# ------------------------------------------------------------------------------------------ define
def backend_panel() -> None:
    """Backend choice, shown only when Ray is installed (else every sweep runs on the local pool)."""
    backends = sw.available_backends()
    if len(backends) < 2:
        return
    c1, c2 = st.columns([1, 3])
    backend = c1.radio("Backend", backends, horizontal=True, key="exp_backend",
                       help="local: a process pool on this machine. ray: Ray tasks (teachers first, each "
                            "teacher's cells as soon as it is saved), on a local or a remote cluster.")
    c2.text_input("Ray cluster address", key="exp_ray_address", disabled=backend != "ray",
                  placeholder="empty: start a local Ray cluster; 'auto': the cluster running here; host:port",
                  help="A multi-node cluster needs the runs folder on storage every node mounts at the same path.")


def define_panel() -> None:
    """The spec controls, then the launch row. Each in its own container, so the launch button
    keeps its place in the element tree whatever the spec area draws (a preset draws ~12
    elements, the custom-spec box one): otherwise a preset <-> custom switch leaves the previous
    run's button on screen (stale) beside the new one until the rerun finishes."""
    spec_area, launch_area = st.container(), st.container()
    with spec_area:
        picked = _spec_controls()
    if picked is not None:
        with launch_area:
            _launch_row(*picked)


def _spec_controls():
    """Preset / custom spec widgets; returns (spec, quick, n_teachers), or None after an error."""
    presets = sw.list_presets()
    c1, c2, c3 = st.columns([2, 1, 1])
    # The default preset goes first (index 0): a non-zero index is a "default value" that, with the
    # value kept across pages through session state (ui.session.keep_page_controls), made
    # Streamlit log a "created with a default value but also set via the Session State API" warning.
    first = ["dimension"] if "dimension" in presets else []
    choice = c1.selectbox("Preset", [*first, *(p for p in presets if p not in first), CUSTOM], index=0,
                          key="exp_preset")
    variant = c2.radio("Size", ["default", "full"], horizontal=True, key="exp_variant",
                       disabled=choice == CUSTOM, help="'full' is the larger variant of a preset (slower).")
    quick = c3.checkbox("Quick (--quick)", key="exp_quick",
                        help="Apply the spec's 'quick' overrides: very short training, for a smoke test.")
    spec_dict = None
    if choice == CUSTOM:
        text = st.text_area("Spec (JSON)", value=json.dumps(CUSTOM_EXAMPLE, indent=2), height=320, key="exp_custom",
                            help="Keys: name, description, claim, base, grid, quick, full, plot. Dotted grid keys "
                                 "address config fields; 'seed' sets all seeds; a mapping value is a named-level axis.")
        try:
            spec_dict = _parse_json(text, "spec")
        except ValueError as exc:
            st.error(str(exc))
            return
    else:
        try:
            spec = sw.load_preset(choice if variant == "default" else f"{choice}:full")
        except ValueError as exc:
            st.error(str(exc))
            return
        if spec.claim:
            st.markdown(f"**Claim tested.** {spec.claim}")
        st.caption(spec.description)
        spec_dict = spec.to_dict()
        st.markdown("**Grid** (JSON values; edit to change the sweep)")
        cols = st.columns(max(1, len(spec_dict["grid"])))
        new_grid = {}
        for col, (axis, values) in zip(cols, spec_dict["grid"].items()):
            raw = col.text_input(axis, value=json.dumps(values), key=f"exp_axis_{choice}_{variant}_{axis}")
            try:
                new_grid[axis] = _parse_json(raw, f"grid axis {axis}")
            except ValueError as exc:
                st.error(str(exc))
                return
        extra = st.text_input("Add axes (JSON mapping, e.g. {\"distill.ratio\": [1, 5]})", value="{}",
                              key=f"exp_extra_{choice}_{variant}")
        base_extra = st.text_input("Override base fields (JSON, dotted keys, e.g. {\"distill.steps\": 300})",
                                   value="{}", key=f"exp_base_{choice}_{variant}")
        try:
            new_grid.update(_parse_json(extra, "added axes"))
            spec_dict["base"] = {**spec_dict["base"], **_parse_json(base_extra, "base overrides")}
        except ValueError as exc:
            st.error(str(exc))
            return
        spec_dict["grid"] = new_grid
        spec_dict.pop("full", None)
        if spec_dict.get("plot", {}).get("x") not in new_grid:
            spec_dict.pop("plot", None)
    try:
        spec = sw.SweepSpec.from_dict(spec_dict)
        n_teachers = len({c.teacher_key for c in sw.expand(spec, quick=quick)})
    except ValueError as exc:
        st.error(str(exc))
        return None
    return spec, quick, n_teachers


def _launch_row(spec, quick: bool, n_teachers: int) -> None:
    backend_panel()
    c1, c2, c3 = st.columns([1, 1, 2])
    workers = c1.number_input("Worker processes", min_value=1, max_value=os.cpu_count() or 1,
                              value=os.cpu_count() or 1, key="exp_workers",
                              help="local: pool processes; ray without an address: CPUs of the local Ray cluster")
    c2.metric("Cells", spec.n_cells, help=f"{n_teachers} distinct teachers, each trained once and shared")
    job = st.session_state.get(JOB_KEY)
    busy = job is not None and job.snapshot().state in ("queued", "running")
    # No help= on this button: Streamlit 1.67 draws a button with a tooltip twice in the DOM (the
    # tooltip-wrapped one and a display:none copy), and a browser that caught the copy mid-render
    # saw two 'Launch sweep' buttons (the e2e strict-mode flake). The hint is a caption instead.
    launch = c3.button("Launch sweep", type="primary", disabled=busy, key="exp_launch")
    c3.caption("Runs in the background; you can leave the page and come back.")
    if launch:
        out_dir = sweeps_root() / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            _launch(spec, out_dir, quick=quick, workers=int(workers))
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.rerun()


# ------------------------------------------------------------------------------------------ progress
ACTIVE = ("queued", "running")
_job_now = st.session_state.get(JOB_KEY)
live = _job_now is not None and _job_now.snapshot().state in ACTIVE


@st.fragment(run_every=2.0 if live else None)
def progress_panel() -> None:
    """Sweep progress, polled every 2 s while a sweep runs and not at all otherwise; asks for a
    full rerun (which re-decides the polling) when a cell completes or the sweep's state changes."""
    job = st.session_state.get(JOB_KEY)
    if job is None:
        return
    snap = job.snapshot()
    p = snap.progress
    if (snap.state in ACTIVE) != live:
        st.rerun(scope="app")
    st.subheader(f"Sweep {Path(snap.out_dir).name}: {snap.state}")
    if snap.state == "queued":
        st.info(f"Queued: {snap.message}. At most {max_sweeps()} sweep(s) run at once on this server "
                "(each uses every core); it starts when the running one ends.")
    if snap.error:
        st.error(f"The sweep stopped with an error: {snap.error}")
    if p is not None:
        done = p.done_cells + p.failed_cells
        st.progress(done / max(1, p.total_cells),
                    text=f"cells {p.done_cells}/{p.total_cells} finished, {p.failed_cells} failed, "
                         f"{p.running_cells} running · teachers {p.done_teachers}/{p.total_teachers}")
        eta = "—" if p.eta_s is None or p.finished else f"{p.eta_s:.0f} s"
        st.caption(f"elapsed {p.elapsed_s:.0f} s · ETA {eta} · {p.last}")
        if p.failures:
            with st.expander(f"{len(p.failures)} failure(s)", expanded=True):
                for key, reason in p.failures:
                    st.markdown(f"- `{key}`: {reason}")
        # Re-render the results (outside this fragment) when a cell completes or the state changes.
        mark = [done, snap.state]
        if st.session_state.get(SEEN_KEY) != mark:
            st.session_state[SEEN_KEY] = mark
            st.rerun(scope="app")
    if snap.state in ("queued", "running") and st.button("Stop sweep", key="exp_stop"):
        job.stop()


# ------------------------------------------------------------------------------------------ results
def _load(dirs: list[str]):
    tables, curves, axes = [], [], []
    meta = {}
    for d in dirs:
        man = json.loads((Path(d) / "sweep.json").read_text())
        spec = man["spec"]
        t = sw.results_table(d)
        c = sw.training_curves(d)
        if len(dirs) > 1:
            t.insert(0, "sweep", Path(d).name)
            c.insert(0, "sweep", Path(d).name)
            t["cell"] = Path(d).name + "/" + t["cell"]
            c["cell"] = Path(d).name + "/" + c["cell"]
        tables.append(t)
        curves.append(c)
        for a in spec["grid"]:
            if a not in axes:
                axes.append(a)
        meta = spec.get("plot", {}) or meta
    if len(dirs) > 1:
        axes.insert(0, "sweep")
    return pd.concat(tables, ignore_index=True), pd.concat(curves, ignore_index=True), axes, meta


def results_panel(dirs: list[str]) -> None:
    try:
        table, curves, axes, plot = _load(dirs)
    except (ValueError, OSError, KeyError) as exc:
        st.error(f"Cannot read the sweep: {exc}")
        return
    st.subheader("Results" + (f" — comparing {len(dirs)} sweeps" if len(dirs) > 1 else ""))
    summary = sw.summarize(table, axes)
    st.markdown("**What the numbers show** (computed from the finished cells)")
    st.markdown("\n".join(f"- {line}" for line in summary.splitlines()))
    _cell_verdicts(table)
    measured = table[pd.to_numeric(table["delta_e"], errors="coerce").notna()] if "delta_e" in table else table.iloc[:0]
    if not len(measured):  # no finished cell yet: a message, not charts with empty axes
        st.info("No cell has a ΔE yet: the charts appear when the first cell finishes"
                + (" (progress above)." if live else " — resume the sweep in 'Past sweeps' to run its cells."))
        st.dataframe(table, hide_index=True, key="exp_table")
        return
    choices = [a for a in axes if not sw.is_replicate_axis(a)] or axes
    default_x = plot.get("x") if plot.get("x") in choices else next(
        (a for a in choices if a in table and pd.api.types.is_numeric_dtype(table[a])
         and not pd.api.types.is_bool_dtype(table[a])), choices[0])
    c1, c2 = st.columns([2, 1])
    x = c1.selectbox("Swept variable (x axis)", choices, index=choices.index(default_x), key="exp_x")
    numeric_x = x in table and pd.api.types.is_numeric_dtype(table[x]) and not pd.api.types.is_bool_dtype(table[x])
    log_x = c2.checkbox("log x", value=bool(plot.get("log_x", x == "data.dim")) and numeric_x,
                        disabled=not numeric_x, key=f"exp_logx_{x}")
    st.plotly_chart(xp.delta_e_vs_x_figure(table, x, axes, log_x=log_x), key="exp_fig_x")
    st.caption(xp.DELTA_E_DEF + " Error bars: 95% CI — Student-t over replicates; a single cell shows its "
               "bootstrap CI over the evaluation noises.")
    mixed = [name for col, name in (("n_eval", "n"), ("dim", "d"))
             if col in table and table[col].dropna().nunique() > 1]
    if mixed:
        st.caption("⚠ This chart compares ΔE measured at different " + " and ".join(mixed) + ": its finite-sample "
                   "bias depends on both (in high d remappings below the resolution read as 0), so differences "
                   "may come from the estimator — read each cell's verdict and resolution above.")
    c1, c2 = st.columns(2)
    c1.plotly_chart(xp.curves_overlay_figure(curves, axes), key="exp_fig_curves")
    c2.plotly_chart(xp.quality_vs_copying_figure(table, axes), key="exp_fig_scatter")
    c2.caption("Lower W₂² = student samples closer to the teacher's (quality); lower ΔE = more copying.")
    factors = [a for a in choices if a in table and table[a].astype(str).nunique() > 1]
    if len(factors) >= 2:
        c1, c2 = st.columns(2)
        hx = c1.selectbox("Heatmap x", factors, index=0, key="exp_hx")
        hy = c2.selectbox("Heatmap y", [f for f in factors if f != hx], index=0, key="exp_hy")
        st.plotly_chart(xp.heatmap_figure(table, hx, hy), key="exp_fig_heat")
    st.markdown("**Results table** (click a column header to sort)")
    st.dataframe(table, hide_index=True, key="exp_table")
    st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name="results.csv",
                       mime="text/csv", key="exp_csv")


def _cell_verdicts(table: pd.DataFrame) -> None:
    """The copy verdict of every finished cell: ΔE with n, d, controls (ui/verdict.py)."""
    done = table[table["status"] == "finished"] if "status" in table else table
    if not len(done):
        return
    with st.expander(f"Copy verdict of each cell ({len(done)} finished)", expanded=len(done) <= 6):
        for _, r in done.head(60).iterrows():
            row = {k: (None if isinstance(v, float) and v != v else v) for k, v in r.to_dict().items()}
            render_verdict(row, compact=True, title=str(row.get("cell")))
        if len(done) > 60:
            st.caption(f"… {len(done) - 60} more cells: see the results table (verdict columns).")


# ------------------------------------------------------------------------------------------ past
def past_panel() -> None:
    try:
        sweeps = sw.list_sweeps(sweeps_root())
    except ValueError as exc:
        st.error(str(exc))
        return
    for bad in (s for s in sweeps if s.get("state") == "unreadable"):  # listed, never fatal to the others
        st.warning(md_escape(f"Skipped {Path(bad['path']).name}: {short_paths(bad.get('error', ''))}"))
    sweeps = [s for s in sweeps if s.get("state") != "unreadable"]
    if not sweeps:
        st.info("No sweeps yet. Launch one in the 'Run a sweep' tab or with `python -m dmdcore sweep`.")
        return
    df = pd.DataFrame(sweeps)
    df["updated"] = pd.to_datetime(df["updated"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
    st.dataframe(df[["id", "name", "state", "quick", "n_cells", "finished", "failed", "updated", "path"]],
                 hide_index=True, key="exp_past_table")
    ids = [s["id"] for s in sweeps]
    pick = st.multiselect("Open (one) or compare (several)", ids, default=ids[:1], key="exp_past_pick")
    c1, c2 = st.columns(2)
    paths = [s["path"] for s in sweeps if s["id"] in pick]
    if c1.button("Open", disabled=not pick, key="exp_open"):
        st.session_state[VIEW_KEY] = paths
        st.rerun()
    job = st.session_state.get(JOB_KEY)
    busy = job is not None and job.snapshot().state in ("queued", "running")
    if c2.button("Resume (re-run unfinished cells)", disabled=len(pick) != 1 or busy, key="exp_resume"):
        man = json.loads((Path(paths[0]) / "sweep.json").read_text())
        try:
            _launch(man["spec"], Path(paths[0]), quick=bool(man.get("quick")),
                    workers=int(st.session_state.get("exp_workers", os.cpu_count() or 1)))
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.rerun()


# ------------------------------------------------------------------------------------------ claims
def claims_panel() -> None:
    """The study's claims against the newest full-size sweep of each preset (ui/claims.py)."""
    st.caption("Each claim of the study, the preset that tests it, what the newest non-quick sweep of that "
               "preset measured (converged cells only) and a status: supported, contradicted or inconclusive. "
               "Also in docs/experiments.md (scripts/preset_report.py --board --shipped).")
    render_board(sweeps_root())


st.title("Experiments")
st.caption("Sweeps over data dimension, losses, teacher training and student freedom — each cell a full "
           "teacher → DMD student run, measured with the pairing inefficiency ΔE.")
tab_run, tab_past, tab_claims = st.tabs(["Run a sweep", "Past sweeps", "Claim board"])
with tab_run:
    define_panel()
with tab_past:
    past_panel()
with tab_claims:
    claims_panel()
progress_panel()
if VIEW_KEY not in st.session_state:  # a new session shows the newest sweep's results
    try:
        _newest = sw.list_sweeps(sweeps_root())
    except (ValueError, OSError):
        _newest = []
    st.session_state[VIEW_KEY] = [_newest[0]["path"]] if _newest else []
view = st.session_state.get(VIEW_KEY)
if view:
    results_panel(view)
