"""The HTTP site both listeners serve: twisted.web's, with cozyd's edge.

twisted.web reads a whole request body (into memory, or into a temporary
file past 100 kB) before any resource sees the request. ``CozySite``
instead asks its root resource which route the request goes to as soon as
the headers are in (``route_for_uri(method, uri, host)``, see
``cozyd.web.routing``) and applies the route's body policy there:

- every body is refused with 413 once larger than the route's limit
  (``max_size``) or the site's ``max_body_size``: at once when
  ``Content-Length`` says so, before a byte of it is read, or as soon as
  a chunked body grows past it, keeping nothing of it;
- ``NO_BODY`` routes do not keep what a client sends;
- ``streamed`` routes start at once: their handler runs while the body
  arrives and receives its chunks (``cozyd.web.bodies.BodyStream``); the
  connection stops reading from the client while the handler is behind.

The 413 carries the JSON body the rest of cozyd gives errors:
CouchDB-style ``{"error", "reason"}`` under ``/data``, JSON:API elsewhere
(see ``common.error_response``). It is logged like any request, through
the site's access-log formatter.

A request answered before its body is complete (a refusal, or a streamed
route that gives up early) ends its connection: first the server's side
of it, once the answer is sent, then the whole connection after
``linger`` seconds, or sooner if the client closes it. Until then what the
client still sends is read and dropped. Closing at once while the client
is still uploading would make the kernel answer its data with a reset,
which may destroy the answer before the client reads it.

The channel also refuses a request with two ``Host`` headers (400, as
HTTP/1.1 requires), and closes a connection whose request head does not
come whole within ``header_timeout`` seconds (408): a client trickling a
header forever would otherwise hold its connection forever.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.web import http, server

from cozyd.errors import BadRequest, CozyError, PayloadTooLarge
from cozyd.web.bodies import BodyAborted, BodyStream
from cozyd.web.common import error_response
from cozyd.web.routing import BUFFERED, state_of


def error_style(path: bytes) -> str:
    """How errors are rendered at ``path`` (see the module docstring)."""
    return "couchdb" if path == b"/data" or path.startswith(b"/data/") else "jsonapi"


class _Discard:
    """The content file of a body nobody reads."""

    def write(self, data: bytes) -> None:
        pass


#: The bodies Twisted parses into ``request.args`` (the pages' forms); for
#: any other type that parse is skipped: it costs more than the whole
#: route's work on a small JSON write.
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def _is_form(request: server.Request) -> bool:
    ctype = request.requestHeaders.getRawHeaders(b"content-type")
    return bool(ctype) and ctype[0].lstrip().lower().startswith(_FORM_TYPES)


class CozyRequest(server.Request):
    """A request whose body follows its route's policy (module docstring).

    ``gotLength`` and ``handleContentChunk`` are what ``HTTPChannel``
    calls while it reads a body, before the request is complete.
    """

    _refused = False
    _body_size = 0
    _limit_value: int | None = None
    _stream: BodyStream | None = None
    _discard = False
    _body_done = False
    #: The answer went out before the body was complete: the connection ends.
    ends_connection = False

    def _site(self) -> Any:
        return getattr(self.channel, "site", None)

    def gotLength(self, length: int | None) -> None:
        site = self._site()
        limit = getattr(site, "max_body_size", None)
        found = None
        resolve = getattr(getattr(site, "resource", None), "route_for_uri", None)
        command = getattr(self.channel, "_command", b"")
        uri = getattr(self.channel, "_path", b"")
        # Only a request with a body needs its route's policy now (a
        # bodiless one meets one match: its service's, as it renders).
        if resolve is not None and length != 0:
            hosts = self.requestHeaders.getRawHeaders(b"host") or [b""]
            found = resolve(command, uri, hosts[0])
        policy = BUFFERED
        if found is not None:
            policy = found.route.body
            state_of(self).routed = found  # the service need not match it again
        if policy.max_size is not None:
            limit = policy.max_size
        self._limit_value = limit
        if self.requestHeaders.getRawHeaders(b"host", [b""]).__len__() > 1:
            self._refuse(BadRequest("a request carries one Host header"))
            return
        if length is not None and limit is not None and length > limit:
            self._refuse(PayloadTooLarge(f"the request body is larger than {limit} bytes"))
            return  # not a byte of the body read
        if policy.kind == "stream":
            self._start_streaming(command, uri, length)
            return
        if policy.kind == "none" and length != 0:
            self._discard = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused or self.ends_connection:
            return  # what the client sends after a refusal is dropped
        self._body_size += len(data)
        limit = self._limit_value
        if limit is not None and self._body_size > limit:
            self._refuse(PayloadTooLarge(f"the request body is larger than {limit} bytes"))
            return
        if self._stream is not None:
            self._stream.feed(data)
        elif not self._discard:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused or self.ends_connection:
            return  # the whole refused body arrived: it was answered already
        if self._stream is not None:
            self._body_done = True
            self._stream.end()  # the handler runs already
            return
        self._parsePOSTFormSubmission = _is_form(self)
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        # The handler is cancelled first (the request is gone: nothing to
        # answer), then whatever still reads the body learns it.
        super().connectionLost(reason)
        if self._stream is not None:
            self._stream.fail(BodyAborted("the client went away"))

    def _answering_early(self) -> bool:
        return (
            self._stream is not None
            and not self._body_done
            and not self._refused
            and not self._disconnected
        )

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self._answering_early():
            # Answered before the whole body came: no next request on this
            # connection, and no "100 Continue" after the answer.
            self.ends_connection = True
            self.channel.persistent = False
            self.requestHeaders.removeHeader(b"expect")
            self.setHeader(b"Connection", b"close")
        super().write(data)

    def finish(self) -> None:
        if self._answering_early():
            self.ends_connection = True
            self.channel.persistent = False
            self.requestHeaders.removeHeader(b"expect")
            assert self._stream is not None
            self._stream.fail(BodyAborted("answered before the body was read"))
        super().finish()

    # -- streamed routes ---------------------------------------------------------
    def _start_streaming(self, command: bytes, uri: bytes, length: int | None) -> None:
        """Run the request now; its body goes to ``state.body``."""
        transport = self.channel.transport
        self._stream = BodyStream(
            pause=transport.pauseProducing, resume=transport.resumeProducing
        )
        state_of(self).body = self._stream
        self.content = io.BytesIO()
        # (An empty body ends in requestReceived too, which the channel calls
        # next: the channel must see the request through to it first.)
        version = getattr(self.channel, "_version", b"HTTP/1.1")
        # As the channel does once a body is complete (query, then process).
        self._parsePOSTFormSubmission = False  # the body is the route's
        super().requestReceived(command, uri, version)

    # -- refusals ------------------------------------------------------------------
    def _refuse(self, error: CozyError) -> None:
        """Answer ``error`` now, then close the connection (module docstring)."""
        self._refused = True
        channel = self.channel
        # The channel parsed the request line but hands it to the request
        # only once the body is complete: take it from there, for the
        # status line and the access log.
        self.method = getattr(channel, "_command", self.method)
        self.uri = getattr(channel, "_path", self.uri)
        self.clientproto = getattr(channel, "_version", b"HTTP/1.1")
        self.path = self.uri.split(b"?", 1)[0]
        # No "100 Continue" for a body refused, and no request after it.
        self.requestHeaders.removeHeader(b"expect")
        channel.persistent = False
        if self.content is not None:  # the part of a chunked body kept so far
            self.content.close()
            self.content = None
        if self.startedWriting:
            # A streamed route had begun its answer: it cannot be replaced.
            if self._stream is not None:
                self._stream.fail(error)
            channel.transport.loseConnection()
            return

        body = error_response(self, error, error_style(self.path))
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.setHeader(b"Connection", b"close")
        self.setHeader(b"Date", http.datetimeToString())
        self.write(body)
        # Request.finish() would hand the channel on to a next request:
        # this one ends with its connection, so only log it as finish() does.
        self.finished = 1
        factory = getattr(channel, "factory", None)
        if factory is not None:
            factory.log(self)
        close_after_answer(channel)
        if self._stream is not None:
            # The handler learns it; its own answer comes too late to be sent.
            self._stream.fail(error)


def close_after_answer(channel: Any) -> None:
    """Close our side now, the connection after the site's linger."""
    transport = channel.transport
    close_writing = getattr(transport, "loseWriteConnection", None)
    if close_writing is None:
        transport.loseConnection()
        return
    close_writing()
    linger = getattr(getattr(channel, "site", None), "linger", 0)
    call = channel.callLater(linger, transport.loseConnection)
    channel.linger_calls.append(call)


# Kept for the modules and tests that name it.
BodyLimitRequest = CozyRequest


class CozyChannel(http.HTTPChannel):
    """``HTTPChannel`` with a deadline on request heads and the early
    ending of requests answered before their body."""

    _head_call: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.linger_calls: list[Any] = []

    def _header_timeout(self) -> float | None:
        return getattr(getattr(self, "site", None), "header_timeout", None)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_head_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._head_call is None and self.line_mode and not self._handlingRequest:
            self._arm_head_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._disarm_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        if getattr(request, "ends_connection", False):
            # Its body is still coming: read and drop it until the linger
            # ends (the request stays the channel's current one meanwhile).
            close_after_answer(self)
            return
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._disarm_head_deadline()
        for call in self.linger_calls:
            if call.active():
                call.cancel()
        self.linger_calls = []
        super().connectionLost(reason)

    # -- the head deadline -------------------------------------------------------
    def _arm_head_deadline(self) -> None:
        timeout = self._header_timeout()
        if timeout and self._head_call is None:
            self._head_call = self.callLater(timeout, self._head_expired)

    def _disarm_head_deadline(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_expired(self) -> None:
        self._head_call = None
        if self.transport is None or self._handlingRequest:
            return
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.loseConnection()


def _channel_factory(site: Any) -> Any:
    return http._GenericHTTPChannelProtocol(CozyChannel())


class CozySite(server.Site):
    """A ``Site`` of ``CozyRequest``s on ``CozyChannel``s."""

    requestFactory = CozyRequest
    protocol = _channel_factory
    #: Seconds a connection whose request was answered early goes on
    #: reading (and dropping) what the client sends before it is closed.
    linger = 2.0

    def __init__(
        self,
        resource: Any,
        *,
        max_body_size: int,
        header_timeout: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.header_timeout = header_timeout


BodyLimitSite = CozySite
