"""Experiments page (AppTest): launch a tiny sweep in the background, watch it finish, see the
plots/summary/table computed from its runs; bad specs become st.error messages; past sweeps."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "experiments.py")
TINY = {
    "name": "page-tiny",
    "base": {
        "data": {"dataset": "mixture", "n_modes": 4, "n_samples": 500},
        "teacher": {"width": 16, "depth": 2, "emb_dim": 8, "steps": 20, "batch": 64, "ema": 0.9},
        "sampler": {"steps": 4},
        "distill": {"steps": 4, "ratio": 2, "batch": 32},
        "eval": {"every": 2, "n": 48, "bootstrap": 10},
    },
    "grid": {"data.dim": [2, 3]},
}


def _values(v) -> list:
    """A Plotly JSON array: a list, or a typed array {"dtype", "bdata" (base64)}."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path))
    return AppTest.from_file(PAGE, default_timeout=120)


@pytest.fixture
def auto_reruns(monkeypatch):
    """Polling intervals (s) the page's fragments asked for in the latest AppTest run."""
    from streamlit.testing.v1 import local_script_runner as lsr

    seen: list[float] = []
    parse = lsr.parse_tree_from_messages

    def spy(msgs):
        seen[:] = [m.auto_rerun.interval for m in msgs if m.WhichOneof("type") == "auto_rerun"]
        return parse(msgs)

    monkeypatch.setattr(lsr, "parse_tree_from_messages", spy)
    return seen


def _errors(at):
    return [e.value for e in at.error] + [str(e.value) for e in at.exception]


def test_page_renders_preset_and_reports_bad_spec(app):
    at = app.run()
    assert _errors(at) == []
    assert at.selectbox(key="exp_preset").value == "dimension"
    # The cell count is the preset's own grid (dimensions × replicates).
    from dmdcore.sweep.spec import load_preset
    assert at.metric[0].value == str(load_preset("dimension").n_cells)
    # Editing the grid changes the cell count.
    at.text_input(key="exp_axis_dimension_default_data.dim").set_value("[2, 64]").run()
    assert at.metric[0].value == "6" and _errors(at) == []
    # A bad value becomes an st.error naming the field, and nothing is launched.
    at.text_input(key="exp_axis_dimension_default_data.dim").set_value("[0]").run()
    assert any("DataConfig.dim" in e for e in _errors(at))
    at.selectbox(key="exp_preset").set_value("custom (JSON spec)").run()
    at.text_area(key="exp_custom").set_value(json.dumps({"name": "x", "grid": {"distill.ganz": [1]}})).run()
    assert any("distill.ganz" in e for e in _errors(at))
    at.text_area(key="exp_custom").set_value("{oops").run()
    assert any("not valid JSON" in e for e in _errors(at))


def test_launch_tiny_sweep_and_show_results(app, tmp_path, auto_reruns):
    at = app.run()
    assert auto_reruns == []  # no sweep: the progress panel does not poll
    at.selectbox(key="exp_preset").set_value("custom (JSON spec)").run()
    at.text_area(key="exp_custom").set_value(json.dumps(TINY)).run()
    assert at.metric[0].value == "2" and _errors(at) == []
    at.button(key="exp_launch").click().run()
    job = at.session_state["exp_sweep_job"]
    assert auto_reruns == [2.0]  # polls every 2 s while the sweep runs
    assert job.wait(timeout=300), "the tiny sweep did not finish"
    assert job.snapshot().state == "finished"
    at.run()
    assert _errors(at) == []
    assert auto_reruns == []  # finished: polling stopped
    charts = at.get("plotly_chart")
    assert len(charts) >= 3
    figs = [json.loads(c.proto.spec) for c in charts]
    titles = [f["layout"]["title"]["text"] for f in figs]
    assert any(t.startswith("ΔE vs data.dim") for t in titles)
    # The ΔE-vs-d line holds the two finished cells' values (from their runs).
    res = job.snapshot().result.table
    main = figs[[i for i, t in enumerate(titles) if t.startswith("ΔE vs")][0]]
    ys = [y for tr in main["data"] for y in _values(tr["y"])]
    assert sorted(ys) == pytest.approx(sorted(res["delta_e"].tolist()))
    text = " ".join(m.value for m in at.markdown)
    assert "2 of 2 cells finished" in text
    # each cell shows its copy verdict with n and d (ui/verdict.py), from the results table
    for _, cell in res.iterrows():
        assert f"**{cell['cell']}**" in text and f"n = {int(cell['n_eval'])} · d = {int(cell['dim'])}" in text
    assert any(e.label.startswith("Copy verdict of each cell (2 finished)") for e in at.expander)
    assert any("independent teacher: ΔE(T′,T)" in c.value for c in at.caption)
    assert any("Sweep page-tiny" in h.value for h in at.subheader)
    assert len(at.dataframe) >= 2  # past sweeps + results table
    # The sweep is listed among past sweeps (from its run index) with both cells finished.
    past = at.dataframe[0].value
    assert past["finished"].tolist() == [2] and past["name"].tolist() == ["page-tiny"]
    assert list(Path(tmp_path, "sweeps").glob("page-tiny-*/results.csv"))
    # a new session opens on the newest sweep's results (not an empty page)
    fresh = AppTest.from_file(PAGE, default_timeout=120).run()
    assert _errors(fresh) == []
    assert any(h.value.startswith("Results") for h in fresh.subheader)
    assert len(fresh.get("plotly_chart")) >= 3


def test_second_sweep_waits_for_the_server_wide_slot(app, tmp_path):
    # another session's sweep holds the only slot (DMD_MAX_SWEEPS=1): this one is queued, says
    # so, can be stopped, and never starts its cells
    from ui.session import sweep_slots

    at = app.run()
    slots = sweep_slots()  # the same process-wide semaphore the page uses
    assert slots.acquire(blocking=False)
    try:
        at.selectbox(key="exp_preset").set_value("custom (JSON spec)").run()
        at.text_area(key="exp_custom").set_value(json.dumps(TINY)).run()
        at.button(key="exp_launch").click().run()
        job = at.session_state["exp_sweep_job"]
        assert job.snapshot().state == "queued"
        info = " ".join(i.value for i in at.info)
        assert "Queued" in info and "At most 1 sweep" in info
        assert at.button(key="exp_launch").disabled
        at.button(key="exp_stop").click().run()
        assert job.wait(timeout=30) and job.snapshot().state == "stopped"
        assert not list(Path(tmp_path, "sweeps").glob("page-tiny-*/cells/*"))
    finally:
        slots.release()


def test_backend_and_ray_address_reach_the_sweep_job(app):
    # Ray is installed (requirements.txt): the page offers the backend and the cluster address.
    # The sweep stays queued behind a held slot, so no cluster is started here.
    from ui.session import sweep_slots

    at = app.run()
    assert at.radio(key="exp_backend").options == ["local", "ray"]
    assert at.text_input(key="exp_ray_address").disabled       # local: no address
    at.radio(key="exp_backend").set_value("ray").run()
    at.text_input(key="exp_ray_address").set_value(" auto ").run()
    assert not at.text_input(key="exp_ray_address").disabled
    slots = sweep_slots()
    assert slots.acquire(blocking=False)
    try:
        at.selectbox(key="exp_preset").set_value("custom (JSON spec)").run()
        at.text_area(key="exp_custom").set_value(json.dumps(TINY)).run()
        at.button(key="exp_launch").click().run()
        job = at.session_state["exp_sweep_job"]
        assert (job.backend, job.address, job.snapshot().state) == ("ray", "auto", "queued")
        at.button(key="exp_stop").click().run()
        assert job.wait(timeout=30) and job.snapshot().state == "stopped"
    finally:
        slots.release()


def _tree_path(node, key, path=()):
    """Index path of the widget ``key`` in an AppTest element tree (the delta path the browser
    uses to place it), or None."""
    if getattr(node, "key", None) == key and not getattr(node, "children", None):
        return path
    for i, child in getattr(node, "children", {}).items():
        found = _tree_path(child, key, (*path, i))
        if found is not None:
            return found
    return None


def test_launch_button_keeps_its_place_when_the_spec_area_changes(app):
    """A preset draws ~12 spec elements, the custom box one. If the launch button's place in the
    element tree depended on that, a switch would leave the previous run's (stale) button on
    screen beside the new one while the rerun finishes: the real-browser test then saw two
    'Launch sweep' buttons (strict mode violation under load)."""
    at = app.run()
    preset_path = _tree_path(at.main, "exp_launch")
    assert preset_path is not None
    at.selectbox(key="exp_preset").set_value("custom (JSON spec)").run()
    assert _errors(at) == []
    assert _tree_path(at.main, "exp_launch") == preset_path


def test_launch_button_is_a_single_dom_button(app):
    """Streamlit 1.67 renders a button that has a tooltip (help=) as two <button> elements (one in
    a display:none wrapper; measured in Chromium: 2 under .st-key-exp_launch with help, 1 without).
    A browser catching the hidden copy mid-render saw two 'Launch sweep' buttons (the CI flake), so
    the launch button carries no tooltip; its hint is the caption beside it."""
    at = app.run()
    assert not at.button(key="exp_launch").help
    assert any("Runs in the background" in c.value for c in at.caption)


def test_default_preset_is_the_first_option(app):
    """index=0: Streamlit logs a 'created with a default value but also had its value set via the
    Session State API' warning for a keyed widget whose default index is not 0 and whose value the
    app keeps in session state across pages."""
    at = app.run()
    sb = at.selectbox(key="exp_preset")
    assert sb.options[0] == "dimension" and sb.value == "dimension" and sb.index == 0


def test_result_figures_are_readable():
    """Swept values are categories on the heatmap (data.dim 2, 16, 64 — not a continuous axis
    from -20 to 80); log axes label 1-2-5 ticks with full values (not '10 9 8 7 …'); legends sit
    beside the plot, not over the x-axis title."""
    import pandas as pd

    from ui import experiments_plots as xp

    table = pd.DataFrame({"cell": ["a", "b", "c", "d"], "status": "finished", "data.dim": [2, 2, 64, 64],
                          "distill.gan": [False, True, False, True], "delta_e": [0.5, 0.4, 0.1, 0.05],
                          "delta_e_lo": 0.0, "delta_e_hi": 0.6, "w2": [0.1, 0.2, 0.3, 0.4], "seed": 0})
    heat = xp.heatmap_figure(table, "data.dim", "distill.gan")
    assert heat.layout.xaxis.type == "category" and heat.layout.yaxis.type == "category"
    assert heat.data[0].textfont.size >= 12
    line = xp.delta_e_vs_x_figure(table, "data.dim", ["data.dim", "distill.gan"], log_x=True)
    assert line.layout.xaxis.type == "log" and line.layout.xaxis.tickmode == "array"
    assert list(line.layout.xaxis.tickvals) == [2, 5, 10, 20, 50, 100]
    assert list(line.layout.xaxis.ticktext) == ["2", "5", "10", "20", "50", "100"]
    assert line.layout.legend.orientation == "v" and line.layout.legend.x > 1
    # Points spanning two decades get a labelled tick at every 1-2-5 step between and around them
    # (Plotly's own 'D2' ticks left one label on a narrow plot), and one per decade when wider.
    scatter = xp.quality_vs_copying_figure(table.assign(w2=[0.013, 0.05, 0.2, 0.4]), ["data.dim"])
    assert list(scatter.layout.xaxis.ticktext) == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]
    assert xp.log_tick_values([1e-5, 1e3]) == [10.0 ** k for k in range(-5, 4)]
    assert xp.log_tick_values([0.0, -1.0, float("nan")]) == []


def test_a_sweep_without_a_finished_cell_shows_a_message_not_empty_axes(app, tmp_path):
    """A stopped sweep (no cell ran): the results panel says why there is nothing to plot
    instead of drawing charts with empty axes."""
    import threading

    from dmdcore.sweep.run import run_sweep

    stop = threading.Event()
    stop.set()  # cancelled before any cell runs
    run_sweep(TINY, tmp_path / "sweeps" / "stopped", workers=0, stop_event=stop)
    at = app.run()  # a new session opens the newest sweep
    assert _errors(at) == []
    assert any(h.value.startswith("Results") for h in at.subheader)
    assert len(at.get("plotly_chart")) == 0
    assert any("No cell has a ΔE yet" in i.value for i in at.info)
    table = at.dataframe[-1].value
    assert table["status"].tolist() == ["pending", "pending"]


def test_delta_e_over_training_carries_its_reference_levels():
    """The every-cell ΔE chart marks ΔE 1 (an independent, random pairing) and ΔE 0 (the OT
    pairing), as the Toy Lab's ΔE panel does, so a curve's height reads against them."""
    import pandas as pd

    from ui import experiments_plots as xp

    curves = pd.DataFrame({"cell": ["a", "a", "b", "b"], "step": [0, 50, 0, 50], "data.dim": [2, 2, 64, 64],
                           "delta_e": [0.9, 0.3, 0.1, 0.05]})
    fig = xp.curves_overlay_figure(curves, ["data.dim"])
    lines = {s.name: s for s in fig.layout.shapes}
    assert lines["chance:1"].y0 == 1.0 and lines["chance:0"].y0 == 0.0
    texts = {a.text for a in fig.layout.annotations}
    assert "random pairing (ΔE 1)" in texts and "OT pairing (ΔE 0)" in texts
    assert len(fig.data) == 2  # one trace per cell; the levels are shapes, not extra legend entries
    assert not xp.curves_overlay_figure(curves.iloc[:0], ["data.dim"]).layout.shapes  # no cells: no axes to mark
