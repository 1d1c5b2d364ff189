"""Real-browser harness: a headless `streamlit run app.py` on a free port + Debian's chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("DMD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    """Poll <url>/_stcore/health until it answers "ok"; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/_stcore/health did not answer within {timeout} s")


@contextlib.contextmanager
def streamlit_server(runs_dir: Path, extra_env: dict[str, str] | None = None):
    """Start `streamlit run app.py` headless on a free port; yields (base_url, process)."""
    port = free_port()
    env = dict(os.environ, DMD_RUNS_DIR=str(runs_dir), **(extra_env or {}))
    log = open(runs_dir / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A fresh chromium page (Playwright, Debian's chromium binary), 1400 px wide by default:
    the width the screenshots are checked at."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def wait_app_idle(page, timeout_ms: int = 30000) -> None:
    """Wait until the Streamlit app has rendered and is not running a script."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_ms,
    )


@contextlib.contextmanager
def app_in_browser(runs_dir: Path):
    """A fresh server (runs under ``runs_dir``) and a chromium page on it; yields
    (base_url, page, errors) where ``errors`` collects uncaught page errors. Also makes sure
    the screenshot folder exists."""
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(runs_dir) as (url, _proc), browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield url, page, errors


def open_page(page, url: str, ready_text: str, screenshot: str | None = None, timeout_ms: int = 60000) -> None:
    """Go to ``url``, wait until ``ready_text`` is shown and the app is idle, and optionally save a
    full-page screenshot as ``test-artifacts/<screenshot>.png``."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(ready_text).first.wait_for(timeout=timeout_ms)
    wait_app_idle(page, timeout_ms=timeout_ms)
    if screenshot:
        page.screenshot(path=str(ARTIFACTS / f"{screenshot}.png"), full_page=True)


def screenshot_charts(page, prefix: str) -> int:
    """Save each Plotly chart on the page as ``test-artifacts/<prefix><i>.png`` (Streamlit scrolls
    inside its main container, so a full-page shot misses the lower ones). Returns the count."""
    charts = page.locator('[data-testid="stPlotlyChart"]')
    for i in range(charts.count()):
        element_shot(charts.nth(i), f"{prefix}{i}")
    return charts.count()


def element_shot(locator, name: str) -> None:
    """Screenshot one element as ``test-artifacts/<name>.png``, scrolled to the middle of the
    viewport first: scrolled only "into view" it sat under Streamlit's sticky header, which hid
    the subplot titles in the shot."""
    locator.evaluate("el => el.scrollIntoView({block: 'center'})")
    locator.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def keyed_button(page, key: str):
    """The button of the widget with ``key`` (Streamlit's ``st-key-<key>`` class), visible copy only:
    Streamlit 1.67 renders a button that has a tooltip (``help=``) twice, the second inside a
    ``display: none`` wrapper, so a role/name locator can match two elements while a rerun renders."""
    return page.locator(f".st-key-{key} button").filter(visible=True)


# Texts of every Plotly chart (titles, subplot titles, annotations, axis titles, legend entries)
# whose box reaches outside the chart's own box: Plotly never shortens a title, it runs past the
# figure's edge and the page cuts it ("Student that remaps (same sample…").
CLIPPED_TEXT_JS = """() => {
  const out = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const r = gd.getBoundingClientRect();
    if (r.width === 0) continue;
    for (const t of gd.querySelectorAll('.annotation-text, .gtitle, .g-xtitle text, .g-ytitle text, .legendtext')) {
      const b = t.getBoundingClientRect();
      if (b.width === 0) continue;
      if (b.left < r.left - 1 || b.right > r.right + 1 || b.top < r.top - 1 || b.bottom > r.bottom + 1) out.push(t.textContent);
    }
  }
  return out;
}"""


def clipped_texts(page) -> list[str]:
    """Chart texts cut at a chart's edge (see CLIPPED_TEXT_JS); [] when every text fits."""
    return page.evaluate(CLIPPED_TEXT_JS)
