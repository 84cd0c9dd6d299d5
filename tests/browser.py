"""Headless Chromium for the status page's tests and screenshot: the system's browser only.

Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Selenium is given both paths,
and its selenium-manager (which would download a browser) is made to fail if anything calls it.
"""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("AI_PROXY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AI_PROXY_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and not shutil.which(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-test.txt)"
    return None


def _no_selenium_manager(*args, **kwargs):
    raise RuntimeError("selenium-manager must not run: the system chromedriver is given")


def chromium(scripts: bool = True, width: int = 1280, height: int = 900):
    """A headless Chromium driven through the system chromedriver, with its network log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    selenium_manager.SeleniumManager.binary_paths = _no_selenium_manager
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--metrics-recording-only",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    if not scripts:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def other_hosts(urls: list[str], origin: str) -> list[str]:
    """The URLs that are not on `origin` (nor the browser's own data: and about: pages)."""
    own = urlsplit(origin).netloc
    return [
        url
        for url in urls
        if urlsplit(url).scheme not in ("data", "about", "blob") and urlsplit(url).netloc != own
    ]
