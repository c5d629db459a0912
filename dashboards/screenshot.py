"""Full-page screenshots of the served dashboard in headless chromium (selenium + Debian's
chromium/chromium-driver), e.g. for the README after ``make demo``::

    python -m dashboards.screenshot runs/dashboard docs/dashboard.png
    python -m dashboards.screenshot runs/dashboard docs/dashboard_study.png \\
        --page study-baselines.html
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def chromium_driver(width: int = 1400, height: int = 1000):
    """A headless chromium WebDriver with the browser console log enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        raise FileNotFoundError("chromium and chromedriver are needed: apt-get install "
                                "chromium chromium-driver (make system-deps does it as root)")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def screenshot(site_dir: str | Path, out_png: str | Path, page: str = "index.html",
               width: int = 1400, max_height: int = 4000) -> Path:
    """Serve ``site_dir`` on a free localhost port, open ``page``, wait for the plots and
    save a full-page PNG; raises if the page logged JavaScript errors."""
    from dashboards.serve import serve_in_thread

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    server, url = serve_in_thread(site_dir)
    driver = chromium_driver(width)
    try:
        driver.get(url + page)
        deadline = time.monotonic() + 60
        js = ("return [document.querySelectorAll('.js-plotly-plot').length,"
              "document.querySelectorAll('.js-plotly-plot .main-svg').length]")
        while time.monotonic() < deadline:
            n, drawn = driver.execute_script(js)
            if drawn >= 2 * n:
                break
            time.sleep(0.2)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            raise RuntimeError(f"{page}: JavaScript errors: {errors}")
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(width, min(max(height + 40, 600), max_height))
        time.sleep(0.5)  # responsive plots redraw at the new size
        driver.save_screenshot(str(out_png))
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    return out_png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("site_dir")
    p.add_argument("out_png")
    p.add_argument("--page", default="index.html")
    p.add_argument("--width", type=int, default=1400)
    args = p.parse_args(argv)
    print(screenshot(args.site_dir, args.out_png, args.page, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
