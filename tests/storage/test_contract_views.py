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


@pytest_twisted.ensureDeferred
async def test_all_docs_update_seq(store, created):
    await fill(store, created, ["a"])
    result = await store.all_docs(created, update_seq=True)
    assert result["update_seq"] == (await store.db_info(created))["update_seq"]


@pytest_twisted.ensureDeferred
async def test_all_docs_refuses_bad_arguments(store, created):
    with pytest.raises(InvalidRequest):
        await store.all_docs(created, limit=-1)
    with pytest.raises(InvalidRequest):
        await store.all_docs(created, skip=-1)


# -- changes -------------------------------------------------------------------
def change_ids(result):
    return [row["id"] for row in result["results"]]


@pytest_twisted.ensureDeferred
async def test_changes_lists_each_document_once_at_its_last_change(store, created):
    revs = await fill(store, created, ["a", "b", "c"])
    updated = await store.put_doc(created, {"_id": "a", "_rev": revs["a"], "n": 10})
    result = await store.changes(created)
    assert change_ids(result) == ["b", "c", "a"]
    assert result["results"][2]["changes"] == [{"rev": updated["rev"]}]
    assert result["last_seq"] == result["results"][-1]["seq"]
    assert result["last_seq"] == (await store.db_info(created))["update_seq"]
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


@pytest_twisted.ensureDeferred
async def test_changes_limit_and_pending(store, created):
    await fill(store, created, ["a", "b", "c", "d"])
    page = await store.changes(created, limit=3)
    assert change_ids(page) == ["a", "b", "c"]
    assert page["last_seq"] == page["results"][-1]["seq"]
    assert page["pending"] == 1
    rest = await store.changes(created, since=page["last_seq"], limit=3)
    assert change_ids(rest) == ["d"] and rest["pending"] == 0


@pytest_twisted.ensureDeferred
async def test_changes_include_docs_and_deletions(store, created):
    revs = await fill(store, created, ["a", "b"])
    deleted = await store.delete_doc(created, "a", revs["a"])
    result = await store.changes(created, include_docs=True)
    assert result["results"][0]["doc"] == {"_id": "b", "_rev": revs["b"], "n": 1}
    gone = result["results"][1]
    assert gone["id"] == "a" and gone["deleted"] is True
    assert gone["changes"] == [{"rev": deleted["rev"]}]
    assert gone["doc"] == {"_id": "a", "_rev": deleted["rev"], "_deleted": True}
    assert "deleted" not in result["results"][0]


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
    assert change_ids(result) == ["c", "b", "a"]
    assert change_ids(await store.changes(created, descending=True, limit=1)) == ["c"]


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
@pytest_twisted.ensureDeferred
async def test_changes_filtered_by_a_selector(store, created):
    revs = await fill(store, created, ["a", "b", "c", "d", "e"])  # n: 0 to 4
    await store.put_doc(created, {"_id": "_design/x", "views": {}})
    deleted = await store.delete_doc(created, "c", revs["c"])
    # The feed: a b d e _design/x c (deleted last).
    at_least_one = {"n": {"$gte": 1}}
    result = await store.changes(created, selector=at_least_one)
    assert change_ids(result) == ["b", "d", "e"]  # c's tombstone has no n
    assert result["results"][0]["changes"] == [{"rev": revs["b"]}]
    assert "doc" not in result["results"][0]
    assert result["last_seq"] == (await store.db_info(created))["update_seq"]
    assert result["pending"] == 0
    # limit counts the rows kept; last_seq is the last one's, and pending
    # counts every change after it (e, _design/x, c), as CouchDB does.
    page = await store.changes(created, selector=at_least_one, limit=2)
    assert change_ids(page) == ["b", "d"]
    assert page["last_seq"] == page["results"][-1]["seq"]
    assert page["pending"] == 3
    rest = await store.changes(created, selector=at_least_one, since=page["last_seq"])
    assert change_ids(rest) == ["e"] and rest["pending"] == 0
    assert change_ids(await store.changes(created, selector=at_least_one, limit=10)) == [
        "b",
        "d",
        "e",
    ]
    down = await store.changes(created, selector=at_least_one, descending=True)
    assert change_ids(down) == ["e", "d", "b"]
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
    assert change_ids(live) == ["a", "b", "d", "e", "_design/x"]
    assert change_ids(await store.changes(created, selector={"_id": {"$gt": "c"}})) == [
        "d",
        "e",
    ]
    with_doc = await store.changes(created, selector={"n": 4}, include_docs=True)
    assert [row["doc"] for row in with_doc["results"]] == [
        {"_id": "e", "_rev": revs["e"], "n": 4}
    ]
    everything = await store.changes(created, selector={})
    assert change_ids(everything) == ["a", "b", "d", "e", "_design/x", "c"]


@pytest_twisted.ensureDeferred
async def test_changes_selector_sees_conflicts_and_each_leaf(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    await fill(store, created, ["plain"])
    # The winner (2-c) is shown to the selector with its _conflicts.
    conflicted = await store.changes(created, selector={"_conflicts": {"$size": 1}})
    assert change_ids(conflicted) == ["doc"]
    assert conflicted["results"][0]["changes"] == [{"rev": "2-" + H["c"]}]
    [row] = (
        await store.changes(created, selector={"v": "c"}, include_docs=True)
    )["results"]
    assert "_conflicts" not in row["doc"]  # only when asked
    assert change_ids(await store.changes(created, selector={"v": "b"})) == []
    # style=all_docs: each leaf on its own; changes lists those that match.
    [row] = (await store.changes(created, selector={"v": "b"}, style="all_docs"))[
        "results"
    ]
    assert row["changes"] == [{"rev": "2-" + H["b"]}]
    both = await store.changes(
        created, selector={"v": {"$in": ["b", "c"]}}, style="all_docs"
    )
    [row] = both["results"]
    assert row["changes"][0] == {"rev": "2-" + H["c"]}  # the winner first
    assert sorted(c["rev"] for c in row["changes"]) == ["2-" + H["b"], "2-" + H["c"]]


@pytest_twisted.ensureDeferred
async def test_changes_of_design_documents(store, created):
    await fill(store, created, ["a"])
    await store.put_doc(created, {"_id": "_design/one", "views": {}})
    await fill(store, created, ["b"])
    await store.create_index(created, ["n"], ddoc="two")
    result = await store.changes(created, design_only=True, include_docs=True)
    assert change_ids(result) == ["_design/one", "_design/two"]
    assert result["results"][0]["doc"]["views"] == {}
    assert result["pending"] == 0
    page = await store.changes(created, design_only=True, limit=1)
    assert change_ids(page) == ["_design/one"]
    assert page["last_seq"] == page["results"][0]["seq"]
    assert page["pending"] == 2  # b and _design/two
    rest = await store.changes(created, design_only=True, since=page["last_seq"])
    assert change_ids(rest) == ["_design/two"]


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
