"""Instance creation rate on both engines, and the cost of idle instances.

Run from the repository root (after ``scripts/venv``)::

    .venv/bin/python bench/instances.py [--count 30] [--idle 10000]
        [--couchdb-url http://admin:pw@127.0.0.1:5984]

1. Creation: the real daemon is started twice in this process tree, once on
   the embedded engine and once on the CouchDB engine (against the CouchDB
   of ``--couchdb-url``, else a pouchdb-server started here as the tests
   do; the report says which); ``--count`` instances are
   created one after the other through the admin API; instances/s and the
   ratio embedded / CouchDB are printed.
2. Idle instances: an embedded daemon creates ``--idle`` instances, waits
   past the idle timeout, and reports its RSS before and after, its open
   file descriptors, and how many of them point into the database
   directory (the goal is none per idle instance).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.data import couch_server_name
from cozyd.testing import TEST_ADMIN_PASSPHRASE
from tests.support.couchdb_server import start_pouchdb_server
from tests.support.daemon import Daemon, http

AUTH = {
    "Authorization": "Basic "
    + base64.b64encode(f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()
}


def create(daemon: Daemon, domain: str) -> None:
    response = http(
        "POST",
        f"{daemon.admin_url}/instances?Domain={quote(domain)}",
        headers=AUTH,
        timeout=300,
    )
    if response.status != 201:
        raise RuntimeError(f"creating {domain}: {response.status} {response.body!r}")


RUN = os.getpid()  # fresh domains on a reused CouchDB


def creation_rate(daemon: Daemon, count: int, label: str) -> float:
    create(daemon, f"warmup{RUN}.{label}.bench")
    start = time.perf_counter()
    for i in range(count):
        create(daemon, f"i{i}-{RUN}.{label}.bench")
    elapsed = time.perf_counter() - start
    return count / elapsed


def process_figures(pid: int, db_dir: str) -> tuple[int, int, int]:
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = os.listdir(f"/proc/{pid}/fd")
    in_db = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(db_dir):
                in_db += 1
        except OSError:
            pass
    return rss_kb, len(fds), in_db


def bench_creation(workdir: str, count: int, couchdb_url: str | None) -> None:
    if couchdb_url:
        url, stop_couch, server = (
            couchdb_url,
            (lambda: None),
            couch_server_name(couchdb_url),
        )
    else:
        url, stop_couch = start_pouchdb_server(os.path.join(workdir, "pouchdb"))
        server = "pouchdb-server"
    embedded = Daemon(os.path.join(workdir, "embedded"))
    couch = Daemon(os.path.join(workdir, "couch"), couchdb_url=url)
    try:
        embedded.start()
        couch.start()
        rate_embedded = creation_rate(embedded, count, "embedded")
        rate_couch = creation_rate(couch, count, "couchdb")
    finally:
        embedded.stop()
        couch.stop()
        stop_couch()
    print(f"instance creation, {count} instances one after the other:")
    print(f"  embedded engine : {rate_embedded:8.2f} instances/s")
    print(f"  couchdb engine  : {rate_couch:8.2f} instances/s ({server})")
    print(f"  ratio embedded/couchdb: {rate_embedded / rate_couch:.2f}")


def bench_idle(workdir: str, idle: int, idle_timeout: float) -> None:
    daemon = Daemon(os.path.join(workdir, "idle"), storage={"idle_timeout": idle_timeout})
    daemon.start()
    try:
        pid = daemon.process.pid
        db_dir = os.path.join(daemon.data_dir, "db")
        before = process_figures(pid, db_dir)
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: create(daemon, f"idle{i}.bench"), range(idle)))
        elapsed = time.perf_counter() - start
        busy = process_figures(pid, db_dir)
        time.sleep(idle_timeout * 2 + 1)
        after = process_figures(pid, db_dir)
    finally:
        daemon.stop()
    print(f"{idle} instances created in {elapsed:.1f}s ({idle / elapsed:.1f}/s, 4 clients)")
    print(
        f"  RSS: {before[0] / 1024:.1f} MiB with no instance, "
        f"{after[0] / 1024:.1f} MiB with {idle} idle instances "
        f"(+{(after[0] - before[0]) / idle:.1f} KiB per instance)"
    )
    print(
        f"  open fds: {before[1]} at start, {busy[1]} right after creating "
        f"({busy[2]} in the db dir), {after[1]} once idle ({after[2]} in the db dir)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--idle-timeout", type=float, default=2.0)
    parser.add_argument("--couchdb-url", help="a real CouchDB for the CouchDB engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        bench_creation(workdir, args.count, args.couchdb_url)
        bench_idle(workdir, args.idle, args.idle_timeout)


if __name__ == "__main__":
    main()
