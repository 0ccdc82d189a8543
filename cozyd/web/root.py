"""The public site: find the instance from ``Host``, then hand over to the
service app that owns the first path segment (``/data`` → DataService…).

Order of checks, as cozy-stack's middlewares: unknown host or instance
being deleted → 404; blocked instance → 503 (402 for PAYMENT_FAILED) with
the blocking reason as error code, except on the routes a blocked user
still needs (settings, apps…).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from cozyd.auth import tokens
from cozyd.errors import CozyError, NotFound, PaymentRequired, ServiceUnavailable
from cozyd.instance.model import Instance
from cozyd.instance.registry import InstanceRegistry
from cozyd.web.common import error_response, install_error_handlers, not_found
from cozyd.web.guard import request_token
from cozyd.web.status import StatusService

#: First path segments still served when the instance is blocked.
SERVED_WHEN_BLOCKED = frozenset({"apps", "konnectors", "settings", "compat"})


def blocked_error(instance: Instance) -> CozyError:
    reason = instance.blocking_reason or "UNKNOWN"
    if reason == "PAYMENT_FAILED":
        return PaymentRequired("this instance is blocked until a payment is made",
                               code=reason)
    return ServiceUnavailable("this instance is blocked", code=reason)


class PublicRoot:
    app = Klein()
    install_error_handlers(app)

    def __init__(self, registry: InstanceRegistry, status: StatusService,
                 services: Mapping[str, IResource], *, seconds: Callable[[], float]):
        """``services`` maps a first path segment (``"data"``) to the resource
        serving below it, or ``"auth/register"``-style keys to let another
        service own some sub-paths of a prefix (it still sees paths below
        the first segment, e.g. ``/register``)."""
        self._registry = registry
        self._status = status
        self._services = dict(services)
        self._seconds = seconds

    def resource(self) -> IResource:
        return self.app.resource()

    @app.route("/version", methods=["GET", "HEAD"])
    def version(self, request: IRequest):
        return self._status.version(request)

    @app.route("/status", methods=["GET", "HEAD"])
    async def status(self, request: IRequest):
        return await self._status.status(request)

    def _holds_cli_token(self, request: IRequest, instance: Instance) -> bool:
        """CLI tokens (the operator's tools) still work on a blocked instance."""
        token = request_token(request)
        if not token:
            return False
        try:
            tokens.parse(instance, token, now=self._seconds(), audiences=(tokens.CLI,))
        except CozyError:
            return False
        return True

    @app.route("/", branch=True)
    async def dispatch(self, request: IRequest):
        host = (request.getHeader(b"host") or b"").decode("utf-8", "replace")
        instance = await self._registry.resolve(host) if host else None
        if instance is None or instance.deleting:
            return error_response(request, NotFound("no instance is served at this "
                                                    "address", code="instance_not_found"))
        segment = request.postpath[0].decode("utf-8", "replace") if request.postpath else ""
        if (instance.blocked and segment not in SERVED_WHEN_BLOCKED
                and not self._holds_cli_token(request, instance)):
            return error_response(request, blocked_error(instance))
        request.cozy_instance = instance
        second = request.postpath[1].decode("utf-8", "replace") \
            if len(request.postpath) > 1 else ""
        service = self._services.get(f"{segment}/{second}") or self._services.get(segment)
        if service is None:
            return not_found(request)
        # The service app sees the path below its prefix; ``/`` itself goes
        # as ``/`` to the service of the empty prefix (the home page).
        if segment:
            request.prepath.append(request.postpath.pop(0))
        return service
