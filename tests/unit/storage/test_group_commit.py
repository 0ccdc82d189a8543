"""Group commit on the embedded engine: concurrent writes to one file share
one transaction (one COMMIT, one fsync), each in its savepoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from cozyd.storage.interface import DatabaseNotFound, DocConflict
from cozyd.storage.sqlite import EmbeddedStore

DB = "cozyab12/io-cozy-files"
OTHER = "cozyab12/io-cozy-photos"  # same file (prefix), another database
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def pooled(tmp_path):
    """A store on a storage pool of two threads, on real files."""
    from cozyd.pools import WorkerPool

    pool = WorkerPool(reactor, "storage-test", threads=2)
    pool.start()
    store = EmbeddedStore(str(tmp_path / "data"), reactor=reactor, pool=pool)
    yield store
    pool.stop()


async def _until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition never held")


class _Holder:
    """Holds the file's queue with a job that waits, so that the writes
    submitted meanwhile queue up behind it (as under load)."""

    def __init__(self, store: EmbeddedStore, db: str):
        self.event = threading.Event()
        self.started = threading.Event()

        def stuck(database):
            self.started.set()
            self.event.wait(10)

        self.deferred = Deferred.fromCoroutine(store._read(db, stuck))

    async def release(self) -> None:
        self.event.set()
        await self.deferred


def _trace_commits(store: EmbeddedStore, prefix: str) -> list[str]:
    statements: list[str] = []
    connection = store._files[prefix].connection
    assert connection is not None
    connection.set_trace_callback(statements.append)  # runs in the pool thread
    return statements


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_are_answered_from_one_transaction(pooled):
    store = pooled
    await store.create_db(DB)
    await store.put_doc(DB, {"_id": "seed"})
    prefix_file = store._files["cozyab12"]
    # Every commit is durable: WAL with synchronous=FULL (an fsync a commit).
    connection = prefix_file.connection
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    statements = _trace_commits(store, "cozyab12")
    commits = prefix_file.commits
    holder = _Holder(store, DB)
    await _until(holder.started.is_set)
    writes = [
        Deferred.fromCoroutine(store.put_doc(DB, {"_id": f"d{n}", "n": n}))
        for n in range(20)
    ]
    await deferLater(reactor, 0.05)
    assert not any(d.called for d in writes)  # nobody answered before the commit
    await holder.release()
    results = await DeferredList(writes, fireOnOneErrback=True, consumeErrors=True)
    revs = [result["rev"] for _, result in results]
    assert all(rev.startswith("1-") for rev in revs)
    assert prefix_file.commits == commits + 1
    assert [s for s in statements if s.startswith(("COMMIT", "BEGIN"))] == [
        "BEGIN",
        "COMMIT",
        "BEGIN IMMEDIATE",
        "COMMIT",  # the holder, one group
    ]
    assert statements.count("COMMIT") == 2  # the holder's read and the group
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("SAVEPOINT write") == 20
    connection.set_trace_callback(None)
    # All of them are there, and in the database's sequence.
    for n, rev in enumerate(revs):
        doc = await store.get_doc(DB, f"d{n}")
        assert doc == {"_id": f"d{n}", "_rev": rev, "n": n}
    info = await store.db_info(DB)
    assert info["doc_count"] == 21 and info["update_seq"].startswith("21-")


@pytest_twisted.ensureDeferred
async def test_a_failing_write_does_not_fail_its_group(pooled):
    store = pooled
    await store.create_db(DB)
    first = await store.put_doc(DB, {"_id": "taken", "v": 1})
    prefix_file = store._files["cozyab12"]
    commits = prefix_file.commits

    def half_written(database):
        # Writes a document, then fails: its savepoint undoes the write alone.
        database.edit(_edit("half"))
        raise ValueError("a bug in the middle of a write")

    from cozyd.storage.sqlite.documents import _parse_edit

    def _edit(doc_id):
        return _parse_edit({"_id": doc_id, "x": 1}, new_edits=True)

    holder = _Holder(store, DB)
    await _until(holder.started.is_set)
    good = Deferred.fromCoroutine(store.put_doc(DB, {"_id": "a"}))
    conflict = Deferred.fromCoroutine(store.put_doc(DB, {"_id": "taken", "v": 2}))
    missing = Deferred.fromCoroutine(store.put_doc(OTHER, {"_id": "b"}))
    broken = Deferred.fromCoroutine(store._write(DB, half_written))
    updated = Deferred.fromCoroutine(
        store.put_doc(DB, {"_id": "taken", "_rev": first["rev"], "v": 3})
    )
    last = Deferred.fromCoroutine(store.put_doc(DB, {"_id": "c"}))
    await holder.release()
    assert (await good)["ok"]
    with pytest.raises(DocConflict):
        await conflict
    with pytest.raises(DatabaseNotFound):
        await missing
    with pytest.raises(ValueError):
        await broken
    assert (await updated)["rev"].startswith("2-")
    assert (await last)["ok"]
    assert prefix_file.commits == commits + 1  # one group
    assert (await store.get_doc(DB, "taken"))["v"] == 3
    rows = (await store.all_docs(DB))["rows"]
    assert [row["id"] for row in rows] == ["a", "c", "taken"]  # no "half"
    assert (await store.db_info(DB))["doc_count"] == 3
    assert not await store.db_exists(OTHER)


@pytest_twisted.ensureDeferred
async def test_writes_to_several_databases_of_a_file_share_a_group(pooled):
    store = pooled
    await store.create_db(DB)
    await store.create_db(OTHER)
    prefix_file = store._files["cozyab12"]
    commits = prefix_file.commits
    holder = _Holder(store, DB)
    await _until(holder.started.is_set)
    writes = [
        Deferred.fromCoroutine(store.put_doc(db, {"_id": f"{n}"}))
        for n in range(5)
        for db in (DB, OTHER)
    ]
    await holder.release()
    await DeferredList(writes, fireOnOneErrback=True, consumeErrors=True)
    assert prefix_file.commits == commits + 1
    for db in (DB, OTHER):
        assert (await store.db_info(db))["doc_count"] == 5


_WRITER = textwrap.dedent(
    """
    import sys
    from twisted.internet import task, defer
    from cozyd.pools import WorkerPool
    from cozyd.storage.sqlite import EmbeddedStore

    DB = "cozyab12/io-cozy-files"

    async def main(reactor):
        pool = WorkerPool(reactor, "storage", threads=2)
        pool.start()
        store = EmbeddedStore(sys.argv[1], reactor=reactor, pool=pool)
        await store.ensure_db(DB)
        print("ready", flush=True)

        async def writer(w):
            n = 0
            while True:
                doc_id = f"w{w}-{n}"
                result = await store.put_doc(
                    DB, {"_id": doc_id, "payload": doc_id * 50})
                print(doc_id, result["rev"], flush=True)
                n += 1

        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(writer(w)) for w in range(16)])

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    """
)


def test_kill_9_during_groups_keeps_every_acknowledged_write(tmp_path):
    """16 writers in groups, killed at once: every write answered before the
    kill is there, whole; nothing half-written."""
    data = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    acknowledged: dict[str, str] = {}
    try:
        assert process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(acknowledged) < 400 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            doc_id, rev = line.split()
            acknowledged[doc_id] = rev
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert len(acknowledged) >= 400
    import sqlite3

    connection = sqlite3.connect(str(data / "cozyab12.sqlite"))
    rows = {
        doc_id: (rev, body)
        for doc_id, rev, body in connection.execute("SELECT id, rev, body FROM docs")
    }
    count = connection.execute("SELECT doc_count FROM dbs").fetchone()[0]
    connection.close()
    for doc_id, rev in acknowledged.items():
        assert rows[doc_id][0] == rev
    for doc_id, (_rev, body) in rows.items():
        assert json.loads(body) == {"payload": doc_id * 50}  # whole, never torn
    assert count == len(rows)  # the counters and the rows of a group agree
