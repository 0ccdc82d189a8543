"""Token checks and /permissions/self through the in-memory stack."""

import base64

import jwt
import pytest

from cozyd.instance.model import Instance
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import sync
from tests.unit.web.conftest import ADMIN, AUTH, create

ALICE = "http://alice.cozy.test"


def token(admin, domain="alice.cozy.test", **params):
    response = admin.request(
        "POST", ADMIN + "/instances/token", auth=AUTH, params={"Domain": domain, **params}
    )
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/plain")
    return response.body.decode()


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


def get_self(public, headers=None, url=ALICE + "/permissions/self"):
    return public.request("GET", url, headers=headers)


def test_no_token_is_401(admin, public):
    create(admin, "alice.cozy.test")
    response = get_self(public)
    assert response.status == 401
    assert response.body == b"No token in request"
    as_json = get_self(public, {"Accept": "application/json"})
    assert as_json.json() == {"error": "No token in request"}


def test_cli_token_scope_becomes_rules(admin, public):
    create(admin, "alice.cozy.test")
    cli = token(
        admin, Audience="cli", Scope="io.cozy.files io.cozy.jobs:POST:sendmail:worker"
    )
    claims = jwt.decode(cli, options={"verify_signature": False})
    assert jwt.get_unverified_header(cli)["alg"] == "HS512"
    assert claims["aud"] == ["cli"] and claims["iss"] == "alice.cozy.test"
    for headers, url in [
        (bearer(cli), ALICE + "/permissions/self"),
        (
            {"Authorization": "Basic " + base64.b64encode(f"x:{cli}".encode()).decode()},
            ALICE + "/permissions/self",
        ),
        (None, ALICE + f"/permissions/self?bearer_token={cli}"),
    ]:
        response = get_self(public, headers, url)
        assert response.status == 200, response.body
        attributes = response.json()["data"]["attributes"]
        assert attributes["type"] == "cli"
        assert attributes["permissions"] == {
            "rule0": {"type": "io.cozy.files", "verbs": ["ALL"]},
            "rule1": {
                "type": "io.cozy.jobs",
                "verbs": ["POST"],
                "values": ["sendmail"],
                "selector": "worker",
            },
        }


def test_token_of_another_instance_is_refused(admin, public):
    create(admin, "alice.cozy.test")
    create(admin, "bob.cozy.test")
    bobs = token(admin, "bob.cozy.test", Audience="cli", Scope="io.cozy.files")
    response = get_self(public, bearer(bobs))
    assert response.status == 400
    assert response.body == b"Invalid JWT token"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize(
    "forge", ["garbage", "alg-none", "hs256", "wrong-key", "two-audiences"]
)
def test_forged_tokens_are_refused(stack, admin, public, forge):
    create(admin, "alice.cozy.test")
    instance = Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new("alice.cozy.test").id))
    )
    claims = {
        "aud": ["cli"],
        "iss": "alice.cozy.test",
        "iat": 1_800_000_000,
        "sub": "CLI",
        "scope": "io.cozy.files",
    }
    value = {
        "garbage": "not.a.jwt",
        "alg-none": jwt.encode(claims, None, algorithm="none"),
        "hs256": jwt.encode(claims, instance.cli_secret, algorithm="HS256"),
        "wrong-key": jwt.encode(claims, b"x" * 64, algorithm="HS512"),
        "two-audiences": jwt.encode(
            {**claims, "aud": ["cli", "app"]}, instance.cli_secret, algorithm="HS512"
        ),
    }[forge]
    response = get_self(public, bearer(value))
    assert (response.status, response.body) == (400, b"Invalid JWT token")


def test_expired_token(admin, public, clock):
    create(admin, "alice.cozy.test")
    cli = token(admin, Audience="cli", Scope="io.cozy.files")
    clock.advance(29 * 60)
    assert get_self(public, bearer(cli)).status == 200
    clock.advance(2 * 60)
    response = get_self(public, bearer(cli))
    assert (response.status, response.body) == (400, b"Expired token")
    assert "The access token expired" in response.headers["www-authenticate"]
    short = token(admin, Audience="cli", Scope="io.cozy.files", Expire="60s")
    clock.advance(61)
    assert get_self(public, bearer(short)).status == 400


def test_app_token_reads_the_stored_permission_doc(stack, admin, public, clock):
    create(admin, "alice.cozy.test")
    app = token(admin, Audience="app", Subject="drive")
    assert get_self(public, bearer(app)).status == 400  # no permission doc yet
    prefix = Instance.new("alice.cozy.test").prefix
    sync(
        stack.store.put_doc(
            db_name(prefix, "io.cozy.permissions"),
            {
                "_id": "perm-drive",
                "type": "app",
                "source_id": "io.cozy.apps/drive",
                "permissions": {"files": {"type": "io.cozy.files", "verbs": ["GET"]}},
            },
        )
    )
    clock.advance(6)  # the "no such doc" answer was cached for a few seconds
    response = get_self(public, bearer(app))
    data = response.json()["data"]
    assert data["id"] == "perm-drive"
    assert data["attributes"]["source_id"] == "io.cozy.apps/drive"
    assert data["attributes"]["permissions"]["files"]["verbs"] == ["GET"]


def test_oauth_token_needs_its_client(stack, admin, public, clock):
    create(admin, "alice.cozy.test")
    refused = admin.request(
        "POST",
        ADMIN + "/instances/token",
        auth=AUTH,
        params={
            "Domain": "alice.cozy.test",
            "Audience": "access-token",
            "Subject": "nope",
            "Scope": "io.cozy.files",
        },
    )
    assert refused.status == 404  # as cozy-stack: the client does not exist
    prefix = Instance.new("alice.cozy.test").prefix
    clients = db_name(prefix, "io.cozy.oauth.clients")
    sync(
        stack.store.put_doc(
            clients, {"_id": "client1", "client_name": "test", "pending": True}
        )
    )
    access = token(
        admin, Audience="access-token", Subject="client1", Scope="io.cozy.files:GET"
    )
    assert "pending" not in sync(stack.store.get_doc(clients, "client1"))
    response = get_self(public, bearer(access))
    assert response.json()["data"]["attributes"]["type"] == "oauth"
    doc = sync(stack.store.get_doc(clients, "client1"))
    sync(stack.store.delete_doc(clients, "client1", doc["_rev"]))
    clock.advance(6)  # another node revoked it: seen once the cache expires
    assert get_self(public, bearer(access)).status == 400


def test_bad_token_requests_at_the_admin_api(admin, public):
    create(admin, "alice.cozy.test")
    for params, status in [
        ({"Audience": "nope"}, 400),
        ({"Audience": "cli"}, 400),
        ({"Audience": "cli", "Scope": "io.cozy.*"}, 200),
        ({"Audience": "cli", "Scope": "x", "Expire": "soon"}, 400),
        ({"Domain": "nobody.test", "Audience": "cli", "Scope": "x"}, 404),
    ]:
        response = admin.request(
            "POST",
            ADMIN + "/instances/token",
            auth=AUTH,
            params={"Domain": "alice.cozy.test", **params},
        )
        assert response.status == status, (params, response.body)
    bad_scope = token(admin, Audience="cli", Scope="io.cozy.*")
    assert (
        get_self(public, bearer(bad_scope)).status,
        get_self(public, bearer(bad_scope)).body,
    ) == (400, b"Invalid JWT token")
