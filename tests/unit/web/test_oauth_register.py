"""Dynamic client registration (RFC 7591/7592) through the in-memory stack."""

import jwt
import pytest

from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import MemoryClient, sync
from tests.support.oauth import (
    ALICE,
    BOB,
    JSON_HEADERS,
    REDIRECT,
    admin_token,
    bearer,
    create,
    register,
    registered,
)


@pytest.fixture
def admin(oauth_stack):
    return MemoryClient(oauth_stack.admin)


@pytest.fixture
def public(oauth_stack, admin):
    create(admin, "alice.cozy.test")
    create(admin, "bob.cozy.test")
    return MemoryClient(oauth_stack.public)


def clients_db():
    return db_name(Instance.new("alice.cozy.test").prefix, "io.cozy.oauth.clients")


def test_register_answers_the_client_with_its_credentials(oauth_stack, public):
    response = register(
        public,
        client_kind="desktop",
        client_uri="https://example.org/",
        logo_uri="https://example.org/logo.svg",
        policy_uri="https://example.org/policy",
        software_version="2.0.1",
        notification_platform="Android",
        notification_device_token="device",
    )
    assert response.status == 201, response.body
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    client = response.json()
    assert list(client)[:4] == [
        "client_id",
        "client_secret",
        "client_secret_expires_at",
        "registration_access_token",
    ]
    assert len(client["client_id"]) == 32
    assert len(client["client_secret"]) >= 32
    assert client["client_secret_expires_at"] == 0
    assert client["pending"] is True
    assert client["grant_types"] == ["authorization_code", "refresh_token"]
    assert client["response_types"] == ["code"]
    assert client["redirect_uris"] == [REDIRECT]
    assert client["notification_platform"] == "android"
    for field, value in [
        ("client_name", "Client"),
        ("client_kind", "desktop"),
        ("software_version", "2.0.1"),
        ("logo_uri", "https://example.org/logo.svg"),
    ]:
        assert client[field] == value
    claims = jwt.decode(
        client["registration_access_token"], options={"verify_signature": False}
    )
    assert claims["aud"] == ["registration"] and claims["sub"] == client["client_id"]
    assert claims["iss"] == "alice.cozy.test"
    stored = sync(oauth_stack.store.get_doc(clients_db(), client["client_id"]))
    assert stored["client_secret"] == client["client_secret"]
    assert "registration_access_token" not in stored
    assert stored["pending"] is True
    assert stored["cozyMetadata"]["doctypeVersion"] == "1"


def test_server_managed_fields_are_ignored(public):
    client = registered(
        public,
        client_id="mine",
        client_secret="chosen",
        flagship=True,
        pending=False,
        grant_types=["implicit"],
        certified_from_store=True,
        client_secret_expires_at=12,
    )
    assert client["client_id"] != "mine"
    assert client["client_secret"] != "chosen"
    assert "flagship" not in client and "certified_from_store" not in client
    assert client["pending"] is True
    assert client["grant_types"] == ["authorization_code", "refresh_token"]
    assert client["client_secret_expires_at"] == 0


@pytest.mark.parametrize(
    "body,error,description",
    [
        (
            {"client_name": "C", "software_id": "s"},
            "invalid_redirect_uri",
            "redirect_uris is mandatory",
        ),
        (
            {"redirect_uris": [], "client_name": "C", "software_id": "s"},
            "invalid_redirect_uri",
            "redirect_uris is mandatory",
        ),
        (
            {
                "redirect_uris": ["https://x.org/cb#frag"],
                "client_name": "C",
                "software_id": "s",
            },
            "invalid_redirect_uri",
            "https://x.org/cb#frag is invalid",
        ),
        (
            {
                "redirect_uris": ["http://alice.cozy.test/steal"],
                "client_name": "C",
                "software_id": "s",
            },
            "invalid_redirect_uri",
            "http://alice.cozy.test/steal is invalid",
        ),
        (
            {
                "redirect_uris": ["javascript:alert(1)"],
                "client_name": "C",
                "software_id": "s",
            },
            "invalid_redirect_uri",
            "javascript:alert(1) is invalid",
        ),
        (
            {"redirect_uris": ["no scheme"], "client_name": "C", "software_id": "s"},
            "invalid_redirect_uri",
            "no scheme is invalid",
        ),
        (
            {"redirect_uris": "https://x.org/cb", "client_name": "C", "software_id": "s"},
            "invalid_redirect_uri",
            "redirect_uris must be a list of URIs",
        ),
        (
            {"redirect_uris": [REDIRECT], "software_id": "s"},
            "invalid_client_metadata",
            "client_name is mandatory",
        ),
        (
            {"redirect_uris": [REDIRECT], "client_name": "C"},
            "invalid_client_metadata",
            "software_id is mandatory",
        ),
        (
            {"redirect_uris": [REDIRECT], "client_name": 12, "software_id": "s"},
            "invalid_client_metadata",
            "client_name must be a string",
        ),
        (
            {
                "redirect_uris": [REDIRECT],
                "client_name": "C",
                "software_id": "s",
                "notification_platform": "pager",
            },
            "invalid_client_metadata",
            None,
        ),
        (
            {
                "redirect_uris": [REDIRECT],
                "client_name": "C",
                "software_id": "registry://store",
            },
            "unapproved_software_id",
            "Link with store/settings is forbidden",
        ),
        ([1, 2], "invalid_client_metadata", "the registration must be a JSON object"),
    ],
)
def test_invalid_metadata(oauth_stack, public, body, error, description):
    response = register(public, body)
    assert response.status == 400
    expected = {"error": error}
    if description:
        expected["error_description"] = description
    assert response.json() == expected
    assert sync(oauth_stack.store.all_docs(clients_db()))["rows"] == [] or all(
        row["id"].startswith("_design/")
        for row in sync(oauth_stack.store.all_docs(clients_db()))["rows"]
    )


def test_body_and_headers_must_be_json(public):
    assert register(public, b"{not json").json() == {
        "error": "invalid_client_metadata",
        "error_description": "the request body must be JSON",
    }
    wrong_accept = register(
        public, headers={"Content-Type": "application/json", "Accept": "text/html"}
    )
    assert (wrong_accept.status, wrong_accept.json()) == (
        400,
        {"error": "bad_accept_header"},
    )
    wrong_type = register(
        public, headers={"Content-Type": "text/plain", "Accept": "application/json"}
    )
    assert (wrong_type.status, wrong_type.json()) == (400, {"error": "bad_content_type"})
    assert register(public, b"x" * 70_000).status == 413
    deep = b"[" * 50 + b"]" * 50
    assert register(public, deep).json()["error"] == "invalid_client_metadata"


def test_names_are_made_unique(public):
    assert registered(public)["client_name"] == "Client"
    assert registered(public)["client_name"] == "Client-2"
    assert registered(public)["client_name"] == "Client-3"
    assert registered(public, client_name="Client-3")["client_name"] == "Client-3-2"


def test_login_scope_needs_a_cli_token(admin, public):
    refused = register(public, allow_login_scope=True)
    assert refused.status == 401
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.oauth.clients")
    response = register(
        public, allow_login_scope=True, headers={**JSON_HEADERS, **bearer(cli)}
    )
    assert response.status == 201
    assert response.json()["allow_login_scope"] is True


def test_rate_limit_of_50_an_hour(public, clock):
    for _ in range(50):
        assert register(public).status == 201
    limited = register(public)
    assert limited.status == 404
    assert limited.json() == {"error": "Not found"}
    assert register(public, url=BOB).status == 201  # counted per instance
    clock.advance(3601)
    assert register(public).status == 201


def test_read_with_the_registration_token(public):
    client = registered(public)
    url = f"{ALICE}/auth/register/{client['client_id']}"
    token = client["registration_access_token"]
    response = public.request(
        "GET", url, headers={**bearer(token), "Accept": "application/json"}
    )
    assert response.status == 200
    shown = response.json()
    assert shown["client_id"] == client["client_id"]
    assert shown["client_secret"] == client["client_secret"]
    assert "registration_access_token" not in shown and "_rev" not in shown
    for headers, status, body in [
        ({}, 401, {"error": "invalid_token"}),
        (bearer("garbage"), 401, {"error": "invalid_token"}),
        (
            bearer(registered(public)["registration_access_token"]),
            401,
            {"error": "invalid_token"},
        ),
    ]:
        response = public.request(
            "GET", url, headers={**headers, "Accept": "application/json"}
        )
        assert (response.status, response.json()) == (status, body)
    missing = public.request(
        "GET",
        f"{ALICE}/auth/register/nope",
        headers={**bearer(token), "Accept": "application/json"},
    )
    assert (missing.status, missing.json()) == (404, {"error": "Client not found"})


def test_registration_token_of_another_instance_is_refused(public):
    alices = registered(public)
    bobs = registered(public, url=BOB)
    response = public.request(
        "GET",
        f"{BOB}/auth/register/{bobs['client_id']}",
        headers={
            **bearer(alices["registration_access_token"]),
            "Accept": "application/json",
        },
    )
    assert response.status == 401


def test_update_and_rotate_the_secret(oauth_stack, public):
    client = registered(public)
    url = f"{ALICE}/auth/register/{client['client_id']}"
    headers = {**JSON_HEADERS, **bearer(client["registration_access_token"])}

    def put(body):
        import json

        return public.request("PUT", url, headers=headers, data=json.dumps(body).encode())

    body = {
        "client_id": client["client_id"],
        "redirect_uris": [REDIRECT, REDIRECT + "2"],
        "client_name": "Client",
        "software_id": "github.com/example/client",
        "software_version": "2.0.2",
        "flagship": True,
    }
    response = put(body)
    assert response.status == 200, response.body
    updated = response.json()
    assert updated["software_version"] == "2.0.2"
    assert updated["client_secret"] == client["client_secret"]
    assert updated["pending"] is True and "flagship" not in updated
    assert "registration_access_token" not in updated
    rotated = put({**body, "client_secret": client["client_secret"]}).json()
    assert rotated["client_secret"] != client["client_secret"]
    stored = sync(oauth_stack.store.get_doc(clients_db(), client["client_id"]))
    assert stored["client_secret"] == rotated["client_secret"]
    wrong = put({**body, "client_secret": "not it"})
    assert wrong.json() == {
        "error": "invalid_client_secret",
        "error_description": "client_secret is invalid",
    }
    no_id = put({k: v for k, v in body.items() if k != "client_id"})
    assert (no_id.status, no_id.json()) == (
        400,
        {"error": "invalid_client_id", "error_description": "client_id is mandatory"},
    )
    no_uris = put({**body, "redirect_uris": []})
    assert no_uris.json()["error"] == "invalid_redirect_uri"


def test_delete_is_idempotent(oauth_stack, public):
    client = registered(public)
    url = f"{ALICE}/auth/register/{client['client_id']}"
    token = client["registration_access_token"]
    assert public.request("DELETE", url, headers=bearer("nope")).status == 401
    assert public.request("DELETE", url, headers=bearer(token)).status == 204
    assert public.request("DELETE", url, headers=bearer(token)).status == 204
    assert (
        public.request(
            "GET", url, headers={**bearer(token), "Accept": "application/json"}
        ).status
        == 404
    )
