"""Two real daemons, one Redis (``[jobs] url``), one CouchDB: a job pushed
on either node runs once, on one node; a time trigger's slots fire once in
all; an ``@event`` trigger created on one node fires for a write made on
the other."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

DOMAIN = "alice.cozy.localhost"
SCOPE = "io.cozy.jobs io.cozy.triggers io.cozy.events"
LOG_LINE = re.compile(r"log job ([0-9a-f]+) of ")


@pytest.fixture
def two_nodes(tmp_path, make_daemon, redis_url):
    first = make_daemon("node1", couchdb=True, jobs={"url": redis_url})
    second = Daemon(
        str(tmp_path / "node2"), couchdb_url=first.couchdb_url, jobs={"url": redis_url}
    )
    second.start()
    try:
        added = first.cozyctl("instances", "add", DOMAIN)
        assert added.returncode == 0, added.stderr
        made = first.cozyctl("instances", "token-cli", DOMAIN, *SCOPE.split())
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        yield first, second, token
    finally:
        second.stop()


def call(daemon, token, method, path, body=None):
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    response = daemon.public(method, path, DOMAIN, headers=headers, data=data)
    assert response.status < 300, (method, path, response.status, response.body)
    return response.json() if response.body else None


def runs(*daemons) -> Counter:
    """How many times each job id was run, over the nodes' logs."""
    return Counter(m.group(1) for d in daemons for m in LOG_LINE.finditer(d.output))


def wait_for(predicate, timeout=30.0, what="it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_nodes_share_the_queue_and_the_scheduler(two_nodes):
    first, second, token = two_nodes
    pushed = []
    for n in range(40):
        node = (first, second)[n % 2]
        job = call(
            node,
            token,
            "POST",
            "/jobs/queue/log",
            {"data": {"attributes": {"arguments": {"n": n}}}},
        )
        pushed.append(job["data"]["id"])

    def all_done():
        return all(
            call(first, token, "GET", f"/jobs/{i}")["data"]["attributes"]["state"] == "done"
            for i in pushed
        )

    wait_for(all_done, what="the 40 jobs")
    counted = runs(first, second)
    assert all(counted[i] == 1 for i in pushed), counted  # each job once, in all
    on_first = sum(1 for i in pushed if runs(first)[i])
    assert 0 < on_first < 40  # both nodes took jobs

    # A time trigger: every slot makes one job, whichever node fires it.
    trigger = call(
        first,
        token,
        "POST",
        "/jobs/triggers",
        {"data": {"attributes": {"type": "@every", "arguments": "1s", "worker": "log"}}},
    )["data"]["id"]
    time.sleep(4.5)
    call(second, token, "DELETE", f"/jobs/triggers/{trigger}")
    time.sleep(0.5)
    jobs = call(first, token, "GET", "/data/io.cozy.jobs/_all_docs?include_docs=true")
    fired = [
        r["doc"] for r in jobs["rows"] if r.get("doc", {}).get("trigger_id") == trigger
    ]
    assert 3 <= len(fired) <= 5, len(fired)
    slots = Counter(doc["queued_at"][:19] for doc in fired)
    assert max(slots.values()) == 1, slots  # no second as two slots
    counted = runs(first, second)
    assert all(counted[doc["_id"]] <= 1 for doc in fired)

    # @event: created on the second node, the write made on the first.
    call(
        second,
        token,
        "POST",
        "/jobs/triggers",
        {
            "data": {
                "attributes": {
                    "type": "@event",
                    "arguments": "io.cozy.events:CREATED",
                    "worker": "log",
                    "message": {"from": "event"},
                }
            }
        },
    )
    time.sleep(0.5)  # the broadcast reaches the first node
    call(first, token, "POST", "/data/io.cozy.events/", {"summary": "party"})

    def event_job():
        rows = call(first, token, "GET", "/data/io.cozy.jobs/_all_docs?include_docs=true")
        return [
            r for r in rows["rows"] if r.get("doc", {}).get("message") == {"from": "event"}
        ]

    wait_for(event_job, what="the @event job")
    time.sleep(0.5)
    assert len(event_job()) == 1
