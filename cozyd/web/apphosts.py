"""App hosts: ``<slug>.<instance domain>`` (nested sub-domains, cozy-stack's
default) serve the instance's apps; every other host goes on to the public
site (``PublicRoot``).

As cozy-stack's first routing step, a host is split at its first dot and,
when the rest is an instance's domain (or alias), the request belongs to
that instance's app ``slug`` — even if the whole host were an instance too:
an instance owns its sub-domains, where its session cookie goes.

Installed web apps are served by ``cozyd.web.appserver.AppServer``
(given as ``installed``); a slug with no installed app falls back to the
built-in apps given here (the ``home`` page, ``cozyd.web.auth.HomeApp``,
until a ``home`` app is installed), else gets the reference's answer for
an app that is not installed (404). With ``subdomains="flat"``, app hosts
are ``<user>-<slug>.<parent>`` instead of ``<slug>.<domain>``.

For an app host, in cozy-stack's order: instance being deleted → 404,
blocked → its blocking error, method other than GET/HEAD → 405, onboarding
not finished → 302 to the instance's ``/``, unknown app → 404. The app sees
``state_of(request).instance`` and ``.app_slug``. The site asks which
route a request goes to (``route_for_uri``): an app host's requests have no
body to stream; the others are the public site's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from cozyd.apps.hosts import FLAT, app_host, split_flat_host
from cozyd.auth.urls import HOME_SLUG
from cozyd.errors import NotFound
from cozyd.i18n import N_
from cozyd.instance.domain import normalize_host, split_app_host
from cozyd.instance.model import Instance
from cozyd.instance.registry import InstanceRegistry
from cozyd.web.common import error_response, json_response
from cozyd.web.pages import Pages
from cozyd.web.root import blocked_error, resolution_failed
from cozyd.web.routing import Routed, render_coroutine, state_of

log = Logger()

APP_NOT_INSTALLED = "Application is not installed"
APP_NOT_FOUND_TITLE = N_("This application does not exist")
APP_NOT_FOUND_MESSAGE = N_(
    "No application of your Cozy answers at this address: it may not be installed."
)
BACK_HOME = N_("Go to my Cozy's home")


class AppHosts(Resource):
    isLeaf = True

    def __init__(
        self,
        registry: InstanceRegistry,
        site: IResource,
        apps: Mapping[str, IResource],
        *,
        pages: Pages,
        scheme: str,
        installed: Any = None,
        subdomains: str = "nested",
    ):
        """``site``: the resource serving the instances' own domains;
        ``apps``: slug → resource of a built-in app; ``installed``: the
        server of installed apps (``AppServer``)."""
        super().__init__()
        self._installed = installed
        self._subdomains = subdomains
        self._registry = registry
        self._site = site
        self._apps = dict(apps)
        self._pages = pages
        self._scheme = scheme

    def resource(self) -> IResource:
        return self

    def _split(self, host: str) -> tuple[str, str]:
        if self._subdomains == FLAT:
            found = split_flat_host(host)
            return found if found is not None else (host, "")
        return split_app_host(host)

    def route_for_uri(self, method: bytes, uri: bytes, host: bytes = b"") -> Routed | None:
        parent, slug = self._split(
            normalize_host(host.decode("utf-8", "replace")) if host else ""
        )
        if slug:
            known, instance = self._registry.peek(parent)
            if known and instance is not None:
                return None  # an app's: no body policy of the site's
        find = getattr(self._site, "route_for_uri", None)
        return None if find is None else find(method, uri)

    def render(self, request: IRequest):
        raw = request.getHeader(b"host")
        parent, slug = self._split(
            normalize_host(raw.decode("utf-8", "replace")) if raw else ""
        )
        if not slug:
            return self._to_site(request)
        known, instance = self._registry.peek(parent)
        if known:
            return self._dispatch(request, instance, slug)
        return render_coroutine(
            request,
            self._resolve(request, parent, slug),
            lambda failure: self._failed(failure, request),
        )

    def _cors(self, request: IRequest, host: str) -> bool:
        """CORS for the instance's own apps calling its API (``/auth/``
        aside, as cozy-stack): the app's origin is reflected, with
        credentials; a preflight is answered here (True)."""
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        scheme, sep, netloc = origin.partition("://")
        if not sep or scheme not in ("http", "https") or request.path.startswith(b"/auth/"):
            return False
        origin_parent, origin_slug = self._split(normalize_host(netloc))
        if not origin_slug or origin_parent != host:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Vary", b"Origin")
        if request.method == b"OPTIONS" and request.getHeader(
            b"access-control-request-method"
        ):
            request.setResponseCode(204)
            request.setHeader(
                b"Access-Control-Allow-Methods", b"GET, HEAD, POST, PUT, PATCH, DELETE"
            )
            wanted = request.getHeader(b"access-control-request-headers")
            if wanted:
                request.setHeader(b"Access-Control-Allow-Headers", wanted)
            request.setHeader(b"Access-Control-Max-Age", b"43200")
            return True
        return False

    async def _resolve(self, request: IRequest, parent: str, slug: str):
        return self._dispatch(request, await self._registry.resolve(parent), slug)

    def _to_site(self, request: IRequest):
        raw = request.getHeader(b"host")
        host = normalize_host(raw.decode("utf-8", "replace")) if raw else ""
        if self._cors(request, host):
            return b""
        return self._site.render(request)

    def _dispatch(self, request: IRequest, instance: Instance | None, slug: str):
        if instance is None:
            return self._to_site(request)
        return self._serve_app(request, instance, slug)

    def _serve_app(self, request: IRequest, instance: Instance, slug: str):
        if instance.deleting:
            return error_response(
                request,
                NotFound(
                    "no instance is served at this address", code="instance_not_found"
                ),
            )
        if instance.blocked:
            return error_response(request, blocked_error(instance))
        state = state_of(request)
        state.instance = instance
        state.app_slug = slug
        if request.method not in (b"GET", b"HEAD"):
            method = request.method.decode("ascii", "replace")
            return self._app_error(request, 405, f"Method {method} not allowed")
        if not instance.onboarding_finished:
            return self._pages.redirect(
                request, f"{self._scheme}://{instance.domain}/", status=302
            )
        if self._installed is not None:
            return render_coroutine(
                request,
                self._serve_installed(request, instance, slug),
                lambda failure: self._failed(failure, request),
            )
        return self._serve_builtin(request, slug)

    async def _serve_installed(self, request: IRequest, instance: Instance, slug: str):
        doc = await self._installed.find(instance, slug)
        if doc is None:
            return self._serve_builtin(request, slug)
        return await self._installed.serve(request, instance, doc)

    def _serve_builtin(self, request: IRequest, slug: str):
        app = self._apps.get(slug)
        if app is None:
            return self._app_error(
                request,
                404,
                APP_NOT_INSTALLED,
                title=APP_NOT_FOUND_TITLE,
                message=APP_NOT_FOUND_MESSAGE,
            )
        return app.render(request)

    def _app_error(
        self,
        request: IRequest,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        message: str | None = None,
    ) -> bytes:
        """An error as cozy-stack's apps server answers it: an HTML page for
        browsers, ``{"error"}`` for JSON clients, else plain text."""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if request.method == b"HEAD":
            request.setResponseCode(status)
            return b""
        if "application/json" in accept:
            return json_response(request, {"error": detail}, status=status)
        if "text/html" in accept:
            instance = state_of(request).instance
            home = f"{self._scheme}://{app_host(instance.domain, HOME_SLUG, self._subdomains)}/"
            return self._pages.error_page(
                request,
                status,
                message or detail,
                title=title,
                link_url=home if status == 404 else None,
                link_label=self._pages.translate(request, BACK_HOME),
            )
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return detail.encode("utf-8")

    def _failed(self, failure, request: IRequest) -> bytes:
        return resolution_failed(failure, request)
