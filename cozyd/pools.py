"""Named worker pools: blocking work off the reactor thread, kept apart by kind.

Two kinds of blocking work must not wait behind each other:

- ``storage``: SQLite calls of the embedded engine. Jobs are serialised per
  file *before* they reach the pool (see ``cozyd.storage.sqlite``), so a
  pool thread never waits on a lock and a busy instance cannot hold every
  thread.
- ``hashing``: password hashing (scrypt, PBKDF2), slow on purpose. A small
  pool with a bounded queue: past the bound a new job is refused at once
  (``PoolBusy``, a 503) instead of queueing for ever, and its threads run at
  a lower CPU priority, so a flood of wrong passphrases costs the other
  instances' requests next to nothing.

A pool's ``run(function, *args)`` returns a Deferred of the result: it is
the ``run_blocking`` callable the domain modules take (see
``cozyd.service``). ``WorkerPools.start`` / ``stop`` follow the daemon's
service. ``inline_pools()`` gives pools that run every job at once in the
calling thread, for the in-memory test stack.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import attrs
from twisted._threads import AlreadyQuit
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cozyd.errors import ServiceUnavailable

log = Logger()
T = TypeVar("T")

#: Defaults of the daemon's pools.
STORAGE_THREADS = 8
HASHING_THREADS = 2
HASHING_QUEUE = 64  # jobs waiting or running; more are refused
HASHING_NICENESS = 10


class PoolBusy(ServiceUnavailable):
    """A bounded pool has as many jobs as it takes: try again later."""

    code = "too_busy"

    def __init__(self, name: str):
        super().__init__("the server is busy; try again later")
        self.pool = name


class Pool(Protocol):
    name: str

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class WorkerPool:
    """A named pool of threads (``PoolThread-cozyd-<name>-N`` in thread
    listings).

    ``max_pending``: how many jobs may be queued or running at once (None:
    no bound); ``niceness``: added to the CPU niceness of the pool's threads
    (Linux sets it per thread; elsewhere it is ignored).
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        *,
        threads: int,
        max_pending: int | None = None,
        niceness: int = 0,
    ):
        if threads < 1 or (max_pending is not None and max_pending < 1):
            raise ValueError("a pool needs at least one thread and one job")
        self.name = name
        self._reactor = reactor
        self._threads = ThreadPool(minthreads=0, maxthreads=threads, name=f"cozyd-{name}")
        self._max_pending = max_pending
        self._niceness = niceness
        self._niced = threading.local()
        self._pending = 0
        self._shutdown_trigger: Any = None

    def __repr__(self) -> str:
        return f"<WorkerPool {self.name} threads={self._threads.max}>"

    @property
    def threads(self) -> int:
        return self._threads.max

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    @property
    def started(self) -> bool:
        return bool(self._threads.started)

    def start(self) -> None:
        if self._threads.started:
            return
        self._threads.start()
        # Also stopped with the reactor, whoever forgot to stop it.
        if hasattr(self._reactor, "addSystemEventTrigger"):
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_threads
            )

    def stop(self) -> None:
        """Finish the jobs under way, then end the threads."""
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._stop_threads()

    def _stop_threads(self) -> None:
        self._shutdown_trigger = None
        if self._threads.started and not self._threads.joined:
            try:
                self._threads.stop()
            except AlreadyQuit:
                pass  # its worker team was told to quit already (reactor shutdown)

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred:
        """``function(*args, **kwargs)`` in a thread of the pool; ``PoolBusy``
        (raised at once) when the pool is at its bound."""
        if self._max_pending is not None and self._pending >= self._max_pending:
            raise PoolBusy(self.name)
        if not self._threads.started:
            self.start()
        self._pending += 1
        job = function
        if self._niceness:
            job = self._niced_job(function)
        d = deferToThreadPool(self._reactor, self._threads, job, *args, **kwargs)
        d.addBoth(self._done)
        return d

    __call__ = run

    def _done(self, result: Any) -> Any:
        self._pending -= 1
        return result

    def _niced_job(self, function: Callable[..., T]) -> Callable[..., T]:
        def job(*args: Any, **kwargs: Any) -> T:
            if not getattr(self._niced, "done", False):
                self._niced.done = True
                _lower_thread_priority(self._niceness)
            return function(*args, **kwargs)

        return job


def _lower_thread_priority(niceness: int) -> None:
    try:
        # On Linux a "process" priority given a thread id applies to that
        # thread alone.
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness
        )
    except (AttributeError, OSError):
        pass


class InlinePool:
    """The pool interface, running each job at once in the calling thread
    (the in-memory test stack: no threads, results already fired)."""

    def __init__(self, name: str):
        self.name = name
        self.pending = 0

    def __repr__(self) -> str:
        return f"<InlinePool {self.name}>"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred:
        return defer.maybeDeferred(function, *args, **kwargs)

    __call__ = run


@attrs.define
class WorkerPools:
    """The daemon's pools, started before storage and stopped after it."""

    storage: Pool
    hashing: Pool

    def all(self) -> list[Pool]:
        return [self.storage, self.hashing]

    def start(self) -> None:
        for pool in self.all():
            pool.start()
        log.info(
            "worker pools started: {pools}",
            pools=", ".join(repr(pool) for pool in self.all()),
        )

    def stop(self) -> None:
        for pool in reversed(self.all()):
            pool.stop()


def daemon_pools(
    reactor: Any,
    *,
    storage_threads: int = STORAGE_THREADS,
    hashing_threads: int = HASHING_THREADS,
    hashing_queue: int = HASHING_QUEUE,
) -> WorkerPools:
    return WorkerPools(
        storage=WorkerPool(reactor, "storage", threads=storage_threads),
        hashing=WorkerPool(
            reactor,
            "hashing",
            threads=hashing_threads,
            max_pending=hashing_queue,
            niceness=HASHING_NICENESS,
        ),
    )


def inline_pools() -> WorkerPools:
    return WorkerPools(storage=InlinePool("storage"), hashing=InlinePool("hashing"))
