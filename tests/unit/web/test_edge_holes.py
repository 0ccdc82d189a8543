"""Holes of the HTTP edge, closed: multi-step writes that survive a client
hanging up, the settings document's read permission, the admin
passphrase's rate limit and hashing off the reactor, large answers
written in pieces."""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from cozyd.adminpass import PassphraseChecker, hash_passphrase
from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import TEST_ADMIN_PASSPHRASE, TEST_KDF_ITERATIONS, TEST_SCRYPT_N, sync
from cozyd.web.admin import AdminService
from tests.support.auth import (
    BASE,
    DOMAIN,
    Browser,
    admin_token,
    client_hash,
    create_instance,
    login,
    onboard,
)
from tests.support.data import Data, cli_token, new_instance
from tests.unit.web.conftest import ADMIN, AUTH

NEW = "another long passphrase"
WRITES = ("put_doc", "create_db", "ensure_db", "bulk_docs", "delete_doc", "put_local")


class GatedStore:
    """Makes the ``at``-th write of the stack's store wait for ``gate``."""

    def __init__(self, store: Any):
        self.store = store
        self.calls = 0
        self.at: int | None = None
        self.gate: defer.Deferred = defer.Deferred()
        self.reached = False
        for name in WRITES:
            original = getattr(store, name)
            setattr(store, name, self._wrap(original))

    def _wrap(self, original):
        async def write(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                self.reached = True
                await self.gate
            return await original(*args, **kwargs)

        return write


def hang_up_midway(
    resource,
    gated: GatedStore,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    args: dict[str, str] | None = None,
    body: bytes = b"",
    cookies: dict[str, str] | None = None,
) -> Request:
    """Send a request straight to ``resource``, hang up once it reached the
    gated write, then let the write go on."""
    parts = urlsplit(url)
    request = Request(DummyChannel())
    request.method = method.encode()
    request.uri = (parts.path + (f"?{parts.query}" if parts.query else "")).encode()
    request.path = parts.path.encode()
    request.prepath = []
    request.postpath = parts.path.encode().split(b"/")[1:]
    request.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
    request.requestHeaders.setRawHeaders(b"host", [parts.netloc.encode()])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
    request.received_cookies = {k.encode(): v.encode() for k, v in (cookies or {}).items()}
    request.content = io.BytesIO(body)
    assert resource.render(request) is NOT_DONE_YET
    assert gated.reached, "the gated write was not reached"
    request.connectionLost(Failure(ConnectionDone()))  # the handler is cancelled
    gated.gate.callback(None)
    return request


def admin_header() -> dict[str, str]:
    token = base64.b64encode(f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def writes_of(stack, action) -> int:
    gated = GatedStore(stack.store)
    action()
    return gated.calls


# =============================================================================
# Multi-step writes and clients hanging up
# =============================================================================
def test_an_instance_creation_completes_when_the_client_hangs_up(stack, admin):
    reference = create_instance(Browser(stack.admin), "ref.cozy.test")
    assert reference
    gated = GatedStore(stack.store)
    create_instance(Browser(stack.admin), "count.cozy.test")
    total, gated.calls = gated.calls, 0
    gated.at = total // 2
    hang_up_midway(
        stack.admin,
        gated,
        "POST",
        ADMIN + "/instances?" + urlencode({"Domain": "late.cozy.test"}),
        args={"Domain": "late.cozy.test"},
        headers=admin_header(),
    )
    shown = admin.request("GET", ADMIN + "/instances/late.cozy.test", auth=AUTH)
    assert shown.status == 200, shown.body
    assert shown.json()["data"]["attributes"]["domain"] == "late.cozy.test"
    dbs = [
        name.partition("/")[2]
        for name in sync(stack.store.list_dbs(Instance.new("late.cozy.test").prefix))
    ]
    ref = [
        name.partition("/")[2]
        for name in sync(stack.store.list_dbs(Instance.new("ref.cozy.test").prefix))
    ]
    assert sorted(dbs) == sorted(ref) and dbs


def test_a_login_completes_when_the_client_hangs_up(stack):
    admin = Browser(stack.admin)
    assert onboard(Browser(stack.public), create_instance(admin)).status == 200
    gated = GatedStore(stack.store)
    browser = Browser(stack.public)
    token = browser.csrf(BASE + "/auth/login")
    form = {"csrf_token": token, "passphrase": client_hash()}
    gated.at = gated.calls + 2  # the session is stored; the login history not yet
    hang_up_midway(
        stack.public,
        gated,
        "POST",
        BASE + "/auth/login",
        args=form,
        cookies={"_csrf": token},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    cli = admin_token(
        admin, Audience="cli", Scope="io.cozy.sessions io.cozy.sessions.logins"
    )
    sessions = (
        Browser(stack.public)
        .request(
            "GET", BASE + "/settings/sessions", headers={"Authorization": f"Bearer {cli}"}
        )
        .json()["data"]
    )
    logins = sync(
        stack.store.all_docs(
            db_name(Instance.new(DOMAIN).prefix, "io.cozy.sessions.logins"),
            include_docs=True,
        )
    )["rows"]
    logins = [row for row in logins if not row["id"].startswith("_design/")]
    # The onboarding's session and login, and the hung-up login's, both whole.
    assert len(sessions) == 2 and len(logins) == 2


def test_a_passphrase_change_completes_when_the_client_hangs_up(stack, clock):
    admin = Browser(stack.admin)
    owner = Browser(stack.public)
    assert onboard(owner, create_instance(admin)).status == 200
    other = Browser(stack.public)
    assert login(other).status == 303
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    body = json.dumps(
        {
            "current_passphrase": client_hash(),
            "new_passphrase": client_hash(NEW),
            "iterations": TEST_KDF_ITERATIONS,
        }
    ).encode()
    gated = GatedStore(stack.store)
    gated.at = 1  # the passphrase stored; sessions not yet cleaned
    hang_up_midway(
        stack.public,
        gated,
        "PUT",
        BASE + "/settings/passphrase",
        body=body,
        headers={"Authorization": f"Bearer {cli}", "Content-Type": "application/json"},
    )
    assert gated.calls > 1  # the steps after the gate ran
    assert login(Browser(stack.public), NEW).status == 303
    # The other sessions ended, as the change's last step does.
    assert other.request("GET", BASE + "/settings/sessions/current").status == 404


# =============================================================================
# GET /settings/instance needs a read permission on the settings document
# =============================================================================
@pytest.mark.parametrize(
    "scope, status",
    [
        ("io.cozy.settings:GET", 200),
        ("io.cozy.settings:GET:io.cozy.settings.instance", 200),
        ("io.cozy.settings:GET:io.cozy.settings.disk-usage", 403),
        ("io.cozy.settings:PUT", 403),
        ("io.cozy.files", 403),
    ],
)
def test_reading_the_instance_settings_needs_a_permission(stack, scope, status):
    admin = Browser(stack.admin)
    create_instance(admin)
    token = admin_token(admin, Audience="cli", Scope=scope)
    reply = Browser(stack.public).request(
        "GET", BASE + "/settings/instance", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status == status, reply.body


# =============================================================================
# The admin passphrase
# =============================================================================
def test_wrong_admin_passphrases_are_rate_limited(stack, clock):
    ran_off: list[Any] = []

    async def pool(function):
        ran_off.append(function)
        return function()

    checker = PassphraseChecker(hash_passphrase("right", n=TEST_SCRYPT_N), run_hashing=pool)
    service = AdminService(
        stack.instances,
        checker.check,
        clients=None,
        seconds=clock.seconds,
        max_failures=3,
        failure_period=60,
    )
    from cozyd.testing import MemoryClient

    client = MemoryClient(service)
    url = ADMIN + "/instances/count"
    assert client.request("GET", url, auth=("admin", "right")).status == 200
    for n in range(3):
        assert client.request("GET", url, auth=("admin", f"wrong{n}")).status == 401
    limited = client.request("GET", url, auth=("admin", "wrong4"))
    assert limited.status == 429 and limited.headers["retry-after"] == "60"
    assert limited.json()["errors"][0]["code"] == "too_many_requests"
    # No hashing while limited, even for the right one.
    assert client.request("GET", url, auth=("admin", "right")).status == 429
    # Every scrypt ran in the pool: the right one once (then remembered),
    # the three wrong ones; none while limited.
    assert len(ran_off) == 4
    clock.advance(61)
    assert client.request("GET", url, auth=("admin", "right")).status == 200
    # Unknown routes say nothing before the passphrase.
    assert client.request("GET", ADMIN + "/nope").status == 401
    assert client.request("GET", ADMIN + "/nope", auth=("admin", "right")).status == 404


# =============================================================================
# Large answers are written in pieces
# =============================================================================
def test_a_large_all_docs_is_written_in_pieces(stack, admin, public):
    new_instance(admin)
    data = Data(public, cli_token(admin))
    docs = [{"_id": f"doc-{n:05d}", "n": n, "text": "é" * 50} for n in range(3000)]
    assert data.post("/io.cozy.notes/_bulk_docs", {"docs": docs}).status == 201
    turns: list[int] = []

    async def pause():
        turns.append(1)

    stack.public._site._services["data"].pause = pause
    response = data.get("/io.cozy.notes/_all_docs", params={"include_docs": "true"})
    assert response.status == 200
    body = response.json()
    expected = sync(
        stack.store.all_docs(
            db_name(Instance.new(DOMAIN).prefix, "io.cozy.notes"), include_docs=True
        )
    )
    assert body == json.loads(json.dumps(expected))
    assert [row["doc"]["n"] for row in body["rows"]] == list(range(3000))
    assert len(turns) >= 6  # a turn of the reactor every 500 rows
    keys = data.post("/io.cozy.notes/_all_docs", {"keys": ["doc-00001", "nope"]}).json()
    assert [row.get("id") for row in keys["rows"]] == ["doc-00001", None]
    changes = data.get("/io.cozy.notes/_changes").json()
    assert len(changes["results"]) == 3000 and changes["last_seq"]


# =============================================================================
# One JSON reader: the site's limit, depth and NaN checks everywhere
# =============================================================================
def test_settings_read_json_as_every_service(tmp_path, clock):
    from cozyd.testing import memory_stack

    stack = memory_stack(str(tmp_path), clock=clock, server={"max_body_size": "3MB"})
    admin = Browser(stack.admin)
    create_instance(admin)
    token = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    from cozyd.testing import MemoryClient

    client = MemoryClient(stack.public)

    def put(raw: bytes):
        return client.request(
            "PUT",
            BASE + "/settings/instance",
            data=raw,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
            },
        )

    for raw in (b'{"data": {"attributes": {"x": NaN}}}', b"[" * 300 + b"]" * 300, b"\xff"):
        reply = put(raw)
        assert reply.status == 400, raw[:20]
        assert reply.json()["errors"][0]["code"] == "bad_json"
    # The limit is [server] max_body_size (3MB here), not a limit of its own.
    rev = client.request(
        "GET", BASE + "/settings/instance", headers={"Authorization": f"Bearer {token}"}
    ).json()["data"]["meta"]["rev"]
    big = json.dumps(
        {"data": {"attributes": {"public_name": "x" * 2_000_000}, "meta": {"rev": rev}}}
    ).encode()
    assert put(big).status == 200
    assert put(big + b" " * 1_100_000).status == 413
