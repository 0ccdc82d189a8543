"""Helpers shared by every web service: JSON answers, errors, query args.

A service's Klein app calls ``install_error_handlers(app, style)`` once; its
handlers then raise ``CozyError``s and return ``json_response(...)``.
Anything else that escapes a handler becomes a 500 with a JSON body and a
logged traceback, never a traceback sent to the client.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.errors import BadRequest, CozyError, NotFound

JSONAPI = "application/vnd.api+json"
JSON = "application/json"

log = Logger()


def json_response(request: IRequest, body: Any, *, status: int = 200,
                  content_type: str = JSON) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(request: IRequest, error: CozyError, style: str = "jsonapi") -> bytes:
    if style == "couchdb":
        return json_response(request, error.couchdb(), status=error.status)
    return json_response(request, {"errors": [error.jsonapi()]}, status=error.status,
                         content_type=JSONAPI)


def install_error_handlers(app: Klein, style: str = "jsonapi") -> None:
    # Klein passes the service instance first when the app is bound to one.
    @app.handle_errors(CozyError)
    def cozy_error(*args: Any) -> bytes:
        request, failure = args[-2:]
        return error_response(request, failure.value, style)

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
