"""Share by link through HTTP on the in-memory stack: ``/permissions``
(create, read, change, revoke, list), share codes and shortcodes as
tokens on ``/data``, expiry, passwords, other instances, bad input."""

from __future__ import annotations

import re

import jwt
import pytest

from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.testing import MemoryClient, sync
from tests.support.data import app_token, cli_token, new_instance, token
from tests.support.shares import BASE, Client, rule, share_body

EVENTS = "io.cozy.events"
FILES = "io.cozy.files"
APP_RULES = {
    "events": {"type": EVENTS},
    "files": {"type": FILES},
    "notes": {"type": "io.cozy.notes", "verbs": ["GET"]},
}


@pytest.fixture
def admin(stack):
    return MemoryClient(stack.admin)


@pytest.fixture
def public(stack):
    return MemoryClient(stack.public)


@pytest.fixture
def world(stack, admin, public):
    """alice, the drive app's token, a CLI token, and two events."""
    new_instance(admin)
    app = Client(public, app_token(stack, admin, "drive", APP_RULES))
    cli = Client(public, cli_token(admin))
    ids = []
    for n, calendar in ((1, "c1"), (2, "c2")):
        created = cli.data("POST", f"/{EVENTS}/", {"n": n, "calendar-id": calendar})
        assert created.status == 201, created.body
        ids.append(created.json()["id"])
    return app, cli, ids


def attributes_of(response):
    assert response.status == 200, (response.status, response.body)
    assert response.headers["content-type"] == "application/vnd.api+json"
    return response.json()["data"]["attributes"]


def share_of(app, permissions, codes="bob", **kw):
    """(permission id, {name: code}, {name: shortcode})."""
    response = app.create(permissions, codes, **kw)
    data = response.json()["data"]
    attributes = attributes_of(response)
    return data["id"], attributes.get("codes", {}), attributes.get("shortcodes", {})


# -- creating ---------------------------------------------------------------------------
def test_create_returns_codes_and_shortcodes(world, clock):
    app, _, ids = world
    response = app.create(
        {"one": rule(EVENTS, values=[ids[0]])},
        "bob,jane",
        password="HelloWorld!",
        params={"ttl": "1D"},
    )
    data = response.json()["data"]
    attributes = attributes_of(response)
    assert data["type"] == "io.cozy.permissions" and len(data["id"]) == 32
    assert data["links"] == {"self": f"/permissions/{data['id']}"}
    assert data["meta"]["rev"].startswith("1-")
    assert attributes["type"] == "share"
    assert attributes["source_id"] == "io.cozy.apps/drive"
    assert attributes["password"] is True
    assert attributes["permissions"] == {
        "one": {"type": EVENTS, "verbs": ["GET"], "values": [ids[0]]}
    }
    assert attributes["expires_at"] == "2027-01-16T08:00:00Z"  # the clock + 1 day
    assert attributes["cozyMetadata"]["createdByApp"] == "drive"
    assert set(attributes["codes"]) == set(attributes["shortcodes"]) == {"bob", "jane"}
    for name, code in attributes["codes"].items():
        claims = jwt.decode(code, options={"verify_signature": False})
        assert claims["aud"] == ["share"] and claims["sub"] == name
        assert claims["iss"] == "alice.cozy.test"
        assert jwt.get_unverified_header(code)["alg"] == "HS512"
    for short in attributes["shortcodes"].values():
        assert re.fullmatch(r"[A-Za-z0-9]{12}", short)
    assert attributes["codes"]["bob"] != attributes["codes"]["jane"]


def test_the_same_name_twice_in_one_second_gives_two_codes(world):
    app, _, ids = world
    _, first, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    _, second, _ = share_of(app, {"r": rule(EVENTS, values=[ids[1]])})
    assert first["bob"] != second["bob"]
    # each code still reads its own document only
    assert app.with_token(first["bob"]).data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    assert app.with_token(first["bob"]).data("GET", f"/{EVENTS}/{ids[1]}").status == 403
    assert app.with_token(second["bob"]).data("GET", f"/{EVENTS}/{ids[1]}").status == 200


def test_tiny_shortcodes_only_for_an_hour_at_most(world):
    app, _, ids = world
    values = {"r": rule(EVENTS, values=[ids[0]])}
    _, _, tiny = share_of(app, values, params={"ttl": "1h", "tiny": "true"})
    assert re.fullmatch(r"[0-9]{6}", tiny["bob"])
    _, _, long = share_of(app, values, params={"ttl": "2h", "tiny": "true"})
    assert re.fullmatch(r"[A-Za-z0-9]{12}", long["bob"])
    _, _, untimed = share_of(app, values, params={"tiny": "true"})
    assert len(untimed["bob"]) == 12
    # a tiny shortcode is a token too
    client = app.with_token(tiny["bob"])
    assert client.data("GET", f"/{EVENTS}/{ids[0]}").status == 200


# -- what a share token reads -------------------------------------------------------------
def test_a_share_token_reads_exactly_what_it_was_given(world):
    app, cli, ids = world
    _, codes, shorts = share_of(app, {"one": rule(EVENTS, values=[ids[0]])})
    for bearer in (codes["bob"], shorts["bob"], shorts["bob"] + "."):
        share = app.with_token(bearer)
        read = share.data("GET", f"/{EVENTS}/{ids[0]}")
        assert read.status == 200, read.body
        assert read.json()["n"] == 1
        assert share.data("GET", f"/{EVENTS}/{ids[1]}").status == 403
        rev = read.json()["_rev"]
        put = share.data("PUT", f"/{EVENTS}/{ids[0]}", {"_id": ids[0], "_rev": rev, "n": 9})
        assert put.status == 403  # GET only
        assert (
            share.data("DELETE", f"/{EVENTS}/{ids[0]}", params={"rev": rev}).status == 403
        )
        assert share.data("POST", f"/{EVENTS}/", {"n": 3}).status == 403
        assert share.data("GET", f"/{EVENTS}/_all_docs").status == 403
        assert share.data("POST", f"/{EVENTS}/_find", {"selector": {}}).status == 403
        assert share.data("GET", "/io.cozy.notes/_all_docs").status == 403
    assert cli.data("GET", f"/{EVENTS}/{ids[0]}").json()["n"] == 1  # nothing written


def test_a_share_with_write_verbs_writes_its_document_only(world):
    app, cli, ids = world
    _, codes, _ = share_of(app, {"rw": rule(EVENTS, ["GET", "PUT"], [ids[0]])})
    share = app.with_token(codes["bob"])
    rev = share.data("GET", f"/{EVENTS}/{ids[0]}").json()["_rev"]
    put = share.data("PUT", f"/{EVENTS}/{ids[0]}", {"_id": ids[0], "_rev": rev, "n": 10})
    assert put.status == 200, put.body
    other = cli.data("GET", f"/{EVENTS}/{ids[1]}").json()
    assert share.data("PUT", f"/{EVENTS}/{ids[1]}", {**other, "n": 11}).status == 403
    assert share.data("DELETE", f"/{EVENTS}/{ids[0]}", params={"rev": rev}).status == 403
    assert cli.data("GET", f"/{EVENTS}/{ids[1]}").json()["n"] == 2


def test_a_selector_share_reads_the_documents_whose_field_matches(world):
    app, _, ids = world
    _, codes, _ = share_of(
        app, {"cal": rule(EVENTS, values=["c1"], selector="calendar-id")}
    )
    share = app.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    assert share.data("GET", f"/{EVENTS}/{ids[1]}").status == 403


def test_a_whole_doctype_share_lists_it(world):
    app, _, ids = world
    _, codes, _ = share_of(app, {"all": rule(EVENTS)})
    share = app.with_token(codes["bob"])
    listed = share.data("GET", f"/{EVENTS}/_all_docs", params={"include_docs": "true"})
    assert listed.status == 200
    assert {row["id"] for row in listed.json()["rows"]} >= set(ids)
    assert share.data("GET", "/io.cozy.notes/_all_docs").status == 403
    assert share.data("POST", f"/{EVENTS}/", {"n": 3}).status == 403


def test_permissions_self_with_a_share_token_hides_the_codes(world):
    app, _, ids = world
    perm_id, codes, shorts = share_of(
        app, {"one": rule(EVENTS, values=[ids[0]])}, password="secret"
    )
    for bearer in (codes["bob"], shorts["bob"]):
        response = app.with_token(bearer).request(
            "GET", "/permissions/self", headers={"Cookie": "x=y"}
        )
        assert response.status == 400  # password-protected: the cookie is missing
    perm_id, codes, shorts = share_of(app, {"one": rule(EVENTS, values=[ids[0]])})
    response = app.with_token(codes["bob"]).request("GET", "/permissions/self")
    data = response.json()["data"]
    assert data["id"] == perm_id
    attributes = attributes_of(response)
    assert attributes["type"] == "share" and "codes" not in attributes
    assert "shortcodes" not in attributes
    assert attributes["permissions"]["one"]["values"] == [ids[0]]


def test_unknown_shortcodes_and_forged_codes_are_refused(world, stack):
    app, _, ids = world
    _, codes, _ = share_of(app, {"one": rule(EVENTS, values=[ids[0]])})
    unknown = app.with_token("ABCDEFGHIJKL").data("GET", f"/{EVENTS}/{ids[0]}")
    assert unknown.status == 403
    assert app.with_token("123456").data("GET", f"/{EVENTS}/{ids[0]}").status == 403
    claims = jwt.decode(codes["bob"], options={"verify_signature": False})
    forged = jwt.encode(claims, b"k" * 64, algorithm="HS512")
    assert app.with_token(forged).data("GET", f"/{EVENTS}/{ids[0]}").status == 400
    # a well-signed share code that no share lists
    from cozyd.auth import tokens

    instance = Instance.from_doc(
        sync(stack.store.get_doc("global/instances", Instance.new("alice.cozy.test").id))
    )
    stray = tokens.issue(instance, tokens.SHARE, "bob", issued_at=1_800_000_000)
    assert app.with_token(stray).data("GET", f"/{EVENTS}/{ids[0]}").status == 403


def test_a_share_document_without_its_hints_is_still_found(world, stack):
    """A share written by someone else (imported, replicated): its code is
    looked for among the shares once."""
    app, _, ids = world
    perm_id, codes, _ = share_of(app, {"one": rule(EVENTS, values=[ids[0]])})
    db = db_name(Instance.new("alice.cozy.test").prefix, "io.cozy.permissions")
    doc = sync(stack.store.get_doc(db, perm_id))
    copy = {k: v for k, v in doc.items() if k not in ("_id", "_rev")}
    copy["shortcodes"] = {}
    sync(stack.store.put_doc(db, {**copy, "_id": "imported"}))
    sync(stack.store.delete_doc(db, perm_id, doc["_rev"]))
    share = app.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    assert share.request("GET", "/permissions/self").json()["data"]["id"] == "imported"


def test_tokens_of_one_instance_do_nothing_on_another(world, admin, public):
    app, _, ids = world
    new_instance(admin, "bob.cozy.test")
    _, codes, shorts = share_of(app, {"one": rule(EVENTS, values=[ids[0]])})
    at_bob = Client(public, codes["bob"], "http://bob.cozy.test")
    response = at_bob.data("GET", f"/{EVENTS}/{ids[0]}")
    assert (response.status, response.json()) == (400, {"error": "Invalid JWT token"})
    assert at_bob.with_token(shorts["bob"]).data("GET", f"/{EVENTS}/{ids[0]}").status == 403
    assert at_bob.request("GET", "/permissions/self").status == 400


# -- subsets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "permissions",
    [
        {"r": rule("io.cozy.notes", ["GET", "PUT"])},  # verbs the app lacks
        {"r": rule("io.cozy.contacts")},  # a doctype the app lacks
        {"r": {"type": "*"}},  # the maximal set
        {"r": rule(EVENTS), "s": rule("io.cozy.bills")},  # one rule too many
    ],
)
def test_a_share_larger_than_its_creator_is_403(world, permissions):
    app, _, _ = world
    response = app.create(permissions)
    assert response.status == 403
    assert response.json() == {"error": "Attempt to create a larger permission set"}


def test_a_creator_with_values_shares_only_those_values(world, stack, admin, public):
    _, _, ids = world
    narrow = Client(
        public,
        app_token(stack, admin, "narrow", {"one": rule(EVENTS, ["GET"], [ids[0]])}),
    )
    assert narrow.create({"r": rule(EVENTS, values=[ids[0]])}).status == 200
    for larger in (rule(EVENTS), rule(EVENTS, values=[ids[0], ids[1]])):
        assert narrow.create({"r": larger}).status == 403
    selector = rule(EVENTS, values=[ids[0]], selector="calendar-id")
    assert narrow.create({"r": selector}).status == 403


def test_reserved_doctypes_cannot_be_shared(world, admin, public):
    _, _, _ = world
    cli = Client(public, cli_token(admin, "io.cozy.jobs io.cozy.files io.cozy.apps"))
    for doctype in ("io.cozy.jobs", "io.cozy.apps"):
        response = cli.create({"r": rule(doctype)})
        assert response.status == 403
        assert response.json()["errors"][0]["detail"] == (
            f"reserved doctype {doctype} unwritable"
        )
    assert cli.create({"r": rule(FILES)}).status == 200  # files: yes


def test_only_apps_create_shares(world):
    app, _, ids = world
    _, codes, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    response = app.with_token(codes["bob"]).create({"r": rule(EVENTS, values=[ids[0]])})
    assert response.status == 403
    assert response.json() == {"error": "Only apps can create sharing permissions"}
    assert app.with_token(None).create({"r": rule(EVENTS)}).status == 401


def test_a_cli_token_creates_shares(world):
    _, cli, ids = world
    perm_id, codes, _ = share_of(cli, {"r": rule(EVENTS, values=[ids[1]])})
    share = cli.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[1]}").status == 200
    assert cli.request("GET", f"/permissions/{perm_id}").status == 200


# -- expiry -------------------------------------------------------------------------------
def test_an_expired_share_is_refused(world, clock, admin):
    app, _, ids = world
    perm_id, codes, shorts = share_of(
        app, {"r": rule(EVENTS, values=[ids[0]])}, params={"ttl": "1h"}
    )
    share = app.with_token(codes["bob"])
    clock.advance(3599)
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    clock.advance(2)
    for bearer in (codes["bob"], shorts["bob"]):
        response = app.with_token(bearer).data("GET", f"/{EVENTS}/{ids[0]}")
        assert (response.status, response.json()) == (400, {"error": "Expired token"})
    app = app.with_token(token(admin, Audience="app", Subject="drive"))  # a fresh one
    assert app.request("GET", f"/permissions/{perm_id}").status == 400
    # its parent can still push the date back, or revoke it
    patched = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"expires_at": "2099-01-01T00:00:00Z"}}},
    )
    assert attributes_of(patched)["expires_at"] == "2099-01-01T00:00:00Z"
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    cleared = app.request(
        "PATCH", f"/permissions/{perm_id}", {"data": {"attributes": {"expires_at": ""}}}
    )
    assert "expires_at" not in attributes_of(cleared)


def test_expires_at_in_the_body(world, clock):
    app, _, ids = world
    _, codes, _ = share_of(
        app,
        {"r": rule(EVENTS, values=[ids[0]])},
        expires_at="2027-01-15T09:00:00+01:00",  # the clock's own time
    )
    share = app.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    clock.advance(1)
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 400


# -- revocation ---------------------------------------------------------------------------
def test_revoked_tokens_stop_at_once(world):
    app, _, ids = world
    perm_id, codes, shorts = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    share = app.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    assert app.with_token(shorts["bob"]).data("GET", f"/{EVENTS}/{ids[0]}").status == 200
    assert share.request("DELETE", f"/permissions/{perm_id}").status == 403  # not itself
    response = app.request("DELETE", f"/permissions/{perm_id}")
    assert (response.status, response.body) == (204, b"")
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 403  # no clock advance
    assert app.with_token(shorts["bob"]).data("GET", f"/{EVENTS}/{ids[0]}").status == 403
    assert app.request("DELETE", f"/permissions/{perm_id}").status == 404
    assert app.request("GET", f"/permissions/{perm_id}").status == 404


def test_only_the_parent_revokes(world, stack, admin, public):
    app, _, ids = world
    perm_id, _, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    other = Client(public, app_token(stack, admin, "other", {"n": rule("io.cozy.notes")}))
    response = other.request("DELETE", f"/permissions/{perm_id}")
    assert (response.status, response.json()) == (
        403,
        {"error": "Permissions can be updated only by its parent"},
    )
    assert other.request("GET", f"/permissions/{perm_id}").status == 403
    # an app whose rights cover the share may revoke it too (cozy-stack)
    wide = Client(public, app_token(stack, admin, "wide", {"e": rule(EVENTS, ["ALL"])}))
    assert wide.request("DELETE", f"/permissions/{perm_id}").status == 204
    # app documents are not shares
    assert app.request("DELETE", "/permissions/perm-drive").status == 403


# -- reading and changing -------------------------------------------------------------------
def test_get_a_share_hides_codes_and_password(world):
    app, _, ids = world
    perm_id, _, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])}, password="pw")
    attributes = attributes_of(app.request("GET", f"/permissions/{perm_id}"))
    assert "codes" not in attributes and "shortcodes" not in attributes
    assert attributes["password"] is True
    unknown = app.request("GET", "/permissions/nope")
    assert unknown.status == 404
    assert unknown.json()["errors"][0]["status"] == "404"
    assert app.request("GET", "/permissions/_design%2Fby-source-and-type").status == 404


def test_patch_codes_removes_and_adds(world):
    app, _, ids = world
    perm_id, codes, shorts = share_of(app, {"r": rule(EVENTS, values=[ids[0]])}, "bob,jane")
    patched = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"codes": {"jane": codes["jane"], "eve": ""}}}},
    )
    attributes = attributes_of(patched)
    assert set(attributes["codes"]) == {"jane", "eve"}
    assert attributes["codes"]["jane"] == codes["jane"]
    assert attributes["shortcodes"]["jane"] == shorts["jane"]
    assert set(attributes["shortcodes"]) == {"jane", "eve"}
    path = f"/{EVENTS}/{ids[0]}"
    assert app.with_token(codes["bob"]).data("GET", path).status == 403
    assert app.with_token(shorts["bob"]).data("GET", path).status == 403
    assert app.with_token(codes["jane"]).data("GET", path).status == 200
    assert app.with_token(attributes["codes"]["eve"]).data("GET", path).status == 200
    assert app.with_token(attributes["shortcodes"]["eve"]).data("GET", path).status == 200
    # a client cannot plant a code of its choosing under a known name
    planted = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"codes": {"jane": "eyJforged"}}}},
    )
    assert planted.status == 422


def test_patch_rules_within_the_callers_rights(world):
    app, _, ids = world
    perm_id, codes, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    share = app.with_token(codes["bob"])
    assert share.data("GET", f"/{EVENTS}/{ids[1]}").status == 403
    added = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"permissions": {"more": rule(EVENTS, values=[ids[1]])}}}},
    )
    assert set(attributes_of(added)["permissions"]) == {"r", "more"}
    assert share.data("GET", f"/{EVENTS}/{ids[1]}").status == 200  # at once
    larger = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"permissions": {"x": rule("io.cozy.contacts")}}}},
    )
    assert larger.status == 403
    removed = app.request(
        "PATCH",
        f"/permissions/{perm_id}",
        {"data": {"attributes": {"permissions": {"r": {}}}}},
    )
    assert set(attributes_of(removed)["permissions"]) == {"more"}
    assert share.data("GET", f"/{EVENTS}/{ids[0]}").status == 403
    assert (
        share.request(
            "PATCH",
            f"/permissions/{perm_id}",
            {"data": {"attributes": {"permissions": {"more": {}}}}},
        ).status
        == 403
    )


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {"codes": {"bob": "x"}, "permissions": {"r": rule(EVENTS)}},
        {"cozyMetadata": {"updatedAt": "now"}},
    ],
)
def test_patch_needs_codes_or_rules_or_password_or_expiry(world, attributes):
    app, _, ids = world
    perm_id, _, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])})
    response = app.request(
        "PATCH", f"/permissions/{perm_id}", {"data": {"attributes": attributes}}
    )
    assert response.status == 400
    assert "'codes' or 'permissions'" in response.json()["error"]


# -- passwords ------------------------------------------------------------------------------
def test_a_password_protected_share_needs_the_cookie(world, public):
    app, _, ids = world
    perm_id, codes, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])}, password="pw!")
    path = f"/{EVENTS}/{ids[0]}"
    share = app.with_token(codes["bob"])
    refused = share.data("GET", path)
    assert (refused.status, refused.json()) == (400, {"error": "Invalid JWT token"})

    def check(password, perm=perm_id):
        return public.request(
            "POST",
            BASE + "/auth/share-by-link/password",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "https://drive.alice.cozy.test",
            },
            data=f"password={password}&perm_id={perm}".encode(),
        )

    wrong = check("nope")
    assert (wrong.status, wrong.json()) == (403, {"error": "Invalid password"})
    assert "set-cookie" not in wrong.headers
    assert check("pw!", "unknown").status == 404
    good = check("pw%21")
    assert (good.status, good.json()) == (200, {"password": "ok"})
    assert good.headers["access-control-allow-origin"] == "https://drive.alice.cozy.test"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(f"pass{perm_id}=") and "HttpOnly" in cookie
    value = cookie.split(";", 1)[0]
    allowed = share.data("GET", path, headers={"Cookie": value})
    assert allowed.status == 200, allowed.body
    # a cookie for another share, or a forged one, does not open this one
    forged = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
    assert share.data("GET", path, headers={"Cookie": forged}).status == 400
    # the password removed: the code works without the cookie
    app.request(
        "PATCH", f"/permissions/{perm_id}", {"data": {"attributes": {"password": ""}}}
    )
    assert share.data("GET", path).status == 200
    assert check("anything").json() == {"password": "none"}


def test_too_many_wrong_passwords_are_429(world, public):
    app, _, ids = world
    perm_id, _, _ = share_of(app, {"r": rule(EVENTS, values=[ids[0]])}, password="pw")
    statuses = set()
    for _ in range(52):
        statuses.add(
            public.request(
                "POST",
                BASE + "/auth/share-by-link/password",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                data=f"password=no&perm_id={perm_id}".encode(),
            ).status
        )
    assert statuses == {403, 429}


# -- listing --------------------------------------------------------------------------------
def test_shared_by_link_is_paginated(world, public):
    _, cli, ids = world
    made = {share_of(cli, {"r": rule(EVENTS, values=[ids[0]])})[0] for _ in range(5)}
    share_of(cli, {"f": rule(FILES, values=["somedir"])})  # another doctype
    seen: list[str] = []
    path = f"/permissions/doctype/{EVENTS}/shared-by-link"
    response = cli.request("GET", path, params={"page[limit]": "2"})
    while True:
        assert response.status == 200, response.body
        body = response.json()
        assert len(body["data"]) <= 2
        for item in body["data"]:
            assert item["attributes"]["codes"]["bob"]  # the list shows codes
            seen.append(item["id"])
        next_link = body.get("links", {}).get("next")
        if not next_link:
            break
        response = public.request(
            "GET", BASE + next_link, headers={"Authorization": f"Bearer {cli.bearer}"}
        )
    assert sorted(seen) == sorted(made)
    legacy = cli.request("GET", f"/permissions/doctype/{EVENTS}/sharedByLink")
    assert {item["id"] for item in legacy.json()["data"]} == made
    skipped = cli.request("GET", path, params={"page[skip]": "4"})
    assert len(skipped.json()["data"]) == 1


def test_shared_by_link_needs_get_on_the_whole_doctype(world, stack, admin, public):
    _, _, ids = world
    narrow = Client(
        public,
        app_token(stack, admin, "narrow", {"one": rule(EVENTS, ["GET"], [ids[0]])}),
    )
    response = narrow.request("GET", f"/permissions/doctype/{EVENTS}/shared-by-link")
    assert response.status == 403
    for bad in ({"page[limit]": "x"}, {"page[cursor]": "[1"}, {"page[skip]": "no"}):
        assert narrow.request(
            "GET", f"/permissions/doctype/{EVENTS}/shared-by-link", params=bad
        ).status in (400, 403)
    bad_doctype = narrow.request("GET", "/permissions/doctype/NOT..ok/shared-by-link")
    assert bad_doctype.status == 403


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, status",
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"data": null}', 400),
        (b'{"data": {"attributes": []}}', 400),
        (b'{"data": {"attributes": {}}}', 422),
        (b'{"data": {"attributes": {"permissions": []}}}', 422),
        (b'{"data": {"attributes": {"permissions": {"r": "io.cozy.events"}}}}', 400),
        (b'{"data": {"attributes": {"permissions": {"r": {"verbs": ["GET"]}}}}}', 400),
        (
            b'{"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.events",'
            b' "verbs": ["STEAL"]}}}}}',
            400,
        ),
        (
            b'{"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.events"}},'
            b' "expires_at": "tomorrow"}}}',
            422,
        ),
        (
            b'{"data": {"attributes": {"permissions": {"r": {"type": "io.cozy.events"}},'
            b' "password": 12}}}',
            422,
        ),
    ],
)
def test_malformed_bodies_are_clear_4xx(world, raw, status):
    app, cli, _ = world
    response = app.request("POST", "/permissions", raw=raw, params={"codes": "bob"})
    assert response.status == status, response.body
    body = response.json()
    assert body["errors"][0]["status"] == str(status)
    listed = cli.request("GET", f"/permissions/doctype/{EVENTS}/shared-by-link")
    assert listed.json()["data"] == []  # nothing written


def test_bad_parameters_and_sizes(world):
    app, _, ids = world
    one = {"r": rule(EVENTS, values=[ids[0]])}
    assert app.create(one, params={"ttl": "soon"}).status == 400
    assert app.create(one, ",".join(f"n{i}" for i in range(101))).status == 400
    assert app.create(one, "x" * 300).status == 400
    assert app.create(one, "ok", params={"tiny": "maybe"}).status == 400
    many = {f"r{i}": rule(EVENTS, values=[ids[0]]) for i in range(101)}
    assert app.create(many).status == 400
    huge = {"r": rule(EVENTS, values=["v" * 1000] * 300)}
    assert app.create(huge).status == 413
    assert app.create(one, ",".join(f"n{i}" for i in range(100))).status == 200


# -- files ----------------------------------------------------------------------------------
def test_file_and_directory_shares_carry_their_rules(world, stack):
    """What a share of a file or a directory holds; ``/files`` applies a
    directory's rule to its subtree."""
    app, _, _ = world
    perm_id, codes, shorts = share_of(
        app,
        {
            "dir": rule(FILES, values=["dir-photos"]),
            "file": rule(FILES, ["GET", "POST"], values=["file-cv"]),
        },
    )
    share = app.with_token(codes["bob"])
    self_view = attributes_of(share.request("GET", "/permissions/self"))
    assert self_view["permissions"] == {
        "dir": {"type": FILES, "verbs": ["GET"], "values": ["dir-photos"]},
        "file": {"type": FILES, "verbs": ["GET", "POST"], "values": ["file-cv"]},
    }
    instance = Instance.from_doc(
        sync(stack.store.get_doc("global/instances", Instance.new("alice.cozy.test").id))
    )
    from cozyd.permissions.sharing import set_of

    doc = sync(
        stack.store.get_doc(db_name(instance.prefix, "io.cozy.permissions"), perm_id)
    )
    permissions = set_of(doc, subject="bob")
    assert permissions.type == "share" and permissions.id == perm_id
    assert permissions.allows_document("GET", FILES, "dir-photos")
    assert permissions.allows_document("POST", FILES, "file-cv")
    assert not permissions.allows_document("POST", FILES, "dir-photos")
    assert not permissions.allows_document("GET", FILES, "another")
    assert not permissions.allows_collection("GET", FILES)
    # the shortcode stands for the same set
    short_view = attributes_of(
        app.with_token(shorts["bob"]).request("GET", "/permissions/self")
    )
    assert short_view["permissions"] == self_view["permissions"]
    # and the share is listed under io.cozy.files
    listed = app.request("GET", f"/permissions/doctype/{FILES}/shared-by-link")
    assert [item["id"] for item in listed.json()["data"]] == [perm_id]


def test_a_files_share_cannot_exceed_the_creators_directory(world, stack, admin, public):
    _, _, _ = world
    photos = Client(
        public,
        app_token(stack, admin, "photos", {"p": rule(FILES, ["GET"], ["dir-photos"])}),
    )
    assert photos.create({"r": rule(FILES, values=["dir-photos"])}).status == 200
    assert photos.create({"r": rule(FILES)}).status == 403
    assert photos.create({"r": rule(FILES, ["GET", "PUT"], ["dir-photos"])}).status == 403


def test_share_body_helper_shape():
    assert share_body({"r": rule(EVENTS)})["data"]["attributes"]["permissions"] == {
        "r": {"type": EVENTS, "verbs": ["GET"]}
    }


# -- which documents are shared ---------------------------------------------------------------
def test_exists_tells_which_documents_shares_name(world, stack, admin, public):
    app, _, ids = world
    share_of(app, {"r": rule(EVENTS, ["GET"], [ids[0]])})
    share_of(app, {"r": rule(EVENTS, ["GET", "PATCH"], [ids[0]])})
    share_of(app, {"f": rule(FILES, ["GET", "POST"], ["dir-photos"])})
    share_of(app, {"s": rule(EVENTS, values=[ids[1]], selector="calendar-id")})
    body = {
        "data": [
            {"type": EVENTS, "id": ids[0]},
            {"type": EVENTS, "id": ids[1]},
            {"type": FILES, "id": "dir-photos"},
            {"type": FILES, "id": "not-shared"},
            {"type": EVENTS, "id": ids[0]},
        ]
    }
    response = app.request("POST", "/permissions/exists", body)
    assert response.status == 200, response.body
    assert response.json() == {
        "data": [
            {"id": ids[0], "type": EVENTS, "verbs": ["GET", "PATCH"]},
            {"id": "dir-photos", "type": FILES, "verbs": ["GET", "POST"]},
        ]
    }
    # only about doctypes the caller reads whole
    narrow = Client(
        public, app_token(stack, admin, "narrow", {"n": rule(EVENTS, ["GET"], [ids[0]])})
    )
    assert narrow.request("POST", "/permissions/exists", body).json() == {"data": []}
    for bad in ({"data": 3}, {"data": [{"type": EVENTS}]}, [], {"nope": []}):
        assert app.request("POST", "/permissions/exists", bad).status == 400
    many = {"data": [{"type": EVENTS, "id": str(i)} for i in range(1001)]}
    assert app.request("POST", "/permissions/exists", many).status == 400


def test_a_share_holder_never_sees_other_shares(world):
    app, _, ids = world
    _, reader, _ = share_of(app, {"all": rule(EVENTS)})  # GET on every event
    other_id, _, _ = share_of(app, {"rw": rule(EVENTS, ["GET", "PUT"], [ids[0]])})
    share = app.with_token(reader["bob"])
    listed = share.request("GET", f"/permissions/doctype/{EVENTS}/shared-by-link")
    assert listed.status == 403
    assert share.request("GET", f"/permissions/{other_id}").status == 403
    exists = share.request(
        "POST", "/permissions/exists", {"data": [{"type": EVENTS, "id": ids[0]}]}
    )
    assert exists.json() == {"data": []}
