"""Host header → Instance, with a small cache.

Every public request resolves its instance here. Answers (including "no
such instance") are cached for a few seconds; the lifecycle invalidates a
domain as soon as it changes it, so a single node never serves stale state,
and several nodes converge within the TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from cozyd.instance.domain import normalize_host
from cozyd.instance.model import Instance

MAX_CACHED_HOSTS = 10_000


class InstanceRegistry:
    def __init__(
        self, find_by_host: Callable, *, seconds: Callable[[], float], ttl: float = 5.0
    ):
        self._find_by_host = find_by_host
        self._seconds = seconds
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[float, Instance | None]] = OrderedDict()

    def peek(self, host: str) -> tuple[bool, Instance | None]:
        """``(True, answer)`` when the answer for ``host`` is cached and
        fresh, so the common case needs no asynchronous step."""
        host = normalize_host(host)
        cached = self._cache.get(host)
        if cached is not None and cached[0] > self._seconds():
            self._cache.move_to_end(host)
            return True, cached[1]
        return False, None

    async def resolve(self, host: str) -> Instance | None:
        known, instance = self.peek(host)
        if known:
            return instance
        host = normalize_host(host)
        now = self._seconds()
        instance = await self._find_by_host(host)
        self._cache[host] = (now + self._ttl, instance)
        self._cache.move_to_end(host)
        while len(self._cache) > MAX_CACHED_HOSTS:
            self._cache.popitem(last=False)
        return instance

    def invalidate(self, domain: str) -> None:
        """Forget ``domain`` and every host that resolved to it."""
        stale = [
            host
            for host, (_, inst) in self._cache.items()
            if host == domain or (inst is not None and inst.domain == domain)
        ]
        for host in stale:
            del self._cache[host]
