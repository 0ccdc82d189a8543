"""The job system's backend on Redis (``[jobs] url = redis://…``): many nodes.

Keys (all under ``cozyd:``):

- ``cozyd:jobs:<worker>``: a list per worker; ``LPUSH`` to queue a job's
  reference, ``RPOP`` to take it (one node gets it);
- ``cozyd:lock:<key>``: ``SET NX PX`` locks;
- ``cozyd:triggers`` (sorted set: member ``<domain>/<trigger id>``, score
  the next time it fires) and ``cozyd:scheduling`` (the triggers a node
  took and is firing, scored by when it took them): a Lua script moves the
  due ones from the first to the second atomically, so one node fires each
  slot; a node that died while firing leaves its members in
  ``scheduling``, put back after ``SCHEDULING_TTL``;
- ``cozyd:wake`` (pub/sub): "a job of <worker> was queued", so idle nodes
  take it at once; ``cozyd:bcast:<topic>``: messages for every node (the
  scheduler's "a trigger was added/deleted").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger

from cozyd.jobs.queue import Ref
from cozyd.redisurl import RedisAddress

log = Logger()

PREFIX = "cozyd:"
WAKE = PREFIX + "wake"

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, 200)
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, 200)
local out = {}
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('ZADD', KEYS[2], ARGV[1], due[i])
  redis.call('HSET', KEYS[3], due[i], due[i + 1])
  table.insert(out, due[i]); table.insert(out, due[i + 1])
end
for i = 1, #stale, 2 do
  local score = redis.call('HGET', KEYS[3], stale[i]) or ARGV[1]
  redis.call('ZADD', KEYS[2], ARGV[1], stale[i])
  table.insert(out, stale[i]); table.insert(out, score)
end
return out
"""

_DONE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        d = defer.maybeDeferred(super().connectionMade)
        backend = self.factory.backend
        channels = [WAKE, *(PREFIX + "bcast:" + t for t in backend.topics)]
        d.addCallback(lambda _: self.subscribe(channels))
        d.addCallback(lambda _: backend._subscribed(self))
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.backend._message(channel, message)


class RedisBackend:
    shared = True

    def __init__(self, url: str, *, node: str = "", reactor: Any = None):
        self.address = RedisAddress.parse(url)
        self._node = node or "node"
        self._reactor = reactor
        self._pool: Any = None
        self._factory: Any = None
        self._ready: defer.Deferred | None = None
        self._wake: list[Callable[[str], None]] = []
        self._listeners: dict[str, list[Callable[[str], None]]] = {}
        self.topics: list[str] = []

    async def start(self) -> None:
        from twisted.internet import reactor as global_reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        args = self.address.connection_args()
        self._pool = await txredisapi.ConnectionPool(
            args["host"],
            args["port"],
            dbid=args["dbid"],
            password=args["password"],
            poolsize=4,
            connectTimeout=10,
            replyTimeout=10,
        )
        reactor = self._reactor if hasattr(self._reactor, "connectTCP") else global_reactor
        factory = txredisapi.SubscriberFactory()
        factory.protocol = _Subscriber
        factory.backend = self
        factory.password = args["password"]
        self._factory = factory
        self._ready = defer.Deferred()
        factory.startConnecting(TCP4ClientEndpoint(reactor, args["host"], args["port"]))
        # Subscribed before anything is pushed: no wake-up is missed.
        await self._ready
        log.info("jobs backend: {address}", address=str(self.address))

    def _subscribed(self, protocol: Any) -> None:
        if self._ready is not None and not self._ready.called:
            self._ready.callback(None)

    async def stop(self) -> None:
        if self._factory is not None:
            try:
                await self._factory.disconnect()
            except Exception:
                log.failure("closing the Redis subscription")
            self._factory = None
        if self._pool is not None:
            await self._pool.disconnect()
            self._pool = None

    # -- queue ----------------------------------------------------------------------
    async def push(self, worker: str, ref: Ref) -> None:
        await self._pool.lpush(PREFIX + "jobs:" + worker, json.dumps(ref))
        await self._pool.publish(WAKE, worker)

    async def pop(self, worker: str) -> Ref | None:
        value = await self._pool.rpop(PREFIX + "jobs:" + worker)
        return json.loads(value) if value else None

    async def length(self, worker: str) -> int:
        return int(await self._pool.llen(PREFIX + "jobs:" + worker))

    def on_wake(self, callback: Callable[[str], None]) -> None:
        self._wake.append(callback)

    # -- locks ----------------------------------------------------------------------
    async def lock(self, key: str, ttl: float) -> bool:
        done = await self._pool.set(
            PREFIX + "lock:" + key,
            self._node,
            pexpire=max(1, int(ttl * 1000)),
            only_if_not_exists=True,
        )
        return bool(done)

    async def unlock(self, key: str) -> None:
        await self._pool.eval(_UNLOCK, [PREFIX + "lock:" + key], [self._node])

    # -- the scheduler's timeline ---------------------------------------------------
    _KEYS = [PREFIX + "triggers", PREFIX + "scheduling", PREFIX + "slots"]

    async def timeline_add(
        self, member: str, due: float, *, only_new: bool = False
    ) -> None:
        if only_new:
            # At start, every node plans every trigger: the first one wins,
            # and a trigger being fired elsewhere is left alone.
            await self._pool.eval(
                "if redis.call('ZSCORE', KEYS[1], ARGV[1]) or "
                "redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end "
                "return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])",
                self._KEYS[:2],
                [member, repr(due)],
            )
        else:
            await self._pool.zadd(self._KEYS[0], due, member)

    async def timeline_remove(self, member: str) -> None:
        await self._pool.zrem(self._KEYS[0], member)
        await self._pool.zrem(self._KEYS[1], member)

    async def timeline_claim(self, now: float, ttl: float) -> list[tuple[str, float]]:
        reply = await self._pool.eval(_CLAIM, self._KEYS, [repr(now), repr(now - ttl)])
        reply = list(reply or [])
        return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def timeline_done(self, member: str, following: float | None) -> None:
        await self._pool.eval(
            _DONE, self._KEYS, [member, "" if following is None else repr(following)]
        )

    # -- broadcast ------------------------------------------------------------------
    def on_broadcast(self, topic: str, callback: Callable[[str], None]) -> None:
        if topic not in self.topics:
            self.topics.append(topic)
        self._listeners.setdefault(topic, []).append(callback)

    async def broadcast(self, topic: str, message: str) -> None:
        await self._pool.publish(PREFIX + "bcast:" + topic, message)

    def _message(self, channel: Any, message: Any) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()
        if isinstance(message, bytes):
            message = message.decode()
        if channel == WAKE:
            for callback in self._wake:
                callback(str(message))
            return
        topic = channel[len(PREFIX + "bcast:") :]
        for callback in self._listeners.get(topic, ()):
            try:
                callback(str(message))
            except Exception:
                log.failure("a broadcast listener failed")


def make_backend(url: str, *, seconds: Callable[[], float], node: str = "", reactor=None):
    """The backend ``[jobs] url`` names: memory when empty, else Redis."""
    if not url:
        from cozyd.jobs.queue import MemoryBackend

        return MemoryBackend(seconds)
    return RedisBackend(url, node=node, reactor=reactor)
