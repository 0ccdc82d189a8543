"""Where queued jobs wait, and the locks of the scheduler.

Two backends with one shape, chosen by ``[jobs] url``:

- ``MemoryBackend`` (no url, one node): a FIFO per worker in this process,
  locks in a dict;
- ``cozyd.jobs.redis.RedisBackend`` (``redis://…``, many nodes): the FIFOs
  are Redis lists (``RPOP`` hands a job to one node only), locks are
  ``SET NX PX`` keys, the time triggers sit in a sorted set, and a pub/sub
  channel wakes the other nodes.

A queue holds *references* (``{"domain", "prefix", "id", "worker"}``): the
job itself is its ``io.cozy.jobs`` document.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

Ref = dict[str, Any]


class Backend(Protocol):
    #: True when other nodes share it (the scheduler then uses ``timeline``).
    shared: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def push(self, worker: str, ref: Ref) -> None: ...

    async def pop(self, worker: str) -> Ref | None: ...

    async def length(self, worker: str) -> int: ...

    async def lock(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds; False if someone holds it."""
        ...

    async def unlock(self, key: str) -> None: ...

    def on_wake(self, callback: Callable[[str], None]) -> None:
        """``callback(worker)`` when a job of ``worker`` was pushed anywhere."""
        ...


class MemoryBackend:
    shared = False

    def __init__(self, seconds: Callable[[], float]):
        self._queues: dict[str, deque[Ref]] = {}
        self._locks: dict[str, float] = {}
        self._seconds = seconds
        self._wake: list[Callable[[str], None]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def push(self, worker: str, ref: Ref) -> None:
        self._queues.setdefault(worker, deque()).append(ref)
        for callback in self._wake:
            callback(worker)

    async def pop(self, worker: str) -> Ref | None:
        queue = self._queues.get(worker)
        return queue.popleft() if queue else None

    async def length(self, worker: str) -> int:
        return len(self._queues.get(worker, ()))

    async def lock(self, key: str, ttl: float) -> bool:
        now = self._seconds()
        if self._locks.get(key, 0) > now:
            return False
        self._locks[key] = now + ttl
        if len(self._locks) > 10_000:  # forget the expired ones now and then
            self._locks = {k: v for k, v in self._locks.items() if v > now}
        return True

    async def unlock(self, key: str) -> None:
        self._locks.pop(key, None)

    def on_wake(self, callback: Callable[[str], None]) -> None:
        self._wake.append(callback)
