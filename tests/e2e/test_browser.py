"""End-to-end: real chromium drives `streamlit run app.py` (runs in CI; never skipped)."""

from __future__ import annotations

import pytest

from tests.e2e.harness import ARTIFACTS, browser_page, streamlit_server, wait_app_idle


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_pages_render_in_a_real_browser(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(tmp_path) as (url, _proc), browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
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

        page.goto(f"{url}/docs", wait_until="domcontentloaded")
        page.get_by_text("One DMD2 training iteration").first.wait_for(timeout=30000)
        page.locator('[data-testid="stGraphVizChart"] svg').first.wait_for(timeout=30000)
        wait_app_idle(page)
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
        page.get_by_role("tab", name="Metrics").click()
        page.get_by_text("Pairing inefficiency", exact=False).first.wait_for(timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "docs_metrics.png"), full_page=True)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
