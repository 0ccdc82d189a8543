"""One way to declare a route, for every service; each service a Klein app.

A service is a ``Service`` whose handlers declare what they need next to
their path; its class gets its own ``klein.Klein`` app (``app``), built from
those declarations, and the service renders through it (``KleinResource``)::

    class NotesService(Service):
        errors = jsonapi_errors                  # the service's error style

        def __init__(self, guard: Guard):
            super().__init__()
            self.guard = guard                   # for the token policies

        @route("{doctype}/_count", "GET", auth=token(doctype=param("doctype")))
        async def count(self, request, doctype: str) -> bytes:
            ...
            return json_response(request, {"count": n})

        @route("uploads", "POST", auth=token("io.cozy.files", verb="POST"),
               body=streamed(max_size=10 * 2**30))
        async def upload(self, request) -> bytes:
            size = await body_stream(request).read_into(sink)

Each ``route`` becomes a werkzeug rule of the app (``{name}`` →
``<seg:name>``), matched on the **raw** path below the service's prefix:
twisted.web unescapes each segment and Klein joins ``request.postpath``
with ``/``, so ``Service.render`` first puts the still-escaped segments of
``request.uri`` there, and the ``seg`` converter (``RawSegment``, one
segment, ``[^/]+``) unescapes each parameter alone — ``%2F`` stays inside
a document id; a segment that is not UTF-8 gets the service's
``bad_path()`` (400). Fixed names win over parameters (werkzeug weighs
them; ``Route.settle`` keeps a fixed name's path its own when only the
method differs: ``GET things/_count`` is a 405, not ``things/{name}``).
HEAD comes with GET; trailing slashes are ignored, never redirected. A
path served for other methods is answered 405, an unknown one 404, by the
service's ``no_route`` in its error style: werkzeug's 404/405 are the only
errors that reach Klein's ``handle_errors``; nothing renders werkzeug's
HTML pages or Klein's tracebacks.

What a route declares:

- ``auth``: ``None`` (nobody checked), ``token(...)`` (a valid token of the
  instance, and a rule on a doctype for a verb), ``SESSION`` (the owner's
  browser session), ``ADMIN`` (the admin passphrase: the service's
  ``authenticate``);
- ``errors``: how its errors are rendered (a function ``(service, request,
  exception) -> bytes``), by default the service's ``errors``;
- ``body``: ``NO_BODY`` (not even buffered: GET, HEAD, DELETE by default),
  ``json_body(max_size)`` (buffered up to the limit, 413 beyond — the
  default for other methods, limit ``[server] max_body_size``) or
  ``streamed(max_size)`` (the handler receives the chunks as they arrive,
  see ``cozyd.web.bodies.BodyStream``);
- anything else (``**options``) is the service's own (``/data``'s
  ``access=`` and ``proxy=``), read back from ``state_of(request).route``.

Klein's endpoint of a route runs ``Service.dispatch``: the auth policy,
then the handler, its errors rendered in the route's style. The handler
is cancelled when the client goes away; multi-step writes protect
themselves with ``shield``.

The site (``cozyd.web.site``) resolves the route of a request that carries
a body as soon as its headers are in (``route_for_uri``, through the same
werkzeug map: ``Router`` is a view of it), to apply the body policy before
a byte of the body is read; the service takes that match
(``ServiceResource``) rather than matching again. Per-request state
(instance, permissions, session, the route and its parameters…) lives in
one ``RequestState``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import attrs
from klein import Klein
from klein.resource import KleinResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Map

from cozyd.errors import CozyError, Forbidden, NotFound, PermissionDenied

log = Logger()


# =============================================================================
# Per-request state
# =============================================================================
_UNSET: Any = object()


@attrs.define(eq=False)
class RequestState:
    """What cozyd knows of one request, filled in as it goes down."""

    #: The instance its Host names (the public site), once resolved.
    instance: Any = None
    #: The app of an app host (``<slug>.<instance domain>``), if it is one.
    app_slug: str | None = None
    #: The route matched, and its path parameters.
    route: Route | None = None
    params: dict[str, str] = attrs.field(factory=dict)
    #: The permission set of the request's token, once checked.
    permissions: Any = None
    #: The owner's session: ``_UNSET`` until looked up, then it or None.
    session: Any = _UNSET
    #: The CSRF token of the page's forms, once known.
    csrf: str | None = None
    #: Largest body accepted (the route's, else the site's).
    max_body_size: int | None = None
    #: The body of a streamed route, fed by the site as it arrives.
    body: Any = None
    #: Free slots for a service's own flags (e.g. /data's error shape).
    flags: dict[str, Any] = attrs.field(factory=dict)
    #: The route the site found when the headers came (for its body policy).
    routed: Routed | None = None

    @property
    def session_known(self) -> bool:
        return self.session is not _UNSET


def state_of(request: IRequest) -> RequestState:
    """The request's state (created empty on first use), an attribute of
    the request (``cozyd_state``)."""
    try:
        return request.cozyd_state  # type: ignore[attr-defined]
    except AttributeError:
        state = request.cozyd_state = RequestState()  # type: ignore[attr-defined]
        return state


def state_if_any(request: IRequest) -> RequestState | None:
    """The request's state if something made it, else None."""
    return getattr(request, "cozyd_state", None)


# =============================================================================
# Policies
# =============================================================================
@attrs.frozen
class Body:
    """How a route takes its body: ``none``, ``buffered`` or ``stream``."""

    kind: str
    #: Bytes at most (None: the site's ``max_body_size``).
    max_size: int | None = None


NO_BODY = Body("none")


def json_body(max_size: int | None = None) -> Body:
    """A body read whole (JSON or a form), refused with 413 past ``max_size``."""
    return Body("buffered", max_size)


def streamed(max_size: int | None = None) -> Body:
    """A body handed to the handler chunk by chunk (``body_stream``)."""
    return Body("stream", max_size)


BUFFERED = json_body()


@attrs.frozen
class TokenAuth:
    """A valid token of the instance; with ``doctype``, a rule on it for
    ``verb`` (by default the request's) — on the whole doctype unless
    ``collection=False`` (the handler then checks the document itself)."""

    doctype: str | Callable[..., str] | None = None
    verb: str | None = None
    collection: bool = True

    async def check(
        self, service: Any, request: IRequest, params: Mapping[str, str]
    ) -> None:
        from cozyd.permissions.rules import verb_of

        permissions = await service.guard.permissions(request)
        if self.doctype is None or not self.collection:
            return
        doctype = self.doctype(params) if callable(self.doctype) else self.doctype
        wanted = self.verb or verb_of(request.method.decode("ascii"))
        if not permissions.allows_collection(wanted, doctype):
            raise PermissionDenied()


def token(
    doctype: str | Callable[..., str] | None = None,
    *,
    verb: str | None = None,
    collection: bool = True,
) -> TokenAuth:
    return TokenAuth(doctype, verb, collection)


def param(name: str) -> Callable[[Mapping[str, str]], str]:
    """A path parameter as the doctype of a ``token`` policy."""

    def read(params: Mapping[str, str]) -> str:
        return params[name]

    read.__name__ = f"param_{name}"
    return read


@attrs.frozen
class SessionAuth:
    """The owner's session (the service's ``sessions``), else 403."""

    async def check(
        self, service: Any, request: IRequest, params: Mapping[str, str]
    ) -> None:
        if not await service.sessions.logged_in(request):
            raise Forbidden("a session is required")


@attrs.frozen
class AdminAuth:
    """The admin passphrase (the service's ``authenticate(request)``)."""

    async def check(
        self, service: Any, request: IRequest, params: Mapping[str, str]
    ) -> None:
        await service.authenticate(request)


SESSION = SessionAuth()
ADMIN = AdminAuth()


# =============================================================================
# Routes, and their table (a view of the Klein map)
# =============================================================================
ErrorStyle = Callable[[Any, IRequest, BaseException], bytes]


@attrs.frozen
class Route:
    pattern: tuple[str, ...]
    methods: frozenset[str]
    handler: Callable[..., Any]
    auth: Any = None
    body: Body = BUFFERED
    errors: ErrorStyle | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: Its endpoint's name in its service's Klein app (set by the ``Router``).
    endpoint: str = ""
    #: How many fixed names the pattern has (they win over parameters).
    literals: int = attrs.field(init=False)
    #: Parameter positions, and fixed names by position.
    _params: tuple[tuple[int, str], ...] = attrs.field(init=False, repr=False)
    _fixed: tuple[tuple[int, str], ...] = attrs.field(init=False, repr=False)
    #: Routes of more fixed names that may match the same paths (see ``settle``).
    shadows: list[Route] = attrs.field(init=False, factory=list, repr=False, eq=False)
    #: For each parameter, the fixed names the shadows have in its place.
    shadowing_names: list[tuple[str, frozenset[str]]] = attrs.field(
        init=False, factory=list, repr=False, eq=False
    )

    @literals.default
    def _count_literals(self) -> int:
        return sum(1 for token in self.pattern if not token.startswith("{"))

    @_params.default
    def _find_params(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, t[1:-1]) for i, t in enumerate(self.pattern) if t.startswith("{"))

    @_fixed.default
    def _find_fixed(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, t) for i, t in enumerate(self.pattern) if not t.startswith("{"))

    @property
    def rule(self) -> str:
        """Its werkzeug rule: every parameter is one raw segment (``seg``)."""
        return "/" + "/".join(
            f"<seg:{t[1:-1]}>" if t.startswith("{") else t for t in self.pattern
        )

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.pattern):
            return None
        for i, name in self._fixed:
            if segments[i] != name:
                return None
        return {name: segments[i] for i, name in self._params}

    def segments(self, params: Mapping[str, str]) -> list[str]:
        """The (unescaped) segments of a path it matched with ``params``."""
        return [params[t[1:-1]] if t.startswith("{") else t for t in self.pattern]

    def may_shadow(self, other: Route) -> bool:
        """Whether this route, of more fixed names than ``other``, matches
        some of ``other``'s paths."""
        if len(self.pattern) != len(other.pattern) or self.literals <= other.literals:
            return False
        return all(
            mine == theirs or mine.startswith("{") or theirs.startswith("{")
            for mine, theirs in zip(self.pattern, other.pattern, strict=False)
        )

    def settle(self, method: str, params: dict[str, str]) -> tuple[Route, dict[str, str]]:
        """The route a path werkzeug matched to this one really goes to.

        werkzeug prefers fixed names segment by segment, but when a fixed
        name matches the path and not the method it falls back to a
        parameter (``GET things/_count`` to ``things/{name}``): here as
        before, the path belongs to the route of more fixed names, and a
        method it lacks is a 405."""
        if not self.shadows:
            return self, params
        for name, names in self.shadowing_names:
            if params[name] in names:
                break
        else:  # no parameter is a fixed name of a route of more
            return self, params
        segments = self.segments(params)
        for other in self.shadows:
            found = other.match(segments)
            if found is not None:
                if method in other.methods:
                    return other, found
                raise MethodNotAllowed()
        return self, params

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def route(
    pattern: str,
    *methods: str,
    auth: Any = None,
    body: Body | None = None,
    errors: ErrorStyle | None = None,
    **options: Any,
):
    """Declare a handler of ``Service`` (see the module docstring)."""
    tokens = tuple(pattern.strip("/").split("/")) if pattern.strip("/") else ()
    verbs = set(methods)
    if "GET" in verbs:
        verbs.add("HEAD")
    if body is None:
        body = NO_BODY if verbs <= _BODYLESS else BUFFERED

    def register(handler):
        declared = getattr(handler, "__cozyd_routes__", ())
        handler.__cozyd_routes__ = (
            *declared,
            Route(tokens, frozenset(verbs), handler, auth, body, errors, dict(options)),
        )
        return handler

    return register


class RouteNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no such route")


class MethodNotAllowed(CozyError):
    status = 405
    code = "method_not_allowed"

    def __init__(self) -> None:
        super().__init__("method not allowed")


class BadPath(Exception):
    """A path segment that is not UTF-8 once unescaped (the service's
    ``bad_path()`` is answered)."""


class RawSegment(BaseConverter):
    """One raw path segment (``[^/]+``), unescaped to UTF-8 once matched:
    an escaped slash (``%2F``) stays inside its parameter."""

    regex = "[^/]+"
    part_isolating = True

    def to_python(self, value: str) -> str:
        if "%" not in value:
            return value
        try:
            return unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath() from None

    def to_url(self, value: str) -> str:
        return quote(value, safe="")


def url_map() -> Map:
    """The werkzeug map of a service's Klein app: raw segments, trailing
    slashes ignored, no merging of slashes, never a redirect."""
    return Map(
        strict_slashes=False,
        merge_slashes=False,
        redirect_defaults=False,
        converters={"seg": RawSegment},
    )


class Router:
    """The routes of a service, and questions to its Klein map (the one
    router: this is a view of it, for listings and the site)."""

    def __init__(self, routes: list[Route], app: Klein | None = None):
        # Its own copies: what a route's shadows are depends on its service.
        self.routes = [attrs.evolve(one, endpoint=f"r{i}") for i, one in enumerate(routes)]
        if app is None:
            app = Klein()
            app._url_map = url_map()  # before any rule is added
            for one in self.routes:
                app.route(one.rule, methods=sorted(one.methods), endpoint=one.endpoint)(
                    _endpoint(one)
                )
        self.app = app
        self._by_endpoint = {one.endpoint: one for one in self.routes}
        for one in self.routes:
            one.shadows[:] = sorted(
                (other for other in self.routes if other.may_shadow(one)),
                key=lambda other: -other.literals,
            )
            one.shadowing_names[:] = [
                (
                    name,
                    frozenset(
                        other.pattern[i]
                        for other in one.shadows
                        if not other.pattern[i].startswith("{")
                    ),
                )
                for i, name in one._params
            ]
        #: Bound once: werkzeug's adapter keeps nothing of a match.
        self._adapter = app.url_map.bind("", "/")

    def route_of(self, endpoint: str) -> Route:
        return self._by_endpoint[endpoint]

    def match_raw(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route of a raw path (``/a/b%2Fc``, below the prefix) and its
        parameters; ``RouteNotFound``, ``MethodNotAllowed``, or ``BadPath``."""
        try:
            endpoint, params = self._adapter.match(path, method)
        except HTTPException as e:
            raise (MethodNotAllowed() if e.code == 405 else RouteNotFound()) from None
        return self._by_endpoint[endpoint].settle(method, params)

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]]:
        """The same, from unescaped segments."""
        return self.match_raw(method, "/" + "/".join(quote(s, safe="") for s in segments))

    def find(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]] | None:
        try:
            return self.match(method, segments)
        except (CozyError, BadPath):
            return None


@attrs.frozen
class Routed:
    """A request's route, found by the site before the service renders."""

    service: Any
    route: Route
    params: dict[str, str]


_NON_ASCII = re.compile(rb"[\x80-\xff]")


def raw_segments(raw: bytes, skip: int = 0) -> list[bytes]:
    """The raw segments of a path (no query), still escaped, the first
    ``skip`` left out and trailing empty ones dropped; bytes past ASCII
    (a client's raw UTF-8) escaped, so the segments read as ASCII."""
    parts = raw.split(b"/")[1 + skip :]
    while parts and parts[-1] == b"":
        parts.pop()
    if not all(part.isascii() for part in parts):
        parts = [_NON_ASCII.sub(lambda m: b"%%%02X" % m[0][0], part) for part in parts]
    return parts


def split_raw_path(raw: bytes, skip: int = 0) -> list[str]:
    """The segments of a raw path (no query), each unescaped alone, the
    first ``skip`` left out and trailing empty ones dropped. ``ValueError``
    for a path that is not UTF-8 once unescaped."""
    parts = raw.split(b"/")[1 + skip :]
    segments = [
        unquote_to_bytes(part).decode("utf-8") if b"%" in part else part.decode("utf-8")
        for part in parts
    ]
    while segments and segments[-1] == "":
        segments.pop()
    return segments


def _path_only(uri: bytes) -> bytes:
    return uri.split(b"?", 1)[0]


def _endpoint(one: Route) -> Callable[..., Any]:
    """The Klein endpoint of a route: the service's dispatch."""

    def endpoint(service: Service, request: IRequest, **params: str) -> Any:
        return service.serve(request, one, params)

    endpoint.__name__ = getattr(one.handler, "__name__", "endpoint")
    return endpoint


# =============================================================================
# Rendering handler coroutines
# =============================================================================
def render_coroutine(request: IRequest, coroutine, on_error) -> object:
    """Render a handler coroutine from a plain resource's ``render``.

    A coroutine that finished without waiting gives its body at once; else
    the body is written when it comes. A client that goes away cancels the
    handler (multi-step writes protect themselves with ``shield``).
    ``on_error(failure)`` returns the body for an unexpected failure.
    """
    return render_deferred(request, defer.Deferred.fromCoroutine(coroutine), on_error)


def render_deferred(request: IRequest, d: defer.Deferred, on_error) -> object:
    """``render_coroutine`` for the Deferred of a handler's result."""
    if d.called:
        results: list = []
        d.addBoth(results.append)
        if isinstance(results[0], Failure):
            return on_error(results[0])
        return _rendered(request, results[0], on_error)

    def write(body) -> None:
        if request.finished or request._disconnected:
            return
        body = _rendered(request, body, on_error)
        if body is NOT_DONE_YET:
            return
        request.write(body)
        request.finish()

    def failed(failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            write(on_error(failure))

    request.notifyFinish().addErrback(lambda _: d.cancel())
    d.addCallbacks(write, failed)
    return NOT_DONE_YET


def _rendered(request: IRequest, result: Any, on_error) -> Any:
    """A handler's result as the bytes of its body, or ``NOT_DONE_YET``
    when there is nothing more to write (as Klein renders them: a resource
    is rendered, ``None`` is an empty body; anything else is an error)."""
    if isinstance(result, bytes) or result is NOT_DONE_YET:
        return result
    if result is _WRITTEN:
        return NOT_DONE_YET
    if isinstance(result, str):
        return result.encode("utf-8")
    if result is None:
        return b""
    if IResource.providedBy(result):
        request.render(getChildForRequest(result, request))  # type: ignore[attr-defined]
        return NOT_DONE_YET
    return on_error(Failure(TypeError(f"a handler returned {type(result).__name__}")))


def shield(awaitable) -> defer.Deferred:
    """Await ``awaitable`` without letting a cancellation stop it: a client
    that hangs up stops waiting for the answer, but the steps in
    ``awaitable`` (a multi-step write) all run to their end."""
    inner = defer.ensureDeferred(awaitable)
    if inner.called:
        return inner
    outer: defer.Deferred = defer.Deferred()

    def done(result):
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Failure):
            log.failure("a shielded step failed after its request was cancelled", result)
        return None

    inner.addBoth(done)
    return outer


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


# =============================================================================
# Services
# =============================================================================
class _Written(Resource):
    """What Klein is given for a handler that wrote its answer itself."""

    isLeaf = True

    def render(self, request: IRequest) -> Any:
        return NOT_DONE_YET


_WRITTEN = _Written()


class ServiceResource(KleinResource):
    """The Klein resource of a service, matching each request once.

    Klein's own ``render`` binds a werkzeug adapter to the request's URL on
    every request and matches it there, and the site has matched a request
    with a body already, for its body policy (``RequestState.routed``).
    This one takes the site's match, else matches once on the adapter the
    router binds once, then runs the route's endpoint through the app
    (``execute_endpoint``, the service bound to it). A path with no route,
    or a segment that is not UTF-8, goes to Klein's own ``render``, whose
    error handlers (``Service.__init_subclass__``) answer it."""

    def __init__(self, app: Klein, service: Service):
        super().__init__(app)
        self._service = service
        self._router = type(service).router

    def render(self, request: IRequest) -> Any:
        service = self._service
        routed = state_of(request).routed
        if routed is not None and routed.service is service:
            found, params = routed.route, routed.params
        else:
            try:
                found, params = self._router.match_raw(
                    request.method.decode("ascii", "replace"),
                    "/" + b"/".join(request.postpath).decode("ascii"),
                )
            except (CozyError, BadPath, UnicodeDecodeError):
                return super().render(request)
        # As Klein does: the segments its rule matched move to the prepath.
        count = len(found.pattern)
        request.prepath.extend(request.postpath[:count])
        request.postpath = request.postpath[count:]
        result = self._app.execute_endpoint(found.endpoint, request, **params)
        if not isinstance(result, defer.Deferred):
            result = defer.succeed(result)
        return render_deferred(
            request, result, lambda failure: _unexpected(service, request, failure)
        )


class Service(Resource):
    """A set of routes under one URL prefix, rendered in one error style,
    through its own Klein app (``app``, one per class, built from the
    declared routes; ``router`` is the view of it the site and the
    listings use).

    Subclasses declare handlers with ``route``; ``errors`` is the default
    error style.
    """

    isLeaf = True
    app: Klein
    router: Router
    #: The error style of routes that do not name one (and of 404/405).
    errors: ErrorStyle

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes: list[Route] = []
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                routes.extend(getattr(value, "__cozyd_routes__", ()))
        cls.router = Router(routes)
        app = cls.router.app
        # Only the map's own errors reach Klein's handlers: a route's
        # handler runs inside ``dispatch``, which renders its errors.
        app.handle_errors(HTTPException)(_routing_error)
        app.handle_errors(BadPath)(_bad_path)
        app.handle_errors(Exception)(_unexpected)
        cls.app = app

    def resource(self):
        return self

    @property
    def klein(self) -> KleinResource:
        """The Klein resource of this service (its app bound to it)."""
        try:
            return self.__dict__["_klein"]
        except KeyError:
            # Kept: Klein's binding of the app to the service is a weak one.
            resource = self.__dict__["_klein"] = ServiceResource(self.app, self)
            return resource

    # -- the site's question, before the body is read ---------------------------
    def route_for_raw(self, method: bytes, segments: list[bytes]) -> Routed | None:
        """The route of raw ``segments`` (below the prefix), or None."""
        path = "/" + b"/".join(segments).decode("ascii")
        try:
            found = type(self).router.match_raw(method.decode("ascii", "replace"), path)
        except (CozyError, BadPath):
            return None
        return Routed(self, *found)

    def route_for(self, method: bytes, segments: list[str]) -> Routed | None:
        """The same, from unescaped segments."""
        return self.route_for_raw(
            method, [quote(s, safe="").encode("ascii") for s in segments]
        )

    def route_for_uri(self, method: bytes, uri: bytes, host: bytes = b"") -> Routed | None:
        """The route of a request to this service mounted as a site's root."""
        return self.route_for_raw(method, raw_segments(_path_only(uri)))

    # -- dispatch ------------------------------------------------------------------
    def render(self, request: IRequest):
        # Klein matches "/".join(postpath): give it the raw segments below
        # the prefix, so that an escaped slash stays in its segment (the
        # ``seg`` converter unescapes each parameter alone).
        request.postpath = raw_segments(_path_only(request.uri), len(request.prepath))
        host = request.getHeader(b"host")
        if host is not None and not host.isascii():
            try:  # (Klein would answer a plain-text 400, and log a traceback)
                host.decode("utf-8")
            except UnicodeDecodeError:
                from cozyd.errors import BadRequest

                return self.render_error(request, BadRequest("the Host is not UTF-8"))
        return self.klein.render(request)

    def serve(self, request: IRequest, found: Route, params: dict[str, str]) -> Any:
        """What Klein's endpoint of ``found`` runs (``params`` as matched)."""
        if found.shadows:
            try:
                found, params = found.settle(
                    request.method.decode("ascii", "replace"), params
                )
            except MethodNotAllowed as error:
                return self._no_route(request, error)
        return self.dispatch(request, found, params)

    async def dispatch(self, request: IRequest, found: Route, params: dict[str, str]):
        """The route's policies, then its handler; errors in its style."""
        state = state_of(request)
        state.route = found
        state.params = params
        try:
            if found.body.max_size is not None:
                state.max_body_size = found.body.max_size
            if found.auth is not None:
                await found.auth.check(self, request, params)
            result = found.handler(self, request, **params)
            if inspect.isawaitable(result):
                result = await result
        except defer.CancelledError:
            raise  # the client went away: nothing to answer
        except Exception as e:
            result = self.render_error(request, e, found)
        return _answer(request, result)

    async def _no_route(self, request: IRequest, error: CozyError):
        try:
            result = await self.no_route(request, error)
        except defer.CancelledError:
            raise
        except Exception as e:
            result = self.render_error(request, e)
        return _answer(request, result)

    async def no_route(self, request: IRequest, error: CozyError):
        """No route for this path or method: ``error`` (404 or 405)."""
        raise error

    def bad_path(self) -> CozyError:
        from cozyd.errors import BadRequest

        return BadRequest("the path is not valid UTF-8")

    def render_error(
        self, request: IRequest, error: BaseException, found: Route | None = None
    ) -> bytes:
        if found is None:
            found = state_of(request).route
        style = (
            found.errors
            if found is not None and found.errors is not None
            else type(self).errors
        )
        return style(self, request, error)


def _answer(request: IRequest, result: Any) -> Any:
    """A handler's result as Klein writes it: bytes with their length (as
    twisted.web's own rendering gives them), or nothing more to write."""
    if result is NOT_DONE_YET:
        return _WRITTEN
    if isinstance(result, bytes) and not request.startedWriting:
        request.setHeader(b"Content-Length", b"%d" % len(result))
    return result


# Klein's error handlers of every service's app (``service`` comes first:
# the app is bound to it).
def _routing_error(service: Service, request: IRequest, failure: Failure) -> Any:
    code = getattr(failure.value, "code", 404)
    return service._no_route(
        request, MethodNotAllowed() if code == 405 else RouteNotFound()
    )


def _bad_path(service: Service, request: IRequest, failure: Failure) -> Any:
    return _answer(request, service.render_error(request, service.bad_path()))


def _unexpected(service: Service, request: IRequest, failure: Failure) -> Any:
    return _answer(request, service.render_error(request, failure.value))
