"""The storage contract: Mango indexes and ``find`` (both engines).

pouchdb-server implements the common operators, ``sort``, ``fields``,
``limit`` and ``skip`` like CouchDB; what it does not (bookmarks, execution
statistics, partial indexes, the default limit, refusing sorts without an
index, ``$ne`` on missing fields…) is in ``realcouchdb`` tests.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from cozyd.storage.interface import DatabaseNotFound, InvalidRequest, StorageError
from tests.storage import test_contract as contract

# The fixtures of the contract suite.
db = contract.db
created = contract.created

PEOPLE = [
    {
        "_id": "p01",
        "type": "person",
        "name": "alice",
        "age": 31,
        "tags": ["a", "b"],
        "address": {"city": "lyon", "zip": "69001"},
        "score": 7,
    },
    {
        "_id": "p02",
        "type": "person",
        "name": "bob",
        "age": 25,
        "tags": ["b"],
        "address": {"city": "paris", "zip": "75001"},
        "score": 10,
    },
    {
        "_id": "p03",
        "type": "person",
        "name": "carol",
        "age": 42,
        "tags": [],
        "address": {"city": "lyon", "zip": "69002"},
    },
    {
        "_id": "p04",
        "type": "person",
        "name": "dave",
        "age": 25,
        "tags": ["c", "a", "b"],
        "pets": [{"kind": "cat", "age": 3}, {"kind": "dog", "age": 9}],
    },
    {"_id": "p05", "type": "robot", "name": "eve", "age": 3, "active": True},
    {"_id": "p06", "type": "robot", "name": "frank", "age": None, "active": False},
]


@pytest_twisted.async_fixture
async def people(store, created):
    await store.bulk_docs(created, [dict(doc) for doc in PEOPLE])
    await store.put_doc(created, {"_id": "_design/app", "views": {}})
    return created


def ids(result):
    return [doc["_id"] for doc in result["docs"]]


# -- indexes -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_create_index(store, created):
    first = await store.create_index(created, ["name"])
    assert first["result"] == "created"
    assert first["id"].startswith("_design/") and first["name"]
    again = await store.create_index(created, ["name"])
    assert again == {**first, "result": "exists"}
    named = await store.create_index(
        created, ["type", "name"], ddoc="by-type", name="by-type"
    )
    assert named == {"result": "created", "id": "_design/by-type", "name": "by-type"}
    same = await store.create_index(
        created, ["type", "name"], ddoc="_design/by-type", name="by-type"
    )
    assert same["result"] == "exists"


@pytest_twisted.ensureDeferred
async def test_an_index_is_a_query_design_document(store, created):
    result = await store.create_index(
        created, ["type", "name"], ddoc="by-type", name="by-type"
    )
    ddoc = await store.get_doc(created, result["id"])
    assert ddoc["language"] == "query"
    view = ddoc["views"]["by-type"]
    assert view["map"]["fields"] == {"type": "asc", "name": "asc"}
    assert view["reduce"] == "_count"
    assert view["options"]["def"]["fields"] == ["type", "name"]
    assert [row["id"] for row in (await store.all_docs(created))["rows"]] == [
        "_design/by-type"
    ]


@pytest_twisted.ensureDeferred
async def test_list_indexes(store, created):
    await store.create_index(created, ["type", "name"], ddoc="by-type", name="by-type")
    listing = await store.list_indexes(created)
    assert listing["total_rows"] == 2
    special, index = listing["indexes"]
    assert special == {
        "ddoc": None,
        "name": "_all_docs",
        "type": "special",
        "def": {"fields": [{"_id": "asc"}]},
    }
    assert (index["ddoc"], index["name"], index["type"]) == (
        "_design/by-type",
        "by-type",
        "json",
    )
    assert index["def"]["fields"] == [{"type": "asc"}, {"name": "asc"}]


@pytest_twisted.ensureDeferred
async def test_index_and_find_need_the_database(store, db):
    with pytest.raises(DatabaseNotFound):
        await store.create_index(db, ["name"])
    with pytest.raises(DatabaseNotFound):
        await store.list_indexes(db)


# -- find ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_find_with_an_index(store, people):
    await store.create_index(people, ["type", "name"], ddoc="by-type", name="by-type")
    result = await store.find(
        people,
        {
            "selector": {"type": "person", "name": {"$gt": "b"}},
            "sort": ["type", "name"],
            "fields": ["_id", "name"],
        },
    )
    assert result["docs"] == [
        {"_id": "p02", "name": "bob"},
        {"_id": "p03", "name": "carol"},
        {"_id": "p04", "name": "dave"},
    ]
    assert "warning" not in result


@pytest_twisted.ensureDeferred
async def test_find_sorted_descending_with_limit_and_skip(store, people):
    await store.create_index(people, ["type", "name"], ddoc="by-type", name="by-type")
    result = await store.find(
        people,
        {
            "selector": {"type": "person"},
            "sort": [{"type": "desc"}, {"name": "desc"}],
            "limit": 2,
            "skip": 1,
        },
    )
    assert ids(result) == ["p03", "p02"]


@pytest_twisted.ensureDeferred
async def test_find_by_a_number_index(store, people):
    await store.create_index(people, ["age"], ddoc="by-age", name="by-age")
    result = await store.find(
        people, {"selector": {"age": {"$gte": 25, "$lt": 42}}, "sort": ["age"]}
    )
    assert [doc["age"] for doc in result["docs"]] == [25, 25, 31]
    assert sorted(ids(result)[:2]) == ["p02", "p04"]


@pytest_twisted.ensureDeferred
async def test_find_use_index(store, people):
    await store.create_index(people, ["type", "name"], ddoc="a-by-name", name="by-name")
    await store.create_index(people, ["type", "age"], ddoc="b-by-age", name="by-age")
    selector = {"type": "person", "name": {"$gt": ""}, "age": {"$gt": 0}}
    result = await store.find(people, {"selector": selector, "use_index": "b-by-age"})
    # The index asked for gives the order: by type then age (ties by id).
    assert ids(result) == ["p02", "p04", "p01", "p03"]
    assert "warning" not in result
    result = await store.find(
        people, {"selector": selector, "use_index": ["_design/a-by-name", "by-name"]}
    )
    assert ids(result) == ["p01", "p02", "p03", "p04"]


@pytest_twisted.ensureDeferred
async def test_find_without_an_index_scans_and_warns(store, people):
    result = await store.find(people, {"selector": {"address.city": "lyon"}})
    assert ids(result) == ["p01", "p03"]
    assert "no matching index found" in result["warning"].lower()


@pytest_twisted.ensureDeferred
async def test_find_fields(store, people):
    result = await store.find(
        people,
        {"selector": {"_id": "p01"}, "fields": ["name", "address.city", "missing"]},
    )
    assert result["docs"] == [{"name": "alice", "address": {"city": "lyon"}}]


COMMON_QUERIES = [
    ({"type": "robot"}, ["p05", "p06"]),
    ({"type": {"$eq": "robot"}}, ["p05", "p06"]),
    ({"age": {"$gt": 25}}, ["p01", "p03"]),
    ({"age": {"$gte": 25, "$lte": 31}}, ["p01", "p02", "p04"]),
    ({"age": {"$lt": 25}}, ["p05", "p06"]),  # null sorts before numbers
    ({"age": None}, ["p06"]),
    ({"name": {"$in": ["bob", "eve", "zed"]}}, ["p02", "p05"]),
    ({"score": {"$exists": True}}, ["p01", "p02"]),
    ({"type": "person", "score": {"$exists": False}}, ["p03", "p04"]),
    ({"$or": [{"name": "alice"}, {"age": 3}]}, ["p01", "p05"]),
    ({"$and": [{"type": "person"}, {"age": 25}]}, ["p02", "p04"]),
    ({"address.city": "lyon", "address.zip": {"$gt": "69001"}}, ["p03"]),
    ({"address": {"city": "paris"}}, ["p02"]),
    ({"name": {"$regex": "^[a-c]"}}, ["p01", "p02", "p03"]),
    ({"tags": {"$size": 1}}, ["p02"]),
    ({"tags": {"$all": ["a", "b"]}}, ["p01", "p04"]),
    ({"tags": {"$elemMatch": {"$eq": "c"}}}, ["p04"]),
    ({"pets": {"$elemMatch": {"kind": "dog", "age": {"$gt": 5}}}}, ["p04"]),
    ({"tags": ["b"]}, ["p02"]),
    ({"active": True}, ["p05"]),
    ({"_id": {"$gt": "p04"}}, ["p05", "p06"]),
]


@pytest.mark.parametrize(
    ("selector", "expected"), COMMON_QUERIES, ids=[str(q) for q, _ in COMMON_QUERIES]
)
@pytest_twisted.ensureDeferred
async def test_find_operators(store, people, selector, expected):
    result = await store.find(people, {"selector": selector})
    assert sorted(ids(result)) == expected


COUCHDB_QUERIES = [
    # A field that is not there matches nothing but {"$exists": false}.
    ({"score": {"$ne": 7}}, ["p02"]),
    ({"score": {"$nin": [7]}}, ["p02"]),
    ({"$not": {"score": 7}}, ["p02"]),
    ({"$nor": [{"score": 7}, {"type": "robot"}]}, ["p02"]),
    ({"score": {"$not": {"$gt": 8}}}, ["p01"]),
    ({"age": {"$type": "null"}}, ["p06"]),
    ({"age": {"$type": "number"}, "type": "robot"}, ["p05"]),
    ({"age": {"$mod": [5, 0]}}, ["p02", "p04"]),
    ({"name": {"$beginsWith": "ca"}}, ["p03"]),
    ({"pets": {"$allMatch": {"age": {"$gt": 2}}}}, ["p04"]),
    ({"address": {"$keyMapMatch": {"$eq": "zip"}}, "name": "bob"}, ["p02"]),
    # An array matches $in when one of its elements does.
    ({"tags": {"$in": ["c"]}}, ["p04"]),
]


@pytest.mark.realcouchdb  # pouchdb-server's matcher differs on these
@pytest.mark.parametrize(
    ("selector", "expected"), COUCHDB_QUERIES, ids=[str(q) for q, _ in COUCHDB_QUERIES]
)
@pytest_twisted.ensureDeferred
async def test_find_operators_as_couchdb_does(store, people, selector, expected):
    result = await store.find(people, {"selector": selector})
    assert sorted(ids(result)) == expected


@pytest.mark.realcouchdb  # pouchdb-server returns design documents too
@pytest_twisted.ensureDeferred
async def test_find_never_returns_design_documents(store, people):
    result = await store.find(people, {"selector": {}, "limit": 100})
    assert ids(result) == [doc["_id"] for doc in PEOPLE]


@pytest.mark.realcouchdb  # pouchdb-server sorts without an index
@pytest_twisted.ensureDeferred
async def test_a_sort_without_index_is_refused(store, people):
    with pytest.raises(StorageError) as caught:
        await store.find(people, {"selector": {"age": {"$gt": 0}}, "sort": ["age"]})
    assert caught.value.status == 400
    assert caught.value.code == "no_usable_index"


@pytest.mark.realcouchdb  # pouchdb-server has no default limit
@pytest_twisted.ensureDeferred
async def test_find_returns_25_documents_by_default(store, created):
    await store.bulk_docs(created, [{"_id": f"d{i:02}"} for i in range(30)])
    assert len((await store.find(created, {"selector": {}}))["docs"]) == 25


@pytest.mark.realcouchdb  # pouchdb-server has no bookmarks
@pytest_twisted.ensureDeferred
async def test_find_pages_with_bookmarks(store, created):
    await store.bulk_docs(
        created, [{"_id": f"d{i:02}", "group": "g", "n": i % 4} for i in range(10)]
    )
    await store.create_index(created, ["group", "n"], ddoc="by-n", name="by-n")
    query = {"selector": {"group": "g"}, "sort": ["group", "n"], "limit": 4}
    pages, bookmark = [], None
    while True:
        result = await store.find(
            created, {**query, **({"bookmark": bookmark} if bookmark else {})}
        )
        pages.append(ids(result))
        if not result["docs"]:
            break
        bookmark = result["bookmark"]
        assert isinstance(bookmark, str) and bookmark
    assert [len(page) for page in pages] == [4, 4, 2, 0]
    every = [doc_id for page in pages for doc_id in page]
    assert every == [
        "d00",
        "d04",
        "d08",
        "d01",
        "d05",
        "d09",
        "d02",
        "d06",
        "d03",
        "d07",
    ]


@pytest.mark.realcouchdb  # pouchdb-server gives no execution statistics
@pytest_twisted.ensureDeferred
async def test_an_index_examines_fewer_documents(store, created):
    await store.bulk_docs(
        created, [{"_id": f"d{i:03}", "kind": f"k{i % 20}"} for i in range(200)]
    )
    await store.create_index(created, ["kind"], ddoc="by-kind", name="by-kind")
    result = await store.find(
        created, {"selector": {"kind": "k3"}, "execution_stats": True}
    )
    assert len(result["docs"]) == 10
    stats = result["execution_stats"]
    assert stats["results_returned"] == 10
    assert stats["total_docs_examined"] < 200
    assert "warning" not in result


@pytest.mark.realcouchdb  # pouchdb-server does not apply partial filters
@pytest_twisted.ensureDeferred
async def test_partial_indexes(store, people):
    await store.create_index(
        people,
        ["name"],
        ddoc="robots",
        name="robots",
        partial_filter_selector={"type": {"$eq": "robot"}},
    )
    listing = (await store.list_indexes(people))["indexes"]
    [robots] = [index for index in listing if index["name"] == "robots"]
    assert robots["def"]["partial_filter_selector"] == {"type": {"$eq": "robot"}}
    # Not used unless asked for: it may not hold every match.
    plain = await store.find(people, {"selector": {"name": {"$gt": "a"}}, "limit": 100})
    assert len(plain["docs"]) == 6 and "warning" in plain
    asked = await store.find(
        people, {"selector": {"name": {"$gt": "a"}}, "use_index": "robots"}
    )
    assert ids(asked) == ["p05", "p06"]


@pytest.mark.realcouchdb  # pouchdb-server names its errors differently
@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"selector": {"name": {"$unknown": 1}}}, "invalid_operator"),
        ({"selector": {"name": {"$in": "not a list"}}}, "bad_arg"),
        ({"selector": {}, "sort": ["a", {"b": "desc"}]}, "unsupported_mixed_sort"),
        ({"selector": {}, "limit": -1}, "invalid_non_neg_integer"),
        ({"selector": {}, "unknown": 1}, "invalid_key"),
        ({}, "missing_required_key"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_queries(store, people, query, code):
    with pytest.raises(InvalidRequest) as caught:
        await store.find(people, query)
    assert caught.value.status == 400
    assert caught.value.code == code


@pytest.mark.realcouchdb  # pouchdb-server keeps documents missing a sort field
@pytest_twisted.ensureDeferred
async def test_a_sort_field_must_exist(store, people):
    await store.create_index(people, ["score"], ddoc="by-score", name="by-score")
    result = await store.find(people, {"selector": {"type": "person"}, "sort": ["score"]})
    assert ids(result) == ["p01", "p02"]


@pytest_twisted.ensureDeferred
async def test_find_results_are_documents(store, people):
    [doc] = (await store.find(people, {"selector": {"name": "eve"}}))["docs"]
    assert re.fullmatch(r"1-[0-9a-f]{32}", doc["_rev"])
    assert doc == {**PEOPLE[4], "_rev": doc["_rev"]}


@pytest_twisted.ensureDeferred
async def test_require_index_refuses_full_scans(store, prefix):
    from cozyd.storage.interface import NoIndex

    db = f"{prefix}/io-cozy-require"
    await store.create_db(db)
    await store.put_doc(db, {"_id": "a", "n": 1})
    with pytest.raises(NoIndex):
        await store.find(db, {"selector": {"n": 1}}, require_index=True)
    found = await store.find(db, {"selector": {"n": 1}})  # CouchDB scans, warns
    assert [d["_id"] for d in found["docs"]] == ["a"]
    await store.create_index(db, ["n"], ddoc="by-n", name="by-n")
    found = await store.find(db, {"selector": {"n": 1}}, require_index=True)
    assert [d["_id"] for d in found["docs"]] == ["a"]


# -- regular expressions and big indexes (issue 7) ------------------------------
CATASTROPHIC = "(a+)+$"  # exponential for a backtracking engine


@pytest.mark.realcouchdb  # pouchdb-server's JavaScript regexes backtrack
@pytest_twisted.ensureDeferred
async def test_a_catastrophic_regex_answers_at_once(store, created):
    import time

    await store.bulk_docs(
        created,
        [
            {"_id": "no", "v": "a" * 40 + "!"},
            {"_id": "yes", "v": "a" * 40},
        ],
    )
    started = time.monotonic()
    found = await store.find(created, {"selector": {"v": {"$regex": CATASTROPHIC}}})
    changes = await store.changes(created, selector={"v": {"$regex": CATASTROPHIC}})
    assert time.monotonic() - started < 5  # a backtracking matcher: hours
    assert ids(found) == ["yes"]
    assert [row["id"] for row in changes["results"]] == ["yes"]


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)a", "(?<!b)a"])
@pytest_twisted.ensureDeferred
async def test_regexes_a_linear_engine_cannot_run_are_refused(
    store, created, engine, pattern
):
    """RE2 has no backreferences nor lookarounds: the embedded engine
    refuses them with CouchDB's bad_arg, as the selector filter of
    ``_changes`` does on both engines (cozyd evaluates it)."""
    selector = {"v": {"$regex": pattern}}
    with pytest.raises(InvalidRequest) as caught:
        await store.changes(created, selector=selector)
    assert caught.value.code == "bad_arg"
    assert "not supported" in caught.value.detail
    if engine == "embedded":
        with pytest.raises(InvalidRequest) as caught:
            await store.find(created, {"selector": selector})
        assert caught.value.code == "bad_arg"


@pytest_twisted.ensureDeferred
async def test_an_index_of_too_many_fields_is_a_clear_error(store, created, engine):
    from cozyd.storage.mango import MAX_INDEX_FIELDS

    doc = {"_id": "wide", **{f"f{i}": i for i in range(1000)}}
    await store.put_doc(created, doc)
    fields = [f"f{i}" for i in range(MAX_INDEX_FIELDS)]
    await store.create_index(created, fields, ddoc="wide", name="wide")
    selector = {name: int(name[1:]) for name in fields}
    assert ids(await store.find(created, {"selector": selector})) == ["wide"]
    if engine == "embedded":  # CouchDB itself takes 1,000 fields
        with pytest.raises(InvalidRequest) as caught:
            await store.create_index(created, [f"f{i}" for i in range(1000)])
        assert caught.value.code == "invalid_index"
    # A selector of 1,000 conditions still answers on both.
    selector = {f"f{i}": i for i in range(1000)}
    assert ids(await store.find(created, {"selector": selector})) == ["wide"]
    wide_or = {"$or": [{f"f{i}": -1} for i in range(1000)] + [{"f0": 0}]}
    assert ids(await store.find(created, {"selector": wide_or})) == ["wide"]
