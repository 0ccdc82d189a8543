"""The listeners: a site per API on a Twisted endpoint, drained on stop.

``ServingSite`` is the HTTP site (``cozyd.web.site.CozySite``) with what
the daemon's lifecycle needs around it, kept out of the site itself:

- it knows its open connections, so that stopping can wait for the
  requests in flight (``drain``): idle keep-alive connections are closed
  at once, busy ones once their answer is out, and whatever is left when
  the grace period ends is aborted;
- it writes the access log as a structured event (namespace
  ``cozyd.access``; fields ``host``, ``method``, ``path`` without the
  query string, ``status``, ``bytes``, ``duration``) and counts the
  request in the metrics.

``ListenerService`` listens on an endpoint description
(``serverFromString``) once started, refuses a non-loopback address for
the admin API unless allowed, and drains its site when stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import address as tw_address
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from cozyd.config import is_loopback
from cozyd.web.site import CozySite

access_log = Logger(namespace="cozyd.access")
ACCESS_FORMAT = '{host} "{method} {path}" {status} {bytes} {duration_ms}ms'
log = Logger()


class StartError(Exception):
    """A start failure told in one line (no traceback)."""


def _timed(request_class: type) -> type:
    class TimedRequest(request_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.cozyd_started = time.monotonic()

    TimedRequest.__name__ = request_class.__name__
    return TimedRequest


def _text(value: bytes | None, limit: int = 200) -> str:
    if not value:
        return "-"
    text = value[:limit].decode("utf-8", "replace")
    if text.isprintable() and '"' not in text:
        return text
    return "".join(c if c.isprintable() and c != '"' else "?" for c in text)


class ServingSite(CozySite):
    def __init__(self, resource: Any, *, listener: str, metrics: Any = None, **kwargs: Any):
        super().__init__(resource, **kwargs)
        self.requestFactory = _timed(self.requestFactory)
        self.listener = listener
        self.metrics = metrics
        self.channels: set = set()
        self.draining = False
        self._drained: defer.Deferred | None = None

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        site = self
        lost = channel.connectionLost

        def connection_lost(reason):
            site.channels.discard(channel)
            try:
                return lost(reason)
            finally:
                site._check_drained()

        channel.connectionLost = connection_lost
        self.channels.add(channel)
        return channel

    # -- access log and metrics ---------------------------------------------
    def log(self, request) -> None:
        path = (request.uri or b"").split(b"?", 1)[0]
        started = getattr(request, "cozyd_started", None)
        duration = time.monotonic() - started if started is not None else 0.0
        status = request.code
        size = request.sentLength or 0
        fields = {
            "host": _text(request.getHeader(b"host")),
            "method": _text(request.method, 20),
            "path": _text(path, 1000),
            "status": status,
            "bytes": size,
            "duration_ms": round(duration * 1000, 1),
        }
        access_log.info(
            ACCESS_FORMAT,
            duration=round(duration, 6),
            # The line already made (``str.format``, one template), for the
            # text log: twisted.logger formatting the event again cost as
            # much as the rest of the access log.
            cozyd_line=ACCESS_FORMAT.format(**fields),
            **fields,
        )
        if self.metrics is not None:
            self.metrics.request_done(self.listener, path, status, duration)

    # -- draining ------------------------------------------------------------
    def _idle(self, channel) -> bool:
        # (twisted.web wraps its HTTPChannel to negotiate HTTP/2)
        inner = getattr(channel, "_channel", channel)
        return not getattr(inner, "requests", None)

    @staticmethod
    def _transport(channel) -> Any:
        inner = getattr(channel, "_channel", channel)
        return getattr(inner, "transport", None)

    @staticmethod
    def _not_persistent(channel) -> None:
        inner = getattr(channel, "_channel", channel)
        inner.persistent = False

    def drain(self) -> defer.Deferred:
        """Fires once every connection is closed: idle ones at once, busy
        ones after their answer."""
        self.draining = True
        for channel in list(self.channels):
            if self._idle(channel) and self._transport(channel) is not None:
                self._transport(channel).loseConnection()
            else:
                self._not_persistent(channel)
        self._drained = defer.Deferred()
        d = self._drained
        self._check_drained()
        return d

    def _check_drained(self) -> None:
        if not self.draining:
            return
        for channel in list(self.channels):
            if (
                self._idle(channel)
                and self._transport(channel) is not None
                and not getattr(channel, "_cozyd_closing", False)
            ):
                channel._cozyd_closing = True
                self._transport(channel).loseConnection()
        if not self.channels and self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def abort_all(self) -> int:
        left = list(self.channels)
        for channel in left:
            transport = self._transport(channel)
            if transport is not None:
                transport.abortConnection()
        return len(left)


def describe_address(description: str, address: Any) -> str:
    kind = description.split(":", 1)[0].lower()
    scheme = "https" if kind == "ssl" else "http"
    if isinstance(address, (tw_address.IPv4Address, tw_address.IPv6Address)):
        shown = f"[{address.host}]" if ":" in address.host else address.host
        return f"{scheme}://{shown}:{address.port}/"
    if isinstance(address, tw_address.UNIXAddress):
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"
    return str(address)


class ListenerService(Service):
    """One API on one endpoint; stop: stop listening, drain, abort the rest."""

    def __init__(
        self,
        name: str,
        description: str,
        site_factory: Callable[[], ServingSite],
        reactor,
        *,
        grace: float,
        loopback_only: bool = False,
    ):
        self.name = name
        self.description = description
        self._site_factory = site_factory
        self._reactor = reactor
        self._grace = grace
        self._loopback_only = loopback_only
        self.site: ServingSite | None = None
        self.port: Any = None

    def startService(self) -> defer.Deferred:
        super().startService()
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.site = self._site_factory()
        try:
            endpoint = endpoints.serverFromString(self._reactor, self.description)
        except Exception as exc:  # a bad key or certificate, a bad description
            raise StartError(
                f"{self.name}: cannot use {self.description!r}: {_reason(exc)}"
            ) from None
        try:
            self.port = await endpoint.listen(self.site)
        except Exception as exc:
            raise StartError(
                f"{self.name}: cannot listen on {self.description!r}: {_reason(exc)}"
            ) from None
        address = self.port.getHost()
        if (
            self._loopback_only
            and isinstance(address, (tw_address.IPv4Address, tw_address.IPv6Address))
            and not is_loopback(address.host)
        ):
            await self.port.stopListening()
            self.port = None
            raise StartError(
                f"{self.name}: {address.host} is not a loopback address; the admin API "
                "must stay on loopback unless [admin] allow_remote = true"
            )
        log.info(
            "{name} listening on {url}",
            name=self.name,
            url=describe_address(self.description, address),
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()  # new connections are refused now
            self.port = None
        if self.site is None:
            return
        busy = [c for c in self.site.channels if not self.site._idle(c)]
        if busy:
            log.info(
                "{name}: {count} request(s) in flight, waiting up to {grace}s",
                name=self.name,
                count=len(busy),
                grace=self._grace,
            )
        drained = self.site.drain()
        timeout = (
            self._reactor.callLater(self._grace, drained.cancel)
            if self._grace >= 0
            else None
        )
        try:
            await drained
        except defer.CancelledError:
            try:
                left = self.site.abort_all()
            except Exception:
                log.failure("{name}: aborting the connections left", name=self.name)
                return
            log.warn(
                "{name}: {count} connection(s) aborted after the {grace}s grace",
                name=self.name,
                count=left,
                grace=self._grace,
            )
        finally:
            if timeout is not None and timeout.active():
                timeout.cancel()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if not text:
        return name
    return " ".join(text.split())
