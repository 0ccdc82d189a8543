"""The /data API on both engines, against CouchDB queried directly and a
bare Klein handler (the framework's ceiling), all in one run.

    .venv/bin/python bench/data.py [--docs 100000] [--requests 2000]
        [--couchdb-url http://admin:pw@127.0.0.1:5984] [--targets embedded,couchdb,direct]

With ``--couchdb-url`` the given (real Apache) CouchDB is both the "direct"
target and the CouchDB engine's server; without it a pouchdb-server is
started for both. The report says which one it measured. On a real CouchDB
the requests it receives per cozyd request are counted (its ``_stats``).

For each target: GET of one document, create, update, ``_find`` on the
loaded documents with and without an index, ``_bulk_docs`` of 10,000
documents and ``_changes`` over all of them; throughput and p50/p99 at
concurrency 1 and 32. cozyd is measured through its whole stack (Host
routing, token check, permissions, storage). Figures of one run are
comparable with each other; the ratios printed at the end are the goals of
issues 4 and 9.
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

from bench.loadgen import run_load
from bench.procstat import listening_pid
from cozyd.testing import TEST_ADMIN_PASSPHRASE
from tests.support.couchdb_server import start_pouchdb_server
from tests.support.daemon import LISTENING, Daemon, http

DOMAIN = f"bench{os.getpid()}.cozy.localhost"  # fresh on a reused CouchDB
DOCTYPE = "io.cozy.bench"
ADMIN = {
    "Authorization": "Basic "
    + base64.b64encode(f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()
}


class BenchDaemon(Daemon):
    """The test harness's daemon, writing its output straight into its log
    file (read back only until it listens). Through a pipe read by a thread
    of this process, which shares its interpreter with the load generator's
    threads, the reader falls behind, the pipe fills up and the daemon
    blocks writing its access log: py-spy showed it 15 to 40 % of the time
    in that write, a limit of the harness, not of cozyd."""

    def start(self, *, wait: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **self.extra_env, **(extra_env or {})}
        env.pop("COZY_ADMIN_PASSPHRASE", None)
        self._lines = []
        self.ports = {}
        with open(self.log_path, "a", encoding="utf-8") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._reader = threading.Thread(target=self._tail, args=(offset,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_for_ports()

    def _tail(self, offset: int) -> None:
        with open(self.log_path, encoding="utf-8") as log:
            log.seek(offset)
            while len(self.ports) < 2 and self.process.poll() is None:
                line = log.readline()
                if not line.endswith("\n"):
                    time.sleep(0.05)
                    log.seek(log.tell() - len(line.encode()))
                    continue
                self._lines.append(line)
                match = LISTENING.search(line)
                if match:
                    self.ports[match.group(1)] = int(match.group(3))
            self._lines.extend(log.readlines())


def document(n: int) -> dict:
    return {"n": n, "title": f"document {n}", "group": n % 100, "tags": ["a", "b"]}


class Target:
    """Where requests go: a base URL, headers and the /data-like paths."""

    def __init__(self, label: str, base: str, headers: dict[str, str], db_path: str):
        self.label = label
        self.base = base
        self.headers = headers
        self.db_path = db_path  # e.g. /data/io.cozy.bench or /benchdb
        #: ``{name: pid}`` of the processes that serve it (their CPU is measured).
        self.servers: dict[str, int] = {}

    def url(self, suffix: str = "") -> str:
        return self.base + self.db_path + suffix

    def call(self, method: str, suffix: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        response = http(
            method, self.url(suffix), headers=headers, data=data, timeout=timeout
        )
        if response.status >= 300:
            raise RuntimeError(
                f"{self.label} {method} {suffix}: {response.status} {response.body[:300]!r}"
            )
        return response.json()


def cozyd_target(daemon: Daemon, label: str) -> Target:
    create = http("POST", f"{daemon.admin_url}/instances?Domain={DOMAIN}", headers=ADMIN)
    assert create.status == 201, create.body
    token = http(
        "POST",
        f"{daemon.admin_url}/instances/token?Domain={DOMAIN}"
        f"&Audience=cli&Scope={quote(DOCTYPE)}",
        headers=ADMIN,
    ).body.decode()
    return Target(
        label,
        daemon.public_url,
        {"Host": DOMAIN, "Authorization": f"Bearer {token}"},
        f"/data/{DOCTYPE}",
    )


DIRECT = "CouchDB (direct)"


def couch_target(url: str) -> Target:
    parts = urlsplit(url)
    return basic_target(DIRECT, f"http://{parts.hostname}:{parts.port}", url, "benchdb")


def basic_target(label: str, base: str, couch_url: str, db: str) -> Target:
    """A fresh CouchDB database ``db<pid>`` reached at ``base`` with the
    credentials of ``couch_url``."""
    parts = urlsplit(couch_url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    target = Target(label, base, {"Authorization": f"Basic {token}"}, f"/{db}{os.getpid()}")
    http("PUT", target.url(), headers=target.headers)
    return target


def start_listening(script: str, *args: str) -> tuple[int, subprocess.Popen]:
    """``python bench/<script> args``, once it printed ``listening on PORT``;
    its access log is drained as the daemon harness drains the daemon's."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), script), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = next(
        int(line.split()[-1]) for line in process.stdout if line.startswith("listening on")
    )
    threading.Thread(
        target=lambda: [None for _ in iter(lambda: process.stdout.read(1 << 16), "")],
        daemon=True,
    ).start()
    return port, process


def couch_server_name(url: str) -> str:
    parts = urlsplit(url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    welcome = http(
        "GET",
        f"http://{parts.hostname}:{parts.port}/",
        headers={"Authorization": f"Basic {token}"},
    ).json()
    if "couchdb" in welcome:
        return f"Apache CouchDB {welcome.get('version')} at {parts.hostname}:{parts.port}"
    return (
        f"pouchdb-server ({welcome.get('version', '?')}) at {parts.hostname}:{parts.port}"
    )


class CouchCounter:
    """Requests a real CouchDB received (its ``httpd/requests`` counter;
    each reading is one request itself). None on servers without it."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
        self.url = (
            f"http://{parts.hostname}:{parts.port}"
            "/_node/_local/_stats/couchdb/httpd/requests"
        )
        self.headers = {"Authorization": f"Basic {token}"}

    def read(self) -> int | None:
        response = http("GET", self.url, headers=self.headers)
        if response.status != 200:
            return None
        return int(response.json()["value"])

    def per_request(self, send, count: int = 20) -> float | None:
        """Mean CouchDB requests per call of ``send()``."""
        before = self.read()
        if before is None:
            return None
        for _ in range(count):
            send()
        after = self.read()
        return (after - before - 1) / count


def count_round_trips(target: Target, counter: CouchCounter, ids: list[str]) -> dict:
    """CouchDB requests per cozyd request, for each kind measured."""
    one = ids[len(ids) // 3]
    counts: dict[str, float | None] = {}
    counts["GET one document"] = counter.per_request(lambda: target.call("GET", f"/{one}"))
    counts["create"] = counter.per_request(lambda: target.call("POST", "/", document(7)))
    doc_id = f"count-{time.monotonic_ns()}"
    state = {"rev": target.call("PUT", f"/{doc_id}", document(7))["rev"]}

    def update():
        state["rev"] = target.call(
            "PUT", f"/{doc_id}", {"_id": doc_id, "_rev": state["rev"], **document(8)}
        )["rev"]

    counts["update"] = counter.per_request(update)
    counts["_find with index"] = counter.per_request(
        lambda: target.call(
            "POST",
            "/_find",
            {"selector": {"group": 42}, "limit": 100, "use_index": "by-group"},
        ),
        count=5,
    )
    counts["_changes (limit 10)"] = counter.per_request(
        lambda: target.call("GET", "/_changes?limit=10"), count=5
    )
    counts["_all_docs (limit 10)"] = counter.per_request(
        lambda: target.call("GET", "/_all_docs?limit=10"), count=5
    )
    return counts


def load(target: Target, count: int) -> list[str]:
    ids = []
    for start in range(0, count, 10_000):
        docs = [
            {"_id": f"doc-{n:06d}", **document(n)}
            for n in range(start, min(count, start + 10_000))
        ]
        results = target.call("POST", "/_bulk_docs", {"docs": docs})
        ids.extend(r["id"] for r in results)
    return ids


def measure(target: Target, args, ids: list[str]) -> dict[str, dict[int, object]]:
    figures: dict[str, dict[int, object]] = {}
    headers = {
        **target.headers,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    one = ids[len(ids) // 2]
    for concurrency in (1, 32):
        n = args.requests
        figures.setdefault("GET one document", {})[concurrency] = run_load(
            target.url(f"/{one}"),
            headers=headers,
            concurrency=concurrency,
            requests=n,
            servers=target.servers,
        )
        body = json.dumps(document(1)).encode()
        if target.db_path.startswith("/data"):
            create = run_load(
                target.url("/"),
                method="POST",
                headers=headers,
                body=body,
                concurrency=concurrency,
                requests=n,
                servers=target.servers,
            )
        else:
            create = run_load(
                target.url(),
                method="POST",
                headers=headers,
                body=body,
                concurrency=concurrency,
                requests=n,
                servers=target.servers,
            )
        figures.setdefault("create", {})[concurrency] = create
        # update: each worker keeps its own document and rev chain
        figures.setdefault("update", {})[concurrency] = update_load(
            target, headers, concurrency, n
        )
        selector = {"selector": {"group": 42}, "limit": 100}
        figures.setdefault("_find with index", {})[concurrency] = run_load(
            target.url("/_find"),
            method="POST",
            headers=headers,
            body=json.dumps({**selector, "use_index": "by-group"}).encode(),
            concurrency=concurrency,
            requests=max(20, n // 20),
            servers=target.servers,
        )
        figures.setdefault("_find without index", {})[concurrency] = run_load(
            target.url("/_find"),
            method="POST",
            headers=headers,
            body=json.dumps(
                {"selector": {"title": "document 4242"}, "limit": 100}
            ).encode(),
            concurrency=concurrency,
            requests=max(4, n // 500),
            servers=target.servers,
        )
    start = time.perf_counter()
    docs = [{"_id": f"bulk-{n:06d}", **document(n)} for n in range(10_000)]
    target.call("POST", "/_bulk_docs", {"docs": docs})
    figures["_bulk_docs of 10,000 docs"] = {1: time.perf_counter() - start}
    start = time.perf_counter()
    result = target.call("GET", "/_changes")
    figures[f"_changes of {len(result['results'])} changes"] = {
        1: time.perf_counter() - start
    }
    return figures


def update_load(target: Target, headers, concurrency: int, requests: int):
    """Each worker updates its own document, each time with the revision of
    its previous update, over its keep-alive connection."""
    revs = {}
    for worker in range(concurrency):
        doc_id = f"upd-{worker}-{time.monotonic_ns()}"
        revs[worker] = (doc_id, target.call("PUT", f"/{doc_id}", document(worker))["rev"])
    path = urlsplit(target.url()).path

    def chain(worker: int):
        doc_id, rev = revs[worker]
        while True:
            body = json.dumps({"_id": doc_id, "_rev": rev, **document(worker)}).encode()
            answer = yield ("PUT", f"{path}/{doc_id}", body)
            rev = json.loads(answer)["rev"]

    per_worker = max(1, requests // concurrency)
    return run_load(
        target.url(),
        headers=headers,
        concurrency=concurrency,
        requests=per_worker * concurrency,
        chains=chain,
        servers=target.servers,
    )


PROXY = "bare Twisted proxy to CouchDB"


def start_bare_proxy(couch_url: str) -> tuple[Target, subprocess.Popen]:
    """``bench/bare_proxy.py`` in front of the CouchDB: the same CouchDB
    database paths and credentials as the direct target, one Python hop
    (twisted.web + treq) in between."""
    parts = urlsplit(couch_url)
    port, process = start_listening(
        "bare_proxy.py", f"http://{parts.hostname}:{parts.port}"
    )
    return basic_target(PROXY, f"http://127.0.0.1:{port}", couch_url, "benchproxy"), process


def bare_klein(requests: int) -> dict[str, dict[int, object]]:
    port, process = start_listening("bare_klein.py")
    servers = {"bare Klein": process.pid}
    try:
        url = f"http://127.0.0.1:{port}/data/{DOCTYPE}/"
        body = json.dumps(document(1)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        return {
            "GET fixed JSON": {
                c: run_load(
                    url + "doc-00000", concurrency=c, requests=requests, servers=servers
                )
                for c in (1, 32)
            },
            "POST a body, no storage": {
                c: run_load(
                    url,
                    method="POST",
                    headers=headers,
                    body=body,
                    concurrency=c,
                    requests=requests,
                    servers=servers,
                )
                for c in (1, 32)
            },
        }
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
        sync(
            store.bulk_docs(
                db,
                [
                    {"_id": f"doc-{n:06d}", **document(n)}
                    for n in range(start, min(count, start + 10_000))
                ],
            )
        )
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
        figures[label] = (
            elapsed,
            result["execution_stats"]["total_docs_examined"],
            len(result["docs"]),
        )
    sync(store.close())
    return figures


def cpu_report(all_figures: dict[str, dict]) -> None:
    """The servers' CPU per request at c=32: what a request costs each
    process, whoever got the cores."""
    print("\n== server CPU per request at c=32 (µs; from /proc, whole processes)")
    for name in ("GET one document", "create", "update"):
        for label, figures in all_figures.items():
            result = figures.get(name, {}).get(32)
            if result is None or not result.server_cpu:
                continue
            parts = [
                f"{server} {result.cpu_per_request(server):5.0f}"
                for server in result.server_cpu
            ]
            total = sum(result.server_cpu.values()) / result.requests * 1e6
            print(
                f"  {name:<17} {label:<30} {' + '.join(parts)}"
                + (f" = {total:.0f}" if len(parts) > 1 else "")
            )


def report(
    all_figures: dict[str, dict],
    klein: dict[str, dict[int, object]],
    engine: dict[str, object],
    server: str = "",
    round_trips: dict | None = None,
) -> None:
    print(f"load average at the end: {os.getloadavg()}")
    print(f"CouchDB measured (direct, and behind the CouchDB engine): {server}")
    for label, figures in all_figures.items():
        print(f"\n== {label}")
        for name, per_concurrency in figures.items():
            for concurrency, result in per_concurrency.items():
                if isinstance(result, float):
                    print(f"  {name:<32} {result:8.2f} s")
                else:
                    print("  " + result.line(f"{name} (c={concurrency})"))
    print("\n== bare Klein handler (ceiling)")
    for name, per_concurrency in klein.items():
        for concurrency, result in per_concurrency.items():
            print("  " + result.line(f"{name} (c={concurrency})"))
    print("\n== load generator: its own CPU (one core is the ceiling of its threads)")
    for label, figures in [*all_figures.items(), ("bare Klein", klein)]:
        busiest = max(
            (
                r
                for per in figures.values()
                for r in per.values()
                if not isinstance(r, float) and r.cpu is not None
            ),
            key=lambda r: r.cpu / r.seconds,
            default=None,
        )
        if busiest is not None:
            print(
                f"  {label:<28} busiest run: {busiest.cpu / busiest.seconds:4.0%} of a "
                f"core at {busiest.rps:.0f} req/s"
            )
    cpu_report(
        {
            **all_figures,
            "bare Klein (no storage)": {
                "GET one document": klein["GET fixed JSON"],
                "create": klein["POST a body, no storage"],
            },
        }
    )
    if round_trips:
        print("\n== requests to CouchDB per cozyd request (CouchDB engine)")
        for name, value in round_trips.items():
            print(
                f"  {name:<32} "
                + ("n/a (server has no _stats)" if value is None else f"{value:.2f}")
            )
    print("\n== embedded engine find on the same documents, in process")
    for label, (seconds, examined, found) in engine.items():
        print(
            f"  {label:<14} {seconds * 1000:8.2f} ms per query, {examined} documents "
            f"examined, {found} returned"
        )
    embedded = all_figures.get("cozyd embedded")
    couch = all_figures.get(DIRECT)
    engine_figures = all_figures.get("cozyd couchdb engine")
    if engine_figures and couch:
        print("\n== goals of the CouchDB engine (issue 9), ratios to CouchDB direct")
        get1, direct1 = engine_figures["GET one document"][1], couch["GET one document"][1]
        added = get1.percentile(50) / direct1.percentile(50) - 1
        print(
            f"  GET c=1: p50 {get1.percentile(50) * 1000:.2f} ms vs "
            f"{direct1.percentile(50) * 1000:.2f} ms: {added:+.0%} (goal <= +30%)"
        )
        for name, goal in (("GET one document", 0.8), ("create", 0.7), ("update", 0.7)):
            ratio = engine_figures[name][32].rps / couch[name][32].rps
            print(f"  {name} c=32: {ratio:.2f}x (goal >= {goal})")
        engine_changes = next(
            v[1] for k, v in engine_figures.items() if k.startswith("_changes")
        )
        direct_changes = next(v[1] for k, v in couch.items() if k.startswith("_changes"))
        print(
            f"  _changes: {engine_changes / direct_changes:.2f}x CouchDB's time "
            "(goal <= 1.2)"
        )
    proxy = all_figures.get(PROXY)
    if engine_figures and proxy and couch:
        print(
            "\n== the CouchDB engine against the bare Twisted proxy (the same hop with"
            " nothing of cozyd's)"
        )
        get1 = engine_figures["GET one document"][1].percentile(50)
        bare1 = proxy["GET one document"][1].percentile(50)
        direct1 = couch["GET one document"][1].percentile(50)
        print(
            f"  GET c=1 p50: engine {get1 * 1000:.2f} ms, bare proxy {bare1 * 1000:.2f} ms"
            f" (itself {bare1 / direct1 - 1:+.0%} over direct): engine"
            f" {get1 / bare1 - 1:+.0%} over the bare proxy"
        )
        for name in ("GET one document", "create", "update"):
            for c in (1, 32):
                engine_rps, bare_rps = engine_figures[name][c].rps, proxy[name][c].rps
                print(
                    f"  {name} c={c}: engine {engine_rps:.0f}/s, bare proxy {bare_rps:.0f}/s"
                    f" ({bare_rps / couch[name][c].rps:.2f}x direct): engine"
                    f" {engine_rps / bare_rps:.2f}x the bare proxy"
                )
    if embedded and couch:
        print("\n== goals")
        for c in (1, 32):
            get = embedded["GET one document"][c].rps
            print(
                f"  c={c}: embedded GET / bare Klein = "
                f"{get / klein['GET fixed JSON'][c].rps:.2f} (goal >= 0.70);"
                f" embedded GET / CouchDB GET = "
                f"{get / couch['GET one document'][c].rps:.2f} (goal > 1)"
            )
            print(
                f"  c={c}: embedded create / CouchDB create = "
                f"{embedded['create'][c].rps / couch['create'][c].rps:.2f} (goal >= 1)"
            )
    if embedded and couch and engine:
        with_index, without = engine["with index"][0], engine["without index"][0]
        print(
            f"  indexed / unindexed find on the embedded engine = {without / with_index:.1f}"
            " (goal >= 20)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--couchdb-url",
        default=None,
        help="a CouchDB to measure (direct and as the CouchDB engine's "
        "server) instead of a pouchdb-server started for the run",
    )
    parser.add_argument(
        "--targets",
        default="embedded,couchdb,direct,proxy",
        help="comma-separated subset of embedded,couchdb,direct,proxy (proxy: a bare"
        " twisted.web + treq proxy to the CouchDB, the ceiling of a Twisted engine)",
    )
    args = parser.parse_args()
    wanted = set(args.targets.split(","))
    all_figures: dict[str, dict] = {}
    round_trips = None
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        if args.couchdb_url:
            couch_url, stop_couch = args.couchdb_url.rstrip("/"), lambda: None
        else:
            couch_url, stop_couch = start_pouchdb_server(os.path.join(workdir, "pouchdb"))
        server = couch_server_name(couch_url)
        print(f"CouchDB: {server}", flush=True)
        couch_pid = listening_pid(urlsplit(couch_url).port or 5984)
        couch_cpu = {"CouchDB": couch_pid} if couch_pid is not None else {}
        daemons = []
        try:
            targets = []
            if "embedded" in wanted:
                embedded = BenchDaemon(os.path.join(workdir, "embedded"))
                embedded.start()
                daemons.append(embedded)
                targets.append(cozyd_target(embedded, "cozyd embedded"))
                targets[-1].servers = {"cozyd": embedded.process.pid}
            if "couchdb" in wanted:
                couch_daemon = BenchDaemon(
                    os.path.join(workdir, "couch"), couchdb_url=couch_url
                )
                couch_daemon.start()
                daemons.append(couch_daemon)
                targets.append(cozyd_target(couch_daemon, "cozyd couchdb engine"))
                targets[-1].servers = {"cozyd": couch_daemon.process.pid, **couch_cpu}
                if os.environ.get("BENCH_PRINT_PID"):
                    print(
                        f"couchdb-engine daemon pid {couch_daemon.process.pid}", flush=True
                    )
            if "direct" in wanted:
                targets.append(couch_target(couch_url))
                targets[-1].servers = dict(couch_cpu)
            if "proxy" in wanted:
                proxy_target, proxy = start_bare_proxy(couch_url)
                daemons.append(proxy)
                targets.append(proxy_target)
                proxy_target.servers = {"proxy": proxy.pid, **couch_cpu}
            for target in targets:
                target.call(
                    "POST",
                    "/_index",
                    {
                        "index": {"fields": ["group"]},
                        "ddoc": "by-group",
                        "name": "by-group",
                    },
                )
                started = time.perf_counter()
                ids = load(target, args.docs)
                print(
                    f"{target.label}: loaded {len(ids)} documents in "
                    f"{time.perf_counter() - started:.1f}s",
                    flush=True,
                )
                all_figures[target.label] = measure(target, args, ids)
                if target.label == "cozyd couchdb engine":
                    round_trips = count_round_trips(target, CouchCounter(couch_url), ids)
        finally:
            for daemon in daemons:
                if isinstance(daemon, subprocess.Popen):
                    daemon.kill()
                    daemon.wait()
                else:
                    daemon.stop()
            stop_couch()
        engine = engine_find(args.docs, workdir) if "embedded" in wanted else {}
    report(all_figures, bare_klein(args.requests), engine, server, round_trips)


if __name__ == "__main__":
    main()
