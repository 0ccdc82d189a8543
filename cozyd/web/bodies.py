"""Request bodies: the one JSON reader, and streamed bodies.

``read_json(request)`` reads the whole body (at most the route's or the
site's ``max_body_size``: 413 beyond) and parses strict JSON (UTF-8, no
NaN/Infinity, at most ``MAX_JSON_DEPTH`` levels); ``BadRequest`` for bad
JSON, or ``bad(reason)`` when the caller answers in its own shape.

A route declared with ``body=streamed(...)`` gets its body as it arrives::

    async def upload(self, request):
        digest = hashlib.sha256()
        size = await body_stream(request).read_into(digest.update)

``read_into(sink)`` calls ``sink(chunk)`` for each chunk, in order, and
returns the body's size once the last one is in. ``sink`` may return an
awaitable (a write to disk, say): the next chunk waits for it, and the
connection stops reading from the client meanwhile (back-pressure: the
client's TCP window fills, nothing piles up in memory). A client that goes
away fails ``read_into`` with ``BodyAborted``; a body past the route's
limit is answered 413 by the site and fails it with ``PayloadTooLarge``.
On the in-memory test stack (no cozyd site) the body was buffered
already and is handed over in chunks all the same.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from cozyd import jsontext
from cozyd.errors import BadRequest, CozyError, PayloadTooLarge
from cozyd.web.routing import state_of

#: Deepest nesting of arrays and objects accepted in a JSON body.
MAX_JSON_DEPTH = 200
#: Used when nothing set a limit (a resource served outside the roots).
DEFAULT_MAX_BODY_SIZE = 10 * 1000 * 1000
#: Bytes queued for a streamed route before the connection stops reading.
HIGH_WATER = 256 * 1024
#: Size of the chunks a buffered body is handed over in.
CHUNK_SIZE = 64 * 1024


def body_limit(request: IRequest) -> int:
    limit = state_of(request).max_body_size
    return DEFAULT_MAX_BODY_SIZE if limit is None else limit


def read_body(request: IRequest, max_size: int | None = None) -> bytes:
    """The request body, or ``PayloadTooLarge`` (413) when it is larger than
    ``max_size`` bytes (by default the route's limit), told by
    Content-Length or found while reading."""
    if max_size is None:
        max_size = body_limit(request)
    declared = request.getHeader(b"content-length")
    if declared is not None:
        try:
            if int(declared) > max_size:
                raise PayloadTooLarge(f"the request body is larger than {max_size} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    content = getattr(request, "content", None)
    if content is None:
        return b""
    content.seek(0)
    data = content.read(max_size + 1)
    if len(data) > max_size:
        raise PayloadTooLarge(f"the request body is larger than {max_size} bytes")
    return data


#: ``empty`` of ``json_of``: an empty body is an error, not a value.
_REQUIRED: Any = object()


def parse_json(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, at most ``max_depth`` levels of
    nesting): the value, or ``ValueError`` saying what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body is not valid UTF-8") from None
    try:
        value = jsontext.decode_strict(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    if json_depth(value) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(value):
        # json.loads takes "\ud800" alone; nothing downstream can store it.
        raise LoneSurrogate()
    return value


class LoneSurrogate(ValueError):
    """JSON that escapes half a surrogate pair: no engine can store it."""

    def __init__(self) -> None:
        super().__init__("a lone surrogate (\\uD800-\\uDFFF) is not valid Unicode")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether a string (value or key) of a parsed JSON value cannot be
    encoded in UTF-8 (escaped surrogate pairs were joined by the parser)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_depth(value: Any) -> int:
    """Levels of arrays and objects in a parsed JSON value (0 for a scalar)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(
    request: IRequest,
    max_size: int | None = None,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    empty: Any = _REQUIRED,
    bad: Callable[[str], Exception] | None = None,
) -> Any:
    """``read_body`` then ``parse_json``; ``bad(reason)`` (by default a
    ``BadRequest``) for what is not JSON. ``empty``: the value of an empty
    body, if it is not an error."""
    data = read_body(request, max_size)
    if not data and empty is not _REQUIRED:
        return empty
    try:
        return parse_json(data, max_depth=max_depth)
    except ValueError as e:
        if bad is not None:
            raise bad(str(e)) from None
        raise BadRequest(str(e), code="bad_json") from None


# =============================================================================
# Streamed bodies
# =============================================================================
class BodyAborted(CozyError):
    """The client went away before the whole body came."""

    status = 400
    code = "body_aborted"


class BodyStream:
    """A body arriving chunk by chunk (module docstring). The site calls
    ``feed``, ``end`` and ``fail``; the handler calls ``read_into`` once."""

    def __init__(
        self,
        *,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ):
        self._pause_transport = pause
        self._resume_transport = resume
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._sink: Callable[[bytes], Any] | None = None
        self._busy: defer.Deferred | None = None
        self._done: defer.Deferred | None = None
        self._ended = False
        self._failure: Failure | None = None
        self.received = 0
        self.complete = False

    # -- the site's side ----------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self.received += len(data)
        if self._sink is None or self._busy is not None or self._queue:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > HIGH_WATER:
                self._pause()
            return
        self._deliver(data)

    def end(self) -> None:
        self._ended = True
        self._settle()

    def fail(self, error: BaseException) -> None:
        if self._failure is not None or self.complete:
            return
        self._failure = Failure(error)
        self._queue.clear()
        self._queued = 0
        self._settle()

    # -- the handler's side --------------------------------------------------------
    def read_into(self, sink: Callable[[bytes], Any]) -> defer.Deferred:
        """Feed every chunk to ``sink``; fires with the body's size."""
        if self._sink is not None:
            raise RuntimeError("a body is read once")
        self._sink = sink
        self._done = defer.Deferred(lambda _: self.fail(BodyAborted("cancelled")))
        done = self._done
        self._drain()
        return done

    # -- inside -----------------------------------------------------------------------
    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._pause_transport()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resume_transport()

    def _deliver(self, data: bytes) -> None:
        assert self._sink is not None
        try:
            result = self._sink(data)
        except Exception:
            self.fail_with(Failure())
            return
        if inspect.isawaitable(result):
            d = defer.ensureDeferred(result)
            if not d.called:
                self._busy = d
                self._pause()
                d.addBoth(self._sink_ready)
                return
            d.addErrback(self.fail_with)

    def fail_with(self, failure: Failure) -> None:
        self.fail(failure.value)

    def _sink_ready(self, result: Any) -> None:
        self._busy = None
        if isinstance(result, Failure):
            self.fail_with(result)
            return
        self._drain()

    def _drain(self) -> None:
        while self._queue and self._busy is None and self._failure is None:
            data = self._queue.popleft()
            self._queued -= len(data)
            self._deliver(data)
        if not self._queue and self._busy is None:
            self._resume()
        self._settle()

    def _settle(self) -> None:
        done = self._done
        if done is None or done.called:
            return
        if self._failure is not None:
            self._resume()
            self._done = None
            done.errback(self._failure)
        elif self._ended and not self._queue and self._busy is None:
            self.complete = True
            self._done = None
            done.callback(self.received)


def body_stream(request: IRequest) -> BodyStream:
    """The body of a streamed route: fed by the site as it arrives, or (on
    a site that buffered it) from the buffer."""
    state = state_of(request)
    if state.body is not None:
        return state.body
    stream = BodyStream()
    content = getattr(request, "content", None)
    if content is not None:
        content.seek(0)
        while chunk := content.read(CHUNK_SIZE):
            stream.feed(chunk)
    stream.end()
    state.body = stream
    return stream
