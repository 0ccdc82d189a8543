"""The HTTP site both listeners serve: twisted.web's, refusing request bodies
larger than ``[server] max_body_size`` before they are read.

twisted.web reads a whole request body (into memory, or into a temporary
file past 100 kB) before any resource sees the request, so the size check
of ``common.read_body`` comes too late to spare the server the upload.
``BodyLimitSite`` answers 413 as soon as the headers declare a larger body
(``Content-Length``), before reading any of it, and as soon as a chunked
body grows past the limit, keeping nothing of it. ``read_body`` still
checks what reaches the handlers (the in-memory test stack has no site,
and some routes allow less than the site does).

The 413 carries the JSON body the rest of cozyd gives errors:
CouchDB-style ``{"error", "reason"}`` under ``/data``, JSON:API elsewhere
(see ``common.error_response``). It is logged like any request, through
the site's access-log formatter.

After a refusal the connection is closed: first the server's side of it,
once the answer is sent, then the whole connection after ``linger``
seconds, or sooner if the client closes it. Until then what the client
still sends is read and dropped. Closing at once while the client is still
uploading would make the kernel answer its data with a reset, which may
destroy the 413 before the client reads it.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server

from cozyd.errors import PayloadTooLarge
from cozyd.web.common import error_response


def error_style(path: bytes) -> str:
    """How errors are rendered at ``path`` (see the module docstring)."""
    return "couchdb" if path == b"/data" or path.startswith(b"/data/") else "jsonapi"


class BodyLimitRequest(server.Request):
    """A request whose body may not exceed its site's ``max_body_size``.

    ``gotLength`` and ``handleContentChunk`` are what ``HTTPChannel``
    calls while it reads a body, before the request is complete.
    """

    _refused = False
    _body_size = 0
    _linger_call: Any = None

    def _limit(self) -> int | None:
        return getattr(getattr(self.channel, "site", None), "max_body_size", None)

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self._refuse(limit)  # not a byte of the body read
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return  # what the client sends after a refusal is dropped
        self._body_size += len(data)
        limit = self._limit()
        if limit is not None and self._body_size > limit:
            self._refuse(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # the whole refused body arrived: it was answered already
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        super().connectionLost(reason)

    def _refuse(self, limit: int) -> None:
        """Answer 413 now, then close the connection (module docstring)."""
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

        error = PayloadTooLarge(f"the request body is larger than {limit} bytes")
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

        transport = channel.transport
        close_writing = getattr(transport, "loseWriteConnection", None)
        if close_writing is None:
            transport.loseConnection()
            return
        close_writing()
        linger = getattr(getattr(channel, "site", None), "linger", 0)
        self._linger_call = channel.callLater(linger, transport.loseConnection)


class BodyLimitSite(server.Site):
    """A ``Site`` whose requests are ``BodyLimitRequest``s."""

    requestFactory = BodyLimitRequest
    #: Seconds a connection whose request was refused goes on reading (and
    #: dropping) what the client sends before it is closed.
    linger = 2.0

    def __init__(self, resource: Any, *, max_body_size: int, **kwargs: Any):
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
