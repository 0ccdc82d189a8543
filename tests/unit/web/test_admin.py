import base64

import pytest

from tests.unit.web.conftest import ADMIN, AUTH, create


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("admin", "")])
def test_every_route_needs_the_admin_passphrase(admin, auth):
    for method, path in [
        ("GET", "/instances"),
        ("POST", "/instances?Domain=a.test"),
        ("GET", "/instances/count"),
        ("DELETE", "/instances/a.test"),
        ("GET", "/nowhere"),
    ]:
        response = admin.request(method, ADMIN + path, auth=auth)
        assert response.status == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Basic")
        assert response.json()["errors"][0]["status"] == "401"
    assert admin.request("GET", ADMIN + "/instances/count", auth=AUTH).json() == {
        "count": 0
    }


def test_unknown_route_is_a_json_404(admin):
    response = admin.request("GET", ADMIN + "/nowhere", auth=AUTH)
    assert response.status == 404
    assert response.json()["errors"][0]["title"] == "Not Found"


def test_create_show_list_count(admin):
    response = create(
        admin,
        "Alice.Cozy.Test:8080",
        Locale="fr",
        Email="a@example.com",
        PublicName="Alice",
        DiskQuota="1000000",
    )
    assert response.status == 201
    assert response.headers["content-type"] == "application/vnd.api+json"
    data = response.json()["data"]
    assert data["type"] == "instances"
    attributes = data["attributes"]
    assert attributes["domain"] == "alice.cozy.test:8080"
    assert attributes["locale"] == "fr"
    assert attributes["disk_quota"] == "1000000"
    assert attributes["prefix"].startswith("cozy") and len(attributes["prefix"]) == 36
    assert len(base64.b64decode(attributes["register_token"])) == 16
    for secret in (
        "session_secret",
        "oauth_secret",
        "cli_secret",
        "passphrase_hash",
        "state",
    ):
        assert secret not in attributes
    assert data["meta"]["rev"].startswith("2-")

    shown = admin.request("GET", ADMIN + "/instances/alice.cozy.test%3A8080", auth=AUTH)
    assert shown.status == 200
    assert shown.json()["data"]["attributes"] == attributes
    create(admin, "bob.cozy.test")
    listing = admin.request("GET", ADMIN + "/instances", auth=AUTH).json()
    assert listing["meta"]["count"] == 2
    assert [i["attributes"]["domain"] for i in listing["data"]] == [
        "alice.cozy.test:8080",
        "bob.cozy.test",
    ]
    page = admin.request(
        "GET", ADMIN + "/instances", auth=AUTH, params={"page[limit]": "1"}
    ).json()
    assert len(page["data"]) == 1 and "next" in page["links"]
    assert admin.request("GET", ADMIN + "/instances/count", auth=AUTH).json() == {
        "count": 2
    }


def test_bad_creations_change_nothing(admin):
    assert create(admin, "alice.cozy.test").status == 201
    duplicate = create(admin, "ALICE.cozy.test")
    assert duplicate.status == 409
    assert "already exists" in duplicate.json()["errors"][0]["detail"]
    invalid = create(admin, "alice/../bob")
    assert invalid.status == 422
    assert "must not contain '/'" in invalid.json()["errors"][0]["detail"]
    missing = admin.request("POST", ADMIN + "/instances", auth=AUTH)
    assert missing.status == 422
    # No registry: the apps are not found, which does not stop the creation.
    apps = create(admin, "carol.cozy.test", Apps="drive,photos")
    assert apps.status == 201
    listed = admin.request("GET", ADMIN + "/instances/carol.cozy.test/apps", auth=AUTH)
    assert listed.json()["data"] == []
    bad_settings = create(admin, "dave.cozy.test", Settings="novalue")
    assert bad_settings.status == 400
    bad_quota = create(admin, "erin.cozy.test", DiskQuota="lots")
    assert bad_quota.status == 400
    domains = [
        i["attributes"]["domain"]
        for i in admin.request("GET", ADMIN + "/instances", auth=AUTH).json()["data"]
    ]
    assert domains == ["alice.cozy.test", "carol.cozy.test"]


def test_modify_and_deleting_flag(admin):
    create(admin, "alice.cozy.test")
    url = ADMIN + "/instances/alice.cozy.test"
    blocked = admin.request(
        "PATCH",
        url,
        auth=AUTH,
        params={
            "Blocked": "true",
            "BlockingReason": "PAYMENT_FAILED",
            "Locale": "fr",
            "DomainAliases": "alice.other.test",
        },
    )
    attributes = blocked.json()["data"]["attributes"]
    assert attributes["blocked"] is True
    assert attributes["blocking_reason"] == "PAYMENT_FAILED"
    assert attributes["locale"] == "fr"
    assert attributes["domain_aliases"] == ["alice.other.test"]
    unblocked = admin.request("PATCH", url, auth=AUTH, params={"Blocked": "false"})
    assert unblocked.json()["data"]["attributes"]["blocked"] is False
    assert unblocked.json()["data"]["attributes"]["blocking_reason"] == ""
    bad = admin.request("PATCH", url, auth=AUTH, params={"Blocked": "maybe"})
    assert bad.status == 400

    deleting = admin.request("PATCH", url, auth=AUTH, params={"Deleting": "true"})
    assert deleting.json()["data"]["attributes"]["deleting"] is True
    refused = admin.request("DELETE", url, auth=AUTH)
    assert refused.status == 409
    assert (
        "instances modify --deleting=false alice.cozy.test"
        in refused.json()["errors"][0]["detail"]
    )
    admin.request("PATCH", url, auth=AUTH, params={"Deleting": "false"})
    assert admin.request("DELETE", url, auth=AUTH).status == 204
    assert admin.request("GET", url, auth=AUTH).status == 404
    assert admin.request("DELETE", url, auth=AUTH).status == 404
    assert admin.request("PATCH", url, auth=AUTH, params={"Locale": "en"}).status == 404
