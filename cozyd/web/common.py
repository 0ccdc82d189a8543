"""Helpers shared by every web service: JSON answers, errors, query args.

A service's Klein app calls ``install_error_handlers(app, style)`` once; its
handlers then raise ``CozyError``s and return ``json_response(...)``.
Anything else that escapes a handler becomes a 500 with a JSON body and a
logged traceback, never a traceback sent to the client.
"""

from __future__ import annotations

import html
import json
from typing import Any

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from cozyd.errors import BadRequest, CozyError, EchoError, NotFound, PayloadTooLarge
from cozyd.instance.model import Instance

JSONAPI = "application/vnd.api+json"
JSON = "application/json"

log = Logger()


def instance_of(request: IRequest) -> Instance:
    """The instance the public root resolved for this request."""
    return request.cozy_instance  # type: ignore[attr-defined]


def render_coroutine(request: IRequest, coroutine, on_error) -> object:
    """Render a handler coroutine from a plain resource's ``render``.

    A coroutine that finished without waiting gives its body at once; else
    the body is written when it comes. A client that goes away cancels the
    handler (Klein does the same for its routes). ``on_error(failure)``
    returns the body for an unexpected failure.
    """
    d = defer.Deferred.fromCoroutine(coroutine)
    if d.called:
        results: list = []
        d.addBoth(results.append)
        if isinstance(results[0], Failure):
            return on_error(results[0])
        return results[0]

    def write(body) -> None:
        if body is NOT_DONE_YET or request.finished or request._disconnected:
            return
        request.write(body)
        request.finish()

    def failed(failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            write(on_error(failure))

    request.notifyFinish().addErrback(lambda _: d.cancel())
    d.addCallbacks(write, failed)
    return NOT_DONE_YET


def json_response(request: IRequest, body: Any, *, status: int = 200,
                  content_type: str = JSON) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(request: IRequest, error: CozyError, style: str = "jsonapi") -> bytes:
    www_authenticate = getattr(error, "www_authenticate", None)
    if www_authenticate:
        request.setHeader(b"WWW-Authenticate", www_authenticate.encode("ascii"))
    if isinstance(error, EchoError):
        return echo_response(request, error)
    if style == "couchdb":
        return json_response(request, error.couchdb(), status=error.status)
    return json_response(request, {"errors": [error.jsonapi()]}, status=error.status,
                         content_type=JSONAPI)


def echo_response(request: IRequest, error: CozyError) -> bytes:
    """Plain text, or ``{"error": …}`` for JSON clients, or a small page."""
    accept = (request.getHeader(b"accept") or b"").decode("ascii", "replace")
    if "application/json" in accept or "application/vnd.api+json" in accept:
        return json_response(request, {"error": error.detail}, status=error.status)
    request.setResponseCode(error.status)
    if "text/html" in accept:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = html.escape(error.detail)
        return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{text}</title>"
                f"</head><body><h1>{error.status}</h1><p>{text}</p></body></html>"
                ).encode("utf-8")
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return error.detail.encode("utf-8")


def install_error_handlers(app: Klein, style: str = "jsonapi") -> None:
    # Klein passes the service instance first when the app is bound to one.
    @app.handle_errors(CozyError)
    def cozy_error(*args: Any) -> bytes:
        request, failure = args[-2:]
        return error_response(request, failure.value, style)

    @app.handle_errors(HTTPException)
    def routing(*args: Any) -> bytes:
        request, failure = args[-2:]
        exc = failure.value
        if exc.code == 405:
            return error_response(request, CozyError("method not allowed", status=405,
                                                     code="method_not_allowed"), style)
        return error_response(request, NotFound("no such route"), style)

    @app.handle_errors(Exception)
    def unexpected(*args: Any) -> bytes:
        request, failure = args[-2:]
        log.failure("unexpected error on {method} {path}", failure,
                    method=request.method.decode("ascii", "replace"),
                    path=request.path.decode("ascii", "replace"))
        error = CozyError("an unexpected error occurred; it has been logged")
        return error_response(request, error, style)


def not_found(request: IRequest, style: str = "jsonapi") -> bytes:
    return error_response(request, NotFound("no such route"), style)


# -- query string -----------------------------------------------------------

def query_text(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"the {name} parameter is not valid UTF-8") from None


def query_bool(request: IRequest, name: str) -> bool | None:
    text = query_text(request, name)
    if text is None:
        return None
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"the {name} parameter must be true or false")


def query_int(request: IRequest, name: str, *, minimum: int | None = None) -> int | None:
    text = query_text(request, name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"the {name} parameter must be an integer") from None
    if minimum is not None and value < minimum:
        raise BadRequest(f"the {name} parameter must be at least {minimum}")
    return value


def query_list(request: IRequest, name: str) -> tuple[str, ...] | None:
    text = query_text(request, name)
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- request bodies ---------------------------------------------------------

#: Deepest nesting of arrays and objects accepted in a JSON body.
MAX_JSON_DEPTH = 200


def read_body(request: IRequest, max_size: int) -> bytes:
    """The request body, or ``PayloadTooLarge`` (413) when it is larger than
    ``max_size`` bytes (told by Content-Length or found while reading)."""
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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, at most ``max_depth`` levels of
    nesting): the value, or ``ValueError`` saying what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    if json_depth(value) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


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


def read_json(request: IRequest, max_size: int, *,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``read_body`` then ``parse_json``; ``BadRequest`` for bad JSON."""
    data = read_body(request, max_size)
    try:
        return parse_json(data, max_depth=max_depth)
    except ValueError as e:
        raise BadRequest(str(e)) from None
