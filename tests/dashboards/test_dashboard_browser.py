"""The served dashboard in a real browser: headless Debian chromium driven by selenium
(chromium + chromium-driver come from ``make system-deps``; selenium from the dev extra).

Opens every page through ``dashboards.serve`` on localhost, finds the leaderboard table with
the fabricated study's rows, waits for every plotly plot to draw its SVG, fails on any
JavaScript error (the browser's console log and the pages' own ``window.__archerErrors``)
and saves a full-page screenshot of the index."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` "
                    "installs them as root; else apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(site):
    from dashboards.serve import serve_in_thread

    server, url = serve_in_thread(site.dir)
    yield url
    server.shutdown()
    server.server_close()


def _open(driver, url: str) -> int:
    """Load ``url``, wait until every plotly plot has drawn, return how many there are."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && typeof Plotly !== 'undefined'"))
    count = "return document.querySelectorAll('.js-plotly-plot').length"
    drawn = "return document.querySelectorAll('.js-plotly-plot .main-svg').length"
    n = driver.execute_script(count)
    # each plot draws two .main-svg layers (plot + hover layer) once rendered
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(drawn) >= 2 * n)
    return n


def _errors(driver) -> list[str]:
    logs = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return logs + list(driver.execute_script("return window.__archerErrors || []"))


def test_leaderboard_table_and_plots(browser, served, tmp_path):
    from selenium.webdriver.common.by import By

    assert _open(browser, served + "index.html") >= 1
    table = browser.find_element(By.ID, "leaderboard")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.get_attribute("data-model") for r in rows] == ["archer", "dapo", "grpo"]
    cells = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["archer", "2"] and cells[2].startswith("79.2 [")
    # the paired delta against grpo: 2 seeds, so the sign-flip test over seeds gives p=0.5
    assert cells[4].startswith("+45.8 [") and "p=0.5" in cells[4]
    heads = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert "gsm8k Δ vs grpo (pts)" in heads and "generated tokens" in heads
    # the bar plot carries one bar per row, in the table's order
    names = browser.execute_script(
        "return document.getElementById('leaderboard-plot').data[0].x")
    assert list(names) == ["archer", "dapo", "grpo"]
    assert _errors(browser) == []
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(max(height + 40, 600), 4000))
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize("page,min_plots", [("study-baselines.html", 2),
                                            ("optuna-archer_clip_kl.html", 2)])
def test_other_pages_render_without_js_errors(browser, served, page, min_plots):
    assert _open(browser, served + page) >= min_plots
    assert _errors(browser) == []


def test_a_javascript_error_is_caught(browser, tmp_path):
    """The error check can fail: a page whose plot script throws is reported."""
    from dashboards.serve import serve_in_thread
    from dashboards.site import _page

    (tmp_path / "index.html").write_text(_page("broken", "<script>Plotly.newPlot("
                                                "'nope', undefinedData());</script>", []))
    (tmp_path / "plotly.min.js").write_text("window.Plotly = {};")
    server, url = serve_in_thread(tmp_path)
    try:
        browser.get(url + "index.html")
        errors = _errors(browser)
    finally:
        server.shutdown()
        server.server_close()
    assert any("undefinedData" in e for e in errors), errors
