"""App hosts (``<slug>.<domain>``) and the built-in home page at
``home.<domain>``, in memory."""

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from cozyd.auth.urls import INSTANCE_SETTINGS_ID, SETTINGS_DOCTYPE
from cozyd.storage.names import db_name
from cozyd.testing import memory_stack, sync
from tests.support.auth import (
    ADMIN,
    BASE,
    DOMAIN,
    Browser,
    basic_auth,
    create_instance,
    login,
    onboard,
)
from tests.unit.web.test_auth_login import instance_of

HOME = f"http://home.{DOMAIN}/"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def stack(tmp_path, clock):
    return memory_stack(str(tmp_path), clock=clock)


@pytest.fixture
def admin(stack):
    return Browser(stack.admin)


@pytest.fixture
def owner(stack, admin):
    browser = Browser(stack.public)
    assert onboard(browser, create_instance(admin)).status == 200
    return browser


def modify(admin, **params):
    reply = admin.request(
        "PATCH", f"{ADMIN}/instances/{DOMAIN}?" + urlencode(params), headers=basic_auth()
    )
    assert reply.status == 200, reply.body


def test_onboarding_lands_on_the_home_page(stack, admin):
    browser = Browser(stack.public)
    token = create_instance(admin)
    page = browser.request("GET", f"{BASE}/auth/passphrase?registerToken={token}")
    assert page.status == 200
    reply = onboard(browser, token)
    assert reply.json()["redirect"] == HOME
    home = browser.request("GET", HOME, headers=HTML)
    assert home.status == 200, home.body
    assert home.header("content-type") == "text/html; charset=utf-8"
    assert '<h1 id="home-name">alice.cozy.test</h1>' in home.text
    assert f'href="http://{DOMAIN}/auth/logout" id="home-logout"' in home.text
    assert f'href="http://settings.{DOMAIN}/#/profile" id="home-settings"' in home.text
    assert f'href="http://settings.{DOMAIN}/#/sessions" id="home-sessions"' in home.text
    assert "default-src 'none'" in home.header("content-security-policy")


def test_login_lands_on_the_home_page(owner, stack):
    browser = Browser(stack.public)
    reply = login(browser)
    assert reply.status == 303
    assert reply.header("location") == HOME
    # The session cookie is the instance's and its sub-domains'.
    assert "Domain=alice.cozy.test" in reply.cookies()["cozysessid"]
    home = browser.request("GET", reply.header("location"))
    assert home.status == 200
    assert "Log out" in home.text


def test_the_public_name_is_the_home_title(owner, stack):
    instance = instance_of(stack)
    database = db_name(instance.prefix, SETTINGS_DOCTYPE)
    doc = sync(stack.store.get_doc(database, INSTANCE_SETTINGS_ID))
    sync(stack.store.put_doc(database, {**doc, "public_name": "Alice <3 & co"}))
    home = owner.request("GET", HOME)
    assert '<h1 id="home-name">Alice &lt;3 &amp; co</h1>' in home.text
    assert "<title>Alice &lt;3 &amp; co · Cozy</title>" in home.text


def test_without_a_session_the_home_sends_to_the_login(owner, stack):
    stranger = Browser(stack.public)
    reply = stranger.request("GET", HOME + "?x=1&jwt=abc")
    assert reply.status == 302
    location = urlsplit(reply.header("location"))
    assert (location.scheme, location.netloc, location.path) == (
        "http",
        DOMAIN,
        "/auth/login",
    )
    assert parse_qs(location.query) == {"redirect": [HOME + "?x=1&jwt=abc"], "jwt": ["abc"]}
    # ... and the login page comes back to the home once logged in.
    assert login(stranger, redirect=HOME).header("location") == HOME
    assert stranger.request("GET", HOME).status == 200


def test_a_logged_out_owner_is_sent_to_the_login(owner):
    token = owner.csrf(f"{BASE}/auth/logout")
    assert (
        owner.request("POST", f"{BASE}/auth/logout", form={"csrf_token": token}).status
        == 303
    )
    assert owner.request("GET", HOME).status == 302


def test_an_app_not_installed(owner):
    for headers, content_type in [
        (HTML, "text/html; charset=utf-8"),
        ({"Accept": "application/json"}, "application/json"),
        ({}, "text/plain; charset=utf-8"),
    ]:
        reply = owner.request("GET", f"http://drive.{DOMAIN}/foo", headers=headers)
        assert reply.status == 404
        assert reply.header("content-type") == content_type
        if content_type == "application/json":
            assert reply.json() == {"error": "Application is not installed"}
        elif content_type.startswith("text/plain"):
            assert reply.text == "Application is not installed"
        else:
            assert "This application does not exist" in reply.text
            assert f'href="http://home.{DOMAIN}/"' in reply.text
    head = owner.request("HEAD", f"http://drive.{DOMAIN}/")
    assert (head.status, head.body) == (404, b"")


def test_an_app_not_installed_in_french(owner, admin):
    modify(admin, Locale="fr")
    reply = owner.request("GET", f"http://drive.{DOMAIN}/", headers=HTML)
    assert reply.status == 404
    assert "Cette application n&#39;existe pas" in reply.text
    assert '<html lang="fr">' in reply.text
    home = owner.request("GET", HOME)
    assert "Se déconnecter" in home.text and "Mes paramètres" in home.text


def test_apps_answer_only_get_and_head(owner):
    reply = owner.request("POST", HOME, headers={"Accept": "application/json"})
    assert reply.status == 405
    assert reply.json() == {"error": "Method POST not allowed"}
    assert owner.request("HEAD", HOME).status == 200


def test_before_the_onboarding_apps_send_to_the_instance(stack, admin):
    create_instance(admin)
    reply = Browser(stack.public).request("GET", HOME)
    assert reply.status == 302
    assert reply.header("location") == f"http://{DOMAIN}/"


def test_a_blocked_instance_serves_no_app(owner, admin):
    modify(admin, Blocked="true", BlockingReason="LOGIN_FAILED")
    reply = owner.request("GET", HOME, headers={"Accept": "application/json"})
    assert reply.status == 503
    assert "LOGIN_FAILED" in reply.text


def test_hosts_that_are_no_app_host(owner, stack, admin):
    anonymous = Browser(stack.public)
    # The instance itself, and hosts whose parent is no instance.
    assert anonymous.request("GET", f"{BASE}/auth/login").status == 200
    unknown = anonymous.request("GET", "http://home.nobody.cozy.test/")
    assert unknown.status == 404
    assert unknown.json()["errors"][0]["code"] == "instance_not_found"
    assert anonymous.request("GET", "http://nohost/").status == 404
    # An instance owns its sub-domains, as in cozy-stack: even one that is
    # another instance's domain is an app host of the parent.
    create_instance(admin, domain=f"home.{DOMAIN}")
    assert owner.request("GET", HOME).status == 200
    assert "home-name" in owner.request("GET", HOME).text
    # Upper case and a trailing dot are the same host.
    assert owner.request("GET", "http://HOME.Alice.cozy.test./").status == 200


def test_a_deleted_instance_serves_no_app(owner, admin):
    reply = admin.request("DELETE", f"{ADMIN}/instances/{DOMAIN}", headers=basic_auth())
    assert reply.status in (200, 204), reply.body
    gone = owner.request("GET", HOME)
    assert gone.status == 404
    assert gone.json()["errors"][0]["code"] == "instance_not_found"
