"""Acknowledged writes survive a kill -9 of the daemon.

Writers PUT documents through HTTP as fast as they can; at a random moment
the daemon is killed with SIGKILL. After a restart on the same data, every
write that was answered 2xx must be there (a write cut off before its
answer may or may not be), and the database opens and takes writes again.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from tests.support.daemon import http

pytestmark = pytest.mark.integration

DOMAIN = "alice.cozy.localhost"
DOCTYPE = "io.cozy.notes"


def writer(daemon, token, name, acknowledged, stop):
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    n = 0
    while not stop.is_set():
        n += 1
        doc_id = f"{name}-{n:06d}"
        try:
            if n % 10 == 0:  # a bulk write now and then
                ids = [f"{doc_id}-{i}" for i in range(5)]
                body = (
                    '{"docs": ['
                    + ",".join(f'{{"_id": "{i}", "n": {n}}}' for i in ids)
                    + "]}"
                ).encode()
                response = http(
                    "POST",
                    f"{daemon.public_url}/data/{DOCTYPE}/_bulk_docs",
                    host=DOMAIN,
                    headers=headers,
                    data=body,
                    timeout=10,
                )
                if response.status == 201:
                    for result in response.json():
                        if result.get("ok"):
                            acknowledged[result["id"]] = (n, result["rev"])
                continue
            response = http(
                "PUT",
                f"{daemon.public_url}/data/{DOCTYPE}/{doc_id}",
                host=DOMAIN,
                headers=headers,
                data=f'{{"n": {n}}}'.encode(),
                timeout=10,
            )
        except OSError:
            return  # the daemon is gone
        if 200 <= response.status < 300:
            acknowledged[doc_id] = (n, response.json()["rev"])


def test_acknowledged_writes_survive_kill_9(daemon):
    seed = random.randrange(1 << 30)
    print(f"kill moment seed: {seed}")  # shown when the test fails
    assert daemon.cozyctl("instances", "add", DOMAIN).returncode == 0
    token = daemon.cozyctl("instances", "token-cli", DOMAIN, DOCTYPE).stdout.strip()
    acknowledged: dict[str, tuple[int, str]] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=writer, args=(daemon, token, f"w{i}", acknowledged, stop), daemon=True
        )
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    time.sleep(random.Random(seed).uniform(1.0, 2.5))
    daemon.process.send_signal(signal.SIGKILL)
    assert daemon.wait_exit(30) == -signal.SIGKILL
    stop.set()
    for thread in threads:
        thread.join(15)
    assert len(acknowledged) > 20, "the writers hardly wrote anything before the kill"
    print(f"{len(acknowledged)} writes acknowledged before the kill")

    daemon.start()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    info = http("GET", f"{daemon.public_url}/data/{DOCTYPE}/", host=DOMAIN, headers=headers)
    assert info.status == 200, info.body
    assert info.json()["doc_count"] >= len(acknowledged)
    ids = sorted(acknowledged)
    found = http(
        "POST",
        f"{daemon.public_url}/data/{DOCTYPE}/_all_docs?include_docs=true",
        host=DOMAIN,
        headers=headers,
        data=('{"keys": [' + ",".join(f'"{i}"' for i in ids) + "]}").encode(),
    )
    assert found.status == 200
    rows = {row["key"]: row for row in found.json()["rows"]}
    lost = [doc_id for doc_id in ids if "doc" not in rows[doc_id]]
    assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    for doc_id in ids:
        n, rev = acknowledged[doc_id]
        assert rows[doc_id]["doc"]["n"] == n and rows[doc_id]["value"]["rev"] == rev
    after = http(
        "PUT",
        f"{daemon.public_url}/data/{DOCTYPE}/after-restart",
        host=DOMAIN,
        headers=headers,
        data=b'{"ok": 1}',
    )
    assert after.status == 200
