"""A small client of ``/files`` for the tests, over the real daemon (HTTP)
or the in-memory stack, so the same test code runs on both engines."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote, urlencode

import attrs


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def data(self) -> Any:
        return self.json()["data"]


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


class FilesClient:
    """``send(method, path, headers, data) -> Reply`` is the transport."""

    def __init__(self, send, token: str | None):
        self._send = send
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        body: Any = None,
        token: str | bool | None = True,
    ) -> Reply:
        url = path
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, quote_via=quote)
        all_headers = {"Accept": "application/vnd.api+json", **(headers or {})}
        bearer = self.token if token is True else token
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/vnd.api+json")
        reply = self._send(method, url, all_headers, data)
        assert reply.status < 500, (method, path, reply.status, reply.body[:500])
        return reply

    # -- the common calls ------------------------------------------------------------
    def mkdir(self, name: str, parent: str = "", **params: str) -> Reply:
        return self.request(
            "POST",
            f"/files/{quote(parent, safe='')}",
            params={"Type": "directory", "Name": name, **params},
        )

    def upload(
        self,
        name: str,
        content: bytes,
        parent: str = "",
        *,
        md5: str | bool | None = True,
        headers: dict[str, str] | None = None,
        **params: str,
    ) -> Reply:
        all_headers = {"Content-Type": "text/plain", **(headers or {})}
        if md5 is True:
            all_headers["Content-MD5"] = md5_b64(content)
        elif md5:
            all_headers["Content-MD5"] = md5
        return self.request(
            "POST",
            f"/files/{quote(parent, safe='')}",
            params={"Type": "file", "Name": name, **params},
            headers=all_headers,
            data=content,
        )

    def get(self, doc_id: str, **params: str) -> Reply:
        return self.request("GET", f"/files/{quote(doc_id, safe='')}", params=params)

    def download(
        self, doc_id: str, headers: dict[str, str] | None = None, **params
    ) -> Reply:
        return self.request(
            "GET",
            f"/files/download/{quote(doc_id, safe='')}",
            params=params,
            headers=headers,
        )

    def patch(self, doc_id: str, attributes: dict[str, Any], **kw) -> Reply:
        return self.request(
            "PATCH",
            f"/files/{quote(doc_id, safe='')}",
            body={
                "data": {"type": "io.cozy.files", "id": doc_id, "attributes": attributes}
            },
            **kw,
        )

    def trash(self, doc_id: str, **kw) -> Reply:
        return self.request("DELETE", f"/files/{quote(doc_id, safe='')}", **kw)


def daemon_transport(daemon, domain: str):
    from tests.support.daemon import http

    def send(method, url, headers, data):
        r = http(method, daemon.public_url + url, host=domain, headers=headers, data=data)
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.body)

    return send


def memory_transport(client, base: str):
    def send(method, url, headers, data):
        r = client.request(method, base + url, headers=headers, data=data)
        return Reply(r.status, r.headers, r.body)

    return send
