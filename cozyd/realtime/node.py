"""The realtime part of the daemon, a child of its service tree.

``RealtimeParts`` is what ``build_stack`` makes: the fan-out of events to
the websockets and the factory of their connections. ``RealtimeNode`` (a
``MultiService`` started after storage, before the listeners) adds the
Redis bridge as its child when ``[realtime] url`` names one, and on stop
closes every websocket (1001, going away) before the bridge goes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from cozyd.realtime.fanout import Fanout
from cozyd.realtime.hub import EventHub
from cozyd.realtime.redis import RedisBridge
from cozyd.realtime.websocket import RealtimeFactory
from cozyd.redisurl import RedisAddress

log = Logger()


@attrs.define
class RealtimeParts:
    hub: EventHub
    fanout: Fanout
    factory: RealtimeFactory


class RealtimeNode(MultiService):
    name = "realtime"

    def __init__(
        self,
        parts: Callable[[], RealtimeParts | None],
        *,
        url: str,
        reactor: Any,
        close_timeout: float = 5.0,
    ):
        super().__init__()
        self._parts = parts
        self._url = url
        self._reactor = reactor
        self._close_timeout = close_timeout
        #: This process among the nodes (its own events come back from Redis).
        self.node = secrets.token_hex(8)
        self.bridge: RedisBridge | None = None

    def startService(self) -> None:
        parts = self._parts()
        if self._url and parts is not None and self.bridge is None:
            self.bridge = RedisBridge(
                RedisAddress.parse(self._url),
                parts.hub,
                parts.fanout,
                node=self.node,
                reactor=self._reactor,
            )
            self.bridge.setServiceParent(self)
        super().startService()

    def stopService(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        parts = self._parts()
        if parts is not None and parts.factory.connections:
            closing = parts.factory.close_all()
            closing.addTimeout(self._close_timeout, self._reactor)
            try:
                await closing
            except defer.TimeoutError:
                for connection in list(parts.factory.connections):
                    connection.dropConnection(abort=True)
        await defer.maybeDeferred(super().stopService)
