"""``/permissions``: what the caller may do, and shares by link.

- ``GET /permissions/self``: the caller's permission set (a share token:
  its share document, codes hidden);
- ``POST /permissions?codes=a,b[&ttl=1D][&tiny=true]``: a share of part of
  the caller's permissions, with a code and a shortcode per name;
- ``GET|PATCH|DELETE /permissions/:id``: read, change, revoke a share;
- ``POST /permissions/exists``: which of some documents shares name;
- ``GET /permissions/doctype/:doctype/shared-by-link`` (and the legacy
  ``sharedByLink``): the shares with a rule on a doctype, paginated.

``POST /auth/share-by-link/password`` (``ShareLinkPasswordService``,
mounted at ``auth/share-by-link``) checks the password of a protected
share and sets the cookie its codes then need.

The rules are in ``cozyd.permissions.sharing``; this module parses and
renders.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from twisted.web.iweb import IRequest

from cozyd.auth.limits import RateLimiter
from cozyd.auth.sessions import cookie_domain
from cozyd.documents import rules as doc_rules
from cozyd.errors import BadRequest, CozyError, PermissionDenied
from cozyd.permissions.sharing import (
    DEFAULT_PAGE,
    MAX_PAGE,
    SHARE,
    ShareLinks,
    jsonapi_object,
    password_cookie_name,
)
from cozyd.web.bodies import read_json
from cozyd.web.common import JSON, JSONAPI, instance_of, json_response, jsonapi_errors
from cozyd.web.guard import Guard
from cozyd.web.params import form_value, query_bool, query_param
from cozyd.web.routing import Service, json_body, route, shield, token

#: Bodies of the routes that write a share (rules, codes, metadata).
MAX_SHARE_BODY = 256 * 1024
#: Documents one ``POST /permissions/exists`` asks about at most.
MAX_EXISTS = 1000
#: Wrong passwords a share takes per hour before it answers 429.
PASSWORD_FAILURES_PER_HOUR = 50

_MALFORMED = "JSON input is malformed or is missing mandatory fields"


def read_attributes(request: IRequest) -> dict[str, Any]:
    """The ``data.attributes`` of a JSON:API body (400 if there are none)."""
    body = read_json(request, MAX_SHARE_BODY)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise BadRequest(_MALFORMED)
    attributes = data.get("attributes", {})
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise BadRequest(_MALFORMED)
    if "cozyMetadata" in data and "cozyMetadata" not in attributes:
        attributes = {**attributes, "cozyMetadata": data["cozyMetadata"]}
    return attributes


class PermissionsService(Service):
    errors = jsonapi_errors

    def __init__(self, guard: Guard, shares: ShareLinks | None = None):
        super().__init__()
        self.guard = guard
        self.shares = shares if shares is not None else guard.shares

    def _shares(self) -> ShareLinks:
        if self.shares is None:
            raise CozyError("shares by link are not served here", status=404)
        return self.shares

    def _answer(self, request: IRequest, doc: dict[str, Any], *, with_codes: bool):
        return json_response(
            request,
            {"data": jsonapi_object(doc, with_codes=with_codes)},
            content_type=JSONAPI,
        )

    @route("self", "GET", auth=token())
    async def show_self(self, request: IRequest):
        permissions = await self.guard.permissions(request)
        if permissions.type == SHARE and permissions.id and self.shares is not None:
            doc = await self.shares.read(instance_of(request), permissions.id)
            if doc is not None:
                return self._answer(request, doc, with_codes=False)
        return json_response(
            request,
            {
                "data": {
                    "type": "io.cozy.permissions",
                    "id": permissions.id or permissions.source_id or permissions.subject,
                    "attributes": {
                        "type": permissions.type,
                        "source_id": permissions.source_id,
                        "permissions": permissions.permissions_json(),
                    },
                    "meta": {},
                }
            },
            content_type=JSONAPI,
        )

    @route("", "POST", auth=token(), body=json_body(MAX_SHARE_BODY))
    async def create(self, request: IRequest):
        shares = self._shares()
        caller = await self.guard.permissions(request)
        attributes = read_attributes(request)
        tiny = query_bool(request, "tiny")
        if tiny is None:
            tiny = query_bool(request, "tinycode")
        doc = await shield(
            shares.create(
                instance_of(request),
                caller,
                attributes,
                names=query_param(request, "codes"),
                ttl=query_param(request, "ttl"),
                tiny=bool(tiny),
            )
        )
        return self._answer(request, doc, with_codes=True)

    @route("exists", "POST", auth=token(), body=json_body(MAX_SHARE_BODY))
    async def exists(self, request: IRequest):
        """Which of these documents a share names, with which verbs (only
        for the doctypes the caller reads whole)."""
        shares = self._shares()
        caller = await self.guard.permissions(request)
        body = read_json(request, MAX_SHARE_BODY)
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise BadRequest(_MALFORMED)
        if len(data) > MAX_EXISTS:
            raise BadRequest(f"at most {MAX_EXISTS} documents at a time")
        refs: list[tuple[str, str]] = []
        for item in data:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("type"), str)
                or not isinstance(item.get("id"), str)
            ):
                raise BadRequest(_MALFORMED)
            if caller.type != SHARE and caller.allows_collection("GET", item["type"]):
                refs.append((item["type"], item["id"]))
        found = await shares.verbs_on(instance_of(request), refs)
        return json_response(request, {"data": found}, content_type=JSONAPI)

    @route("{perm_id}", "GET", auth=token())
    async def show(self, request: IRequest, perm_id: str):
        shares = self._shares()
        caller = await self.guard.permissions(request)
        instance = instance_of(request)
        doc = await shares.get(instance, perm_id)
        if not await shares.may_read(instance, caller, doc):
            raise PermissionDenied()
        return self._answer(request, doc, with_codes=False)

    @route("{perm_id}", "PATCH", auth=token(), body=json_body(MAX_SHARE_BODY))
    async def patch(self, request: IRequest, perm_id: str):
        shares = self._shares()
        caller = await self.guard.permissions(request)
        attributes = read_attributes(request)
        doc = await shield(shares.patch(instance_of(request), caller, perm_id, attributes))
        return self._answer(request, doc, with_codes=True)

    @route("{perm_id}", "DELETE", auth=token())
    async def revoke(self, request: IRequest, perm_id: str):
        shares = self._shares()
        caller = await self.guard.permissions(request)
        await shield(shares.revoke(instance_of(request), caller, perm_id))
        request.setResponseCode(204)
        return b""

    @route("doctype/{doctype}/shared-by-link", "GET", auth=token())
    async def shared_by_link(self, request: IRequest, doctype: str):
        return await self._list(request, doctype, "shared-by-link")

    @route("doctype/{doctype}/sharedByLink", "GET", auth=token())
    async def shared_by_link_legacy(self, request: IRequest, doctype: str):
        return await self._list(request, doctype, "sharedByLink")

    async def _list(self, request: IRequest, doctype: str, name: str):
        shares = self._shares()
        caller = await self.guard.permissions(request)
        doc_rules.check_doctype_name(doctype)
        # A share's holder never sees other shares (their codes would give
        # it more than its own share).
        if caller.type == SHARE or not caller.allows_collection("GET", doctype):
            raise CozyError(
                "You need GET permission on whole type to list its permissions",
                status=403,
                code="forbidden",
            )
        limit = DEFAULT_PAGE
        text = query_param(request, "page[limit]")
        if text:
            try:
                limit = int(text)
            except ValueError:
                raise BadRequest("page limit is not a number") from None
            if limit < 1:
                raise BadRequest("page limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        after: str | None = None
        skip = 0
        cursor = query_param(request, "page[cursor]")
        if cursor:
            try:
                parts = json.loads(cursor)
            except ValueError:
                raise BadRequest(f"bad json cursor {cursor}") from None
            if not isinstance(parts, list) or len(parts) != 2:
                raise BadRequest(f"bad cursor length {cursor}")
            if not isinstance(parts[1], str):
                raise BadRequest(f"bad cursor id {cursor}")
            after = parts[1]
        else:
            text = query_param(request, "page[skip]")
            if text:
                try:
                    skip = int(text)
                except ValueError:
                    raise BadRequest("page skip is not a number") from None
                if skip < 0:
                    raise BadRequest("page skip must not be negative")
        docs, next_after = await shares.shared_by_link(
            instance_of(request), doctype, limit=limit, after=after, skip=skip
        )
        links: dict[str, str] = {}
        if next_after is not None:
            params = {
                "page[limit]": str(limit),
                "page[cursor]": json.dumps([[doctype, SHARE], next_after]),
            }
            links["next"] = f"/permissions/doctype/{doctype}/{name}?{urlencode(params)}"
        body: dict[str, Any] = {
            "data": [jsonapi_object(doc, with_codes=True) for doc in docs],
            "meta": {"count": len(docs)},
        }
        if links:
            body["links"] = links
        return json_response(request, body, content_type=JSONAPI)


class ShareLinkPasswordService(Service):
    """``POST /auth/share-by-link/password``: the password of a protected
    share, for a cookie (``pass<perm id>``) its codes need from then on."""

    errors = jsonapi_errors

    def __init__(self, shares: ShareLinks, limiter: RateLimiter, *, secure: bool):
        super().__init__()
        self.shares = shares
        self.limiter = limiter
        self.secure = secure

    @route("share-by-link/password", "POST", body=json_body(16 * 1024))
    async def check(self, request: IRequest):
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Vary", b"Origin")
        instance = instance_of(request)
        perm_id = form_value(request, "perm_id")
        key = f"{instance.prefix}/{perm_id}"
        if self.limiter.count(key) >= PASSWORD_FAILURES_PER_HOUR:
            return json_response(request, {"error": "Too many attempts"}, status=429)
        try:
            answer = await self.shares.check_password(
                instance, perm_id, form_value(request, "password")
            )
        except CozyError as e:
            if e.status == 403:
                self.limiter.hit(key, limit=PASSWORD_FAILURES_PER_HOUR, period=3600)
            return json_response(request, {"error": e.detail}, status=e.status)
        if answer == "ok":
            self.limiter.reset(key)
            parts = [
                f"{password_cookie_name(perm_id)}="
                f"{self.shares.password_cookie(instance, perm_id)}",
                "Path=/",
                f"Domain={cookie_domain(instance).lstrip('.')}",
                "HttpOnly",
            ]
            if self.secure:
                parts.append("Secure")
            parts.append("SameSite=Lax")
            request.cookies.append("; ".join(parts).encode("utf-8"))
        return json_response(request, {"password": answer}, content_type=JSON)
