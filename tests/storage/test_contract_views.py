"""The storage contract: ``all_docs`` and the changes feed (both engines).

Ids here use lowercase letters and digits only, whose order is the same in
every collation, so the tests do not depend on how an engine orders ids
beyond CouchDB's documented behaviour.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from cozyd.storage.interface import DatabaseNotFound, InvalidRequest
from tests.storage import test_contract as contract
from tests.storage.test_contract import H, replicate

# The fixtures of the contract suite.
db = contract.db
created = contract.created


async def fill(store, db, ids):
    # One write each: the order of documents within one _bulk_docs in the
    # changes feed is not promised (sharded CouchDB, pouchdb-server).
    revs = {}
    for n, doc_id in enumerate(ids):
        revs[doc_id] = (await store.put_doc(db, {"_id": doc_id, "n": n}))["rev"]
    return revs


def ids_of(result):
    return [row["id"] for row in result["rows"]]


# -- all_docs ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_all_docs_lists_live_documents_by_id(store, created):
    revs = await fill(store, created, ["b2", "a1", "c3", "a0"])
    await store.put_doc(created, {"_id": "_design/ddoc", "views": {}})
    await store.delete_doc(created, "c3", revs["c3"])
    result = await store.all_docs(created)
    assert ids_of(result) == ["_design/ddoc", "a0", "a1", "b2"]
    assert result["total_rows"] == 4  # design documents count
    assert result["offset"] == 0
    row = result["rows"][1]
    assert row == {"id": "a0", "key": "a0", "value": {"rev": revs["a0"]}}


@pytest_twisted.ensureDeferred
async def test_all_docs_ranges(store, created):
    await fill(store, created, ["a", "b", "c", "d", "e"])
    assert ids_of(await store.all_docs(created, start_key="b", end_key="d")) == [
        "b",
        "c",
        "d",
    ]
    assert ids_of(
        await store.all_docs(created, start_key="b", end_key="d", inclusive_end=False)
    ) == ["b", "c"]
    assert ids_of(await store.all_docs(created, start_key="bb")) == ["c", "d", "e"]
    assert ids_of(await store.all_docs(created, end_key="b")) == ["a", "b"]
    # Descending: the start key is the high end.
    assert ids_of(
        await store.all_docs(created, descending=True, start_key="d", end_key="b")
    ) == ["d", "c", "b"]
    assert ids_of(
        await store.all_docs(
            created, descending=True, start_key="d", end_key="b", inclusive_end=False
        )
    ) == ["d", "c"]
    assert ids_of(await store.all_docs(created, descending=True)) == [
        "e",
        "d",
        "c",
        "b",
        "a",
    ]


@pytest_twisted.ensureDeferred
async def test_all_docs_limit_and_skip(store, created):
    await fill(store, created, ["a", "b", "c", "d", "e"])
    result = await store.all_docs(created, limit=2, skip=1)
    assert ids_of(result) == ["b", "c"]
    assert result["offset"] == 1 and result["total_rows"] == 5
    assert ids_of(await store.all_docs(created, limit=0)) == []
    assert ids_of(await store.all_docs(created, skip=10)) == []
    assert ids_of(await store.all_docs(created, descending=True, limit=2, skip=1)) == [
        "d",
        "c",
    ]


@pytest_twisted.ensureDeferred
async def test_all_docs_include_docs(store, created):
    revs = await fill(store, created, ["a", "b"])
    result = await store.all_docs(created, include_docs=True)
    assert [row["doc"] for row in result["rows"]] == [
        {"_id": "a", "_rev": revs["a"], "n": 0},
        {"_id": "b", "_rev": revs["b"], "n": 1},
    ]


@pytest_twisted.ensureDeferred
async def test_all_docs_with_conflicts(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    [row] = (await store.all_docs(created, include_docs=True, conflicts=True))["rows"]
    assert row["value"] == {"rev": "2-" + H["c"]}
    assert row["doc"] == {
        "_id": "doc",
        "_rev": "2-" + H["c"],
        "v": "c",
        "_conflicts": ["2-" + H["b"]],
    }


@pytest_twisted.ensureDeferred
async def test_all_docs_by_keys(store, created):
    revs = await fill(store, created, ["a", "b", "c"])
    deleted = await store.delete_doc(created, "b", revs["b"])
    result = await store.all_docs(
        created, keys=["c", "nothing", "b", "a", "c"], include_docs=True
    )
    assert result["total_rows"] == 2
    assert result["rows"] == [
        {
            "id": "c",
            "key": "c",
            "value": {"rev": revs["c"]},
            "doc": {"_id": "c", "_rev": revs["c"], "n": 2},
        },
        {"key": "nothing", "error": "not_found"},
        {
            "id": "b",
            "key": "b",
            "value": {"rev": deleted["rev"], "deleted": True},
            "doc": None,
        },
        {
            "id": "a",
            "key": "a",
            "value": {"rev": revs["a"]},
            "doc": {"_id": "a", "_rev": revs["a"], "n": 0},
        },
        {
            "id": "c",
            "key": "c",
            "value": {"rev": revs["c"]},
            "doc": {"_id": "c", "_rev": revs["c"], "n": 2},
        },
    ]
    without_docs = await store.all_docs(created, keys=["a", "b"])
    assert [row.get("doc", "absent") for row in without_docs["rows"]] == [
        "absent",
        "absent",
    ]


@pytest.mark.realcouchdb  # pouchdb-server reads keys that are not ids as ids
@pytest_twisted.ensureDeferred
async def test_all_docs_by_keys_that_are_not_ids(store, created):
    revs = await fill(store, created, ["a", "1", "true"])
    keys = [1, "a", None, True, {"a": 1}, 1.5, "", "nothing", False]
    result = await store.all_docs(created, keys=keys, include_docs=True)
    rows = result["rows"]
    assert rows[1] == {
        "id": "a",
        "key": "a",
        "value": {"rev": revs["a"]},
        "doc": {"_id": "a", "_rev": revs["a"], "n": 0},
    }
    assert rows[:1] + rows[2:] == [
        {"key": key, "error": "not_found"} for key in keys if key != "a"
    ]
    page = await store.all_docs(created, keys=keys, descending=True, skip=1, limit=2)
    assert page["rows"] == [
        {"key": "nothing", "error": "not_found"},
        {"key": "", "error": "not_found"},
    ]


@pytest_twisted.ensureDeferred
async def test_all_docs_ranges_with_bounds_that_are_not_ids(store, created):
    # Other JSON values sort before every string (CouchDB 3's Erlang order).
    await fill(store, created, ["a", "b", "c"])
    assert ids_of(await store.all_docs(created, start_key=10)) == ["a", "b", "c"]
    assert ids_of(await store.all_docs(created, end_key=10)) == []
    assert ids_of(await store.all_docs(created, start_key=10, end_key=10)) == []
    assert ids_of(await store.all_docs(created, start_key={"x": 1}, end_key="b")) == [
        "a",
        "b",
    ]
    assert ids_of(await store.all_docs(created, descending=True, start_key=10)) == []
    assert ids_of(await store.all_docs(created, descending=True, end_key=False)) == [
        "c",
        "b",
        "a",
    ]


@pytest_twisted.ensureDeferred
async def test_all_docs_by_keys_descending_limit_skip(store, created):
    await fill(store, created, ["a", "b", "c"])
    result = await store.all_docs(
        created, keys=["a", "b", "c"], descending=True, skip=1, limit=1
    )
    assert ids_of(result) == ["b"]


@pytest.mark.realcouchdb  # pouchdb-server sends sequences as numbers
@pytest_twisted.ensureDeferred
async def test_all_docs_update_seq(store, created):
    # Sequences are opaque (CouchDB encodes the same position in more than
    # one way): what a sequence promises is where a feed resumes from.
    await fill(store, created, ["a"])
    result = await store.all_docs(created, update_seq=True)
    assert isinstance(result["update_seq"], str)
    assert (await store.changes(created, since=result["update_seq"]))["results"] == []
    await fill(store, created, ["b"])
    assert change_ids(await store.changes(created, since=result["update_seq"])) == ["b"]


@pytest_twisted.ensureDeferred
async def test_all_docs_refuses_bad_arguments(store, created):
    with pytest.raises(InvalidRequest):
        await store.all_docs(created, limit=-1)
    with pytest.raises(InvalidRequest):
        await store.all_docs(created, skip=-1)


# -- changes -------------------------------------------------------------------
# A sharded CouchDB orders its feed within each shard only: the order of
# different documents in a feed is not part of the contract. The helpers
# give the ids sorted (each document shows at most once) and a row by id.
def change_ids(result):
    ids = [row["id"] for row in result["results"]]
    assert len(ids) == len(set(ids)), f"a document shows twice: {ids}"
    return sorted(ids)


def row_of(result, doc_id):
    [row] = [row for row in result["results"] if row["id"] == doc_id]
    return row


async def assert_at_end(store, db, seq, **filters):
    """``seq`` is the end of the feed: nothing comes after it."""
    assert isinstance(seq, str)
    assert (await store.changes(db, since=seq, **filters))["results"] == []


@pytest.mark.realcouchdb  # pouchdb-server sends sequences as numbers
@pytest_twisted.ensureDeferred
async def test_changes_lists_each_document_once_at_its_last_change(store, created):
    revs = await fill(store, created, ["a", "b", "c"])
    updated = await store.put_doc(created, {"_id": "a", "_rev": revs["a"], "n": 10})
    result = await store.changes(created)
    assert change_ids(result) == ["a", "b", "c"]
    assert row_of(result, "a")["changes"] == [{"rev": updated["rev"]}]
    assert result["last_seq"] == result["results"][-1]["seq"]
    await assert_at_end(store, created, result["last_seq"])
    assert result["pending"] == 0
    assert all(isinstance(row["seq"], str) for row in result["results"])
    assert "doc" not in result["results"][0]


@pytest_twisted.ensureDeferred
async def test_changes_since(store, created):
    revs = await fill(store, created, ["a", "b"])
    first = await store.changes(created, since="0")
    await store.put_doc(created, {"_id": "b", "_rev": revs["b"], "n": 2})
    await fill(store, created, ["c"])
    later = await store.changes(created, since=first["last_seq"])
    assert change_ids(later) == ["b", "c"]
    assert (await store.changes(created, since=later["last_seq"]))["results"] == []
    assert (await store.changes(created, since=0))["results"] != []
    assert (await store.changes(created, since="now"))["results"] == []


@pytest.mark.realcouchdb  # pouchdb-server gives no pending
@pytest_twisted.ensureDeferred
async def test_changes_limit_and_pending(store, created):
    await fill(store, created, ["a", "b", "c", "d"])
    page = await store.changes(created, limit=3)
    assert len(change_ids(page)) == 3
    assert page["last_seq"] == page["results"][-1]["seq"]
    assert page["pending"] == 1
    rest = await store.changes(created, since=page["last_seq"], limit=3)
    assert len(change_ids(rest)) == 1 and rest["pending"] == 0
    assert sorted(change_ids(page) + change_ids(rest)) == ["a", "b", "c", "d"]


@pytest_twisted.ensureDeferred
async def test_changes_include_docs_and_deletions(store, created):
    revs = await fill(store, created, ["a", "b"])
    deleted = await store.delete_doc(created, "a", revs["a"])
    result = await store.changes(created, include_docs=True)
    live = row_of(result, "b")
    assert live["doc"] == {"_id": "b", "_rev": revs["b"], "n": 1}
    gone = row_of(result, "a")
    assert gone["deleted"] is True
    assert gone["changes"] == [{"rev": deleted["rev"]}]
    assert gone["doc"] == {"_id": "a", "_rev": deleted["rev"], "_deleted": True}
    assert "deleted" not in live


@pytest.mark.realcouchdb  # pouchdb-server lists leaves in no order
@pytest_twisted.ensureDeferred
async def test_changes_style_all_docs_lists_every_leaf(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    [main] = (await store.changes(created))["results"]
    assert main["changes"] == [{"rev": "2-" + H["c"]}]
    [every] = (await store.changes(created, style="all_docs"))["results"]
    assert every["changes"][0] == {"rev": "2-" + H["c"]}  # the winner first
    assert sorted(c["rev"] for c in every["changes"]) == ["2-" + H["b"], "2-" + H["c"]]
    [with_doc] = (await store.changes(created, include_docs=True, conflicts=True))[
        "results"
    ]
    assert with_doc["doc"]["_conflicts"] == ["2-" + H["b"]]


@pytest_twisted.ensureDeferred
async def test_changes_of_some_documents(store, created):
    await fill(store, created, ["a", "b", "c", "d"])
    result = await store.changes(created, doc_ids=["d", "b", "nothing"])
    assert change_ids(result) == ["b", "d"]


@pytest_twisted.ensureDeferred
async def test_changes_descending(store, created):
    await fill(store, created, ["a", "b", "c"])
    result = await store.changes(created, descending=True)
    assert change_ids(result) == ["a", "b", "c"]
    assert len(change_ids(await store.changes(created, descending=True, limit=1))) == 1


@pytest.mark.realcouchdb  # pouchdb-server gives no pending
@pytest_twisted.ensureDeferred
async def test_changes_of_an_empty_database(store, created):
    result = await store.changes(created)
    assert result["results"] == [] and result["pending"] == 0
    assert isinstance(result["last_seq"], str)
    # The sequence an empty feed gives can be passed back.
    await fill(store, created, ["a"])
    assert change_ids(await store.changes(created, since=result["last_seq"])) == ["a"]


@pytest_twisted.ensureDeferred
async def test_changes_refuses_a_bad_style(store, created):
    with pytest.raises(InvalidRequest):
        await store.changes(created, style="everything")


# -- filtered changes (filter=_selector, filter=_design) -------------------------
# ``pending`` of a filtered feed is CouchDB's estimate (it counts per shard
# and may count rows the filter drops): only its type is promised.
def assert_pending_counted(result):
    assert isinstance(result["pending"], int) and result["pending"] >= 0


@pytest.mark.realcouchdb  # pouchdb-server has no filter=_selector
@pytest_twisted.ensureDeferred
async def test_changes_filtered_by_a_selector(store, created):
    revs = await fill(store, created, ["a", "b", "c", "d", "e"])  # n: 0 to 4
    await store.put_doc(created, {"_id": "_design/x", "views": {}})
    deleted = await store.delete_doc(created, "c", revs["c"])
    at_least_one = {"n": {"$gte": 1}}
    result = await store.changes(created, selector=at_least_one)
    assert change_ids(result) == ["b", "d", "e"]  # c's tombstone has no n
    assert row_of(result, "b")["changes"] == [{"rev": revs["b"]}]
    assert "doc" not in result["results"][0]
    await assert_at_end(store, created, result["last_seq"])
    assert_pending_counted(result)
    # limit counts the rows kept, and the feed resumes from last_seq (on a
    # sharded CouchDB it may be past the last row's seq: the other shards
    # moved on over rows the filter dropped).
    page = await store.changes(created, selector=at_least_one, limit=2)
    assert len(change_ids(page)) == 2
    assert_pending_counted(page)
    rest = await store.changes(created, selector=at_least_one, since=page["last_seq"])
    assert sorted(change_ids(page) + change_ids(rest)) == ["b", "d", "e"]
    assert change_ids(await store.changes(created, selector=at_least_one, limit=10)) == [
        "b",
        "d",
        "e",
    ]
    down = await store.changes(created, selector=at_least_one, descending=True)
    assert change_ids(down) == ["b", "d", "e"]
    # The selector sees tombstones with _deleted, and the ids.
    gone = await store.changes(created, selector={"_deleted": True}, include_docs=True)
    assert change_ids(gone) == ["c"]
    assert gone["results"][0]["deleted"] is True
    assert gone["results"][0]["changes"] == [{"rev": deleted["rev"]}]
    assert gone["results"][0]["doc"] == {
        "_id": "c",
        "_rev": deleted["rev"],
        "_deleted": True,
    }
    live = await store.changes(created, selector={"_deleted": {"$exists": False}})
    assert change_ids(live) == ["_design/x", "a", "b", "d", "e"]
    assert change_ids(await store.changes(created, selector={"_id": {"$gt": "c"}})) == [
        "d",
        "e",
    ]
    with_doc = await store.changes(created, selector={"n": 4}, include_docs=True)
    assert [row["doc"] for row in with_doc["results"]] == [
        {"_id": "e", "_rev": revs["e"], "n": 4}
    ]
    everything = await store.changes(created, selector={})
    assert change_ids(everything) == ["_design/x", "a", "b", "c", "d", "e"]


@pytest.mark.realcouchdb  # pouchdb-server has no filter=_selector
@pytest_twisted.ensureDeferred
async def test_changes_selector_sees_each_leaf_without_conflicts(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    await fill(store, created, ["plain"])
    # The winner (2-c) is shown to the selector with its _rev but without
    # _conflicts, as CouchDB 3 opens it for a filter.
    assert change_ids(await store.changes(created, selector={"_rev": "2-" + H["c"]})) == [
        "doc"
    ]
    conflicted = await store.changes(created, selector={"_conflicts": {"$exists": True}})
    assert change_ids(conflicted) == []
    [row] = (await store.changes(created, selector={"v": "c"}, include_docs=True))[
        "results"
    ]
    assert "_conflicts" not in row["doc"]  # only when asked
    assert change_ids(await store.changes(created, selector={"v": "b"})) == []
    # style=all_docs: each leaf on its own; changes lists those that match.
    [row] = (await store.changes(created, selector={"v": "b"}, style="all_docs"))["results"]
    assert row["changes"] == [{"rev": "2-" + H["b"]}]
    both = await store.changes(
        created, selector={"v": {"$in": ["b", "c"]}}, style="all_docs"
    )
    [row] = both["results"]
    assert row["changes"][0] == {"rev": "2-" + H["c"]}  # the winner first
    assert sorted(c["rev"] for c in row["changes"]) == ["2-" + H["b"], "2-" + H["c"]]


@pytest.mark.realcouchdb  # pouchdb-server has no filter=_design
@pytest_twisted.ensureDeferred
async def test_changes_of_design_documents(store, created):
    await fill(store, created, ["a"])
    await store.put_doc(created, {"_id": "_design/one", "views": {}})
    await fill(store, created, ["b"])
    await store.create_index(created, ["n"], ddoc="two")
    result = await store.changes(created, design_only=True, include_docs=True)
    assert change_ids(result) == ["_design/one", "_design/two"]
    assert row_of(result, "_design/one")["doc"]["views"] == {}
    assert_pending_counted(result)
    await assert_at_end(store, created, result["last_seq"], design_only=True)
    page = await store.changes(created, design_only=True, limit=1)
    assert len(change_ids(page)) == 1
    assert_pending_counted(page)
    rest = await store.changes(created, design_only=True, since=page["last_seq"])
    assert sorted(change_ids(page) + change_ids(rest)) == ["_design/one", "_design/two"]


@pytest_twisted.ensureDeferred
async def test_changes_filters_refuse_bad_arguments(store, created, prefix):
    for bad in ({"n": {"$nope": 1}}, ["n"], {"$and": "x"}):
        with pytest.raises(InvalidRequest):
            await store.changes(created, selector=bad)
    with pytest.raises(InvalidRequest):
        await store.changes(created, selector={}, design_only=True)
    with pytest.raises(InvalidRequest):
        await store.changes(created, doc_ids=["a"], selector={"n": 1})
    with pytest.raises(DatabaseNotFound):
        await store.changes(f"{prefix}/io-cozy-nothing", selector={"n": 1})
    with pytest.raises(DatabaseNotFound):
        await store.changes(f"{prefix}/io-cozy-nothing", design_only=True)
