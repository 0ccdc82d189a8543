"""Login, logout, sessions and failed-login blocking, in memory."""

import re

import pytest

from cozyd.auth import tokens
from cozyd.instance.model import Instance
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import memory_stack, sync
from tests.support.auth import (
    ADMIN,
    BASE,
    DOMAIN,
    Browser,
    admin_token,
    basic_auth,
    client_hash,
    create_instance,
    login,
    onboard,
)


@pytest.fixture
def stack(tmp_path, clock):
    return memory_stack(str(tmp_path), clock=clock, auth={"login_failures_per_hour": 5})


@pytest.fixture
def admin(stack):
    return Browser(stack.admin)


@pytest.fixture
def owner(stack, admin):
    """A browser that onboarded alice (so it holds a session)."""
    browser = Browser(stack.public)
    assert onboard(browser, create_instance(admin)).status == 200
    return browser


def instance_of(stack, domain=DOMAIN):
    return Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new(domain).id))
    )


def app_token(stack, clock, session_id="", slug="home"):
    instance = instance_of(stack)
    sync(
        stack.store.put_doc(
            db_name(instance.prefix, "io.cozy.permissions"),
            {
                "_id": f"perm-{slug}-{clock.seconds()}",
                "type": "app",
                "source_id": f"io.cozy.apps/{slug}",
                "permissions": {"settings": {"type": "io.cozy.settings"}},
            },
        )
    )
    return tokens.issue(
        instance, tokens.APP, slug, issued_at=clock.seconds(), session_id=session_id
    )


def session_id(browser):
    return browser.cookies["cozysessid"].split(".")[0]


def test_login_form(owner, stack):
    browser = Browser(stack.public)
    page = browser.request("GET", BASE + "/auth/login")
    assert page.status == 200
    assert 'data-salt="me@alice.cozy.test"' in page.text
    assert 'data-iterations="50000"' in page.text
    csrf_cookie = page.cookies()["_csrf"]
    assert "HttpOnly" in csrf_cookie and "SameSite=strict" in csrf_cookie
    assert "Max-Age=3600" in csrf_cookie
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.cookies["_csrf"] == token
    # The token stays the same while the cookie lives.
    assert browser.csrf(BASE + "/auth/login") == token
    # Already logged in: straight to the target.
    assert (
        owner.request("GET", BASE + "/auth/login").header("location")
        == "http://home.alice.cozy.test/"
    )
    to_drive = owner.request(
        "GET",
        BASE + "/auth/login?redirect=http%3A%2F%2Fdrive.alice.cozy.test%2Ffoo%3Fbar%23baz",
    )
    assert to_drive.header("location") == "http://drive.alice.cozy.test/foo?bar#baz"


def test_login_sets_a_session_cookie(stack):
    admin = Browser(stack.admin)
    onboard(Browser(stack.public), create_instance(admin))
    browser = Browser(stack.public)
    reply = login(browser)
    assert reply.status == 303
    assert reply.header("location") == "http://home.alice.cozy.test/"
    cookie = reply.cookies()["cozysessid"]
    # As cozy-stack's Session.ToCookie, as Go writes it (no Secure on http).
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert value
    assert cookie == (
        f"cozysessid={value}; Path=/; Domain=alice.cozy.test; HttpOnly; SameSite=Lax"
    )  # no Max-Age: a browser session
    long = login(Browser(stack.public), **{"long-run-session": "1"}).cookies()["cozysessid"]
    assert long.endswith(
        "; Path=/; Domain=alice.cozy.test; Max-Age=315360000; HttpOnly; SameSite=Lax"
    )
    # Home now goes to the home app.
    assert (
        browser.request("GET", BASE + "/").header("location")
        == "http://home.alice.cozy.test/"
    )


def test_login_in_json(owner, stack):
    browser = Browser(stack.public)
    token = browser.csrf(BASE + "/auth/login")
    reply = browser.request(
        "POST",
        BASE + "/auth/login",
        headers={"Accept": "application/json"},
        form={"csrf_token": token, "passphrase": client_hash()},
    )
    assert reply.status == 200
    assert reply.json() == {"redirect": "http://home.alice.cozy.test/"}
    bad = Browser(stack.public)
    token = bad.csrf(BASE + "/auth/login")
    refused = bad.request(
        "POST",
        BASE + "/auth/login",
        headers={"Accept": "application/json"},
        form={"csrf_token": token, "passphrase": "nope"},
    )
    assert refused.status == 401
    assert refused.json() == {
        "error": "This password is not the right one. Please try again."
    }
    assert "cozysessid" not in bad.cookies


def test_wrong_passphrase_shows_the_form_again(owner, stack):
    browser = Browser(stack.public)
    reply = login(browser, "wrong passphrase", redirect="http://drive.alice.cozy.test/")
    assert reply.status == 401
    assert 'id="login-error"' in reply.text
    assert 'value="http://drive.alice.cozy.test/"' in reply.text


def test_redirect_parameter_is_checked(owner, stack):
    browser = Browser(stack.public)
    for bad, message in [
        ("http://evil.example.com/", "bad url: should be subdomain"),
        ("http://alice.cozy.test.evil.com/", "bad url: should be subdomain"),
        ("http://alice.cozy.test@evil.com/", "bad url: should be subdomain"),
        ("javascript:alert(1)", "bad url: bad scheme"),
        ("http://evil.com\\@alice.cozy.test/", "bad url: could not parse"),
        ("http://evil.com\t@alice.cozy.test/", "bad url: could not parse"),
        ("//evil.com/", "bad url: could not parse"),
        ("http:///evil.com/", "bad url: should be subdomain"),
        ("drive/#/folder", "bad url: could not parse"),
    ]:
        reply = login(browser, redirect=bad)
        assert (reply.status, reply.text) == (400, message), bad
    on_instance = login(
        Browser(stack.public), redirect="http://alice.cozy.test/auth/authorize?x=1#frag"
    )
    # The fragment is replaced (no code can leak through it) and the
    # session opened for an OAuth consent is a short one.
    assert on_instance.header("location") == "http://alice.cozy.test/auth/authorize?x=1#="
    assert "Max-Age=300" in on_instance.cookies()["cozysessid"]


def test_bad_url_page_for_browsers(owner, stack):
    browser = Browser(stack.public)
    reply = browser.request(
        "GET",
        BASE + "/auth/login?redirect=http%3A%2F%2Fevil.com%2F",
        headers={"Accept": "text/html"},
    )
    assert reply.status == 400
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert "bad url: should be subdomain" in reply.text
    assert "Something went wrong" in reply.text


def test_csrf_on_login(owner, stack):
    browser = Browser(stack.public)
    browser.csrf(BASE + "/auth/login")
    missing = browser.request(
        "POST", BASE + "/auth/login", form={"passphrase": client_hash()}
    )
    assert missing.status == 400
    forged = browser.request(
        "POST",
        BASE + "/auth/login",
        form={"passphrase": client_hash(), "csrf_token": "a" * 43},
    )
    assert (forged.status, forged.text) == (403, "invalid csrf token")
    no_cookie = Browser(stack.public).request(
        "POST",
        BASE + "/auth/login",
        form={"passphrase": client_hash(), "csrf_token": browser.cookies["_csrf"]},
    )
    assert no_cookie.status == 403


def test_too_many_failures_block_the_instance(owner, stack, admin, clock):
    for _ in range(5):
        assert login(Browser(stack.public), "wrong").status == 401
    assert not instance_of(stack).blocked
    assert login(Browser(stack.public), "wrong").status == 401
    instance = instance_of(stack)
    assert instance.blocked and instance.blocking_reason == "LOGIN_FAILED"
    blocked = Browser(stack.public).request("GET", BASE + "/auth/login")
    assert blocked.status == 503
    assert blocked.json()["errors"][0]["code"] == "LOGIN_FAILED"
    # The operator unblocks it; the owner logs in.
    reply = admin.request(
        "PATCH", f"{ADMIN}/instances/{DOMAIN}?Blocked=false", headers=basic_auth()
    )
    assert reply.status == 200
    assert login(Browser(stack.public)).status == 303
    # A new hour, a new count.
    clock.advance(3601)
    for _ in range(5):
        login(Browser(stack.public), "wrong")
    assert not instance_of(stack).blocked


def test_delete_login_needs_a_webapp_token(owner, stack, clock, admin):
    sid = session_id(owner)
    refused = owner.request(
        "DELETE", BASE + "/auth/login", headers={"Origin": "http://home.alice.cozy.test"}
    )
    assert refused.status == 401
    assert refused.json() == {"error": "The user can logout only from client-side apps"}
    assert refused.header("access-control-allow-origin") == "http://home.alice.cozy.test"
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    assert (
        owner.request(
            "DELETE", BASE + "/auth/login", headers={"Authorization": f"Bearer {cli}"}
        ).status
        == 401
    )
    app = app_token(stack, clock, session_id=sid)
    done = owner.request(
        "DELETE", BASE + "/auth/login", headers={"Authorization": f"Bearer {app}"}
    )
    assert done.status == 204
    assert "Max-Age=0" in done.cookies()["cozysessid"]
    assert "cozysessid" not in owner.cookies
    assert owner.request("GET", BASE + "/settings/sessions/current").status == 404


def test_app_token_bound_to_a_session(owner, stack, clock):
    app = app_token(stack, clock, session_id=session_id(owner))
    headers = {"Authorization": f"Bearer {app}"}
    assert owner.request("GET", BASE + "/permissions/self", headers=headers).status == 200
    stranger = Browser(stack.public)
    assert (
        stranger.request("GET", BASE + "/permissions/self", headers=headers).status == 400
    )


def test_logout_others(owner, stack, clock):
    other = Browser(stack.public)
    assert login(other).status == 303
    app = app_token(stack, clock, session_id=session_id(owner))
    headers = {"Authorization": f"Bearer {app}"}
    listed = owner.request("GET", BASE + "/settings/sessions/current")
    assert listed.json()["data"]["id"] == session_id(owner)
    assert (
        owner.request("DELETE", BASE + "/auth/login/others", headers=headers).status == 204
    )
    assert other.request("GET", BASE + "/settings/sessions/current").status == 404
    assert owner.request("GET", BASE + "/settings/sessions/current").status == 200
    no_session = Browser(stack.public).request(
        "DELETE", BASE + "/auth/login/others", headers={"Authorization": f"Bearer {app}"}
    )
    assert no_session.status in (400, 401)


def test_preflight(owner):
    reply = owner.request(
        "OPTIONS",
        BASE + "/auth/login",
        headers={
            "Origin": "http://home.alice.cozy.test",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert reply.status == 204
    assert reply.header("access-control-allow-methods") == "DELETE"
    assert reply.header("access-control-allow-headers") == "Authorization"
    assert reply.header("access-control-allow-credentials") == "true"


def test_logout_page(owner, stack):
    page = owner.request("GET", BASE + "/auth/logout")
    assert page.status == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert owner.request("POST", BASE + "/auth/logout", form={}).status == 400
    done = owner.request("POST", BASE + "/auth/logout", form={"csrf_token": token})
    assert done.status == 303
    assert done.header("location") == "http://alice.cozy.test/auth/login"
    assert "cozysessid" not in owner.cookies
    again = owner.request("GET", BASE + "/auth/logout")
    assert again.header("location") == "http://alice.cozy.test/auth/login"


def test_sessions_list(owner, stack, admin):
    login(Browser(stack.public))
    assert owner.request("GET", BASE + "/settings/sessions").status == 401
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.settings")
    forbidden = owner.request(
        "GET", BASE + "/settings/sessions", headers={"Authorization": f"Bearer {cli}"}
    )
    assert forbidden.status == 403
    cli = admin_token(admin, Audience="cli", Scope="io.cozy.sessions:GET")
    listed = owner.request(
        "GET", BASE + "/settings/sessions", headers={"Authorization": f"Bearer {cli}"}
    )
    assert listed.status == 200
    assert listed.header("content-type") == "application/vnd.api+json"
    body = listed.json()
    assert body["meta"]["count"] == 2
    item = body["data"][0]
    assert item["type"] == "io.cozy.sessions" and item["meta"]["rev"]
    assert set(item["attributes"]) >= {"created_at", "last_seen", "long_run", "short_run"}


def test_a_cookie_of_another_instance_is_refused(owner, stack, admin):
    onboard(
        Browser(stack.public),
        create_instance(admin, "bob.cozy.test"),
        domain="bob.cozy.test",
    )
    stolen = owner.cookies["cozysessid"]
    thief = Browser(stack.public)
    thief.cookies["cozysessid"] = stolen
    assert (
        thief.request("GET", "http://bob.cozy.test/settings/sessions/current").status == 404
    )


def test_https_public_urls(tmp_path, clock):
    stack = memory_stack(str(tmp_path), clock=clock, server={"scheme": "https"})
    browser = Browser(stack.public)
    done = onboard(browser, create_instance(Browser(stack.admin)))
    assert done.json() == {"redirect": "https://home.alice.cozy.test/"}
    assert "; Secure" in done.cookies()["cozysessid"]
    page = Browser(stack.public).request("GET", BASE + "/auth/login")
    assert "; Secure" in page.cookies()["_csrf"]
    reply = login(Browser(stack.public), redirect="https://drive.alice.cozy.test/x")
    assert reply.header("location") == "https://drive.alice.cozy.test/x"
    assert "; Secure" in reply.cookies()["cozysessid"]
