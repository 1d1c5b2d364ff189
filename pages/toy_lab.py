"""Toy Lab: distil a toy teacher live and watch the student's noise→sample pairing form.

The page only reads widgets, drives a background ``dmdcore.jobs.TrainingJob`` over a
``dmdcore.pipeline.Experiment`` and draws ``job.snapshot()``; it holds no training logic.
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from ui.errors import md_escape, one_line

from ui import plots, toylab, urlstate
from ui.session import get_manager, runs_root, session_id, warm_up_process
from ui.router import ensure_router
from ui.verdict import render_verdict

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
url_errors = toylab.init_controls(S, st.query_params)
for msg in url_errors:
    st.error(md_escape(msg))  # URL values are shown as text, never as Markdown

shipped = toylab.shipped_teachers()  # [] when the manifest lists none
shipped_names = [e["name"] for e in shipped]


def _widget(name: str, **kw):
    """Draw the widget for control ``name`` (value from session state key ctl_<name>)."""
    c = urlstate.BY_NAME[name]
    key = toylab.WIDGET_PREFIX + name
    label = c.label or name
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
            if not shipped_names:
                st.warning("No shipped toy teacher in checkpoints/manifest.json — choose 'train'.")
            else:
                key = toylab.WIDGET_PREFIX + "shipped_name"
                if S.get(key) not in shipped_names:
                    if S.get(key):  # e.g. a shared link naming a teacher this install lacks
                        st.error(md_escape(f"Shipped teacher {S[key]!r} not in {shipped_names}; "
                                           f"showing {shipped_names[0]!r} instead."))
                    S[key] = shipped_names[0]
                st.selectbox("Shipped teacher", shipped_names, key=key,
                             help=urlstate.BY_NAME["shipped_name"].help)
                entry = shipped[shipped_names.index(S[key])]
                st.caption(entry.get("description", ""))
        _widget("dataset", disabled=use_shipped)
        _widget("dim", disabled=use_shipped)
        _widget("n_modes", disabled=use_shipped)
        _widget("base", disabled=use_shipped)
        upload = st.file_uploader("Your data (CSV/NPY, dataset 'user')", type=["csv", "npy"],
                                  key="toylab_upload_widget", disabled=use_shipped)
        _widget("t_width", disabled=use_shipped)
        _widget("t_depth", disabled=use_shipped)
        _widget("t_steps", disabled=use_shipped)
        _widget("t_lr", disabled=use_shipped)
        _widget("t_twin", disabled=use_shipped)
    with st.expander("Student (DMD2)", expanded=False):
        for name in ("init", "ratio", "lr", "lr_fake", "batch", "s_steps", "gan", "regression",
                     "reg_weight", "student_steps"):
            _widget(name)
    with st.expander("Run and evaluation", expanded=False):
        for name in ("seed", "eval_n", "eval_every", "bootstrap"):
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
else:  # the file was removed from the uploader: its error goes (the last good upload stays)
    S.pop("toylab_upload_error", None)
    S.pop("toylab_upload_sig", None)
if S.get("toylab_upload_error"):
    st.error(md_escape(S["toylab_upload_error"]))
if S.get(UPLOAD):
    st.sidebar.caption(f"Using upload {S[UPLOAD][2]}: {S[UPLOAD][1][0]} × {S[UPLOAD][1][1]}")

# Keep the URL in sync (only non-default values).
try:
    qp = urlstate.encode(values)
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
except ValueError as exc:
    st.error(f"Could not start: {exc}")
else:
    if b_teacher or b_distill or autostart or b_pause or b_resume or b_step or b_stop or b_reset:
        st.rerun()  # redraw the transport buttons for the job's new state

job = S.get(JOB)
snap0 = job.snapshot() if job is not None else None
live = snap0 is not None and snap0.state in ACTIVE


# ------------------------------------------------------------------ views
def _status(snap) -> None:
    if snap is None:
        st.info("No job yet: choose a configuration and press **Distill**.")
        return
    total = snap.total_steps or 0
    frac = min(1.0, snap.step / total) if total else 0.0
    eta = f"ETA {snap.eta_s:.0f} s" if snap.eta_s is not None else "ETA —"
    rate = f"{snap.steps_per_s:.1f} steps/s" if snap.steps_per_s else "— steps/s"
    phase = snap.phase or (snap.metrics[-1].get("phase") if snap.metrics else None) or "…"
    st.progress(frac, text=f"{phase} · step {snap.step}/{total or '?'} · {rate} · "
                           f"{eta} · {snap.state}")
    if snap.state == "queued":
        st.info(f"Waiting for a free training slot — {snap.message}. "
                f"(At most {get_manager().max_concurrent} jobs run at once on this server.)")
    elif snap.state == "diverged":
        st.warning(f"The run diverged ({snap.message}). The last good state stays inspectable "
                   "below; lower the learning rates and press Distill again.")
    elif snap.state == "failed":
        st.error(f"The job failed: {snap.message}")


def _latest(metrics: list[dict], col: str):
    for row in reversed(metrics):
        v = row.get(col)
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            return f, row
    return None, None


def _headline(snap) -> None:
    de, row = _latest(snap.metrics, "delta_e")
    c = st.columns(5)
    if de is None:
        c[0].metric("ΔE (pairing inefficiency)", "—", help=plots.DELTA_E_HELP)
        return
    lo, hi = row.get("delta_e_lo"), row.get("delta_e_hi")
    ci = ""
    try:
        ci = f"95% CI [{float(lo):.3f}, {float(hi):.3f}]"
    except (TypeError, ValueError):
        ci = ""
    c[0].metric("ΔE (pairing inefficiency)", f"{de:.3f}", help=plots.DELTA_E_HELP + " " + ci)
    for col, (key, label) in zip(c[1:], (("copy_rate", "copy rate"), ("w2", "W₂² S↔T"),
                                          ("eta_student", "η(S)"), ("retrieval", "pair retrieval"))):
        v, _ = _latest(snap.metrics, key)
        col.metric(label, "—" if v is None else f"{v:.3f}")
    st.caption(f"Latest evaluation at step {row.get('step')} · n = {snap.z.shape[0] if snap.z is not None else '—'} · {ci}")
    # the copy verdict of this evaluation: ΔE with n, d, its controls (ui/verdict.py)
    render_verdict(row, n_modes=None if snap.modes is None else int(snap.modes.centers.shape[0]))


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
           basins: dict | None = None, show_matrix: bool = True, phase: str | None = None) -> None:
    d = z.shape[1]
    version = (key, step_label, len(metrics), student is None)
    # PCA fitted once per job and phase on the teacher samples (identity for d = 2): during a
    # teacher phase T(z) still moves, the student phase's teacher is final.
    proj = _memo("proj", (key, phase, teacher.shape), lambda: plots.fit_projection(teacher))
    colors = _memo("colors", (key, phase, z.shape, modes is None), lambda: _colors(z, modes))
    fig = _memo("pairing", version, lambda: plots.pairing_figure(
        z, teacher, student, colors=colors, projection=proj, uirevision=f"pair-{key}",
        student_title=f"Student S(z) {step_label}"))
    st.plotly_chart(fig, key="toylab_pairing", config={"displaylogo": False})
    if d > 2:
        st.caption("d > 2: samples are shown in the PCA plane fitted once on the teacher samples; "
                   "colors = the teacher sample's mode/cluster.")
    left, right = st.columns([1, 2])
    with left:
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
                       + " (refreshed at each evaluation).")
        else:
            st.info("Basin maps appear at the first student evaluation.")
    import pandas as pd

    fig_c = plots.curves_figure(toylab.metrics_frame(metrics),
                                pd.DataFrame(train_log) if train_log else None,
                                uirevision=f"curves-{key}")
    st.plotly_chart(fig_c, key="toylab_curves", config={"displaylogo": False})
    st.caption(plots.DELTA_E_HELP)


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
            import pandas as pd

            st.plotly_chart(plots.curves_figure(toylab.metrics_frame(snap.metrics),
                                                pd.DataFrame(snap.train_log),
                                                uirevision=f"curves-{snap.job_id}"),
                            key="toylab_curves", config={"displaylogo": False})
        return
    student, modes, label = snap.student_samples, snap.modes, ""
    hist = snap.history
    if len(hist) >= 2:
        travel = st.toggle("Time travel", key="toylab_tt", help="Show the pairing at an earlier "
                           "evaluation (saved snapshots).")
        if travel:
            idx = st.slider("Evaluation", 0, len(hist) - 1, len(hist) - 1, key="toylab_tt_idx",
                            format="%d")
            step, student = hist[idx]
            label = f"(step {step})"
            if modes is not None:
                from dmdcore.pairing import mode_transition

                modes = mode_transition(student, snap.teacher_samples, centers=modes.centers)
    _views(snap.z, snap.teacher_samples, student, modes, snap.metrics, snap.train_log,
           key=snap.job_id, step_label=label, phase=snap.phase)


# ------------------------------------------------------------------ basin maps
# Refreshed at every student evaluation while the job runs (the full rerun that draws the new
# evaluation) and at the final step when it pauses or ends. The experiment's lock makes the
# call wait for the current training step; the teacher's side is computed once per job.
if (job is not None and snap0 is not None and snap0.z is not None
        and snap0.z.shape[1] == 2 and snap0.student_samples is not None):
    bkey = (snap0.job_id, len(snap0.metrics)) if live else (snap0.job_id, snap0.step)
    if S.get("toylab_basins", {}).get("key") != bkey:
        try:
            maps = job.experiment.basin_maps(grid_n=64, extent=3.0)
            S["toylab_basins"] = {"key": bkey, "step": maps.step, "extent": 3.0,
                                  "teacher": maps.teacher_modes, "student": maps.student_modes,
                                  "agreement": maps.agreement}
        except (ValueError, RuntimeError) as exc:
            st.warning(f"Basin maps unavailable: {exc}")

drawn_evals = len(snap0.metrics) if snap0 is not None else 0


@st.fragment(run_every=0.5 if live else None)
def live_status() -> None:
    """Progress, ETA and the latest metrics from ``snapshot()`` at 2 Hz while a job runs.

    The heavy figures are drawn by the main script; this fragment asks for a full rerun only
    when there is something new to draw (a new evaluation) or the job starts/stops, so the
    page's own CPU use stays small next to the training thread's."""
    j = S.get(JOB)
    snap = j.snapshot() if j is not None else None
    _status(snap)
    if snap is not None and snap.z is not None and snap.teacher_samples is not None:
        _headline(snap)
    now_live = snap is not None and snap.state in ACTIVE
    if now_live != live or (snap is not None and len(snap.metrics) != drawn_evals):
        st.rerun(scope="app")


live_status()
_draw(snap0)

# ------------------------------------------------------------------ exports (job idle)
if job is not None and not live and snap0 is not None and snap0.teacher_samples is not None:
    st.subheader("Export")
    e1, e2, e3 = st.columns(3)
    e1.download_button("Metrics CSV", toylab.metrics_csv_bytes(snap0.metrics),
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
