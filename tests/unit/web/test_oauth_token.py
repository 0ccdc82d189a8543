"""``POST /auth/access_token`` (both grants, PKCE), ``/settings/clients`` and
the admin API's OAuth routes, through the in-memory stack."""

import jwt
import pytest

from cozyd.auth.oauth import code_challenge
from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import MemoryClient, sync
from tests.support.oauth import (
    ADMIN,
    ALICE,
    AUTH,
    BOB,
    REDIRECT,
    admin_token,
    bearer,
    create,
    make_code,
    registered,
    token_request,
)

VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


@pytest.fixture
def admin(oauth_stack):
    return MemoryClient(oauth_stack.admin)


@pytest.fixture
def public(oauth_stack, admin):
    create(admin, "alice.cozy.test")
    create(admin, "bob.cozy.test")
    return MemoryClient(oauth_stack.public)


def clients_db(domain="alice.cozy.test"):
    return db_name(Instance.new(domain).prefix, "io.cozy.oauth.clients")


def get_self(public, token, url=ALICE):
    return public.request("GET", url + "/permissions/self", headers=bearer(token))


def exchange(public, client, code, **extra):
    return token_request(
        public,
        grant_type="authorization_code",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        code=code,
        **extra,
    )


def test_code_for_tokens_then_refresh(oauth_stack, public, clock):
    client = registered(public)
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.contacts:GET")
    response = exchange(public, client, code)
    assert response.status == 200, response.body
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "refresh_token", "scope"}
    assert body["token_type"] == "bearer" and body["scope"] == "io.cozy.contacts:GET"
    access = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert access["aud"] == ["access"] and access["sub"] == client["client_id"]
    assert access["scope"] == "io.cozy.contacts:GET"
    permissions = get_self(public, body["access_token"])
    assert permissions.status == 200, permissions.body
    attributes = permissions.json()["data"]["attributes"]
    assert attributes["type"] == "oauth"
    assert attributes["permissions"]["rule0"] == {
        "type": "io.cozy.contacts",
        "verbs": ["GET"],
    }
    stored = sync(oauth_stack.store.get_doc(clients_db(), client["client_id"]))
    assert "pending" not in stored and stored["last_refreshed_at"].startswith("2027-")

    clock.advance(8 * 24 * 3600)  # the access token expired, not the refresh token
    assert get_self(public, body["access_token"]).status == 400
    refreshed = token_request(
        public,
        grant_type="refresh_token",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        refresh_token=body["refresh_token"],
    )
    assert refreshed.status == 200, refreshed.body
    again = refreshed.json()
    assert set(again) == {"access_token", "token_type", "scope"}  # no new refresh token
    assert again["scope"] == "io.cozy.contacts:GET"
    assert get_self(public, again["access_token"]).status == 200


def test_a_code_is_good_once(oauth_stack, public, clock):
    client = registered(public)
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files")
    assert exchange(public, client, code).status == 200
    reused = exchange(public, client, code)
    assert (reused.status, reused.json()) == (400, {"error": "invalid code"})


def test_a_code_expires_after_five_minutes(oauth_stack, public, clock):
    client = registered(public)
    fresh = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files")
    stale = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files")
    clock.advance(299)
    assert exchange(public, client, fresh).status == 200
    clock.advance(2)
    expired = exchange(public, client, stale)
    assert (expired.status, expired.json()) == (400, {"error": "invalid code"})


def test_a_code_is_for_its_client_only(oauth_stack, public, clock):
    client, other = registered(public), registered(public)
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files")
    assert exchange(public, other, code).json() == {"error": "invalid code"}


def test_a_code_of_another_instance_is_unknown(oauth_stack, public, clock):
    client = registered(public)
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files")
    response = token_request(
        public,
        url=BOB,
        grant_type="authorization_code",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        code=code,
    )
    assert response.json() == {"error": "the client must be registered"}


def test_pkce(oauth_stack, public, clock):
    client = registered(public)
    challenge = code_challenge(VERIFIER)
    assert challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636 B
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files", challenge)
    missing = exchange(public, client, code)
    assert (missing.status, missing.json()) == (400, {"error": "invalid code_verifier"})
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files", challenge)
    assert exchange(public, client, code, code_verifier="wrong").json() == {
        "error": "invalid code_verifier"
    }
    code = make_code(oauth_stack, clock, client["client_id"], "io.cozy.files", challenge)
    assert exchange(public, client, code, code_verifier=VERIFIER).status == 200


@pytest.mark.parametrize(
    "with_client,fields,error",
    [
        (False, {}, "the grant_type parameter is mandatory"),
        (
            False,
            {"grant_type": "authorization_code"},
            "the client_id parameter is mandatory",
        ),
        (
            False,
            {"grant_type": "authorization_code", "client_id": "x"},
            "the client_secret parameter is mandatory",
        ),
        (
            False,
            {"grant_type": "authorization_code", "client_id": "nope", "client_secret": "s"},
            "the client must be registered",
        ),
        (
            True,
            {"grant_type": "authorization_code", "client_secret": "wrong"},
            "invalid client_secret",
        ),
        (True, {"grant_type": "authorization_code"}, "the code parameter is mandatory"),
        (True, {"grant_type": "authorization_code", "code": "made-up"}, "invalid code"),
        (True, {"grant_type": "refresh_token"}, "invalid refresh token"),
        (
            True,
            {"grant_type": "refresh_token", "refresh_token": "garbage"},
            "invalid refresh token",
        ),
        (True, {"grant_type": "password"}, "invalid grant type"),
    ],
)
def test_token_errors(public, with_client, fields, error):
    client = registered(public)
    defaults = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
    response = token_request(public, **{**(defaults if with_client else {}), **fields})
    assert (response.status, response.json()) == (400, {"error": error})


def test_refresh_token_of_another_client_or_instance(oauth_stack, public, clock, admin):
    client, other = registered(public), registered(public)
    code = make_code(oauth_stack, clock, other["client_id"], "io.cozy.files")
    others = exchange(public, other, code).json()["refresh_token"]
    response = token_request(
        public,
        grant_type="refresh_token",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        refresh_token=others,
    )
    assert response.json() == {"error": "invalid refresh token"}
    access = admin_token(
        admin, Audience="access-token", Subject=client["client_id"], Scope="io.cozy.files"
    )
    response = token_request(
        public,
        grant_type="refresh_token",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        refresh_token=access,
    )
    assert response.json() == {"error": "invalid refresh token"}


# -- /settings/clients --------------------------------------------------------------


def test_list_and_revoke_clients(oauth_stack, public, clock, admin):
    first, second = registered(public), registered(public, client_name="Other")
    code = make_code(oauth_stack, clock, first["client_id"], "io.cozy.files")
    tokens = exchange(public, first, code).json()
    assert get_self(public, tokens["access_token"]).status == 200

    assert public.request("GET", ALICE + "/settings/clients").status == 401
    files_only = admin_token(admin, Audience="cli", Scope="io.cozy.files")
    assert (
        public.request(
            "GET", ALICE + "/settings/clients", headers=bearer(files_only)
        ).status
        == 403
    )
    reader = admin_token(admin, Audience="cli", Scope="io.cozy.oauth.clients:GET")
    listing = public.request("GET", ALICE + "/settings/clients", headers=bearer(reader))
    assert listing.status == 200, listing.body
    assert listing.headers["content-type"] == "application/vnd.api+json"
    body = listing.json()
    assert body["meta"]["count"] == 2
    by_id = {item["id"]: item for item in body["data"]}
    assert set(by_id) == {first["client_id"], second["client_id"]}
    item = by_id[first["client_id"]]
    assert item["type"] == "io.cozy.oauth.clients"
    assert item["links"]["self"] == f"/settings/clients/{first['client_id']}"
    assert item["meta"]["rev"]
    assert "client_secret" not in item["attributes"]
    assert item["attributes"]["client_name"] == "Client"
    page = public.request(
        "GET", ALICE + "/settings/clients?page[limit]=1", headers=bearer(reader)
    ).json()
    assert len(page["data"]) == 1 and "page%5Bcursor%5D" in page["links"]["next"]
    rest = public.request("GET", ALICE + page["links"]["next"], headers=bearer(reader))
    assert [i["id"] for i in page["data"] + rest.json()["data"]] == sorted(by_id)

    assert (
        public.request(
            "DELETE",
            ALICE + f"/settings/clients/{first['client_id']}",
            headers=bearer(reader),
        ).status
        == 403
    )
    deleter = admin_token(admin, Audience="cli", Scope="io.cozy.oauth.clients")
    revoked = public.request(
        "DELETE", ALICE + f"/settings/clients/{first['client_id']}", headers=bearer(deleter)
    )
    assert revoked.status == 204
    # At once, on this node: no waiting for a cache to expire.
    response = get_self(public, tokens["access_token"])
    assert (response.status, response.body) == (400, b"Invalid JWT token")
    refresh = token_request(
        public,
        grant_type="refresh_token",
        client_id=first["client_id"],
        client_secret=first["client_secret"],
        refresh_token=tokens["refresh_token"],
    )
    assert refresh.json() == {"error": "the client must be registered"}
    again = public.request(
        "DELETE", ALICE + f"/settings/clients/{first['client_id']}", headers=bearer(deleter)
    )
    assert again.status == 404


# -- admin API --------------------------------------------------------------------


def test_admin_creates_a_client_that_is_not_pending(oauth_stack, admin, public):
    response = admin.request(
        "POST",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={
            "Domain": "alice.cozy.test",
            "RedirectURI": REDIRECT,
            "ClientName": "cli client",
            "SoftwareID": "github.com/example/cli",
            "AllowLoginScope": "true",
        },
    )
    assert response.status == 200, response.body
    client = response.json()
    assert client["client_id"] and client["client_secret"]
    assert client["registration_access_token"]
    assert "pending" not in client and client["allow_login_scope"] is True
    found = admin.request(
        "GET",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={"domain": "alice.cozy.test", "software_id": "github.com/example/cli"},
    )
    assert found.status == 200
    assert found.json()["client_id"] == client["client_id"]
    access = admin_token(
        admin,
        Audience="access-token",
        Subject=client["client_id"],
        Scope="io.cozy.files:GET",
    )
    assert get_self(public, access).status == 200
    assert get_self(public, access, url=BOB).status == 400
    refresh = admin_token(
        admin,
        Audience="refresh-token",
        Subject=client["client_id"],
        Scope="io.cozy.files:GET",
    )
    assert jwt.decode(refresh, options={"verify_signature": False})["aud"] == ["refresh"]


def test_admin_client_errors(admin, public):
    bad = admin.request(
        "POST",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={
            "Domain": "alice.cozy.test",
            "RedirectURI": "https://x.org/#f",
            "ClientName": "c",
            "SoftwareID": "s",
        },
    )
    assert bad.status == 400
    assert bad.headers["content-type"].startswith("text/plain")
    assert bad.body == b"https://x.org/#f is invalid"
    no_name = admin.request(
        "POST",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={"Domain": "alice.cozy.test", "RedirectURI": REDIRECT, "SoftwareID": "s"},
    )
    assert (no_name.status, no_name.body) == (400, b"client_name is mandatory")
    unknown = admin.request(
        "POST",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={
            "Domain": "nobody.test",
            "RedirectURI": REDIRECT,
            "ClientName": "c",
            "SoftwareID": "s",
        },
    )
    assert unknown.status == 404
    assert admin.request("POST", ADMIN + "/instances/oauth_client").status == 401
    missing = admin.request(
        "GET",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={"domain": "alice.cozy.test", "software_id": "none"},
    )
    assert missing.status == 404


def test_admin_token_expire_zero_keeps_the_default_lifetime(admin, public, clock):
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.files", Expire="0s")
    clock.advance(60)
    assert get_self(public, cli).status == 200
