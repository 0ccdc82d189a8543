"""Realtime across nodes: this node's events to Redis, the others' from it.

With ``[realtime] url = redis://…`` every node publishes its events on the
Redis channel ``realtime:events`` (cozy-stack's) and listens to it:

- this node's document writes (the hub's firehose) and ``NOTIFIED`` events
  (``Fanout.forward_to``) are published as ``<doctype>,<json>``, the JSON
  being ``{"node", "prefix", "verb", "doctype", "id", "doc"}``;
- a message of another node goes to the websockets here
  (``Fanout.deliver``), never to the hub: ``@event`` triggers fire once, on
  the node that wrote. A node's own messages come back from Redis and are
  skipped (its subscribers had them already, straight from the hub).

Redis is not needed for the local subscribers: while it is unreachable the
node keeps serving them, drops what it would have published, and
reconnects with an exponential back-off (``min_delay`` doubling up to
``max_delay``, with jitter). The outage is logged once when it starts and
once when it ends, with the number of events that could not be sent.
"""

from __future__ import annotations

import json
import random
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from cozyd.realtime.fanout import Fanout
from cozyd.realtime.hub import Event, EventHub
from cozyd.redisurl import RedisAddress

log = Logger()

CHANNEL = "realtime:events"


def encode(node: str, key: str, event: Event) -> str:
    body = {
        "node": node,
        "prefix": key,
        "verb": event["verb"],
        "doctype": event["doctype"],
        "id": event.get("id"),
        "doc": event.get("doc"),
    }
    return f"{event['doctype']},{json.dumps(body, separators=(',', ':'))}"


def decode(message: str | bytes) -> tuple[str, str, Event] | None:
    """``(node, key, event)`` of a message, None if it is not one of ours."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    doctype, comma, text = message.partition(",")
    if not comma:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    node, key, verb = body.get("node"), body.get("prefix"), body.get("verb")
    if not all(isinstance(v, str) and v for v in (node, key, verb)):
        return None
    event: Event = {
        "verb": verb,
        "doctype": body.get("doctype") or doctype,
        "id": body.get("id"),
        "doc": body.get("doc"),
    }
    return node, key, event


class _Owner:
    """What txredisapi's protocols expect of their factory, when they fail
    to authenticate or select the database."""

    isLazy = False

    def __init__(self) -> None:
        self.error: str | None = None

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.error = message

    def addConnection(self, connection: Any) -> None:
        pass

    def delConnection(self, connection: Any) -> None:
        pass


class _Subscriber(txredisapi.SubscriberProtocol):
    bridge: RedisBridge

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.bridge.received(message)


class RedisBridge(Service):
    name = "realtime-redis"

    def __init__(
        self,
        address: RedisAddress,
        hub: EventHub,
        fanout: Fanout,
        *,
        node: str,
        reactor: Any,
        channel: str = CHANNEL,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        connect_timeout: float = 5.0,
    ):
        self.address = address
        self._hub = hub
        self._fanout = fanout
        self.node = node
        self._reactor = reactor
        self.channel = channel
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._connect_timeout = connect_timeout
        self._publisher: txredisapi.RedisProtocol | None = None
        self._subscriber: _Subscriber | None = None
        self._stops: list[Any] = []
        self._loop: defer.Deferred | None = None
        self._sleep: defer.Deferred | None = None
        self._down_since: float | None = None
        self._ever_connected = False
        #: Events published, received from other nodes, dropped (Redis down).
        self.published = 0
        self.received_count = 0
        self.dropped = 0
        #: Fires each time both connections are up (tests wait on it).
        self._ready_waiters: list[defer.Deferred] = []

    # -- service ----------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stops = [
            self._hub.subscribe_all(self.publish),
            self._fanout.forward_to(self.publish),
        ]
        self._loop = defer.Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.failure("the realtime Redis bridge", f))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for stop in self._stops:
            stop()
        self._stops = []
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        for connection in (self._publisher, self._subscriber):
            if connection is not None and connection.transport is not None:
                connection.transport.loseConnection()
        loop = self._loop
        self._loop = None
        if loop is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        loop.addBoth(lambda _: done.callback(None) if not done.called else None)
        return done

    @property
    def connected(self) -> bool:
        return self._publisher is not None and self._subscriber is not None

    def when_connected(self) -> defer.Deferred:
        if self.connected:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    # -- the connection loop ------------------------------------------------------
    def _endpoint(self) -> Any:
        endpoint: Any = endpoints.HostnameEndpoint(
            self._reactor,
            self.address.host,
            self.address.port,
            timeout=self._connect_timeout,
        )
        if self.address.tls:
            from twisted.internet import ssl

            endpoint = endpoints.wrapClientTLS(
                ssl.optionsForClientTLS(self.address.host), endpoint
            )
        return endpoint

    async def _connect(
        self, protocol: txredisapi.RedisProtocol
    ) -> txredisapi.RedisProtocol:
        owner = _Owner()
        protocol.factory = owner  # type: ignore[attr-defined]
        await endpoints.connectProtocol(self._endpoint(), protocol)
        ready = protocol.whenConnected()
        lost = protocol.whenDisconnected()
        first = await defer.DeferredList(
            [ready, lost], fireOnOneCallback=True, consumeErrors=True
        )
        if first[1] == 1 or not protocol._ready:
            raise ConnectionError(owner.error or "the connection was closed")
        return protocol

    def _protocol(self, kind: type) -> Any:
        args = self.address.connection_args()
        return kind(
            charset="utf-8",
            errors="replace",
            password=args["password"],
            dbid=args["dbid"] or None,
            convertNumbers=False,
        )

    async def _run(self) -> None:
        failures = 0
        while self.running:
            publisher = subscriber = None
            try:
                subscriber = self._protocol(_Subscriber)
                subscriber.bridge = self
                await self._connect(subscriber)
                await subscriber.subscribe(self.channel)
                publisher = await self._connect(self._protocol(txredisapi.RedisProtocol))
            except Exception as exc:
                for connection in (subscriber, publisher):
                    if connection is not None and connection.transport is not None:
                        connection.transport.loseConnection()
                if not self.running:
                    return
                self._went_down(exc)
                failures += 1
                delay = min(self._max_delay, self._min_delay * 2 ** min(failures - 1, 16))
                delay *= random.uniform(0.8, 1.2)
                self._sleep = task.deferLater(self._reactor, delay, lambda: None)
                try:
                    await self._sleep
                except defer.CancelledError:
                    return
                finally:
                    self._sleep = None
                continue
            failures = 0
            self._subscriber, self._publisher = subscriber, publisher
            self._came_up()
            await defer.DeferredList(
                [subscriber.whenDisconnected(), publisher.whenDisconnected()],
                fireOnOneCallback=True,
                consumeErrors=True,
            )
            self._subscriber = self._publisher = None
            for connection in (subscriber, publisher):
                if connection.transport is not None:
                    connection.transport.loseConnection()
            if self.running:
                self._went_down(ConnectionError("the connection was lost"))

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return  # logged once per outage
        self._down_since = self._reactor.seconds()
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warn(
            "realtime: Redis at {address} is unreachable ({reason}); serving "
            "this node's subscribers only, and retrying",
            address=str(self.address),
            reason=reason,
        )

    def _came_up(self) -> None:
        if self._down_since is not None:
            log.info(
                "realtime: Redis at {address} is back after {seconds}s "
                "({dropped} events could not be sent meanwhile)",
                address=str(self.address),
                seconds=round(self._reactor.seconds() - self._down_since, 1),
                dropped=self.dropped,
            )
            self._down_since = None
        elif not self._ever_connected:
            log.info(
                "realtime: events go through Redis at {address}", address=str(self.address)
            )
        self._ever_connected = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    # -- events -----------------------------------------------------------------
    def publish(self, key: str, event: Event) -> None:
        """This node's event, for the other nodes."""
        publisher = self._publisher
        if publisher is None:
            self.dropped += 1
            return
        try:
            message = encode(self.node, key, event)
        except (TypeError, ValueError):
            log.failure(
                "an event of {doctype} cannot be encoded", doctype=event.get("doctype")
            )
            return
        self.published += 1
        d = publisher.publish(self.channel, message)
        d.addErrback(lambda _failure: None)  # a lost connection is seen by the loop

    def received(self, message: Any) -> None:
        decoded = decode(message)
        if decoded is None:
            return
        node, key, event = decoded
        if node == self.node:
            return  # delivered here already, from the hub
        self.received_count += 1
        self._fanout.deliver(key, event)
