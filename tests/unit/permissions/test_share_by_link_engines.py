"""Share by link on both storage engines (the CouchDB one against the test
server): the same HTTP requests on a stack built over each engine."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest_twisted
import treq
from twisted.internet import reactor

from cozyd.config import load_config
from cozyd.instance.model import Instance
from cozyd.service import build_stack
from cozyd.storage.names import db_name
from cozyd.testing import TEST_ADMIN_PASSPHRASE, Response, run_now, write_config
from cozyd.web.site import CozySite
from tests.support.shares import rule, share_body

EVENTS = "io.cozy.events"
ADMIN = "http://127.0.0.1:6060"
CLIENTS: list[Any] = []


@pytest_twisted.async_yield_fixture(autouse=True)
async def stop_clients():
    yield
    while CLIENTS:
        await CLIENTS.pop().stop()


class AsyncClient:
    """HTTP over a loopback socket to a site of the stack, while the storage
    engine answers through the real reactor."""

    def __init__(self, resource, max_body_size: int = 1 << 20):
        self._site = CozySite(resource, max_body_size=max_body_size)
        self._port = None

    async def start(self) -> AsyncClient:
        self._port = reactor.listenTCP(0, self._site, interface="127.0.0.1")
        return self

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.stopListening()

    async def request(
        self,
        method: str,
        url: str,
        *,
        bearer: str | None = None,
        body: Any = None,
        auth: bool = False,
        accept: str = "application/json",
    ) -> Response:
        parts = urlsplit(url)
        headers = {"Accept": [accept], "Host": [parts.netloc]}
        if bearer:
            headers["Authorization"] = [f"Bearer {bearer}"]
        if auth:
            secret = base64.b64encode(f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()
            headers["Authorization"] = [f"Basic {secret}"]
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ["application/json"]
        port = self._port.getHost().port
        target = f"http://127.0.0.1:{port}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        response = await treq.request(
            method, target, headers=headers, data=data, timeout=30, persistent=False
        )
        content = await treq.content(response)
        flat = {
            k.decode().lower(): v[-1].decode()
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, flat, content)


async def world(store, tmp_path):
    config = load_config(write_config(str(tmp_path / "conf")), env={})
    stack = build_stack(config, store=store, run_blocking=run_now)
    await stack.instances.setup()
    admin = await AsyncClient(stack.admin).start()
    public = await AsyncClient(stack.public).start()
    CLIENTS.extend([admin, public])
    domain = f"s{uuid.uuid4().hex[:12]}.cozy.test"
    created = await admin.request(
        "POST", f"{ADMIN}/instances?" + urlencode({"Domain": domain}), auth=True
    )
    assert created.status == 201, created.body
    prefix = Instance.new(domain).prefix
    await store.put_doc(
        db_name(prefix, "io.cozy.permissions"),
        {
            "_id": "perm-drive",
            "type": "app",
            "source_id": "io.cozy.apps/drive",
            "permissions": {"events": {"type": EVENTS}},
        },
    )

    async def admin_token(**params):
        reply = await admin.request(
            "POST",
            f"{ADMIN}/instances/token?" + urlencode({"Domain": domain, **params}),
            auth=True,
        )
        assert reply.status == 200, reply.body
        return reply.body.decode()

    app = await admin_token(Audience="app", Subject="drive")
    cli = await admin_token(Audience="cli", Scope=EVENTS)
    base = f"http://{domain}"
    ids = []
    for calendar in ("c1", "c2"):
        reply = await public.request(
            "POST", f"{base}/data/{EVENTS}/", bearer=cli, body={"calendar-id": calendar}
        )
        assert reply.status == 201, reply.body
        ids.append(reply.json()["id"])
    return public, base, app, ids


async def create(public, base, app, permissions, query="codes=bob", **attributes):
    reply = await public.request(
        "POST",
        f"{base}/permissions?{query}",
        bearer=app,
        body=share_body(permissions, **attributes),
    )
    assert reply.status == 200, reply.body
    data = reply.json()["data"]
    return data["id"], data["attributes"]


@pytest_twisted.ensureDeferred
async def test_a_share_reads_exactly_its_documents(store, tmp_path):
    public, base, app, ids = await world(store, tmp_path)
    perm_id, attributes = await create(
        public, base, app, {"one": rule(EVENTS, values=[ids[0]])}, "codes=bob,jane"
    )
    for bearer in (attributes["codes"]["bob"], attributes["shortcodes"]["jane"]):
        read = await public.request("GET", f"{base}/data/{EVENTS}/{ids[0]}", bearer=bearer)
        assert read.status == 200, read.body
        other = await public.request("GET", f"{base}/data/{EVENTS}/{ids[1]}", bearer=bearer)
        assert other.status == 403
        doc = read.json()
        put = await public.request(
            "PUT", f"{base}/data/{EVENTS}/{ids[0]}", bearer=bearer, body={**doc, "x": 1}
        )
        assert put.status == 403
        listing = await public.request(
            "GET", f"{base}/data/{EVENTS}/_all_docs", bearer=bearer
        )
        assert listing.status == 403
    # a selector share
    _, by_calendar = await create(
        public, base, app, {"cal": rule(EVENTS, values=["c2"], selector="calendar-id")}
    )
    code = by_calendar["codes"]["bob"]
    first = await public.request("GET", f"{base}/data/{EVENTS}/{ids[0]}", bearer=code)
    second = await public.request("GET", f"{base}/data/{EVENTS}/{ids[1]}", bearer=code)
    assert (first.status, second.status) == (403, 200)
    # the listing shows both shares, with their codes
    listed = await public.request(
        "GET", f"{base}/permissions/doctype/{EVENTS}/shared-by-link", bearer=app
    )
    assert listed.status == 200, listed.body
    items = {item["id"]: item for item in listed.json()["data"]}
    assert perm_id in items and len(items) == 2
    assert items[perm_id]["attributes"]["codes"] == attributes["codes"]


@pytest_twisted.ensureDeferred
async def test_revoked_and_expired_shares_are_refused(store, tmp_path):
    public, base, app, ids = await world(store, tmp_path)
    perm_id, attributes = await create(
        public, base, app, {"one": rule(EVENTS, values=[ids[0]])}
    )
    code, short = attributes["codes"]["bob"], attributes["shortcodes"]["bob"]
    url = f"{base}/data/{EVENTS}/{ids[0]}"
    assert (await public.request("GET", url, bearer=code)).status == 200
    revoked = await public.request("DELETE", f"{base}/permissions/{perm_id}", bearer=app)
    assert revoked.status == 204, revoked.body
    assert (await public.request("GET", url, bearer=code)).status == 403
    assert (await public.request("GET", url, bearer=short)).status == 403

    _, old = await create(
        public,
        base,
        app,
        {"one": rule(EVENTS, values=[ids[0]])},
        expires_at="2001-01-01T00:00:00Z",
    )
    expired = await public.request("GET", url, bearer=old["codes"]["bob"])
    assert (expired.status, expired.json()) == (400, {"error": "Expired token"})


@pytest_twisted.ensureDeferred
async def test_patching_codes_and_rules(store, tmp_path):
    public, base, app, ids = await world(store, tmp_path)
    perm_id, attributes = await create(
        public, base, app, {"one": rule(EVENTS, values=[ids[0]])}, "codes=bob,jane"
    )
    codes = attributes["codes"]
    patched = await public.request(
        "PATCH",
        f"{base}/permissions/{perm_id}",
        bearer=app,
        body={
            "data": {
                "attributes": {
                    "permissions": {"two": rule(EVENTS, values=[ids[1]])},
                }
            }
        },
    )
    assert patched.status == 200, patched.body
    url = f"{base}/data/{EVENTS}/{ids[1]}"
    assert (await public.request("GET", url, bearer=codes["bob"])).status == 200
    dropped = await public.request(
        "PATCH",
        f"{base}/permissions/{perm_id}",
        bearer=app,
        body={"data": {"attributes": {"codes": {"jane": codes["jane"]}}}},
    )
    assert dropped.status == 200, dropped.body
    assert (await public.request("GET", url, bearer=codes["bob"])).status == 403
    assert (await public.request("GET", url, bearer=codes["jane"])).status == 200
