"""The public site: find the instance from ``Host``, then hand over to the
service app that owns the first path segment (``/data`` → DataService…).

Order of checks, as cozy-stack's middlewares: unknown host or instance
being deleted → 404; blocked instance → 503 (402 for PAYMENT_FAILED) with
the blocking reason as error code, except on the routes a blocked user
still needs (settings, apps…).

Some services answer on any host (``/version``, ``/status``, the test
routes): they are ``unscoped`` and see the whole path. The site asks
``route_for_uri`` which route a request goes to as soon as its headers are in
(to apply the route's body policy before the body is read).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from cozyd.errors import CozyError, NotFound, PaymentRequired, ServiceUnavailable
from cozyd.instance.model import Instance
from cozyd.instance.registry import InstanceRegistry
from cozyd.web.common import error_response, not_found
from cozyd.web.guard import holds_cli_token
from cozyd.web.routing import Routed, raw_segments, render_coroutine, state_of
from cozyd.web.status import StatusService

log = Logger()

#: First path segments still served when the instance is blocked.
SERVED_WHEN_BLOCKED = frozenset({"apps", "konnectors", "settings", "compat"})


def blocked_error(instance: Instance) -> CozyError:
    reason = instance.blocking_reason or "UNKNOWN"
    if reason == "PAYMENT_FAILED":
        return PaymentRequired(
            "this instance is blocked until a payment is made", code=reason
        )
    return ServiceUnavailable("this instance is blocked", code=reason)


def resolution_failed(failure, request: IRequest) -> bytes:
    """The answer when a host's instance cannot be looked up: the storage's
    503 when it is unavailable (its own log said why), else a logged 500."""
    if isinstance(failure.value, CozyError) and failure.value.status == 503:
        return error_response(request, failure.value)
    log.failure("cannot resolve the instance of a request", failure)
    return error_response(
        request, CozyError("an unexpected error occurred; it has been logged")
    )


class PublicRoot(Resource):
    """The Host dispatcher in front of the services (each a Klein app), a
    plain resource: it routes on one path segment, and the instance of a
    known host comes from the registry's cache without any asynchronous step."""

    isLeaf = True

    def __init__(
        self,
        registry: InstanceRegistry,
        status: StatusService,
        services: Mapping[str, IResource],
        *,
        seconds: Callable[[], float],
        unscoped: Mapping[str, IResource] | None = None,
        max_body_size: int | None = None,
    ):
        """``services`` maps a first path segment (``"data"``) to the resource
        serving below it, or ``"auth/register"``-style keys to let another
        service own some sub-paths of a prefix (it still sees paths below
        the first segment, e.g. ``/register``). ``unscoped`` services answer
        on any host, below their first segment (they see the whole path)."""
        super().__init__()
        self._registry = registry
        status_resource = status.resource()
        self._unscoped = {
            "version": status_resource,
            "status": status_resource,
            **(unscoped or {}),
        }
        self._services = dict(services)
        self._seconds = seconds
        self._max_body_size = max_body_size

    def resource(self) -> IResource:
        return self

    def route_for_uri(self, method: bytes, uri: bytes, host: bytes = b"") -> Routed | None:
        """The route a request will meet (None if none or not known yet)."""
        raw = raw_segments(uri.split(b"?", 1)[0])
        try:  # the service is chosen as ``render`` does: on unescaped names
            names = [unquote_to_bytes(part).decode("utf-8") for part in raw[:2]]
        except UnicodeDecodeError:
            return None
        first = names[0] if names else ""
        service = self._unscoped.get(first)
        if service is None:
            second = names[1] if len(names) > 1 else ""
            service = self._services.get(f"{first}/{second}") or self._services.get(first)
            if first:
                raw = raw[1:]
        find = getattr(service, "route_for_raw", None)
        return None if find is None else find(method, raw)

    def render(self, request: IRequest):
        state = state_of(request)
        if state.max_body_size is None:
            state.max_body_size = self._max_body_size
        postpath = request.postpath
        first = postpath[0].decode("utf-8", "replace") if postpath else ""
        unscoped = self._unscoped.get(first)
        if unscoped is not None:
            return unscoped.render(request)
        host = (request.getHeader(b"host") or b"").decode("utf-8", "replace")
        known, instance = self._registry.peek(host) if host else (True, None)
        if known:
            return self._serve(request, instance)
        return render_coroutine(
            request,
            self._resolve_and_serve(request, host),
            lambda failure: self._failed(failure, request),
        )

    async def _resolve_and_serve(self, request: IRequest, host: str):
        return self._serve(request, await self._registry.resolve(host))

    def _serve(self, request: IRequest, instance: Instance | None):
        if instance is None or instance.deleting:
            return error_response(
                request,
                NotFound(
                    "no instance is served at this address", code="instance_not_found"
                ),
            )
        postpath = request.postpath
        segment = postpath[0].decode("utf-8", "replace") if postpath else ""
        if (
            instance.blocked
            and segment not in SERVED_WHEN_BLOCKED
            and not holds_cli_token(request, instance, self._seconds())
        ):
            return error_response(request, blocked_error(instance))
        state_of(request).instance = instance
        second = postpath[1].decode("utf-8", "replace") if len(postpath) > 1 else ""
        service = self._services.get(f"{segment}/{second}") or self._services.get(segment)
        if service is None:
            return not_found(request)
        # The service app sees the path below its prefix; ``/`` itself goes
        # as ``/`` to the service of the empty prefix (the home page).
        if segment:
            request.prepath.append(postpath.pop(0))
        return service.render(request)

    def _failed(self, failure, request: IRequest) -> bytes:
        return resolution_failed(failure, request)
