"""Toy Lab: distil a toy teacher live and watch the student's noise→sample pairing form.

The page only reads widgets, drives a background ``dmdcore.jobs.TrainingJob`` over a
``dmdcore.pipeline.Experiment`` and draws ``job.snapshot()``; it holds no training logic.
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from ui.errors import md_escape, one_line

from ui import curves, plots, runbrowser, timecursor, toylab, urlstate
from ui.session import get_manager, runs_root, session_id, warm_up_process
from ui.router import ensure_router

ensure_router()

S = st.session_state
JOB = "toylab_job"
TEACHER = "toylab_trained_teacher"     # (config dict of the data/teacher, ToyTeacher)
UPLOAD = "toylab_upload"               # (path, shape, filename) of the last valid upload
ACTIVE = ("queued", "running")

st.title("Toy Lab")
warm_up_process()
st.caption("Distil a toy diffusion teacher with DMD2 and watch whether the one-step student "
           "keeps the teacher's noise→sample pairing (copying) or remaps it.")


@st.cache_resource(show_spinner="Loading shipped teacher…")
def _shipped_teacher(name: str):
    """A shipped toy teacher (shared, never mutated)."""
    from dmdcore.pipeline import load_teacher

    return load_teacher(f"manifest:{name}")


@st.cache_data(show_spinner="Sampling the teacher…", max_entries=8)
def _preview(name: str, cfg_json: str) -> dict:
    """The fixed evaluation noise z of this configuration and the shipped teacher's T(z) (its
    EDM Heun map), shown before any job exists; mode colors/centres as the Experiment uses."""
    import json

    import torch

    from dmdcore import pairing
    from dmdcore.config import ExperimentConfig
    from dmdcore.pipeline import Experiment

    teacher = _shipped_teacher(name)
    exp = Experiment(ExperimentConfig.from_dict(json.loads(cfg_json)), teacher=teacher)
    with torch.no_grad():
        t = teacher.sample(exp.z.to(teacher.device), exp.cfg.sampler).detach().cpu().numpy()
    t = t.astype(np.float32)
    centers = exp.dataset.centers
    if centers is not None:
        modes = pairing.mode_transition(t, t, centers=centers.numpy().astype(np.float64))
    else:
        k = exp.dataset.n_classes if exp.dataset.n_classes >= 2 else 8
        modes = pairing.mode_transition(t, t, n_modes=min(k, len(t)), seed=exp.cfg.eval.seed)
    basins = None
    if exp.dataset.dim == 2:
        bm = exp.basin_maps(grid_n=48, extent=3.0)  # teacher only: no student yet
        basins = {"key": ("preview", name), "step": None, "extent": 3.0,
                  "teacher": bm.teacher_modes, "student": None, "agreement": None}
    return {"z": exp.z.numpy().astype(np.float32), "teacher_samples": t, "modes": modes,
            "basins": basins, "cfg_hash": hashlib.sha1(cfg_json.encode()).hexdigest()[:12]}


# ------------------------------------------------------------------ controls (sidebar)
URL_NOTES = "toylab_url_notes"  # {URL key: message}: link values that could not be applied
url_errors = toylab.init_controls(S, st.query_params)
for msg in url_errors:
    S.setdefault(URL_NOTES, {})[msg.split("'")[1] if "'" in msg else msg] = msg

shipped = toylab.shipped_teachers()  # [] when the manifest lists none
shipped_names = [e["name"] for e in shipped]


def _widget(name: str, shown=None, **kw):
    """Draw the widget for control ``name`` (value from session state key ctl_<name>).

    shown: a {name: value} of a shipped teacher's own settings: the field is drawn greyed with
    that value (key shown_<name>) instead of the control, whose value stays for 'train'."""
    c = urlstate.BY_NAME[name]
    key = toylab.WIDGET_PREFIX + name
    label = c.label or name
    if shown is not None and name in shown:
        key = "shown_" + name
        S[key] = shown[name]
        kw["disabled"] = True
        if c.choices is not None:
            opts = list(c.choices) if shown[name] in c.choices else [shown[name]]
            return st.selectbox(label, opts, key=key, help=c.help or None, **kw)
    if c.choices is not None:
        opts = list(c.choices)
        if S.get(key) not in opts:
            S[key] = c.default
        return st.selectbox(label, opts, key=key, help=c.help or None, **kw)
    if c.kind is bool:
        return st.toggle(label, key=key, help=c.help or None, **kw)
    if c.kind is int:
        return st.number_input(label, min_value=int(c.lo), max_value=int(c.hi), step=1, key=key,
                               help=c.help or None, **kw)
    if c.kind is float:
        return st.number_input(label, min_value=float(c.lo), max_value=float(c.hi), key=key,
                               format="%.2e", help=c.help or None, **kw)
    return st.text_input(label, key=key, help=c.help or None, **kw)


with st.sidebar:
    st.header("Configuration")
    with st.expander("Teacher and data", expanded=True):
        _widget("teacher_source")
        use_shipped = S[toylab.WIDGET_PREFIX + "teacher_source"] == "shipped"
        if use_shipped:
            shown = None  # the shipped teacher's own data/teacher settings, shown greyed
            if not shipped_names:
                st.warning("No shipped toy teacher in checkpoints/manifest.json — choose 'train'.")
            else:
                key = toylab.WIDGET_PREFIX + "shipped_name"
                if S.get(key) not in shipped_names:
                    if S.get(key):  # e.g. a shared link naming a teacher this install lacks
                        S.setdefault(URL_NOTES, {})["tn"] = (
                            f"URL parameter 'tn': shipped teacher {S[key]!r} is not in this install's "
                            f"manifest ({', '.join(shipped_names)}); showing {shipped_names[0]!r} instead.")
                    S[key] = shipped_names[0]
                st.selectbox("Shipped teacher", shipped_names, key=key,
                             help=urlstate.BY_NAME["shipped_name"].help,
                             on_change=lambda: S.get(URL_NOTES, {}).pop("tn", None))
                entry = shipped[shipped_names.index(S[key])]
                st.caption(entry.get("description", ""))
                shown = toylab.shipped_fields(entry)
        else:
            shown = None
        _widget("dataset", shown, disabled=use_shipped)
        _widget("dim", shown, disabled=use_shipped)
        _widget("n_modes", shown, disabled=use_shipped)
        _widget("base", shown, disabled=use_shipped)
        upload = st.file_uploader("Your data (CSV/NPY, dataset 'user')", type=["csv", "npy"],
                                  key="toylab_upload_widget", disabled=use_shipped,
                                  help="A CSV (numbers only, one sample a row) or an .npy array (n, d), "
                                       "d ≥ 2: selects the dataset 'user'.")
        for _name in ("t_width", "t_depth", "t_steps", "t_lr", "t_twin", "family"):
            _widget(_name, shown, disabled=use_shipped)
    with st.expander("Student", expanded=False):
        _widget("method")
        for name in ("init", "ratio", "lr", "lr_fake", "batch", "s_steps", "gan", "regression",
                     "reg_weight", "student_steps"):
            _widget(name)
    with st.expander("Run and evaluation", expanded=False):
        for name in ("seed", "eval_n", "eval_every", "bootstrap", "stop_plateau"):
            _widget(name)

values = toylab.read_controls(S)

# Upload: validate with the engine's loader; a bad file keeps the last good upload.
if upload is not None:
    sig = (upload.name, upload.size)
    if S.get("toylab_upload_sig") != sig:
        S["toylab_upload_sig"] = sig
        try:
            path, shape = toylab.save_upload(upload.getvalue(), upload.name, runs_root())
            S[UPLOAD] = (path, shape, upload.name)
            S.pop("toylab_upload_error", None)
        except (ValueError, OSError) as exc:  # OSError: disk full at …
            S["toylab_upload_error"] = f"Upload rejected: {one_line(exc)}"
        else:  # the Dataset control (and so the URL: ds=user) now names the upload, with its d
            pending = {"dataset": "user"}
            try:
                pending["dim"] = urlstate.check("dim", shape[1])
            except ValueError:
                pass
            S[toylab.PENDING_VALUES_KEY] = pending
            st.rerun()
else:  # the file was removed from the uploader: its error goes (the last good upload stays)
    S.pop("toylab_upload_error", None)
    S.pop("toylab_upload_sig", None)
if S.get("toylab_upload_error"):
    st.error(md_escape(S["toylab_upload_error"]))
if S.get(UPLOAD):
    st.sidebar.caption(f"Using upload {S[UPLOAD][2]}: {S[UPLOAD][1][0]} × {S[UPLOAD][1][1]}")

# A run named in the URL (run=<index id>) opens on the session's first visit (no re-run).
if "toylab_run_seen" not in S:
    S["toylab_run_seen"] = True
    if st.query_params.get(runbrowser.RUN_QP):
        try:
            S[runbrowser.OPEN_KEY] = runbrowser.parse_run_param(st.query_params.get_all(runbrowser.RUN_QP))
        except ValueError as exc:
            st.error(md_escape(f"Link: {exc}"))
    if st.query_params.get(runbrowser.CMP_QP):  # cmp=3,7: the comparison of those runs, opened
        _ids, _msgs = runbrowser.compare_from_link(runs_root(), st.query_params.get_all(runbrowser.CMP_QP))
        S[runbrowser.CMP_KEY] = _ids
        if _msgs:
            S.setdefault(URL_NOTES, {})["cmp"] = " ".join(_msgs)
for _msg in S.get(URL_NOTES, {}).values():  # until a job starts: the link's values were not all applied
    st.warning(md_escape(_msg))  # URL values are shown as text, never as Markdown


def _shown_run_id() -> int | None:
    """The index id of the run on screen: this session's job's run, or the opened saved run."""
    j = S.get(JOB)
    if j is None:
        return S.get(runbrowser.OPEN_KEY)
    cached = S.get("toylab_job_run_id")
    if cached is None or cached[0] != j.job_id:
        run_dir = getattr(getattr(j, "experiment", None), "run_dir", None)
        cached = (j.job_id, runbrowser.run_id_of(runs_root(), None if run_dir is None else str(run_dir)))
        S["toylab_job_run_id"] = cached
    return cached[1]


# Keep the URL in sync (only non-default values, and the run on screen).
try:
    qp = urlstate.encode(values)
    if _shown_run_id() is not None:
        qp[runbrowser.RUN_QP] = str(_shown_run_id())
    if len(S.get(runbrowser.CMP_KEY) or ()) >= 2:
        qp[runbrowser.CMP_QP] = ",".join(str(i) for i in S[runbrowser.CMP_KEY])
    if {k: v for k, v in st.query_params.items()} != qp:
        st.query_params.from_dict(qp)
except ValueError as exc:
    st.error(f"Configuration: {exc}")

# A teacher trained by this session's job (teacher-only or teacher+student) becomes available
# for distilling as long as the data/teacher controls still describe it.
_job = S.get(JOB)
if _job is not None and "teacher" in getattr(_job.experiment, "phases", ()):
    _exp = _job.experiment
    if _exp.teacher is not None and (S.get(TEACHER) is None or S[TEACHER][1] is not _exp.teacher):
        S[TEACHER] = ((_exp.cfg.data.to_dict(), _exp.cfg.teacher.to_dict()), _exp.teacher)

# The teacher this configuration distils: shipped, trained in this session, or none yet.
teacher_obj = None
teacher_error = None
if values["teacher_source"] == "shipped" and shipped_names:
    try:
        teacher_obj = _shipped_teacher(values["shipped_name"])
    except (ValueError, OSError, RuntimeError) as exc:
        teacher_error = f"Shipped teacher {values['shipped_name']!r} could not be loaded: {exc}"
elif values["teacher_source"] == "train" and S.get(TEACHER) is not None:
    key_cfg, trained = S[TEACHER]
    probe = None
    try:
        probe = toylab.build_config(values, user_path=(S.get(UPLOAD) or (None,))[0])
    except ValueError:
        probe = None
    if probe is not None and key_cfg == (probe.data.to_dict(), probe.teacher.to_dict()):
        teacher_obj = trained
if teacher_error:
    st.error(teacher_error)

# Validate the whole configuration; on error keep the last good one.
try:
    cfg = toylab.build_config(values, teacher=teacher_obj,
                              user_path=(S.get(UPLOAD) or (None,))[0])
    S[toylab.GOOD_KEY] = (dict(values), cfg)
except ValueError as exc:
    st.error(f"Invalid setting — {exc}. The last valid configuration is kept: Distill and the "
             "figures use it until the setting is fixed.")
    cfg = S[toylab.GOOD_KEY][1] if toylab.GOOD_KEY in S else None


# ------------------------------------------------------------------ transport controls
def _release(old) -> None:
    """Stop a session's previous job and drop it from the server-wide manager once it has ended
    (it holds its models and history; its run directory stays on disk and in the run index)."""
    if not old.done:
        old.stop()
        old.wait(timeout=10)
    pending = S.setdefault("toylab_to_release", [])
    pending.append(old)
    for j in list(pending):  # jobs still stopping are dropped on a later click, once ended
        if j.done:
            try:
                get_manager().remove(j.job_id)
            except (KeyError, ValueError):
                pass
            pending.remove(j)


def _start(phases: tuple[str, ...]) -> None:
    from dmdcore.jobs import TrainingJob
    from dmdcore.pipeline import Experiment
    from dmdcore.runs import RunIndex

    old = S.get(JOB)
    if old is not None:
        _release(old)
    root = runs_root()
    exp = Experiment(cfg, run_dir=toylab.new_run_dir(root, cfg.data.dataset),
                     index=RunIndex(root), teacher=teacher_obj)
    job = TrainingJob(exp, phases=phases, manager=get_manager(), owner=session_id())  # abandoned when the tab closes
    job.start()
    S[JOB] = job
    S.pop(URL_NOTES, None)
    S.pop(runbrowser.OPEN_KEY, None)
    S.pop("toylab_basins", None)
    S.pop("toylab_memo", None)


job = S.get(JOB)
snap0 = job.snapshot() if job is not None else None
running = snap0 is not None and snap0.state in ACTIVE

cols = st.columns([1.2, 1, 0.8, 0.8, 1.3, 0.8, 0.8])
with cols[0]:
    b_teacher = st.button("Train teacher", key="btn_train_teacher", icon=":material/school:",
                          disabled=cfg is None or values["teacher_source"] != "train",
                          help="Train an EDM teacher only (teacher source 'train').")
with cols[1]:
    b_distill = st.button("Distill", key="btn_distill", type="primary",
                          icon=":material/play_arrow:", disabled=cfg is None,
                          help="Start DMD2 distillation (trains a teacher first if needed).")
with cols[2]:
    b_pause = st.button("Pause", key="btn_pause", icon=":material/pause:", disabled=not running)
with cols[3]:
    b_resume = st.button("Resume", key="btn_resume", icon=":material/resume:",
                         disabled=snap0 is None or snap0.state != "paused")
with cols[4]:
    c1, c2 = st.columns([1, 1])
    n_step = c1.number_input("N", min_value=1, max_value=100000, value=10, key="step_n_value",
                             label_visibility="collapsed")
    b_step = c2.button("Step N", key="btn_step", disabled=snap0 is None or snap0.done)
with cols[5]:
    b_stop = st.button("Stop", key="btn_stop", icon=":material/stop:",
                       disabled=snap0 is None or snap0.done)
with cols[6]:
    b_reset = st.button("Reset", key="btn_reset", icon=":material/restart_alt:",
                        disabled=job is None)

autostart = S.pop(toylab.AUTOSTART_KEY, False)
try:
    if b_teacher and cfg is not None:
        _start(("teacher",))
    elif (b_distill or autostart) and cfg is not None:
        _start(("student",) if teacher_obj is not None else ("teacher", "student"))
    elif job is not None:
        if b_pause:
            job.pause()
        elif b_resume:
            job.resume()
        elif b_step:
            job.step_n(int(n_step))
        elif b_stop:
            job.stop()
        elif b_reset:
            _release(job)
            for k in (JOB, "toylab_basins", "toylab_memo"):
                S.pop(k, None)
except (ValueError, OSError) as exc:  # OSError: "disk full at …"
    st.error(md_escape(f"Could not start: {one_line(exc)}"))
else:
    if b_teacher or b_distill or autostart or b_pause or b_resume or b_step or b_stop or b_reset:
        st.rerun()  # redraw the transport buttons for the job's new state

job = S.get(JOB)
snap0 = job.snapshot() if job is not None else None
live = snap0 is not None and snap0.state in ACTIVE
saved = None  # (record, view) of a saved run opened from a link or the run browser
if job is None and S.get(runbrowser.OPEN_KEY):
    try:
        rec, snap0, view = runbrowser.open_saved(runs_root(), int(S[runbrowser.OPEN_KEY]))
        saved = (rec, view)
    except (ValueError, OSError, KeyError) as exc:
        st.error(md_escape(f"Cannot open run {S[runbrowser.OPEN_KEY]}: {one_line(exc)}"))
        S.pop(runbrowser.OPEN_KEY, None)


# ------------------------------------------------------------------ views
def _status(snap) -> None:
    if snap is None:
        st.info("No job yet: choose a configuration and press **Distill**.")
        return
    total = snap.total_steps or 0
    frac = min(1.0, snap.step / total) if total else 0.0
    eta = f"ETA {snap.eta_s:.0f} s" if snap.eta_s is not None else "ETA —"
    rate = f"{snap.steps_per_s:.1f} steps/s" if snap.steps_per_s else "— steps/s"
    st.progress(frac, text=f"{_phase_progress(snap)} · {rate} · {eta} · {snap.state}")
    if snap.state == "queued":
        st.info(f"Waiting for a free training slot — {snap.message}. "
                f"(At most {get_manager().max_concurrent} jobs run at once on this server.)")
    elif snap.state == "diverged":
        st.warning(f"The run diverged ({snap.message}). The last good state stays inspectable "
                   "below; lower the learning rates and press Distill again.")
    elif snap.state == "failed":
        st.error(f"The job failed: {snap.message}")


def _phase_lengths(j) -> dict:
    """{phase: steps} of the job's experiment (teacher steps, generator steps)."""
    exp = getattr(j, "experiment", None)
    if exp is None or not hasattr(exp, "cfg"):
        return {}
    return {p: (exp.cfg.teacher.steps if p == "teacher" else exp.cfg.distill.steps)
            for p in getattr(exp, "phases", ())}


def _phase_progress(snap) -> str:
    """'student · step 25/150 (teacher phase done: 400 steps)': steps of the current phase only."""
    lengths = _phase_lengths(S.get(JOB))
    phase = snap.phase or (snap.metrics[-1].get("phase") if snap.metrics else None)
    if phase not in lengths:
        return f"{phase or '…'} · step {snap.step}/{snap.total_steps or '?'}"
    before = sum(n for p, n in lengths.items() if p == "teacher" and phase == "student")
    done = min(lengths[phase], max(0, snap.step - before))
    text = f"{phase} · step {done}/{lengths[phase]}"
    if before:
        text += f" (teacher phase done: {before} steps)"
    return text


def _colors(z, modes):
    if z.shape[1] == 2:
        return plots.position_colors(z)
    if modes is not None:
        return plots.mode_colors(np.asarray(modes.teacher_modes))
    return np.full(len(z), "#1f77b4", dtype=object)


def _memo(name: str, key, build):
    """Rebuild a figure/array only when its key changes (the live panel redraws at 2 Hz, the
    samples change only at each evaluation)."""
    memo = S.setdefault("toylab_memo", {})
    hit = memo.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = build()
    memo[name] = (key, value)
    return value


def _views(z, teacher, student, modes, metrics, train_log, *, key: str, step_label: str,
           basins: dict | None = None, show_matrix: bool = True, phase: str | None = None,
           cursor: int | None = None) -> None:
    d = z.shape[1]
    version = (key, step_label, len(metrics), student is None)
    # PCA fitted once per job and phase on the teacher samples (identity for d = 2): during a
    # teacher phase T(z) still moves, the student phase's teacher is final.
    proj = _memo("proj", (key, phase, teacher.shape), lambda: plots.fit_projection(teacher))
    colors = _memo("colors", (key, phase, z.shape, modes is None), lambda: _colors(z, modes))
    selected, how = _selection(student, modes)
    sel_key = None if selected is None else tuple(selected.tolist())
    fig = _memo("pairing", (*version, sel_key), lambda: plots.pairing_figure(
        z, teacher, student, colors=colors, projection=proj, uirevision=f"pair-{key}",
        student_title=f"Student S(z) {step_label}", selected=selected))
    st.plotly_chart(fig, key="toylab_pairing", config={"displaylogo": False}, on_select="rerun",
                    selection_mode=("lasso", "box"))
    st.caption("Drag a lasso (or pick the box tool) around points in any panel: the same noises z_i are "
               "highlighted in z, T(z), S(z) and the pair displacements. Double-click to clear."
               + (f" Highlighted: {how}." if how else ""))
    if d > 2:
        st.caption("d > 2: samples are shown in the PCA plane fitted once on the teacher samples; "
                   "colors = the teacher sample's mode/cluster.")
    left, right = st.columns([1, 2])
    with left:
        if modes is not None:
            k = int(np.asarray(modes.centers).shape[0])
            st.selectbox("Highlight a teacher mode (where did its noise go?)", ["none", *range(k)],
                         key="toylab_sel_mode")
        if modes is not None and show_matrix and student is not None:
            st.plotly_chart(_memo("modes", version, lambda: plots.transition_figure(
                                np.asarray(modes.matrix), float(modes.copy_rate),
                                uirevision=f"modes-{key}")),
                            key="toylab_modes", config={"displaylogo": False})
        else:
            st.info("The mode transition matrix appears after the first student evaluation.")
    with right:
        basins = basins if basins is not None else S.get("toylab_basins")
        if d != 2:
            st.info("Basin maps are drawn for 2-D noise only.")
        elif basins is not None:
            st.plotly_chart(plots.basin_figure(basins["teacher"], basins.get("student"),
                                               basins["extent"], uirevision=f"basins-{key}"),
                            key="toylab_basins_fig", config={"displaylogo": False})
            agree = basins.get("agreement")
            st.caption(("Teacher basin map (no student yet)" if basins["step"] is None
                        else f"Basin maps at student step {basins['step']}")
                       + (f" · teacher/student agree on {100 * agree:.1f}% of the grid" if agree is not None else "")
                       + " (kept at each evaluation).")
        else:
            st.info("Basin maps appear at the first student evaluation.")
    _curves(metrics, train_log, key=key, cursor=cursor,
            n_modes=None if modes is None else int(np.asarray(modes.centers).shape[0]))


def _curves(metrics, train_log, *, key: str, cursor: int | None = None, n_modes: int | None = None) -> None:
    """Teacher-phase and student-phase curves, each against its own steps."""
    import pandas as pd

    mf = toylab.metrics_frame(metrics)
    log = pd.DataFrame(train_log) if train_log else None
    if len(curves.phase_rows(mf, "teacher")) or len(curves.phase_rows(log, "teacher")):
        st.plotly_chart(curves.teacher_curves_figure(mf, log, uirevision=f"tcurves-{key}"),
                        key="toylab_teacher_curves", config={"displaylogo": False})
    if len(curves.phase_rows(mf, "student")) or len(curves.phase_rows(log, "student")):
        st.plotly_chart(curves.student_curves_figure(mf, log, cursor=cursor, uirevision=f"curves-{key}",
                                                     n_modes=n_modes),
                        key="toylab_curves", config={"displaylogo": False})
        st.caption(plots.DELTA_E_HELP + " Dotted lines: chance levels (ΔE 1 = random pairing, 0 = OT "
                   "pairing; copy rate 1/K for K modes; pair retrieval 1/n)."
                   + (f" Dashed vertical line: the time cursor (student step {cursor})." if cursor is not None else ""))


def _selection(student, modes):
    """(row indices, description) to highlight: a teacher mode picked below, else the last
    lasso/box selection of the pairing figure (Streamlit's Plotly selection event)."""
    mode = S.get("toylab_sel_mode", "none")
    if modes is not None and mode != "none":
        rows = np.flatnonzero(np.asarray(modes.teacher_modes) == int(mode))
        return rows, f"teacher mode {mode} ({len(rows)} noises)"
    traces = ("z", "T(z)") + (("S(z)", "T→S", "S(z) end") if student is not None else ())
    event = S.get("toylab_pairing")
    rows = plots.selected_rows(event.get("selection") if isinstance(event, dict) or hasattr(event, "get")
                               else None, traces) if event is not None else None
    return rows, (None if rows is None else f"{len(rows)} selected noises")


def _draw(snap) -> None:
    """The figures (main body): redrawn by a full rerun at each new evaluation."""
    if snap is None:
        if cfg is not None and teacher_obj is not None and values["teacher_source"] == "shipped":
            try:
                pv = _preview(values["shipped_name"], __import__("json").dumps(cfg.to_dict()))
            except (ValueError, RuntimeError, AttributeError) as exc:
                st.error(f"Preview failed: {exc}")
                return
            _views(pv["z"], pv["teacher_samples"], None, pv.get("modes"), [], [],
                   key=f"preview-{values['shipped_name']}-{pv['cfg_hash']}",
                   step_label="(not distilled yet)", basins=pv.get("basins"), show_matrix=False)
        return
    if snap.z is None or snap.teacher_samples is None:
        st.info(f"{snap.phase or 'job'}: {snap.message} — samples appear at the first evaluation.")
        if snap.train_log:
            _curves(snap.metrics, snap.train_log, key=snap.job_id)
        return
    student, modes, label = snap.student_samples, snap.modes, ""
    hist = snap.history
    steps = [h[0] for h in hist]
    cap = _phase_lengths(S.get(JOB)).get("student")
    if cap is None and saved is not None:  # a saved run: its configured student steps
        cap = saved[1]["config"].distill.steps
    cursor = timecursor.cursor_slider(steps, total=cap)
    if cursor is not None and cursor != steps[-1]:
        student = hist[steps.index(cursor)][1]
        if modes is not None:
            modes = _modes_at(snap.job_id, cursor, student, snap.teacher_samples, modes.centers)
    if cursor is not None:
        label = f"(step {cursor})"
    d = snap.z.shape[1]
    from dmdcore.convergence import student_status

    conv = student_status(snap.metrics, cap=cap, finished=snap.state not in ACTIVE + ("paused",))
    timecursor.headline(timecursor.row_at(snap.metrics, cursor), n=snap.z.shape[0], d=d, modes=modes,
                        total=cap, convergence=conv)
    _views(snap.z, snap.teacher_samples, student, modes, snap.metrics, snap.train_log,
           key=snap.job_id, step_label=label, phase=snap.phase, cursor=cursor,
           basins=_basins_at(cursor) if d == 2 else None)


def _modes_at(job_id, step, student, teacher, centers):
    from dmdcore.pairing import mode_transition

    return _memo("modes_at", (job_id, step), lambda: mode_transition(student, teacher, centers=centers))


def _basins_at(step: int | None) -> dict | None:
    """Basin maps at the cursor's student step (kept by the engine at each evaluation)."""
    j = S.get(JOB)
    exp = getattr(j, "experiment", None)
    if j is None and saved is not None:  # a saved run: the maps kept in its samples.npz
        view = saved[1]
        if step not in view["basins"] or view["basin_teacher"] is None:
            return None
        sm, tm = view["basins"][step], view["basin_teacher"]
        return {"key": ("saved", step), "step": step, "extent": view["basin_extent"], "teacher": tm,
                "student": sm, "agreement": float((sm == tm).mean())}
    if step is None or exp is None or not hasattr(exp, "basin_maps"):
        return S.get("toylab_basins")
    at = step if step in exp.basin_steps() else None  # None: not kept yet, the current weights
    key = (j.job_id, step, at is None and (j.snapshot().step if at is None else 0))
    if S.get("toylab_basins", {}).get("key") != key:
        try:
            maps = exp.basin_maps(grid_n=64, extent=3.0, step=at)
        except (ValueError, RuntimeError) as exc:
            st.warning(f"Basin maps unavailable: {exc}")
            return None
        S["toylab_basins"] = {"key": key, "step": maps.step, "extent": 3.0, "teacher": maps.teacher_modes,
                              "student": maps.student_modes, "agreement": maps.agreement}
    return S["toylab_basins"]


drawn_evals = len(snap0.metrics) if snap0 is not None else 0


@st.fragment(run_every=0.5 if live else None)
def live_status() -> None:
    """Progress, ETA and the latest metrics from ``snapshot()`` at 2 Hz while a job runs.

    The heavy figures are drawn by the main script; this fragment asks for a full rerun only
    when there is something new to draw (a new evaluation) or the job starts/stops, so the
    page's own CPU use stays small next to the training thread's."""
    j = S.get(JOB)
    snap = j.snapshot() if j is not None else None
    if snap is None and saved is not None:
        rec = saved[0]
        st.info(f"Saved run {rec.id} ({snap0.state}, {rec.dataset}, d = {rec.dim}) opened from the run index: "
                f"`{rec.path}`. Its results and time travel come from its saved files; press **Distill** "
                "to run the configuration in the sidebar.")
        return
    _status(snap)
    now_live = snap is not None and snap.state in ACTIVE
    if now_live != live or (snap is not None and len(snap.metrics) != drawn_evals):
        st.rerun(scope="app")


@st.fragment(run_every=0.8 if S.get(timecursor.PLAY_KEY) else None)
def player() -> None:
    """The play button's animation: one evaluation per tick, then a full redraw."""
    if snap0 is not None and S.get(timecursor.PLAY_KEY):
        timecursor.play_tick([h[0] for h in snap0.history])


live_status()
_draw(snap0)
player()
opened = runbrowser.browser(runs_root(), can_open=not live)
if opened is not None:
    if job is not None:
        _release(job)
        S.pop(JOB, None)
    for k in ("toylab_basins", "toylab_memo"):
        S.pop(k, None)
    timecursor.reset(S)
    S[runbrowser.OPEN_KEY] = opened
    st.rerun()

# ------------------------------------------------------------------ exports (job idle)
if job is not None and not live and snap0 is not None and snap0.teacher_samples is not None:
    st.subheader("Export")
    e1, e2, e3 = st.columns(3)
    e1.download_button("Metrics CSV", toylab.metrics_csv_bytes(snap0.metrics, snap0.run_dir),
                       file_name=f"{snap0.job_id}-metrics.csv", mime="text/csv",
                       key="dl_metrics")
    e2.download_button("Eval samples NPZ",
                       toylab.samples_npz_bytes(snap0.z, snap0.teacher_samples,
                                                snap0.student_samples, snap0.history),
                       file_name=f"{snap0.job_id}-samples.npz", key="dl_npz")
    if snap0.run_dir:
        try:
            e3.download_button("Run directory (zip)", toylab.run_dir_zip_bytes(snap0.run_dir),
                               file_name=f"{snap0.job_id}-run.zip", mime="application/zip",
                               key="dl_zip")
            st.caption(f"Saved in the run index: `{snap0.run_dir}`")
        except ValueError as exc:
            e3.warning(str(exc))
