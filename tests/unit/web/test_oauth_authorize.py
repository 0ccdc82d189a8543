"""``GET|POST /auth/authorize``: the consent page, CSRF, codes and PKCE."""

import html
import re
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from cozyd.auth.oauth import code_challenge
from cozyd.auth.sessions import Duration, SessionStore, encode_cookie
from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import MemoryClient, sync
from tests.support.oauth import (
    ADMIN,
    ALICE,
    AUTH,
    BOB,
    REDIRECT,
    PageClient,
    bearer,
    create,
    form,
    instance_of,
    registered,
    token_request,
)

SCOPE = "io.cozy.contacts:GET io.cozy.files io.cozy.jobs:POST:sendmail:worker"


@pytest.fixture
def admin(oauth_stack):
    return MemoryClient(oauth_stack.admin)


@pytest.fixture
def public(oauth_stack, admin):
    create(admin, "alice.cozy.test")
    create(admin, "bob.cozy.test", Locale="fr")
    return PageClient(oauth_stack.public)


def session_cookie(stack, clock, domain="alice.cozy.test"):
    instance = instance_of(stack, domain)
    session = sync(
        SessionStore(stack.documents, seconds=clock.seconds).create(
            instance, Duration.NORMAL
        )
    )
    return f"cozysessid={encode_cookie(instance, session.id)}"


def authorize_query(client, **overrides):
    params = {
        "client_id": client["client_id"],
        "redirect_uri": REDIRECT,
        "state": "Eh6ahshepei5Oojo",
        "response_type": "code",
        "scope": SCOPE,
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def get_form(public, client, cookie=None, url=ALICE, **overrides):
    headers = {"Cookie": cookie} if cookie else {}
    return public.request(
        "GET",
        url + "/auth/authorize?" + urlencode(authorize_query(client, **overrides)),
        headers=headers,
    )


def csrf_of(page):
    text = page.body.decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"_csrf={token};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    return token


def post_form(public, client, cookie, csrf, *, url=ALICE, accept=None, **overrides):
    fields = authorize_query(client, **overrides)
    if csrf is not None:
        fields["csrf_token"] = csrf
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    cookies = [c for c in (cookie, f"_csrf={csrf}" if csrf else None) if c]
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    if accept:
        headers["Accept"] = accept
    return public.request(
        "POST", url + "/auth/authorize", data=form(fields), headers=headers
    )


def test_not_logged_in_goes_to_the_login_page(public):
    client = registered(public)
    response = get_form(public, client)
    assert response.status == 303
    location = urlsplit(response.headers["location"])
    assert (location.scheme, location.netloc, location.path) == (
        "http",
        "alice.cozy.test",
        "/auth/login",
    )
    back = parse_qs(location.query)["redirect"][0]
    assert back.startswith("http://alice.cozy.test/auth/authorize?")
    assert parse_qs(urlsplit(back).query)["scope"] == [SCOPE]


def test_the_consent_page_lists_the_permissions_in_words(oauth_stack, public, clock):
    client = registered(
        public,
        client_uri="https://client.example.org/",
        policy_uri="https://client.example.org/policy",
    )
    page = get_form(public, client, session_cookie(oauth_stack, clock))
    assert page.status == 200, page.body
    assert page.headers["content-type"].startswith("text/html")
    text = html.unescape(page.body.decode())
    assert "Give Client access to your cozy?" in text
    assert "• Read your contacts" in text
    assert "• Read and modify your files and folders" in text
    assert "• Send you emails" in text
    assert 'href="https://client.example.org/policy"' in text
    token = csrf_of(page)
    for name, value in [
        ("client_id", client["client_id"]),
        ("state", "Eh6ahshepei5Oojo"),
        ("redirect_uri", REDIRECT),
        ("scope", SCOPE),
        ("response_type", "code"),
    ]:
        assert f'name="{name}" value="{value}"' in text
    assert len(token) >= 32
    assert "access_denied" in text
    policy = page.headers["content-security-policy"]
    # Chromium checks form-action on the redirect after the POST.
    assert (
        "form-action" not in policy
        or "form-action 'self' https://client.example.org" in policy
    )
    assert "pending" in sync(
        oauth_stack.store.get_doc(
            db_name(Instance.new("alice.cozy.test").prefix, "io.cozy.oauth.clients"),
            client["client_id"],
        )
    )  # nothing granted yet


def test_the_consent_page_in_french(oauth_stack, public, clock):
    client = registered(public, url=BOB)
    page = get_form(
        public,
        client,
        session_cookie(oauth_stack, clock, "bob.cozy.test"),
        url=BOB,
        scope="io.cozy.contacts:GET io.cozy.bank.*",
    )
    assert page.status == 200
    text = html.unescape(page.body.decode())
    assert '<html lang="fr">' in text
    assert "Donner à Client l'accès à votre cozy ?" in text
    assert "• Lire vos contacts" in text
    assert "• Lire et modifier vos données bancaires et les données associées" in text


def test_client_metadata_is_escaped(oauth_stack, public, clock):
    client = registered(
        public, client_name="<script>alert(1)</script>", client_uri="javascript:alert(2)"
    )
    page = get_form(public, client, session_cookie(oauth_stack, clock))
    text = page.body.decode()
    assert "<script>alert(1)" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "javascript:" not in text


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"state": None}, "The state parameter is mandatory"),
        ({"client_id": None}, "The client_id parameter is mandatory"),
        ({"redirect_uri": None}, "The redirect_uri parameter is mandatory"),
        ({"response_type": "token"}, "Invalid response type"),
        (
            {"code_challenge": "abc", "code_challenge_method": "plain"},
            "Invalid challenge code method",
        ),
        (
            {"code_challenge_method": "S256"},
            "The code_challenge parameter must be given when code_challenge_method is present",
        ),
        ({"client_id": "unknown"}, "The client must be registered"),
        (
            {"redirect_uri": "https://evil.example/cb"},
            "The redirect_uri parameter doesn't match the registered ones",
        ),
        ({"scope": ""}, "The scope parameter is mandatory"),
        ({"scope": "login"}, "The scope parameter is mandatory"),
        (
            {"scope": "*", "code_challenge": "x" * 43, "code_challenge_method": "S256"},
            "Invalid scope",
        ),
        ({"scope": "io.cozy.*"}, "Invalid scope"),
    ],
)
def test_bad_parameters_render_an_error_page(
    oauth_stack, public, clock, overrides, message
):
    client = registered(public)
    page = get_form(public, client, session_cookie(oauth_stack, clock), **overrides)
    assert page.status == 400
    assert page.headers["content-type"].startswith("text/html")
    assert message in html.unescape(page.body.decode())


def test_error_pages_in_french(public):
    client = registered(public, url=BOB)
    page = get_form(public, client, url=BOB, state=None)
    assert page.status == 400
    assert "Le paramètre state est obligatoire" in html.unescape(page.body.decode())


def test_accept_gives_a_code_then_tokens(oauth_stack, public, clock):
    client = registered(public)
    cookie = session_cookie(oauth_stack, clock)
    csrf = csrf_of(get_form(public, client, cookie))
    response = post_form(public, client, cookie, csrf)
    assert response.status == 302, response.body
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?") and location.endswith("#")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["Eh6ahshepei5Oojo"]
    assert query["code"] == query["access_code"]
    assert list(parse_qs(urlsplit(location).query)) == ["access_code", "code", "state"]
    stored = sync(
        oauth_stack.store.get_doc(
            db_name(Instance.new("alice.cozy.test").prefix, "io.cozy.oauth.clients"),
            client["client_id"],
        )
    )
    assert "pending" not in stored
    tokens = token_request(
        public,
        grant_type="authorization_code",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        code=query["code"][0],
    )
    assert tokens.status == 200, tokens.body
    assert tokens.json()["scope"] == SCOPE
    me = public.request(
        "GET", ALICE + "/permissions/self", headers=bearer(tokens.json()["access_token"])
    )
    assert me.status == 200
    assert len(me.json()["data"]["attributes"]["permissions"]) == 3


def test_redirect_uri_query_is_kept(oauth_stack, public, clock):
    uri = "https://client.example.org/cb?app=1&state=stale"
    client = registered(public, redirect_uris=[uri])
    cookie = session_cookie(oauth_stack, clock)
    csrf = csrf_of(get_form(public, client, cookie, redirect_uri=uri))
    location = post_form(public, client, cookie, csrf, redirect_uri=uri).headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["app"] == ["1"] and query["state"] == ["Eh6ahshepei5Oojo"]


def test_json_clients_get_a_deeplink(oauth_stack, public, clock):
    client = registered(public)
    cookie = session_cookie(oauth_stack, clock)
    csrf = csrf_of(get_form(public, client, cookie))
    response = post_form(public, client, cookie, csrf, accept="application/json")
    assert response.status == 200
    assert response.json()["deeplink"].startswith(REDIRECT + "?access_code=")


def test_csrf_is_required(oauth_stack, public, clock):
    client = registered(public)
    cookie = session_cookie(oauth_stack, clock)
    missing = post_form(public, client, cookie, None)
    assert missing.status == 400
    forged = public.request(
        "POST",
        ALICE + "/auth/authorize",
        data=form({**authorize_query(client), "csrf_token": "A" * 43}),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"{cookie}; _csrf={'B' * 43}",
        },
    )
    assert (forged.status, forged.body) == (403, b"invalid csrf token")


def test_post_needs_a_session(oauth_stack, public, clock):
    client = registered(public)
    csrf = csrf_of(get_form(public, client, session_cookie(oauth_stack, clock)))
    # 403 without a session, as cozy-stack's AuthorizeWhenNotLoggedIn expects.
    response = post_form(public, client, None, csrf)
    assert response.status == 403
    assert "You must be authenticated" in html.unescape(response.body.decode())
    forged = post_form(public, client, "cozysessid=abc.def", csrf)
    assert forged.status == 403
    other = post_form(
        public, client, session_cookie(oauth_stack, clock, "bob.cozy.test"), csrf
    )
    assert other.status == 403
    # No consent page nor code without a session, CSRF cookie or not.
    bare = public.request(
        "POST",
        ALICE + "/auth/authorize",
        data=form({**authorize_query(client), "csrf_token": csrf}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert bare.status == 403 and "location" not in bare.headers


def test_pkce_through_the_consent(oauth_stack, public, clock):
    client = registered(public)
    cookie = session_cookie(oauth_stack, clock)
    verifier = "a-very-long-and-random-code-verifier-0123456789abcdef"
    pkce = {"code_challenge": code_challenge(verifier), "code_challenge_method": "S256"}
    page = get_form(public, client, cookie, **pkce)
    assert f'value="{pkce["code_challenge"]}"' in page.body.decode()
    location = post_form(public, client, cookie, csrf_of(page), **pkce).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]

    def exchange(**extra):
        return token_request(
            public,
            grant_type="authorization_code",
            client_id=client["client_id"],
            client_secret=client["client_secret"],
            code=code,
            **extra,
        )

    assert exchange().json() == {"error": "invalid code_verifier"}
    location = post_form(public, client, cookie, csrf_of(page), **pkce).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    assert exchange(code_verifier=verifier).status == 200


def test_code_expires_and_is_single_use(oauth_stack, public, clock):
    client = registered(public)
    cookie = session_cookie(oauth_stack, clock)
    csrf = csrf_of(get_form(public, client, cookie))

    def new_code():
        location = post_form(public, client, cookie, csrf).headers["location"]
        return parse_qs(urlsplit(location).query)["code"][0]

    def exchange(code):
        return token_request(
            public,
            grant_type="authorization_code",
            client_id=client["client_id"],
            client_secret=client["client_secret"],
            code=code,
        )

    first, second = new_code(), new_code()
    assert exchange(first).status == 200
    assert exchange(first).json() == {"error": "invalid code"}
    clock.advance(5 * 60 + 1)
    assert exchange(second).json() == {"error": "invalid code"}


def test_login_scope_skips_the_consent(oauth_stack, admin, public, clock):
    created = admin.request(
        "POST",
        ADMIN + "/instances/oauth_client",
        auth=AUTH,
        params={
            "Domain": "alice.cozy.test",
            "RedirectURI": REDIRECT,
            "ClientName": "manager",
            "SoftwareID": "manager",
            "AllowLoginScope": "true",
        },
    ).json()
    response = get_form(public, created, session_cookie(oauth_stack, clock), scope="login")
    assert response.status == 302
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    tokens = token_request(
        public,
        grant_type="authorization_code",
        client_id=created["client_id"],
        client_secret=created["client_secret"],
        code=code,
    ).json()
    assert tokens["scope"] == ""


def test_deny_link_goes_back_with_access_denied(oauth_stack, public, clock):
    client = registered(public)
    page = get_form(public, client, session_cookie(oauth_stack, clock))
    deny = html.unescape(
        re.search(r'href="([^"]+)" id="authorize-deny"', page.body.decode()).group(1)
    )
    query = parse_qs(urlsplit(deny).query)
    assert deny.startswith(REDIRECT)
    assert query == {"error": ["access_denied"], "state": ["Eh6ahshepei5Oojo"]}
    assert "code" not in query and quote("code") not in deny.split("?")[0]
