"""With flat app sub-domains (``<user>-<slug>.<parent>``), the session
cookie is set on the parent domain, under a name of its instance, so the
app hosts see it (as cozy-stack's CookieDomain / SessionCookieName)."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from cozyd.auth import sessions
from cozyd.instance.model import Instance
from cozyd.storage.names import instance_prefix
from tests.support.apps import app_files, manifest, write_folder
from tests.support.auth import (
    BASE,
    DOMAIN,
    Browser,
    admin_token,
    create_instance,
    login,
    onboard,
)

APP = "http://alice-notes.cozy.test"


def attributes(line: str) -> dict[str, str]:
    """The attributes of a Set-Cookie line, by lower-case name."""
    pairs = [part.strip().partition("=") for part in line.split(";")[1:]]
    return {name.lower(): value for name, _, value in pairs}


def domain_matches(host: str, domain: str) -> bool:
    """RFC 6265 §5.1.3: does a cookie of ``domain`` go to ``host``?"""
    domain = domain.lstrip(".").lower()
    return host == domain or host.endswith("." + domain)


@pytest.fixture
def flat(tmp_path, clock):
    from cozyd.testing import memory_stack, sync

    stack = memory_stack(str(tmp_path / "flat"), clock=clock, apps={"subdomains": "flat"})
    yield stack
    sync(stack.store.close())


def test_the_cookie_domain_and_name_in_flat_mode():
    alice = Instance.new("alice.cozy.test")
    assert sessions.cookie_domain(alice, flat=True) == ".cozy.test"
    assert sessions.cookie_domain(alice) == ".alice.cozy.test"
    assert sessions.cookie_name(alice, flat=True) == f"sess-{alice.prefix}"
    assert sessions.cookie_name(alice) == "cozysessid"
    assert (
        sessions.cookie_domain(Instance.new("alice.cozy.test:8080"), flat=True)
        == ".cozy.test"
    )


def test_flat_app_hosts_see_the_session(flat, tmp_path):
    admin = Browser(flat.admin)
    owner = Browser(flat.public)
    assert onboard(owner, create_instance(admin)).status == 200
    token = admin_token(admin, Audience="cli", Scope="io.cozy.apps")
    src = "file://" + write_folder(str(tmp_path / "src"), app_files(manifest()))
    reply = owner.request(
        "POST",
        f"{BASE}/apps/notes?" + urlencode({"Source": src}),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 202, reply.body

    browser = Browser(flat.public)
    reply = login(browser)
    name = f"sess-{instance_prefix(DOMAIN)}"
    line = reply.cookies()[name]
    assert "cozysessid" not in reply.cookies()
    assert attributes(line)["domain"] == "cozy.test"
    assert domain_matches("alice-notes.cozy.test", attributes(line)["domain"])
    assert domain_matches(DOMAIN, attributes(line)["domain"])

    # A browser sends it to the app host: the private route opens.
    cookie = {"Cookie": line.split(";", 1)[0]}
    page = browser.request("GET", APP + "/", headers=cookie, cookies=False)
    assert page.status == 200, page.body
    # The session is read under that name on the instance too.
    settings = browser.request(
        "GET", f"{BASE}/settings/sessions/current", headers=cookie, cookies=False
    )
    assert settings.status != 401, settings.body
    # Without it, the private route sends to the login page.
    stranger = Browser(flat.public)
    assert stranger.request("GET", APP + "/").status == 302
    # Logging out clears the same cookie.
    app_token = re.search(r'data-cozy-token="([^"]+)"', page.text).group(1)
    out = browser.request(
        "DELETE",
        f"{BASE}/auth/login",
        headers={**cookie, "Authorization": f"Bearer {app_token}"},
        cookies=False,
    )
    assert out.status == 204, out.body
    cleared = out.cookies().get(name, "")
    assert "max-age=0" in cleared.lower() and attributes(cleared)["domain"] == "cozy.test"
