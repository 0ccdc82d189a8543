"""Prometheus metrics, served by the admin API at ``GET /metrics``.

One ``Metrics`` per daemon (its own ``CollectorRegistry``: several
in-memory stacks in one test process do not mix their counts):

- ``cozyd_http_requests_total{listener,service,status}`` and
  ``cozyd_http_request_duration_seconds{listener,service}`` (histogram):
  every answered request, ``service`` being the first path segment of a
  known service (``data``, ``auth``, ``settings``…; ``other`` otherwise,
  so that clients cannot grow the label set);
- ``cozyd_storage_call_duration_seconds{engine,operation}`` (histogram):
  every call of the ``DocumentStore`` interface (``instrument_store``);
- ``cozyd_instances_cached``: Host -> instance answers in the cache;
- ``cozyd_threadpool_queue_depth{pool}``, ``cozyd_threadpool_busy{pool}``:
  work waiting for a thread, threads at work, for every watched pool.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

#: Methods of the ``DocumentStore`` interface that are timed.
STORE_OPERATIONS = (
    "health",
    "create_db",
    "ensure_db",
    "delete_db",
    "db_exists",
    "db_info",
    "list_dbs",
    "delete_prefix",
    "get_doc",
    "get_open_revs",
    "put_doc",
    "delete_doc",
    "bulk_docs",
    "bulk_get",
    "revs_diff",
    "all_docs",
    "changes",
    "get_local",
    "put_local",
    "delete_local",
    "create_index",
    "list_indexes",
    "find",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, services: Iterable[str] = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        self.services = frozenset(services)
        #: ``(listener, service, status)`` -> the counter's ``inc`` and the
        #: histogram's ``observe`` of those labels.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "cozyd_http_requests",
            "HTTP requests answered.",
            ["listener", "service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cozyd_http_request_duration_seconds",
            "Time from a request's first line to its answer's end.",
            ["listener", "service"],
            registry=self.registry,
        )
        self.storage = Histogram(
            "cozyd_storage_call_duration_seconds",
            "Storage engine calls.",
            ["engine", "operation"],
            registry=self.registry,
        )
        self.cached_instances = Gauge(
            "cozyd_instances_cached",
            "Host -> instance answers in the cache.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cozyd_threadpool_queue_depth",
            "Work waiting for a thread of the pool.",
            ["pool"],
            registry=self.registry,
        )
        self.busy_threads = Gauge(
            "cozyd_threadpool_busy",
            "Threads of the pool at work.",
            ["pool"],
            registry=self.registry,
        )

    # -- HTTP ---------------------------------------------------------------
    def service_of(self, path: bytes) -> str:
        segment = path.lstrip(b"/").split(b"/", 1)[0].decode("ascii", "replace")
        return segment if segment in self.services else "other"

    def request_done(
        self, listener: str, path: bytes, status: int, duration: float
    ) -> None:
        service = "admin" if listener == "admin" else self.service_of(path)
        key = (listener, service, status)
        try:
            count, observe = self._children[key]
        except KeyError:
            # (``labels`` looks its child up under a lock on every call:
            # the children of a label set are kept here once found.)
            count = self.requests.labels(listener, service, str(status)).inc
            observe = self.latency.labels(listener, service).observe
            self._children[key] = (count, observe)
        count()
        observe(duration)

    # -- gauges read at scrape time -----------------------------------------
    def watch_cache(self, size: Callable[[], int]) -> None:
        self.cached_instances.set_function(size)

    def watch_pool(self, name: str, pool: Any) -> None:
        """A ``twisted.python.threadpool.ThreadPool``'s backlog and busy threads."""
        # (a cozyd.pools.WorkerPool keeps its ThreadPool in ``_threads``)
        threads = getattr(pool, "_threads", pool)

        def stats():
            team = getattr(threads, "_team", None)
            return team.statistics() if team is not None else None

        def depth() -> float:
            s = stats()
            return s.backloggedWorkCount if s is not None else 0

        def busy() -> float:
            s = stats()
            return s.busyWorkerCount if s is not None else 0

        self.queue_depth.labels(name).set_function(depth)
        self.busy_threads.labels(name).set_function(busy)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def instrument_store(store: Any, metrics: Metrics) -> Any:
    """Time every interface call of ``store`` (wrapped on the instance, so
    the object stays the same one)."""
    engine = getattr(store, "engine", type(store).__name__)
    for name in STORE_OPERATIONS:
        method = getattr(store, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            continue
        observe = metrics.storage.labels(engine, name).observe

        def timed(method=method, observe=observe):
            @functools.wraps(method)
            async def call(*args, **kwargs):
                started = time.monotonic()
                try:
                    return await method(*args, **kwargs)
                finally:
                    observe(time.monotonic() - started)

            return call

        setattr(store, name, timed())
    return store
