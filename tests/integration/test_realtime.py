"""``/realtime/`` of the real daemon, on both storage engines, with real
websocket clients: autobahn's (Python) and ``ws`` (Node), the way apps use
it. Writes are made through the HTTP API; what the clients receive, and
what they must not, is checked against the reference's messages.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.daemon import http
from tests.support.realtime_client import (
    NodeClient,
    RealtimeClients,
    node_ws_modules,
)

pytestmark = pytest.mark.integration

ALICE = "alice.cozy.localhost"
BOB = "bob.cozy.localhost"
EVENTS = "io.cozy.events"


@pytest.fixture(params=["embedded", "couchdb"])
def daemon(request, make_daemon):
    """The daemon on each engine, with a small subscription limit to test."""
    return make_daemon(
        couchdb=request.param == "couchdb", realtime={"max_subscriptions": "30"}
    )


@pytest.fixture
def clients():
    with RealtimeClients() as clients:
        yield clients


@pytest.fixture(scope="module")
def ws_modules():
    return node_ws_modules()


class Instance:
    def __init__(self, daemon, domain: str, scope: str = f"{EVENTS} io.cozy.permissions"):
        self.daemon = daemon
        self.domain = domain
        added = daemon.cozyctl("instances", "add", domain)
        assert added.returncode == 0, added.stderr
        self.token = self.cli_token(scope)

    def cli_token(self, scope: str) -> str:
        made = self.daemon.cozyctl("instances", "token-cli", self.domain, *scope.split())
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def request(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ):
        headers = {
            "Authorization": f"Bearer {token or self.token}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.daemon.public(method, path, self.domain, headers=headers, data=data)

    def create(self, doctype: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.request("POST", f"/data/{doctype}/", body)
        assert reply.status == 201, reply.body
        return reply.json()


def events_of(client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    return [client.recv(timeout) for _ in range(count)]


def test_writes_reach_subscribers_as_the_reference_says(daemon, clients):
    alice = Instance(daemon, ALICE)
    ws = clients.connect(daemon.public_url, ALICE)
    assert ws.subprotocol == "io.cozy.websocket"
    ws.auth(alice.token)
    ws.subscribe(EVENTS)
    ws.subscribe("io.cozy.contacts")
    forbidden = ws.recv()
    assert forbidden == {
        "event": "error",
        "payload": {
            "status": "403 Forbidden",
            "code": "forbidden",
            "title": "The application can't subscribe to io.cozy.contacts",
            "source": {
                "method": "SUBSCRIBE",
                "payload": {"type": "io.cozy.contacts", "id": ""},
            },
        },
    }
    created = alice.create(EVENTS, {"summary": "party"})
    doc_id, rev = created["id"], created["rev"]
    updated = alice.request(
        "PUT", f"/data/{EVENTS}/{doc_id}", {"_id": doc_id, "_rev": rev, "summary": "later"}
    )
    assert updated.status == 200
    rev2 = updated.json()["rev"]
    deleted = alice.request("DELETE", f"/data/{EVENTS}/{doc_id}?rev={rev2}")
    assert deleted.status == 200
    got = events_of(ws, 3)
    assert got[0] == {
        "event": "CREATED",
        "payload": {
            "type": EVENTS,
            "id": doc_id,
            "doc": {"_id": doc_id, "_rev": rev, "summary": "party"},
        },
    }
    assert got[1]["event"] == "UPDATED"
    assert got[1]["payload"]["doc"] == {"_id": doc_id, "_rev": rev2, "summary": "later"}
    assert got[2]["event"] == "DELETED" and got[2]["payload"]["id"] == doc_id
    assert got[2]["payload"]["doc"]["_rev"] == deleted.json()["rev"]

    # NOTIFIED: a document that is not stored.
    notified = alice.request("POST", f"/realtime/{EVENTS}/progress", {"imported": 10})
    assert notified.status == 204 and notified.body == b""
    assert ws.recv() == {
        "event": "NOTIFIED",
        "payload": {
            "type": EVENTS,
            "id": "progress",
            "doc": {"imported": 10, "_id": "progress"},
        },
    }
    # Unsubscribed: no more.
    ws.unsubscribe(EVENTS)
    time.sleep(0.2)
    alice.create(EVENTS, {"summary": "unseen"})
    ws.no_message(0.5)
    assert ws.close() == (1000, None)


def test_id_subscriptions_with_a_selector_rule_checked_on_every_event(daemon, clients):
    alice = Instance(daemon, ALICE)
    # A token for the documents tagged "work" only (type:verbs:values:selector).
    selector_token = alice.cli_token(f"{EVENTS}:GET:work:tag")
    doc = alice.create(EVENTS, {"tag": "work", "n": 1})
    other = alice.create(EVENTS, {"tag": "work", "n": 1})

    ws = clients.connect(daemon.public_url, ALICE)
    ws.auth(selector_token)
    ws.subscribe(EVENTS)  # the whole doctype: no, the rule has values
    assert ws.recv()["payload"]["status"] == "403 Forbidden"
    ws.subscribe(EVENTS, doc["id"])
    time.sleep(0.2)

    def put(target, rev, **fields):
        reply = alice.request(
            "PUT", f"/data/{EVENTS}/{target}", {"_id": target, "_rev": rev, **fields}
        )
        assert reply.status == 200, reply.body
        return reply.json()["rev"]

    rev = put(other["id"], other["rev"], tag="work", n=2)  # not watched
    rev = put(doc["id"], doc["rev"], tag="home", n=2)  # not readable any more
    rev = put(doc["id"], rev, tag="work", n=3)
    got = ws.recv()
    assert got["event"] == "UPDATED" and got["payload"]["doc"]["n"] == 3
    ws.no_message(0.5)


def test_an_oauth_token_works_too(daemon, clients):
    alice = Instance(daemon, ALICE)
    client = daemon.cozyctl(
        "instances",
        "client-oauth",
        ALICE,
        "http://localhost/callback",
        "realtime-test",
        "github.com/cozy/realtime-test",
    )
    assert client.returncode == 0, client.stderr
    client_id = client.stdout.strip().splitlines()[-1]
    made = daemon.cozyctl("instances", "token-oauth", ALICE, client_id, EVENTS)
    assert made.returncode == 0, made.stderr
    ws = clients.connect(daemon.public_url, ALICE)
    ws.auth(made.stdout.strip())
    ws.subscribe(EVENTS)
    time.sleep(0.2)
    created = alice.create(EVENTS, {"via": "oauth"})
    assert ws.recv()["payload"]["id"] == created["id"]


def test_instances_never_see_each_other(daemon, clients):
    alice, bob = Instance(daemon, ALICE), Instance(daemon, BOB)
    on_bob = clients.connect(daemon.public_url, BOB)
    on_bob.auth(bob.token)
    on_bob.subscribe(EVENTS)
    stolen = clients.connect(daemon.public_url, BOB)
    stolen.auth(alice.token)  # alice's token on bob's host
    assert stolen.recv()["payload"]["status"] == "401 Unauthorized"
    assert stolen.closed()[0] == 4401
    time.sleep(0.2)
    alice.create(EVENTS, {"secret": "alice's"})
    alice.request("POST", f"/realtime/{EVENTS}/x", {"secret": "alice's"})
    bob.create(EVENTS, {"public": "bob's"})
    got = on_bob.recv()
    assert got["payload"]["doc"]["public"] == "bob's"
    on_bob.no_message(0.5)


def test_bad_input_gets_reference_errors_and_the_daemon_keeps_serving(daemon, clients):
    alice = Instance(daemon, ALICE)
    steady = clients.connect(daemon.public_url, ALICE)
    steady.auth(alice.token)
    steady.subscribe(EVENTS)

    first_not_auth = clients.connect(daemon.public_url, ALICE)
    first_not_auth.subscribe(EVENTS)
    assert (
        first_not_auth.recv()["payload"]["title"] == "The SUBSCRIBE method is not supported"
    )
    assert first_not_auth.closed()[0] == 4405

    garbage = clients.connect(daemon.public_url, ALICE)
    garbage.send(b"\x00\xffgarbage", binary=True)
    assert garbage.recv()["payload"]["status"] == "405 Method Not Allowed"
    assert garbage.closed()[0] == 4405

    bad_token = clients.connect(daemon.public_url, ALICE)
    bad_token.auth("eyJhbGciOiJIUzUxMiJ9.e30.bad")
    assert bad_token.recv()["payload"]["code"] == "unauthorized"
    assert bad_token.closed()[0] == 4401

    too_big = clients.connect(daemon.public_url, ALICE)
    too_big.auth(alice.token)
    too_big.send({"method": "SUBSCRIBE", "payload": {"type": "x" * 2000}})
    assert too_big.closed()[0] == 1009

    broken_after_auth = clients.connect(daemon.public_url, ALICE)
    broken_after_auth.auth(alice.token)
    broken_after_auth.send("{not json")
    assert broken_after_auth.closed()[0] == 4400

    twice = clients.connect(daemon.public_url, ALICE)
    twice.auth(alice.token)
    twice.auth(alice.token)
    twice.send({"method": "PING"})
    assert twice.recv()["payload"]["title"] == "The AUTH method is not supported"
    assert twice.recv()["payload"]["title"] == "The PING method is not supported"

    flood = clients.connect(daemon.public_url, ALICE)
    flood.auth(alice.token)
    for i in range(400):
        flood.send({"method": "UNSUBSCRIBE", "payload": {"type": f"io.cozy.x{i}"}})
    assert flood.closed()[0] == 4429

    many = clients.connect(daemon.public_url, ALICE)
    many.auth(alice.token)
    for i in range(40):
        many.subscribe(EVENTS, f"id-{i}")
    assert many.recv()["payload"]["status"] == "429 Too Many Requests"

    # Not a websocket at all, or on another method.
    plain = http("GET", daemon.public_url + "/realtime/", host=ALICE)
    assert plain.status == 400 and plain.json()["errors"][0]["status"] == "400"
    assert http("PUT", daemon.public_url + "/realtime/", host=ALICE).status in (404, 405)
    unknown_host = http(
        "GET",
        daemon.public_url + "/realtime/",
        host="nobody.cozy.localhost",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )
    assert unknown_host.status == 404

    # Everyone else is still served.
    alice.create(EVENTS, {"still": "here"})
    assert steady.recv()["payload"]["doc"]["still"] == "here"
    assert http("GET", daemon.public_url + "/status").status == 200
    assert "Traceback" not in daemon.output


def test_notify_needs_post_on_the_document_and_a_readable_doctype(daemon):
    alice = Instance(daemon, ALICE, scope=f"{EVENTS}:GET io.cozy.notes:POST:n1")
    body = {"x": 1}
    assert alice.request("POST", f"/realtime/{EVENTS}/e1", body).status == 403
    assert alice.request("POST", "/realtime/io.cozy.notes/n1", body).status == 204
    assert alice.request("POST", "/realtime/io.cozy.notes/n2", body).status == 403
    reply = alice.request("POST", "/realtime/io.cozy.sessions/n1", body)
    assert reply.status == 400, reply.body
    not_object = alice.daemon.public(
        "POST",
        "/realtime/io.cozy.notes/n1",
        ALICE,
        headers={
            "Authorization": f"Bearer {alice.token}",
            "Content-Type": "application/json",
        },
        data=b"[1, 2]",
    )
    assert not_object.status == 400
    huge = alice.request("POST", "/realtime/io.cozy.notes/n1", {"x": "y" * 100_000})
    assert huge.status == 413
    assert (
        http(
            "POST", alice.daemon.public_url + "/realtime/io.cozy.notes/n1", host=ALICE
        ).status
        == 401
    )


def test_a_reader_that_does_not_read_is_closed_and_others_are_not_slowed(
    make_daemon, clients
):
    daemon = make_daemon(realtime={"write_timeout": "1", "max_queue": "50"})
    alice = Instance(daemon, ALICE)
    slow = clients.connect(daemon.public_url, ALICE)
    fast = clients.connect(daemon.public_url, ALICE)
    for ws in (slow, fast):
        ws.auth(alice.token)
        ws.subscribe(EVENTS, "big")
    time.sleep(0.2)
    slow.pause()  # reads nothing from now on
    time.sleep(0.2)
    blob = "z" * 60_000
    sent = 0
    deadline = time.monotonic() + 60
    while "too slow" not in daemon.output and time.monotonic() < deadline:
        reply = alice.request("POST", f"/realtime/{EVENTS}/big", {"blob": blob, "n": sent})
        assert reply.status == 204
        sent += 1
        assert fast.recv()["payload"]["doc"]["n"] == sent - 1
    assert "too slow" in daemon.output, "the slow reader was never closed"
    slow.resume()
    code, _reason = slow.closed(20)
    assert code in (1013, 1006)  # 1006: the close frame sat behind unread data
    # The fast one goes on.
    alice.request("POST", f"/realtime/{EVENTS}/big", {"after": True})
    assert fast.recv()["payload"]["doc"] == {"after": True, "_id": "big"}


def test_a_node_client_like_a_browser_app(daemon, ws_modules, tmp_path):
    alice = Instance(daemon, ALICE)
    url = f"ws://127.0.0.1:{daemon.ports['public']}/realtime/"
    node = NodeClient(
        ws_modules,
        str(tmp_path),
        url=url,
        host=ALICE,
        token=alice.token,
        commands=[
            {"method": "SUBSCRIBE", "payload": {"type": EVENTS}},
            {"method": "SUBSCRIBE", "payload": {"type": "io.cozy.files"}},
        ],
    )
    try:
        assert node.until("open") == {"open": "io.cozy.websocket"}
        error = node.until("message")["message"]
        assert (
            error["payload"]["title"] == "The application can't subscribe to io.cozy.files"
        )
        created = alice.create(EVENTS, {"from": "python"})
        got = node.until("message")["message"]
        assert got["event"] == "CREATED" and got["payload"]["id"] == created["id"]
        node.send({"method": "UNSUBSCRIBE", "payload": {"type": EVENTS}})
        node.send({"method": "SUBSCRIBE", "payload": {"type": EVENTS, "id": "watched"}})
        time.sleep(0.3)
        alice.create(EVENTS, {"not": "watched"})
        alice.request("PUT", f"/data/{EVENTS}/watched", {"yes": 1})
        got = node.until("message")["message"]
        assert got["event"] == "CREATED" and got["payload"]["id"] == "watched"
        node.send({"method": "NOPE"})
        got = node.until("message")["message"]
        assert got["payload"]["status"] == "405 Method Not Allowed"
    finally:
        node.stop()
    assert node.until("close")["close"] == 1000


def test_a_node_client_with_a_bad_token_is_closed(daemon, ws_modules, tmp_path):
    Instance(daemon, ALICE)
    node = NodeClient(
        ws_modules,
        str(tmp_path),
        url=f"ws://127.0.0.1:{daemon.ports['public']}/realtime/",
        host=ALICE,
        token="not-a-token",
        commands=[],
    )
    try:
        assert node.until("message")["message"]["payload"]["status"] == "401 Unauthorized"
        closed = node.until("close")
        assert closed == {"close": 4401, "reason": "authentication failed"}
    finally:
        node.stop()


def test_stopping_the_daemon_closes_websockets_with_1001(make_daemon, clients):
    daemon = make_daemon()
    alice = Instance(daemon, ALICE)
    ws = clients.connect(daemon.public_url, ALICE)
    ws.auth(alice.token)
    ws.subscribe(EVENTS)
    time.sleep(0.2)
    started = time.monotonic()
    daemon.stop()
    assert ws.closed()[0] == 1001
    assert time.monotonic() - started < 8


def test_a_crowd_gets_every_event_once_and_in_order_a_stalled_reader_too(daemon):
    """300 bare subscribers on plain sockets (the frames written straight
    to the sockets) each get every event of a burst of writes, once, whole,
    in order. One more stops
    reading; once the others
    are gone, documents large enough to fill its socket follow (what the
    kernel does not take is buffered by its transport): it gets them all,
    in order, when it reads again. Another instance's subscriber gets
    none."""
    from tests.support.ws_crowd import Crowd

    alice, bob = Instance(daemon, ALICE), Instance(daemon, BOB)
    got: dict[int, list[dict[str, Any]]] = {}
    stalled: list[dict[str, Any]] = []
    bobs: list[dict[str, Any]] = []

    def on_text(index: int, _now: float, payload: bytes) -> None:
        got.setdefault(index, []).append(json.loads(payload))

    port = daemon.ports["public"]
    with (
        Crowd(port, ALICE, alice.token, EVENTS, on_text=on_text) as crowd,
        Crowd(
            port,
            ALICE,
            alice.token,
            EVENTS,
            on_text=lambda _i, _t, p: stalled.append(json.loads(p)),
            receive_buffer=4096,
        ) as slow,
        Crowd(
            port,
            BOB,
            bob.token,
            EVENTS,
            on_text=lambda _i, _t, p: bobs.append(json.loads(p)),
        ) as other,
    ):
        crowd.connect(300)
        slow.connect(1)
        other.connect(1)
        # The SUBSCRIBEs are in once a first event reaches everybody.
        alice.create(EVENTS, {"warm": True})
        assert crowd.pump(lambda: len(got) == 300, 30), f"{len(got)}/300 subscribed"
        assert slow.pump(lambda: len(stalled) == 1, 30)
        got.clear()
        stalled.clear()
        padding = "x" * 32_000
        # The stalled one is not read while these go out.
        ids = [alice.create(EVENTS, {"n": n, "padding": padding})["id"] for n in range(20)]
        assert crowd.pump(lambda: all(len(got.get(i, [])) >= 20 for i in range(300)), 60)
        crowd.pump(lambda: False, 0.3)  # nothing more comes
        for index in range(300):
            events = got[index]
            assert [e["event"] for e in events] == ["CREATED"] * 20, index
            assert [e["payload"]["id"] for e in events] == ids, index
            assert all(e["payload"]["doc"]["padding"] == padding for e in events)
        crowd.close()
        time.sleep(0.5)  # the daemon sees them go
        big = "y" * 600_000  # 8 of them: more than a socket's buffers take
        ids += [alice.create(EVENTS, {"n": n, "padding": big})["id"] for n in range(8)]
        assert slow.pump(lambda: len(stalled) >= 28, 60), f"{len(stalled)}/28"
        slow.pump(lambda: False, 0.3)
        assert [e["payload"]["id"] for e in stalled] == ids
        paddings = [e["payload"]["doc"]["padding"] for e in stalled]
        assert paddings == [padding] * 20 + [big] * 8
        assert not slow.closed
        other.pump(lambda: False, 0.3)
        assert bobs == []
