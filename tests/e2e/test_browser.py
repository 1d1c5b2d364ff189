"""End-to-end: real chromium drives `streamlit run app.py` (runs in CI; never skipped)."""

from __future__ import annotations

import pytest

from tests.e2e.harness import (ARTIFACTS, app_in_browser, clipped_texts, element_shot, keyed_button, open_page,
                               screenshot_charts, wait_app_idle)
from tests.test_experiments_page import TINY


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_pages_render_in_a_real_browser(tmp_path):
    with app_in_browser(tmp_path) as (url, page, errors):
        # A fresh server's first visitor opening a deep link is still routed by app.py
        # (wide layout, titled navigation) — see ui/router.py.
        page.goto(f"{url}/docs", wait_until="domcontentloaded")
        page.get_by_text("One DMD2 training iteration").first.wait_for(timeout=30000)
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Image models").first.wait_for(timeout=10000)
        assert nav.get_by_text("toy lab", exact=True).count() == 0

        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("DMD Copying Lab", exact=False).first.wait_for(timeout=30000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=30000)
        wait_app_idle(page)
        page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
        assert clipped_texts(page) == []  # no chart title runs past its figure at 1400 px

        page.goto(f"{url}/docs", wait_until="domcontentloaded")
        page.get_by_text("One DMD2 training iteration").first.wait_for(timeout=30000)
        page.locator('[data-testid="stGraphVizChart"] svg text').first.wait_for(timeout=30000)
        wait_app_idle(page)
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
        # the DMD-loop diagram's smallest label as drawn (font size × the SVG's scale) at 1400 px
        # (left to right it was scaled to 8 px)
        assert page.evaluate(DIAGRAM_MIN_FONT_PX_JS) >= 16
        page.get_by_role("tab", name="Metrics").click()
        page.get_by_text("Pairing inefficiency", exact=False).first.wait_for(timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "docs_metrics.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


DIAGRAM_MIN_FONT_PX_JS = """() => {
  const svg = document.querySelector('[data-testid="stGraphVizChart"] svg');
  return Math.min(...Array.from(svg.querySelectorAll('text'))
    .map(t => parseFloat(t.getAttribute('font-size')) * t.getScreenCTM().a));
}"""


# Number of finite points of the "ΔE" trace in any Plotly chart on the page (reads the graph
# divs' data, i.e. what Plotly drew; plotly.py ≥ 6 ships numpy arrays as base64 "bdata").
DELTA_E_POINTS_JS = """() => {
  const values = (y) => {
    if (!y) return [];
    if (Array.isArray(y) || ArrayBuffer.isView(y)) return Array.from(y);
    if (y.bdata) {
      const raw = atob(y.bdata), bytes = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
      const T = {f8: Float64Array, f4: Float32Array}[y.dtype];
      return T ? Array.from(new T(bytes.buffer)) : [];
    }
    return [];
  };
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    for (const tr of (gd.data || [])) {
      if (tr.name === 'ΔE') return values(tr.y).filter(v => v !== null && isFinite(v)).length;
    }
  }
  return 0;
}"""
# x of the time-cursor lines (shapes named "cursor", ui/curves.py) of the student curves figure.
CURSOR_JS = """() => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const xs = ((gd.layout && gd.layout.shapes) || []).filter(s => s.name === 'cursor').map(s => s.x0);
    if (xs.length) return xs;
  }
  return [];
}"""
# ΔE at the first evaluation (student step 0), read from the ΔE trace Plotly drew.
FIRST_DELTA_E_JS = DELTA_E_POINTS_JS.replace(
    "return values(tr.y).filter(v => v !== null && isFinite(v)).length;", "return values(tr.y)[0];")
LAST_DELTA_E_JS = DELTA_E_POINTS_JS.replace(
    "return values(tr.y).filter(v => v !== null && isFinite(v)).length;", "return values(tr.y).slice(-1)[0];")
# selectedpoints of the point traces of the pairing figure (ui/plots.pairing_figure).
SELECTED_JS = """() => {
  const out = {};
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    for (const tr of (gd.data || [])) {
      if (['z', 'T(z)', 'S(z)', 'S(z) end'].includes(tr.name)) out[tr.name] = Array.from(tr.selectedpoints || []);
    }
    if (Object.keys(out).length) return out;
  }
  return out;
}"""
# A quick distillation of the shipped 8-gaussians teacher (URL keys of ui/urlstate.py).
QUICK = "tn=8gaussians&ss=20&ee=5&en=200&boot=20"


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_toy_lab_live_distillation_in_a_real_browser(tmp_path):
    with app_in_browser(tmp_path) as (url, page, errors):
        # first render: noise and the shipped teacher's samples, before any training
        open_page(page, f"{url}/toy_lab?{QUICK}", "Teacher samples T(z)", "toy_lab_preview")
        assert page.evaluate(DELTA_E_POINTS_JS) == 0

        keyed_button(page, "btn_distill").click()  # has a tooltip: two <button>s in the DOM, one hidden
        page.mouse.move(5, 5)  # the tooltip of a hovered button would cover the page in the screenshots
        # the live fragment redraws while the background job runs: ΔE points appear
        page.wait_for_function(f"({DELTA_E_POINTS_JS})() >= 2", timeout=240000, polling=500)
        page.screenshot(path=str(ARTIFACTS / "toy_lab_live.png"), full_page=True)
        page.get_by_text("Export").first.wait_for(timeout=240000)  # shown when the job ends
        wait_app_idle(page, timeout_ms=60000)
        n_points = page.evaluate(DELTA_E_POINTS_JS)
        assert n_points == 20 // 5 + 1, n_points  # evaluations at student steps 0, 5, ..., 20
        page.screenshot(path=str(ARTIFACTS / "toy_lab_done.png"), full_page=True)
        screenshot_charts(page, "toy_lab_done_chart")
        assert clipped_texts(page) == []
        assert page.evaluate(CURSOR_JS) == [20] * 5  # the time cursor follows the newest evaluation (5 panels)
        # time travel: move the cursor to student step 0; the tiles, the basin maps and the
        # cursor line on every curve follow it
        first_de = page.evaluate(FIRST_DELTA_E_JS)
        page.get_by_role("slider").first.focus()
        page.keyboard.press("Home")
        main = page.locator('[data-testid="stMain"]')
        main.get_by_text("Evaluation at student step 0 of 20", exact=False).first.wait_for(timeout=60000)
        main.get_by_text("Basin maps at student step 0 ", exact=False).first.wait_for(timeout=60000)
        page.wait_for_function(f"JSON.stringify(({CURSOR_JS})()) === '[0,0,0,0,0]'", timeout=60000, polling=250)
        wait_app_idle(page, timeout_ms=60000)
        tile = main.locator('[data-testid="stMetric"]', has_text="ΔE (pairing inefficiency)")
        assert tile.locator('[data-testid="stMetricValue"]').inner_text().strip() == f"{first_de:.3f}"
        page.screenshot(path=str(ARTIFACTS / "toy_lab_time_cursor.png"), full_page=True)
        screenshot_charts(page, "toy_lab_cursor_chart")
        assert clipped_texts(page) == []
        # linked selection: a lasso around part of the noise panel highlights the same noises
        # (the same indices) in z, T(z), S(z) and the displacement panel
        drag = page.locator('[data-testid="stPlotlyChart"]').first.locator(".nsewdrag").first
        drag.scroll_into_view_if_needed()
        box = drag.bounding_box()
        cx, cy, r = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, min(box["width"], box["height"]) * 0.4
        page.mouse.move(cx - r, cy - r)
        page.mouse.down()
        for fx, fy in ((0.2, -1), (1, -1), (1, 0.2), (0.2, 1), (-1, 1), (-1, -1)):
            page.mouse.move(cx + fx * r, cy + fy * r, steps=5)
        page.mouse.up()
        main.get_by_text("selected noises", exact=False).first.wait_for(timeout=60000)
        wait_app_idle(page, timeout_ms=60000)
        sel = page.evaluate(SELECTED_JS)
        assert sel["z"] and sel["z"] == sel["T(z)"] == sel["S(z)"], sel
        assert set(sel["S(z) end"]) <= set(sel["z"])
        page.mouse.move(5, 5)  # no hover label in the shot
        element_shot(page.locator('[data-testid="stPlotlyChart"]').first, "toy_lab_lasso")
        # the share link names the saved run: a fresh browser context (new session, no job)
        # opened from it shows the run's headline numbers
        assert "run=" in page.url, page.url
        last_de = page.evaluate(LAST_DELTA_E_JS)
        fresh = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            other = fresh.new_page()
            other.goto(page.url, wait_until="domcontentloaded")
            other.get_by_text("opened from the run index", exact=False).first.wait_for(timeout=60000)
            wait_app_idle(other, timeout_ms=60000)
            tile = other.locator('[data-testid="stMain"] [data-testid="stMetric"]', has_text="ΔE (pairing inefficiency)")
            assert tile.locator('[data-testid="stMetricValue"]').inner_text().strip() == f"{last_de:.3f}"
            other.screenshot(path=str(ARTIFACTS / "toy_lab_share_link.png"), full_page=True)
            assert clipped_texts(other) == []
        finally:
            fresh.close()
        # the configuration lives in the URL
        assert "tn=8gaussians" in page.url and "ss=20" in page.url
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


# A sweep small enough for the browser test (2 cells, seconds each): the page AppTest's spec,
# typed into the custom-spec box as a user would paste it.
TINY_SWEEP = {**TINY, "name": "e2e-tiny"}


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_experiments_sweep_survives_navigation_in_a_real_browser(tmp_path):
    import json

    with app_in_browser(tmp_path) as (url, page, errors):
        open_page(page, f"{url}/experiments", "Claim tested", "experiments_preset")
        # custom spec, pasted into the text area
        page.get_by_text("Preset", exact=True).first.wait_for()
        page.locator('[data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="custom (JSON spec)").click()
        box = page.get_by_role("textbox", name="Spec (JSON)")
        box.wait_for(timeout=30000)
        box.fill(json.dumps(TINY_SWEEP))
        box.press("Control+Enter")
        # wait for the state the pasted spec produces (its 2 cells), not for a guessed time:
        # the app may not have started the rerun yet when it first looks idle
        cells = page.locator('[data-testid="stMetric"]', has_text="Cells").locator('[data-testid="stMetricValue"]')
        cells.get_by_text("2", exact=True).wait_for(timeout=60000)
        wait_app_idle(page, timeout_ms=30000)
        # one Launch sweep button in the DOM (a tooltip would make Streamlit render a hidden second
        # one, which a strict locator caught mid-render: the CI flake), clicked through its key
        assert page.locator(".st-key-exp_launch button").count() == 1
        keyed_button(page, "exp_launch").click()
        page.get_by_text("Sweep e2e-tiny", exact=False).first.wait_for(timeout=60000)
        page.screenshot(path=str(ARTIFACTS / "experiments_running.png"), full_page=True)
        # leave for Home and come back through the navigation: the sweep's progress is kept
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Home").first.click()
        page.get_by_text("DMD Copying Lab").first.wait_for(timeout=30000)
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Experiments").first.click()
        page.get_by_text("Sweep e2e-tiny", exact=False).first.wait_for(timeout=60000)
        # ... and so is the chosen preset with the pasted spec
        # (the spec box is drawn only while "custom (JSON spec)" is the chosen preset)
        spec_box = page.get_by_role("textbox", name="Spec (JSON)")
        spec_box.wait_for(timeout=30000)
        assert "e2e-tiny" in spec_box.input_value()
        page.get_by_text("2 of 2 cells finished", exact=False).first.wait_for(timeout=240000)
        wait_app_idle(page, timeout_ms=60000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=30000)
        page.screenshot(path=str(ARTIFACTS / "experiments_done.png"), full_page=True)
        assert screenshot_charts(page, "experiments_done_chart") >= 3  # ΔE vs d, over training, vs W₂²
        assert clipped_texts(page) == []
        assert "2 of 2 cells finished" in page.locator('[data-testid="stMain"]').inner_text()
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_images_demo_pair_in_a_real_browser(tmp_path):
    with app_in_browser(tmp_path) as (url, page, errors):
        page.goto(f"{url}/images", wait_until="domcontentloaded")
        page.get_by_role("button", name="Generate").wait_for(timeout=60000)
        wait_app_idle(page, timeout_ms=60000)
        page.get_by_role("button", name="Generate").click()
        # images appear as they finish; the job is done when every teacher image is
        page.get_by_text("Teacher 20/20", exact=False).first.wait_for(timeout=240000)
        page.get_by_role("button", name="Stop").wait_for(state="detached", timeout=60000)
        page.get_by_text("Download grid PNG", exact=False).first.wait_for(timeout=60000)
        wait_app_idle(page, timeout_ms=60000)
        page.screenshot(path=str(ARTIFACTS / "images_demo.png"), full_page=True)
        main = page.locator('[data-testid="stMain"]')
        for i, el in enumerate(main.locator('[data-testid="stImage"]').all()[:3]):
            el.scroll_into_view_if_needed()
            el.screenshot(path=str(ARTIFACTS / f"images_demo_grid{i}.png"))
        text = page.locator('[data-testid="stMain"]').inner_text()
        assert "ΔE" in text and "retrieval" in text.lower()
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


# Names of the traces of every Plotly chart on the page.
TRACE_NAMES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
  .flatMap(gd => (gd.data || []).map(t => t.name))"""


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_comparison_overlay_opens_from_its_link_in_a_real_browser(tmp_path):
    """Two saved runs compared through a cmp= link (no clicks in a multiselect, which was not
    reliable under load): the overlay draws both runs' ΔE curves."""
    from dmdcore.config import DistillConfig, EvalConfig
    from dmdcore.pipeline import Experiment, load_teacher, teacher_experiment_config
    from dmdcore.runs import RunIndex

    teacher = load_teacher("8gaussians", device="cpu")
    ids = []
    for seed in (0, 1):
        cfg = teacher_experiment_config(teacher, distill=DistillConfig(steps=4, batch=32, ratio=1, seed=seed),
                                        eval=EvalConfig(every=2, n=64, bootstrap=0))
        exp = Experiment(cfg, run_dir=tmp_path / f"cmp{seed}", index=RunIndex(tmp_path), teacher=teacher,
                         device="cpu")
        exp.run()
        ids.append(RunIndex(tmp_path).get(exp.run_dir).id)
    with app_in_browser(tmp_path) as (url, page, errors):
        page.goto(f"{url}/toy_lab?tn=8gaussians&en=200&cmp={ids[0]},{ids[1]}", wait_until="domcontentloaded")
        want = [f"run {i} · ΔE" for i in ids]
        page.wait_for_function(f"(want) => want.every(n => ({TRACE_NAMES_JS})().includes(n))", arg=want,
                               timeout=120000, polling=500)
        wait_app_idle(page, timeout_ms=60000)
        element_shot(page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Student loss (DMD)"),
                     "toy_lab_compare")
        page.screenshot(path=str(ARTIFACTS / "toy_lab_compare_page.png"), full_page=True)
        assert clipped_texts(page) == []
        assert f"cmp={ids[0]}%2C{ids[1]}" in page.url or f"cmp={ids[0]},{ids[1]}" in page.url, page.url
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_start_here_runs_to_the_plateau_in_a_real_browser(tmp_path):
    """Home's one click: the shipped 8-gaussians student is distilled until the plateau criterion
    stops it, and the headline says at which student step (the number read from metrics.csv)."""
    from dmdcore.convergence import first_converged_step
    from dmdcore.runs import RunDir

    with app_in_browser(tmp_path) as (url, page, errors):
        open_page(page, url, "DMD Copying Lab")
        keyed_button(page, "start_here").click()
        page.mouse.move(5, 5)
        main = page.locator('[data-testid="stMain"]')
        # Home's own caption also says "converged at student step N": wait for the Toy Lab first,
        # then for the job to end (Export appears), however long a busy machine makes that
        page.wait_for_url("**/toy_lab**", timeout=120000)
        page.get_by_text("Export").first.wait_for(timeout=300000)  # the job has ended
        main.get_by_text("converged at student step", exact=False).first.wait_for(timeout=60000)
        wait_app_idle(page, timeout_ms=60000)
        runs = [p for p in tmp_path.glob("toylab-*") if (p / "metrics.csv").is_file()]
        assert len(runs) == 1
        rows = [r for r in RunDir(runs[0]).read_metrics() if r["phase"] == "student"]
        n = first_converged_step(rows)
        assert n is not None and rows[-1]["step"] == n  # stopped at the plateau, before its cap
        assert f"converged at student step {n}" in main.inner_text()
        page.screenshot(path=str(ARTIFACTS / "toy_lab_starter_converged.png"), full_page=True)
        element_shot(page.locator('[data-testid="stPlotlyChart"]').first, "toy_lab_starter_pairing")
        assert clipped_texts(page) == []
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
