"""``/``, the onboarding form and ``POST /settings/passphrase``, in memory."""

import re

import pytest

from cozyd import passphrase as hashing
from cozyd.instance.model import Instance
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import TEST_KDF_ITERATIONS, sync
from tests.support.auth import (
    BASE,
    DOMAIN,
    PASSPHRASE,
    Browser,
    client_hash,
    create_instance,
    login,
    onboard,
)


@pytest.fixture
def admin(stack):
    return Browser(stack.admin)


@pytest.fixture
def browser(stack):
    return Browser(stack.public)


def stored(stack, domain=DOMAIN):
    return Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new(domain).id))
    )


def test_home_before_onboarding(admin, browser):
    token = create_instance(admin)
    page = browser.request("GET", BASE + "/")
    assert page.status == 200
    assert "not activated yet" in page.text
    assert browser.request("GET", BASE + "/?registerToken=00ff").status == 200
    go = browser.request("GET", BASE + f"/?registerToken={token}&redirection=drive")
    assert go.status == 303
    assert go.header("location") == (
        f"http://{DOMAIN}/auth/passphrase?registerToken={token}&redirection=drive"
    )
    # The login page is not there yet either.
    login_page = browser.request("GET", BASE + "/auth/login")
    assert login_page.status == 200 and "not activated yet" in login_page.text


def test_onboarding_form(admin, browser):
    token = create_instance(admin)
    page = browser.request("GET", BASE + f"/auth/passphrase?registerToken={token}")
    assert page.status == 200
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert f'name="register_token" value="{token}"' in page.text
    assert 'data-salt="me@alice.cozy.test"' in page.text
    assert f'value="{TEST_KDF_ITERATIONS}"' in page.text
    assert "_csrf" in page.cookies()
    csp = page.header("content-security-policy")
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert page.text.count(f'nonce="{nonce}"') >= 3  # style and scripts
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert browser.request("GET", BASE + "/auth/passphrase?registerToken=00").status == 200
    assert "not activated" in browser.request("GET", BASE + "/auth/passphrase").text


def test_onboarding_with_the_form(stack, admin, browser):
    token = create_instance(admin)
    page = browser.request("GET", BASE + f"/auth/passphrase?registerToken={token}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    hashed = client_hash()
    done = browser.request(
        "POST",
        BASE + "/settings/passphrase",
        headers={"Accept": "text/html,application/xhtml+xml"},
        form={
            "csrf_token": csrf,
            "register_token": token,
            "passphrase": hashed,
            "iterations": str(TEST_KDF_ITERATIONS),
            "key": "0.aXY=|a2V5",
            "public_key": "cHVi",
            "private_key": "2.aXY=|cHJpdg==|bWFj",
            "hint": "my hint",
            "redirection": "",
        },
    )
    assert done.status == 303, done.body
    assert done.header("location") == "http://home.alice.cozy.test/"
    cookie = done.cookies()["cozysessid"]
    assert "Domain=alice.cozy.test" in cookie and "Path=/" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age=315360000" in cookie  # a long-run session
    assert "Secure" not in cookie  # [server] scheme = http
    instance = stored(stack)
    assert instance.register_token is None
    assert instance.onboarding_finished and instance.password_defined
    assert hashing.check_server_hash(hashed, instance.passphrase_hash)
    settings = sync(
        stack.store.get_doc(
            db_name(instance.prefix, "io.cozy.settings"), "io.cozy.settings.bitwarden"
        )
    )
    assert settings["passphrase_kdf"] == 0
    assert settings["passphrase_kdf_iterations"] == TEST_KDF_ITERATIONS
    assert settings["key"] == "0.aXY=|a2V5" and settings["public_key"] == "cHVi"
    assert settings["passphrase_hint"] == "my hint" and settings["security_stamp"]
    # Logged in: / goes home; the token cannot be used again.
    assert (
        browser.request("GET", BASE + "/").header("location")
        == "http://home.alice.cozy.test/"
    )
    again = onboard(Browser(stack.public), token)
    assert again.status == 400
    assert again.json()["errors"][0]["detail"] == "Empty register token"
    logins = sync(
        stack.store.all_docs(
            db_name(instance.prefix, "io.cozy.sessions.logins"), include_docs=True
        )
    )["rows"]
    assert len([r for r in logins if not r["id"].startswith("_design")]) == 1


def test_form_posts_need_the_csrf_token(admin, browser):
    token = create_instance(admin)
    browser.request("GET", BASE + f"/auth/passphrase?registerToken={token}")
    fields = {
        "register_token": token,
        "passphrase": client_hash(),
        "iterations": str(TEST_KDF_ITERATIONS),
        "key": "k",
    }
    missing = browser.request("POST", BASE + "/settings/passphrase", form=fields)
    assert (missing.status, missing.text) == (
        400,
        "missing csrf token in the form parameter",
    )
    wrong = browser.request(
        "POST", BASE + "/settings/passphrase", form={**fields, "csrf_token": "x" * 43}
    )
    assert (wrong.status, wrong.text) == (403, "invalid csrf token")


def test_json_onboarding(stack, admin, browser):
    token = create_instance(admin)
    wrong = onboard(browser, "00" * 16)
    assert wrong.status == 400
    assert wrong.json()["errors"][0]["detail"] == "Invalid register token"
    not_hex = browser.request(
        "POST",
        BASE + "/settings/passphrase",
        body={"register_token": "zz", "passphrase": "x"},
    )
    assert not_hex.status == 400
    low = browser.request(
        "POST",
        BASE + "/settings/passphrase",
        body={"register_token": token, "passphrase": "x", "iterations": 1000, "key": "k"},
    )
    assert low.status == 422
    assert low.json()["errors"][0]["source"] == {"parameter": "KdfIterations"}
    empty = browser.request(
        "POST", BASE + "/settings/passphrase", body={"register_token": token}
    )
    assert empty.json()["errors"][0]["detail"] == "Missing new passphrase"
    assert stored(stack).register_token is not None
    done = onboard(browser, token)
    assert done.status == 200
    assert done.json() == {"redirect": "http://home.alice.cozy.test/"}
    assert "cozysessid" in browser.cookies
    # Now the login works with the same client-side hash.
    assert login(Browser(stack.public)).status == 303


def test_clear_passphrase_without_key_is_hashed_like_a_client(stack, admin, browser):
    """Old clients send the clear passphrase (no iterations, no key)."""
    token = create_instance(admin)
    reply = browser.request(
        "POST",
        BASE + "/settings/passphrase",
        body={"register_token": token, "passphrase": PASSPHRASE},
    )
    assert reply.status == 200
    assert login(Browser(stack.public)).status == 303


def test_redirection_to_an_installed_app(stack, admin, browser):
    token = create_instance(admin)
    prefix = Instance.new(DOMAIN).prefix
    sync(
        stack.store.put_doc(
            db_name(prefix, "io.cozy.apps"), {"_id": "io.cozy.apps/drive", "slug": "drive"}
        )
    )
    done = browser.request(
        "POST",
        BASE + "/settings/passphrase",
        body={
            "register_token": token,
            "passphrase": client_hash(),
            "key": "k",
            "iterations": TEST_KDF_ITERATIONS,
            "redirection": "drive/#/folder",
        },
    )
    # As cozy-stack builds it: an empty path before the fragment.
    assert done.json() == {"redirect": "http://drive.alice.cozy.test#/folder"}


def test_passphrase_form_after_onboarding_goes_home(admin, browser):
    token = create_instance(admin)
    onboard(browser, token)
    other = browser.request(
        "GET", BASE + f"/auth/passphrase?registerToken={token}", cookies=False
    )
    assert other.status == 303
    assert other.header("location") == "http://home.alice.cozy.test/"


def test_french_pages(admin, browser):
    create_instance(admin, Locale="fr")
    page = browser.request("GET", BASE + "/")
    assert '<html lang="fr">' in page.text
    assert "pas encore activé" in page.text


def test_accept_language_when_the_locale_has_no_pages(admin, browser):
    create_instance(admin, Locale="de")
    page = browser.request(
        "GET", BASE + "/", headers={"Accept-Language": "de-DE,fr;q=0.8,en;q=0.5"}
    )
    assert '<html lang="fr">' in page.text
    page = browser.request("GET", BASE + "/", headers={"Accept-Language": "de"})
    assert '<html lang="en">' in page.text
