"""/data collection routes through HTTP, in memory: databases,
``_all_docs``, ``_normal_docs``, Mango ``_index``/``_find``, design
documents, ``_all_doctypes`` and ``_changes``."""

import pytest

from tests.support.data import Data, cli_token, new_instance, seq_number


@pytest.fixture
def data(admin, public):
    new_instance(admin)
    return Data(public, cli_token(admin))


def fill(data, doctype="io.cozy.events", count=3, **extra):
    ids = []
    for n in range(count):
        ids.append(
            data.create(
                doctype,
                {
                    "n": n,
                    "test": "value",
                    "foo": {"bar": "one", "baz": "two", "qux": "quux"},
                    **extra,
                },
            )["id"]
        )
    return ids


# -- databases ----------------------------------------------------------------
def test_database_create_info_delete(data):
    assert data.get("/io.cozy.fresh/").json() == {
        "ok": False,
        "status": "404",
        "error": "not_found",
        "reason": "Database does not exist.",
    }
    created = data.put("/io.cozy.fresh/")
    assert (created.status, created.json()) == (201, {"ok": True})
    again = data.put("/io.cozy.fresh/")
    assert again.status == 412
    assert again.json()["error"] == "file_exists"  # CouchDB's body, proxied
    data.create("io.cozy.fresh", {"a": 1})
    info = data.get("/io.cozy.fresh").json()
    assert info["doc_count"] == 1 and info["doc_del_count"] == 0
    assert isinstance(info["update_seq"], str)
    assert {"db_name", "sizes", "purge_seq", "instance_start_time"} <= set(info)
    deleted = data.delete("/io.cozy.fresh/")
    assert (deleted.status, deleted.json()) == (200, {"ok": True, "deleted": True})
    assert data.delete("/io.cozy.fresh/").status == 404
    assert data.put("/io.cozy.files/").status == 403
    assert data.delete("/io.cozy.files/").status == 403


def test_database_routes_need_the_whole_type(admin, public):
    new_instance(admin)
    reader = Data(public, cli_token(admin, "io.cozy.events:GET"))
    assert reader.put("/io.cozy.events/").status == 403  # creating needs POST
    assert reader.delete("/io.cozy.events/").status == 403
    Data(public, cli_token(admin)).put("/io.cozy.events/")
    assert reader.get("/io.cozy.events/").status == 200


# -- _all_docs -------------------------------------------------------------------
def test_all_docs(data):
    ids = ["doc1", "doc2", "doc3"]
    for n, doc_id in enumerate(ids):
        data.put(
            f"/io.cozy.events/{doc_id}",
            {"n": n, "foo": {"bar": "one", "baz": "two", "qux": "quux"}},
        )
    data.post("/io.cozy.events/_index", {"index": {"fields": ["n"]}, "ddoc": "by-n"})
    everything = data.get("/io.cozy.events/_all_docs", params={"include_docs": "true"})
    assert everything.status == 200
    body = everything.json()
    assert body["total_rows"] == 4 and body["offset"] == 0
    # Raw collation of ids, as CouchDB: "_design/" between digits and letters.
    assert [row["id"] for row in body["rows"]] == ["_design/by-n", *ids]
    first = next(row for row in body["rows"] if row["id"] == ids[0])
    assert first["doc"]["foo"] == {"bar": "one", "baz": "two", "qux": "quux"}
    page = data.get(
        "/io.cozy.events/_all_docs",
        params={
            "limit": "1",
            "skip": "1",
            "startkey": f'"{ids[0]}"',
            "descending": "false",
        },
    ).json()
    assert [row["id"] for row in page["rows"]] == [ids[1]]
    assert "doc" not in page["rows"][0]
    backwards = data.get(
        "/io.cozy.events/_all_docs", params={"descending": "true", "endkey": f'"{ids[1]}"'}
    ).json()
    assert [row["id"] for row in backwards["rows"]] == [ids[2], ids[1]]
    keys = data.post(
        "/io.cozy.events/_all_docs",
        {"keys": [ids[2], "ghost"]},
        params={"include_docs": "true"},
    )
    assert keys.status == 200
    rows = keys.json()["rows"]
    assert rows[0]["id"] == ids[2] and rows[0]["doc"]["_id"] == ids[2]
    assert rows[1] == {"key": "ghost", "error": "not_found"}
    bad = data.get("/io.cozy.events/_all_docs", params={"limit": "many"})
    assert bad.status == 400
    assert bad.json()["error"] == "query_parse_error"
    assert data.get("/io.cozy.events/_all_docs", params={"startkey": "nope"}).status == 400


def test_all_docs_fields_and_design_docs(data):
    ids = sorted(fill(data))
    data.post("/io.cozy.events/_index", {"index": {"fields": ["n"]}, "ddoc": "by-n"})
    no_design = data.get("/io.cozy.events/_all_docs", params={"DesignDocs": "false"}).json()
    assert [row["id"] for row in no_design["rows"]] == ids
    assert no_design["total_rows"] == 3
    assert no_design["rows"][0]["doc"]["test"] == "value"  # documents always included
    fields = data.get(
        "/io.cozy.events/_all_docs",
        params={"include_docs": "true", "Fields": "test,nosuchfield,foo.qux"},
    ).json()
    assert fields["total_rows"] == 4 and fields["offset"] == 0
    first = next(row for row in fields["rows"] if row["id"] == ids[0])
    assert first["id"] == ids[0] and "key" not in first and first["rev"].startswith("1-")
    assert first["doc"] == {"test": "value", "foo": {"qux": "quux"}}


# -- _normal_docs ----------------------------------------------------------------
def test_normal_docs_paginates_without_design_docs(data):
    fill(data, count=3)
    data.put("/io.cozy.events/four", {"test": "fourthvalue"})
    data.post("/io.cozy.events/_index", {"index": {"fields": ["n"]}})
    first = data.get("/io.cozy.events/_normal_docs", params={"limit": "2"}).json()
    assert first["total_rows"] == 4
    assert len(first["rows"]) == 2 and first["bookmark"]
    assert "execution_stats" not in first
    by_skip = data.get("/io.cozy.events/_normal_docs", params={"limit": "2", "skip": "2"})
    by_bookmark = data.get(
        "/io.cozy.events/_normal_docs", params={"bookmark": first["bookmark"], "limit": "2"}
    )
    for response in (by_skip, by_bookmark):
        body = response.json()
        assert body["total_rows"] == 4
        assert [row["_id"] for row in body["rows"]] == [
            row["_id"] for row in by_skip.json()["rows"]
        ]
        assert body["rows"][1]["test"] == "fourthvalue"
    seen = {row["_id"] for row in first["rows"] + by_skip.json()["rows"]}
    assert len(seen) == 4 and not any(i.startswith("_design") for i in seen)
    assert (
        data.get("/io.cozy.events/_normal_docs", params={"limit": "5000"}).json()[
            "total_rows"
        ]
        == 4
    )


def test_normal_docs_of_an_empty_database(data):
    data.put("/io.cozy.fresh/")
    empty = data.get("/io.cozy.fresh/_normal_docs").json()
    assert empty == {"total_rows": 0, "rows": [], "bookmark": ""}
    stats = data.get("/io.cozy.fresh/_normal_docs", params={"execution_stats": "true"})
    assert isinstance(stats.json()["execution_stats"], dict)
    assert data.get("/io.cozy.nottype/_normal_docs").status == 404


# -- Mango -------------------------------------------------------------------------
def test_index_creation(data):
    created = data.post("/io.cozy.fresh/_index", {"index": {"fields": ["foo"]}})
    assert created.status == 200
    body = created.json()
    assert (
        body["result"] == "created" and body["id"].startswith("_design/") and body["name"]
    )
    again = data.post("/io.cozy.fresh/_index", {"index": {"fields": ["foo"]}})
    assert again.json() == {**body, "result": "exists"}
    named = data.post(
        "/io.cozy.fresh/_index",
        {"index": {"fields": ["a", "b"]}, "ddoc": "my-ddoc", "name": "by-a-b"},
    )
    assert named.json() == {"result": "created", "id": "_design/my-ddoc", "name": "by-a-b"}
    for bad in (
        {},
        {"index": "x"},
        {"index": {"fields": "foo"}},
        {"index": {}},
        {"index": {"fields": [{"foo": "sideways"}]}},
        {"index": {"fields": ["x"]}, "type": "text"},
    ):
        response = data.post("/io.cozy.fresh/_index", bad)
        assert response.status == 400, (bad, response.body)
    assert (
        data.post("/io.cozy.permissions/_index", {"index": {"fields": ["a"]}}).status == 403
    )


def test_find_needs_an_index(data):
    fill(data)
    unindexed = data.post("/io.cozy.events/_find", {"selector": {"n": 1}})
    assert unindexed.status == 400
    assert unindexed.json() == {
        "ok": False,
        "status": "400",
        "error": "no_index",
        "reason": "no matching index found, create an index",
    }
    data.post("/io.cozy.events/_index", {"index": {"fields": ["n"]}, "ddoc": "by-n"})
    found = data.post(
        "/io.cozy.events/_find",
        {"selector": {"n": {"$gt": 0}}, "fields": ["_id", "n"], "sort": ["n"]},
    )
    assert found.status == 200
    body = found.json()
    assert [doc["n"] for doc in body["docs"]] == [1, 2]
    assert set(body["docs"][0]) == {"_id", "n"}
    assert body["limit"] == 100 and body["next"] is False and "bookmark" in body
    unsortable = data.post(
        "/io.cozy.events/_find", {"selector": {"n": 1}, "sort": ["test"]}
    )
    assert unsortable.status == 400
    assert unsortable.json()["error"] == "no_usable_index"
    assert (
        data.post("/io.cozy.events/_find", {"selector": {"n": {"$bogus": 1}}}).status == 400
    )
    assert (
        data.post(
            "/io.cozy.events/_find", {"selector": {"n": 1}, "use_index": "by-n"}
        ).status
        == 200
    )


def test_find_limits_and_bookmarks(data):
    docs = [{"kind": "x", "n": n} for n in range(230)]
    assert data.post("/io.cozy.events/_bulk_docs", {"docs": docs}).status == 201
    data.post("/io.cozy.events/_index", {"index": {"fields": ["kind", "n"]}})
    query = {"selector": {"kind": "x", "n": {"$gte": 0}}, "sort": ["kind", "n"]}
    default = data.post("/io.cozy.events/_find", query).json()
    assert (
        default["limit"] == 100 and len(default["docs"]) == 100 and default["next"] is True
    )
    too_big = data.post("/io.cozy.events/_find", {**query, "limit": 5000}).json()
    assert too_big["limit"] == 100 and len(too_big["docs"]) == 100
    largest = data.post("/io.cozy.events/_find", {**query, "limit": 1000}).json()
    assert largest["limit"] == 1000 and len(largest["docs"]) == 230
    assert largest["next"] is False
    seen, bookmark = [], None
    for _ in range(4):
        page = data.post(
            "/io.cozy.events/_find",
            {**query, "limit": 100, **({"bookmark": bookmark} if bookmark else {})},
        )
        body = page.json()
        seen += [doc["n"] for doc in body["docs"]]
        bookmark = body["bookmark"]
        if not body["next"]:
            break
    assert seen == list(range(230))
    stats = data.post(
        "/io.cozy.events/_find", {**query, "limit": 10, "execution_stats": True}
    ).json()
    assert stats["execution_stats"]["results_returned"] == 10
    assert stats["execution_stats"]["total_docs_examined"] <= 20  # served by the index


# -- design documents ------------------------------------------------------------
def test_design_documents(data):
    data.post("/io.cozy.events/_index", {"index": {"fields": ["foo"]}, "ddoc": "myindex"})
    data.post("/io.cozy.events/_index", {"index": {"fields": ["bar"]}})
    listing = data.get("/io.cozy.events/_design_docs")
    assert listing.status == 200
    rows = listing.json()["rows"]
    assert len(rows) == 2 and listing.json()["total_rows"] == 2
    assert all(row["id"].startswith("_design/") and row["value"]["rev"] for row in rows)
    ddoc = data.get("/io.cozy.events/_design/myindex")
    assert ddoc.status == 200
    assert ddoc.json()["_id"] == "_design/myindex" and ddoc.json()["_rev"]
    assert ddoc.json()["language"] == "query"
    assert data.get("/io.cozy.events/_design/nope").json() == {
        "error": "not_found",
        "reason": "missing",
    }

    norev = data.delete("/io.cozy.events/_design/myindex")
    assert (norev.status, norev.json()) == (400, {"error": "You must pass a rev param"})
    rev = ddoc.json()["_rev"]

    no_destination = data.post("/io.cozy.events/_design/myindex/copy")
    assert (no_destination.status, no_destination.json()) == (
        400,
        "You must set a Destination header",
    )
    copied = data.post(
        "/io.cozy.events/_design/myindex/copy",
        headers={"Destination": "_design/indexcopied"},
    )
    assert copied.status == 201
    assert copied.json()["id"] == "_design/indexcopied" and copied.json()["ok"] is True
    copy = data.get("/io.cozy.events/_design/indexcopied").json()
    assert copy["views"] == ddoc.json()["views"]
    assert (
        data.post(
            "/io.cozy.events/_design/myindex/copy", headers={"Destination": "plain-doc"}
        ).status
        == 400
    )

    deleted = data.delete("/io.cozy.events/_design/myindex", params={"rev": rev})
    assert deleted.status == 200
    assert deleted.json()["ok"] is True and deleted.json()["id"] == "_design/myindex"
    assert len(data.get("/io.cozy.events/_design_docs").json()["rows"]) == 2  # copy + bar


def test_stack_design_documents_are_protected(data):
    rows = data.get("/io.cozy.files/_design_docs").json()["rows"]
    revs = {row["id"]: row["value"]["rev"] for row in rows}
    assert "_design/dir-by-path" in revs
    refused = data.delete(
        "/io.cozy.files/_design/dir-by-path", params={"rev": revs["_design/dir-by-path"]}
    )
    assert (refused.status, refused.json()) == (
        403,
        {"error": "This design doc cannot be deleted"},
    )
    assert (
        data.delete(
            "/io.cozy.files/_design/by-parent-type-name", params={"rev": "1-x"}
        ).status
        == 403
    )
    assert data.get("/io.cozy.files/_design/dir-by-path").status == 200


# -- _all_doctypes ---------------------------------------------------------------
def test_all_doctypes(admin, public, data):
    data.create("io.cozy.events", {"a": 1})
    listing = data.get("/_all_doctypes")
    assert listing.status == 200
    doctypes = listing.json()
    assert "io.cozy.events" in doctypes and "io.cozy.files" in doctypes
    assert "io.cozy.permissions" not in doctypes  # unreadable
    assert "io.cozy.oauth.clients" not in doctypes
    assert (
        Data(public, cli_token(admin, "io.cozy.events")).get("/_all_doctypes").status == 403
    )


# -- _changes ----------------------------------------------------------------------
def test_changes_feed(data):
    data.put("/io.cozy.events/")
    start = data.get("/io.cozy.events/_changes", params={"style": "all_docs"})
    assert start.status == 200
    since = start.json()["last_seq"]
    assert isinstance(since, str) and start.json()["results"] == []
    ids = fill(data, count=3)
    two = data.get("/io.cozy.events/_changes", params={"limit": "2", "since": since}).json()
    assert [r["id"] for r in two["results"]] == ids[:2]
    assert two["pending"] == 1
    assert set(two["results"][0]) == {"id", "seq", "changes"}
    rest = data.get("/io.cozy.events/_changes", params={"since": two["last_seq"]}).json()
    assert [r["id"] for r in rest["results"]] == ids[2:]
    everything = data.get(
        "/io.cozy.events/_changes", params={"since": since, "include_docs": "true"}
    ).json()
    assert len(everything["results"]) == 3
    assert everything["results"][0]["doc"]["n"] == 0
    down = data.get("/io.cozy.events/_changes", params={"descending": "true"}).json()
    assert [r["id"] for r in down["results"]] == ids[::-1]
    doc = data.get(f"/io.cozy.events/{ids[0]}").json()
    data.delete(f"/io.cozy.events/{ids[0]}", params={"rev": doc["_rev"]})
    last = data.get("/io.cozy.events/_changes", params={"since": rest["last_seq"]}).json()
    assert last["results"][0]["deleted"] is True
    # PouchDB's parameters are accepted.
    assert (
        data.get(
            "/io.cozy.events/_changes",
            params={
                "feed": "normal",
                "heartbeat": "10000",
                "timeout": "30000",
                "_nonce": "x",
                "seq_interval": "100",
                "limit": "0",
            },
        ).status
        == 200
    )
    assert seq_number(last["last_seq"]) > seq_number(since)


@pytest.mark.parametrize(
    "method,params,reason",
    [
        ("GET", {"inlude_docs": "true"}, "Unsupported query parameter 'inlude_docs'"),
        ("POST", {"conflicts": "true"}, "Unsupported query parameter 'conflicts'"),
        ("GET", {"filter": "_doc_ids"}, "Unsupported query parameter 'filter'"),
        ("POST", {"feed": "continuous"}, "Unsuported feed value 'continuous'"),
        ("GET", {"feed": "longpoll"}, "Unsuported feed value 'longpoll'"),
        ("POST", {"style": "not_a_valid_style"}, "Unsuported style value"),
        ("POST", {"limit": "not_a_number"}, "Invalid limit value"),
        ("GET", {"seq_interval": "x"}, "Invalid seq_interval value"),
        ("POST", {"filter": "app/by_type"}, "Unsuported filter value"),
    ],
)
def test_changes_refuses_what_the_reference_refuses(data, method, params, reason):
    data.put("/io.cozy.events/")
    response = data.request(method, "/io.cozy.events/_changes", {}, params=params)
    assert response.status == 400
    assert response.json() == {"error": f"Bad Request(400): {reason}"} or response.json()[
        "error"
    ].startswith(f"Bad Request(400): {reason}")


def test_changes_bad_since(data):
    data.put("/io.cozy.events/")
    response = data.get("/io.cozy.events/_changes", params={"since": "garbage!"})
    assert response.status == 400
    assert data.get("/io.cozy.nottype/_changes").status == 404


def test_filtered_changes(data):
    ids = fill(data, count=4)
    data.post("/io.cozy.events/_index", {"index": {"fields": ["n"]}})
    by_ids = data.post(
        "/io.cozy.events/_changes",
        {"doc_ids": [ids[1], ids[3]]},
        params={"filter": "_doc_ids", "include_docs": "true"},
    )
    assert by_ids.status == 200
    assert [r["id"] for r in by_ids.json()["results"]] == [ids[1], ids[3]]
    selected = data.post(
        "/io.cozy.events/_changes",
        {"selector": {"n": {"$gte": 2}}},
        params={"filter": "_selector"},
    ).json()
    assert [r["id"] for r in selected["results"]] == ids[2:]
    assert "doc" not in selected["results"][0]
    first = data.post(
        "/io.cozy.events/_changes",
        {"selector": {"n": {"$gte": 1}}},
        params={"filter": "_selector", "limit": "1"},
    ).json()
    assert [r["id"] for r in first["results"]] == [ids[1]]
    following = data.post(
        "/io.cozy.events/_changes",
        {"selector": {"n": {"$gte": 1}}},
        params={"filter": "_selector", "since": first["last_seq"]},
    ).json()
    assert [r["id"] for r in following["results"]] == ids[2:]
    design = data.post("/io.cozy.events/_changes", {}, params={"filter": "_design"}).json()
    assert [r["id"][:8] for r in design["results"]] == ["_design/"]
    assert (
        data.post(
            "/io.cozy.events/_changes", {"doc_ids": "x"}, params={"filter": "_doc_ids"}
        ).status
        == 400
    )
    assert (
        data.post("/io.cozy.events/_changes", {}, params={"filter": "_selector"}).status
        == 400
    )
    assert (
        data.post(
            "/io.cozy.events/_changes",
            {"selector": {"n": {"$nope": 1}}},
            params={"filter": "_selector"},
        ).status
        == 400
    )
