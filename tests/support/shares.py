"""Helpers for the share-by-link tests (no tests here): JSON:API bodies of
``POST /permissions`` and a client speaking to ``/permissions`` and
``/data`` with a bearer token."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from cozyd.testing import MemoryClient

DOMAIN = "alice.cozy.test"
BASE = f"http://{DOMAIN}"


def share_body(permissions: dict[str, Any], **attributes: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "io.cozy.permissions",
            "attributes": {"permissions": permissions, **attributes},
        }
    }


def rule(doctype: str, verbs=("GET",), values=(), selector: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"type": doctype, "verbs": list(verbs)}
    if values:
        result["values"] = list(values)
    if selector:
        result["selector"] = selector
    return result


class Client:
    """Requests with ``bearer`` (None: no token) to one instance."""

    def __init__(self, public: MemoryClient, bearer: str | None, base: str = BASE):
        self.public = public
        self.bearer = bearer
        self.base = base

    def with_token(self, bearer: str | None) -> Client:
        return Client(self.public, bearer, self.base)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ):
        all_headers = {"Accept": "application/vnd.api+json", **(headers or {})}
        if self.bearer:
            all_headers["Authorization"] = f"Bearer {self.bearer}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            all_headers.setdefault("Content-Type", "application/vnd.api+json")
        url = self.base + path
        if params:
            url += "?" + urlencode(params)
        return self.public.request(method, url, headers=all_headers, data=data)

    def create(self, permissions: dict[str, Any], codes: str = "bob", **kw: Any):
        params = {"codes": codes, **kw.pop("params", {})}
        return self.request(
            "POST", "/permissions", share_body(permissions, **kw), params=params
        )

    def data(self, method: str, path: str, body: Any = None, **kw: Any):
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.request(method, "/data" + path, body, headers=headers, **kw)
