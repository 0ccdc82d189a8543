"""The owner's pages in headless Chromium against the real daemon, and a
full run whose log must not hold any secret."""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlencode

import pytest

from cozyd import passphrase as hashing
from cozyd.testing import TEST_KDF_ITERATIONS
from tests.support import browser as B

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple 42"
NEW_PASSPHRASE = "an entirely new passphrase!"


def add_instance(daemon, name: str = "alice") -> tuple[str, str, str]:
    """(domain, base URL, register token) of a new instance on the daemon."""
    domain = f"{name}.localhost:{daemon.ports['public']}"
    result = daemon.cozyctl("instances", "add", domain)
    assert result.returncode == 0, result.stderr
    return domain, f"http://{domain}", result.stdout.strip()


def assert_no_secret_in(text: str, secrets: dict[str, str]) -> None:
    for what, value in secrets.items():
        if value:
            assert value not in text, f"the {what} appears in the daemon's log"


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


@pytest.mark.skipif(B.chromium_missing() is not None, reason=str(B.chromium_missing()))
def test_onboarding_logout_and_login_in_chromium(daemon):
    from selenium.webdriver.common.by import By

    domain, base, token = add_instance(daemon)
    secrets = {"register token": token, "passphrase": PASSPHRASE}
    with B.chromium(prefix="owner") as driver:
        # The link without its token: the "not activated" page.
        driver.get(base + "/")
        assert "not activated" in driver.page_source
        B.shoot(driver, "not-activated")

        landed = B.onboard(driver, base, token, PASSPHRASE, hint="a hint")
        assert landed == B.home_url(base)
        cookie = B.session_cookie(driver)
        assert cookie is not None, driver.get_cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert cookie["domain"] == ".alice.localhost"
        secrets["session cookie"] = cookie["value"]
        # The home page, not a JSON 404: the instance's name and its links.
        assert B.home_name(driver) == domain
        assert "{" not in driver.find_element(By.TAG_NAME, "body").text
        assert (
            driver.find_element(By.ID, "home-logout").get_attribute("href")
            == base + "/auth/logout"
        )
        assert (
            driver.find_element(By.ID, "home-settings").get_attribute("href")
            == f"http://settings.{domain}/#/profile"
        )
        B.shoot(driver, "home-after-onboarding")

        # Logged in: the login page sends the owner home at once.
        driver.get(base + "/auth/login")
        B.wait_for_url(driver, B.home_url(base))
        assert B.home_name(driver) == domain

        # Log out from the home page's link.
        driver.find_element(By.ID, "home-logout").click()
        B.wait_for_url(driver, base + "/auth/logout")
        assert B.log_out(driver, base) == base + "/auth/login"
        assert B.session_cookie(driver) is None
        # Logged out, the home sends to the login page.
        driver.get(B.home_url(base))
        B.wait_for_url(driver, base + "/auth/login")

        # A wrong passphrase: the form again, with a message.
        driver.get(base + "/auth/login")
        driver.find_element(By.ID, "password").send_keys("not the passphrase")
        driver.find_element(By.ID, "login-submit").click()
        B.wait_for(driver, lambda d: d.find_elements(By.ID, "login-error"))
        assert "not the right one" in driver.find_element(By.ID, "login-error").text
        B.shoot(driver, "login-failed")

        # The right one: the home page (the login page came back there).
        assert B.log_in(driver, base, PASSPHRASE, redirect=B.home_url(base)) == B.home_url(
            base
        )
        assert B.home_name(driver) == domain
        B.shoot(driver, "home-after-login")
        B.log_out(driver, base)

        # The right one, with a redirection to an app of the instance.
        target = f"http://drive.{domain}/#/folder"
        assert B.log_in(driver, base, PASSPHRASE, redirect=target, long_run=True) == target
        # No such app yet: the page of an app not installed, with a way home.
        B.wait_for(driver, lambda d: "does not exist" in d.page_source)
        B.shoot(driver, "app-not-installed")
        cookie = B.session_cookie(driver)
        assert cookie is not None and cookie.get("expiry")  # long-run: persistent
        secrets["second session cookie"] = cookie["value"]
        csrf = next((c for c in driver.get_cookies() if c["name"] == "_csrf"), None)
        B.shoot(driver, "logged-in")
    # The passphrase as the browser sent it (PBKDF2 done by the page).
    secrets["client-side hash"] = hashing.client_side_hash(
        PASSPHRASE, domain, TEST_KDF_ITERATIONS
    )
    if csrf:
        secrets["csrf token"] = csrf["value"]
    # And the server accepts exactly that hash: the page hashes as cozyd does.
    status = form_login(
        daemon, domain, hashing.client_side_hash(PASSPHRASE, domain, TEST_KDF_ITERATIONS)
    )
    assert status == 303
    assert_no_secret_in(daemon.output, secrets)  # all it has logged so far


def request(
    daemon, method: str, path: str, domain: str, *, headers=None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange with the public server, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.ports["public"], timeout=30)
    try:
        connection.request(
            method, path, body=body, headers={"Host": domain, **(headers or {})}
        )
        response = connection.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def form_login(daemon, domain: str, hashed: str) -> int:
    """Log in with plain HTTP, as the login page does; the status."""
    status, headers, body = request(daemon, "GET", "/auth/login", domain)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', body.decode()).group(1)
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, _, _ = request(
        daemon,
        "POST",
        "/auth/login",
        domain,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        body=urlencode({"csrf_token": csrf, "passphrase": hashed}).encode(),
    )
    return status


def test_full_flow_keeps_secrets_out_of_the_log(daemon):
    """Onboarding (JSON), logins, a failed login, set-passphrase from the CLI,
    tokens: none of the secrets used reaches the log."""
    domain, _, token = add_instance(daemon, "bob")
    hashed = hashing.client_side_hash(PASSPHRASE, domain, TEST_KDF_ITERATIONS)
    secrets = {
        "register token": token,
        "passphrase": PASSPHRASE,
        "hash": hashed,
        "new passphrase": NEW_PASSPHRASE,
    }
    # The link and the form, as a browser would fetch them.
    assert request(daemon, "GET", f"/?registerToken={token}", domain)[0] == 303
    assert (
        request(daemon, "GET", f"/auth/passphrase?registerToken={token}", domain)[0] == 200
    )
    status, headers, body = request(
        daemon,
        "POST",
        "/settings/passphrase",
        domain,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        body=json.dumps(
            {
                "register_token": token,
                "passphrase": hashed,
                "iterations": TEST_KDF_ITERATIONS,
                "key": "0.aXY=|a2V5",
            }
        ).encode(),
    )
    assert status == 200, body
    secrets["session cookie"] = headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert form_login(daemon, domain, "wrong") == 401
    assert form_login(daemon, domain, hashed) == 303

    # The CLI changes the passphrase (talking to the public server).
    result = daemon.cozyctl(
        "instances",
        "set-passphrase",
        domain,
        NEW_PASSPHRASE,
        "--host",
        "127.0.0.1",
        "--port",
        str(daemon.ports["public"]),
    )
    assert result.returncode == 0, result.stderr
    assert "Passphrase has been changed" in result.stdout
    assert form_login(daemon, domain, hashed) == 401
    new_hash = hashing.client_side_hash(NEW_PASSPHRASE, domain, TEST_KDF_ITERATIONS)
    secrets["new hash"] = new_hash
    assert form_login(daemon, domain, new_hash) == 303

    cli = daemon.cozyctl("instances", "token-cli", domain, "io.cozy.settings")
    secrets["CLI token"] = cli.stdout.strip()
    shown = request(
        daemon, "GET", f"/settings/instance?bearer_token={secrets['CLI token']}", domain
    )
    assert shown[0] == 200
    daemon.stop()
    with open(daemon.log_path, encoding="utf-8") as f:
        log = f.read()
    assert "/settings/passphrase" in log  # the requests are logged…
    assert_no_secret_in(log, secrets)  # …without their secrets
