"""``/settings``: passphrase, hint, instance, capabilities, onboarded."""

import pytest

from cozyd.auth import tokens
from cozyd.instance.model import Instance
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import TEST_KDF_ITERATIONS, sync
from tests.support.auth import (
    BASE,
    DOMAIN,
    PASSPHRASE,
    Browser,
    admin_token,
    client_hash,
    create_instance,
    login,
    onboard,
)

NEW = "another long passphrase"


@pytest.fixture
def admin(stack):
    return Browser(stack.admin)


@pytest.fixture
def owner(stack, admin):
    browser = Browser(stack.public)
    assert onboard(browser, create_instance(admin)).status == 200
    return browser


def stored(stack):
    return Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new(DOMAIN).id))
    )


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def app_token(stack, clock, slug="settings", session_id=""):
    instance = stored(stack)
    sync(
        stack.store.put_doc(
            db_name(instance.prefix, "io.cozy.permissions"),
            {
                "_id": f"perm-{slug}",
                "type": "app",
                "source_id": f"io.cozy.apps/{slug}",
                "permissions": {
                    "settings": {"type": "io.cozy.settings"},
                    "sessions": {"type": "io.cozy.sessions", "verbs": ["GET"]},
                },
            },
        )
    )
    return tokens.issue(
        instance, tokens.APP, slug, issued_at=clock.seconds(), session_id=session_id
    )


def test_passphrase_parameters(owner, admin):
    assert owner.request("GET", BASE + "/settings/passphrase").status == 401
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings:GET")
    reply = owner.request("GET", BASE + "/settings/passphrase", headers=bearer(cli))
    assert reply.json()["data"] == {
        "type": "io.cozy.settings",
        "id": "io.cozy.settings.passphrase",
        "attributes": {
            "salt": "me@alice.cozy.test",
            "kdf": 0,
            "iterations": TEST_KDF_ITERATIONS,
        },
        "meta": {},
        "links": {"self": "/settings/passphrase"},
    }


def test_change_passphrase(owner, stack, clock):
    other = Browser(stack.public)
    assert login(other).status == 303
    app = app_token(stack, clock, session_id=owner.cookies["cozysessid"].split(".")[0])
    konnector_like = tokens.issue(
        stored(stack), tokens.APP, "settings", issued_at=clock.seconds()
    )
    wrong = owner.request(
        "PUT",
        BASE + "/settings/passphrase",
        headers=bearer(app),
        body={
            "current_passphrase": client_hash("not it"),
            "new_passphrase": client_hash(NEW),
            "iterations": TEST_KDF_ITERATIONS,
        },
    )
    assert wrong.status == 400
    assert wrong.json()["errors"][0]["detail"] == "Invalid passphrase"
    secret = stored(stack).session_secret
    done = owner.request(
        "PUT",
        BASE + "/settings/passphrase",
        headers=bearer(app),
        body={
            "current_passphrase": client_hash(),
            "new_passphrase": client_hash(NEW),
            "iterations": TEST_KDF_ITERATIONS,
            "key": "0.bmV3|a2V5",
        },
    )
    assert done.status == 204, done.body
    assert stored(stack).session_secret != secret
    # This browser goes on (a cookie signed with the new secret)…
    assert "cozysessid" in done.cookies()
    assert owner.request("GET", BASE + "/settings/sessions/current").status == 200
    # …the other session is over, and tokens made before no longer work.
    assert other.request("GET", BASE + "/settings/sessions/current").status == 404
    assert (
        owner.request(
            "GET", BASE + "/settings/instance", headers=bearer(konnector_like)
        ).status
        == 400
    )
    assert login(Browser(stack.public), NEW).status == 303
    assert login(Browser(stack.public), PASSPHRASE).status == 401


def test_force_needs_the_cli_once_a_password_exists(owner, stack, clock, admin):
    app = app_token(stack, clock)
    refused = owner.request(
        "PUT",
        BASE + "/settings/passphrase",
        headers=bearer(app),
        body={
            "new_passphrase": client_hash(NEW),
            "force": True,
            "iterations": TEST_KDF_ITERATIONS,
        },
    )
    assert refused.status == 400
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    done = Browser(stack.public).request(
        "PUT",
        BASE + "/settings/passphrase",
        headers=bearer(cli),
        body={
            "new_passphrase": client_hash(NEW),
            "force": True,
            "iterations": TEST_KDF_ITERATIONS,
        },
    )
    assert done.status == 204
    assert "set-cookie" not in done.headers  # no session: no cookie
    assert owner.request("GET", BASE + "/settings/sessions/current").status == 404
    assert login(Browser(stack.public), NEW).status == 303


def test_force_with_a_clear_passphrase_as_cozy_stack_cli(owner, stack, admin):
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    done = Browser(stack.public).request(
        "PUT",
        BASE + "/settings/passphrase",
        headers=bearer(cli),
        body={"new_passphrase": NEW, "force": True},
    )
    assert done.status == 204
    assert login(Browser(stack.public), NEW).status == 303


def test_passphrase_check_and_hint(owner, stack, clock):
    app = app_token(stack, clock)
    check = owner.request(
        "POST",
        BASE + "/settings/passphrase/check",
        headers=bearer(app),
        body={"passphrase": client_hash()},
    )
    assert check.status == 204
    bad = owner.request(
        "POST",
        BASE + "/settings/passphrase/check",
        headers=bearer(app),
        body={"passphrase": client_hash("nope")},
    )
    assert bad.status == 403
    assert owner.request("GET", BASE + "/settings/hint", headers=bearer(app)).status == 404
    same = owner.request(
        "PUT", BASE + "/settings/hint", headers=bearer(app), body={"hint": PASSPHRASE}
    )
    assert same.status == 422
    assert (
        owner.request(
            "PUT", BASE + "/settings/hint", headers=bearer(app), body={"hint": "the usual"}
        ).status
        == 204
    )
    assert owner.request("GET", BASE + "/settings/hint", headers=bearer(app)).status == 204


def test_instance_settings(owner, stack, clock, admin):
    create_instance(
        admin, "bob.cozy.test", Email="bob@example.com", PublicName="Bob", Locale="fr"
    )
    bob = Browser(stack.public)
    # A cookie alone is not enough.
    assert owner.request("GET", BASE + "/settings/instance").status == 401
    cli = admin_token(admin, "bob.cozy.test", Audience="cli", Scope="io.cozy.settings")
    reply = bob.request(
        "GET", "http://bob.cozy.test/settings/instance", headers=bearer(cli)
    )
    data = reply.json()["data"]
    assert data["id"] == "io.cozy.settings.instance" and data["meta"]["rev"]
    attributes = data["attributes"]
    assert attributes["email"] == "bob@example.com"
    assert attributes["public_name"] == "Bob"
    assert attributes["locale"] == "fr"
    assert attributes["onboarding_finished"] is False
    assert attributes["password_defined"] is False
    assert attributes["default_redirection"] == "home/"


def test_register_token_reads_the_instance_settings(stack, admin):
    token = create_instance(admin)
    browser = Browser(stack.public)
    reply = browser.request("GET", BASE + f"/settings/instance?registerToken={token}")
    assert reply.status == 200
    assert (
        browser.request(
            "PUT",
            BASE + f"/settings/instance?registerToken={token}",
            body={"data": {"attributes": {}}},
        ).status
        == 403
    )
    assert (
        browser.request("GET", BASE + "/settings/instance?registerToken=00").status == 401
    )


def test_update_instance_settings(owner, stack, clock):
    app = app_token(stack, clock)
    current = owner.request("GET", BASE + "/settings/instance", headers=bearer(app)).json()
    rev = current["data"]["meta"]["rev"]
    attributes = dict(current["data"]["attributes"])
    attributes.update(
        public_name="Alice",
        tz="Europe/Paris",
        locale="fr",
        email="evil@example.com",
        uuid="not-for-apps",
    )
    body = {
        "data": {
            "type": "io.cozy.settings",
            "id": "io.cozy.settings.instance",
            "attributes": attributes,
            "meta": {"rev": rev},
        }
    }
    done = owner.request("PUT", BASE + "/settings/instance", headers=bearer(app), body=body)
    assert done.status == 200, done.body
    data = done.json()["data"]
    assert data["meta"]["rev"] != rev
    assert data["attributes"]["public_name"] == "Alice"
    assert data["attributes"]["locale"] == "fr"
    assert "email" not in data["attributes"]  # guarded: only the email flow sets it
    assert stored(stack).locale == "fr"
    assert stored(stack).uuid == ""
    # A stale rev with changes: 409. Without changes: 200.
    stale = owner.request(
        "PUT",
        BASE + "/settings/instance",
        headers=bearer(app),
        body={
            "data": {
                "attributes": {**attributes, "public_name": "Eve"},
                "meta": {"rev": rev},
            }
        },
    )
    assert stale.status == 409
    fresh = owner.request("GET", BASE + "/settings/instance", headers=bearer(app)).json()
    same = owner.request(
        "PUT",
        BASE + "/settings/instance",
        headers=bearer(app),
        body={"data": {"attributes": fresh["data"]["attributes"], "meta": {"rev": rev}}},
    )
    assert same.status == 200
    bad = owner.request(
        "PUT", BASE + "/settings/instance", headers=bearer(app), body={"data": {}}
    )
    assert bad.status == 400


def test_update_instance_needs_put_on_the_document(owner, admin):
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings:GET")
    reply = owner.request(
        "PUT",
        BASE + "/settings/instance",
        headers=bearer(cli),
        body={"data": {"attributes": {"public_name": "x"}}},
    )
    assert reply.status == 403
    cli = admin_token(
        admin, Audience="cli", Scope="io.cozy.settings:PUT:io.cozy.settings.instance"
    )
    reply = owner.request(
        "PUT",
        BASE + "/settings/instance",
        headers=bearer(cli),
        body={"data": {"attributes": {"public_name": "x", "uuid": "from-cli"}}},
    )
    assert reply.status == 409  # no rev: the stored document wins


def test_capabilities(owner, admin):
    assert owner.request("GET", BASE + "/settings/capabilities").status == 401
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.files")
    reply = owner.request("GET", BASE + "/settings/capabilities", headers=bearer(cli))
    assert reply.json()["data"] == {
        "type": "io.cozy.settings",
        "id": "io.cozy.settings.capabilities",
        "attributes": {
            "file_versioning": True,
            "flat_subdomains": False,
            "can_auth_with_password": True,
            "can_auth_with_magic_links": False,
            "can_auth_with_oidc": False,
        },
        "meta": {},
        "links": {"self": "/settings/capabilities"},
    }


def test_onboarded(owner, stack):
    assert (
        owner.request("GET", BASE + "/settings/onboarded").header("location")
        == "http://home.alice.cozy.test/"
    )
    stranger = Browser(stack.public).request("GET", BASE + "/settings/onboarded")
    assert stranger.header("location") == "http://alice.cozy.test/auth/login"


def test_unknown_settings_route(owner):
    assert owner.request("GET", BASE + "/settings/nope").status == 404
