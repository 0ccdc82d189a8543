import pytest

from tests.unit.web.conftest import ADMIN, AUTH, create


def test_version_and_status_on_any_host(public):
    for url in ("http://nobody.test/version", "http://127.0.0.1:8080/version"):
        response = public.request("GET", url)
        assert response.status == 200
        assert set(response.json()) == {
            "version",
            "build_mode",
            "build_time",
            "runtime_version",
        }
    status = public.request("GET", "http://nobody.test/status").json()
    assert status["status"] == "OK" and status["couchdb"] == "healthy"
    assert status["fs"] == "healthy"


def test_unknown_host_is_a_json_404(public):
    response = public.request("GET", "http://nobody.test/settings/instance")
    assert response.status == 404
    assert response.json()["errors"][0]["code"] == "instance_not_found"


@pytest.mark.parametrize(
    "host", ["café.cozy.test:8080", "CAFÉ.Cozy.TEST:8080", "xn--caf-dma.cozy.test:8080"]
)
def test_host_is_normalised(admin, public, host):
    assert create(admin, "café.cozy.test:8080").status == 201
    response = public.request("GET", "http://ignored/nothing-here", headers={"Host": host})
    # The instance was found: the 404 is about the route, not the instance.
    assert response.status == 404
    assert response.json()["errors"][0]["code"] == "not_found"
    other_port = public.request(
        "GET", "http://ignored/x", headers={"Host": "café.cozy.test:8081"}
    )
    assert other_port.json()["errors"][0]["code"] == "instance_not_found"


def test_alias_serves_the_instance(admin, public):
    create(admin, "alice.cozy.test", DomainAliases="alice.example.org")
    response = public.request("GET", "http://alice.example.org/x")
    assert response.json()["errors"][0]["code"] == "not_found"
    assert create(admin, "alice.example.org").status == 409


@pytest.mark.parametrize(
    "reason,status",
    [
        ("UNKNOWN", 503),
        ("LOGIN_FAILED", 503),
        ("PAYMENT_FAILED", 402),
        ("my reason", 503),
        ("", 503),
    ],
)
def test_blocked_instance(admin, public, reason, status):
    create(admin, "alice.cozy.test")
    admin.request(
        "PATCH",
        ADMIN + "/instances/alice.cozy.test",
        auth=AUTH,
        params={"Blocked": "true", "BlockingReason": reason},
    )
    response = public.request("GET", "http://alice.cozy.test/data/io.cozy.notes/")
    assert response.status == status
    error = response.json()["errors"][0]
    assert error["code"] == (reason or "UNKNOWN")
    assert error["status"] == str(status)
    # Settings stay reachable for a blocked user (no such route yet: 404).
    assert public.request("GET", "http://alice.cozy.test/settings/x").status == 404
    admin.request(
        "PATCH",
        ADMIN + "/instances/alice.cozy.test",
        auth=AUTH,
        params={"Blocked": "false"},
    )
    # Served again: the data service asks for a token.
    assert public.request("GET", "http://alice.cozy.test/data/x").status == 401


def test_instance_being_deleted_is_not_served(admin, public):
    create(admin, "alice.cozy.test")
    admin.request(
        "PATCH",
        ADMIN + "/instances/alice.cozy.test",
        auth=AUTH,
        params={"Deleting": "true"},
    )
    response = public.request("GET", "http://alice.cozy.test/x")
    assert response.json()["errors"][0]["code"] == "instance_not_found"
