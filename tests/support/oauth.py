"""Helpers shared by the OAuth tests (tests/unit/web/test_oauth_*)."""

import json

from cozyd.auth.oauth import AccessCodes
from cozyd.instance.model import Instance
from cozyd.storage.names import INSTANCES_DB
from cozyd.testing import MemoryClient, Response, sync
from tests.unit.web.conftest import ADMIN, AUTH, create

ALICE = "http://alice.cozy.test"
BOB = "http://bob.cozy.test"
REDIRECT = "https://client.example.org/oauth/callback"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class PageClient(MemoryClient):
    """A MemoryClient that does not follow redirects (we check them)."""

    def request(self, method, url, *, headers=None, params=None, auth=None, data=None):
        d = self._stub.request(
            method,
            url,
            headers=dict(headers or {}),
            params=params,
            data=data,
            allow_redirects=False,
        )
        response = self._wait(d)
        body = self._wait(response.content())
        flat = {
            k.decode().lower(): v[-1].decode()
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, flat, body)


def instance_of(stack, domain="alice.cozy.test"):
    return Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new(domain).id))
    )


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def admin_token(admin, domain="alice.cozy.test", **params):
    response = admin.request(
        "POST", ADMIN + "/instances/token", auth=AUTH, params={"Domain": domain, **params}
    )
    assert response.status == 200, response.body
    return response.body.decode()


def register(public, body=None, *, url=ALICE, headers=None, **fields):
    if body is None:
        body = {
            "redirect_uris": [REDIRECT],
            "client_name": "Client",
            "software_id": "github.com/example/client",
            **fields,
        }
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return public.request(
        "POST",
        url + "/auth/register",
        data=data,
        headers=JSON_HEADERS if headers is None else headers,
    )


def registered(public, **fields):
    response = register(public, **fields)
    assert response.status == 201, response.body
    return response.json()


def make_code(stack, clock, client_id, scope, challenge="", domain="alice.cozy.test"):
    codes = AccessCodes(stack.documents, seconds=clock.seconds)
    return sync(codes.create(instance_of(stack, domain), client_id, scope, challenge))


def form(pairs):
    from urllib.parse import urlencode

    return urlencode(pairs).encode()


def token_request(public, url=ALICE, **fields):
    return public.request(
        "POST",
        url + "/auth/access_token",
        data=form(fields),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )


__all__ = ["ADMIN", "AUTH", "create"]
