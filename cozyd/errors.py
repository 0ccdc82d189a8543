"""The error family every layer raises and every web app renders once.

A ``CozyError`` carries an HTTP status, a short machine code and a human
message. Web apps turn it into a JSON:API error list (most services) or a
CouchDB-style ``{"error", "reason"}`` body (under ``/data``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class CozyError(Exception):
    status: int = 500
    code: str = "internal_server_error"

    def __init__(
        self,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        source: dict[str, Any] | None = None,
    ):
        super().__init__(detail or self.code)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.detail = detail or HTTPStatus(self.status).phrase
        self.source = source or {}

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def jsonapi(self) -> dict[str, Any]:
        """One entry of a JSON:API ``errors`` list (status is a string)."""
        error: dict[str, Any] = {
            "status": str(self.status),
            "title": self.title,
            "code": self.code,
            "detail": self.detail,
        }
        if self.source:
            error["source"] = self.source
        return error

    def couchdb(self) -> dict[str, Any]:
        return {"error": self.code, "reason": self.detail}


class BadRequest(CozyError):
    status = 400
    code = "bad_request"


class Unauthorized(CozyError):
    status = 401
    code = "unauthorized"


class PaymentRequired(CozyError):
    status = 402
    code = "payment_required"


class Forbidden(CozyError):
    status = 403
    code = "forbidden"


class NotFound(CozyError):
    status = 404
    code = "not_found"


class Conflict(CozyError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CozyError):
    status = 413
    code = "request_entity_too_large"


class Unprocessable(CozyError):
    status = 422
    code = "unprocessable_entity"


class ServiceUnavailable(CozyError):
    status = 503
    code = "service_unavailable"


class BadGateway(CozyError):
    status = 502
    code = "bad_gateway"


class EchoError(CozyError):
    """Errors cozy-stack raises from its middlewares (token checks, …): sent
    as plain text, or ``{"error": message}`` when the client accepts JSON."""


class NoToken(EchoError):
    status = 401
    code = "no_token"

    def __init__(self, detail: str = "No token in request"):
        super().__init__(detail)


class InvalidToken(EchoError):
    status = 400
    code = "invalid_token"
    www_authenticate = 'Bearer error="invalid_token"'

    def __init__(self, detail: str = "Invalid JWT token"):
        super().__init__(detail)


class ExpiredToken(InvalidToken):
    code = "expired_token"
    www_authenticate = (
        'Bearer error="invalid_token" error_description="The access token expired"'
    )

    def __init__(self, detail: str = "Expired token"):
        super().__init__(detail)


class PermissionDenied(EchoError):
    status = 403
    code = "forbidden"

    def __init__(self, detail: str = "Forbidden"):
        super().__init__(detail)
