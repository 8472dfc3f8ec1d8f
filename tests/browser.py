"""A real headless Chromium for tests, driven by selenium: Debian's `chromium` and `chromedriver`, which
scripts/lib/browser.sh installs. selenium is pointed at both binaries, and its driver manager (which would download
a browser) is made to fail if anything calls it. When they are missing the browser tests skip, and fail under
CI=true: CI must prove the page in a real browser.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
CHROMIUM = os.environ.get("CD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CD_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: the browser tests must run in CI, not skip", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """A Chromium window of 1280x900 with its own profile under tmp_path; its console is kept (`get_log`)."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            _unavailable(f"{binary} is missing (scripts/test installs Debian's chromium and chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.selenium_manager import SeleniumManager
    except ImportError:
        _unavailable("selenium is not installed (it is in the test extra)")

    def refuse(*_args, **_kwargs):
        raise AssertionError("selenium-manager must never run: it downloads browsers and drivers")

    monkeypatch.setattr(SeleniumManager, "binary_paths", refuse)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver, path: Path, width: int = 1280) -> None:
    """The whole page, not only the window: the window is grown to the page's height first."""
    driver.set_window_size(width, 900)
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    driver.set_window_size(width, min(max(height, 600), 4000) + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
