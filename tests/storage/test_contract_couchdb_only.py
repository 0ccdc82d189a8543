"""CouchDB-engine tests against the real server the test set-up starts.

What the shared contract suite cannot see: the names the databases get on
the server, the bookkeeping of each prefix's databases across several
nodes, what happens when the server is unreachable.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from urllib.parse import quote, urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred

from cozyd.storage.couchdb import REGISTRY_DB, CouchDBStore
from cozyd.storage.interface import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    InvalidRequest,
    StorageError,
    StorageUnavailable,
)


def _server(url: str) -> tuple[str, dict[bytes, list[bytes]]]:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}/"
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode())
    return base, {b"Authorization": [b"Basic " + token], b"Accept": [b"application/json"]}


async def raw_get(url: str, path: str):
    """GET on the server itself, bypassing the engine."""
    base, headers = _server(url)
    response = await treq.get(base + path, headers=headers, timeout=10)
    return response.code, json.loads(await response.content())


@pytest.fixture
def prefix():
    return "cozytest" + uuid.uuid4().hex[:16]


@pytest_twisted.async_yield_fixture
async def couch(couchdb_url):
    store = CouchDBStore(couchdb_url, reactor=reactor)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.realcouchdb
@pytest_twisted.ensureDeferred
async def test_database_names_on_the_server_are_cozy_stack_names(
    couch, couchdb_url, prefix
):
    db = f"{prefix}/io-cozy-files"
    await couch.create_db(db)
    try:
        status, info = await raw_get(couchdb_url, quote(db, safe=""))
        assert status == 200
        assert info["db_name"] == db
        status, names = await raw_get(
            couchdb_url,
            "_all_dbs?start_key="
            + quote(json.dumps(prefix + "/"))
            + "&end_key="
            + quote(json.dumps(prefix + "0")),
        )
        assert names == [db]
    finally:
        await couch.delete_prefix(prefix)


@pytest.mark.realcouchdb  # pouchdb-server sends sequences as numbers
@pytest_twisted.ensureDeferred
async def test_sequences_are_opaque_strings_from_the_server(couch, prefix):
    db = f"{prefix}/io-cozy-notes"
    await couch.create_db(db)
    try:
        await couch.put_doc(db, {"_id": "a"})
        info = await couch.db_info(db)
        changes = await couch.changes(db, since=info["update_seq"])
        assert changes["results"] == []
        assert isinstance(changes["last_seq"], str)
    finally:
        await couch.delete_prefix(prefix)


@pytest_twisted.ensureDeferred
async def test_bookkeeping_is_shared_by_several_nodes(couchdb_url, prefix):
    """Two stores (two cozyd nodes) create databases of one prefix at once."""
    nodes = [CouchDBStore(couchdb_url, reactor=reactor) for _ in range(2)]
    for node in nodes:
        await node.start()
    try:
        parts = [f"io-cozy-doctype{i}" for i in range(8)]
        results = await DeferredList(
            [
                ensureDeferred(nodes[i % 2].create_db(f"{prefix}/{part}"))
                for i, part in enumerate(parts)
            ],
            consumeErrors=True,
        )
        assert all(ok for ok, _ in results), results
        expected = sorted(f"{prefix}/{part}" for part in parts)
        assert await nodes[0].list_dbs(prefix) == expected
        assert await nodes[1].list_dbs(prefix) == expected
        await nodes[1].delete_db(f"{prefix}/{parts[0]}")
        assert await nodes[0].list_dbs(prefix) == expected[1:]
        await nodes[0].delete_prefix(prefix)
        assert await nodes[1].list_dbs(prefix) == []
        for db in expected:
            assert not await nodes[1].db_exists(db)
    finally:
        for node in nodes:
            await node.delete_prefix(prefix)
            await node.close()


@pytest_twisted.ensureDeferred
async def test_delete_prefix_finishes_a_half_done_run(couch, couchdb_url, prefix):
    dbs = [f"{prefix}/io-cozy-{name}" for name in ("apps", "files", "jobs")]
    for db in dbs:
        await couch.ensure_db(db)
    # An earlier run deleted one database, then died before the others.
    base, headers = _server(couchdb_url)
    response = await treq.delete(base + quote(dbs[1], safe=""), headers=headers, timeout=10)
    await response.content()
    assert await couch.list_dbs(prefix) == [dbs[0], dbs[2]]
    await couch.delete_prefix(prefix)
    assert await couch.list_dbs(prefix) == []
    for db in dbs:
        assert not await couch.db_exists(db)
    await couch.delete_prefix(prefix)  # and again: nothing left to do


@pytest_twisted.ensureDeferred
async def test_bookkeeping_database_is_not_listed(couch):
    assert REGISTRY_DB not in await couch.list_dbs("global")
    assert await couch.db_exists(REGISTRY_DB)


@pytest.mark.realcouchdb  # pouchdb-server deletes a missing database with 200
@pytest_twisted.ensureDeferred
async def test_missing_database_errors(couch, prefix):
    db = f"{prefix}/io-cozy-missing"
    with pytest.raises(DatabaseNotFound):
        await couch.db_info(db)
    with pytest.raises(DatabaseNotFound):
        await couch.delete_db(db)
    with pytest.raises(DatabaseNotFound):
        await couch.all_docs(db)
    with pytest.raises(DatabaseNotFound):
        await couch.find(db, {"selector": {}})
    assert not await couch.db_exists(db)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_an_error_without_the_password(couchdb_url):
    parts = urlsplit(couchdb_url)
    bad = couchdb_url.replace(f":{parts.password}@", ":not-the-Pa55word@")
    store = CouchDBStore(bad, reactor=reactor)
    try:
        with pytest.raises(StorageError) as info:
            await store.start()
        assert info.value.status == 401
        assert "not-the-Pa55word" not in str(info.value)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once closed
    store = CouchDBStore(f"http://admin:Pa55@127.0.0.1:{port}/", reactor=reactor, timeout=5)
    try:
        with pytest.raises(StorageUnavailable) as info:
            await store.start()
        assert "Pa55" not in str(info.value)
        assert await store.health() is False
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_health(couch):
    assert await couch.health() is True


@pytest.mark.realcouchdb  # pouchdb-server says "missing" for a deleted document
@pytest_twisted.ensureDeferred
async def test_answers_are_those_of_couchdb(couch, prefix):
    """Where the test server differs from CouchDB the engine completes it."""
    db = f"{prefix}/io-cozy-notes"
    await couch.create_db(db)
    try:
        first = await couch.put_doc(db, {"_id": "note"})
        second = await couch.put_doc(db, {"_id": "note", "_rev": first["rev"]})
        await couch.delete_doc(db, "note", second["rev"])
        with pytest.raises(DocNotFound) as info:
            await couch.get_doc(db, "note")
        assert info.value.detail == "deleted"
        with pytest.raises(DocNotFound) as info:
            await couch.get_doc(db, "never")
        assert info.value.detail == "missing"
        diff = await couch.revs_diff(
            db, {"note": ["5-abc", first["rev"]], "never": ["1-abc"]}
        )
        assert diff["note"]["missing"] == ["5-abc"]
        assert len(diff["note"]["possible_ancestors"]) == 1  # the tombstone
        assert diff["never"] == {"missing": ["1-abc"]}
        with pytest.raises(DocConflict):
            await couch.delete_doc(db, "note", "")
        results = await couch.bulk_get(
            db, [{"id": "never"}, {"id": "note"}, {"id": "note", "rev": first["rev"]}]
        )
        assert results[0] == {
            "id": "never",
            "docs": [
                {
                    "error": {
                        "id": "never",
                        "rev": "undefined",
                        "error": "not_found",
                        "reason": "missing",
                    }
                }
            ],
        }
        assert results[1]["docs"][0]["ok"]["_deleted"] is True
        assert results[2]["docs"][0]["ok"]["_rev"] == first["rev"]
        changes = await couch.changes(db, limit=1)
        assert changes["pending"] == 0 and isinstance(changes["last_seq"], str)
        with pytest.raises(InvalidRequest) as info:
            await couch.find(db, {"selector": {"a": {"$gt": 0}}, "sort": ["a"]})
        assert (info.value.status, info.value.code) == (400, "no_usable_index")
    finally:
        await couch.delete_prefix(prefix)
