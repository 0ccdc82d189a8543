"""A small browser over the in-memory stack: keeps cookies (as a real
browser would for one host), never follows redirects, and onboards or logs
in the owner the way the pages do."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import urlencode

import attrs
from treq.testing import StubTreq
from twisted.internet import defer

from cozyd import passphrase as hashing
from cozyd.testing import TEST_ADMIN_PASSPHRASE, TEST_KDF_ITERATIONS, result_of

ADMIN = "http://127.0.0.1:6060"
AUTH = ("admin", TEST_ADMIN_PASSPHRASE)
DOMAIN = "alice.cozy.test"
BASE = f"http://{DOMAIN}"
PASSPHRASE = "a very long passphrase"


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def cookies(self) -> dict[str, str]:
        """Set-Cookie lines by cookie name."""
        return {line.split("=", 1)[0]: line for line in self.headers.get("set-cookie", [])}


class Browser:
    def __init__(self, resource):
        self._stub = StubTreq(resource)
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        body: Any = None,
        cookies: bool = True,
    ) -> Reply:
        all_headers = dict(headers or {})
        data = None
        if form is not None:
            data = urlencode(form).encode()
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if cookies and self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        d = self._stub.request(
            method, url, headers=all_headers, data=data, allow_redirects=False
        )
        response = self._wait(d)
        content = self._wait(response.content())
        flat: dict[str, list[str]] = {}
        for name, values in response.headers.getAllRawHeaders():
            flat.setdefault(name.decode().lower(), []).extend(v.decode() for v in values)
        reply = Reply(response.code, flat, content)
        if cookies:
            for line in flat.get("set-cookie", []):
                pair = line.split(";", 1)[0]
                name, _, value = pair.partition("=")
                if "max-age=0" in line.lower() or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
        return reply

    def _wait(self, d: defer.Deferred) -> Any:
        return result_of(d, flush=self._stub.flush)

    # -- pages ----------------------------------------------------------------
    def csrf(self, url: str) -> str:
        page = self.request("GET", url)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text
        return match.group(1)


def create_instance(admin: Browser, domain: str = DOMAIN, **params: str) -> str:
    """Create an instance; its register token (hex)."""
    reply = admin.request(
        "POST",
        f"{ADMIN}/instances?" + urlencode({"Domain": domain, **params}),
        headers=basic_auth(),
    )
    assert reply.status == 201, reply.body
    token = reply.json()["data"]["attributes"].get("register_token")
    return base64.b64decode(token).hex() if token else ""


def basic_auth() -> dict[str, str]:
    token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def admin_token(admin: Browser, domain: str = DOMAIN, **params: str) -> str:
    reply = admin.request(
        "POST",
        f"{ADMIN}/instances/token?" + urlencode({"Domain": domain, **params}),
        headers=basic_auth(),
    )
    assert reply.status == 200, reply.body
    return reply.text


def client_hash(
    passphrase: str = PASSPHRASE,
    domain: str = DOMAIN,
    iterations: int = TEST_KDF_ITERATIONS,
) -> str:
    return hashing.client_side_hash(passphrase, domain, iterations)


def onboard(
    browser: Browser,
    register_token: str,
    passphrase: str = PASSPHRASE,
    domain: str = DOMAIN,
) -> Reply:
    """What the onboarding page does (JSON variant)."""
    return browser.request(
        "POST",
        f"http://{domain}/settings/passphrase",
        body={
            "register_token": register_token,
            "passphrase": client_hash(passphrase, domain),
            "iterations": TEST_KDF_ITERATIONS,
            "key": "0.aXY=|a2V5",
        },
    )


def login(
    browser: Browser, passphrase: str = PASSPHRASE, domain: str = DOMAIN, **fields: str
) -> Reply:
    """What the login page does, with a form post."""
    base = f"http://{domain}"
    token = browser.csrf(base + "/auth/login")
    return browser.request(
        "POST",
        base + "/auth/login",
        form={"csrf_token": token, "passphrase": client_hash(passphrase, domain), **fields},
    )
