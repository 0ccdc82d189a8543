"""Manifests of web apps (``manifest.webapp``) and konnectors
(``manifest.konnector``): parsed, checked, turned into the app's document.

Only what cozyd relies on is checked strictly (the fields' types, the
permissions, the routes, the version that names the code's folder);
every other field of the manifest is kept as it came, as cozy-stack keeps
them in the document. Errors say which field is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cozyd.apps.layout import DOCTYPES, KONNECTOR, WEBAPP
from cozyd.errors import BadRequest, Unprocessable
from cozyd.permissions.rules import InvalidPermission, PermissionSet

MANIFEST_NAMES = {WEBAPP: "manifest.webapp", KONNECTOR: "manifest.konnector"}
#: A manifest larger than this is refused before it is parsed.
MAX_MANIFEST_SIZE = 512 * 1024
MAX_DEPTH = 32
SLUG_RE = re.compile(r"^[a-z0-9\-]+$")
MAX_SLUG_LENGTH = 64
#: A version names a folder: no separators, no dot-only names.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}$")

# States of an installed app (cozy-stack's names).
INSTALLING = "installing"
INSTALLED = "installed"
READY = "ready"
UPGRADING = "upgrading"
ERRORED = "errored"
SERVABLE = (READY, INSTALLED, UPGRADING)

DEFAULT_ROUTES = {"/": {"folder": "/", "index": "index.html", "public": False}}
#: Fields the stack sets itself, never taken from a manifest.
STACK_FIELDS = (
    "_id",
    "_rev",
    "slug",
    "state",
    "source",
    "checksum",
    "created_at",
    "updated_at",
    "available_version",
    "error",
)


class InvalidSlug(Unprocessable):
    code = "invalid_slug"

    def __init__(self, slug: str = ""):
        super().__init__("Invalid slug name")
        self.source = {"parameter": "slug"}


class InvalidManifest(BadRequest):
    code = "invalid_manifest"

    def __init__(self, reason: str):
        super().__init__(f"Application manifest is invalid or malformed: {reason}")


def check_slug(slug: Any) -> str:
    if (
        not isinstance(slug, str)
        or not slug
        or len(slug) > MAX_SLUG_LENGTH
        or not SLUG_RE.fullmatch(slug)
    ):
        raise InvalidSlug()
    return slug


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _string(manifest: Mapping[str, Any], field: str, *, required: bool = False) -> None:
    value = manifest.get(field)
    if value is None:
        if required:
            raise InvalidManifest(f"the field {field!r} is missing")
        return
    if not isinstance(value, str):
        raise InvalidManifest(f"the field {field!r} must be a string")


def _object(manifest: Mapping[str, Any], field: str) -> Mapping[str, Any] | None:
    value = manifest.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidManifest(f"the field {field!r} must be an object")
    return value


def check_routes(routes: Mapping[str, Any]) -> None:
    for path, route in routes.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidManifest(f"the route {path!r} must start with /")
        if not isinstance(route, dict):
            raise InvalidManifest(f"the route {path!r} must be an object")
        folder = route.get("folder")
        if not isinstance(folder, str) or not folder:
            raise InvalidManifest(f"the route {path!r} needs a folder")
        if ".." in folder.split("/"):
            raise InvalidManifest(f"the folder of the route {path!r} leaves the app")
        index = route.get("index", "")
        if not isinstance(index, str):
            raise InvalidManifest(f"the index of the route {path!r} must be a string")
        if ".." in index.split("/"):
            raise InvalidManifest(f"the index of the route {path!r} leaves the app")
        if not isinstance(route.get("public", False), bool):
            raise InvalidManifest(f"the field 'public' of the route {path!r} is a boolean")


def check_services(services: Mapping[str, Any]) -> None:
    for name, service in services.items():
        if not isinstance(service, dict):
            raise InvalidManifest(f"the service {name!r} must be an object")
        for field in ("type", "file", "trigger", "debounce"):
            if field in service and not isinstance(service[field], str):
                raise InvalidManifest(f"the field {field!r} of the service {name!r}")


def parse_manifest(data: bytes, kind: str) -> dict[str, Any]:
    """The manifest in ``data``, checked for an app of ``kind``; raises
    ``InvalidManifest`` (400) saying what is wrong."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidManifest(f"it is larger than {MAX_MANIFEST_SIZE} bytes")
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidManifest("it is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise InvalidManifest("it must be a JSON object")
    if _depth(manifest) > MAX_DEPTH:
        raise InvalidManifest(f"it is nested deeper than {MAX_DEPTH} levels")
    declared = manifest.get("type")
    if declared is not None and declared not in ("webapp", "konnector"):
        raise InvalidManifest(f"unknown type {declared!r}")
    if declared == "konnector" and kind == WEBAPP:
        raise InvalidManifest(
            "Manifest type is not valid for a webapp. Maybe you want to install a konnector?"
        )
    if declared == "webapp" and kind == KONNECTOR:
        raise InvalidManifest(
            "Manifest type is not valid for a konnector. Maybe you want to install a webapp?"
        )
    for field in ("name", "name_prefix", "editor", "icon", "slug", "language"):
        _string(manifest, field)
    _string(manifest, "version", required=True)
    if not VERSION_RE.fullmatch(manifest["version"]) or ".." in manifest["version"]:
        raise InvalidManifest("the version may only hold letters, digits and . _ + -")
    try:
        PermissionSet.from_json(manifest.get("permissions"), type="app")
    except InvalidPermission as exc:
        raise InvalidManifest(f"permissions: {exc.detail}") from None
    routes = _object(manifest, "routes")
    if routes is not None:
        check_routes(routes)
    services = _object(manifest, "services")
    if services is not None:
        check_services(services)
    for field in ("locales", "notifications", "fields", "terms"):
        _object(manifest, field)
    if "parameters" in manifest and not isinstance(
        manifest["parameters"], (dict, type(None))
    ):
        raise InvalidManifest("the field 'parameters' must be an object")
    return manifest


def app_document(
    kind: str,
    slug: str,
    manifest: Mapping[str, Any],
    *,
    state: str,
    source: str,
    checksum: str,
    now: str,
    created_at: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The ``io.cozy.apps`` / ``io.cozy.konnectors`` document of an app
    installed from ``manifest`` (cozyd.apps.layout's contract)."""
    doc = {k: v for k, v in manifest.items() if k not in STACK_FIELDS}
    doc.update(
        {
            "_id": f"{DOCTYPES[kind]}/{slug}",
            "slug": slug,
            "state": state,
            "source": source,
            "version": version or manifest["version"],
            "checksum": checksum,
            "created_at": created_at or now,
            "updated_at": now,
        }
    )
    if kind == WEBAPP:
        doc["routes"] = manifest.get("routes") or DEFAULT_ROUTES
        doc.setdefault("services", manifest.get("services") or {})
    doc.setdefault("permissions", {})
    return doc


def find_route(
    routes: Mapping[str, Any], path: str
) -> tuple[str, dict[str, Any], str] | None:
    """The most specific route of ``path``: (route path, route, the file
    below its folder — "" for the route itself, which serves its index)."""
    best = None
    for prefix, route in routes.items():
        if not isinstance(route, dict):
            continue
        base = prefix.rstrip("/")
        if path in (base, prefix) or (base == "" and path == "/"):
            rest = ""
        elif path.startswith(base + "/"):
            rest = path[len(base) + 1 :]
        else:
            continue
        if best is None or len(base) > len(best[0].rstrip("/")):
            best = (prefix, route, rest)
    return best
