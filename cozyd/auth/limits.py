"""Per-instance rate limits, counted in memory, as cozy-stack's in-memory
limiter does: a counter per key starts a fixed window at its first hit and
is forgotten when the window is over.

``hit`` answers how the new count stands against the limit: ``OK`` while
under or at it, ``REACHED`` for the first hit past it (act once: block,
warn…), ``EXCEEDED`` for the next ones.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

#: Counters kept at most; the oldest windows are dropped first beyond it.
MAX_COUNTERS = 100_000


class Verdict(enum.Enum):
    OK = "ok"
    REACHED = "reached"
    EXCEEDED = "exceeded"

    @property
    def limited(self) -> bool:
        return self is not Verdict.OK


class RateLimiter:
    def __init__(self, *, seconds: Callable[[], float]):
        self._seconds = seconds
        self._counters: dict[str, list[float]] = {}  # key -> [window end, count]

    def hit(self, key: str, *, limit: int, period: float) -> Verdict:
        now = self._seconds()
        counter = self._counters.get(key)
        if counter is None or counter[0] <= now:
            if len(self._counters) >= MAX_COUNTERS:
                self._purge(now)
            counter = self._counters[key] = [now + period, 0]
        counter[1] += 1
        if counter[1] == limit + 1:
            return Verdict.REACHED
        if counter[1] > limit:
            return Verdict.EXCEEDED
        return Verdict.OK

    def count(self, key: str) -> int:
        counter = self._counters.get(key)
        return 0 if counter is None or counter[0] <= self._seconds() else int(counter[1])

    def reset(self, key: str) -> None:
        self._counters.pop(key, None)

    def _purge(self, now: float) -> None:
        for key in [k for k, (end, _) in self._counters.items() if end <= now]:
            del self._counters[key]
        while len(self._counters) >= MAX_COUNTERS:
            del self._counters[next(iter(self._counters))]
