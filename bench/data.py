"""The /data API on both engines, against pouchdb-server queried directly
and a bare Klein handler (the framework's ceiling), all in one run.

    .venv/bin/python bench/data.py [--docs 100000] [--requests 2000]

For each target: GET of one document, create, update, ``_find`` on the
loaded documents with and without an index, ``_bulk_docs`` of 10,000
documents and ``_changes`` over all of them; throughput and p50/p99 at
concurrency 1 and 32. cozyd is measured through its whole stack (Host
routing, token check, permissions, storage). Figures of one run are
comparable with each other; the ratios printed at the end are the goals of
issue 4.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import quote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadgen import run_load  # noqa: E402
from cozyd.testing import TEST_ADMIN_PASSPHRASE  # noqa: E402
from tests.support.couchdb_server import start_pouchdb_server  # noqa: E402
from tests.support.daemon import Daemon, http  # noqa: E402

DOMAIN = "bench.cozy.localhost"
DOCTYPE = "io.cozy.bench"
ADMIN = {"Authorization": "Basic " + base64.b64encode(
    f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()}


def document(n: int) -> dict:
    return {"n": n, "title": f"document {n}", "group": n % 100, "tags": ["a", "b"]}


class Target:
    """Where requests go: a base URL, headers and the /data-like paths."""

    def __init__(self, label: str, base: str, headers: dict[str, str], db_path: str):
        self.label = label
        self.base = base
        self.headers = headers
        self.db_path = db_path  # e.g. /data/io.cozy.bench or /benchdb

    def url(self, suffix: str = "") -> str:
        return self.base + self.db_path + suffix

    def call(self, method: str, suffix: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": "application/json",
                   "Accept": "application/json"}
        response = http(method, self.url(suffix), headers=headers, data=data,
                        timeout=timeout)
        if response.status >= 300:
            raise RuntimeError(f"{self.label} {method} {suffix}: {response.status} "
                               f"{response.body[:300]!r}")
        return response.json()


def cozyd_target(daemon: Daemon, label: str) -> Target:
    create = http("POST", f"{daemon.admin_url}/instances?Domain={DOMAIN}", headers=ADMIN)
    assert create.status == 201, create.body
    token = http("POST", f"{daemon.admin_url}/instances/token?Domain={DOMAIN}"
                 f"&Audience=cli&Scope={quote(DOCTYPE)}", headers=ADMIN).body.decode()
    return Target(label, daemon.public_url,
                  {"Host": DOMAIN, "Authorization": f"Bearer {token}"}, f"/data/{DOCTYPE}")


def couch_target(url: str) -> Target:
    parts = urlsplit(url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    target = Target("pouchdb-server (direct)", f"http://{parts.hostname}:{parts.port}",
                    {"Authorization": f"Basic {token}"}, "/benchdb")
    http("PUT", target.url(), headers=target.headers)
    return target


def load(target: Target, count: int) -> list[str]:
    ids = []
    for start in range(0, count, 10_000):
        docs = [{"_id": f"doc-{n:06d}", **document(n)}
                for n in range(start, min(count, start + 10_000))]
        results = target.call("POST", "/_bulk_docs", {"docs": docs})
        ids.extend(r["id"] for r in results)
    return ids


def measure(target: Target, args, ids: list[str]) -> dict[str, dict[int, object]]:
    figures: dict[str, dict[int, object]] = {}
    headers = {**target.headers, "Content-Type": "application/json",
               "Accept": "application/json"}
    one = ids[len(ids) // 2]
    for concurrency in (1, 32):
        n = args.requests
        figures.setdefault("GET one document", {})[concurrency] = run_load(
            target.url(f"/{one}"), headers=headers, concurrency=concurrency, requests=n)
        body = json.dumps(document(1)).encode()
        if target.db_path.startswith("/data"):
            create = run_load(target.url("/"), method="POST", headers=headers, body=body,
                              concurrency=concurrency, requests=n)
        else:
            create = run_load(target.url(), method="POST", headers=headers, body=body,
                              concurrency=concurrency, requests=n)
        figures.setdefault("create", {})[concurrency] = create
        # update: each worker keeps its own document and rev chain
        figures.setdefault("update", {})[concurrency] = update_load(
            target, headers, concurrency, n)
        selector = {"selector": {"group": 42}, "limit": 100}
        figures.setdefault("_find with index", {})[concurrency] = run_load(
            target.url("/_find"), method="POST", headers=headers,
            body=json.dumps({**selector, "use_index": "by-group"}).encode(),
            concurrency=concurrency, requests=max(20, n // 20))
        figures.setdefault("_find without index", {})[concurrency] = run_load(
            target.url("/_find"), method="POST", headers=headers,
            body=json.dumps({"selector": {"title": "document 4242"}, "limit": 100}).encode(),
            concurrency=concurrency, requests=max(4, n // 500))
    start = time.perf_counter()
    docs = [{"_id": f"bulk-{n:06d}", **document(n)} for n in range(10_000)]
    target.call("POST", "/_bulk_docs", {"docs": docs})
    figures["_bulk_docs of 10,000 docs"] = {1: time.perf_counter() - start}
    start = time.perf_counter()
    result = target.call("GET", "/_changes")
    figures[f"_changes of {len(result['results'])} changes"] = {
        1: time.perf_counter() - start}
    return figures


def update_load(target: Target, headers, concurrency: int, requests: int):
    from concurrent.futures import ThreadPoolExecutor

    revs = {}
    for worker in range(concurrency):
        doc_id = f"upd-{worker}-{time.monotonic_ns()}"
        revs[worker] = (doc_id, target.call("PUT", f"/{doc_id}", document(worker))["rev"])
    per_worker = max(1, requests // concurrency)
    latencies: list[float] = []

    def work(worker: int) -> None:
        doc_id, rev = revs[worker]
        for _ in range(per_worker):
            start = time.perf_counter()
            result = target.call("PUT", f"/{doc_id}",
                                 {"_id": doc_id, "_rev": rev, **document(worker)})
            latencies.append(time.perf_counter() - start)
            rev = result["rev"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, range(concurrency)))
    from bench.loadgen import LoadResult

    return LoadResult(requests=per_worker * concurrency,
                      seconds=time.perf_counter() - start, statuses={200: len(latencies)},
                      latencies=latencies)


def bare_klein(requests: int) -> dict[int, object]:
    process = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                             "bare_klein.py")],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = next(int(line.split()[-1]) for line in process.stdout
                    if line.startswith("listening on"))
        # Drain its access log as the daemon harness drains the daemon's.
        threading.Thread(target=lambda: [None for _ in process.stdout],
                         daemon=True).start()
        url = f"http://127.0.0.1:{port}/data/{DOCTYPE}/doc-00000"
        return {c: run_load(url, concurrency=c, requests=requests) for c in (1, 32)}
    finally:
        process.kill()
        process.wait()


def engine_find(count: int, workdir: str, rounds: int = 20) -> dict[str, object]:
    """``find`` on the embedded engine itself, with and without its index.

    Through HTTP cozyd refuses a query no index can serve (cozy-stack's 400
    ``no_index``), so the full scan is measured on the engine, in process,
    on the same database before and after the index is removed.
    """
    from twisted.internet.task import Clock

    from cozyd.storage.sqlite import EmbeddedStore
    from cozyd.testing import sync

    store = EmbeddedStore(os.path.join(workdir, "engine"), reactor=Clock())
    db = "cozybench/io-cozy-bench"
    sync(store.create_db(db))
    for start in range(0, count, 10_000):
        sync(store.bulk_docs(db, [{"_id": f"doc-{n:06d}", **document(n)}
                                  for n in range(start, min(count, start + 10_000))]))
    sync(store.create_index(db, ["n"], ddoc="by-n", name="by-n"))
    # A selective query: one document matches, near the end of the id order.
    query = {"selector": {"n": count - 58}, "limit": 100, "execution_stats": True}
    figures: dict[str, object] = {}
    for label in ("with index", "without index"):
        if label == "without index":
            ddoc = sync(store.get_doc(db, "_design/by-n"))
            sync(store.delete_doc(db, ddoc["_id"], ddoc["_rev"]))
        result = sync(store.find(db, query))
        start = time.perf_counter()
        for _ in range(rounds):
            sync(store.find(db, query))
        elapsed = (time.perf_counter() - start) / rounds
        figures[label] = (elapsed, result["execution_stats"]["total_docs_examined"],
                          len(result["docs"]))
    sync(store.close())
    return figures


def report(all_figures: dict[str, dict], klein: dict[int, object],
           engine: dict[str, object]) -> None:
    print(f"load average at the end: {os.getloadavg()}")
    for label, figures in all_figures.items():
        print(f"\n== {label}")
        for name, per_concurrency in figures.items():
            for concurrency, result in per_concurrency.items():
                if isinstance(result, float):
                    print(f"  {name:<32} {result:8.2f} s")
                else:
                    print("  " + result.line(f"{name} (c={concurrency})"))
    print("\n== bare Klein handler (ceiling)")
    for concurrency, result in klein.items():
        print("  " + result.line(f"GET fixed JSON (c={concurrency})"))
    print("\n== embedded engine find on the same documents, in process")
    for label, (seconds, examined, found) in engine.items():
        print(f"  {label:<14} {seconds * 1000:8.2f} ms per query, {examined} documents "
              f"examined, {found} returned")
    embedded = all_figures.get("cozyd embedded")
    couch = all_figures.get("pouchdb-server (direct)")
    if embedded and couch:
        print("\n== goals")
        for c in (1, 32):
            get = embedded["GET one document"][c].rps
            print(f"  c={c}: embedded GET / bare Klein = {get / klein[c].rps:.2f} (goal >= 0.70);"
                  f" embedded GET / pouchdb-server GET = "
                  f"{get / couch['GET one document'][c].rps:.2f} (goal > 1)")
            print(f"  c={c}: embedded create / pouchdb-server create = "
                  f"{embedded['create'][c].rps / couch['create'][c].rps:.2f} (goal >= 1)")
        with_index, without = engine["with index"][0], engine["without index"][0]
        print(f"  indexed / unindexed find on the embedded engine = {without / with_index:.1f}"
              " (goal >= 20)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    all_figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        couch_url, stop_couch = start_pouchdb_server(os.path.join(workdir, "pouchdb"))
        daemons = []
        try:
            embedded = Daemon(os.path.join(workdir, "embedded"))
            couch_daemon = Daemon(os.path.join(workdir, "couch"), couchdb_url=couch_url)
            daemons = [embedded, couch_daemon]
            for daemon in daemons:
                daemon.start()
            targets = [cozyd_target(embedded, "cozyd embedded"),
                       cozyd_target(couch_daemon, "cozyd couchdb engine"),
                       couch_target(couch_url)]
            for target in targets:
                target.call("POST", "/_index", {"index": {"fields": ["group"]},
                                                "ddoc": "by-group", "name": "by-group"})
                started = time.perf_counter()
                ids = load(target, args.docs)
                print(f"{target.label}: loaded {len(ids)} documents in "
                      f"{time.perf_counter() - started:.1f}s", flush=True)
                all_figures[target.label] = measure(target, args, ids)
        finally:
            for daemon in daemons:
                daemon.stop()
            stop_couch()
        engine = engine_find(args.docs, workdir)
    report(all_figures, bare_klein(args.requests), engine)


if __name__ == "__main__":
    main()
