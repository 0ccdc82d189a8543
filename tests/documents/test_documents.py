"""The document layer on both storage engines: what it stores, what it
publishes (once per changed document, after the engine answered), and what
it refuses."""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted

from cozyd.documents import (
    GLOBAL,
    DocConflict,
    Documents,
    InvalidDocId,
    ProtectedDesignDoc,
    ReservedDoctype,
)
from cozyd.errors import Conflict
from cozyd.realtime.hub import CREATED, DELETED, UPDATED, EventHub

DOCTYPE = "io.cozy.events"
SURROGATE = "bad\ud800id"


@attrs.frozen
class Owner:
    prefix: str


class RecordingStore:
    """The engine, with a log of when its writes returned (to check that
    events come after)."""

    def __init__(self, store, log):
        self._store = store
        self._log = log

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if name not in ("put_doc", "delete_doc", "bulk_docs"):
            return method

        async def call(*args, **kwargs):
            result = await method(*args, **kwargs)
            self._log.append(("stored", name))
            return result

        return call


@pytest.fixture
def log():
    return []


@pytest.fixture
def owner(prefix):
    return Owner(prefix)


@pytest.fixture
def documents(store, log):
    return Documents(RecordingStore(store, log), EventHub())


@pytest.fixture
def events(documents, owner, log):
    got = []

    def record(event):
        got.append(event)
        log.append(("event", event["verb"], event["id"]))

    documents.hub.subscribe(owner, None, record)
    return got


def summary(events):
    return [(e["verb"], e["doctype"], e["id"], e["doc"].get("_rev")) for e in events]


@pytest_twisted.ensureDeferred
async def test_put_update_delete_publish_once_after_the_write(
    documents, owner, events, log, store
):
    created = await documents.create(owner, DOCTYPE, {"title": "a"}, create_db=True)
    doc_id = created["id"]
    updated = await documents.put(
        owner, DOCTYPE, {"_id": doc_id, "_rev": created["rev"], "title": "b"}
    )
    deleted = await documents.delete(
        owner, DOCTYPE, doc_id, updated["rev"], doc={"_id": doc_id, "title": "b"}
    )
    assert summary(events) == [
        (CREATED, DOCTYPE, doc_id, created["rev"]),
        (UPDATED, DOCTYPE, doc_id, updated["rev"]),
        (DELETED, DOCTYPE, doc_id, deleted["rev"]),
    ]
    assert events[1]["doc"] == {"_id": doc_id, "_rev": updated["rev"], "title": "b"}
    assert events[2]["doc"]["title"] == "b"
    # Each event came after the engine's answer to its write.
    assert [entry[0] for entry in log] == ["stored", "event"] * 3
    # A put with _deleted deletes too.
    again = await documents.create(owner, DOCTYPE, {"_id": "x", "n": 1})
    await documents.put(
        owner, DOCTYPE, {"_id": "x", "_rev": again["rev"], "_deleted": True}
    )
    assert [e["verb"] for e in events[3:]] == [CREATED, DELETED]


@pytest.mark.realcouchdb  # pouchdb-server answers _bulk_docs in its own order
@pytest_twisted.ensureDeferred
async def test_no_event_for_a_conflict_a_design_or_a_local_document(
    documents, owner, events
):
    first = await documents.create(owner, DOCTYPE, {"_id": "doc"}, create_db=True)
    with pytest.raises(DocConflict):
        await documents.put(owner, DOCTYPE, {"_id": "doc", "_rev": "1-" + "0" * 32})
    with pytest.raises(DocConflict):
        await documents.create(owner, DOCTYPE, {"_id": "doc"})
    await documents.put(owner, DOCTYPE, {"_id": "_design/mine", "views": {}})
    await documents.put_local(owner, DOCTYPE, {"_id": "_local/checkpoint", "seq": 1})
    await documents.create_index(owner, DOCTYPE, ["title"], ddoc="by-title")
    results = await documents.bulk(
        owner,
        DOCTYPE,
        [
            {"_id": "doc"},  # conflict
            {"_id": "_local/other", "seq": 2},
            {"_id": "_design/more", "views": {}},
        ],
    )
    assert [("error" in r) for r in results] == [True, False, False]
    assert summary(events) == [(CREATED, DOCTYPE, "doc", first["rev"])]


@pytest_twisted.ensureDeferred
async def test_bulk_publishes_each_document_written(documents, owner, events):
    results = await documents.bulk(
        owner, DOCTYPE, [{"_id": "a"}, {"_id": "b", "n": 1}], create_db=True
    )
    revs = {r["id"]: r["rev"] for r in results}
    again = await documents.bulk(
        owner,
        DOCTYPE,
        [
            {"_id": "a", "_rev": revs["a"], "n": 2},
            {"_id": "b", "_rev": revs["b"], "_deleted": True},
            {"_id": "a"},  # conflict: nothing published
        ],
    )
    assert "error" in again[2]
    assert summary(events) == [
        (CREATED, DOCTYPE, "a", revs["a"]),
        (CREATED, DOCTYPE, "b", revs["b"]),
        (UPDATED, DOCTYPE, "a", again[0]["rev"]),
        (DELETED, DOCTYPE, "b", again[1]["rev"]),
    ]
    assert events[2]["doc"] == {"_id": "a", "_rev": again[0]["rev"], "n": 2}


@pytest_twisted.ensureDeferred
async def test_replicated_revisions_publish_only_what_is_new(
    documents, owner, events, store
):
    rev1, rev2 = "1-" + "a" * 32, "2-" + "b" * 32
    one = {"_id": "r", "_rev": rev1, "n": 1, "_revisions": {"start": 1, "ids": ["a" * 32]}}
    two = {
        "_id": "r",
        "_rev": rev2,
        "n": 2,
        "_revisions": {"start": 2, "ids": ["b" * 32, "a" * 32]},
    }
    await documents.bulk(owner, DOCTYPE, [one], new_edits=False, create_db=True)
    await documents.bulk(owner, DOCTYPE, [one, two, two], new_edits=False)
    gone = {
        "_id": "r",
        "_rev": "3-" + "c" * 32,
        "_deleted": True,
        "_revisions": {"start": 3, "ids": ["c" * 32, "b" * 32, "a" * 32]},
    }
    await documents.bulk(owner, DOCTYPE, [gone], new_edits=False)
    assert summary(events) == [
        (CREATED, DOCTYPE, "r", rev1),
        (UPDATED, DOCTYPE, "r", rev2),
        (DELETED, DOCTYPE, "r", gone["_rev"]),
    ]
    assert "_revisions" not in events[1]["doc"] and events[1]["doc"]["n"] == 2
    # Sent again, nothing is new: no event.
    await documents.bulk(owner, DOCTYPE, [one, two, gone], new_edits=False)
    assert len(events) == 3


@pytest_twisted.ensureDeferred
async def test_update_writes_and_publishes_only_a_change(documents, owner, events, store):
    def set_title(doc):
        doc["title"] = "same"

    doc = await documents.update(owner, DOCTYPE, "settings", set_title, create_db=True)
    again = await documents.update(owner, DOCTYPE, "settings", set_title)
    assert again == doc and again["_rev"] == doc["_rev"]
    assert (await store.get_doc(documents.db(owner, DOCTYPE), "settings"))["_rev"] == doc[
        "_rev"
    ]
    assert summary(events) == [(CREATED, DOCTYPE, "settings", doc["_rev"])]

    # A concurrent writer: update reads again and applies the change on top.
    sneaky = []

    def racing(doc):
        if not sneaky:
            sneaky.append(True)
            stale = dict(doc)
            stale["other"] = "writer"
            pending.append(stale)
        doc["title"] = "new"

    pending: list = []
    real_get = documents.store.get_doc

    async def get_then_race(db, doc_id, **kwargs):
        result = await real_get(db, doc_id, **kwargs)
        if pending:
            await store.put_doc(db, pending.pop())  # written behind our back
        return result

    documents.store.get_doc = get_then_race  # type: ignore[method-assign]
    doc = await documents.update(owner, DOCTYPE, "settings", racing)
    assert doc["title"] == "new"
    stored = await store.get_doc(documents.db(owner, DOCTYPE), "settings")
    assert stored["_rev"] == doc["_rev"]
    assert [e["verb"] for e in events] == [CREATED, UPDATED]


@pytest_twisted.ensureDeferred
async def test_update_gives_up_after_its_retries(documents, owner, events, store):
    await documents.create(owner, DOCTYPE, {"_id": "hot"}, create_db=True)
    db = documents.db(owner, DOCTYPE)

    def change(doc):
        doc["n"] = doc.get("n", 0) + 1

    real_get = documents.store.get_doc

    async def always_beaten(db_, doc_id, **kwargs):
        result = await real_get(db_, doc_id, **kwargs)
        current = await store.get_doc(db, doc_id)
        await store.put_doc(db, {**current, "other": current.get("other", 0) + 1})
        return result

    documents.store.get_doc = always_beaten  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        await documents.update(owner, DOCTYPE, "hot", change, retries=3)
    assert [e["verb"] for e in events] == [CREATED]


@pytest_twisted.ensureDeferred
async def test_an_id_with_a_lone_surrogate_is_refused_before_anything_is_written(
    documents, owner, events, store
):
    await documents.ensure_db(owner, DOCTYPE)
    with pytest.raises(InvalidDocId) as refused:
        await documents.create(owner, DOCTYPE, {"_id": SURROGATE})
    assert refused.value.status == 400 and refused.value.code == "bad_request"
    with pytest.raises(InvalidDocId):
        await documents.bulk(owner, DOCTYPE, [{"_id": "fine"}, {"_id": SURROGATE}])
    with pytest.raises(InvalidDocId):
        await documents.bulk(
            owner, DOCTYPE, [{"_id": SURROGATE, "_rev": "1-" + "a" * 32}], new_edits=False
        )
    with pytest.raises(InvalidDocId):
        await documents.delete(owner, DOCTYPE, SURROGATE, "1-" + "a" * 32)
    with pytest.raises(InvalidDocId):
        await documents.update(owner, DOCTYPE, SURROGATE, lambda doc: None)
    with pytest.raises(InvalidDocId):
        await documents.put_local(owner, DOCTYPE, {"_id": "_local/" + SURROGATE})
    # Not even the valid document of the refused batch was written.
    info = await store.db_info(documents.db(owner, DOCTYPE))
    assert info["doc_count"] == 0 and events == []


@pytest_twisted.ensureDeferred
async def test_the_checked_path_enforces_the_reserved_doctypes(documents, owner, events):
    checked = documents.checked
    for doctype in ("io.cozy.files", "io.cozy.oauth.clients"):  # read-only, unreadable
        with pytest.raises(ReservedDoctype):
            await checked.create(owner, doctype, {"x": 1}, create_db=True)
        with pytest.raises(ReservedDoctype):
            await checked.bulk(owner, doctype, [{"x": 1}], create_db=True)
        with pytest.raises(ReservedDoctype):
            await checked.delete_db(owner, doctype)
    # Design documents of a read-only doctype are a reader's business...
    await documents.ensure_db(owner, "io.cozy.files")
    written = await checked.put(owner, "io.cozy.files", {"_id": "_design/mine"})
    await checked.delete(owner, "io.cozy.files", "_design/mine", written["rev"])
    # ... but not the stack's own indexes.
    index = await documents.create_index(
        owner, "io.cozy.files", ["dir_id", "_id"], ddoc="dir-children", name="dir-children"
    )
    ddoc = await documents.get(owner, "io.cozy.files", index["id"])
    with pytest.raises(ProtectedDesignDoc):
        await checked.delete(owner, "io.cozy.files", index["id"], ddoc["_rev"])
    with pytest.raises(ReservedDoctype):
        await checked.put_local(owner, "io.cozy.sessions", {"_id": "_local/x"})
    # The stack's own path writes reserved doctypes, and publishes them.
    await documents.create(
        owner, "io.cozy.oauth.clients", {"_id": "client"}, create_db=True
    )
    assert [(e["verb"], e["doctype"]) for e in events] == [
        (CREATED, "io.cozy.oauth.clients")
    ]


@pytest_twisted.ensureDeferred
async def test_global_databases_publish_under_the_global_key(store, prefix):
    hub = EventHub()
    documents = Documents(store, hub)
    got = []
    hub.subscribe("global", "instances", got.append)
    # A doctype of its own in the shared CouchDB, so tests do not collide.
    doc = {"_id": prefix, "domain": f"{prefix}.cozy.test"}
    await documents.ensure_db(GLOBAL, "instances")
    result = await documents.put(GLOBAL, "instances", doc)
    await documents.delete(GLOBAL, "instances", prefix, result["rev"], doc=doc)
    assert [(e["verb"], e["id"]) for e in got] == [(CREATED, prefix), (DELETED, prefix)]
