"""/apps and /konnectors through HTTP on the in-memory stack, and the
installed apps served on their hosts."""

from __future__ import annotations

import json
import os
import re
import tarfile
from io import BytesIO
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from cozyd.auth import tokens
from tests.support.apps import app_files, manifest, tarball, write_folder
from tests.support.auth import (
    BASE,
    DOMAIN,
    Browser,
    admin_token,
    create_instance,
    onboard,
)

APP_HOST = f"http://notes.{DOMAIN}"


@pytest.fixture
def admin(stack):
    return Browser(stack.admin)


@pytest.fixture
def owner(stack, admin):
    browser = Browser(stack.public)
    assert onboard(browser, create_instance(admin)).status == 200
    return browser


@pytest.fixture
def cli(admin, owner):
    token = admin_token(admin, Audience="cli", Scope="io.cozy.apps io.cozy.konnectors")
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"}


def folder(tmp_path, name="src", **fields):
    path = tmp_path / name
    return write_folder(str(path), app_files(manifest(**fields)))


def install(owner, cli, slug, source, kind="apps", **params):
    query = urlencode({"Source": source, **params})
    return owner.request("POST", f"{BASE}/{kind}/{slug}?{query}", headers=cli)


def test_install_from_a_folder_then_show_list_and_serve(stack, owner, cli, tmp_path):
    reply = install(owner, cli, "notes", "file://" + folder(tmp_path))
    assert reply.status == 202, reply.body
    data = reply.json()["data"]
    assert data["type"] == "io.cozy.apps" and data["id"] == "io.cozy.apps/notes"
    assert data["attributes"]["state"] == "installing"
    shown = owner.request("GET", f"{BASE}/apps/notes", headers=cli).json()["data"]
    assert shown["attributes"]["state"] == "ready"
    assert shown["attributes"]["version"] == "1.0.0"
    assert shown["links"] == {
        "self": "/apps/notes",
        "icon": "/apps/notes/icon/1.0.0",
        "related": f"http://notes.{DOMAIN}/",
    }
    listed = owner.request("GET", f"{BASE}/apps/", headers=cli).json()
    assert [d["attributes"]["slug"] for d in listed["data"]] == ["notes"]
    # The code is where the layout says.
    code = os.path.join(stack.config.data_dir, "apps", DOMAIN, "webapp", "notes", "1.0.0")
    assert os.path.isfile(os.path.join(code, "index.html"))
    # The owner opens it: the index is a template with the app's token.
    page = owner.request("GET", APP_HOST + "/")
    assert page.status == 200, page.body
    assert page.header("cache-control") == "private, no-store, must-revalidate"
    assert "frame-ancestors 'self'" in page.header("content-security-policy")
    assert page.header("x-content-type-options") == "nosniff"
    token = re.search(r'data-cozy-token="([^"]+)"', page.text).group(1)
    claims = tokens.parse(stack_instance(stack), token, now=stack_now(stack))
    assert claims.audience == "app" and claims.subject == "notes" and claims.session_id
    cozy = json.loads(
        re.search(r'data-cozy="([^"]+)"', page.text).group(1).replace("&quot;", '"')
    )
    assert cozy["token"] == token and cozy["domain"] == DOMAIN and cozy["isLoggedIn"]
    assert 'window.appSlug = "notes";' in page.text
    assert '<html lang="en">' in page.text
    # The token is good for exactly the manifest's permissions, with the session.
    notes = owner.request(
        "GET", f"{BASE}/data/io.cozy.notes/_all_docs", headers=bearer(token)
    )
    assert notes.status in (200, 404), notes.body
    contacts = owner.request(
        "GET", f"{BASE}/data/io.cozy.contacts/_all_docs", headers=bearer(token)
    )
    assert contacts.status == 403
    # Fingerprinted assets are immutable, others are not.
    asset = owner.request("GET", APP_HOST + "/app.0123456789abcdef.js")
    assert asset.status == 200
    assert asset.header("cache-control") == "max-age=31536000, immutable"
    assert asset.header("content-type").startswith("application/javascript")
    css = owner.request("GET", APP_HOST + "/style.css")
    assert css.status == 200 and css.header("cache-control") is None
    assert owner.request("GET", APP_HOST + "/missing.js").status == 404
    assert owner.request("GET", APP_HOST + "/../../etc/passwd").status == 404
    icon = owner.request("GET", f"{BASE}/apps/notes/icon/1.0.0")
    assert icon.status == 200 and icon.header("content-type") == "image/svg+xml"


def test_private_routes_need_the_session_public_ones_do_not(stack, owner, cli, tmp_path):
    assert install(owner, cli, "notes", "file://" + folder(tmp_path)).status == 202
    stranger = Browser(stack.public)
    index = stranger.request("GET", APP_HOST + "/?x=1")
    assert index.status == 302
    location = urlsplit(index.header("location"))
    assert location.path == "/auth/login" and location.netloc == DOMAIN
    assert parse_qs(location.query)["redirect"] == [APP_HOST + "/?x=1"]
    assert stranger.request("GET", APP_HOST + "/style.css").status == 401
    public = stranger.request("GET", APP_HOST + "/public")
    assert public.status == 200
    assert public.text == "<p>public notes </p>"  # no session: no token
    assert stranger.request("GET", f"{BASE}/apps/notes/icon").status == 401


def test_an_index_value_cannot_break_out_of_its_place(stack, owner, cli, tmp_path):
    hostile = '"><script>alert(1)</script>'
    source = folder(tmp_path, name=hostile, editor="</script><b>")
    assert install(owner, cli, "notes", "file://" + source).status == 202
    page = owner.request("GET", APP_HOST + "/").text
    assert "<script>alert(1)" not in page
    assert "&lt;/script&gt;&lt;b&gt;" in page or "\\u003c/script" in page


def test_permissions_and_oauth_tokens(stack, owner, cli, admin, tmp_path):
    source = "file://" + folder(tmp_path)
    oauth = {"Authorization": "Bearer " + app_token(stack, "other")}
    assert install(owner, oauth, "notes", source).status in (400, 403)
    assert install(owner, cli, "notes", source).status == 202
    permissions = owner.request(
        "GET", f"{BASE}/permissions/self", headers=bearer(app_token(stack, "notes"))
    ).json()["data"]["attributes"]
    assert permissions["type"] == "app"
    assert permissions["source_id"] == "io.cozy.apps/notes"
    assert list(permissions["permissions"]) == ["notes"]
    assert permissions["permissions"]["notes"]["type"] == "io.cozy.notes"
    # An app may not install others.
    app = bearer(app_token(stack, "notes"))
    assert install(owner, app, "other", source).status == 403


def test_bad_input_gets_clear_errors_and_writes_nothing(stack, owner, cli, tmp_path):
    source = "file://" + folder(tmp_path)
    assert install(owner, cli, "Not_A_Slug", source).status == 422
    assert install(owner, cli, "notes", "ftp://example.com/x").status == 422
    assert install(owner, cli, "notes", "file:///nowhere/at/all").status == 404
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.webapp").write_text("{not json")
    reply = install(owner, cli, "notes", f"file://{bad}")
    assert reply.status == 400 and "not valid JSON" in reply.text
    bad_perms = folder(tmp_path, name="perms", permissions={"x": {"type": "io.cozy.*"}})
    assert install(owner, cli, "notes", "file://" + bad_perms).status == 400
    wrong_type = folder(tmp_path, name="k", type="konnector")
    reply = install(owner, cli, "notes", "file://" + wrong_type)
    assert reply.status == 400 and "konnector" in reply.text

    def climbing(tar):
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, BytesIO(b"bad"))

    archive = tmp_path / "climb.tar.gz"
    archive.write_bytes(tarball(app_files(manifest()), extra=climbing))
    reply = install(owner, cli, "notes", f"file://{archive}")
    assert reply.status == 400 and "climbs out" in reply.text
    assert not list(tmp_path.rglob("escaped.txt"))
    # Nothing was left behind by the refusals.
    assert owner.request("GET", f"{BASE}/apps/", headers=cli).json()["data"] == []
    apps_dir = os.path.join(stack.config.data_dir, "apps", DOMAIN, "webapp")
    assert not os.path.exists(apps_dir) or os.listdir(apps_dir) == []
    # Twice: 409.
    assert install(owner, cli, "notes", source).status == 202
    assert install(owner, cli, "notes", source).status == 409
    assert owner.request("GET", f"{BASE}/apps/nope", headers=cli).status == 404


def test_an_update_that_adds_permissions_waits_for_the_owner(stack, owner, cli, tmp_path):
    assert install(owner, cli, "notes", "file://" + folder(tmp_path)).status == 202
    more = {
        "notes": {"type": "io.cozy.notes", "verbs": ["ALL"]},
        "contacts": {"type": "io.cozy.contacts", "verbs": ["GET"]},
    }
    v2 = "file://" + folder(tmp_path, name="v2", version="2.0.0", permissions=more)
    query = urlencode({"Source": v2})
    waiting = owner.request("PUT", f"{BASE}/apps/notes?{query}", headers=cli)
    assert waiting.status == 202
    doc = owner.request("GET", f"{BASE}/apps/notes", headers=cli).json()["data"][
        "attributes"
    ]
    assert doc["version"] == "1.0.0" and doc["available_version"] == "2.0.0"
    assert "contacts" not in doc["permissions"]
    query = urlencode({"Source": v2, "PermissionsAcked": "true"})
    assert owner.request("PUT", f"{BASE}/apps/notes?{query}", headers=cli).status == 202
    doc = owner.request("GET", f"{BASE}/apps/notes", headers=cli).json()["data"][
        "attributes"
    ]
    assert doc["version"] == "2.0.0" and "available_version" not in doc
    token = bearer(app_token(stack, "notes"))
    rules = owner.request("GET", f"{BASE}/permissions/self", headers=token).json()
    assert set(rules["data"]["attributes"]["permissions"]) == {"notes", "contacts"}
    old = os.path.join(stack.config.data_dir, "apps", DOMAIN, "webapp", "notes", "1.0.0")
    assert not os.path.exists(old)


def test_a_failed_update_keeps_the_previous_version(stack, owner, cli, tmp_path):
    assert install(owner, cli, "notes", "file://" + folder(tmp_path)).status == 202
    broken = tmp_path / "broken"
    write_folder(str(broken), {"manifest.webapp": b'{"version": "3.0.0", "routes": 7}'})
    query = urlencode({"Source": f"file://{broken}", "PermissionsAcked": "true"})
    reply = owner.request("PUT", f"{BASE}/apps/notes?{query}", headers=cli)
    assert reply.status == 400
    doc = owner.request("GET", f"{BASE}/apps/notes", headers=cli).json()["data"][
        "attributes"
    ]
    assert doc["version"] == "1.0.0" and doc["state"] == "ready"
    assert owner.request("GET", APP_HOST + "/").status == 200


def test_event_stream_and_uninstall(stack, owner, cli, tmp_path):
    query = urlencode({"Source": "file://" + folder(tmp_path)})
    headers = {**cli, "Accept": "text/event-stream"}
    reply = owner.request("POST", f"{BASE}/apps/notes?{query}", headers=headers)
    assert reply.status == 200 and reply.header("content-type") == "text/event-stream"
    events = [e for e in reply.text.split("\r\n\r\n") if e]
    states = [
        json.loads(e.split("data: ", 1)[1])["data"]["attributes"]["state"] for e in events
    ]
    assert states == ["installing", "ready"]
    failed = owner.request(
        "POST", f"{BASE}/apps/other?Source=file:///none", headers=headers
    )
    assert failed.text.startswith("event: error\r\ndata: ")
    token = bearer(app_token(stack, "notes"))
    gone = owner.request("DELETE", f"{BASE}/apps/notes", headers=cli)
    assert gone.status == 200 and gone.json()["data"]["attributes"]["slug"] == "notes"
    assert owner.request("GET", f"{BASE}/apps/notes", headers=cli).status == 404
    assert owner.request("GET", f"{BASE}/permissions/self", headers=token).status == 400
    assert owner.request("GET", APP_HOST + "/").status == 404
    assert not os.path.exists(
        os.path.join(stack.config.data_dir, "apps", DOMAIN, "webapp", "notes")
    )


def test_konnectors_share_the_installer(stack, owner, cli, tmp_path):
    files = app_files(manifest("trainline", type="konnector", routes=None), "konnector")
    archive = tmp_path / "k.tar.gz"
    archive.write_bytes(tarball(files, prefix="build/"))
    query = {"Parameters": json.dumps({"region": "fr"})}
    reply = install(
        owner, cli, "trainline", f"file://{archive}", kind="konnectors", **query
    )
    assert reply.status == 202, reply.body
    shown = owner.request("GET", f"{BASE}/konnectors/trainline", headers=cli).json()["data"]
    assert shown["type"] == "io.cozy.konnectors"
    assert shown["attributes"]["state"] == "ready"
    assert shown["attributes"]["parameters"] == {"region": "fr"}
    assert shown["links"]["permissions"] == "/permissions/konnectors/trainline"
    code = os.path.join(
        stack.config.data_dir, "apps", DOMAIN, "konnector", "trainline", "1.0.0", "index.js"
    )
    assert os.path.isfile(code)
    konn = tokens.issue(
        stack_instance(stack), tokens.KONNECTOR, "trainline", issued_at=stack_now(stack)
    )
    rules = owner.request("GET", f"{BASE}/permissions/self", headers=bearer(konn)).json()
    assert rules["data"]["attributes"]["type"] == "konnector"
    webapp = install(owner, cli, "other", f"file://{archive}")
    assert webapp.status == 404 and "manifest.webapp" in webapp.text
    assert (
        owner.request("DELETE", f"{BASE}/konnectors/trainline", headers=cli).status == 200
    )


def test_the_installed_home_replaces_the_built_in_page(stack, owner, cli, tmp_path):
    built_in = owner.request("GET", f"http://home.{DOMAIN}/")
    assert built_in.status == 200 and "data-cozy" not in built_in.text
    source = "file://" + folder(tmp_path, slug="home")
    assert install(owner, cli, "home", source).status == 202
    page = owner.request("GET", f"http://home.{DOMAIN}/")
    assert page.status == 200 and "data-cozy-token" in page.text


# -- helpers -------------------------------------------------------------------
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stack_now(stack) -> float:
    from cozyd.testing import sync

    return sync(_now(stack))


async def _now(stack):
    return stack.registry._seconds()


def stack_instance(stack):
    from cozyd.testing import sync

    return sync(stack.instances.get(DOMAIN))


def app_token(stack, slug: str) -> str:
    return tokens.issue(stack_instance(stack), tokens.APP, slug, issued_at=stack_now(stack))


def test_an_oauth_client_linked_to_an_app_gets_its_permissions(stack, owner, cli, tmp_path):
    assert install(owner, cli, "notes", "file://" + folder(tmp_path)).status == 202
    redirect = "https://mobile.example.org/callback"
    client = owner.request(
        "POST",
        BASE + "/auth/register",
        body={
            "redirect_uris": [redirect],
            "client_name": "Notes mobile",
            "software_id": "registry://notes",
        },
        headers={"Accept": "application/json"},
        cookies=False,
    ).json()
    query = {
        "client_id": client["client_id"],
        "redirect_uri": redirect,
        "state": "some-state",
        "response_type": "code",
        "scope": "io.cozy.contacts",
    }
    page = owner.request("GET", BASE + "/auth/authorize?" + urlencode(query))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    reply = owner.request(
        "POST", BASE + "/auth/authorize", form={**query, "csrf_token": csrf}
    )
    assert reply.status == 302, reply.body
    code = parse_qs(urlsplit(reply.header("location")).query)["code"][0]
    answer = owner.request(
        "POST",
        BASE + "/auth/access_token",
        form={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
        headers={"Accept": "application/json"},
        cookies=False,
    ).json()
    assert answer["scope"] == "@io.cozy.apps/notes"
    token = bearer(answer["access_token"])
    rules = owner.request("GET", f"{BASE}/permissions/self", headers=token).json()
    assert list(rules["data"]["attributes"]["permissions"]) == ["notes"]
    assert (
        owner.request(
            "GET", f"{BASE}/data/io.cozy.contacts/_all_docs", headers=token
        ).status
        == 403
    )
    # The webapp cannot go while its linked client exists.
    refused = owner.request("DELETE", f"{BASE}/apps/notes", headers=cli)
    assert refused.status == 400 and "linked OAuth client" in refused.text


def test_cors_is_for_the_instance_own_apps(stack, owner):
    preflight = owner.request(
        "OPTIONS",
        f"{BASE}/data/io.cozy.notes/",
        headers={
            "Origin": f"http://notes.{DOMAIN}",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == f"http://notes.{DOMAIN}"
    assert preflight.header("access-control-allow-credentials") == "true"
    other = owner.request(
        "OPTIONS",
        f"{BASE}/data/io.cozy.notes/",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.header("access-control-allow-origin") is None


def test_flat_subdomains(tmp_path, clock):
    from cozyd.testing import memory_stack, sync

    stack = memory_stack(str(tmp_path / "flat"), clock=clock, apps={"subdomains": "flat"})
    try:
        admin = Browser(stack.admin)
        owner = Browser(stack.public)
        assert onboard(owner, create_instance(admin)).status == 200
        token = admin_token(admin, Audience="cli", Scope="io.cozy.apps")
        headers = {"Authorization": f"Bearer {token}"}
        reply = install(owner, headers, "notes", "file://" + folder(tmp_path))
        assert reply.status == 202
        shown = owner.request("GET", f"{BASE}/apps/notes", headers=headers).json()
        assert shown["data"]["links"]["related"] == "http://alice-notes.cozy.test/"
        public = owner.request("GET", "http://alice-notes.cozy.test/public")
        assert public.status == 200 and public.text.startswith("<p>public notes ")
        assert "http://*.cozy.test" in public.header("content-security-policy")
        # In flat mode, the nested host is not an app's.
        assert owner.request("GET", APP_HOST + "/public").status == 404
    finally:
        sync(stack.store.close())
