"""The OAuth consent in headless Chromium against the real daemon: a client
registers, the owner logs in, reads the permissions in words, accepts, and
the client receives a code that ``/auth/access_token`` trades for tokens."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from cozyd.auth.oauth import code_challenge
from tests.support import browser as B

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple 42"
SCOPE = "io.cozy.contacts:GET io.cozy.files"
VERIFIER = "a-code-verifier-only-the-client-knows-0123456789"


class Callback:
    """The client's redirect endpoint: a tiny HTTP server noting what it got."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                received.append(self.path)
                body = b"<!DOCTYPE html><title>client</title><p id='done'>Thanks</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback():
    server = Callback()
    yield server
    server.close()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


def register_client(daemon, domain, redirect_uri):
    response = daemon.public(
        "POST",
        "/auth/register",
        domain,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        data=json.dumps(
            {
                "redirect_uris": [redirect_uri],
                "client_name": "Contacts sync",
                "software_id": "github.com/example/sync",
                "client_uri": "https://example.org/",
            }
        ).encode(),
    )
    assert response.status == 201, response.body
    return response.json()


@pytest.mark.skipif(B.chromium_missing() is not None, reason=str(B.chromium_missing()))
def test_consent_in_chromium_gives_a_code_for_tokens(daemon, callback):
    from selenium.webdriver.common.by import By

    domain = f"alice.localhost:{daemon.ports['public']}"
    base = f"http://{domain}"
    added = daemon.cozyctl("instances", "add", domain, "--passphrase", PASSPHRASE)
    assert added.returncode == 0, added.stderr
    client = register_client(daemon, domain, callback.url)
    authorize = (
        base
        + "/auth/authorize?"
        + urlencode(
            {
                "client_id": client["client_id"],
                "redirect_uri": callback.url,
                "state": "xyz-state",
                "response_type": "code",
                "scope": SCOPE,
                "code_challenge": code_challenge(VERIFIER),
                "code_challenge_method": "S256",
            }
        )
    )

    with B.chromium(prefix="oauth") as driver:
        # No session yet: the login page first, then back to the consent.
        driver.get(authorize)
        B.wait_for_url(driver, base + "/auth/login")
        B.wait_for(driver, lambda d: d.find_elements(By.ID, "password"))
        driver.find_element(By.ID, "password").send_keys(PASSPHRASE)
        B.shoot(driver, "login")
        driver.find_element(By.ID, "login-submit").click()
        B.wait_for_url(driver, base + "/auth/authorize")
        B.wait_for(driver, lambda d: d.find_elements(By.ID, "authorize-submit"))
        permissions = driver.find_element(By.ID, "authorize-permissions").text
        assert "Read your contacts" in permissions
        assert "Read and modify your files and folders" in permissions
        assert "Contacts sync" in driver.find_element(By.ID, "authorize-title").text
        B.shoot(driver, "consent")

        driver.find_element(By.ID, "authorize-submit").click()
        landed = B.wait_for_url(driver, callback.url)
        B.wait_for(driver, lambda d: d.find_elements(By.ID, "done"))
        B.shoot(driver, "back-at-the-client")

    query = parse_qs(urlsplit(landed).query)
    assert query["state"] == ["xyz-state"]
    code = query["code"][0]
    assert any(
        path.startswith("/callback?") and f"code={code}" in path
        for path in callback.received
    )

    def exchange(**extra):
        return daemon.public(
            "POST",
            "/auth/access_token",
            domain,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            data=urlencode(
                {
                    "grant_type": "authorization_code",
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                    "code": code,
                    **extra,
                }
            ).encode(),
        )

    tokens = exchange(code_verifier=VERIFIER)
    assert tokens.status == 200, tokens.body
    body = tokens.json()
    assert body["token_type"] == "bearer" and body["scope"] == SCOPE
    me = daemon.public(
        "GET",
        "/permissions/self",
        domain,
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert me.status == 200, me.body
    assert me.json()["data"]["attributes"]["type"] == "oauth"
    assert exchange(code_verifier=VERIFIER).json() == {"error": "invalid code"}  # used

    daemon.stop()
    with open(daemon.log_path, encoding="utf-8") as f:
        log = f.read()
    for what, value in [
        ("client secret", client["client_secret"]),
        ("registration token", client["registration_access_token"]),
        ("code", code),
        ("access token", body["access_token"]),
        ("refresh token", body["refresh_token"]),
        ("passphrase", PASSPHRASE),
    ]:
        assert value not in log, f"the {what} appears in the daemon's log"
