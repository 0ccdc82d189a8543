"""In-process cost of the HTTP edge: one /data GET and one /permissions/self
through ``CozySite`` on a fake transport (the in-memory stack, storage run
inline), so that what is measured is the edge (parsing, Host dispatch,
Klein, the token check) and not the network or the thread pool.

    .venv/bin/python bench/edge.py [--requests 3000]

Prints µs per request, the best of 5 rounds of each. Compare two trees by
running it alternately in each (its figures move with the machine's load).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from cozyd.testing import TEST_ADMIN_PASSPHRASE, MemoryClient, memory_stack
from cozyd.web.site import CozySite

ADMIN = "http://127.0.0.1:6060"
AUTH = ("admin", TEST_ADMIN_PASSPHRASE)
DOMAIN = "alice.cozy.test"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    stack = memory_stack(tempfile.mkdtemp())
    admin = MemoryClient(stack.admin)
    assert (
        admin.request(
            "POST", ADMIN + "/instances", auth=AUTH, params={"Domain": DOMAIN}
        ).status
        == 201
    )
    token = admin.request(
        "POST",
        ADMIN + "/instances/token",
        auth=AUTH,
        params={"Domain": DOMAIN, "Audience": "cli", "Scope": "io.cozy.notes"},
    ).body.decode()
    public = MemoryClient(stack.public)
    created = public.request(
        "POST",
        f"http://{DOMAIN}/data/io.cozy.notes/",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        data=b'{"a": 1}',
    ).json()
    site = CozySite(stack.public, max_body_size=1 << 20)
    site.logFile = io.StringIO()
    site.log = lambda request: None
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport()
    protocol.makeConnection(transport)
    heads = {
        "data_get": (
            f"GET /data/io.cozy.notes/{created['id']} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode(),
        "perm_self": (
            f"GET /permissions/self HTTP/1.1\r\nHost: {DOMAIN}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode(),
    }
    for _name, data in heads.items():
        transport.clear()
        protocol.dataReceived(data)
        assert b" 200 " in transport.value().split(b"\r\n")[0], transport.value()[:300]
    best = {name: float("inf") for name in heads}
    for _ in range(5):
        for name, data in heads.items():
            t0 = time.perf_counter()
            for _ in range(args.requests):
                protocol.dataReceived(data)
                transport.clear()
            best[name] = min(best[name], (time.perf_counter() - t0) / args.requests * 1e6)
    print(json.dumps({k: round(v, 1) for k, v in best.items()}))


if __name__ == "__main__":
    main()
