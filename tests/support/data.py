"""Helpers for the /data tests (no tests here): an instance, tokens, and a
small client speaking JSON to ``/data`` of the in-memory stack."""

from __future__ import annotations

import json
from typing import Any

from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import MemoryClient, sync
from tests.unit.web.conftest import ADMIN, AUTH, create

DOMAIN = "alice.cozy.test"
BASE = f"http://{DOMAIN}/data"
#: What most tests use: every doctype they touch, whole type, all verbs.
FULL_SCOPE = (
    "io.cozy.events io.cozy.notes io.cozy.doctypes io.cozy.files "
    "io.cozy.permissions io.cozy.nottype io.cozy.fresh io.cozy.jobs"
)


def new_instance(admin: MemoryClient, domain: str = DOMAIN) -> Instance:
    response = create(admin, domain)
    assert response.status == 201, response.body
    return Instance.new(domain)


def token(admin: MemoryClient, domain: str = DOMAIN, **params: str) -> str:
    response = admin.request(
        "POST", ADMIN + "/instances/token", auth=AUTH, params={"Domain": domain, **params}
    )
    assert response.status == 200, response.body
    return response.body.decode()


def cli_token(admin: MemoryClient, scope: str = FULL_SCOPE, domain: str = DOMAIN) -> str:
    return token(admin, domain, Audience="cli", Scope=scope)


def app_token(
    stack, admin: MemoryClient, slug: str, permissions: dict[str, Any], domain: str = DOMAIN
) -> str:
    """An app token whose permission document is written first."""
    prefix = Instance.new(domain).prefix
    sync(
        stack.store.put_doc(
            db_name(prefix, "io.cozy.permissions"),
            {
                "_id": f"perm-{slug}",
                "type": "app",
                "source_id": f"io.cozy.apps/{slug}",
                "permissions": permissions,
            },
        )
    )
    return token(admin, domain, Audience="app", Subject=slug)


def json_request(
    bearer: str | None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[dict[str, str], bytes | None]:
    """The headers and body of a JSON request: ``body`` encoded (or ``raw``
    as it is), the bearer token, JSON asked for and declared."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    if bearer:
        all_headers["Authorization"] = f"Bearer {bearer}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        all_headers.setdefault("Content-Type", "application/json")
    return all_headers, data


class Data:
    """JSON requests to ``/data`` with a bearer token."""

    def __init__(self, public: MemoryClient, bearer: str | None, base: str = BASE):
        self.public = public
        self.bearer = bearer
        self.base = base

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ):
        all_headers, data = json_request(self.bearer, body, raw, headers)
        return self.public.request(
            method, self.base + path, headers=all_headers, params=params, data=data
        )

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs):
        return self.request("PUT", path, body, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def create(self, doctype: str, doc: dict[str, Any]) -> dict[str, Any]:
        response = self.post(f"/{doctype}/", doc)
        assert response.status == 201, response.body
        return response.json()


def events_of(stack, domain: str = DOMAIN, doctype: str | None = None) -> list[dict]:
    """Subscribe to the stack's hub; the list fills as events come."""
    got: list[dict] = []
    stack.hub.subscribe(Instance.new(domain), doctype, got.append)
    return got


def seq_number(seq: str) -> int:
    return int(str(seq).split("-")[0])
