"""Every page of the app renders through the real router (streamlit AppTest) without exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.docs import DMD_LOOP_DOT, read_doc

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["pages/home.py", "pages/toy_lab.py", "pages/experiments.py", "pages/images.py",
         "pages/docs.py"]


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DMD_RUNS_DIR", str(tmp_path / "runs"))


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_exception(page):
    at = _app()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.title) >= 1


def test_home_explains_copying_and_links_every_page():
    at = _app()
    assert at.title[0].value == "DMD Copying Lab"
    text = " ".join(m.value for m in at.markdown)
    assert "copy" in text and "ΔE" in text
    links = {pl.proto.page for pl in at.get("page_link")}
    assert links == {"toy_lab", "experiments", "images", "docs"}, links
    assert at.button(key="start_here").label.startswith("Start here")
    # the schematic figure: noise | teacher | copying student | remapping student
    import json

    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert len(spec["data"]) == 4 and all(t["type"] == "scattergl" for t in spec["data"])
    titles = " ".join(a["text"] for a in spec["layout"]["annotations"])
    assert "copies" in titles and "remaps" in titles


def test_home_states_what_our_runs_found_from_the_shipped_results():
    """The study's claims are stated as the study's, beside this tool's answer: the status word
    and measured answer of every claim, computed by dmdcore.claims from checkpoints/results/."""
    from dmdcore import claims, shipped_results

    expect = claims.claim_board({p: t for p, (t, _) in shipped_results.shipped().items()})
    at = _app()
    heads = [m.value for m in at.markdown if "(preset `" in m.value]
    assert [h.split("</span>")[0].rsplit(">", 1)[-1] for h in heads] == [r.status for r in expect]
    captions = [c.value for c in at.caption]
    for r in expect:
        assert any((r.answer or r.reason) in c for c in captions), r.preset
    assert "report that high-dimensional students" in " ".join(m.value for m in at.markdown)


def test_docs_page_shows_delta_e_definition_controls_and_loop_diagram():
    at = _app()
    at.switch_page("pages/docs.py")
    at.run()
    assert not at.exception
    md = " ".join(m.value for m in at.markdown)
    assert "E_OT" in md and "E_ind" in md                     # ΔE definition
    assert "Fake-score steps per generator step" in md        # docs/controls.md rendered
    assert "Transport buttons" in md
    assert len(at.get("graphviz_chart")) == 1
    metrics_md = read_doc("metrics.md")
    if metrics_md is not None:  # the metrics reference is rendered when it exists
        first_line = next(line for line in metrics_md.splitlines() if line.strip())
        assert any(first_line.strip("# ").strip() in m.value for m in at.markdown)
    else:
        assert any("metrics.md" in w.value for w in at.warning)


def test_docs_metrics_tab_renders_every_display_formula_with_latex():
    # st.markdown leaves multi-line $$…$$ blocks (the companion metrics at the end) as raw LaTeX:
    # every display formula of metrics.md must reach the page as an st.latex element
    import re

    from ui.docs import split_math

    metrics_md = read_doc("metrics.md")
    blocks = re.findall(r"\$\$(.+?)\$\$", metrics_md, flags=re.S)
    assert any("\n" in b for b in blocks) or len(blocks) >= 7
    parts = split_math(metrics_md)
    assert all("$$" not in text for kind, text in parts if kind == "md")
    at = _app()
    at.switch_page("pages/docs.py")
    at.run()
    assert not at.exception
    latex = [e.value.strip("$ \n") for e in at.get("latex")]
    for b in blocks:
        assert " ".join(b.split()) in latex, b[:60]
    md = " ".join(m.value for m in at.markdown)
    assert "$$" not in md and "What ΔE can and cannot tell" in md


def test_dmd_loop_diagram_is_valid_dot():
    # every edge endpoint is a declared node
    import re

    nodes = set(re.findall(r"^\s*(\w+)\s+\[label", DMD_LOOP_DOT, flags=re.M))
    edges = re.findall(r"(\w+)\s*->\s*(\w+)", DMD_LOOP_DOT)
    assert edges and all(a in nodes and b in nodes for a, b in edges)


def test_read_doc_rejects_paths():
    with pytest.raises(ValueError, match="name"):
        read_doc("../README.md")


def test_home_schematic_is_what_it_claims():
    # the copying panel reproduces the teacher's pairing (ΔE = 0); the remapping panel scrambles
    # it (ΔE near chance) while keeping the teacher's distribution: same mode masses and the same
    # shape inside every mode (checked on a large draw: counts and mean offsets per mode)
    import numpy as np

    from dmdcore import pairing
    from ui.illustration import N_MODES, schematic_maps

    z, t, s_copy, s_remap = schematic_maps(800, 0)
    assert pairing.pairing_inefficiency(s_copy, t).delta_e == 0.0
    assert pairing.pairing_inefficiency(s_remap, t).delta_e > 0.8
    z, t, _, r = schematic_maps(40000, 0)
    th = 2 * np.pi * np.arange(N_MODES) / N_MODES
    centres = 2 * np.stack([np.cos(th), np.sin(th)], 1)
    for x in (t, r):
        assert np.all(np.linalg.norm(x[:, None] - centres[None], axis=2).min(1) < 1.0)
    mode = lambda x: np.linalg.norm(x[:, None] - centres[None], axis=2).argmin(1)  # noqa: E731
    mt, mr = mode(t), mode(r)
    np.testing.assert_allclose(np.bincount(mr, minlength=8) / len(r), 1 / 8, atol=0.006)
    for j in range(N_MODES):
        off_t = (t[mt == j] - centres[j]).mean(0)
        off_r = (r[mr == j] - centres[j]).mean(0)
        np.testing.assert_allclose(off_r, off_t, atol=0.01)


def test_experiment_and_image_controls_outlive_a_visit_to_another_page():
    at = _app()
    at.switch_page("pages/experiments.py")
    at.run()
    at.selectbox(key="exp_preset").set_value("freedom").run()
    at.radio(key="exp_variant").set_value("full").run()
    at.switch_page("pages/images.py")
    at.run()
    at.radio(key="img_student_src").set_value("Path on disk").run()
    at.switch_page("pages/home.py")  # neither page draws its widgets in this run
    at.run()
    at.switch_page("pages/experiments.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="exp_preset").value == "freedom"
    assert at.radio(key="exp_variant").value == "full"
    at.switch_page("pages/images.py")
    at.run()
    assert at.radio(key="img_student_src").value == "Path on disk"


@pytest.mark.parametrize("name, fn", [("DMD_MAX_JOBS", "max_jobs"), ("DMD_MAX_SWEEPS", "max_sweeps")])
def test_server_caps_come_from_the_environment_and_bad_values_are_named(monkeypatch, name, fn):
    from ui import session

    monkeypatch.setenv(name, "3")
    assert getattr(session, fn)() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            getattr(session, fn)()


def test_keep_page_controls_writes_widget_keys_only_on_entering_a_page():
    # a write to a live widget's key is pushed to the browser and can overwrite an edit in
    # progress: within a page, live values are only copied to shadows; entering a page (or a
    # widget dropped by Streamlit) writes the kept values back once
    from ui.session import keep_page_controls

    class Recording(dict):
        def __init__(self, *a):
            super().__init__(*a)
            self.writes = []

        def __setitem__(self, k, v):
            self.writes.append(k)
            super().__setitem__(k, v)

    state = Recording({"exp_preset": "freedom", "exp_launch": True, "other": 1})
    keep_page_controls("experiments", state)
    state.writes.clear()
    assert keep_page_controls("experiments", state) == 0  # a rerun of the same page
    assert [k for k in state.writes if not k.startswith("_kept")] == []  # buttons never kept
    assert keep_page_controls("home", state) == 1  # entering another page: written back once
    state.writes.clear()
    assert keep_page_controls("home", state) == 0 and "exp_preset" not in state.writes
    del state["exp_preset"]  # Streamlit dropped it: the page was not drawn in the last run
    assert keep_page_controls("home", state) == 1 and state["exp_preset"] == "freedom"


def test_ast_parse_is_serialized_against_the_cpython_thread_race():
    # CPython 3.11: ast.parse in two threads at once, with a GC finalizer switching threads
    # mid-parse, raises "SystemError: AST constructor recursion depth mismatch" (cpython#106905);
    # the server parses page scripts while its warm-up thread's imports parse too. Without the
    # lock this stress raised in 3 of 4 runs here; with it, never.
    import ast
    import gc
    import threading

    from ui.session import serialize_ast_parse

    serialize_ast_parse()
    assert getattr(ast.parse, "_dmd_serialized", False)
    assert serialize_ast_parse() is False  # idempotent
    # a large source: the sweep package's modules, one after another (was dmdcore/sweep.py)
    sweep_dir = Path(__file__).resolve().parent.parent / "dmdcore" / "sweep"
    src = "".join(p.read_text() for p in sorted(sweep_dir.glob("*.py")))
    errors: list[str] = []

    class Cyclic:
        def __init__(self):
            self.me = self

        def __del__(self):
            sum(range(50))  # Python code in a finalizer: a point where threads switch

    def parse_many():
        for _ in range(40):
            try:
                ast.parse(src)
            except SystemError as exc:
                errors.append(str(exc))

    def garbage():
        for _ in range(200_000):
            Cyclic()

    old = gc.get_threshold()
    gc.set_threshold(100)
    try:
        threads = [threading.Thread(target=parse_many) for _ in range(3)] + [threading.Thread(target=garbage)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*old)
    assert errors == []


def test_app_script_runs_as_a_spawned_workers_main_module():
    """A spawn-ed sweep worker started from the server re-runs the main script (app.py) as
    ``__mp_main__`` outside Streamlit; it must not raise (it did, and every sweep worker launched
    from the browser died before running a cell), nor call Streamlit (each call logged a
    'missing ScriptRunContext' warning, dozens per sweep launch)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import runpy, sys; sys.path.insert(0, %r); runpy.run_path(%r, run_name='__mp_main__')"
            % (str(root), str(root / "app.py")))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ScriptRunContext" not in proc.stderr  # no Streamlit call at all in a worker


def test_docs_metrics_tab_holds_no_benchmark_tables_or_measurement_notes():
    """Benchmark output (tables printed by benchmarks/*.py) and notes on how a machine was loaded
    belong in docs/performance.md; the Metrics tab (docs/metrics.md) links there instead."""
    import re

    metrics_md = read_doc("metrics.md")
    perf_md = read_doc("performance.md")
    # a table row right after a paragraph that names a benchmarks/ script
    paras = re.split(r"\n\s*\n", metrics_md)
    offenders = [p[:80] for prev, p in zip(paras, paras[1:])
                 if "benchmarks/" in prev and re.search(r"^\|.*\|\s*$", p, flags=re.M)]
    assert offenders == []
    assert "load average" not in metrics_md
    assert "| 256 | −0.046 | −0.052 |" in perf_md  # the block-bias table now lives there
    assert "performance.md#block-approximation-bias" in metrics_md
