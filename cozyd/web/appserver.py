"""Serving an installed web app on its host (``cozyd.web.apphosts`` picks
the app; this serves its files), as cozy-stack's apps server:

- the most specific route of the manifest gives the folder; the route's
  own path serves its index, rendered with the template variables of
  client-app-dev.md (``{{.Token}}``, ``{{.Domain}}``, ``{{.CozyData}}``…);
- private routes: without the owner's session, the index redirects to the
  login page (which comes back here) and assets answer 401;
- assets whose name holds a long hexadecimal id (``app.badf00dbadf00d.js``)
  are cached a year, ``immutable``; the index is never cached;
- every answer carries the reference's Content-Security-Policy (the
  instance and its apps as sources, no objects, framed only by itself) and
  ``X-Content-Type-Options: nosniff``.

Only the variables named below are substituted — the rest of the file is
left as it is. Values are escaped for where they stand, as Go's
html/template would: a JSON string inside ``<script>``, HTML-escaped
elsewhere; the stack's own HTML snippets (``CozyBar``…) go in as they are.
"""

from __future__ import annotations

import html
import json
import mimetypes
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode

from twisted.web.iweb import IRequest

from cozyd.apps import layout
from cozyd.apps.hosts import FLAT, app_url
from cozyd.apps.installer import Installer
from cozyd.apps.manifest import DEFAULT_ROUTES, SERVABLE, find_route
from cozyd.auth import tokens
from cozyd.instance.model import Instance

#: An asset named with a unique id: a hex part of 10+ characters between dots.
FINGERPRINT = re.compile(r"\.[0-9a-fA-F]{10,}\.")
PLACEHOLDER = re.compile(r"\{\{-?\s*\.([A-Za-z]+)\s*-?\}\}")
SCRIPT_OPEN = re.compile(rb"<script\b", re.IGNORECASE)
SCRIPT_CLOSE = re.compile(rb"</script\s*>", re.IGNORECASE)
#: The stack's own HTML snippets: inserted as they are.
RAW_HTML = frozenset(
    {"CozyBar", "CozyClientJS", "CozyFonts", "ThemeCSS", "Favicon", "Warnings"}
)
MAX_INDEX_SIZE = 5 * 1024 * 1024

for _type, _ext in (
    ("application/javascript", ".js"),
    ("application/javascript", ".mjs"),
    ("text/css", ".css"),
    ("image/svg+xml", ".svg"),
    ("application/manifest+json", ".webmanifest"),
    ("application/wasm", ".wasm"),
    ("font/woff2", ".woff2"),
    ("application/json", ".webapp"),
    ("application/json", ".konnector"),
):
    mimetypes.add_type(_type, _ext)


def js_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


def _in_script(template: bytes, pos: int) -> bool:
    opened = None
    for match in SCRIPT_OPEN.finditer(template, 0, pos):
        opened = match.end()
    if opened is None:
        return False
    return SCRIPT_CLOSE.search(template, opened, pos) is None


def render_template(template: bytes, values: Mapping[str, str]) -> bytes:
    """``{{.Name}}`` replaced for the names in ``values``, escaped for
    their context; other text and unknown names left untouched."""
    text = template.decode("utf-8", "replace")
    raw = text.encode("utf-8")
    out: list[str] = []
    last = 0
    byte_pos = 0
    for match in PLACEHOLDER.finditer(text):
        name = match.group(1)
        if name not in values:
            continue
        out.append(text[last : match.start()])
        byte_pos += len(text[last : match.start()].encode("utf-8"))
        value = values[name]
        if name in RAW_HTML:
            out.append(value)
        elif _in_script(raw, byte_pos):
            out.append(js_string(value))
        else:
            out.append(html.escape(value, quote=True))
        byte_pos += len(match.group(0).encode("utf-8"))
        last = match.end()
    out.append(text[last:])
    return "".join(out).encode("utf-8")


def content_security_policy(scheme: str, domain: str, subdomains: str) -> str:
    secure = scheme == "https"
    parent = f"{'https' if secure else 'http'}://{domain}"
    ws = f"{'wss' if secure else 'ws'}://{domain}"
    if subdomains == FLAT and "." in domain:
        siblings = f"{'https' if secure else 'http'}://*.{domain.partition('.')[2]}"
    else:
        siblings = f"{'https' if secure else 'http'}://*.{domain}"
    defaults = f"'self' {parent} {ws}"
    directives = [
        ("default-src", defaults),
        ("script-src", f"'wasm-unsafe-eval' {defaults}"),
        ("frame-src", f"{siblings} {defaults}"),
        ("connect-src", f"blob: {defaults}"),
        ("font-src", f"data: {defaults}"),
        ("img-src", f"data: blob: {defaults}"),
        ("manifest-src", defaults),
        ("media-src", defaults),
        ("object-src", "'none'"),
        ("style-src", f"'unsafe-inline' {defaults}"),
        ("worker-src", "'self' blob:"),
        ("frame-ancestors", "'self'"),
        ("base-uri", "'self'"),
        ("form-action", parent),
    ]
    return "".join(f"{name} {sources};" for name, sources in directives)


class AppServer:
    def __init__(
        self,
        installer: Installer,
        *,
        sessions: Any,
        pages: Any,
        settings_of: Callable[[Instance], Any],
        seconds: Callable[[], float],
        scheme: str,
        subdomains: str,
    ):
        self._installer = installer
        self._sessions = sessions
        self._pages = pages
        self._settings_of = settings_of
        self._seconds = seconds
        self._scheme = scheme
        self._subdomains = subdomains

    async def find(self, instance: Instance, slug: str) -> dict[str, Any] | None:
        return await self._installer.find(instance, layout.WEBAPP, slug)

    def _headers(self, request: IRequest, instance: Instance) -> None:
        request.setHeader(
            b"Content-Security-Policy",
            content_security_policy(
                self._scheme, instance.domain, self._subdomains
            ).encode(),
        )
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self._scheme == "https":
            request.setHeader(
                b"Strict-Transport-Security", b"max-age=31536000; includeSubDomains"
            )

    async def serve(
        self, request: IRequest, instance: Instance, doc: dict[str, Any]
    ) -> bytes:
        self._headers(request, instance)
        slug = doc["slug"]
        if doc.get("state") not in SERVABLE or not doc.get("version"):
            return self._plain(request, 503, "Application is not ready")
        raw_path = request.uri.split(b"?", 1)[0].decode("utf-8", "replace")
        path = posixpath.normpath("/" + unquote(raw_path).lstrip("/"))
        routes = doc.get("routes") or DEFAULT_ROUTES
        found = find_route(routes, path)
        if found is None:
            return self._plain(request, 404, "Page not found")
        _, route, rest = found
        index = route.get("index") or ""
        is_index = rest == "" or rest == index
        file = rest or index
        if not file:
            return self._plain(request, 404, "Page not found")
        session = await self._sessions.current(request)
        if not route.get("public", False) and session is None:
            if not is_index:
                return self._plain(request, 401, "You must be authenticated")
            query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
            here = app_url(
                self._scheme, instance.domain, slug, self._subdomains, path, query
            )
            params = [("redirect", here)]
            jwt = request.args.get(b"jwt")
            if jwt:
                params.append(("jwt", jwt[-1].decode("utf-8", "replace")))
            location = f"{self._scheme}://{instance.domain}/auth/login?{urlencode(params)}"
            return self._pages.redirect(request, location, status=302)
        root = os.path.realpath(self._installer.code_dir(instance, layout.WEBAPP, doc))
        folder = str(route.get("folder") or "/").strip("/")
        target = os.path.realpath(os.path.join(root, folder, file))
        if not target.startswith(root + os.sep) or not os.path.isfile(target):
            return self._plain(request, 404, "Asset not found")
        if not is_index:
            if FINGERPRINT.search(posixpath.basename(file)):
                request.setHeader(b"Cache-Control", b"max-age=31536000, immutable")
            kind = mimetypes.guess_type(target)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind in (
                "application/javascript",
                "application/json",
            ):
                kind += "; charset=utf-8"
            request.setHeader(b"Content-Type", kind.encode("ascii"))
            with open(target, "rb") as f:
                return f.read()
        with open(target, "rb") as f:
            template = f.read(MAX_INDEX_SIZE)
        values = await self._values(instance, doc, session)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"private, no-store, must-revalidate")
        return render_template(template, values)

    async def _values(
        self, instance: Instance, doc: Mapping[str, Any], session: Any
    ) -> dict[str, str]:
        token = ""
        if session is not None:
            token = tokens.issue(
                instance,
                tokens.APP,
                doc["slug"],
                issued_at=self._seconds(),
                session_id=session.id,
            )
        settings = await self._settings_of(instance)
        tracking = "true" if settings.get("tracking") == "true" else "false"
        locale = instance.locale or "en"
        name = doc.get("name") or doc["slug"]
        locales = doc.get("locales")
        if isinstance(locales, dict) and isinstance(locales.get(locale), dict):
            localized = locales[locale].get("name")
            if isinstance(localized, str) and localized:
                name = localized
        capabilities = {
            "file_versioning": True,
            "flat_subdomains": self._subdomains == FLAT,
            "can_auth_with_password": True,
        }
        app = {
            "editor": str(doc.get("editor") or ""),
            "name": str(name),
            "prefix": str(doc.get("name_prefix") or ""),
            "slug": doc["slug"],
            "icon": str(doc.get("icon") or ""),
        }
        data = {
            "token": token,
            "domain": instance.domain,
            "subdomain": self._subdomains,
            "tracking": tracking == "true",
            "locale": locale,
            "isLoggedIn": session is not None,
            "app": app,
            "flags": {},
            "capabilities": capabilities,
        }
        return {
            "Token": token,
            "Domain": instance.domain,
            "ContextName": instance.context or "",
            "Locale": locale,
            "AppSlug": doc["slug"],
            "AppName": app["name"],
            "AppEditor": app["editor"],
            "AppNamePrefix": app["prefix"],
            "IconPath": app["icon"],
            "SubDomain": self._subdomains,
            "Tracking": tracking,
            "Capabilities": json.dumps(capabilities, separators=(",", ":")),
            "Flags": "{}",
            "CozyData": json.dumps(data, separators=(",", ":")),
            "CozyBar": "",
            "CozyClientJS": "",
            "CozyFonts": "",
            "ThemeCSS": "",
            "Favicon": "",
            "Warnings": "",
            "DefaultWallpaper": "",
        }

    @staticmethod
    def _plain(request: IRequest, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "application/json" in accept:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"error": message}).encode()
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return message.encode("utf-8")
