"""``cozyctl instances token-*`` and ``client-oauth`` against the real daemon:
each prints only a token (or an id) that works on its instance and nowhere
else, and revoking an OAuth client voids its tokens at once."""

import base64
import json
import re
import urllib.request
from urllib.parse import quote, urlencode, urlsplit

import pytest

from cozyd.storage.names import db_name, instance_prefix

pytestmark = pytest.mark.integration
ALICE = "alice.cozy.test"
BOB = "bob.cozy.test"
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n")


def add_instances(daemon):
    for domain in (ALICE, BOB):
        result = daemon.cozyctl("instances", "add", domain)
        assert result.returncode == 0, result.stderr


def printed_token(result):
    assert result.returncode == 0, result.stderr
    assert JWT.fullmatch(result.stdout), result.stdout  # the token, nothing else
    return result.stdout.strip()


def get_self(daemon, domain, token):
    return daemon.public(
        "GET", "/permissions/self", domain, headers={"Authorization": f"Bearer {token}"}
    )


def assert_only_for_alice(daemon, token):
    mine = get_self(daemon, ALICE, token)
    assert mine.status == 200, mine.body
    other = get_self(daemon, BOB, token)
    assert (other.status, other.body) == (400, b"Invalid JWT token")
    return mine.json()["data"]["attributes"]


def put_permission_doc(daemon, domain, doc):
    """What installing an app will write: its permission document."""
    db = db_name(instance_prefix(domain), "io.cozy.permissions")
    if daemon.couchdb_url is None:
        from cozyd.storage.sqlite import EmbeddedStore
        from cozyd.testing import sync

        store = EmbeddedStore(f"{daemon.data_dir}/db")  # no reactor: synchronous
        try:
            sync(store.put_doc(db, doc))
        finally:
            sync(store.close())
        return
    parts = urlsplit(daemon.couchdb_url)
    url = (
        f"{parts.scheme}://{parts.hostname}:{parts.port}/{quote(db, safe='')}/"
        f"{quote(doc['_id'], safe='')}"
    )
    request = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    if parts.username:
        credentials = f"{parts.username}:{parts.password}".encode()
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(credentials).decode()
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


def test_token_cli(daemon):
    add_instances(daemon)
    token = printed_token(
        daemon.cozyctl(
            "instances", "token-cli", ALICE, "io.cozy.files", "io.cozy.contacts:GET"
        )
    )
    attributes = assert_only_for_alice(daemon, token)
    assert attributes["type"] == "cli"
    assert attributes["permissions"] == {
        "rule0": {"type": "io.cozy.files", "verbs": ["ALL"]},
        "rule1": {"type": "io.cozy.contacts", "verbs": ["GET"]},
    }


def test_token_app_and_token_konnector(daemon):
    add_instances(daemon)
    put_permission_doc(
        daemon,
        ALICE,
        {
            "_id": "app-drive",
            "type": "app",
            "source_id": "io.cozy.apps/drive",
            "permissions": {"files": {"type": "io.cozy.files"}},
        },
    )
    put_permission_doc(
        daemon,
        ALICE,
        {
            "_id": "konn-trainline",
            "type": "konnector",
            "source_id": "io.cozy.konnectors/trainline",
            "permissions": {"bills": {"type": "io.cozy.bills", "verbs": ["POST"]}},
        },
    )
    app = printed_token(daemon.cozyctl("instances", "token-app", ALICE, "drive"))
    assert assert_only_for_alice(daemon, app)["source_id"] == "io.cozy.apps/drive"
    konnector = printed_token(
        daemon.cozyctl("instances", "token-konnector", ALICE, "trainline")
    )
    attributes = assert_only_for_alice(daemon, konnector)
    assert attributes["permissions"]["bills"]["verbs"] == ["POST"]
    # An app with no permission document has no rights at all.
    orphan = printed_token(daemon.cozyctl("instances", "token-app", ALICE, "photos"))
    assert get_self(daemon, ALICE, orphan).status == 400


def test_client_oauth_then_token_oauth_then_revocation(daemon):
    add_instances(daemon)
    created = daemon.cozyctl(
        "instances",
        "client-oauth",
        ALICE,
        "https://client.example.org/cb",
        "Script",
        "github.com/x/y",
    )
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", created.stdout), created.stdout
    client_id = created.stdout.strip()
    token = printed_token(
        daemon.cozyctl(
            "instances",
            "token-oauth",
            ALICE,
            client_id,
            "io.cozy.files:GET",
            "io.cozy.contacts",
        )
    )
    attributes = assert_only_for_alice(daemon, token)
    assert attributes["type"] == "oauth"
    assert [r["type"] for r in attributes["permissions"].values()] == [
        "io.cozy.files",
        "io.cozy.contacts",
    ]
    refresh = printed_token(
        daemon.cozyctl(
            "instances", "refresh-token-oauth", ALICE, client_id, "io.cozy.files:GET"
        )
    )
    assert get_self(daemon, ALICE, refresh).status == 400  # not an access token

    admin_cli = printed_token(
        daemon.cozyctl("instances", "token-cli", ALICE, "io.cozy.oauth.clients")
    )
    listing = daemon.public(
        "GET", "/settings/clients", ALICE, headers={"Authorization": f"Bearer {admin_cli}"}
    )
    assert listing.status == 200
    assert [c["id"] for c in listing.json()["data"]] == [client_id]
    revoked = daemon.public(
        "DELETE",
        f"/settings/clients/{client_id}",
        ALICE,
        headers={"Authorization": f"Bearer {admin_cli}"},
    )
    assert revoked.status == 204
    after = get_self(daemon, ALICE, token)
    assert (after.status, after.body) == (400, b"Invalid JWT token")
    again = daemon.cozyctl("instances", "token-oauth", ALICE, client_id, "io.cozy.files")
    assert again.returncode != 0 and again.stdout == ""


def test_client_oauth_json_and_find(daemon):
    add_instances(daemon)
    created = daemon.cozyctl(
        "instances",
        "client-oauth",
        "--json",
        ALICE,
        "https://client.example.org/cb",
        "Script",
        "github.com/x/json",
    )
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    assert client["client_secret"] and client["registration_access_token"]
    assert "pending" not in client
    found = daemon.cozyctl("instances", "find-oauth-client", ALICE, "github.com/x/json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["client_id"] == client["client_id"]
    refused = daemon.cozyctl(
        "instances",
        "client-oauth",
        ALICE,
        "https://x.org/#frag",
        "Script",
        "github.com/x/bad",
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert "https://x.org/#frag is invalid" in refused.stderr


def test_token_commands_refuse_bad_input(daemon):
    add_instances(daemon)
    unknown_client = daemon.cozyctl(
        "instances", "token-oauth", ALICE, "nope", "io.cozy.files"
    )
    assert unknown_client.returncode == 1 and unknown_client.stdout == ""
    unknown_domain = daemon.cozyctl(
        "instances", "token-cli", "nobody.cozy.test", "io.cozy.files"
    )
    assert unknown_domain.returncode == 1 and unknown_domain.stdout == ""


def test_dynamic_registration_and_token_exchange_over_http(daemon):
    """The HTTP side of the flow on the real daemon (the consent itself is
    walked in a browser by test_browser_oauth)."""
    add_instances(daemon)
    registration = daemon.public(
        "POST",
        "/auth/register",
        ALICE,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        data=json.dumps(
            {
                "redirect_uris": ["https://client.example.org/cb"],
                "client_name": "Web",
                "software_id": "github.com/x/web",
            }
        ).encode(),
    )
    assert registration.status == 201, registration.body
    client = registration.json()
    shown = daemon.public(
        "GET",
        f"/auth/register/{client['client_id']}",
        ALICE,
        headers={
            "Authorization": f"Bearer {client['registration_access_token']}",
            "Accept": "application/json",
        },
    )
    assert shown.status == 200
    elsewhere = daemon.public(
        "GET",
        f"/auth/register/{client['client_id']}",
        BOB,
        headers={
            "Authorization": f"Bearer {client['registration_access_token']}",
            "Accept": "application/json",
        },
    )
    assert elsewhere.status == 404
    bad_code = daemon.public(
        "POST",
        "/auth/access_token",
        ALICE,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        data=urlencode(
            {
                "grant_type": "authorization_code",
                "client_id": client["client_id"],
                "client_secret": client["client_secret"],
                "code": "x",
            }
        ).encode(),
    )
    assert (bad_code.status, bad_code.json()) == (400, {"error": "invalid code"})
