"""The storage contract: databases, documents, bulk operations, replication.

Every test runs on both engines (the ``store`` fixture) and asserts what
Apache CouchDB 3.x does. Tests that pouchdb-server (the stand-in the test
set-up starts) is known to fail are marked ``realcouchdb``: they run on the
embedded engine always, on the CouchDB engine only against a real CouchDB.

Revision hashes differ between engines (each computes its own), so tests
compare generations and structure, except where the revisions are given
(``new_edits=False``).
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred

from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    DocumentStore,
    InvalidRequest,
    StorageError,
)

REV_RE = re.compile(r"[1-9][0-9]*-[0-9a-f]{32}")

# Revision hashes for replicated histories (new_edits=False), as CouchDB
# and PouchDB make them: 32 lowercase hex digits.
H = {name: name * 32 for name in "0123456789abcdef"}


def generation(rev: str) -> int:
    return int(rev.split("-", 1)[0])


def rev_hash(rev: str) -> str:
    return rev.split("-", 1)[1]


@pytest.fixture
def db(prefix):
    return f"{prefix}/io-cozy-tests"


@pytest_twisted.async_fixture
async def created(store, db):
    """The test database, created and empty."""
    await store.create_db(db)
    return db


async def replicate(store, db, doc_id, path, body=None, deleted=False):
    """Store the revision path ``path`` (newest first, e.g. ["3-c", "2-b"])
    as a replicator would: ``new_edits=False`` with ``_revisions``."""
    start = generation(path[0])
    doc = {
        "_id": doc_id,
        "_rev": path[0],
        "_revisions": {"start": start, "ids": [rev_hash(r) for r in path]},
        **(body or {}),
    }
    if deleted:
        doc["_deleted"] = True
    assert await store.bulk_docs(db, [doc], new_edits=False) == []


# -- databases -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_store_implements_the_interface(store):
    assert isinstance(store, DocumentStore)
    assert store.engine in ("embedded", "couchdb")
    assert await store.health() is True


@pytest.mark.realcouchdb  # pouchdb-server sends sequences as numbers
@pytest_twisted.ensureDeferred
async def test_create_db_then_exists_and_info(store, db):
    assert await store.db_exists(db) is False
    await store.create_db(db)
    assert await store.db_exists(db) is True
    info = await store.db_info(db)
    assert info["db_name"] == db
    assert info["doc_count"] == 0
    assert info["doc_del_count"] == 0
    assert isinstance(info["update_seq"], str)


@pytest_twisted.ensureDeferred
async def test_create_existing_db_is_refused(store, created):
    with pytest.raises(DatabaseExists) as caught:
        await store.create_db(created)
    assert caught.value.status == 412
    assert caught.value.code == "file_exists"


@pytest_twisted.ensureDeferred
async def test_ensure_db_is_idempotent(store, db):
    await store.ensure_db(db)
    await store.put_doc(db, {"_id": "kept"})
    await store.ensure_db(db)
    assert (await store.get_doc(db, "kept"))["_id"] == "kept"


@pytest.mark.realcouchdb  # pouchdb-server deletes a missing database with 200
@pytest_twisted.ensureDeferred
async def test_missing_db_is_not_found_everywhere(store, db, prefix):
    # Another database of the same prefix exists.
    await store.create_db(f"{prefix}/io-cozy-other")
    calls = [
        store.db_info(db),
        store.get_doc(db, "x"),
        store.put_doc(db, {"_id": "x"}),
        store.bulk_docs(db, [{"_id": "x"}]),
        store.all_docs(db),
        store.changes(db),
        store.delete_db(db),
        store.get_local(db, "x"),
        store.find(db, {"selector": {}}),
        store.get_open_revs(db, "x", "all"),
        store.bulk_get(db, [{"id": "x"}]),
        store.revs_diff(db, {"x": ["1-" + H["a"]]}),
        store.delete_doc(db, "x", "1-" + H["a"]),
        store.put_local(db, {"_id": "_local/x"}),
        store.create_index(db, ["a"]),
    ]
    for call in calls:
        with pytest.raises(DatabaseNotFound) as caught:
            await call
        assert caught.value.status == 404


@pytest.mark.realcouchdb  # pouchdb-server deletes a missing database with 200
@pytest_twisted.ensureDeferred
async def test_delete_db_removes_its_documents(store, created):
    await store.put_doc(created, {"_id": "gone"})
    await store.delete_db(created)
    assert await store.db_exists(created) is False
    with pytest.raises(DatabaseNotFound):
        await store.delete_db(created)
    await store.create_db(created)
    with pytest.raises(DocNotFound):
        await store.get_doc(created, "gone")
    assert (await store.db_info(created))["doc_count"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "nodb",
        "Cozy/x",
        "cozy/",
        "/x",
        "cozy/../x",
        "cozy/a/b",
        "cozy/UPPER",
        "cozy/a b",
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_db_names_are_refused(store, name):
    with pytest.raises(InvalidRequest):
        await store.create_db(name)


@pytest.mark.realcouchdb  # pouchdb-server drops the "/" from database names
@pytest_twisted.ensureDeferred
async def test_list_dbs_lists_the_prefix_only(store, prefix):
    other = prefix + "x"
    for name in (
        f"{prefix}/io-cozy-files",
        f"{prefix}/io-cozy-apps",
        f"{other}/io-cozy-files",
    ):
        await store.create_db(name)
    try:
        assert await store.list_dbs(prefix) == [
            f"{prefix}/io-cozy-apps",
            f"{prefix}/io-cozy-files",
        ]
        await store.delete_db(f"{prefix}/io-cozy-apps")
        assert await store.list_dbs(prefix) == [f"{prefix}/io-cozy-files"]
    finally:
        await store.delete_prefix(other)
    assert await store.list_dbs(other) == []


@pytest_twisted.ensureDeferred
async def test_delete_prefix_deletes_every_database_of_it(store, prefix):
    other = prefix + "x"
    names = [f"{prefix}/io-cozy-files", f"{prefix}/io-cozy-apps"]
    for name in [*names, f"{other}/io-cozy-files"]:
        await store.create_db(name)
        await store.put_doc(name, {"_id": "doc"})
    try:
        await store.delete_prefix(prefix)
        for name in names:
            assert await store.db_exists(name) is False
        assert (await store.get_doc(f"{other}/io-cozy-files", "doc"))["_id"] == "doc"
        await store.delete_prefix(prefix)  # idempotent
        await store.create_db(names[0])  # the prefix can live again
        assert (await store.db_info(names[0]))["doc_count"] == 0
    finally:
        await store.delete_prefix(other)
        await store.delete_prefix(prefix)


@pytest.mark.realcouchdb  # pouchdb-server gives no doc_del_count
@pytest_twisted.ensureDeferred
async def test_db_info_counts_live_and_deleted_documents(store, created):
    results = await store.bulk_docs(created, [{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
    await store.delete_doc(created, "b", results[1]["rev"])
    info = await store.db_info(created)
    assert (info["doc_count"], info["doc_del_count"]) == (2, 1)


# -- documents -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_put_then_get(store, created):
    doc = {
        "_id": "doc1",
        "name": "Zoë",
        "n": 1.5,
        "ok": True,
        "none": None,
        "list": [1, "two", {"three": 3}],
        "nested": {"a": {"b": []}},
    }
    result = await store.put_doc(created, doc)
    assert result["ok"] is True and result["id"] == "doc1"
    assert REV_RE.fullmatch(result["rev"]) and generation(result["rev"]) == 1
    got = await store.get_doc(created, "doc1")
    assert got == {**doc, "_rev": result["rev"]}


@pytest_twisted.ensureDeferred
async def test_update_needs_the_current_revision(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 1})
    with pytest.raises(DocConflict) as caught:
        await store.put_doc(created, {"_id": "doc", "v": 2})  # no _rev
    assert caught.value.status == 409 and caught.value.code == "conflict"
    second = await store.put_doc(created, {"_id": "doc", "_rev": first["rev"], "v": 2})
    assert generation(second["rev"]) == 2
    with pytest.raises(DocConflict):
        await store.put_doc(created, {"_id": "doc", "_rev": first["rev"], "v": 3})
    got = await store.get_doc(created, "doc")
    assert got == {"_id": "doc", "_rev": second["rev"], "v": 2}


@pytest_twisted.ensureDeferred
async def test_a_revision_of_a_missing_document_conflicts(store, created):
    with pytest.raises(DocConflict):
        await store.put_doc(created, {"_id": "new", "_rev": "1-" + H["a"]})


@pytest_twisted.ensureDeferred
async def test_concurrent_updates_of_one_revision_let_one_win(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 0})
    attempts = [
        ensureDeferred(store.put_doc(created, {"_id": "doc", "_rev": first["rev"], "v": i}))
        for i in range(1, 9)
    ]
    outcomes = await DeferredList(attempts, consumeErrors=True)
    wins = [value for ok, value in outcomes if ok]
    conflicts = [f for ok, f in outcomes if not ok and f.check(DocConflict)]
    assert len(wins) == 1 and len(conflicts) == 7
    assert (await store.get_doc(created, "doc"))["_rev"] == wins[0]["rev"]


@pytest_twisted.ensureDeferred
async def test_get_missing_document(store, created):
    with pytest.raises(DocNotFound) as caught:
        await store.get_doc(created, "nothing")
    assert caught.value.status == 404
    assert caught.value.detail == "missing"


@pytest_twisted.ensureDeferred
async def test_delete_then_get(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 1})
    deleted = await store.delete_doc(created, "doc", first["rev"])
    assert deleted["ok"] is True and deleted["id"] == "doc"
    assert generation(deleted["rev"]) == 2
    with pytest.raises(DocNotFound):
        await store.get_doc(created, "doc")
    # The tombstone itself can be read by its revision.
    tombstone = await store.get_doc(created, "doc", rev=deleted["rev"])
    assert tombstone == {"_id": "doc", "_rev": deleted["rev"], "_deleted": True}


@pytest.mark.realcouchdb  # pouchdb-server says "missing"
@pytest_twisted.ensureDeferred
async def test_a_deleted_document_reads_as_deleted(store, created):
    first = await store.put_doc(created, {"_id": "doc"})
    await store.delete_doc(created, "doc", first["rev"])
    with pytest.raises(DocNotFound) as caught:
        await store.get_doc(created, "doc")
    assert caught.value.detail == "deleted"


@pytest_twisted.ensureDeferred
async def test_delete_needs_the_current_revision(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 1})
    await store.put_doc(created, {"_id": "doc", "_rev": first["rev"], "v": 2})
    with pytest.raises(DocConflict):
        await store.delete_doc(created, "doc", first["rev"])
    with pytest.raises(DocNotFound):
        await store.delete_doc(created, "nothing", first["rev"])


@pytest.mark.realcouchdb  # pouchdb-server gives no doc_del_count
@pytest_twisted.ensureDeferred
async def test_deleted_true_in_the_body_deletes(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 1})
    result = await store.put_doc(
        created, {"_id": "doc", "_rev": first["rev"], "_deleted": True}
    )
    assert generation(result["rev"]) == 2
    with pytest.raises(DocNotFound):
        await store.get_doc(created, "doc")
    info = await store.db_info(created)
    assert (info["doc_count"], info["doc_del_count"]) == (0, 1)


@pytest_twisted.ensureDeferred
async def test_recreate_over_a_tombstone_without_revision(store, created):
    first = await store.put_doc(created, {"_id": "doc", "v": 1})
    deleted = await store.delete_doc(created, "doc", first["rev"])
    again = await store.put_doc(created, {"_id": "doc", "v": 2})
    # The new revision extends the deleted branch.
    assert generation(again["rev"]) == generation(deleted["rev"]) + 1
    got = await store.get_doc(created, "doc", revs=True)
    assert got["v"] == 2
    assert got["_revisions"]["ids"][1] == rev_hash(deleted["rev"])
    info = await store.db_info(created)
    assert (info["doc_count"], info["doc_del_count"]) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_revisions_history(store, created):
    revs = [(await store.put_doc(created, {"_id": "doc", "v": 0}))["rev"]]
    for v in (1, 2):
        revs.append(
            (await store.put_doc(created, {"_id": "doc", "_rev": revs[-1], "v": v}))["rev"]
        )
    got = await store.get_doc(created, "doc", revs=True)
    assert got["_revisions"] == {
        "start": 3,
        "ids": [rev_hash(r) for r in reversed(revs)],
    }
    info = (await store.get_doc(created, "doc", revs_info=True))["_revs_info"]
    assert [entry["rev"] for entry in info] == list(reversed(revs))
    assert info[0]["status"] == "available"
    # The current revision can be asked for by its id.
    assert (await store.get_doc(created, "doc", rev=revs[-1]))["v"] == 2


@pytest_twisted.ensureDeferred
async def test_invalid_documents_are_refused(store, created):
    bad = [
        ["not", "a", "doc"],
        {"_id": 42},
        {"_id": ""},
        {"_id": "_reserved"},
        {"_id": "doc", "_rev": "not-a-revision"},
        {"_id": "doc", "_unknown_special": 1},
    ]
    for doc in bad:
        with pytest.raises(InvalidRequest) as caught:
            await store.put_doc(created, doc)
        assert caught.value.status == 400


@pytest_twisted.ensureDeferred
async def test_design_documents(store, created):
    ddoc = {"_id": "_design/app", "language": "javascript", "views": {}}
    result = await store.put_doc(created, ddoc)
    got = await store.get_doc(created, "_design/app")
    assert got == {**ddoc, "_rev": result["rev"]}
    rows = (await store.all_docs(created))["rows"]
    assert [row["id"] for row in rows] == ["_design/app"]


# -- bulk_docs -----------------------------------------------------------------
@pytest.mark.realcouchdb  # pouchdb-server gives no doc_del_count
@pytest_twisted.ensureDeferred
async def test_bulk_docs_answers_each_document_in_order(store, created):
    first = await store.put_doc(created, {"_id": "b", "v": 1})
    results = await store.bulk_docs(
        created,
        [
            {"_id": "a", "v": 1},
            {"_id": "b", "_rev": first["rev"], "v": 2},
            {"_id": "b", "v": 3},  # no revision: conflict
            {"_id": "c", "_deleted": True},
        ],
    )
    assert [r["id"] for r in results] == ["a", "b", "b", "c"]
    assert results[0]["ok"] is True and generation(results[0]["rev"]) == 1
    assert results[1]["ok"] is True and generation(results[1]["rev"]) == 2
    assert results[2]["error"] == "conflict" and "ok" not in results[2]
    assert results[3]["ok"] is True
    assert (await store.get_doc(created, "b"))["v"] == 2
    info = await store.db_info(created)
    assert (info["doc_count"], info["doc_del_count"]) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_bulk_docs_gives_ids_to_documents_without(store, created):
    results = await store.bulk_docs(created, [{"v": 1}, {"v": 2}])
    ids = [r["id"] for r in results]
    assert all(isinstance(i, str) and i for i in ids) and ids[0] != ids[1]
    assert (await store.get_doc(created, ids[1]))["v"] == 2


@pytest_twisted.ensureDeferred
async def test_bulk_docs_with_a_bad_document_writes_nothing(store, created):
    with pytest.raises(InvalidRequest):
        await store.bulk_docs(created, [{"_id": "fine"}, {"_id": "_bad"}])
    with pytest.raises(DocNotFound):
        await store.get_doc(created, "fine")


@pytest_twisted.ensureDeferred
async def test_replicated_history_is_kept_as_given(store, created):
    path = ["3-" + H["c"], "2-" + H["b"], "1-" + H["a"]]
    await replicate(store, created, "doc", path, {"v": 3})
    got = await store.get_doc(created, "doc", revs=True)
    assert got == {
        "_id": "doc",
        "_rev": path[0],
        "v": 3,
        "_revisions": {"start": 3, "ids": [H["c"], H["b"], H["a"]]},
    }
    # Replaying it changes nothing: no new change in the feed.
    seq = (await store.db_info(created))["update_seq"]
    await replicate(store, created, "doc", path, {"v": 3})
    assert len((await store.changes(created, since=seq))["results"]) == 0
    # An interactive edit continues the history.
    edited = await store.put_doc(created, {"_id": "doc", "_rev": path[0], "v": 4})
    assert generation(edited["rev"]) == 4


@pytest.mark.realcouchdb  # pouchdb-server gives no _deleted_conflicts
@pytest_twisted.ensureDeferred
async def test_replicated_branches_elect_couchdbs_winner(store, created):
    # Two branches from 1-a: the higher hash wins among equal generations.
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    got = await store.get_doc(created, "doc", conflicts=True)
    assert (got["_rev"], got["v"], got["_conflicts"]) == (
        "2-" + H["c"],
        "c",
        ["2-" + H["b"]],
    )
    # A longer branch wins whatever its hash.
    await replicate(store, created, "doc", ["3-" + H["1"], "2-" + H["b"]], {"v": "b3"})
    got = await store.get_doc(created, "doc", conflicts=True)
    assert (got["_rev"], got["_conflicts"]) == ("3-" + H["1"], ["2-" + H["c"]])
    # A live leaf beats a deleted one, even of a higher generation.
    await replicate(store, created, "doc", ["4-" + H["d"], "3-" + H["1"]], deleted=True)
    got = await store.get_doc(created, "doc", conflicts=True, deleted_conflicts=True)
    assert got["_rev"] == "2-" + H["c"]
    assert "_conflicts" not in got
    assert got["_deleted_conflicts"] == ["4-" + H["d"]]


@pytest_twisted.ensureDeferred
async def test_winner_does_not_depend_on_arrival_order(store, created):
    branches = [
        ["2-" + H["3"], "1-" + H["1"]],
        ["2-" + H["e"], "1-" + H["1"]],
        ["2-" + H["7"], "1-" + H["1"]],
    ]
    for doc_id, order in (("x", branches), ("y", list(reversed(branches)))):
        for path in order:
            await replicate(store, created, doc_id, path, {"from": path[0]})
    x = await store.get_doc(created, "x", conflicts=True)
    y = await store.get_doc(created, "y", conflicts=True)
    assert x["_rev"] == y["_rev"] == "2-" + H["e"]
    assert (
        sorted(x["_conflicts"]) == sorted(y["_conflicts"]) == ["2-" + H["3"], "2-" + H["7"]]
    )


@pytest_twisted.ensureDeferred
async def test_resolving_a_conflict_by_deleting_the_loser(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    await store.delete_doc(created, "doc", "2-" + H["b"])
    got = await store.get_doc(created, "doc", conflicts=True)
    assert got["_rev"] == "2-" + H["c"] and "_conflicts" not in got


@pytest.mark.realcouchdb  # CouchDB accepts an edit of any leaf
@pytest_twisted.ensureDeferred
async def test_a_losing_leaf_can_be_edited(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    edited = await store.put_doc(created, {"_id": "doc", "_rev": "2-" + H["b"], "v": "b+"})
    got = await store.get_doc(created, "doc", conflicts=True)
    assert got["_rev"] == edited["rev"] and got["v"] == "b+"
    assert got["_conflicts"] == ["2-" + H["c"]]


@pytest.mark.realcouchdb  # pouchdb-server ignores latest
@pytest_twisted.ensureDeferred
async def test_a_leaf_revision_can_be_read(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    loser = await store.get_doc(created, "doc", rev="2-" + H["b"], revs=True)
    assert loser == {
        "_id": "doc",
        "_rev": "2-" + H["b"],
        "v": "b",
        "_revisions": {"start": 2, "ids": [H["b"], H["a"]]},
    }
    with pytest.raises(DocNotFound):
        await store.get_doc(created, "doc", rev="2-" + H["f"])
    # latest=true reads the winner.
    assert (await store.get_doc(created, "doc", rev="2-" + H["b"], latest=True))["v"] == "c"


@pytest_twisted.ensureDeferred
async def test_open_revs(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    every = await store.get_open_revs(created, "doc", "all")
    assert sorted(entry["ok"]["_rev"] for entry in every) == [
        "2-" + H["b"],
        "2-" + H["c"],
    ]
    asked = await store.get_open_revs(
        created, "doc", ["2-" + H["b"], "3-" + H["f"]], revs=True
    )
    assert {"missing": "3-" + H["f"]} in asked
    [found] = [entry["ok"] for entry in asked if "ok" in entry]
    assert found["v"] == "b"
    assert found["_revisions"] == {"start": 2, "ids": [H["b"], H["a"]]}
    assert await store.get_open_revs(created, "nothing", ["1-" + H["a"]]) == [
        {"missing": "1-" + H["a"]}
    ]


@pytest_twisted.ensureDeferred
async def test_open_revs_with_latest_follows_to_the_leaves(store, created):
    await replicate(
        store, created, "doc", ["3-" + H["c"], "2-" + H["b"], "1-" + H["a"]], {"v": 3}
    )
    got = await store.get_open_revs(created, "doc", ["2-" + H["b"]], latest=True)
    assert [entry["ok"]["_rev"] for entry in got] == ["3-" + H["c"]]


@pytest_twisted.ensureDeferred
async def test_open_revs_of_a_deleted_leaf(store, created):
    first = await store.put_doc(created, {"_id": "doc"})
    deleted = await store.delete_doc(created, "doc", first["rev"])
    [entry] = await store.get_open_revs(created, "doc", "all")
    assert entry["ok"] == {"_id": "doc", "_rev": deleted["rev"], "_deleted": True}


# -- bulk_get and revs_diff ----------------------------------------------------
@pytest.mark.realcouchdb  # pouchdb-server answers the winner only for a request without rev
@pytest_twisted.ensureDeferred
async def test_bulk_get(store, created):
    first = await store.put_doc(created, {"_id": "a", "v": 1})
    second = await store.put_doc(created, {"_id": "a", "_rev": first["rev"], "v": 2})
    await store.put_doc(created, {"_id": "b", "v": 1})
    results = await store.bulk_get(
        created,
        [{"id": "a"}, {"id": "b"}, {"id": "a", "rev": second["rev"]}],
        revs=True,
    )
    assert [r["id"] for r in results] == ["a", "b", "a"]
    [[a], [b], [a_rev]] = [[entry["ok"] for entry in r["docs"]] for r in results]
    assert a["_rev"] == second["rev"] and a["v"] == 2
    assert a["_revisions"]["ids"] == [rev_hash(second["rev"]), rev_hash(first["rev"])]
    assert b["v"] == 1
    assert a_rev == a


@pytest.mark.realcouchdb  # pouchdb-server shapes these errors differently
@pytest_twisted.ensureDeferred
async def test_bulk_get_errors(store, created):
    await store.put_doc(created, {"_id": "a"})
    missing_rev = "1-" + H["f"]
    results = await store.bulk_get(
        created, [{"id": "nothing"}, {"id": "a", "rev": missing_rev}]
    )
    assert results == [
        {
            "id": "nothing",
            "docs": [
                {
                    "error": {
                        "id": "nothing",
                        "rev": "undefined",
                        "error": "not_found",
                        "reason": "missing",
                    }
                }
            ],
        },
        {
            "id": "a",
            "docs": [
                {
                    "error": {
                        "id": "a",
                        "rev": missing_rev,
                        "error": "not_found",
                        "reason": "missing",
                    }
                }
            ],
        },
    ]


@pytest.mark.realcouchdb  # pouchdb-server may return the winner only
@pytest_twisted.ensureDeferred
async def test_bulk_get_without_revision_returns_every_leaf(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {"v": "b"})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {"v": "c"})
    [result] = await store.bulk_get(created, [{"id": "doc"}])
    assert sorted(entry["ok"]["_rev"] for entry in result["docs"]) == [
        "2-" + H["b"],
        "2-" + H["c"],
    ]


async def grow_branches(store, db):
    """``doc``: 1-a → 2-b → {3-c, 3-d}, and 1-a → 2-e (winner: 3-d)."""
    a, b = "1-" + H["a"], "2-" + H["b"]
    await replicate(store, db, "doc", ["3-" + H["c"], b, a], {"v": "c"})
    await replicate(store, db, "doc", ["3-" + H["d"], b, a], {"v": "d"})
    await replicate(store, db, "doc", ["2-" + H["e"], a], {"v": "e"})


def revs_in(result):
    return sorted(entry["ok"]["_rev"] for entry in result["docs"] if "ok" in entry)


def not_found(doc_id, rev):
    error = {"id": doc_id, "rev": rev, "error": "not_found", "reason": "missing"}
    return [{"error": error}]


@pytest.mark.realcouchdb  # pouchdb-server answers one leaf, or dies
@pytest_twisted.ensureDeferred
async def test_bulk_get_latest_reads_the_leaves_grown_from_a_revision(store, created):
    await grow_branches(store, created)
    unknown = "9-" + H["f"]
    results = await store.bulk_get(
        created,
        [
            {"id": "doc", "rev": "2-" + H["b"]},
            {"id": "doc", "rev": "1-" + H["a"]},
            {"id": "doc", "rev": "3-" + H["c"]},
            {"id": "doc", "rev": unknown},
            {"id": "nothing", "rev": "1-" + H["a"]},
            {"id": "doc"},
        ],
        latest=True,
    )
    assert [r["id"] for r in results] == ["doc"] * 4 + ["nothing", "doc"]
    assert revs_in(results[0]) == ["3-" + H["c"], "3-" + H["d"]]
    assert revs_in(results[1]) == ["2-" + H["e"], "3-" + H["c"], "3-" + H["d"]]
    assert [entry["ok"] for entry in results[2]["docs"]] == [
        {"_id": "doc", "_rev": "3-" + H["c"], "v": "c"}
    ]
    assert results[3]["docs"] == not_found("doc", unknown)
    assert results[4]["docs"] == not_found("nothing", "1-" + H["a"])
    assert revs_in(results[5]) == ["2-" + H["e"], "3-" + H["c"], "3-" + H["d"]]
    # With the histories when asked.
    [with_revs] = await store.bulk_get(
        created, [{"id": "doc", "rev": "2-" + H["b"]}], latest=True, revs=True
    )
    histories = {e["ok"]["_rev"]: e["ok"]["_revisions"] for e in with_revs["docs"]}
    assert histories["3-" + H["c"]] == {"start": 3, "ids": [H["c"], H["b"], H["a"]]}
    # Without latest, a revision that is no longer a leaf is not found.
    [inner] = await store.bulk_get(created, [{"id": "doc", "rev": "2-" + H["b"]}])
    assert [entry.get("ok") for entry in inner["docs"]] == [None]
    assert inner["docs"][0]["error"]["error"] == "not_found"


@pytest.mark.realcouchdb  # pouchdb-server dies on an unknown revision with latest
@pytest_twisted.ensureDeferred
async def test_open_revs_with_latest_and_unknown_revisions(store, created):
    await grow_branches(store, created)
    unknown = "9-" + H["f"]
    got = await store.get_open_revs(created, "doc", ["1-" + H["a"], unknown], latest=True)
    assert sorted(entry["ok"]["_rev"] for entry in got if "ok" in entry) == [
        "2-" + H["e"],
        "3-" + H["c"],
        "3-" + H["d"],
    ]
    assert {"missing": unknown} in got
    assert all("_revisions" not in entry.get("ok", {}) for entry in got)
    # The store still answers (pouchdb-server dies on this when asked as is).
    assert (await store.get_doc(created, "doc"))["_rev"] == "3-" + H["d"]


@pytest.mark.realcouchdb  # pouchdb-server misses revisions known from a history
@pytest_twisted.ensureDeferred
async def test_revs_diff_lists_what_is_missing(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {})
    diff = await store.revs_diff(
        created,
        {
            "doc": ["1-" + H["a"], "2-" + H["b"], "3-" + H["c"]],
            "known": [],
            "new": ["1-" + H["d"]],
        },
    )
    assert set(diff) == {"doc", "new"}
    assert diff["doc"]["missing"] == ["3-" + H["c"]]
    assert diff["new"]["missing"] == ["1-" + H["d"]]
    assert await store.revs_diff(created, {"doc": ["2-" + H["b"]]}) == {}


@pytest.mark.realcouchdb  # pouchdb-server gives no possible_ancestors
@pytest_twisted.ensureDeferred
async def test_revs_diff_possible_ancestors(store, created):
    await replicate(store, created, "doc", ["2-" + H["b"], "1-" + H["a"]], {})
    await replicate(store, created, "doc", ["2-" + H["c"], "1-" + H["a"]], {})
    diff = await store.revs_diff(created, {"doc": ["3-" + H["d"], "1-" + H["f"]]})
    assert set(diff) == {"doc"} and set(diff["doc"]) == {"missing", "possible_ancestors"}
    assert diff["doc"]["missing"] == ["1-" + H["f"], "3-" + H["d"]]
    # The leaves older than the newest missing revision; CouchDB promises
    # no order (3.5 lists them in its own leaf order).
    assert sorted(diff["doc"]["possible_ancestors"]) == ["2-" + H["b"], "2-" + H["c"]]


# -- _local documents ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_local_documents(store, created):
    first = await store.put_local(created, {"_id": "_local/checkpoint", "seq": 1})
    assert first["ok"] is True and first["id"] == "_local/checkpoint"
    got = await store.get_local(created, "_local/checkpoint")
    assert got == {"_id": "_local/checkpoint", "_rev": first["rev"], "seq": 1}
    second = await store.put_local(
        created, {"_id": "_local/checkpoint", "_rev": first["rev"], "seq": 2}
    )
    assert second["rev"] != first["rev"]
    assert (await store.get_local(created, "checkpoint"))["seq"] == 2  # prefix optional
    # Local documents are neither listed nor in the changes feed.
    assert (await store.all_docs(created))["rows"] == []
    assert (await store.changes(created))["results"] == []
    assert (await store.db_info(created))["doc_count"] == 0
    await store.delete_local(created, "_local/checkpoint", second["rev"])
    with pytest.raises(DocNotFound):
        await store.get_local(created, "_local/checkpoint")


@pytest.mark.realcouchdb  # CouchDB 3 checks no revision of local documents
@pytest_twisted.ensureDeferred
async def test_local_documents_have_no_conflicts(store, created):
    await store.put_local(created, {"_id": "_local/cp", "v": 1})
    again = await store.put_local(created, {"_id": "_local/cp", "v": 2})
    assert again["rev"] == "0-1"
    assert (await store.get_local(created, "_local/cp")) == {
        "_id": "_local/cp",
        "_rev": "0-1",
        "v": 2,
    }


@pytest_twisted.ensureDeferred
async def test_missing_local_document(store, created):
    with pytest.raises(DocNotFound):
        await store.get_local(created, "_local/nothing")


@pytest_twisted.ensureDeferred
async def test_storage_errors_are_cozy_errors(store, db):
    with pytest.raises(StorageError) as caught:
        await store.db_info(db)
    assert caught.value.couchdb() == {
        "error": "not_found",
        "reason": "Database does not exist.",
    }
