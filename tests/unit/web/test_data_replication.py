"""/data replication routes through HTTP, in memory: ``_bulk_docs``
(interactive and ``new_edits: false``), ``_bulk_get``, ``_revs_diff``,
``_local``, ``_ensure_full_commit``, ``revs=true``/``open_revs`` reads, and
a replication driven by hand as PouchDB does it."""

import json

import pytest

from cozyd.realtime.hub import CREATED, DELETED, UPDATED
from tests.support.data import Data, cli_token, events_of, new_instance

A = "a" * 32
B = "b" * 32
C = "c" * 32


@pytest.fixture
def data(admin, public):
    new_instance(admin)
    return Data(public, cli_token(admin))


def test_bulk_docs_interactive(data, stack):
    events = events_of(stack)
    response = data.post(
        "/io.cozy.notes/_bulk_docs",
        {"docs": [{"title": "one"}, {"_id": "two", "title": "two"}]},
    )
    assert response.status == 201
    first, second = response.json()
    assert first["ok"] is True and first["rev"].startswith("1-")
    assert second == {"ok": True, "id": "two", "rev": second["rev"]}
    again = data.post(
        "/io.cozy.notes/_bulk_docs",
        {
            "docs": [
                {"_id": "two", "_rev": second["rev"], "title": "2"},
                {"_id": "two", "title": "conflict"},
                {"_id": first["id"], "_rev": first["rev"], "_deleted": True},
            ]
        },
    ).json()
    assert again[0]["ok"] is True and again[0]["rev"].startswith("2-")
    assert again[1] == {
        "id": "two",
        "error": "conflict",
        "reason": "Document update conflict.",
    }
    assert again[2]["ok"] is True
    assert [(e["verb"], e["id"]) for e in events] == [
        (CREATED, first["id"]),
        (CREATED, "two"),
        (UPDATED, "two"),
        (DELETED, first["id"]),
    ]
    assert events[2]["doc"] == {"_id": "two", "_rev": again[0]["rev"], "title": "2"}


def test_bulk_docs_replicated_revisions_and_conflicts(data, stack):
    events = events_of(stack, doctype="io.cozy.notes")
    base = {"_id": "doc", "_rev": f"1-{A}", "v": 1, "_revisions": {"start": 1, "ids": [A]}}
    left = {
        "_id": "doc",
        "_rev": f"2-{B}",
        "v": "left",
        "_revisions": {"start": 2, "ids": [B, A]},
    }
    right = {
        "_id": "doc",
        "_rev": f"2-{C}",
        "v": "right",
        "_revisions": {"start": 2, "ids": [C, A]},
    }
    gone = {
        "_id": "gone",
        "_rev": f"3-{A}",
        "_deleted": True,
        "_revisions": {"start": 3, "ids": [A, B, C]},
    }
    response = data.post(
        "/io.cozy.notes/_bulk_docs", {"docs": [base, left, right, gone], "new_edits": False}
    )
    assert (response.status, response.json()) == (201, [])
    winner = data.get("/io.cozy.notes/doc").json()
    assert winner["_rev"] == f"2-{C}" and winner["v"] == "right"  # greater hash wins
    leaves = data.get("/io.cozy.notes/doc", params={"revs": "true", "open_revs": "all"})
    assert leaves.status == 200
    assert sorted(entry["ok"]["_rev"] for entry in leaves.json()) == [f"2-{B}", f"2-{C}"]
    assert leaves.json()[0]["ok"]["_revisions"]["start"] == 2
    conflicts = data.get("/io.cozy.notes/doc", params={"revs": "true", "conflicts": "true"})
    assert conflicts.json()["_conflicts"] == [f"2-{B}"]
    assert conflicts.json()["_revisions"] == {"start": 2, "ids": [C, A]}
    one = data.get(
        "/io.cozy.notes/doc",
        params={"revs": "true", "open_revs": json.dumps([f"2-{B}", f"9-{A}"])},
    ).json()
    assert one == [
        {
            "ok": {
                "_id": "doc",
                "_rev": f"2-{B}",
                "v": "left",
                "_revisions": {"start": 2, "ids": [B, A]},
            }
        },
        {"missing": f"9-{A}"},
    ]
    latest = data.get(
        "/io.cozy.notes/doc",
        params={"revs": "true", "open_revs": json.dumps([f"1-{A}"]), "latest": "true"},
    ).json()
    assert sorted(entry["ok"]["_rev"] for entry in latest) == [f"2-{B}", f"2-{C}"]
    at_rev = data.get("/io.cozy.notes/doc", params={"revs": "true", "rev": f"2-{B}"})
    assert at_rev.json()["v"] == "left"
    assert data.get("/io.cozy.notes/gone").json()["reason"] == "deleted"
    assert [(e["verb"], e["id"]) for e in events] == [
        (CREATED, "doc"),
        (UPDATED, "doc"),
        (UPDATED, "doc"),
        (DELETED, "gone"),
    ]
    assert "_revisions" not in events[0]["doc"]


def test_bulk_docs_bad_bodies_write_nothing(data, stack):
    data.put("/io.cozy.notes/")
    events = events_of(stack)
    cases = [
        (b"{not json", 400, {"error": "code=400, message=request body is not valid JSON"}),
        (
            b"[]",
            400,
            {"error": "bad_request", "reason": "POST body must include `docs` parameter."},
        ),
        (b'{"docs": {}}', 400, None),
        (b'{"docs": [], "new_edits": "no"}', 400, None),
        (b'{"docs": [42]}', 400, None),
        (b'{"docs": [{"_id": "_bad"}]}', 400, None),
        (b'{"docs": [{"_id": "x", "_rev": "nope"}], "new_edits": false}', 400, None),
    ]
    for raw, status, body in cases:
        response = data.post("/io.cozy.notes/_bulk_docs", raw=raw)
        assert response.status == status, (raw, response.body)
        if body is not None:
            assert response.json() == body
    assert data.get("/io.cozy.notes/").json()["doc_count"] == 0
    assert events == []


def test_bulk_docs_permissions(admin, public, data):
    reader = Data(public, cli_token(admin, "io.cozy.notes:GET"))
    assert reader.post("/io.cozy.notes/_bulk_docs", {"docs": [{"a": 1}]}).status == 403
    assert data.post("/io.cozy.files/_bulk_docs", {"docs": [{"a": 1}]}).status == 403
    by_id = Data(public, cli_token(admin, "io.cozy.notes:ALL:some-id"))
    assert (
        by_id.post("/io.cozy.notes/_bulk_docs", {"docs": [{"_id": "some-id"}]}).status
        == 403
    )  # whole type only


def test_bulk_get(data):
    made = data.post("/io.cozy.notes/_bulk_docs", {"docs": [{"_id": "x", "v": 1}]}).json()
    response = data.post(
        "/io.cozy.notes/_bulk_get",
        {"docs": [{"id": "x"}, {"id": "x", "rev": made[0]["rev"]}, {"id": "ghost"}]},
        params={"revs": "true"},
    )
    assert response.status == 200
    results = response.json()["results"]
    assert results[0]["docs"][0]["ok"]["_revisions"]["start"] == 1
    assert results[1]["docs"][0]["ok"]["_rev"] == made[0]["rev"]
    assert results[2]["docs"][0]["error"]["error"] == "not_found"
    assert data.post("/io.cozy.notes/_bulk_get", {"nope": 1}).status == 400
    assert data.post("/io.cozy.nottype/_bulk_get", {"docs": []}).json() == {
        "error": "not_found",
        "reason": "Database does not exist.",
    }


def test_revs_diff(data):
    data.post(
        "/io.cozy.notes/_bulk_docs",
        {
            "docs": [
                {"_id": "x", "_rev": f"2-{B}", "_revisions": {"start": 2, "ids": [B, A]}}
            ],
            "new_edits": False,
        },
    )
    diff = data.post(
        "/io.cozy.notes/_revs_diff", {"x": [f"2-{B}", f"3-{C}"], "y": [f"1-{A}"]}
    )
    assert diff.status == 200
    assert diff.json() == {
        "x": {"missing": [f"3-{C}"], "possible_ancestors": [f"2-{B}"]},
        "y": {"missing": [f"1-{A}"]},
    }
    assert data.post("/io.cozy.notes/_revs_diff", {"x": "2-b"}).status == 400
    assert data.post("/io.cozy.notes/_revs_diff", [1]).status == 400


def test_local_documents(data, stack):
    events = events_of(stack)
    assert data.get("/io.cozy.notes/_local/checkpoint").json() == {
        "error": "not_found",
        "reason": "Database does not exist.",
    }
    data.put("/io.cozy.notes/")
    assert data.get("/io.cozy.notes/_local/checkpoint").json() == {
        "error": "not_found",
        "reason": "missing",
    }
    put = data.put("/io.cozy.notes/_local/checkpoint", {"last_seq": "5"})
    assert (put.status, put.json()) == (
        201,
        {"ok": True, "id": "_local/checkpoint", "rev": "0-1"},
    )
    again = data.put("/io.cozy.notes/_local/checkpoint", {"_rev": "0-1", "last_seq": "9"})
    assert again.json()["rev"] == "0-2"
    got = data.get("/io.cozy.notes/_local/checkpoint").json()
    assert got == {"_id": "_local/checkpoint", "_rev": "0-2", "last_seq": "9"}
    assert data.get("/io.cozy.notes/_changes").json()["results"] == []  # never in the feed
    assert events == []
    assert data.put("/io.cozy.notes/_local/x", [1]).status == 400
    # Checkpoints are a read permission's business, as in cozy-stack.
    assert data.put("/io.cozy.files/_local/x", {"a": 1}).status == 201


def test_ensure_full_commit(data):
    assert data.post("/io.cozy.nottype/_ensure_full_commit").status == 404
    data.put("/io.cozy.notes/")
    response = data.post("/io.cozy.notes/_ensure_full_commit")
    assert (response.status, response.json()) == (
        201,
        {"ok": True, "instance_start_time": "0"},
    )
    assert data.post("/io.cozy.files/_ensure_full_commit").status == 403


def test_revs_reads_check_the_document_permission(admin, public, data):
    data.put("/io.cozy.notes/mine", {"a": 1})
    data.put("/io.cozy.notes/theirs", {"a": 2})
    mine_only = Data(public, cli_token(admin, "io.cozy.notes:GET:mine"))
    assert mine_only.get("/io.cozy.notes/mine", params={"revs": "true"}).status == 200
    assert mine_only.get("/io.cozy.notes/theirs", params={"revs": "true"}).status == 403
    assert (
        mine_only.get(
            "/io.cozy.notes/theirs", params={"revs": "true", "open_revs": "all"}
        ).status
        == 403
    )
    missing = data.get("/io.cozy.notes/ghost", params={"revs": "true", "open_revs": "all"})
    assert missing.json() == {"error": "not_found", "reason": "missing"}


def test_replication_by_hand(data):
    """What PouchDB does to push a database, then to pull it elsewhere."""
    source = "/io.cozy.notes"
    target = "/io.cozy.events"
    data.post(
        source + "/_bulk_docs", {"docs": [{"_id": f"n{i}", "i": i} for i in range(5)]}
    )
    doc = data.get(source + "/n0").json()
    data.put(source + "/n0", {**doc, "i": 100})
    assert data.get(target + "/").status == 404
    assert data.put(target + "/").status == 201
    assert data.get(target + "/_local/repl").status == 404
    changes = data.get(
        source + "/_changes", params={"style": "all_docs", "since": "0", "limit": "100"}
    ).json()
    diff = data.post(
        target + "/_revs_diff",
        {row["id"]: [c["rev"] for c in row["changes"]] for row in changes["results"]},
    ).json()
    assert set(diff) == {f"n{i}" for i in range(5)}
    fetched = data.post(
        source + "/_bulk_get",
        {
            "docs": [
                {"id": doc_id, "rev": rev}
                for doc_id, entry in diff.items()
                for rev in entry["missing"]
            ]
        },
        params={"revs": "true", "latest": "true"},
    ).json()
    docs = [d["ok"] for result in fetched["results"] for d in result["docs"]]
    assert (
        data.post(target + "/_bulk_docs", {"docs": docs, "new_edits": False}).json() == []
    )
    assert (
        data.put(target + "/_local/repl", {"last_seq": changes["last_seq"]}).status == 201
    )
    assert (
        data.post(target + "/_revs_diff", {d["_id"]: [d["_rev"]] for d in docs}).json()
        == {}
    )
    copied = data.get(target + "/n0").json()
    assert copied["i"] == 100 and copied["_rev"].startswith("2-")
    assert copied["_rev"] == data.get(source + "/n0").json()["_rev"]
