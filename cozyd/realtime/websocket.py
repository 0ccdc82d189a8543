"""The ``io.cozy.websocket`` protocol of ``/realtime/``, over autobahn.

Messages, as cozy-stack's ``web/realtime`` speaks them (JSON text frames)::

    client > {"method": "AUTH", "payload": "<token>"}           (first, once)
    client > {"method": "SUBSCRIBE", "payload": {"type": "io.cozy.files"}}
    client > {"method": "SUBSCRIBE", "payload": {"type": "io.cozy.files", "id": "x"}}
    client > {"method": "UNSUBSCRIBE", "payload": {...the same...}}
    server > {"event": "CREATED"|"UPDATED"|"DELETED"|"NOTIFIED",
              "payload": {"type": "...", "id": "...", "doc": {...}}}
    server > {"event": "error", "payload": {"status": "403 Forbidden",
              "code": "forbidden", "title": "...", "source": <the command>}}

The first message must be ``AUTH`` (405 error otherwise, then the
connection is closed); a bad token gets the 401 error and the connection is
closed. After it, other methods get the 405 error and the connection stays;
a message that is not a JSON command closes it (the reference stops
reading). What the caller may do is an ``Access`` (the web layer builds it
from the token's permission set): whether it may subscribe, and, for each
event of an id subscription, whether it may read that document.

Limits, all in ``Limits`` (``[realtime]`` of the configuration):

- messages larger than ``max_message_size`` close the connection (1009);
- more than ``burst`` messages at once, or more than ``messages_per_second``
  sustained, close it (4429);
- at most ``max_subscriptions`` subscriptions: beyond, a 429 error frame;
- no AUTH within ``auth_timeout`` seconds: closed (4408);
- a reader too slow: events wait in a queue of at most ``max_queue`` events
  while the connection's send buffer is full; past that, or when the buffer
  stays full ``write_timeout`` seconds, the connection is closed (1013);
- pings every ``ping_interval`` seconds; no pong ``ping_timeout`` seconds
  later: the connection is dropped.

A closed connection leaves no subscription behind (``onClose``).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from cozyd.realtime.fanout import Fanout, Outgoing

log = Logger()

SUBPROTOCOL = "io.cozy.websocket"

# -- close codes (docs/realtime.md) -------------------------------------------
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server stops
CLOSE_TOO_BIG = 1009  # a message over max_message_size
CLOSE_INTERNAL = 1011
CLOSE_TOO_SLOW = 1013  # the client does not read its events fast enough
CLOSE_BAD_MESSAGE = 4400  # after AUTH, a message that is not a command
CLOSE_UNAUTHORIZED = 4401  # AUTH with an empty or invalid token
CLOSE_AUTH_FIRST = 4405  # the first message was not AUTH
CLOSE_AUTH_TIMEOUT = 4408  # no AUTH in time
CLOSE_FLOOD = 4429  # too many messages

#: Synthetic doctypes readable with a permission on another doctype.
PERMISSION_TYPE = {
    "io.cozy.files.thumbnails": "io.cozy.files",
    "io.cozy.notes.events": "io.cozy.files",
}
#: Doctypes anybody authenticated may subscribe to (as cozy-stack).
FREE_TYPES = frozenset({"io.cozy.sharings.initial_sync", "io.cozy.auth.confirmations"})


class AuthenticationFailed(Exception):
    """The token of an AUTH is not good (empty, invalid, expired, revoked)."""


class Access(Protocol):
    """What an authenticated connection may read (from its token)."""

    def may_subscribe(self, doctype: str, doc_id: str | None) -> bool:
        """GET on the whole doctype (``doc_id`` None), or on that document."""

    def may_read(self, doctype: str, doc_id: str, doc: Any) -> bool:
        """May this event's document be delivered to an id subscription?"""


Authenticate = Callable[[str], Awaitable[Access]]


@attrs.frozen
class Limits:
    max_message_size: int = 1024
    max_subscriptions: int = 1000
    max_queue: int = 1000
    messages_per_second: float = 50.0
    burst: int = 200
    auth_timeout: float = 60.0
    write_timeout: float = 10.0
    ping_interval: float = 54.0
    ping_timeout: float = 6.0
    max_connections: int = 50_000


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def error_frame(status: str, code: str, title: str, source: Any) -> bytes:
    return _dumps(
        {
            "event": "error",
            "payload": {"status": status, "code": code, "title": title, "source": source},
        }
    )


def unauthorized(source: Any) -> bytes:
    return error_frame(
        "401 Unauthorized", "unauthorized", "The authentication has failed", source
    )


def forbidden(doctype: str, source: Any) -> bytes:
    return error_frame(
        "403 Forbidden",
        "forbidden",
        f"The application can't subscribe to {doctype}",
        source,
    )


def unknown_method(method: str, source: Any) -> bytes:
    return error_frame(
        "405 Method Not Allowed",
        "method not allowed",
        f"The {method} method is not supported",
        source,
    )


def missing_type(source: Any) -> bytes:
    return error_frame(
        "404 Page Not Found",
        "page not found",
        "The type parameter is mandatory for SUBSCRIBE",
        source,
    )


def too_many_subscriptions(limit: int, source: Any) -> bytes:
    return error_frame(
        "429 Too Many Requests",
        "too many subscriptions",
        f"A connection holds at most {limit} subscriptions",
        source,
    )


class BadCommand(ValueError):
    pass


def parse_command(message: Any) -> tuple[str, str, str]:
    """``(method, type, id)`` of a command after AUTH, as the reference's
    JSON decoding takes it (a wrong shape is not a command)."""
    if not isinstance(message, dict):
        raise BadCommand("a command is a JSON object")
    method = message.get("method", "")
    payload = message.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(method, str) or not isinstance(payload, dict):
        raise BadCommand("method must be a string and payload an object")
    doctype = payload.get("type", "")
    doc_id = payload.get("id", "")
    if doctype is None:
        doctype = ""
    if doc_id is None:
        doc_id = ""
    if not isinstance(doctype, str) or not isinstance(doc_id, str):
        raise BadCommand("type and id must be strings")
    return method, doctype, doc_id


@implementer(IPushProducer)
class _WriteWatch:
    """Told by the transport when its send buffer is full (pause) and
    drained (resume)."""

    def __init__(self, connection: RealtimeProtocol):
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.transport_full()

    def resumeProducing(self) -> None:
        self._connection.transport_drained()

    def stopProducing(self) -> None:
        pass


class RealtimeProtocol(WebSocketServerProtocol):
    """One ``/realtime/`` connection of one instance (see the module doc)."""

    #: Set before the connection is made (``RealtimeFactory.connection``).
    instance: Any = None
    domain: str = ""
    authenticate: Authenticate | None = None

    def __init__(self) -> None:
        super().__init__()
        self._access: Access | None = None
        self._authenticating = False
        self._subscriptions: set[tuple[str, str | None]] = set()
        self._queue: collections.deque[Outgoing] = collections.deque()
        self._transport_full = False
        self._inbox: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._busy = False
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._auth_call: Any = None
        self._write_call: Any = None
        self._closing = False
        self.closed: defer.Deferred = defer.Deferred()

    # -- life -------------------------------------------------------------------
    @property
    def rt(self) -> RealtimeFactory:
        return self.factory  # type: ignore[return-value]

    def onConnect(self, request: Any) -> str | None:
        # As cozy-stack's upgrader: io.cozy.websocket when offered; a client
        # offering nothing (or something else) is served all the same.
        return SUBPROTOCOL if SUBPROTOCOL in (request.protocols or ()) else None

    def onOpen(self) -> None:
        limits = self.rt.limits
        self._tokens = float(limits.burst)
        self._tokens_at = self.rt.clock.seconds()
        self.rt.connections.add(self)
        self._auth_call = self.rt.clock.callLater(limits.auth_timeout, self._auth_expired)
        try:
            self.transport.registerProducer(_WriteWatch(self), True)
        except RuntimeError:
            # Someone else's producer is there already: no pause signal then,
            # the write timeout and the queue bound still hold.
            pass

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self._closing = True
        self._release()
        if not self.closed.called:
            self.closed.callback(code)

    def _release(self) -> None:
        self.authenticate = None
        for call in (self._auth_call, self._write_call):
            if call is not None and call.active():
                call.cancel()
        self._auth_call = self._write_call = None
        if self._subscriptions:
            self.rt.fanout.unsubscribe_all(self.instance, self._subscriptions, self)
            self._subscriptions.clear()
        self._queue.clear()
        self._inbox.clear()
        self.rt.connections.discard(self)

    def close_with(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` (any of the codes above)."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self._inbox.clear()
        if self.state == WebSocketProtocol.STATE_OPEN:
            # sendClose refuses 1009/1013; the frame itself takes any code.
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])
        else:
            self.dropConnection(abort=True)
        # Nothing more for it, even before the closing handshake is over.
        if self._subscriptions:
            self.rt.fanout.unsubscribe_all(self.instance, self._subscriptions, self)
            self._subscriptions.clear()

    def _auth_expired(self) -> None:
        self._auth_call = None
        if self._access is None:
            self.close_with(CLOSE_AUTH_TIMEOUT, "no AUTH in time")

    # -- what the client says -----------------------------------------------------
    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        limit = self.rt.limits.max_message_size
        if not self.failedByMe and self.message_data_total_length > limit:
            self._closing = True
            self._max_message_size_exceeded(
                self.message_data_total_length,
                limit,
                f"messages are at most {limit} bytes",
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._closing:
            return
        if not self._take_token():
            self.close_with(CLOSE_FLOOD, "too many messages")
            return
        if self._busy:
            if len(self._inbox) >= 32:
                self.close_with(CLOSE_FLOOD, "too many messages")
                return
            self._inbox.append((payload, isBinary))
            return
        self._handle(payload)

    def _take_token(self) -> bool:
        limits = self.rt.limits
        now = self.rt.clock.seconds()
        self._tokens = min(
            float(limits.burst),
            self._tokens + (now - self._tokens_at) * limits.messages_per_second,
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _handle(self, payload: bytes) -> None:
        # Text frames are UTF-8 already (autobahn checks); binary frames are
        # read as JSON too, as the reference's reader does.
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            message = _INVALID
        if self._access is None:
            self._busy = True
            d = defer.Deferred.fromCoroutine(self._auth(message))
            d.addErrback(self._failed)
            d.addBoth(self._done)
            return
        self._command(message)

    def _done(self, _: Any) -> None:
        self._busy = False
        while self._inbox and not self._busy and not self._closing:
            payload, _binary = self._inbox.popleft()
            self._handle(payload)

    def _failed(self, failure: Any) -> None:
        log.failure("realtime connection of {domain}", failure, domain=self.domain)
        self.close_with(CLOSE_INTERNAL, "internal error")

    async def _auth(self, message: Any) -> None:
        # The reference decodes this one into a map of strings.
        source = (
            {k: v for k, v in message.items() if isinstance(v, str)}
            if isinstance(message, dict)
            else None
        )
        method = message.get("method") if isinstance(message, dict) else None
        method = method if isinstance(method, str) else ""
        if method.upper() != "AUTH":
            self._send_raw(unknown_method(method, source))
            self.close_with(CLOSE_AUTH_FIRST, "AUTH must come first")
            return
        token = message.get("payload")
        if not isinstance(token, str) or not token or self.authenticate is None:
            self._send_raw(unauthorized(source))
            self.close_with(CLOSE_UNAUTHORIZED, "authentication failed")
            return
        try:
            access = await self.authenticate(token)
        except AuthenticationFailed:
            if not self._closing:
                self._send_raw(unauthorized(source))
                self.close_with(CLOSE_UNAUTHORIZED, "authentication failed")
            return
        # The handshake request the authentication needed is not kept.
        self.authenticate = None
        if self._closing:
            return
        self._access = access
        if self._auth_call is not None and self._auth_call.active():
            self._auth_call.cancel()
        self._auth_call = None

    def _command(self, message: Any) -> None:
        if isinstance(message, dict) and str(message.get("method")).upper() == "AUTH":
            # A second AUTH: told it is not a method here (the connection
            # keeps the permissions of its first token).
            method = message["method"]
            self._send_raw(unknown_method(method, {"method": method}))
            return
        try:
            method, doctype, doc_id = parse_command(message)
        except BadCommand as exc:
            self.close_with(CLOSE_BAD_MESSAGE, str(exc))
            return
        source = {"method": method, "payload": {"type": doctype, "id": doc_id}}
        verb = method.upper()
        if verb not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self._send_raw(unknown_method(method, source))
            return
        if not doctype:
            self._send_raw(missing_type(source))
            return
        assert self._access is not None
        if doctype not in FREE_TYPES and not self._access.may_subscribe(
            doctype, doc_id or None
        ):
            self._send_raw(forbidden(doctype, source))
            return
        key = (doctype, doc_id or None)
        if verb == "SUBSCRIBE":
            if key in self._subscriptions:
                return
            limit = self.rt.limits.max_subscriptions
            if len(self._subscriptions) >= limit:
                self._send_raw(too_many_subscriptions(limit, source))
                return
            self._subscriptions.add(key)
            self.rt.fanout.subscribe(self.instance, doctype, doc_id or None, self)
        else:
            if key in self._subscriptions:
                self._subscriptions.discard(key)
                self.rt.fanout.unsubscribe(self.instance, doctype, doc_id or None, self)

    # -- what the server says ---------------------------------------------------
    def push(self, outgoing: Outgoing, watched: bool) -> None:
        """An event of a topic this connection subscribed to."""
        if self._closing or self.state != WebSocketProtocol.STATE_OPEN:
            return
        if watched:
            event = outgoing.event
            if event["doctype"] not in FREE_TYPES and not self._access.may_read(  # type: ignore[union-attr]
                event["doctype"], event["id"], event["doc"]
            ):
                return
        if self._transport_full or self._queue:
            if len(self._queue) >= self.rt.limits.max_queue:
                self._too_slow(f"{len(self._queue)} events waiting")
                return
            self._queue.append(outgoing)
            return
        self._send_outgoing(outgoing)

    def _send_outgoing(self, outgoing: Outgoing) -> None:
        prepared = outgoing.prepared
        if prepared is None:
            prepared = outgoing.prepared = self.rt.prepareMessage(outgoing.payload)
        if self._perMessageCompress is None and not self.send_queue:
            # What sendPreparedMessage ends in, without the debug log line
            # whose arguments autobahn formats on every call (a third of
            # the cost of a fan-out to 10,000 connections).
            write_now(self.transport, prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    def _send_raw(self, payload: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN and not self._closing:
            self.sendMessage(payload, isBinary=False)

    def transport_full(self) -> None:
        self._transport_full = True
        if self._write_call is None and not self._closing:
            self._write_call = self.rt.clock.callLater(
                self.rt.limits.write_timeout, self._write_expired
            )

    def transport_drained(self) -> None:
        self._transport_full = False
        if self._write_call is not None:
            if self._write_call.active():
                self._write_call.cancel()
            self._write_call = None
        while self._queue and not self._transport_full and not self._closing:
            self._send_outgoing(self._queue.popleft())

    def _write_expired(self) -> None:
        self._write_call = None
        if self._transport_full:
            self._too_slow("nothing read for a while")

    def _too_slow(self, why: str) -> None:
        log.info(
            "closing a realtime connection of {domain}: too slow ({why})",
            domain=self.domain,
            why=why,
        )
        self.close_with(CLOSE_TOO_SLOW, "too slow: events were dropped")


_INVALID = object()


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once when a plain TCP transport has
    nothing buffered (as asyncio's transports do): Twisted's ``write``
    always buffers, then registers the socket for writing and sends on the
    reactor's next turn — two ``epoll_ctl`` calls and a turn for every
    websocket an event goes to. What the socket does not take is handed to
    ``write`` as usual (buffered, in order, with its flow control)."""
    if (
        type(transport) is tcp.Server
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the transport will find itself
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class RealtimeFactory(WebSocketServerFactory):
    """The ``/realtime/`` connections of this node (all instances)."""

    protocol = RealtimeProtocol

    def __init__(self, fanout: Fanout, *, limits: Limits | None = None, clock: Any = None):
        if clock is None:
            from twisted.internet import reactor as clock
        super().__init__(protocols=[SUBPROTOCOL], reactor=clock)
        self.fanout = fanout
        self.limits = limits or Limits()
        self.clock = clock
        self.connections: set[RealtimeProtocol] = set()
        self.setProtocolOptions(
            # The size limit is checked on what comes in only
            # (onMessageFrameBegin): the events we send may be larger.
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            autoPingInterval=self.limits.ping_interval or None,
            autoPingTimeout=self.limits.ping_timeout or None,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
        )

    def connection(
        self, addr: Any, *, instance: Any, domain: str, authenticate: Authenticate
    ):
        """A protocol for one connection of ``instance``."""
        protocol = self.buildProtocol(addr)
        protocol.instance = instance
        protocol.domain = domain
        protocol.authenticate = authenticate
        return protocol

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.limits.max_connections

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server going away"):
        """Close every connection; fires once they are all gone."""
        waits = []
        for connection in list(self.connections):
            waits.append(connection.closed)
            connection.close_with(code, reason)
        return defer.DeferredList(waits, consumeErrors=True)
