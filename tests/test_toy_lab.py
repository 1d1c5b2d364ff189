"""Toy Lab: the pure helpers (figures, URL codec) and the page driven through AppTest."""

from __future__ import annotations

import colorsys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from ui import curves, plots, timecursor, toylab, urlstate


# ------------------------------------------------------------------ plots: colors / projection
def test_position_colors_follow_angle_and_radius():
    pts = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, 0.0]])
    cols = plots.position_colors(pts, scale=2.0)
    # independent computation of the hue/saturation map
    for p, c in zip(pts, cols):
        h = (np.arctan2(p[1], p[0]) / (2 * np.pi)) % 1.0
        s = min(np.hypot(*p) / 2.0, 1.0)
        r, g, b = colorsys.hls_to_rgb(h, 0.5, 0.15 + 0.85 * s)
        assert c == f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})"
    assert cols[0] != cols[1] != cols[2]
    # continuity: two nearby points get nearly the same color
    near = plots.position_colors(np.array([[1.0, 1.0], [1.001, 1.0]]), scale=2.0)
    a = np.array(near[0][4:-1].split(","), float)
    b = np.array(near[1][4:-1].split(","), float)
    assert np.abs(a - b).max() <= 2
    with pytest.raises(ValueError, match="points"):
        plots.position_colors(np.zeros((3, 3)))


def test_mode_colors_are_categorical():
    c = plots.mode_colors(np.array([0, 1, 0, 21]))
    assert c[0] == c[2] == plots.MODE_PALETTE[0] and c[1] == plots.MODE_PALETTE[1]
    assert c[3] == plots.MODE_PALETTE[21 % len(plots.MODE_PALETTE)]


def test_projection_identity_in_2d_and_pca_in_higher_d():
    rng = np.random.default_rng(0)
    x2 = rng.standard_normal((50, 2))
    p2 = plots.fit_projection(x2)
    assert p2.is_identity and np.allclose(p2.transform(x2), x2, atol=1e-6)
    assert p2.axis_titles() == ("x₁", "x₂")
    # data stretched along a known direction in R^5: PC1 must be that direction
    u = np.array([1.0, 2.0, 0.0, -1.0, 0.5])
    u /= np.linalg.norm(u)
    x = rng.standard_normal((400, 1)) * 5.0 * u + 0.1 * rng.standard_normal((400, 5)) + 3.0
    p = plots.fit_projection(x)
    assert not p.is_identity
    assert abs(abs(float(p.components[0] @ u)) - 1.0) < 1e-2
    y = p.transform(x)
    assert y.dtype == np.float32 and y.shape == (400, 2)
    assert abs(y[:, 0].mean()) < 1e-4  # centred on the teacher mean
    # explained variance against sklearn's independent PCA
    from sklearn.decomposition import PCA

    ref = PCA(n_components=2).fit(x)
    assert np.allclose(p.explained, ref.explained_variance_ratio_, atol=1e-6)
    assert "PC1 of teacher samples" in p.axis_titles()[0]
    with pytest.raises(ValueError, match="x"):
        p.transform(np.zeros((3, 4)))


def test_segments_xy_separates_pairs_with_nan():
    a = np.array([[0, 0], [1, 1]], float)
    b = np.array([[2, 0], [3, 5]], float)
    x, y = plots.segments_xy(a, b)
    assert x.dtype == np.float32 and len(x) == 6
    assert np.allclose(x[[0, 1, 3, 4]], [0, 2, 1, 3]) and np.allclose(y[[0, 1, 3, 4]], [0, 0, 1, 5])
    assert np.isnan(x[2]) and np.isnan(y[5])


# ------------------------------------------------------------------ plots: figures
def _pairing_inputs(n=100, d=2, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    t = (2 * z).astype(np.float32)
    s = (2 * z + 0.1).astype(np.float32)
    return z, t, s


def test_pairing_figure_is_one_webgl_figure_with_shared_colors():
    z, t, s = _pairing_inputs()
    proj = plots.fit_projection(t)
    cols = plots.position_colors(z)
    fig = plots.pairing_figure(z, t, s, colors=cols, projection=proj, uirevision="u1",
                               max_segments=30)
    assert all(isinstance(tr, go.Scattergl) for tr in fig.data)
    assert fig.layout.uirevision == "u1"
    noise, teach, stud, seg, ends = fig.data
    assert list(noise.marker.color) == list(teach.marker.color) == list(stud.marker.color)
    assert np.allclose(np.asarray(teach.x), t[:, 0]) and np.allclose(np.asarray(stud.y), s[:, 1])
    assert len(seg.x) == 3 * 30  # capped segments
    assert np.asarray(teach.x).dtype == np.float32
    # without a student: noise and teacher only
    fig0 = plots.pairing_figure(z, t, None, colors=cols, projection=proj)
    assert len(fig0.data) == 2
    with pytest.raises(ValueError, match="student"):
        plots.pairing_figure(z, t, s[:10], colors=cols, projection=proj)


def test_pairing_figure_projects_high_dim_with_pca_titles():
    z, t, s = _pairing_inputs(d=6)
    proj = plots.fit_projection(t)
    fig = plots.pairing_figure(z, t, s, colors=plots.mode_colors(np.zeros(100, int)),
                               projection=proj)
    assert "PC1 of teacher samples" in fig.layout.xaxis2.title.text
    assert fig.layout.xaxis.title.text.startswith("PC1 of z (")  # noise: its own PCA, named as such


def test_transition_and_basin_figures():
    m = np.array([[0.9, 0.1], [0.2, 0.8]])
    fig = plots.transition_figure(m, copy_rate=0.85)
    assert "0.850" in fig.layout.title.text
    assert fig.data[0].textfont.size >= 12 and fig.data[0].texttemplate == "%{z:.0%}"  # readable cells
    assert len(fig.layout.title.text) <= 40  # fits the panel (it was cut: "…(copy rate = 0.796, diagona")
    assert np.allclose(np.asarray(fig.data[0].z), m)
    with pytest.raises(ValueError, match="matrix"):
        plots.transition_figure(np.zeros((2, 3)), 0.0)
    tm = np.array([[0, 1], [1, 2]])
    bf = plots.basin_figure(tm, tm[::-1], extent=3.0)
    maps = [tr for tr in bf.data if tr.type == "heatmap"]
    assert len(maps) == 2
    assert np.array_equal(np.asarray(maps[1].customdata), tm[::-1])
    # a legend swatch per mode, in the basin's color from the noise color wheel (hue = angle of
    # the basin's centroid): mode 0 sits at the bottom-left, mode 2 at the top-right
    swatches = {tr.name: tr.marker.color for tr in bf.data if tr.type == "scatter"}
    assert list(swatches) == ["mode 0", "mode 1", "mode 2"]
    assert swatches["mode 0"] == plots.position_colors(np.array([[-1.0, -1.0]]), scale=1.0)[0]
    assert swatches["mode 2"] == plots.position_colors(np.array([[1.0, 1.0]]), scale=1.0)[0]
    with pytest.raises(ValueError, match="student_map"):
        plots.basin_figure(tm, np.zeros((3, 3), int), extent=3.0)


def test_student_curves_band_and_missing_cells():
    metrics = pd.DataFrame({
        "step": [0, 10, 20, 30],
        "phase": ["teacher", "student", "student", "student"],
        "delta_e": [None, 0.5, 0.3, 0.2],
        "delta_e_lo": [None, 0.4, 0.25, 0.1],
        "delta_e_hi": [None, 0.6, 0.35, 0.3],
        "w2": [None, 1.0, 0.5, 0.4],
        "eta_teacher": [None, 0.1, 0.1, 0.1],
        "eta_student": [None, 0.3, 0.2, 0.15],
        "loss_dm": [None, 1.0, 0.9, 0.8],
    })

    def points(fig, name):  # finite y values of the trace called name (0 if absent)
        ys = [np.asarray(tr.y, np.float64) for tr in fig.data if tr.name == name and tr.y is not None]
        return int(np.isfinite(ys[0]).sum()) if ys else 0

    fig = curves.student_curves_figure(metrics)
    assert points(fig, "ΔE") == 3  # the teacher row's empty cells are not points
    band = next(tr for tr in fig.data if tr.name == "ΔE 95% CI")
    assert np.allclose(np.asarray(band.y, float), [0.6, 0.35, 0.3, 0.1, 0.25, 0.4])
    assert points(fig, "η(S)") == 3 and points(fig, "loss_dm") == 3
    assert points(curves.student_curves_figure(None), "ΔE") == 0


# ------------------------------------------------------------------ URL codec
def test_urlstate_roundtrip_only_non_defaults():
    vals = urlstate.defaults()
    assert urlstate.encode(vals) == {}
    vals.update(dataset="mixture", dim=8, gan=True, lr=5e-4, seed=7)
    qp = urlstate.encode(vals)
    assert qp == {"ds": "mixture", "d": "8", "gan": "1", "lr": "0.0005", "seed": "7"}
    back, errors = urlstate.decode(qp)
    assert errors == [] and back == vals


def test_urlstate_rejects_bad_values_naming_them():
    back, errors = urlstate.decode({"d": "1000", "ds": "nope", "lr": "abc", "ss": "12",
                                    "zzz": "ignored"})
    assert back["s_steps"] == 12 and back["dim"] == urlstate.defaults()["dim"]
    assert len(errors) == 3
    assert any("'d'" in e and "[2, 256]" in e for e in errors)
    assert any("'ds'" in e and "8gaussians" in e for e in errors)
    with pytest.raises(ValueError, match="gan"):
        urlstate.check("gan", "maybe")
    with pytest.raises(ValueError, match="s_steps"):
        urlstate.check("s_steps", 2.5)


# ------------------------------------------------------------------ the page (AppTest)
import json
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TINY = {  # URL keys → a teacher trained in a few seconds and a 20-step distillation
    "t": "train", "tw": "32", "td": "2", "ts": "60", "ss": "20", "bs": "64", "en": "200",
    "ee": "10", "boot": "20", "tt": "0",  # no twin: a faster teacher, the verdict shows the controls as absent
}


@pytest.fixture()
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _toy_lab(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/toy_lab.py")
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(elements) -> str:
    """The messages as shown: the page Markdown-escapes them (ui.errors.md_escape)."""
    return " ".join(e.value.replace("\\", "") for e in elements)


def _metric(at: AppTest, label: str):
    for m in at.metric:
        if m.label == label:
            return m.value
    return None


def _wait_until(at: AppTest, pred, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if pred(at):
            return
    raise AssertionError(f"condition not met within {timeout} s; errors: {[e.value for e in at.error]}")


def test_toy_lab_distill_shows_delta_e_and_exports(runs_dir):
    at = _toy_lab(TINY)
    assert at.number_input(key="ctl_s_steps").value == 20  # URL restored the controls
    at.button(key="btn_distill").click()
    at.run()
    _wait_until(at, lambda a: _metric(a, "ΔE (pairing inefficiency)") not in (None, "—")
                and a.button(key="btn_stop").disabled)
    value = float(_metric(at, "ΔE (pairing inefficiency)"))
    # the number shown is the last metrics.csv row of the run the job saved
    from dmdcore.runs import RunDir

    runs = [p for p in runs_dir.glob("toylab-*") if p.is_dir()]
    assert len(runs) == 1
    rows = [r for r in RunDir(runs[0]).read_metrics() if r.get("delta_e") not in (None, "")]
    assert rows and abs(float(rows[-1]["delta_e"]) - value) < 5e-4
    assert rows[-1]["step"] == 20
    # the headline shows the copy verdict of that row: n, d, controls (absent: the twin was opted out)
    assert rows[-1]["n_eval"] == 200 and rows[-1]["verdict"] in ("copies", "same_map", "remaps", "partial",
                                                                  "unresolved", "invalid")
    md = " ".join(m.value for m in at.markdown)
    assert "n = 200 · d = 2" in md
    assert any("independent teacher: absent" in c.value for c in at.caption)
    # 3 evaluations < the plateau window: the headline says the student has not converged, greyed
    assert rows[-1]["converged"] == 0
    assert "not converged (plateau not reached by cap 20) — kept out of verdicts" in md
    # the run is in the index, exports are offered
    from dmdcore.runs import RunIndex

    assert any(Path(r.path).resolve() == runs[0].resolve() for r in RunIndex(runs_dir).list())
    labels = {b.label for b in at.get("download_button")}
    assert {"Metrics CSV", "Eval samples NPZ", "Run directory (zip)"} <= labels
    # Reset forgets the session's job
    at.button(key="btn_reset").click()
    at.run()
    assert _metric(at, "ΔE (pairing inefficiency)") is None


def test_toy_lab_query_params_round_trip(runs_dir):
    at = _toy_lab({"t": "train", "ds": "mixture", "d": "6", "gan": "1", "lr": "0.0005",
                   "seed": "3"})
    assert at.selectbox(key="ctl_dataset").value == "mixture"
    assert at.number_input(key="ctl_dim").value == 6
    assert at.toggle(key="ctl_gan").value is True
    assert at.number_input(key="ctl_seed").value == 3
    # changing a control writes the URL (only non-default values)
    at.number_input(key="ctl_seed").set_value(5)
    at.run()
    assert at.query_params["seed"] == "5"
    assert at.query_params["ds"] == "mixture" and at.query_params["d"] == "6"
    assert "ss" not in at.query_params  # defaults stay out of the URL
    # the URL written by the page restores the same controls in a new session
    at2 = _toy_lab(dict(at.query_params))
    assert at2.number_input(key="ctl_seed").value == 5
    assert at2.selectbox(key="ctl_dataset").value == "mixture"


def test_toy_lab_bad_url_value_shows_a_warning_and_keeps_defaults(runs_dir):
    at = _toy_lab({"t": "train", "d": "100000", "ds": "nonsense"})
    warns = _shown(at.warning)
    assert "'d'" in warns and "[2, 256]" in warns and "'ds'" in warns and "'nonsense'" in warns
    assert at.selectbox(key="ctl_dataset").value == "8gaussians"
    at.number_input(key="ctl_seed").set_value(4)  # still shown after the next rerun
    at.run()
    assert "'nonsense'" in _shown(at.warning)


def test_toy_lab_upload_validation(runs_dir):
    at = _toy_lab({"t": "train", "ds": "user"})
    # not a user dataset yet: the config error names the field and Distill stays disabled
    assert any("dataset" in e.value and "upload" in e.value for e in at.error)
    assert at.button(key="btn_distill").disabled
    # a CSV with a non-numeric cell is rejected with row/column
    rows = "\n".join(f"{i * 0.1},{i * 0.2}" for i in range(150)).replace("0.5,1.0", "0.5,abc", 1)
    at.file_uploader(key="toylab_upload_widget").set_value(("bad.csv", rows.encode(), "text/csv"))
    at.run()
    errs = _shown(at.error)
    assert "Upload rejected" in errs and "bad.csv" in errs and "abc" in errs
    # removing the file from the uploader removes its error
    at.file_uploader(key="toylab_upload_widget").set_value(None)
    at.run()
    assert not any("Upload rejected" in e.value for e in at.error)
    # a valid one is accepted and enables Distill with its dimension
    rng = np.random.default_rng(0)
    good = "\n".join(",".join(f"{v:.4f}" for v in r) for r in rng.standard_normal((200, 3)))
    at.file_uploader(key="toylab_upload_widget").set_value(("good.csv", good.encode(), "text/csv"))
    at.run()
    assert not any("Upload rejected" in e.value for e in at.error)
    assert not at.button(key="btn_distill").disabled
    assert any("200 × 3" in c.value for c in at.sidebar.caption)


def test_home_start_here_opens_toy_lab_and_starts_distilling(runs_dir):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.button(key="start_here").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Toy Lab"
    assert at.selectbox(key="ctl_shipped_name").value == toylab.START_HERE_VALUES["shipped_name"]
    assert at.number_input(key="ctl_s_steps").value == toylab.START_HERE_VALUES["s_steps"]
    # a background job on the shipped teacher is running (student phase only)
    progress = " ".join(p.proto.text for p in at.get("progress"))
    assert "student" in progress and ("running" in progress or "queued" in progress), progress
    assert not at.button(key="btn_stop").disabled
    at.button(key="btn_stop").click()
    at.run()
    _wait_until(at, lambda a: "stopped" in " ".join(p.proto.text for p in a.get("progress")),
                timeout=120)


def test_two_sessions_have_their_own_jobs_and_the_cap_queues(runs_dir, monkeypatch):
    monkeypatch.setenv("DMD_MAX_JOBS", "1")
    slow = {"tn": "8gaussians", "ss": "100000", "ee": "1000", "en": "200", "boot": "0", "stop": "0"}
    a = _toy_lab(slow)
    a.button(key="btn_distill").click()
    a.run()
    b = _toy_lab({**slow, "seed": "1"})
    assert "Waiting" not in " ".join(i.value for i in b.info)  # B has no job of its own yet
    b.button(key="btn_distill").click()
    b.run()
    # B waits for the single slot (visible message with its queue position); A keeps running
    info_b = " ".join(i.value for i in b.info)
    assert "Waiting for a free training slot" in info_b and "1 jobs run at once" in info_b
    a.run()
    assert "running" in " ".join(p.proto.text for p in a.get("progress"))
    # no cross-talk: each session controls only its own job
    a.button(key="btn_stop").click()
    a.run()
    _wait_until(b, lambda s: "running" in " ".join(p.proto.text for p in s.get("progress")),
                timeout=120)
    a.run()
    assert "stopped" in " ".join(p.proto.text for p in a.get("progress"))
    b.button(key="btn_stop").click()
    b.run()
    _wait_until(b, lambda s: "stopped" in " ".join(p.proto.text for p in s.get("progress")),
                timeout=120)


def _progress(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def _pairing_spec(at: AppTest) -> str:
    charts = at.get("plotly_chart")
    assert charts, "no Plotly chart on the page"
    return charts[0].proto.spec


def test_preview_follows_the_chosen_shipped_teacher_and_seed(runs_dir):
    at = _toy_lab({"tn": "8gaussians", "en": "200"})
    first = _pairing_spec(at)
    at.selectbox(key="ctl_shipped_name").set_value("moons")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    moons = _pairing_spec(at)
    assert moons != first  # a new teacher's T(z) is drawn, not the cached figure of the old one
    at.number_input(key="ctl_seed").set_value(7)
    at.run()
    assert _pairing_spec(at) != moons  # another seed → other evaluation noise


def test_transport_pause_step_resume_time_travel_and_reset(runs_dir):
    slow = {"tn": "8gaussians", "ss": "100000", "ee": "5", "en": "200", "boot": "0", "stop": "0"}
    at = _toy_lab(slow)
    at.button(key="btn_distill").click()
    at.run()
    job = at.session_state["toylab_job"]
    _wait_until(at, lambda a: job.snapshot().step >= 12 and len(job.snapshot().history) >= 2)
    # the student's basin map is drawn live (at each evaluation), not only once the job is idle
    _wait_until(at, lambda a: "running" in _progress(a)
                and any("Basin maps at student step" in c.value for c in a.caption), timeout=60)
    at.button(key="btn_pause").click()
    at.run()
    assert job.wait_paused(60)
    _wait_until(at, lambda a: "paused" in _progress(a))
    step = job.snapshot().step
    # Step N runs exactly N steps, then pauses again
    at.number_input(key="step_n_value").set_value(3)
    at.button(key="btn_step").click()
    at.run()
    assert job.wait_paused(60)
    assert job.snapshot().step == step + 3
    # the time cursor over the saved evaluations: the student panel, the tiles, the basin maps
    # and the cursor line on the curves all show the chosen student step
    hist = job.snapshot().history
    first = hist[0][0]
    timecursor.cursor_widget(at.get("select_slider")).set_value(first)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"(step {first})" in _pairing_spec(at)
    row = next(r for r in job.snapshot().metrics if r["phase"] == "student" and r["step"] == first)
    assert _metric(at, "ΔE (pairing inefficiency)") == f"{row['delta_e']:.3f}"
    assert _metric(at, "pair retrieval") == f"{row['retrieval']:.3f}"
    assert any(f"Basin maps at student step {first} " in c.value for c in at.caption)
    assert any(f"Evaluation at student step {first} of 100000" in c.value for c in at.caption)
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    cursors = [sh for sh in spec["layout"]["shapes"] if sh.get("name") == "cursor"]
    assert len(cursors) == 5 and all(sh["x0"] == first for sh in cursors)  # one per student panel
    # Resume reads as running at once; Stop ends it
    at.button(key="btn_resume").click()
    at.run()
    assert "running" in _progress(at)
    at.button(key="btn_stop").click()
    at.run()
    assert job.wait(60) and job.state == "stopped"
    # Reset frees the job in the server-wide manager (models and history are not kept forever)
    assert job.job_id in {j.job_id for j in job.manager.jobs()}
    at.button(key="btn_reset").click()
    at.run()
    assert "toylab_job" not in at.session_state
    assert job.job_id not in {j.job_id for j in job.manager.jobs()}


def test_time_travel_needs_two_snapshots(runs_dir):
    import dataclasses

    at = _toy_lab({**TINY, "ss": "5"})
    at.button(key="btn_distill").click()
    at.run()
    job = at.session_state["toylab_job"]
    assert job.wait(120) and job.state == "finished", (job.snapshot().message, job.error)
    at.run()
    # steps of the phase, not teacher + student steps added up
    assert "student · step 5/5 (teacher phase done: 60 steps)" in _progress(at), _progress(at)

    class OneSnapshot:
        """The finished job, seen as if only one evaluation had been saved (e.g. stopped right
        after step 0): a slider with min == max would raise in Streamlit."""

        def __getattr__(self, name):
            return getattr(job, name)

        def snapshot(self):
            snap = job.snapshot()
            return dataclasses.replace(snap, history=snap.history[:1])

    at.session_state["toylab_job"] = OneSnapshot()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _metric(at, "ΔE (pairing inefficiency)") not in (None, "—")  # the page still draws
    assert timecursor.cursor_widget(at.get("select_slider")) is None
    # with the real job (two or more evaluations) the time cursor is offered
    at.session_state["toylab_job"] = job
    at.run()
    assert timecursor.cursor_widget(at.get("select_slider")) is not None


def test_the_cursor_keeps_following_when_a_stale_slider_value_comes_back(runs_dir):
    """A browser reports the widget values it holds with a fragment's timed rerun; one that had not
    yet received the slider's newest value sent back an older step, which read as a user's move:
    the cursor stopped following new evaluations (e2e failure under load: cursor at 10 after the
    job finished at 20). The stale value now belongs to a widget that no longer exists."""
    import dataclasses

    at = _toy_lab({**TINY, "ss": "20", "ee": "5"})
    at.button(key="btn_distill").click()
    at.run()
    job = at.session_state["toylab_job"]
    assert job.wait(120) and job.state == "finished", (job.snapshot().message, job.error)

    class Partial:
        """The finished job as it looked after its first k evaluations."""

        def __init__(self, k):
            self.k = k

        def __getattr__(self, name):
            return getattr(job, name)

        def snapshot(self):
            snap = job.snapshot()
            steps = [h[0] for h in snap.history[:self.k]]
            return dataclasses.replace(snap, history=snap.history[:self.k], state="running",
                                       metrics=[r for r in snap.metrics if r["phase"] != "student" or r["step"] in steps])

    at.session_state["toylab_job"] = Partial(3)  # evaluations at 0, 5, 10: the cursor on 10
    at.run()
    slider = timecursor.cursor_widget(at.get("select_slider"))
    assert slider.value == 10
    at.session_state[slider.key] = 5  # the browser's stale report of the slider it held (not a move)
    at.session_state["toylab_job"] = Partial(5)  # two more evaluations arrive
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert timecursor.cursor_widget(at.get("select_slider")).value == 20
    assert any("Evaluation at student step 20 of 20" in c.value for c in at.caption)
    # a real move on the current slider is kept when the next evaluation arrives
    at.session_state["toylab_job"] = Partial(4)
    at.run()
    timecursor.cursor_widget(at.get("select_slider")).set_value(5)
    at.run()
    at.session_state["toylab_job"] = Partial(5)
    at.run()
    assert timecursor.cursor_widget(at.get("select_slider")).value == 5
    # ... also when the run the move starts brings a new evaluation (a new slider): the move was
    # made on the old slider, its step is carried over
    at.session_state["toylab_job"] = Partial(3)
    at.run()
    old = timecursor.cursor_widget(at.get("select_slider"))
    old.set_value(0)  # the user picks step 0 on the slider of 0, 5, 10 ...
    at.session_state["toylab_job"] = Partial(4)
    at.run()
    assert timecursor.cursor_widget(at.get("select_slider")).key.endswith("@15")
    assert timecursor.cursor_widget(at.get("select_slider")).value == 0
    at.session_state["toylab_job"] = job


def test_unknown_shipped_teacher_in_the_url_is_named(runs_dir):
    at = _toy_lab({"tn": "zzz"})
    warns = _shown(at.warning)
    assert "URL parameter 'tn'" in warns and "'zzz'" in warns and "8gaussians" in warns
    assert at.selectbox(key="ctl_shipped_name").value == toylab.shipped_teachers()[0]["name"]
    at.number_input(key="ctl_seed").set_value(4)  # not replaced silently: the warning stays
    at.run()
    assert "'zzz'" in _shown(at.warning)
    at.selectbox(key="ctl_shipped_name").set_value("moons")  # choosing a teacher answers it
    at.run()
    assert "'zzz'" not in _shown(at.warning)


def test_greyed_fields_show_the_shipped_teachers_own_settings(runs_dir):
    entry = next(e for e in toylab.shipped_teachers() if e["name"] == "mixture-d32")
    at = _toy_lab({"tn": "mixture-d32"})
    assert at.selectbox(key="shown_dataset").value == entry["config"]["data"]["dataset"] == "mixture"
    assert at.number_input(key="shown_dim").value == entry["config"]["data"]["dim"] == 32
    assert at.number_input(key="shown_t_steps").value == entry["config"]["teacher"]["steps"]
    assert at.selectbox(key="shown_dataset").disabled and at.number_input(key="shown_dim").disabled
    # the shipped teacher's values are not written into the student's own controls or the URL
    assert "ds" not in at.query_params and "d" not in at.query_params
    # back to 'train': the editable controls keep their own values
    at.selectbox(key="ctl_teacher_source").set_value("train")
    at.run()
    assert at.selectbox(key="ctl_dataset").value == "8gaussians" and not at.selectbox(key="ctl_dataset").disabled


def test_an_upload_selects_the_user_dataset_in_the_controls_and_the_url(runs_dir):
    at = _toy_lab({"t": "train"})
    rng = np.random.default_rng(0)
    good = "\n".join(",".join(f"{v:.4f}" for v in r) for r in rng.standard_normal((200, 3)))
    at.file_uploader(key="toylab_upload_widget").set_value(("good.csv", good.encode(), "text/csv"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ctl_dataset").value == "user"
    assert at.number_input(key="ctl_dim").value == 3
    assert at.query_params["ds"] in ("user", ["user"]) and at.query_params["d"] in ("3", ["3"])
    assert not at.button(key="btn_distill").disabled


def test_invalid_setting_keeps_the_last_valid_configuration(runs_dir):
    at = _toy_lab(TINY)  # valid: a small teacher trained on 8 gaussians
    at.selectbox(key="ctl_dataset").set_value("user")  # no upload yet: invalid
    at.run()
    errs = " ".join(e.value for e in at.error)
    assert "Invalid setting" in errs and "last valid configuration is kept" in errs
    assert not at.button(key="btn_distill").disabled  # runs the kept configuration
    at.button(key="btn_distill").click()
    at.run()
    job = at.session_state["toylab_job"]
    assert job.experiment.cfg.data.dataset == "8gaussians"
    job.stop()
    assert job.wait(60)


def test_teacher_and_student_curves_have_their_own_step_axes_and_the_cursor():
    """A run that trains its teacher (steps 0–400) then its student (0–150): the W₂² panel must
    not join W₂²(T, data) and W₂²(S, data) into one line, and losses use each phase's steps."""

    metrics = pd.DataFrame(
        [{"step": s, "phase": "teacher", "loss": 1.0 / (s + 1), "w2_data": 0.5, "eta_teacher": 0.1}
         for s in (0, 200, 400)]
        + [{"step": s, "phase": "student", "delta_e": 0.3, "delta_e_lo": 0.2, "delta_e_hi": 0.4, "w2": 0.2,
            "w2_data": 0.3, "eta_student": 0.2, "eta_teacher": 0.1} for s in (0, 50, 100, 150)])
    log = pd.DataFrame([{"step": i + 1, "phase": "teacher", "phase_step": i + 1, "loss": 1.0} for i in range(400)]
                       + [{"step": 401 + i, "phase": "student", "phase_step": i + 1, "loss_dm": 0.5}
                          for i in range(150)])
    stu = curves.student_curves_figure(metrics, log, cursor=50)
    xs = {tr.name: list(tr.x) for tr in stu.data}
    assert xs["W₂²(S, data)"] == [0, 50, 100, 150] and max(xs["loss_dm"]) == 150  # student steps only
    assert "loss" not in xs
    assert curves.cursor_positions(stu) == [50.0] * 5
    assert {stu.layout[f"xaxis{i}"].title.text for i in ("", 2, 3, 4, 5)} == {"student step"}
    # reference lines: ΔE = 1 (random pairing) and 0 (OT pairing)
    assert sorted(sh.y0 for sh in stu.layout.shapes if sh.name != curves.CURSOR) == [0.0, 1.0]
    tea = curves.teacher_curves_figure(metrics, log)
    txs = {tr.name: list(tr.x) for tr in tea.data}
    assert txs["W₂²(T, data)"] == [0, 200, 400] and max(txs["loss"]) == 400
    assert tea.layout.xaxis.title.text == "teacher step" and not curves.cursor_positions(tea)


def test_copy_rate_and_retrieval_curves_carry_their_chance_levels():

    metrics = pd.DataFrame([{"step": s, "phase": "student", "delta_e": 0.3, "copy_rate": 0.2 + s / 200,
                             "retrieval": s / 300, "n_eval": 250} for s in (0, 50, 100)])
    fig = curves.student_curves_figure(metrics, None, n_modes=8)
    by = {tr.name: tr for tr in fig.data}
    assert by["copy rate"].xaxis == by["pair retrieval"].xaxis == "x5"
    chance = {sh.name: sh for sh in fig.layout.shapes if (sh.name or "").startswith("chance:")}
    assert chance["chance:copy_rate"].y0 == pytest.approx(1 / 8) and chance["chance:copy_rate"].yref == "y5"
    assert chance["chance:retrieval"].y0 == pytest.approx(1 / 250)
    texts = " ".join(a.text for a in fig.layout.annotations)
    assert "chance 1/K = 0.125" in texts and "chance 1/n = 0.004" in texts
    # K unknown (no modes): no copy-rate line is invented
    fig2 = curves.student_curves_figure(metrics, None)
    assert [sh.name for sh in fig2.layout.shapes if (sh.name or "").startswith("chance:")] == ["chance:retrieval"]


def test_every_control_has_a_tooltip(runs_dir):
    assert [c.name for c in urlstate.CONTROLS if len(c.help) < 20] == []
    # and the sidebar draws each with it (student controls included)
    at = _toy_lab({"t": "train"})
    drawn = {w.key: w for kind in ("selectbox", "number_input", "toggle") for w in at.get(kind)
             if (w.key or "").startswith("ctl_")}
    missing = [c.name for c in urlstate.CONTROLS if c.name != "shipped_name"
               and not (("ctl_" + c.name) in drawn and drawn["ctl_" + c.name].help)]
    assert missing == []


def test_a_run_opens_from_its_link_in_a_fresh_session(runs_dir):
    """run=<index id> in the URL: a new session shows that run's numbers and time travel from
    its saved files, without a job; a bad or unknown id is reported, not replaced silently."""
    at = _toy_lab({**TINY, "ss": "10", "ee": "5"})
    at.button(key="btn_distill").click()
    at.run()
    job = at.session_state["toylab_job"]
    assert job.wait(180) and job.state == "finished", (job.snapshot().message, job.error)
    at.run()
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    rows = [r for r in job.snapshot().metrics if r["phase"] == "student"]

    fresh = _toy_lab({**TINY, "ss": "10", "ee": "5", "run": str(run_id)})
    assert "toylab_job" not in fresh.session_state
    assert _metric(fresh, "ΔE (pairing inefficiency)") == f"{rows[-1]['delta_e']:.3f}"
    assert any(f"Saved run {run_id} (finished" in i.value for i in fresh.info)
    timecursor.cursor_widget(fresh.get("select_slider")).set_value(0)
    fresh.run()
    assert not fresh.exception, [e.value for e in fresh.exception]
    assert _metric(fresh, "ΔE (pairing inefficiency)") == f"{rows[0]['delta_e']:.3f}"
    assert any("Basin maps at student step 0 " in c.value for c in fresh.caption)
    assert "(step 0)" in _pairing_spec(fresh)

    bad = _toy_lab({"run": "zzz"})
    assert any("'zzz' is not a run id" in e.value for e in bad.error)
    missing = _toy_lab({"run": "999"})
    assert any("999 is not in the run index" in e.value for e in missing.error)


def test_linked_selection_highlights_the_same_noises_in_every_panel():
    rng = np.random.default_rng(0)
    z, t, s = (rng.normal(size=(50, 2)).astype(np.float32) for _ in range(3))
    colors = plots.position_colors(z)
    proj = plots.fit_projection(t)
    # a lasso in the S(z) panel (curve 2) and one in z (curve 0); segment vertices are ignored
    event = {"points": [{"curve_number": 2, "point_index": 7}, {"curve_number": 0, "point_index": 3},
                        {"curve_number": 3, "point_index": 40}]}
    traces = ("z", "T(z)", "S(z)", "T→S", "S(z) end")
    rows = plots.selected_rows(event, traces)
    assert rows.tolist() == [3, 7]
    fig = plots.pairing_figure(z, t, s, colors=colors, projection=proj, selected=rows)
    by = {tr.name: tr for tr in fig.data}
    for name in ("z", "T(z)", "S(z)", "S(z) end"):
        assert list(by[name].selectedpoints) == [3, 7], name
    seg_x = np.asarray(by["T→S"].x, dtype=float)
    assert np.isfinite(seg_x).sum() == 4  # only the two selected pairs' segments
    assert fig.layout.dragmode == "lasso"
    assert plots.selected_rows({"points": []}, traces) is None


def test_a_teacher_mode_highlights_where_its_noise_went(runs_dir):
    at = _toy_lab({"tn": "8gaussians", "en": "200"})
    at.selectbox(key="toylab_sel_mode").set_value(2)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(_pairing_spec(at))
    sel = {tr["name"]: tr.get("selectedpoints") for tr in spec["data"]}
    assert sel["z"] and sel["z"] == sel["T(z)"]
    assert any("teacher mode 2 (" in c.value for c in at.caption)


def test_compare_two_runs_overlays_their_curves_and_differences(runs_dir):
    from dmdcore.config import DistillConfig, EvalConfig
    from dmdcore.pipeline import Experiment, load_teacher, teacher_experiment_config
    from dmdcore.runs import RunIndex

    root = runs_dir
    root.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher("8gaussians", device="cpu")
    ids = []
    for seed in (0, 1):
        cfg = teacher_experiment_config(teacher, distill=DistillConfig(steps=4, batch=32, ratio=1, seed=seed),
                                        eval=EvalConfig(every=2, n=64, bootstrap=0))
        exp = Experiment(cfg, run_dir=root / f"cmp{seed}", index=RunIndex(root), teacher=teacher, device="cpu")
        exp.run()
        ids.append(RunIndex(root).get(exp.run_dir).id)
    at = _toy_lab({"tn": "8gaussians", "en": "200"})
    at.multiselect(key="rb_compare").set_value(ids)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = {tr["name"] for tr in spec["data"]}
    assert {f"run {ids[0]} · ΔE", f"run {ids[1]} · ΔE", f"run {ids[1]} · W₂²"} <= names
    diff = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert diff["field"].tolist() == ["distill.seed"]
    # the comparison is in the URL (cmp=…) and a fresh session opened from it shows it again
    cmp = at.query_params["cmp"]
    cmp = cmp[0] if isinstance(cmp, list) else cmp
    assert sorted(int(i) for i in cmp.split(",")) == sorted(ids)
    fresh = _toy_lab({"tn": "8gaussians", "en": "200", "cmp": cmp})
    assert sorted(fresh.multiselect(key="rb_compare").value) == sorted(ids)
    names = {tr["name"] for tr in json.loads(fresh.get("plotly_chart")[-1].proto.spec)["data"]}
    assert {f"run {ids[0]} · ΔE", f"run {ids[1]} · ΔE"} <= names
    # an id that is not in the index is named, not dropped silently
    bad = _toy_lab({"tn": "8gaussians", "en": "200", "cmp": f"{ids[0]},999"})
    assert "run 999 is not in the run index" in _shown(bad.warning)
    assert "'zz'" in _shown(_toy_lab({"cmp": "zz"}).warning)


def test_metrics_csv_export_has_the_run_files_columns(tmp_path):
    from dmdcore.runs import METRIC_COLUMNS

    rows = [{"step": 0, "phase": "student", "delta_e": 0.5, "w2": 0.1}]
    header = toylab.metrics_csv_bytes(rows).decode().splitlines()[0].split(",")
    assert header == list(METRIC_COLUMNS)
    (tmp_path / "metrics.csv").write_bytes(b"step,phase\n0,student\n")
    assert toylab.metrics_csv_bytes(rows, tmp_path) == b"step,phase\n0,student\n"


def test_starter_converges_before_its_cap_and_its_saved_run_says_so(runs_dir):
    """The Home page's "Start here" configuration, run by the engine: the plateau criterion ends
    the student before its step cap with W₂²(S,T) under its floor; the run opened from its link
    shows "converged at student step N" beside the verdict, N read from its metrics.csv."""
    import torch

    from dmdcore.convergence import first_converged_step
    from dmdcore.pipeline import Experiment, load_teacher
    from dmdcore.runs import RunDir, RunIndex

    values = {**urlstate.defaults(), **toylab.START_HERE_VALUES}
    # the default Toy Lab run is the starter (the shipped teacher's name aside: default = the first one)
    assert [k for k, v in toylab.START_HERE_VALUES.items() if k != "shipped_name" and urlstate.defaults()[k] != v] == []
    teacher = load_teacher(f"manifest:{values['shipped_name']}", device="cpu")
    cfg = toylab.build_config(values, teacher=teacher)
    assert cfg.eval.stop_when_converged == "student"
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as app.py runs jobs (OMP_NUM_THREADS=1)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        exp = Experiment(cfg, run_dir=runs_dir / "starter", index=RunIndex(runs_dir), teacher=teacher, device="cpu")
        exp.run()
    finally:
        torch.set_num_threads(old)
    rows = [r for r in RunDir(exp.run_dir).read_metrics() if r["phase"] == "student"]
    n_conv = first_converged_step(rows)
    assert exp.stop_reasons == {"student": "converged"} and n_conv is not None and n_conv < cfg.distill.steps
    last = rows[-1]
    assert last["step"] == n_conv and last["w2"] <= last["w2_floor"]  # S matches T down to the floor
    run_id = RunIndex(runs_dir).get(exp.run_dir).id
    at = _toy_lab({"run": str(run_id)})
    md = " ".join(m.value for m in at.markdown)
    assert f"converged at student step {n_conv}" in md and "not converged" not in md
