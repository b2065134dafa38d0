"""Debian's Chromium, headless, driven through its chromedriver by Selenium: the browser the web
pages are tested in (``.ci/run`` installs both packages)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the binary: Debian's wrapper script may fail here


class BrowserMissing(RuntimeError):
    pass


@contextmanager
def chromium(width: int = 900, height: int = 600) -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    if not CHROMIUM.exists() or driver_path is None:
        raise BrowserMissing(
            "Chromium and chromium-driver (Debian packages) are needed: .ci/run installs them"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
