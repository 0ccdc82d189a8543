"""A small HTTP load generator for the benchmarks: keep-alive connections,
one thread each, fixed request count; reports throughput and latencies.

It runs in the benchmark's process while the server runs in its own, so
the two share the machine's cores: compare figures of one run (ratios),
not absolute numbers across runs. Its threads share one interpreter (one
core at most): each result carries the CPU time the generator itself spent
(``cpu``), so a run whose generator used close to a whole core was limited
by the generator, not by the server.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs

from bench.procstat import ServersCPU


@attrs.frozen
class LoadResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    latencies: list[float] = attrs.field(repr=False)
    #: CPU seconds the generator's process spent during the run.
    cpu: float | None = None
    #: CPU seconds each server process spent during the run, by name.
    server_cpu: dict[str, float] = attrs.field(factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def cpu_per_request(self, server: str) -> float | None:
        """Microseconds of ``server``'s CPU per request in this run."""
        spent = self.server_cpu.get(server)
        return None if spent is None else spent / self.requests * 1e6

    def line(self, label: str) -> str:
        cpu = "" if self.cpu is None else f"   client cpu {self.cpu / self.seconds:4.0%}"
        servers = "".join(
            f"   {name} {self.cpu_per_request(name):.0f} µs/req" for name in self.server_cpu
        )
        return (
            f"{label:<44} {self.rps:9.1f} req/s   p50 {self.percentile(50) * 1000:7.2f} ms"
            f"   p99 {self.percentile(99) * 1000:7.2f} ms{cpu}{servers}"
            f"   {dict(self.statuses)}"
        )


def run_load(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    concurrency: int = 1,
    requests: int = 1000,
    bodies=None,
    chains=None,
    servers: Mapping[str, int] | None = None,
) -> LoadResult:
    """Send ``requests`` requests over ``concurrency`` connections.

    ``bodies``, if given, is a callable ``i -> bytes`` for per-request bodies.
    ``chains``, if given, is a callable ``worker -> generator``: the
    generator yields ``(method, path, body)`` and is sent each response's
    body (a worker's chain of updates, each with the previous revision).
    ``servers``: ``{name: pid}`` of the processes serving the requests, whose
    CPU during the run the result carries (``server_cpu``).
    """
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    per_thread = [
        requests // concurrency + (1 if i < requests % concurrency else 0)
        for i in range(concurrency)
    ]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    statuses: list[dict[int, int]] = [{} for _ in range(concurrency)]
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        chain = chains(index) if chains is not None else None
        answer = None
        for _ in range(per_thread[index]):
            if chain is not None:
                method_, path_, payload = chain.send(answer)
                start = time.perf_counter()
                connection.request(
                    method_, path_, body=payload, headers=dict(headers or {})
                )
                response = connection.getresponse()
                answer = response.read()
                latencies[index].append(time.perf_counter() - start)
                statuses[index][response.status] = (
                    statuses[index].get(response.status, 0) + 1
                )
                continue
            if bodies is not None:
                with lock:
                    n = next(counter)
                payload = bodies(n)
            else:
                payload = body
            start = time.perf_counter()
            connection.request(method, path, body=payload, headers=dict(headers or {}))
            response = connection.getresponse()
            response.read()
            latencies[index].append(time.perf_counter() - start)
            statuses[index][response.status] = statuses[index].get(response.status, 0) + 1
        connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    serving = ServersCPU(servers)
    serving.start()
    cpu = time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    server_cpu = serving.stop()
    merged: dict[int, int] = {}
    for status in statuses:
        for code, count in status.items():
            merged[code] = merged.get(code, 0) + count
    return LoadResult(
        requests=requests,
        seconds=elapsed,
        statuses=merged,
        latencies=[x for chunk in latencies for x in chunk],
        cpu=cpu,
        server_cpu=server_cpu,
    )


def median_of(runs: list[LoadResult]) -> float:
    return statistics.median(r.rps for r in runs)
