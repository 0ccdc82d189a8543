"""What only the embedded engine has: its files, connections and SQLite.

Without a thread pool the engine runs SQLite in the calling thread, so the
coroutines finish at once and these tests need no reactor running.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from cozyd.storage.interface import (
    DatabaseNotFound,
    DocNotFound,
    InvalidRequest,
    StorageUnavailable,
)
from cozyd.storage.sqlite import SCHEMA_VERSION, EmbeddedStore

DB = "cozyab12/io-cozy-files"
REPO = Path(__file__).resolve().parents[3]


def done(coroutine):
    """The result of a coroutine that completes at once (or raise its error)."""
    results = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine did not complete synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def open_files(directory: Path) -> list[str]:
    """Paths under ``directory`` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(directory, clock):
    store = EmbeddedStore(str(directory), reactor=clock, idle_timeout=30)
    done(store.start())
    yield store
    done(store.close())


def test_coroutines_complete_without_a_reactor():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    assert done(store.put_doc(DB, {"_id": "a"}))["ok"] is True


# -- files ---------------------------------------------------------------------
def test_one_file_per_prefix(store, directory):
    done(store.create_db(DB))
    done(store.create_db("cozyab12/io-cozy-apps"))
    done(store.create_db("cozycd34/io-cozy-files"))
    done(store.create_db("global/instances"))
    names = {name for name in os.listdir(directory) if name.endswith(".sqlite")}
    assert names == {"cozyab12.sqlite", "cozycd34.sqlite", "global.sqlite"}
    assert (directory / "cozyab12.sqlite").stat().st_mode & 0o077 == 0  # private


def test_reading_a_prefix_without_file_creates_nothing(store, directory):
    assert done(store.db_exists(DB)) is False
    assert done(store.list_dbs("cozyab12")) == []
    with pytest.raises(DatabaseNotFound):
        done(store.get_doc(DB, "x"))
    assert not directory.exists() or os.listdir(directory) == []


def test_delete_prefix_removes_the_file(store, directory):
    done(store.create_db(DB))
    done(store.put_doc(DB, {"_id": "a"}))
    assert (directory / "cozyab12.sqlite-wal").exists()
    done(store.delete_prefix("cozyab12"))
    assert not any(name.startswith("cozyab12") for name in os.listdir(directory))
    assert open_files(directory) == []
    assert done(store.db_exists(DB)) is False


@pytest.mark.parametrize(
    "name",
    [
        "../x/io-cozy-files",
        "cozy/../../etc",
        "cozy/a/../b",
        "cozy%2Fa",
        "/etc/passwd",
        "cozy/\x00",
    ],
)
def test_bad_names_never_reach_a_path(store, directory, name):
    with pytest.raises(InvalidRequest):
        done(store.create_db(name))
    with pytest.raises(InvalidRequest):
        done(store.delete_prefix(name))
    assert not directory.exists() or os.listdir(directory) == []


# -- connections ---------------------------------------------------------------
def test_idle_files_are_closed(store, directory, clock):
    for prefix in ("cozyaa", "cozybb"):
        done(store.create_db(f"{prefix}/io-cozy-files"))
    assert open_files(directory)  # the database and its WAL
    clock.advance(20)
    done(store.put_doc("cozyaa/io-cozy-files", {"_id": "x"}))  # cozyaa in use again
    clock.advance(15)
    still_open = open_files(directory)
    assert still_open and all("cozyaa" in path for path in still_open)
    clock.advance(30)
    assert open_files(directory) == []
    # Used again, a file opens again.
    assert done(store.get_doc("cozyaa/io-cozy-files", "x"))["_id"] == "x"
    assert open_files(directory)


def test_memory_is_given_back_once_after_idle_files_close(
    store, directory, clock, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        "cozyd.storage.sqlite.store.release_freed_memory", lambda: calls.append(1)
    )
    for prefix in ("cozyaa", "cozybb", "cozycc"):
        done(store.create_db(f"{prefix}/io-cozy-files"))
    clock.advance(31)  # all three close
    assert open_files(directory) == [] and calls == []
    clock.advance(store.trim_delay)
    assert calls == [1]  # one trim for the three
    clock.advance(store.trim_delay * 3)
    assert calls == [1]  # and none while nothing closes


@pytest_twisted.ensureDeferred
async def test_idle_files_are_closed_with_a_thread_pool(directory):
    store = EmbeddedStore(
        str(directory),
        reactor=reactor,
        threadpool=reactor.getThreadPool(),
        idle_timeout=0.05,
    )
    try:
        await store.create_db(DB)
        await store.put_doc(DB, {"_id": "a"})
        assert open_files(directory)
        for _ in range(200):  # closing happens in a thread: wait for it
            if not open_files(directory):
                break
            await deferLater(reactor, 0.02)
        assert open_files(directory) == []
        assert (await store.get_doc(DB, "a"))["_id"] == "a"
    finally:
        await store.close()
    assert open_files(directory) == []


def test_at_most_max_open_files(directory, clock):
    store = EmbeddedStore(str(directory), reactor=clock, max_open=2)
    for prefix in ("cozyaa", "cozybb", "cozycc"):
        done(store.create_db(f"{prefix}/io-cozy-files"))
    opened = {Path(path).name.split(".")[0] for path in open_files(directory)}
    assert opened == {"cozybb", "cozycc"}  # the least recently used went first
    done(store.close())
    assert open_files(directory) == []


def test_close_closes_everything_and_ends_the_store(store, directory):
    done(store.create_db(DB))
    done(store.close())
    assert open_files(directory) == []
    with pytest.raises(StorageUnavailable):
        done(store.get_doc(DB, "x"))
    assert done(store.health()) is False


def test_sqlite_settings(store, directory):
    done(store.create_db(DB))
    done(store.close())
    conn = sqlite3.connect(directory / "cozyab12.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    conn.close()


def test_a_file_from_a_newer_server_is_refused(store, directory):
    done(store.create_db(DB))
    done(store.close())
    conn = sqlite3.connect(directory / "cozyab12.sqlite")
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    again = EmbeddedStore(str(directory))
    with pytest.raises(StorageUnavailable):
        done(again.db_info(DB))


# -- durability ----------------------------------------------------------------
def test_data_survives_a_restart(directory):
    first = EmbeddedStore(str(directory))
    done(first.create_db(DB))
    rev = done(first.put_doc(DB, {"_id": "a", "v": 1}))["rev"]
    done(first.close())
    second = EmbeddedStore(str(directory))
    assert done(second.get_doc(DB, "a")) == {"_id": "a", "_rev": rev, "v": 1}
    done(second.close())


KILLED_WRITER = """
import os, signal, sys
from twisted.internet.defer import Deferred
from cozyd.storage.sqlite import EmbeddedStore

def done(coroutine):
    results = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    return results[0]

store = EmbeddedStore(sys.argv[1])
done(store.create_db("cozyab12/io-cozy-files"))
results = done(store.bulk_docs("cozyab12/io-cozy-files",
                               [{"_id": str(i), "v": i} for i in range(50)]))
print(results[-1]["rev"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_writes_survive_kill_9(directory):
    writer = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert writer.returncode == -signal.SIGKILL, writer.stderr
    store = EmbeddedStore(str(directory))
    assert done(store.get_doc(DB, "49"))["_rev"] == writer.stdout.strip()
    assert done(store.db_info(DB))["doc_count"] == 50
    done(store.close())


# -- in memory -----------------------------------------------------------------
def test_in_memory_prefixes_are_kept_apart():
    store = EmbeddedStore(None, idle_timeout=0.001)
    done(store.create_db("cozyaa/io-cozy-files"))
    done(store.create_db("cozybb/io-cozy-files"))
    done(store.put_doc("cozyaa/io-cozy-files", {"_id": "x"}))
    with pytest.raises(DocNotFound):
        done(store.get_doc("cozybb/io-cozy-files", "x"))
    done(store.delete_prefix("cozyaa"))
    assert done(store.db_exists("cozyaa/io-cozy-files")) is False
    assert done(store.list_dbs("cozybb")) == ["cozybb/io-cozy-files"]


# -- engine details ------------------------------------------------------------
def test_revision_histories_are_stemmed():
    store = EmbeddedStore(None, revs_limit=3)
    done(store.create_db(DB))
    rev = done(store.put_doc(DB, {"_id": "a", "v": 0}))["rev"]
    for v in range(1, 6):
        rev = done(store.put_doc(DB, {"_id": "a", "_rev": rev, "v": v}))["rev"]
    revisions = done(store.get_doc(DB, "a", revs=True))["_revisions"]
    assert revisions["start"] == 6 and len(revisions["ids"]) == 3


@pytest.mark.parametrize("body", [{"x": float("nan")}, {"x": {1, 2}}, {"x": "\ud800"}])
def test_bodies_must_be_json(body):
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    with pytest.raises(InvalidRequest):
        done(store.put_doc(DB, {"_id": "a", **body}))


def test_a_recreated_database_restarts_old_sequences():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    for i in range(5):
        done(store.put_doc(DB, {"_id": str(i)}))
    old_seq = done(store.changes(DB))["last_seq"]
    done(store.delete_db(DB))
    done(store.create_db(DB))
    done(store.put_doc(DB, {"_id": "new"}))
    # Sequences are opaque and belong to one life of the database.
    assert [r["id"] for r in done(store.changes(DB, since=old_seq))["results"]] == ["new"]
    with pytest.raises(InvalidRequest):
        done(store.changes(DB, since="garbage"))


def sqlite_indexes(store, prefix="cozyab12"):
    conn = store._files[prefix].connection  # white box: the live connection
    return {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'mango_%'"
        )
    }


def test_mango_indexes_follow_their_design_documents():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    done(store.create_index(DB, ["a", "b"], ddoc="one", name="one"))
    done(store.create_index(DB, ["a", "b"], ddoc="two", name="two"))  # shares one
    assert len(sqlite_indexes(store)) == 1
    done(store.create_index(DB, ["c"], ddoc="one", name="other"))
    assert len(sqlite_indexes(store)) == 2
    ddoc = done(store.get_doc(DB, "_design/one"))
    done(store.delete_doc(DB, "_design/one", ddoc["_rev"]))
    assert len(sqlite_indexes(store)) == 1
    done(store.delete_db(DB))
    assert sqlite_indexes(store) == set()


def test_find_reads_through_the_index():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    done(
        store.bulk_docs(
            DB,
            [{"_id": f"{i:04}", "dir": f"d{i % 50}", "name": f"n{i}"} for i in range(1000)],
        )
    )
    done(store.create_index(DB, ["dir", "name"], ddoc="by-dir", name="by-dir"))
    conn = store._files["cozyab12"].connection
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    result = done(
        store.find(
            DB,
            {
                "selector": {"dir": "d7", "name": {"$gt": "n5"}},
                "sort": ["dir", "name"],
                "execution_stats": True,
            },
        )
    )
    conn.set_trace_callback(None)
    assert [doc["name"] for doc in result["docs"]] == sorted(
        f"n{i}" for i in range(7, 1000, 50) if f"n{i}" > "n5"
    )
    assert result["execution_stats"]["total_docs_examined"] == len(result["docs"])
    [select] = [sql for sql in traced if sql.startswith("SELECT id, rev")]
    plan = conn.execute("EXPLAIN QUERY PLAN " + select).fetchall()
    assert [row[3] for row in plan] == [
        f"SEARCH docs USING INDEX {min(sqlite_indexes(store))} (<expr>=? AND <expr>>?)"
    ]


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "a.0", "a\\.b", "_id", "ünï"])
def test_index_on_unusual_field_names(name):
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    path = name.replace("\\.", ".").split(".") if name != "a\\.b" else ["a.b"]
    docs = []
    for i in range(3):
        body = value = i
        for part in reversed(path):
            body = [value] if part == "0" else {part: body}
        docs.append(body if name != "_id" else {"_id": f"id{i}"})
    for n, doc in enumerate(docs):
        doc.setdefault("_id", f"id{n}")
        done(store.put_doc(DB, doc))
    done(store.create_index(DB, [name], ddoc="x", name="x"))
    bound = 0 if name != "_id" else "id0"
    result = done(store.find(DB, {"selector": {name: {"$gt": bound}}, "sort": [name]}))
    assert [doc["_id"] for doc in result["docs"]] == ["id1", "id2"]
    assert "warning" not in result


def test_an_invalid_bookmark_is_refused():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    with pytest.raises(InvalidRequest) as caught:
        done(store.find(DB, {"selector": {}, "bookmark": "not-a-bookmark"}))
    assert caught.value.code == "invalid_bookmark"
    other = json.dumps({"k": ["00"], "id": "x"}).encode().hex()
    with pytest.raises(InvalidRequest):
        done(store.find(DB, {"selector": {}, "bookmark": other}))


def test_conflicts_in_mango_queries():
    store = EmbeddedStore(None)
    done(store.create_db(DB))
    done(store.put_doc(DB, {"_id": "plain", "kind": "file"}))
    for path in (
        ["2-" + "b" * 32, "1-" + "a" * 32],
        ["2-" + "c" * 32, "1-" + "a" * 32],
    ):
        done(
            store.bulk_docs(
                DB,
                [
                    {
                        "_id": "torn",
                        "_rev": path[0],
                        "kind": "file",
                        "_revisions": {"start": 2, "ids": [r[2:] for r in path]},
                    }
                ],
                new_edits=False,
            )
        )
    query = {"selector": {"_conflicts": {"$exists": True}}}
    assert done(store.find(DB, query))["docs"] == []  # not asked: not visible
    [doc] = done(store.find(DB, {**query, "conflicts": True}))["docs"]
    assert doc["_id"] == "torn" and doc["_conflicts"] == ["2-" + "b" * 32]
    # An index on _conflicts holds the documents that have some.
    done(store.create_index(DB, ["_conflicts"], ddoc="c", name="c"))
    result = done(store.find(DB, {**query, "conflicts": True, "use_index": "c"}))
    assert [d["_id"] for d in result["docs"]] == ["torn"] and "warning" not in result


# -- the pool and the per-file queue --------------------------------------------
async def _until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition never held")


@pytest.fixture
def pooled(directory):
    """A store on a storage pool of two threads (``(store, pool)``)."""
    from cozyd.pools import WorkerPool

    pool = WorkerPool(reactor, "storage-test", threads=2)
    pool.start()
    store = EmbeddedStore(str(directory), reactor=reactor, pool=pool)
    yield store, pool
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_jobs_of_a_busy_file_wait_before_the_pool(pooled):
    """A file's jobs queue on the reactor thread, not in pool threads: one
    stuck job of one instance cannot take every thread from the others."""
    store, pool = pooled
    hot, cold = "cozyaa/io-cozy-files", "cozybb/io-cozy-files"
    release = threading.Event()
    try:
        await store.create_db(hot)
        await store.create_db(cold)
        await store.put_doc(cold, {"_id": "c"})

        def stuck(database):
            release.wait(10)
            return "done"

        held = [Deferred.fromCoroutine(store._read(hot, stuck)) for _ in range(4)]
        await _until(lambda: pool.pending == 1)
        assert pool.pending == 1  # the other three wait on the file's queue
        other = Deferred.fromCoroutine(store.all_docs(cold))
        other.addTimeout(5, reactor)
        assert [row["id"] for row in (await other)["rows"]] == ["c"]
        assert not any(d.called for d in held)
        release.set()
        assert [await d for d in held] == ["done"] * 4
    finally:
        release.set()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_caller_keeps_its_file_until_its_job_ends(pooled):
    store, _ = pooled
    release = threading.Event()
    started: list[str] = []
    try:
        await store.create_db(DB)

        def stuck(database):
            started.append("first")
            release.wait(10)

        def second(database):
            started.append("second")
            return "second done"

        first = Deferred.fromCoroutine(store._write(DB, stuck))
        await _until(lambda: started == ["first"])
        following = Deferred.fromCoroutine(store._read(DB, second))
        first.cancel()  # the client went away: its job still runs
        with pytest.raises(CancelledError):
            await first
        await deferLater(reactor, 0.1)
        assert started == ["first"]  # the connection is not shared meanwhile
        release.set()
        assert await following == "second done"
    finally:
        release.set()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_inline_reads_never_wait_and_fall_back_to_the_pool(pooled):
    """Primary-key reads run on the reactor thread when the file is free,
    with a zero busy timeout; a busy file sends them to the pool."""
    store, _ = pooled
    seen: list[tuple[bool, int]] = []
    busy = [True]
    try:
        await store.create_db(DB)
        await store.put_doc(DB, {"_id": "a"})

        def read(database):
            timeout = database.conn.execute("PRAGMA busy_timeout").fetchone()[0]
            on_reactor = threading.current_thread() is threading.main_thread()
            seen.append((on_reactor, timeout))
            if on_reactor and busy[0]:
                busy[0] = False
                raise sqlite3.OperationalError("database is locked")
            return "read"

        assert await store._read(DB, read, inline=True) == "read"
        assert seen == [(True, 0), (False, 10_000)]
        assert (await store.get_doc(DB, "a"))["_id"] == "a"
        # A free file: on the reactor thread at once.
        seen.clear()
        assert await store._read(DB, read, inline=True) == "read"
        assert seen == [(True, 0)]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_busy_file_gives_its_thread_back_between_batches(directory):
    """One pool thread, a long queue on one file: another file's job runs
    after at most one batch of the first, not after all of it."""
    from cozyd.pools import WorkerPool
    from cozyd.storage.sqlite.files import _JobQueue

    pool = WorkerPool(reactor, "storage-one", threads=1)
    pool.start()
    store = EmbeddedStore(str(directory), reactor=reactor, pool=pool)
    hot, cold = "cozyaa/io-cozy-files", "cozybb/io-cozy-files"
    order: list[str] = []
    try:
        await store.create_db(hot)
        await store.create_db(cold)
        release = threading.Event()

        def first(database):
            release.wait(10)
            order.append("hot")

        def job(name):
            return lambda database: order.append(name)

        jobs = [Deferred.fromCoroutine(store._read(hot, first))]
        await _until(lambda: pool.pending == 1)
        count = 3 * _JobQueue.BATCH
        jobs += [Deferred.fromCoroutine(store._read(hot, job("hot"))) for _ in range(count)]
        jobs.append(Deferred.fromCoroutine(store._read(cold, job("cold"))))
        release.set()
        for d in jobs:
            await d
        assert order.index("cold") <= _JobQueue.BATCH + 1
        assert order.count("hot") == count + 1
    finally:
        await store.close()
        pool.stop()
