"""``RawReads``: an engine's reads as JSON bytes decode to exactly what the
``DocumentStore`` method of the same name returns, and raise its errors.
Run on every engine; one without ``RawReads`` skips them (callers fall
back to the decoded reads there)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from cozyd.storage.interface import DatabaseNotFound, DocNotFound, RawReads


@pytest.fixture
def db(prefix):
    return f"{prefix}/io-cozy-rawreads"


def _raw(store) -> RawReads:
    if not isinstance(store, RawReads):
        pytest.skip(f"the {store.engine} engine has no RawReads")
    return store


@pytest_twisted.ensureDeferred
async def test_get_doc_json_is_get_doc(store, db):
    raw = _raw(store)
    await store.create_db(db)
    doc = {"_id": "été/1", "title": "naïve ☃", "n": [1, 2.5, None, True], "o": {"a": {}}}
    rev = (await store.put_doc(db, doc))["rev"]
    await store.put_doc(db, {**doc, "_rev": rev, "n": 3})
    data = await raw.get_doc_json(db, "été/1")
    assert isinstance(data, bytes)
    assert json.loads(data) == await store.get_doc(db, "été/1")
    assert json.loads(data)["n"] == 3


@pytest.mark.realcouchdb  # pouchdb-server says "missing" for a deleted document
@pytest_twisted.ensureDeferred
async def test_get_doc_json_raises_the_same_errors(store, db):
    raw = _raw(store)
    with pytest.raises(DatabaseNotFound):
        await raw.get_doc_json(db, "x")
    await store.create_db(db)
    with pytest.raises(DocNotFound) as missing:
        await raw.get_doc_json(db, "x")
    assert missing.value.detail == "missing"
    rev = (await store.put_doc(db, {"_id": "x"}))["rev"]
    await store.delete_doc(db, "x", rev)
    with pytest.raises(DocNotFound) as deleted:
        await raw.get_doc_json(db, "x")
    assert deleted.value.detail == "deleted"


@pytest_twisted.ensureDeferred
async def test_changes_json_is_changes(store, db):
    raw = _raw(store)
    with pytest.raises(DatabaseNotFound):
        await raw.changes_json(db)
    await store.create_db(db)
    await store.bulk_docs(db, [{"_id": f"d{n}", "n": n} for n in range(5)])
    for options in (
        {},
        {"limit": 2},
        {"include_docs": True},
        {"descending": True},
        {"style": "all_docs"},
    ):
        decoded = await store.changes(db, **options)
        data = await raw.changes_json(db, **options)
        assert _rows(json.loads(data)) == _rows(decoded), options
    since = (await store.changes(db, limit=2))["last_seq"]
    after = json.loads(await raw.changes_json(db, since=since))
    assert _rows(after) == _rows(await store.changes(db, since=since))
    assert len(after["results"]) == 3


def _rows(feed: dict) -> tuple:
    """A feed's rows, without what two reads of a sharded CouchDB may
    legitimately differ in: the opaque sequences and the order in which
    the shards are merged (each call is a new merge). A ``limit`` keeps
    its count; which rows come first is then the shards' choice too."""
    rows = [{k: v for k, v in row.items() if k != "seq"} for row in feed["results"]]
    rest = {k: v for k, v in feed.items() if k not in ("results", "last_seq")}
    if len(rows) < 5:
        return (len(rows), rest)
    return (sorted(rows, key=lambda row: row["id"]), rest)


@pytest.mark.realcouchdb  # pouchdb-server adds "doc": null to a deleted key's row
@pytest_twisted.ensureDeferred
async def test_all_docs_json_is_all_docs(store, db):
    raw = _raw(store)
    with pytest.raises(DatabaseNotFound):
        await raw.all_docs_json(db)
    await store.create_db(db)
    await store.bulk_docs(db, [{"_id": f"d{n}", "n": n} for n in range(5)])
    rev = (await store.get_doc(db, "d4"))["_rev"]
    await store.delete_doc(db, "d4", rev)
    for options in (
        {},
        {"include_docs": True},
        {"limit": 2, "skip": 1},
        {"descending": True, "start_key": "d3", "end_key": "d1"},
        {"start_key": "d1", "end_key": "d3", "inclusive_end": False},
        {"keys": ["d2", "d4", "nope", "d0"]},
        {"keys": ["d2", "d4", "nope"], "include_docs": True},
        {"update_seq": True, "limit": 1},
    ):
        decoded = await store.all_docs(db, **options)
        data = await raw.all_docs_json(db, **options)
        assert isinstance(data, bytes)
        loaded = json.loads(data)
        if options.get("update_seq"):  # one opaque sequence each
            assert loaded.pop("update_seq") and decoded.pop("update_seq")
        assert loaded == decoded, options
