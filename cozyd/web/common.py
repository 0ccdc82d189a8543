"""Helpers shared by every web service: JSON answers and the error styles.

Handlers raise ``CozyError``s and return ``json_response(...)``; the
route's error style renders what they raise (``jsonapi_errors`` for most
services; ``/data`` and the page services have their own). Anything else
that escapes a handler becomes a 500 with a JSON body and a logged
traceback, never a traceback sent to the client.

Routes are declared with ``cozyd.web.routing``; parameters are read with
``cozyd.web.params``, bodies with ``cozyd.web.bodies`` (both re-exported
here for the modules that import them from this one).
"""

from __future__ import annotations

import html
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from cozyd import jsontext
from cozyd.errors import CozyError, EchoError, NotFound
from cozyd.instance.model import Instance
from cozyd.web.routing import state_if_any, state_of

JSONAPI = "application/vnd.api+json"
JSON = "application/json"

log = Logger()


def instance_of(request: IRequest) -> Instance:
    """The instance the public root resolved for this request."""
    return state_of(request).instance


def current_instance(request: IRequest) -> Instance | None:
    """The request's instance, or None outside an instance (admin API…)."""
    state = state_if_any(request)
    return None if state is None else state.instance


def json_response(
    request: IRequest, body: Any, *, status: int = 200, content_type: str = JSON
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    return jsontext.compact(body).encode("utf-8")


def error_response(request: IRequest, error: CozyError, style: str = "jsonapi") -> bytes:
    www_authenticate = getattr(error, "www_authenticate", None)
    if www_authenticate:
        request.setHeader(b"WWW-Authenticate", www_authenticate.encode("ascii"))
    if isinstance(error, EchoError):
        return echo_response(request, error)
    if style == "couchdb":
        return json_response(request, error.couchdb(), status=error.status)
    return json_response(
        request, {"errors": [error.jsonapi()]}, status=error.status, content_type=JSONAPI
    )


def echo_response(request: IRequest, error: CozyError) -> bytes:
    """Plain text, or ``{"error": …}`` for JSON clients, or a small page."""
    accept = (request.getHeader(b"accept") or b"").decode("ascii", "replace")
    if "application/json" in accept or "application/vnd.api+json" in accept:
        return json_response(request, {"error": error.detail}, status=error.status)
    request.setResponseCode(error.status)
    if "text/html" in accept:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = html.escape(error.detail)
        return (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{text}</title>'
            f"</head><body><h1>{error.status}</h1><p>{text}</p></body></html>"
        ).encode()
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return error.detail.encode("utf-8")


def install_error_handlers(app: Klein, style: str = "jsonapi") -> None:
    """For a Klein app mounted somewhere (cozyd's own services use
    ``routing.Service``)."""

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
            return error_response(
                request,
                CozyError("method not allowed", status=405, code="method_not_allowed"),
                style,
            )
        return error_response(request, NotFound("no such route"), style)

    @app.handle_errors(Exception)
    def unexpected(*args: Any) -> bytes:
        request, failure = args[-2:]
        log.failure(
            "unexpected error on {method} {path}",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
        )
        error = CozyError("an unexpected error occurred; it has been logged")
        return error_response(request, error, style)


def not_found(request: IRequest, style: str = "jsonapi") -> bytes:
    return error_response(request, NotFound("no such route"), style)


def unexpected_error(request: IRequest, error: BaseException) -> CozyError:
    """Log what escaped a handler; the 500 to answer instead."""
    log.failure(
        "unexpected error on {method} {path}",
        Failure(error, type(error), error.__traceback__),
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
    )
    return CozyError("an unexpected error occurred; it has been logged")


def jsonapi_errors(service: Any, request: IRequest, error: BaseException) -> bytes:
    """The JSON:API error style (``{"errors": [...]}``; echo errors as
    cozy-stack's middlewares render them)."""
    if not isinstance(error, CozyError):
        error = unexpected_error(request, error)
    return error_response(request, error)


from cozyd.web.bodies import (  # noqa: E402 - re-exported
    MAX_JSON_DEPTH,
    json_depth,
    parse_json,
    read_body,
    read_json,
)
from cozyd.web.params import (  # noqa: E402 - re-exported
    form_value,
    parse_bool,
    parse_int,
    query_bool,
    query_int,
    query_list,
    query_param,
    query_text,
)
from cozyd.web.routing import render_coroutine, shield  # noqa: E402 - re-exported

__all__ = [
    "JSON",
    "JSONAPI",
    "MAX_JSON_DEPTH",
    "current_instance",
    "echo_response",
    "error_response",
    "form_value",
    "install_error_handlers",
    "instance_of",
    "json_depth",
    "json_response",
    "jsonapi_errors",
    "not_found",
    "parse_bool",
    "parse_int",
    "parse_json",
    "query_bool",
    "query_int",
    "query_list",
    "query_param",
    "query_text",
    "read_body",
    "read_json",
    "render_coroutine",
    "shield",
    "unexpected_error",
]
