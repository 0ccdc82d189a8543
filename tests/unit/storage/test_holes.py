"""Holes a hostile tester found in the storage, closed (issue 7 §4), seen
through ``/data`` of the in-memory stack and through a store on files."""

from __future__ import annotations

import os
import time

import pytest

from cozyd.storage.interface import InvalidRequest, StorageUnavailable
from cozyd.storage.names import INSTANCES_DB
from cozyd.storage.sqlite import EmbeddedStore
from cozyd.testing import MemoryClient, memory_stack, sync
from tests.support.data import Data, cli_token, new_instance, token

HUGE = 2**64 + 12345  # beyond SQLite's 64-bit integers


@pytest.fixture
def stack(tmp_path):
    return memory_stack(str(tmp_path))


@pytest.fixture
def data(stack):
    admin = MemoryClient(stack.admin)
    new_instance(admin)
    data = Data(MemoryClient(stack.public), cli_token(admin))
    data.put("/io.cozy.events/")
    data.post("/io.cozy.events/_index", {"index": {"fields": ["v"]}})
    data.put("/io.cozy.events/no", {"v": "a" * 40 + "!"})
    data.put("/io.cozy.events/yes", {"v": "a" * 40})
    return data


def test_a_catastrophic_regex_cannot_freeze_the_server(stack, data):
    """``(a+)+$`` against 40 characters: hours for a backtracking engine;
    with a read-only token, through ``_changes?filter=_selector``."""
    admin = MemoryClient(stack.admin)
    reader = Data(data.public, token(admin, Audience="cli", Scope="io.cozy.events:GET"))
    selector = {"selector": {"v": {"$regex": "(a+)+$"}}}
    started = time.monotonic()
    changes = reader.post(
        "/io.cozy.events/_changes", selector, params={"filter": "_selector"}
    )
    found = data.post("/io.cozy.events/_find", selector)
    assert time.monotonic() - started < 5
    assert changes.status == 200, changes.body
    assert [row["id"] for row in changes.json()["results"]] == ["yes"]
    assert found.status == 200, found.body
    assert [doc["_id"] for doc in found.json()["docs"]] == ["yes"]


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)", "(?<=a)b", "("])
def test_regexes_that_cannot_run_are_400s(data, pattern):
    for response in (
        data.post("/io.cozy.events/_find", {"selector": {"v": {"$regex": pattern}}}),
        data.post(
            "/io.cozy.events/_changes",
            {"selector": {"v": {"$regex": pattern}}},
            params={"filter": "_selector"},
        ),
    ):
        assert response.status == 400, response.body
        body = response.json()
        assert body["error"] == "bad_arg"
        assert "$regex" in body["reason"]


def test_an_index_of_1000_fields_is_a_400(data):
    before = data.get("/io.cozy.events/_design_docs").json()["rows"]
    response = data.post(
        "/io.cozy.events/_index", {"index": {"fields": [f"f{i}" for i in range(1000)]}}
    )
    assert response.status == 400, response.body
    assert response.json()["error"] == "invalid_index"
    assert "at most" in response.json()["reason"]
    # Nothing was written: no design document.
    assert data.get("/io.cozy.events/_design_docs").json()["rows"] == before


def test_integers_beyond_64_bits_do_not_crash_the_storage():
    store = EmbeddedStore(None)
    db = "cozyaa/io-cozy-events"
    sync(store.create_db(db))
    sync(store.put_doc(db, {"_id": "a", "tags": [1]}))
    assert sync(store.all_docs(db, limit=HUGE))["rows"][0]["id"] == "a"
    assert sync(store.all_docs(db, skip=HUGE))["rows"] == []
    assert [r["id"] for r in sync(store.changes(db, limit=HUGE))["results"]] == ["a"]
    assert sync(store.changes(db, since=HUGE))["results"] == []
    uuid = sync(store.db_info(db))["update_seq"].split("-", 1)[1]
    assert sync(store.changes(db, since=f"{HUGE}-{uuid}"))["results"] == []
    assert sync(store.find(db, {"selector": {}, "limit": HUGE, "skip": 0}))["docs"]
    assert sync(store.find(db, {"selector": {}, "skip": HUGE}))["docs"] == []
    assert sync(store.find(db, {"selector": {"tags": {"$size": HUGE}}}))["docs"] == []
    with pytest.raises(InvalidRequest):
        sync(store.put_local(db, {"_id": "_local/x", "_rev": f"0-{HUGE}"}))
    with pytest.raises(InvalidRequest):
        sync(store.put_local(db, {"_id": "_local/x", "_rev": f"0-{2**63 - 1}"}))


def test_a_lone_surrogate_is_a_400_and_writes_nothing():
    store = EmbeddedStore(None)
    db = "cozyaa/io-cozy-events"
    sync(store.create_db(db))
    for call in (
        lambda: store.get_doc(db, "a\ud800"),
        lambda: store.put_doc(db, {"_id": "a\ud800"}),
        lambda: store.bulk_docs(db, [{"_id": "fine"}, {"_id": "b\udfff"}]),
        lambda: store.all_docs(db, start_key="\ud800"),
        lambda: store.find(db, {"selector": {"v": "\ud800"}}),
    ):
        with pytest.raises(InvalidRequest):
            sync(call())
    assert sync(store.all_docs(db))["rows"] == []


# -- storage errors: 503s without paths ---------------------------------------
def _stack_on_files(tmp_path):
    """The daemon's graph on a store of real files, run synchronously."""
    from twisted.internet.task import Clock

    from cozyd.config import load_config
    from cozyd.service import build_stack
    from cozyd.testing import run_now, write_config

    clock = Clock()
    clock.advance(1_800_000_000)
    config = load_config(write_config(str(tmp_path / "conf")), env={})
    store = EmbeddedStore(str(tmp_path / "db"), reactor=clock)
    sync(store.start())
    stack = build_stack(config, store=store, run_blocking=run_now, seconds=clock.seconds)
    return stack, store


def _global_file(tmp_path) -> str:
    return str(tmp_path / "db" / (INSTANCES_DB.split("/")[0] + ".sqlite"))


@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_an_unreadable_global_database_is_a_503_without_a_path(tmp_path, damage):
    stack, store = _stack_on_files(tmp_path)
    sync(stack.instances.setup())
    new_instance(MemoryClient(stack.admin))
    sync(store.close())
    path = _global_file(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"this is not a database, " * 100)
    else:
        os.mkdir(path)  # unreadable as a file, even by root
    stack, store = _stack_on_files(tmp_path)
    responses = [
        MemoryClient(stack.public).request("GET", "http://alice.cozy.test/data/"),
        MemoryClient(stack.admin).request(
            "GET", "http://localhost/instances", auth=("admin", _admin_passphrase())
        ),
    ]
    for response in responses:
        assert response.status == 503, response.body
        assert str(tmp_path) not in response.body.decode()
        assert ".sqlite" not in response.body.decode()
    with pytest.raises(StorageUnavailable) as caught:
        sync(store.get_doc(INSTANCES_DB, "x"))
    assert "/" not in caught.value.detail.replace("I/O", "")


def _admin_passphrase() -> str:
    from cozyd.testing import TEST_ADMIN_PASSPHRASE

    return TEST_ADMIN_PASSPHRASE


def test_a_failing_file_gives_a_reason_without_its_path(tmp_path):
    """An OSError names the file; the 503 says what happened, not where."""
    store = EmbeddedStore(str(tmp_path / "db"))
    sync(store.start())
    os.mkdir(tmp_path / "db" / "cozyaa.sqlite")
    with pytest.raises(StorageUnavailable) as caught:
        sync(store.create_db("cozyaa/io-cozy-events"))
    assert str(tmp_path) not in caught.value.detail
    assert "directory" in caught.value.detail.lower()
    blocked = tmp_path / "file"
    blocked.write_text("a file where the directory should be")
    with pytest.raises(StorageUnavailable) as caught:
        sync(EmbeddedStore(str(blocked / "db")).start())
    assert str(tmp_path) not in caught.value.detail
