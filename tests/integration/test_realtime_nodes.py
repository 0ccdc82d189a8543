"""Realtime on many nodes: two real daemons on one real CouchDB and one real
Redis deliver each other's writes to their websockets; without Redis, a
node goes on serving its own subscribers and comes back when Redis does.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.daemon import Daemon
from tests.support.realtime_client import RealtimeClients, RedisListener
from tests.support.redis_server import start_redis

pytestmark = pytest.mark.integration

ALICE = "alice.cozy.localhost"
EVENTS = "io.cozy.events"


def wait_for(predicate, timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def post(daemon, path: str, token: str, body) -> dict:
    reply = daemon.public(
        "POST",
        path,
        ALICE,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        data=json.dumps(body).encode(),
    )
    assert reply.status in (201, 204), reply.body
    return reply.json() if reply.body else {}


@pytest.fixture
def clients():
    with RealtimeClients() as clients:
        yield clients


def test_two_nodes_deliver_each_others_writes(make_daemon, redis_url, tmp_path, clients):
    a = make_daemon("a", couchdb=True, realtime={"url": redis_url})
    b = Daemon(str(tmp_path / "b"), couchdb_url=a.couchdb_url, realtime={"url": redis_url})
    try:
        b.start()
        for node in (a, b):
            wait_for(lambda n=node: "events go through Redis" in n.output, what="Redis")
        added = a.cozyctl("instances", "add", ALICE)
        assert added.returncode == 0, added.stderr
        made = a.cozyctl("instances", "token-cli", ALICE, EVENTS)
        token = made.stdout.strip()

        on_a = clients.connect(a.public_url, ALICE)
        on_b = clients.connect(b.public_url, ALICE)
        for ws in (on_a, on_b):
            ws.auth(token)
            ws.subscribe(EVENTS)
        time.sleep(0.3)

        written_on_a = post(a, f"/data/{EVENTS}/", token, {"from": "a"})
        written_on_b = post(b, f"/data/{EVENTS}/", token, {"from": "b"})
        post(b, f"/realtime/{EVENTS}/progress", token, {"done": 1})
        for ws in (on_a, on_b):
            got = [ws.recv() for _ in range(3)]
            by_verb = {(m["event"], m["payload"]["id"]) for m in got}
            assert by_verb == {
                ("CREATED", written_on_a["id"]),
                ("CREATED", written_on_b["id"]),
                ("NOTIFIED", "progress"),
            }
            ws.no_message(0.5)  # once each: a node's own events are not doubled
        created = next(m for m in got if m["payload"]["id"] == written_on_a["id"])
        assert created["payload"]["doc"] == {
            "_id": written_on_a["id"],
            "_rev": written_on_a["rev"],
            "from": "a",
        }
    finally:
        b.stop()


def test_without_redis_a_node_serves_its_own_and_reconnects(make_daemon, tmp_path, clients):
    workdir = tmp_path / "redis"
    url, stop_redis = start_redis(workdir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        daemon = make_daemon(realtime={"url": url})
        wait_for(lambda: "events go through Redis" in daemon.output, what="Redis")
        assert daemon.cozyctl("instances", "add", ALICE).returncode == 0
        token = daemon.cozyctl("instances", "token-cli", ALICE, EVENTS).stdout.strip()
        ws = clients.connect(daemon.public_url, ALICE)
        ws.auth(token)
        ws.subscribe(EVENTS)
        time.sleep(0.2)

        stop_redis()
        wait_for(lambda: "unreachable" in daemon.output, what="the outage log")
        for i in range(3):
            created = post(daemon, f"/data/{EVENTS}/", token, {"n": i})
            assert ws.recv()["payload"]["id"] == created["id"]
        time.sleep(3)  # several attempts to reconnect meanwhile
        assert daemon.output.count("unreachable") == 1  # logged once

        url, stop_redis = start_redis(workdir, port=port)
        wait_for(lambda: "is back" in daemon.output, timeout=40, what="the reconnection")
        listener = RedisListener(url)
        time.sleep(0.2)
        created = post(daemon, f"/data/{EVENTS}/", token, {"after": True})
        assert ws.recv()["payload"]["id"] == created["id"]
        published = listener.messages(1.5)
        listener.close()
        assert any(created["id"] in m for m in published), published
        assert "Traceback" not in daemon.output
    finally:
        stop_redis()
