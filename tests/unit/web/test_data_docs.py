"""/data single-document routes through HTTP, in memory: create, read,
update, create with an id, delete; reserved doctypes; doc-level
permissions; the events every write publishes."""

import pytest

from cozyd.realtime.hub import CREATED, DELETED, UPDATED
from tests.support.data import (
    BASE,
    Data,
    app_token,
    cli_token,
    events_of,
    new_instance,
)


@pytest.fixture
def data(admin, public):
    new_instance(admin)
    return Data(public, cli_token(admin))


def test_welcome_needs_no_token(admin, public):
    new_instance(admin)
    for path in ("", "/"):
        response = Data(public, None).get(path)
        assert (response.status, response.json()) == (
            200,
            {"message": "welcome to a cozy API"},
        )


def test_create_read_update_delete(data, stack):
    events = events_of(stack)
    created = data.post("/io.cozy.events/", {"summary": "party", "n": 1})
    assert created.status == 201
    body = created.json()
    doc_id, rev = body["id"], body["rev"]
    assert set(body) == {"ok", "id", "rev", "type", "data"}
    assert body["ok"] is True and body["type"] == "io.cozy.events"
    assert len(doc_id) == 32 and rev.startswith("1-")
    assert body["data"] == {
        "_id": doc_id,
        "_rev": rev,
        "_type": "io.cozy.events",
        "summary": "party",
        "n": 1,
    }
    assert created.headers["content-type"] == "application/json"

    read = data.get(f"/io.cozy.events/{doc_id}")
    assert read.status == 200
    assert read.json() == body["data"]

    updated = data.put(
        f"/io.cozy.events/{doc_id}",
        {"_id": doc_id, "_rev": rev, "_type": "io.cozy.events", "n": 2},
    )
    assert updated.status == 200, updated.body
    new_rev = updated.json()["rev"]
    assert new_rev.startswith("2-")
    assert updated.json()["data"] == {
        "_id": doc_id,
        "_rev": new_rev,
        "_type": "io.cozy.events",
        "n": 2,
    }
    stale = data.put(f"/io.cozy.events/{doc_id}", {"_id": doc_id, "_rev": rev, "n": 3})
    assert stale.status == 409
    assert stale.json() == {
        "ok": False,
        "status": "409",
        "error": "conflict",
        "reason": "Document update conflict.",
    }

    deleted = data.delete(f"/io.cozy.events/{doc_id}", params={"rev": new_rev})
    assert deleted.status == 200
    assert deleted.json() == {
        "ok": True,
        "id": doc_id,
        "rev": deleted.json()["rev"],
        "type": "io.cozy.events",
        "deleted": True,
    }
    assert deleted.json()["rev"].startswith("3-")
    gone = data.get(f"/io.cozy.events/{doc_id}")
    assert gone.status == 404
    assert gone.json() == {
        "ok": False,
        "status": "404",
        "error": "not_found",
        "reason": "deleted",
    }

    assert [(e["verb"], e["doctype"], e["id"]) for e in events] == [
        (CREATED, "io.cozy.events", doc_id),
        (UPDATED, "io.cozy.events", doc_id),
        (DELETED, "io.cozy.events", doc_id),
    ]
    assert events[0]["doc"] == {"_id": doc_id, "_rev": rev, "summary": "party", "n": 1}
    assert events[1]["doc"] == {"_id": doc_id, "_rev": new_rev, "n": 2}
    # DELETED carries the document as it was, with the tombstone's revision.
    assert events[2]["doc"] == {"_id": doc_id, "_rev": deleted.json()["rev"], "n": 2}


def test_create_refuses_an_id_and_reserved_members(data, stack):
    events = events_of(stack)
    with_id = data.post("/io.cozy.events/", {"_id": "mine", "a": 1})
    assert with_id.status == 400
    assert with_id.json() == {
        "ok": False,
        "status": "400",
        "error": "defined_id",
        "reason": "document _id should be empty",
    }
    with_member = data.post("/io.cozy.events/", {"_foo": 1})
    assert with_member.status == 400
    assert with_member.json()["error"] == "doc_validation"
    not_object = data.post("/io.cozy.events/", [1, 2])
    assert not_object.status == 400
    assert not_object.json()["error"].startswith("Bad Request(400): ")
    assert events == []
    assert data.get("/io.cozy.events/_all_docs").status == 404  # not even the database


def test_first_write_creates_the_database(data):
    assert data.get("/io.cozy.fresh/").status == 404
    assert data.post("/io.cozy.fresh/", {"a": 1}).status == 201
    assert data.get("/io.cozy.fresh/").json()["doc_count"] == 1
    assert data.put("/io.cozy.nottype/fixed", {"b": 1}).status == 200


def test_read_errors(data):
    created = data.create("io.cozy.events", {"a": 1})
    assert data.get("/io.cozy.events/nope").json() == {
        "ok": False,
        "status": "404",
        "error": "not_found",
        "reason": "missing",
    }
    wrong = data.get("/io.cozy.nottype/" + created["id"])
    assert wrong.status == 404
    assert wrong.json()["reason"] == "wrong_doctype"
    underscore = data.get("/io.cozy.events/_foo")
    assert underscore.status == 400
    assert underscore.json()["error"] == "bad_id"


def test_ids_with_slashes_and_unicode(data):
    for doc_id, path in (
        ("with/slash", "with%2Fslash"),
        ("café ☕", "caf%C3%A9%20%E2%98%95"),
    ):
        made = data.put(f"/io.cozy.events/{path}", {"test": doc_id})
        assert made.status == 200, made.body
        assert made.json()["id"] == doc_id
        read = data.get(f"/io.cozy.events/{path}")
        assert read.status == 200
        assert read.json()["test"] == doc_id
        assert (
            data.delete(
                f"/io.cozy.events/{path}", params={"rev": read.json()["_rev"]}
            ).status
            == 200
        )


def test_create_with_a_fixed_id(data, stack):
    events = events_of(stack, doctype="io.cozy.events")
    made = data.put("/io.cozy.events/fixed", {"b": 1})
    assert made.status == 200
    assert made.json()["rev"].startswith("1-")
    assert made.json()["data"]["_id"] == "fixed"
    again = data.put("/io.cozy.events/fixed", {"b": 2})
    assert again.status == 409
    assert [e["verb"] for e in events] == [CREATED]
    # Re-created after a deletion: on top of the tombstone.
    assert (
        data.delete(
            "/io.cozy.events/fixed", headers={"If-Match": made.json()["rev"]}
        ).status
        == 200
    )
    remade = data.put("/io.cozy.events/fixed", {"b": 3})
    assert remade.status == 200
    assert remade.json()["rev"].startswith("3-")
    assert [e["verb"] for e in events] == [CREATED, DELETED, CREATED]
    assert data.put("/io.cozy.events/_design", {"b": 1}).status == 400


@pytest.mark.parametrize(
    "body,detail",
    [
        ({"_id": "x"}, "You must either provide an _id and _rev"),
        ({"_rev": "1-abc"}, "You must either provide an _id and _rev"),
        ({"_id": "other", "_rev": "1-abc"}, "document _id doesnt match url"),
    ],
)
def test_update_needs_matching_id_and_rev(data, body, detail):
    response = data.put("/io.cozy.events/x", body)
    assert response.status == 400
    assert response.json()["error"].startswith("Bad Request(400): " + detail)


def test_update_of_a_missing_document(data):
    data.create("io.cozy.events", {"a": 1})
    response = data.put("/io.cozy.events/ghost", {"_id": "ghost", "_rev": "1-abc"})
    assert response.status == 404
    assert response.json()["reason"] == "missing"
    no_db = data.put("/io.cozy.nottype/ghost", {"_id": "ghost", "_rev": "1-abc"})
    assert no_db.json()["reason"] == "wrong_doctype"


def test_delete_revision_from_query_or_if_match(data):
    doc = data.create("io.cozy.events", {"a": 1})
    path = f"/io.cozy.events/{doc['id']}"
    missing = data.delete(path)
    assert missing.status == 400
    assert missing.json() == {"error": "Bad Request(400): delete without revision"}
    mismatch = data.delete(
        path, params={"rev": doc["rev"]}, headers={"If-Match": "1-other"}
    )
    assert mismatch.status == 400
    assert "mismatch" in mismatch.json()["error"]
    wrong = data.delete(path, params={"rev": "1-" + "0" * 32})
    assert wrong.status == 409
    assert (
        data.delete(
            path, params={"rev": doc["rev"]}, headers={"If-Match": doc["rev"]}
        ).status
        == 200
    )
    assert data.delete(path, params={"rev": doc["rev"]}).status == 404


def test_reserved_and_invalid_doctypes(data):
    unwritable = data.post("/io.cozy.files/", {"wrong-vfs": "structure"})
    assert unwritable.status == 403
    assert unwritable.json() == {
        "error": "code=403, message=reserved doctype io.cozy.files unwritable"
    }
    assert data.put("/io.cozy.jobs/x", {"a": 1}).status == 403
    unreadable = data.get("/io.cozy.permissions/x")
    assert unreadable.status == 403
    assert unreadable.json() == {
        "error": "code=403, message=reserved doctype io.cozy.permissions unreadable"
    }
    # Read-only doctypes can be read.
    assert data.get("/io.cozy.files/io.cozy.files.root-dir").status == 200
    for bad in ("io.cozy.BAD", ".io.cozy", "io.cozy.", "io..cozy", "io-cozy", "io%20cozy"):
        response = data.get(f"/{bad}/x")
        assert response.status == 403, bad
        assert "is not a valid doctype name" in response.json()["error"]


def test_tokens_are_checked(admin, public):
    new_instance(admin)
    new_instance(admin, "bob.cozy.test")
    no_token = Data(public, None).get("/io.cozy.events/x")
    assert no_token.status == 401
    assert no_token.json() == {"error": "No token in request"}
    bobs = Data(public, cli_token(admin, "io.cozy.events", domain="bob.cozy.test"))
    assert bobs.get("/io.cozy.events/x").status == 400
    garbage = public.request(
        "GET", BASE + "/io.cozy.events/x", headers={"Authorization": "Bearer nope"}
    )
    assert (garbage.status, garbage.body) == (400, b"Invalid JWT token")


def test_permission_by_id(admin, public):
    new_instance(admin)
    full = Data(public, cli_token(admin))
    mine = full.create("io.cozy.events", {"a": 1})["id"]
    other = full.create("io.cozy.events", {"a": 2})["id"]
    limited = Data(public, cli_token(admin, f"io.cozy.events:GET:{mine}"))
    assert limited.get(f"/io.cozy.events/{mine}").status == 200
    denied = limited.get(f"/io.cozy.events/{other}")
    assert denied.status == 403
    assert denied.json() == {"error": "Forbidden"}
    # A missing document: only a whole-type rule learns it is missing.
    assert limited.get("/io.cozy.events/ghost").status == 403
    assert full.get("/io.cozy.events/ghost").status == 404
    for method, path in (
        ("GET", "/io.cozy.events/_all_docs"),
        ("GET", "/io.cozy.events/_changes"),
        ("POST", "/io.cozy.events/_find"),
        ("GET", "/io.cozy.events/_normal_docs"),
        ("GET", "/io.cozy.events/"),
    ):
        assert limited.request(method, path, {"selector": {}}).status == 403, path
    doc = limited.get(f"/io.cozy.events/{mine}").json()
    assert limited.put(f"/io.cozy.events/{mine}", {**doc, "a": 9}).status == 403


def test_permission_by_selector(admin, public, stack):
    new_instance(admin)
    full = Data(public, cli_token(admin))
    work = full.create("io.cozy.events", {"category": "work"})
    home = full.create("io.cozy.events", {"category": "home"})
    events = events_of(stack)
    scoped = Data(public, cli_token(admin, "io.cozy.events:ALL:work:category"))
    assert scoped.get(f"/io.cozy.events/{work['id']}").status == 200
    assert scoped.get(f"/io.cozy.events/{home['id']}").status == 403
    # Creation: the new document must match the rule.
    assert scoped.post("/io.cozy.events/", {"category": "work", "n": 1}).status == 201
    assert scoped.post("/io.cozy.events/", {"category": "home"}).status == 403
    assert scoped.put("/io.cozy.events/fixed-home", {"category": "home"}).status == 403
    # Update: both the old and the new document must match.
    moved = scoped.put(
        f"/io.cozy.events/{work['id']}",
        {"_id": work["id"], "_rev": work["rev"], "category": "home"},
    )
    assert moved.status == 403
    assert full.get(f"/io.cozy.events/{work['id']}").json()["_rev"] == work["rev"]
    stolen = scoped.put(
        f"/io.cozy.events/{home['id']}",
        {"_id": home["id"], "_rev": home["rev"], "category": "work"},
    )
    assert stolen.status == 403
    kept = scoped.put(
        f"/io.cozy.events/{work['id']}",
        {"_id": work["id"], "_rev": work["rev"], "category": "work", "x": 1},
    )
    assert kept.status == 200
    assert (
        scoped.delete(f"/io.cozy.events/{home['id']}", params={"rev": home["rev"]}).status
        == 403
    )
    assert (
        scoped.delete(
            f"/io.cozy.events/{work['id']}", params={"rev": kept.json()["rev"]}
        ).status
        == 200
    )
    assert [e["verb"] for e in events] == [CREATED, UPDATED, DELETED]


def test_app_token_with_a_stored_permission(stack, admin, public):
    new_instance(admin)
    full = Data(public, cli_token(admin))
    doc = full.create("io.cozy.notes", {"title": "t"})
    reader = Data(
        public,
        app_token(
            stack, admin, "notes", {"notes": {"type": "io.cozy.notes", "verbs": ["GET"]}}
        ),
    )
    assert reader.get(f"/io.cozy.notes/{doc['id']}").status == 200
    assert reader.get("/io.cozy.notes/_all_docs").status == 200
    assert (
        reader.put(
            f"/io.cozy.notes/{doc['id']}",
            {"_id": doc["id"], "_rev": doc["rev"], "title": "u"},
        ).status
        == 403
    )
    assert reader.post("/io.cozy.notes/", {"title": "v"}).status == 403
    assert reader.get("/io.cozy.events/_all_docs").status == 403


def test_failed_writes_publish_nothing(data, stack):
    doc = data.create("io.cozy.events", {"a": 1})
    events = events_of(stack)
    data.put(f"/io.cozy.events/{doc['id']}", {"_id": doc["id"], "_rev": "1-x", "a": 2})
    data.delete(f"/io.cozy.events/{doc['id']}", params={"rev": "9-x"})
    data.put(f"/io.cozy.events/{doc['id']}", {"a": 3})
    data.post("/io.cozy.files/", {"a": 1})
    assert events == []


def test_put_with_deleted_flag_deletes(data, stack):
    doc = data.create("io.cozy.events", {"a": 1})
    events = events_of(stack)
    response = data.put(
        f"/io.cozy.events/{doc['id']}",
        {"_id": doc["id"], "_rev": doc["rev"], "_deleted": True},
    )
    assert response.status == 200
    assert data.get(f"/io.cozy.events/{doc['id']}").json()["reason"] == "deleted"
    assert [e["verb"] for e in events] == [DELETED]


def test_unknown_routes_and_methods(data):
    assert data.request("PATCH", "/io.cozy.events/x").status == 405
    assert data.request("PATCH", "/io.cozy.events/x").json() == {
        "error": "code=405, message=Method Not Allowed"
    }
    assert data.get("/io.cozy.events/x/y/z").status == 404
    assert data.get("/io.cozy.events/_find").status == 405
