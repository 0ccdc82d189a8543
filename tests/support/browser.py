"""Headless Chromium for tests that use cozyd's pages as a person would.

``chromium(...)`` starts Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) with a fresh profile; the helpers
walk the pages: ``onboard`` (the registerToken link → passphrase form →
home), ``log_in``, ``home_name`` (the home page at ``home.<domain>``) and
``log_out``. Instances are served on
``<name>.localhost:<port>``: Chromium resolves every ``*.localhost`` name to
the loopback address by itself, and treats those origins as secure (Web
Crypto works there without TLS).

    with chromium(SCREENSHOTS, "consent") as driver:
        log_in(driver, base_url, passphrase)   # onboarded elsewhere
        driver.get(base_url + "/auth/authorize?...")
        shoot(driver, "consent")

Screenshots go to ``test-output/screenshots/<prefix>-<name>.png``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from urllib.parse import urlsplit

from tests.support.daemon import REPO

SCREENSHOTS = os.path.join(REPO, "test-output", "screenshots")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 30.0


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromium-driver are not installed (scripts/test installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[test])"
    return None


@contextlib.contextmanager
def chromium(screenshots: str = SCREENSHOTS, prefix: str = "") -> Iterator:
    """A headless Chromium with a fresh profile; always quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never fetch drivers
    profile = tempfile.mkdtemp(prefix="cozyd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--window-size=1024,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(WAIT)
    driver.cozyd_screenshots = (screenshots, prefix)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shoot(driver, name: str) -> str:
    directory, prefix = getattr(driver, "cozyd_screenshots", (SCREENSHOTS, ""))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{prefix}-{name}.png" if prefix else f"{name}.png")
    driver.save_screenshot(path)
    return path


def wait_for(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def wait_for_url(driver, prefix: str, timeout: float = WAIT) -> str:
    wait_for(driver, lambda d: d.current_url.startswith(prefix), timeout)
    return driver.current_url


def home_url(base_url: str) -> str:
    """Where a logged-in owner lands: the home app's sub-domain."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://home.{parts.netloc}/"


def onboard(
    driver, base_url: str, register_token: str, passphrase: str, hint: str = ""
) -> str:
    """Open the link of ``cozyctl instances add`` and choose the passphrase;
    returns the URL landed on (the home)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/?registerToken={register_token}")
    wait_for_url(driver, f"{base_url}/auth/passphrase")
    driver.find_element(By.ID, "password").send_keys(passphrase)
    driver.find_element(By.ID, "password-confirm").send_keys(passphrase)
    if hint:
        driver.find_element(By.ID, "hint").send_keys(hint)
    shoot(driver, "onboarding")
    driver.find_element(By.ID, "onboarding-submit").click()
    return wait_for_url(driver, home_url(base_url))


def log_in(
    driver,
    base_url: str,
    passphrase: str,
    *,
    redirect: str | None = None,
    long_run: bool = False,
    expect: str | None = None,
) -> str:
    """Log in through the form; returns the URL landed on (``expect``, by
    default the redirect or the home)."""
    from urllib.parse import quote

    from selenium.webdriver.common.by import By

    url = f"{base_url}/auth/login"
    if redirect:
        url += "?redirect=" + quote(redirect, safe="")
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.ID, "password"))
    driver.find_element(By.ID, "password").send_keys(passphrase)
    if long_run:
        driver.find_element(By.ID, "long-run-session").click()
    shoot(driver, "login")
    driver.find_element(By.ID, "login-submit").click()
    return wait_for_url(driver, expect or redirect or home_url(base_url))


def home_name(driver) -> str:
    """The instance's name on the home page, once it is shown (it fails on
    anything else, a JSON error say)."""
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.find_elements(By.ID, "home-name"))
    return driver.find_element(By.ID, "home-name").text


def log_out(driver, base_url: str) -> str:
    """Log out with the confirmation page; returns the login page URL."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url}/auth/logout")
    wait_for(driver, lambda d: d.find_elements(By.ID, "logout-submit"))
    shoot(driver, "logout")
    driver.find_element(By.ID, "logout-submit").click()
    return wait_for_url(driver, f"{base_url}/auth/login")


def session_cookie(driver) -> dict | None:
    """The ``cozysessid`` cookie as Chromium holds it for the current page."""
    return next((c for c in driver.get_cookies() if c["name"] == "cozysessid"), None)
