"""``/apps`` and ``/konnectors``: install, update, uninstall, list and show
an instance's web apps and konnectors, and their icons (cozy-stack's
apps.md and konnectors.md). One class, mounted twice (one kind each).

Installing, updating and uninstalling is for the operator's tools (CLI
tokens) and the store app (``io.cozy.apps/store``, registry sources
only), with a rule on the whole doctype for the verb; OAuth clients and
other apps get 403, as cozy-stack's ``AllowInstallApp``.

``POST``/``PUT`` answer 202 with the document once the manifest is read
(the rest of the work goes on), or, with ``Accept: text/event-stream``,
stream each state as ``event: state`` (``event: error`` on failure) until
the app is ready.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.apps import layout
from cozyd.apps.hosts import app_url
from cozyd.apps.installer import Installer
from cozyd.apps.manifest import INSTALLED, READY
from cozyd.errors import BadRequest, CozyError, NotFound, PermissionDenied, Unauthorized
from cozyd.web.common import JSONAPI, instance_of, json_response, jsonapi_errors
from cozyd.web.guard import Guard, authorize_document, permissions_of
from cozyd.web.params import query_bool, query_int, query_text
from cozyd.web.routing import NO_BODY, Service, route, token

log = Logger()

STORE_SOURCE = "io.cozy.apps/store"
EVENT_STREAM = b"text/event-stream"
MAX_LIST = 1000


def app_jsonapi(
    kind: str, doc: Mapping[str, Any], *, scheme: str, domain: str, subdomains: str
) -> dict[str, Any]:
    """An app's document as a JSON:API object, with cozy-stack's links."""
    attributes = {k: v for k, v in doc.items() if k not in ("_id", "_rev")}
    slug = doc.get("slug", "")
    prefix = "/apps/" if kind == layout.WEBAPP else "/konnectors/"
    links: dict[str, str] = {"self": prefix + slug}
    if doc.get("icon"):
        links["icon"] = f"{prefix}{slug}/icon/{doc.get('version', '')}"
    if kind == layout.WEBAPP:
        if doc.get("state") in (READY, INSTALLED):
            links["related"] = app_url(scheme, domain, slug, subdomains)
    else:
        links["permissions"] = f"/permissions/konnectors/{slug}"
    return {
        "type": layout.DOCTYPES[kind],
        "id": doc.get("_id", layout.doc_id(kind, slug)),
        "attributes": attributes,
        "meta": {"rev": doc.get("_rev", "")},
        "links": links,
    }


def parse_parameters(text: str | None) -> dict[str, Any] | None:
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise BadRequest("the Parameters parameter must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest("the Parameters parameter must be a JSON object")
    return value


class AppsService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        kind: str,
        installer: Installer,
        guard: Guard,
        *,
        sessions: Any = None,
        scheme: str = "https",
        subdomains: str = "nested",
    ):
        super().__init__()
        self.kind = kind
        self.doctype = layout.DOCTYPES[kind]
        self.installer = installer
        self.guard = guard
        self.sessions = sessions
        self.scheme = scheme
        self.subdomains = subdomains

    def _object(self, request: IRequest, doc: Mapping[str, Any]) -> dict[str, Any]:
        return app_jsonapi(
            self.kind,
            doc,
            scheme=self.scheme,
            domain=instance_of(request).domain,
            subdomains=self.subdomains,
        )

    def _answer(
        self, request: IRequest, doc: Mapping[str, Any], status: int = 200
    ) -> bytes:
        return json_response(
            request,
            {"data": self._object(request, doc)},
            status=status,
            content_type=JSONAPI,
        )

    async def _may_install(self, request: IRequest, source: str, verb: str) -> None:
        permissions = await self.guard.permissions(request)
        if not permissions.allows_collection(verb, self.doctype):
            raise PermissionDenied()
        if permissions.type == "cli":
            return
        if permissions.type == "app" and permissions.source_id == STORE_SOURCE:
            if source and not source.startswith("registry://"):
                raise PermissionDenied()
            return
        raise PermissionDenied()

    # -- reads -------------------------------------------------------------------
    @route("", "GET", auth=token())
    async def list(self, request: IRequest):
        if not permissions_of(request).allows_collection("GET", self.doctype):
            raise PermissionDenied()
        limit = query_int(request, "limit", minimum=1) or 100
        limit = min(limit, MAX_LIST)
        start = query_text(request, "start_key") or ""
        docs, next_key = await self.installer.list(
            instance_of(request), self.kind, limit=limit, start_key=start
        )
        body: dict[str, Any] = {
            "data": [self._object(request, d) for d in docs],
            "links": {},
            "meta": {"count": len(docs)},
        }
        if next_key:
            instance = instance_of(request)
            path = "/apps/" if self.kind == layout.WEBAPP else "/konnectors/"
            query = urlencode({"limit": str(limit), "start_key": next_key})
            body["links"]["next"] = f"{self.scheme}://{instance.domain}{path}?{query}"
        return json_response(request, body, content_type=JSONAPI)

    @route("{slug}", "GET", auth=token())
    async def show(self, request: IRequest, slug: str):
        doc = await self.installer.get(instance_of(request), self.kind, slug)
        authorize_document(request, self.doctype, doc["_id"], doc, verb="GET")
        return self._answer(request, doc)

    @route("{slug}/icon", "GET")
    async def icon(self, request: IRequest, slug: str):
        return await self._icon(request, slug, "")

    @route("{slug}/icon/{version}", "GET")
    async def icon_version(self, request: IRequest, slug: str, version: str):
        return await self._icon(request, slug, version)

    async def _icon(self, request: IRequest, slug: str, version: str) -> bytes:
        instance = instance_of(request)
        doc = await self.installer.get(instance, self.kind, slug)
        logged_in = self.sessions is not None and await self.sessions.logged_in(request)
        if not logged_in:
            try:
                await self.guard.permissions(request)
                authorize_document(request, self.doctype, doc["_id"], doc, verb="GET")
            except CozyError as exc:
                raise Unauthorized(exc.detail) from None
        icon = doc.get("icon")
        if not isinstance(icon, str) or not icon or not doc.get("version"):
            raise NotFound("this application has no icon")
        root = self.installer.code_dir(instance, self.kind, doc)
        path = os.path.realpath(os.path.join(root, icon.lstrip("/")))
        if not (path.startswith(os.path.realpath(root) + os.sep) and os.path.isfile(path)):
            raise NotFound("the icon of this application is missing")
        with open(path, "rb") as f:
            content = f.read(5 * 1024 * 1024)
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        request.setHeader(b"Content-Type", kind.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if kind == "image/svg+xml":
            request.setHeader(
                b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'"
            )
        if version:
            request.setHeader(b"Cache-Control", b"max-age=31536000, immutable")
        return content

    # -- writes ------------------------------------------------------------------
    @route("{slug}", "POST", auth=token(), body=NO_BODY)
    async def install(self, request: IRequest, slug: str):
        source = query_text(request, "Source") or f"registry://{slug}/stable"
        await self._may_install(request, source, "POST")
        parameters = parse_parameters(query_text(request, "Parameters"))
        deactivated = query_bool(request, "Deactivated") is True
        instance = instance_of(request)
        return await self._run(
            request,
            lambda on_state: self.installer.install(
                instance,
                self.kind,
                slug,
                source,
                deactivated=deactivated,
                parameters=parameters,
                on_state=on_state,
            ),
        )

    @route("{slug}", "PUT", auth=token(), body=NO_BODY)
    async def update(self, request: IRequest, slug: str):
        source = query_text(request, "Source") or ""
        await self._may_install(request, source, "POST")
        parameters = parse_parameters(query_text(request, "Parameters"))
        acked = query_bool(request, "PermissionsAcked")
        if acked is None:
            acked = self.kind == layout.KONNECTOR  # the reference's defaults
        instance = instance_of(request)
        return await self._run(
            request,
            lambda on_state: self.installer.update(
                instance,
                self.kind,
                slug,
                source or None,
                permissions_acked=acked,
                parameters=parameters,
                on_state=on_state,
            ),
        )

    @route("{slug}", "DELETE", auth=token())
    async def uninstall(self, request: IRequest, slug: str):
        await self._may_install(request, f"registry://{slug}", "DELETE")
        doc = await self.installer.uninstall(instance_of(request), self.kind, slug)
        return self._answer(request, doc)

    async def _run(self, request: IRequest, start) -> bytes:
        """Run an install or update: 202 at its first state, or the whole
        run as an event stream."""
        streaming = (request.getHeader(b"accept") or b"").strip() == EVENT_STREAM
        if streaming:
            return await self._stream(request, start)
        first: defer.Deferred = defer.Deferred()

        def on_state(doc: dict[str, Any]) -> None:
            if not first.called:
                first.callback(doc)

        def failed(failure):
            if not first.called:
                first.errback(failure)
            elif not failure.check(CozyError):
                log.failure("an install went wrong", failure)
            return None

        work = defer.Deferred.fromCoroutine(start(on_state))
        work.addErrback(failed)
        doc = await first
        return self._answer(request, doc, status=202)

    async def _stream(self, request: IRequest, start) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", EVENT_STREAM)
        request.setHeader(b"Cache-Control", b"no-store")

        def write(event: str, data: str) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(f"event: {event}\r\ndata: {data}\r\n\r\n".encode())

        def on_state(doc: dict[str, Any]) -> None:
            body = json.dumps({"data": self._object(request, doc)}, separators=(",", ":"))
            write("state", body)

        try:
            await start(on_state)
        except CozyError as exc:
            write("error", json.dumps(exc.detail))
        return b""
