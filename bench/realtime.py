"""Realtime fan-out: many websocket subscribers, one HTTP write, how long
until every subscriber has the event.

    .venv/bin/python bench/realtime.py [--subscribers 10000] [--rounds 20]
                                       [--skip-redis]

1. One node (the real daemon, embedded engine): ``--subscribers``
   websockets AUTH and SUBSCRIBE to ``io.cozy.events``; the daemon's
   memory before and after gives the memory per connection. Then
   ``--rounds`` times: a ``POST /data/io.cozy.events/`` (keep-alive HTTP),
   and the time from just before the request to the arrival of the event
   at each subscriber: p50 / p99 / max over every delivery, next to the
   write's own HTTP latency (the baseline of the same run).
2. Two nodes on one CouchDB (``COZYD_TEST_COUCHDB_URL``, else a
   pouchdb-server) and one Redis (Debian's redis-server): the subscribers
   on node B, the writes on node A.

3. The floor of this machine, in the same run: a bare Python server
   (plain sockets, no websocket library, no daemon) that writes one frame
   to each of as many sockets, from one thread (as the daemon does), then
   from two (the sockets split between them), read by the same client.
   The daemon's figures divided by these say how far cozyd is from what
   the kernel allows here.

The subscribers are bare websocket clients on plain sockets in this
process, read by one epoll loop (``tests.support.ws_crowd``: a handshake,
two masked frames, then frame parsing only), so that the client costs
little; its CPU time is printed, with the daemon's: if the client used
close to a whole core, the client was the limit. The machine's cores are
shared with whatever else runs: compare figures of one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon
from tests.support.ws_crowd import Crowd

DOMAIN = "alice.cozy.localhost"
DOCTYPE = "io.cozy.events"


# -- the daemons ---------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


REALTIME = {"ping_interval": "0", "max_connections": "100000"}


def start_daemon(workdir: str, **kwargs) -> Daemon:
    daemon = Daemon(workdir, **kwargs)
    daemon.start()
    return daemon


def setup_instance(daemon: Daemon) -> str:
    added = daemon.cozyctl("instances", "add", DOMAIN)
    assert added.returncode == 0, added.stderr
    made = daemon.cozyctl("instances", "token-cli", DOMAIN, DOCTYPE)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


class Writer:
    """Keep-alive HTTP writes (in a thread: the event loop keeps reading)."""

    def __init__(self, daemon: Daemon, token: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", daemon.ports["public"])
        self.headers = {
            "Host": DOMAIN,
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }

    def write(self, n: int, notify: bool = False) -> float:
        """A document written (``POST /data``), or only notified
        (``POST /realtime``: no storage, the fan-out alone)."""
        path = f"/realtime/{DOCTYPE}/note-{n}" if notify else f"/data/{DOCTYPE}/"
        started = time.perf_counter()
        self.connection.request("POST", path, json.dumps({"n": n}).encode(), self.headers)
        response = self.connection.getresponse()
        response.read()
        assert response.status == (204 if notify else 201), response.status
        return time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


class Deliveries:
    """What the crowd received in the current round."""

    def __init__(self) -> None:
        self.round_started = 0.0
        self.latencies: list[float] = []
        self.received = 0
        self.errors = 0

    def on_text(self, _index: int, now: float, payload: bytes) -> None:
        if payload.startswith(b'{"event":"error"'):
            self.errors += 1
            return
        self.latencies.append(now - self.round_started)
        self.received += 1


def connect_crowd(daemon: Daemon, token: str, count: int, deliveries: Deliveries) -> Crowd:
    crowd = Crowd(
        daemon.ports["public"], DOMAIN, token, DOCTYPE, on_text=deliveries.on_text
    )
    crowd.connect(count)
    return crowd


def measure(
    label: str,
    *,
    subscribe_to: Daemon,
    write_to: Daemon,
    token: str,
    count: int,
    rounds: int,
) -> list[float]:
    """The daemons' rounds; returns the p99 of each kind of round."""
    deliveries = Deliveries()
    pid = subscribe_to.process.pid
    idle = Writer(write_to, token)
    baseline = [idle.write(n, True) for n in range(20)]
    idle.connection.close()
    before = rss_kib(pid)
    started = time.perf_counter()
    crowd = connect_crowd(subscribe_to, token, count, deliveries)
    crowd.pump(lambda: False, 1.0)  # the SUBSCRIBEs are in
    after = rss_kib(pid)
    setup = time.perf_counter() - started
    print(f"\n== {label}: {count} subscribers")
    print(
        f"  baseline: POST /realtime with no subscriber answered in p50"
        f" {statistics.median(baseline) * 1000:.1f} ms"
    )
    print(
        f"  connected and subscribed in {setup:.1f}s; daemon RSS {before / 1024:.1f} MiB"
        f" -> {after / 1024:.1f} MiB: {(after - before) / count:.1f} KiB per connection"
    )
    if deliveries.errors:
        print(f"  !! {deliveries.errors} error frames")
    writer = Writer(write_to, token)
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(writer.write, -1)  # warm up the path
        if not crowd.pump(lambda: deliveries.received >= count, 30):
            print(f"  !! warm-up: {deliveries.received}/{count} delivered")
            print(subscribe_to.output[-3000:])
            raise SystemExit(1)
        writing.result()
        p99s = []
        for notify in (False, True):
            p99s.append(
                rounds_of(
                    crowd,
                    deliveries,
                    pool,
                    writer,
                    subscribe_to,
                    write_to,
                    count,
                    rounds,
                    notify=notify,
                )
            )
    crowd.close()
    time.sleep(1.0)
    return p99s


def rounds_of(
    crowd: Crowd,
    deliveries: Deliveries,
    pool: ThreadPoolExecutor,
    writer: Writer,
    subscribe_to: Daemon,
    write_to: Daemon,
    count: int,
    rounds: int,
    *,
    notify: bool,
) -> float:
    pid = subscribe_to.process.pid
    writes: list[float] = []
    deliveries.latencies.clear()
    client_cpu, server_cpu = own_cpu(), cpu_seconds(pid)
    server_sys = cpu_split(pid)[1]
    writer_cpu = cpu_seconds(write_to.process.pid)
    measure_started = time.perf_counter()
    missing = 0
    for n in range(rounds):
        deliveries.received = 0
        deliveries.round_started = time.perf_counter()
        writing = pool.submit(writer.write, n, notify)
        if not crowd.pump(lambda: deliveries.received >= count, 30):
            missing += count - deliveries.received
        writes.append(writing.result())
        crowd.pump(lambda: False, 0.05)
    elapsed = time.perf_counter() - measure_started
    client_cpu = own_cpu() - client_cpu
    server_cpu = cpu_seconds(pid) - server_cpu
    server_sys = cpu_split(pid)[1] - server_sys
    lat = deliveries.latencies
    what = (
        "POST /realtime (no storage: the fan-out alone)"
        if notify
        else "POST /data (stored, then published)"
    )
    p99 = percentile(lat, 99)
    print(f"  {what}, {rounds} rounds, {len(lat)} deliveries:")
    print(
        f"    request -> event at a subscriber: p50 {percentile(lat, 50) * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
    )
    print(
        f"    the request alone (answered): p50 {statistics.median(writes) * 1000:.1f} ms"
        f" -> p99 delivery / p50 request = {p99 / statistics.median(writes):.1f}x"
    )
    if missing:
        print(f"    !! {missing} deliveries missing")
    print(
        f"    per event: subscribers' daemon {server_cpu / rounds * 1000:.0f} ms CPU"
        f" ({server_sys / max(server_cpu, 1e-9):.0%} in the kernel),"
        f" {server_cpu / rounds / count * 1e6:.1f} µs a delivery;"
        f" client {client_cpu / rounds * 1000:.0f} ms"
    )
    print(
        f"    CPU over {elapsed:.1f}s: client {client_cpu:.2f}s ({client_cpu / elapsed:.0%}"
        f" of a core), subscribers' daemon {server_cpu:.2f}s ({server_cpu / elapsed:.0%})"
        + (
            f", writing daemon {cpu_seconds(write_to.process.pid) - writer_cpu:.2f}s"
            if write_to is not subscribe_to
            else ""
        )
    )
    return p99


# -- the floor: a bare server writing one frame to every socket --------------------------
def serve_floor() -> None:
    """``--serve-floor``: accept websocket handshakes on a port (printed),
    answer 101 and read nothing more; on each ``send THREADS`` line of
    stdin, write one text frame to every socket (``THREADS`` threads, the
    sockets split between them), then print ``sent``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    clients: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    frame_body = json.dumps(
        {"event": "CREATED", "payload": {"type": DOCTYPE, "id": "x" * 32, "doc": {"n": 1}}}
    ).encode()
    frame = bytes([0x81, len(frame_body)]) + frame_body

    def send_part(part: list[socket.socket]) -> None:
        for sock in part:
            sock.send(frame)

    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending[sock] = b""
                selector.register(sock, selectors.EVENT_READ)
            elif key.fileobj is sys.stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                threads = int(line.split()[1])
                if threads == 1:
                    send_part(clients)
                else:
                    parts = [clients[i::threads] for i in range(threads)]
                    helpers = [
                        threading.Thread(target=send_part, args=(p,)) for p in parts[1:]
                    ]
                    for helper in helpers:
                        helper.start()
                    send_part(parts[0])
                    for helper in helpers:
                        helper.join()
                print("sent", flush=True)
            else:
                sock = key.fileobj
                data = sock.recv(65536)
                if sock in pending:
                    pending[sock] += data
                    if b"\r\n\r\n" in pending[sock]:
                        del pending[sock]
                        sock.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
                        clients.append(sock)
                if not data:
                    selector.unregister(sock)


def measure_floor(count: int, rounds: int, thread_counts: list[int]) -> dict[int, float]:
    """The bare server's p99 for each number of threads."""
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-floor"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    p99s = {}
    try:
        port = int(server.stdout.readline())
        deliveries = Deliveries()
        crowd = Crowd(port, DOMAIN, "-", DOCTYPE, on_text=deliveries.on_text)
        crowd.connect(count)
        crowd.pump(lambda: False, 0.5)
        print(f"\n== the floor: a bare Python server, one frame to each of {count} sockets")
        for threads in thread_counts:
            deliveries.latencies.clear()
            client_cpu = own_cpu()
            for _ in range(rounds):
                deliveries.received = 0
                deliveries.round_started = time.perf_counter()
                server.stdin.write(f"send {threads}\n")
                server.stdin.flush()
                crowd.pump(lambda: deliveries.received >= count, 30)
                assert server.stdout.readline().strip() == "sent"
                crowd.pump(lambda: False, 0.05)
            lat = deliveries.latencies
            p99s[threads] = percentile(lat, 99)
            print(
                f"  {threads} thread{'s' if threads > 1 else ''}:"
                f" p50 {percentile(lat, 50) * 1000:.1f} ms,"
                f" p99 {p99s[threads] * 1000:.1f} ms; client"
                f" {(own_cpu() - client_cpu) / rounds * 1000:.0f} ms CPU an event"
            )
        crowd.close()
    finally:
        server.stdin.close()
        server.wait(10)
    return p99s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor()
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.subscribers + 200 > hard:
        sys.exit(f"{args.subscribers} subscribers need more file descriptors than {hard}")
    work = tempfile.mkdtemp(prefix="cozyd-bench-realtime-")
    stops = []
    results: dict[str, float] = {}
    try:
        one = start_daemon(os.path.join(work, "one"), realtime=REALTIME)
        stops.append(one.stop)
        token = setup_instance(one)
        data, notified = measure(
            "one node",
            subscribe_to=one,
            write_to=one,
            token=token,
            count=args.subscribers,
            rounds=args.rounds,
        )
        results["one node, POST /data"] = data
        results["one node, POST /realtime"] = notified
        one.stop()
        if not args.skip_redis:
            from tests.support.couchdb_server import real_couchdb_url, start_pouchdb_server
            from tests.support.redis_server import start_redis

            redis_url, stop_redis = start_redis(Path(work) / "redis")
            stops.append(stop_redis)
            couchdb_url = real_couchdb_url()
            if couchdb_url:
                from tests.integration.conftest import wipe_cozyd_databases

                wipe_cozyd_databases(couchdb_url)
            else:
                couchdb_url, stop_couchdb = start_pouchdb_server(Path(work) / "pouchdb")
                stops.append(stop_couchdb)
            settings = {**REALTIME, "url": redis_url}
            a = start_daemon(
                os.path.join(work, "a"), couchdb_url=couchdb_url, realtime=settings
            )
            stops.append(a.stop)
            b = start_daemon(
                os.path.join(work, "b"), couchdb_url=couchdb_url, realtime=settings
            )
            stops.append(b.stop)
            token = setup_instance(a)
            data, notified = measure(
                "two nodes through Redis (subscribers on B, writes on A)",
                subscribe_to=b,
                write_to=a,
                token=token,
                count=args.subscribers,
                rounds=args.rounds,
            )
            results["two nodes through Redis, POST /data"] = data
            results["two nodes through Redis, POST /realtime"] = notified
            for stop in (b.stop, a.stop):
                stop()
        floor = (
            {} if args.skip_floor else measure_floor(args.subscribers, args.rounds, [1, 2])
        )
        print(
            f"\n== p99 from the write to the last subscribers ({args.subscribers}), goal 100 ms"
        )
        for label, p99 in results.items():
            against = "; ".join(
                f"{p99 / f:.2f}x the bare {n}-thread floor" for n, f in floor.items()
            )
            print(f"  {label}: {p99 * 1000:.1f} ms" + (f" ({against})" if against else ""))
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:
                print(f"stopping: {exc}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
