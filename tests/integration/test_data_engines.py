"""/data through the real daemon, on both storage engines, with a CLI
token from ``cozyctl instances token-cli``: the same HTTP assertions as the
in-memory tests, where both engines must agree.

Checks that only a real Apache CouchDB can pass on the CouchDB engine
(pouchdb-server, the stand-in, has no Mango bookmarks, no "no index"
warning…) are made on the embedded engine always and on the CouchDB engine
only when ``COZYD_TEST_COUCHDB_URL`` points at a real CouchDB.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from cozyd.storage import mango
from tests.support.couchdb_server import real_couchdb_url
from tests.support.data import json_request

pytestmark = pytest.mark.integration

DOMAIN = "alice.cozy.localhost"
SCOPE = (
    "io.cozy.events io.cozy.notes io.cozy.doctypes io.cozy.files io.cozy.fresh "
    "io.cozy.permissions"
)
MAX_BODY = 64 * 1024


@pytest.fixture(params=["embedded", "couchdb"])
def data_daemon(request, make_daemon):
    daemon = make_daemon(
        couchdb=request.param == "couchdb", server={"max_body_size": str(MAX_BODY)}
    )
    daemon.engine = request.param
    return daemon


def like_couchdb(daemon) -> bool:
    """Does the daemon's engine behave as Apache CouchDB in every detail?"""
    return daemon.engine == "embedded" or bool(real_couchdb_url())


class Client:
    def __init__(self, daemon, token: str | None, domain: str = DOMAIN):
        self.daemon = daemon
        self.token = token
        self.domain = domain

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ):
        url = "/data" + path
        if params:
            url += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
        all_headers, data = json_request(self.token, body, raw, headers)
        response = self.daemon.public(
            method, url, self.domain, headers=all_headers, data=data
        )
        assert response.status < 500, (method, path, response.body)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def setup_instance(daemon, scope: str = SCOPE) -> Client:
    added = daemon.cozyctl("instances", "add", DOMAIN)
    assert added.returncode == 0, added.stderr
    return Client(daemon, cli_token(daemon, scope))


def cli_token(daemon, scope: str) -> str:
    made = daemon.cozyctl("instances", "token-cli", DOMAIN, *scope.split())
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_documents(data_daemon):
    data = setup_instance(data_daemon)
    assert data.get("/").json() == {"message": "welcome to a cozy API"}
    assert Client(data_daemon, None).get("/io.cozy.events/x").status == 401

    created = data.post("/io.cozy.events/", {"summary": "party"})
    assert created.status == 201, created.body
    doc_id, rev = created.json()["id"], created.json()["rev"]
    assert created.json()["data"] == {
        "_id": doc_id,
        "_rev": rev,
        "_type": "io.cozy.events",
        "summary": "party",
    }
    assert data.get(f"/io.cozy.events/{doc_id}").json()["summary"] == "party"
    updated = data.put(f"/io.cozy.events/{doc_id}", {"_id": doc_id, "_rev": rev, "n": 2})
    assert updated.status == 200 and updated.json()["rev"].startswith("2-")
    stale = data.put(f"/io.cozy.events/{doc_id}", {"_id": doc_id, "_rev": rev, "n": 3})
    assert stale.status == 409
    assert stale.json()["error"] == "conflict"
    fixed = data.put("/io.cozy.events/with%2Fslash", {"b": 1})
    assert fixed.status == 200 and fixed.json()["id"] == "with/slash"
    assert data.put("/io.cozy.events/with%2Fslash", {"b": 1}).status == 409
    assert data.get("/io.cozy.events/with%2Fslash").json()["b"] == 1

    assert data.delete(f"/io.cozy.events/{doc_id}").status == 400
    assert data.delete(f"/io.cozy.events/{doc_id}", params={"rev": rev}).status == 409
    deleted = data.delete(
        f"/io.cozy.events/{doc_id}", headers={"If-Match": updated.json()["rev"]}
    )
    assert deleted.status == 200
    assert deleted.json()["deleted"] is True and deleted.json()["rev"].startswith("3-")
    if like_couchdb(data_daemon):  # pouchdb-server says "missing"
        assert data.get(f"/io.cozy.events/{doc_id}").json()["reason"] == "deleted"
    assert data.get("/io.cozy.events/nope").json()["reason"] == "missing"
    assert data.get("/io.cozy.nottype/nope").status == 403  # not in the token's scope
    wrong = Client(data_daemon, cli_token(data_daemon, "io.cozy.nottype"))
    assert wrong.get("/io.cozy.nottype/nope").json()["reason"] == "wrong_doctype"

    assert data.get("/io.cozy.events/_foo").json()["error"] == "bad_id"
    assert data.post("/io.cozy.events/", {"_id": "x"}).json()["error"] == "defined_id"
    reserved = data.post("/io.cozy.files/", {"a": 1})
    assert reserved.status == 403 and "unwritable" in reserved.json()["error"]
    assert "unreadable" in data.get("/io.cozy.permissions/x").json()["error"]
    assert data.get("/io.cozy.BAD/x").status == 403
    assert data.post("/io.cozy.events/", raw=b"{oops").status == 400
    assert (
        data.post("/io.cozy.events/", raw=b'{"a":' * 300 + b"1" + b"}" * 300).status == 400
    )
    big = data.post("/io.cozy.events/", {"blob": "x" * (MAX_BODY + 1)})
    assert big.status == 413

    by_id = Client(data_daemon, cli_token(data_daemon, "io.cozy.events:GET:with/slash"))
    assert by_id.get("/io.cozy.events/with%2Fslash").status == 200
    assert by_id.get("/io.cozy.events/_all_docs").status == 403
    selector = Client(
        data_daemon, cli_token(data_daemon, "io.cozy.notes:ALL:work:category")
    )
    assert selector.post("/io.cozy.notes/", {"category": "work"}).status == 201
    assert selector.post("/io.cozy.notes/", {"category": "home"}).status == 403


def test_collections(data_daemon):
    data = setup_instance(data_daemon)
    for n in range(5):
        assert (
            data.put(
                f"/io.cozy.notes/note{n}",
                {"n": n, "kind": "note", "meta": {"a": n, "b": "x"}},
            ).status
            == 200
        )
    index = data.post(
        "/io.cozy.notes/_index", {"index": {"fields": ["kind", "n"]}, "ddoc": "by-kind"}
    )
    assert index.status == 200 and index.json()["id"] == "_design/by-kind"
    assert (
        data.post(
            "/io.cozy.notes/_index", {"index": {"fields": ["kind", "n"]}, "ddoc": "by-kind"}
        ).json()["result"]
        == "exists"
    )

    rows = data.get("/io.cozy.notes/_all_docs", params={"include_docs": "true"}).json()[
        "rows"
    ]
    assert [row["id"] for row in rows] == ["_design/by-kind"] + [
        f"note{n}" for n in range(5)
    ]
    page = data.get(
        "/io.cozy.notes/_all_docs",
        params={"startkey": '"note1"', "endkey": '"note3"', "limit": "2"},
    ).json()["rows"]
    assert [row["id"] for row in page] == ["note1", "note2"]
    keys = data.post("/io.cozy.notes/_all_docs", {"keys": ["note4", "ghost"]}).json()[
        "rows"
    ]
    assert keys[0]["id"] == "note4" and keys[1]["error"] == "not_found"
    fields = data.get(
        "/io.cozy.notes/_all_docs", params={"Fields": "meta.a", "DesignDocs": "false"}
    ).json()
    assert fields["total_rows"] == 5
    assert fields["rows"][0]["doc"] == {"meta": {"a": 0}}

    normal = data.get("/io.cozy.notes/_normal_docs", params={"limit": "2"}).json()
    assert normal["total_rows"] == 5 and len(normal["rows"]) == 2
    skipped = data.get(
        "/io.cozy.notes/_normal_docs", params={"limit": "2", "skip": "3"}
    ).json()
    assert skipped["total_rows"] == 5
    if like_couchdb(data_daemon):  # pouchdb-server counts the design doc in "skip"
        assert [row["_id"] for row in skipped["rows"]] == ["note3", "note4"]
        resumed = data.get(
            "/io.cozy.notes/_normal_docs",
            params={"limit": "2", "bookmark": normal["bookmark"]},
        ).json()
        assert [row["_id"] for row in resumed["rows"]] == ["note2", "note3"]

    found = data.post(
        "/io.cozy.notes/_find",
        {
            "selector": {"kind": "note", "n": {"$gte": 2}},
            "sort": ["kind", "n"],
            "fields": ["_id", "n"],
            "limit": 2,
        },
    )
    assert found.status == 200, found.body
    assert [doc["n"] for doc in found.json()["docs"]] == [2, 3]
    assert found.json()["limit"] == 2 and found.json()["next"] is True
    if like_couchdb(data_daemon):
        no_index = data.post("/io.cozy.notes/_find", {"selector": {"meta.b": "x"}})
        assert no_index.status == 400 and no_index.json()["error"] == "no_index"

    design = data.get("/io.cozy.notes/_design_docs").json()["rows"]
    assert [row["id"] for row in design] == ["_design/by-kind"]
    ddoc = data.get("/io.cozy.notes/_design/by-kind").json()
    assert ddoc["language"] == "query"
    assert data.delete("/io.cozy.notes/_design/by-kind").status == 400
    files = {
        row["id"]: row["value"]["rev"]
        for row in data.get("/io.cozy.files/_design_docs").json()["rows"]
    }
    assert (
        data.delete(
            "/io.cozy.files/_design/dir-by-path",
            params={"rev": files["_design/dir-by-path"]},
        ).status
        == 403
    )
    assert (
        data.delete("/io.cozy.notes/_design/by-kind", params={"rev": ddoc["_rev"]}).status
        == 200
    )

    doctypes = data.get("/_all_doctypes").json()
    assert "io.cozy.notes" in doctypes and "io.cozy.permissions" not in doctypes

    assert data.get("/io.cozy.fresh/").status == 404
    assert data.put("/io.cozy.fresh/").status == 201
    assert data.put("/io.cozy.fresh/").status == 412
    assert data.get("/io.cozy.fresh/").json()["doc_count"] == 0
    assert data.delete("/io.cozy.fresh/").json() == {"ok": True, "deleted": True}
    assert data.get("/io.cozy.fresh/").status == 404


@pytest.mark.realcouchdb  # pouchdb-server sends sequences as numbers
def test_changes(data_daemon):
    data = setup_instance(data_daemon)
    data.put("/io.cozy.notes/")
    since = data.get("/io.cozy.notes/_changes").json()["last_seq"]
    for n in range(4):
        data.put(f"/io.cozy.notes/c{n}", {"n": n})
    # A sharded CouchDB orders its feed per shard only: pages are compared
    # as sets.
    two = data.get("/io.cozy.notes/_changes", params={"since": since, "limit": "2"}).json()
    assert len({row["id"] for row in two["results"]}) == 2
    rest = data.get(
        "/io.cozy.notes/_changes", params={"since": two["last_seq"], "include_docs": "true"}
    ).json()
    assert sorted(row["id"] for row in two["results"] + rest["results"]) == [
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    assert all(row["doc"]["n"] == int(row["id"][1:]) for row in rest["results"])
    by_ids = data.post(
        "/io.cozy.notes/_changes", {"doc_ids": ["c1", "c3"]}, params={"filter": "_doc_ids"}
    ).json()
    assert sorted(row["id"] for row in by_ids["results"]) == ["c1", "c3"]
    selected = data.post(
        "/io.cozy.notes/_changes",
        {"selector": {"n": {"$lt": 2}}},
        params={"filter": "_selector"},
    ).json()
    assert sorted(row["id"] for row in selected["results"]) == ["c0", "c1"]
    for params in (
        {"feed": "continuous"},
        {"conflicts": "true"},
        {"style": "x"},
        {"limit": "x"},
        {"filter": "_doc_ids"},
    ):
        assert data.get("/io.cozy.notes/_changes", params=params).status == 400, params


def test_replication_primitives(data_daemon):
    data = setup_instance(data_daemon)
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    docs = [
        {
            "_id": "doc",
            "_rev": f"2-{b}",
            "v": "left",
            "_revisions": {"start": 2, "ids": [b, a]},
        },
        {
            "_id": "doc",
            "_rev": f"2-{c}",
            "v": "right",
            "_revisions": {"start": 2, "ids": [c, a]},
        },
    ]
    written = data.post("/io.cozy.notes/_bulk_docs", {"docs": docs, "new_edits": False})
    assert (written.status, written.json()) == (201, [])
    winner = data.get(
        "/io.cozy.notes/doc", params={"revs": "true", "conflicts": "true"}
    ).json()
    assert winner["_rev"] == f"2-{c}" and winner["_conflicts"] == [f"2-{b}"]
    leaves = data.get(
        "/io.cozy.notes/doc", params={"revs": "true", "open_revs": "all"}
    ).json()
    assert sorted(entry["ok"]["_rev"] for entry in leaves) == [f"2-{b}", f"2-{c}"]
    bulk = data.post(
        "/io.cozy.notes/_bulk_get",
        {"docs": [{"id": "doc", "rev": f"2-{b}"}]},
        params={"revs": "true"},
    ).json()
    assert bulk["results"][0]["docs"][0]["ok"]["v"] == "left"
    diff = data.post("/io.cozy.notes/_revs_diff", {"doc": [f"2-{b}", f"3-{a}"]}).json()
    assert diff["doc"]["missing"] == [f"3-{a}"]
    local = data.put("/io.cozy.notes/_local/checkpoint", {"last_seq": "1"})
    assert local.status == 201 and local.json()["id"] == "_local/checkpoint"
    assert data.get("/io.cozy.notes/_local/checkpoint").json()["last_seq"] == "1"
    assert data.post("/io.cozy.notes/_ensure_full_commit").status == 201
    interactive = data.post(
        "/io.cozy.notes/_bulk_docs",
        {
            "docs": [
                {"_id": "doc", "_rev": f"2-{c}", "v": "merged"},
                {"_id": "doc", "v": "new"},
            ]
        },
    ).json()
    assert interactive[0]["ok"] is True and interactive[1]["error"] == "conflict"
    assert data.post("/io.cozy.notes/_bulk_docs", raw=b"nope").status == 400


# The same selectors on both engines, compared with Python's evaluation.
SELECTORS = [
    {"n": {"$gt": 2}},
    {"n": {"$lte": 1}},
    {"tag": "x"},
    {"tag": {"$ne": "x"}},
    {"tag": {"$in": ["x", "y"]}},
    {"tag": {"$nin": ["x"]}},
    {"opt": {"$exists": True}},
    {"opt": {"$exists": False}},
    {"list": {"$size": 2}},
    {"list": {"$all": ["a"]}},
    {"list": {"$elemMatch": {"$eq": "b"}}},
    {"n": {"$mod": [2, 0]}},
    {"tag": {"$regex": "^x"}},
    {"$or": [{"n": 0}, {"tag": "y"}]},
    {"$and": [{"n": {"$gte": 1}}, {"n": {"$lt": 4}}]},
    {"n": {"$not": {"$eq": 3}}},
    {"$nor": [{"tag": "x"}, {"n": 5}]},
    {"sub.k": 1},
    {"n": {"$type": "number"}},
]


def test_mango_selectors_agree_with_python(data_daemon):
    data = setup_instance(data_daemon)
    docs = []
    for n in range(8):
        doc = {
            "_id": f"m{n}",
            "n": n,
            "tag": ["x", "y", "z"][n % 3],
            "list": [["a", "b"], ["b"], ["a"]][n % 3],
            "sub": {"k": n % 2},
        }
        if n % 2:
            doc["opt"] = n
        docs.append(doc)
    assert data.post("/io.cozy.notes/_bulk_docs", {"docs": docs}).status == 201
    # An index on _id serves any selector on CouchDB and on the embedded
    # engine; pouchdb-server only uses an index on a field of the selector.
    for fields in (["_id"], ["n"], ["tag"], ["list"], ["opt"], ["sub.k"]):
        assert (
            data.post("/io.cozy.notes/_index", {"index": {"fields": fields}}).status == 200
        )
    answered = 0
    for selector in SELECTORS:
        response = data.post("/io.cozy.notes/_find", {"selector": selector, "limit": 1000})
        if response.status == 400 and not like_couchdb(data_daemon):
            continue  # no index used, or an operator pouchdb-server lacks
        assert response.status == 200, (selector, response.body)
        answered += 1
        normalized = mango.normalize(selector)
        expected = sorted(d["_id"] for d in docs if mango.matches(normalized, d))
        assert sorted(d["_id"] for d in response.json()["docs"]) == expected, selector
    assert answered >= (len(SELECTORS) if like_couchdb(data_daemon) else 5)


def test_a_lone_surrogate_in_an_id_is_a_400_on_both_engines(data_daemon):
    data = setup_instance(data_daemon)
    assert data.post("/io.cozy.events/", {"n": 1}).status == 201
    reason = "a lone surrogate (\\uD800-\\uDFFF) is not valid Unicode"
    for path, body in (
        ("", b'{"title": "half \\ud800 a pair"}'),
        ("_index", b'{"index": {"fields": ["\\ud800"]}}'),
        ("_bulk_docs", b'{"docs": [{"_id": "ok"}, {"_id": "x\\ud800"}]}'),
        (
            "_bulk_docs",
            b'{"docs": [{"_id": "\\udfff", "_rev": "1-abc"}], "new_edits": false}',
        ),
        ("_all_docs", b'{"keys": ["\\ud800"]}'),
        ("_bulk_get", b'{"docs": [{"id": "\\ud800"}]}'),
        ("_revs_diff", b'{"\\ud800": ["1-abc"]}'),
    ):
        response = data.post(f"/io.cozy.events/{path}", raw=body)
        assert response.status == 400, (path, response.body)
        assert {**response.json(), "ok": False, "status": "400"} == {
            "ok": False,
            "status": "400",
            "error": "bad_request",
            "reason": reason,
        }
    assert (
        data.get("/io.cozy.events/_all_docs").json()["total_rows"] == 1
    )  # nothing written
