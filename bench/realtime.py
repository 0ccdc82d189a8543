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

The subscribers are bare websocket clients on asyncio in this process (a
handshake, two masked frames, then frame parsing only), so that the client
costs little; its CPU time is printed, with the daemon's: if the client
used close to a whole core, the client was the limit. The machine's cores
are shared with whatever else runs: compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon

DOMAIN = "alice.cozy.localhost"
DOCTYPE = "io.cozy.events"
BATCH = 40  # handshakes in flight at once (the listen backlog is 50)


# -- a bare websocket subscriber -------------------------------------------------------
def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Subscriber(asyncio.Protocol):
    def __init__(self, bench: Bench, token: str):
        self.bench = bench
        self.token = token
        self.buffer = b""
        self.upgraded = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET /realtime/ HTTP/1.1\r\n"
                f"Host: {DOMAIN}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: io.cozy.websocket\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(head[:100].decode()))
                return
            self.upgraded = True
            self.buffer = rest
            auth = json.dumps({"method": "AUTH", "payload": self.token}).encode()
            sub = json.dumps({"method": "SUBSCRIBE", "payload": {"type": DOCTYPE}}).encode()
            self.transport.write(client_frame(auth) + client_frame(sub))
            self.ready.set_result(None)
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            n = buffer[1] & 0x7F
            start = 2
            if n == 126:
                if len(buffer) < 4:
                    break
                n = struct.unpack("!H", buffer[2:4])[0]
                start = 4
            elif n == 127:
                if len(buffer) < 10:
                    break
                n = struct.unpack("!Q", buffer[2:10])[0]
                start = 10
            if len(buffer) < start + n:
                break
            payload = buffer[start : start + n]
            buffer = buffer[start + n :]
            if opcode == 9:  # ping
                self.transport.write(client_frame(payload, opcode=10))
            elif opcode == 1:
                self.bench.delivered(now, payload)
            elif opcode == 8:
                self.bench.closed += 1
        self.buffer = buffer

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost"))


class Bench:
    def __init__(self) -> None:
        self.round_started = 0.0
        self.latencies: list[float] = []
        self.received = 0
        self.errors = 0
        self.closed = 0
        self.expected = 0
        self.done: asyncio.Event | None = None

    def delivered(self, now: float, payload: bytes) -> None:
        if payload.startswith(b'{"event":"error"'):
            self.errors += 1
            return
        self.latencies.append(now - self.round_started)
        self.received += 1
        if self.received >= self.expected and self.done is not None:
            self.done.set()


async def connect_all(port: int, token: str, count: int, bench: Bench) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    for first in range(0, count, BATCH):
        batch = []
        for _ in range(min(BATCH, count - first)):
            batch.append(
                loop.create_connection(lambda: Subscriber(bench, token), "127.0.0.1", port)
            )
        made = await asyncio.gather(*batch)
        protocols = [protocol for _transport, protocol in made]
        await asyncio.gather(*(p.ready for p in protocols))
        subscribers.extend(protocols)
    return subscribers


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


async def measure(
    label: str,
    *,
    subscribe_to: Daemon,
    write_to: Daemon,
    token: str,
    count: int,
    rounds: int,
) -> None:
    bench = Bench()
    pid = subscribe_to.process.pid
    loop = asyncio.get_running_loop()
    idle = Writer(write_to, token)
    baseline = [await loop.run_in_executor(None, idle.write, n, True) for n in range(20)]
    idle.connection.close()
    before = rss_kib(pid)
    started = time.perf_counter()
    subscribers = await connect_all(subscribe_to.ports["public"], token, count, bench)
    await asyncio.sleep(1.0)  # the SUBSCRIBEs are in
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
    if bench.errors:
        print(f"  !! {bench.errors} error frames")
    writer = Writer(write_to, token)
    loop = asyncio.get_running_loop()
    bench.done = asyncio.Event()
    bench.expected = count
    await loop.run_in_executor(None, writer.write, -1)  # warm up the path
    try:
        await asyncio.wait_for(bench.done.wait(), 30)
    except TimeoutError:
        print(f"  !! warm-up: {bench.received}/{count} delivered, {bench.closed} closed")
        print(subscribe_to.output[-3000:])
        raise
    bench.latencies.clear()
    for notify in (False, True):
        await rounds_of(bench, writer, subscribe_to, write_to, count, rounds, notify=notify)
    for subscriber in subscribers:
        subscriber.transport.close()
    await asyncio.sleep(1.0)


async def rounds_of(
    bench: Bench,
    writer: Writer,
    subscribe_to: Daemon,
    write_to: Daemon,
    count: int,
    rounds: int,
    *,
    notify: bool,
) -> None:
    loop = asyncio.get_running_loop()
    pid = subscribe_to.process.pid
    writes: list[float] = []
    bench.latencies.clear()
    client_cpu, server_cpu = own_cpu(), cpu_seconds(pid)
    server_sys = cpu_split(pid)[1]
    writer_cpu = cpu_seconds(write_to.process.pid)
    measure_started = time.perf_counter()
    missing = 0
    for n in range(rounds):
        bench.received = 0
        bench.expected = count
        bench.done = asyncio.Event()
        bench.round_started = time.perf_counter()
        writes.append(await loop.run_in_executor(None, writer.write, n, notify))
        try:
            await asyncio.wait_for(bench.done.wait(), 30)
        except TimeoutError:
            missing += count - bench.received
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - measure_started
    client_cpu = own_cpu() - client_cpu
    server_cpu = cpu_seconds(pid) - server_cpu
    server_sys = cpu_split(pid)[1] - server_sys
    lat = bench.latencies
    what = (
        "POST /realtime (no storage: the fan-out alone)"
        if notify
        else "POST /data (stored, then published)"
    )
    print(f"  {what}, {rounds} rounds, {len(lat)} deliveries:")
    print(
        f"    request -> event at a subscriber: p50 {percentile(lat, 50) * 1000:.1f} ms,"
        f" p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
    )
    print(
        f"    the request alone (answered): p50 {statistics.median(writes) * 1000:.1f} ms"
        f" -> p99 delivery / p50 request = "
        f"{percentile(lat, 99) / statistics.median(writes):.1f}x"
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--skip-redis", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.subscribers + 200 > hard:
        sys.exit(f"{args.subscribers} subscribers need more file descriptors than {hard}")
    work = tempfile.mkdtemp(prefix="cozyd-bench-realtime-")
    stops = []
    try:
        one = start_daemon(os.path.join(work, "one"), realtime=REALTIME)
        stops.append(one.stop)
        token = setup_instance(one)
        asyncio.run(
            measure(
                "one node",
                subscribe_to=one,
                write_to=one,
                token=token,
                count=args.subscribers,
                rounds=args.rounds,
            )
        )
        one.stop()
        if args.skip_redis:
            return
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
        asyncio.run(
            measure(
                "two nodes through Redis (subscribers on B, writes on A)",
                subscribe_to=b,
                write_to=a,
                token=token,
                count=args.subscribers,
                rounds=args.rounds,
            )
        )
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception as exc:
                print(f"stopping: {exc}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
