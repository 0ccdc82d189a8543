"""The SQLite files of the embedded engine: schema and migrations, connections,
and the per-file queue that serialises work on a file before it reaches the
storage pool (see ``_PrefixFile``)."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cozyd.storage import mango
from cozyd.storage.interface import InvalidRequest, StorageUnavailable

log = Logger()
T = TypeVar("T")


SCHEMA_VERSION = 1

# Each migration brings a file from the previous version to its own.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE dbs (
               name TEXT PRIMARY KEY,
               uuid TEXT NOT NULL,             -- part of the sequences emitted
               created REAL NOT NULL,
               update_seq INTEGER NOT NULL DEFAULT 0,
               doc_count INTEGER NOT NULL DEFAULT 0,
               doc_del_count INTEGER NOT NULL DEFAULT 0
           ) WITHOUT ROWID""",
        """CREATE TABLE docs (
               db TEXT NOT NULL,
               id TEXT NOT NULL,
               rev TEXT NOT NULL,              -- the winning revision
               deleted INTEGER NOT NULL,       -- the winner is a tombstone
               design INTEGER NOT NULL,        -- a _design/ document
               seq INTEGER NOT NULL,           -- sequence of the last change
               body TEXT NOT NULL,             -- the winner's body, no _ fields
               conflicts TEXT,                 -- JSON array of _conflicts, or NULL
               tree TEXT NOT NULL,             -- JSON revision tree
               PRIMARY KEY (db, id)
           )""",
        "CREATE UNIQUE INDEX docs_by_seq ON docs (db, seq)",
        """CREATE TABLE leaf_revs (
               db TEXT NOT NULL,
               id TEXT NOT NULL,
               rev TEXT NOT NULL,
               body TEXT NOT NULL,             -- (the tree tells if deleted)
               PRIMARY KEY (db, id, rev)
           )""",
        """CREATE TABLE local_docs (
               db TEXT NOT NULL,
               id TEXT NOT NULL,
               rev INTEGER NOT NULL,
               body TEXT NOT NULL,
               PRIMARY KEY (db, id)
           ) WITHOUT ROWID""",
        """CREATE TABLE mango_sql_indexes (
               name TEXT PRIMARY KEY,
               db TEXT NOT NULL,
               columns TEXT NOT NULL           -- JSON array of field names
           ) WITHOUT ROWID""",
    ],
}

# How long a job in the pool waits for a file another connection holds
# (inline reads on the reactor thread never wait).
_BUSY_TIMEOUT_MS = 10_000

# SQLite errors worth a retry later rather than a bug report.
_TRANSIENT_SQLITE_ERRORS = (
    "locked",
    "busy",
    "disk i/o",
    "unable to open",
    "readonly",
    "disk is full",
    "out of memory",
)


# =============================================================================
# SQLite files and connections
# =============================================================================
class _NoFile(Exception):
    """The prefix has no file (hence no database) yet."""


def _connect(path: str | None) -> sqlite3.Connection:
    if path is not None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # Instance data is private: create the file readable by us only.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    connection = sqlite3.connect(
        path or ":memory:",
        isolation_level=None,
        check_same_thread=False,
        timeout=_BUSY_TIMEOUT_MS / 1000,
    )
    try:
        mango.register_sql_functions(connection)
        if path is not None:
            connection.execute("PRAGMA journal_mode=WAL")
        # An acknowledged write must survive a power cut or a kill -9.
        connection.execute("PRAGMA synchronous=FULL")
        _migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    with _transaction(connection, write=True):
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"storage file has schema version {version}, newer than this "
                f"server's {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                connection.execute(statement)
        if row is None:
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, *, write: bool) -> Iterator[None]:
    # Reads get a snapshot too: several SELECTs answer one consistent state.
    connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        # SQLite may have rolled back already (a full disk, say): do not
        # hide the error that got us here behind a failed ROLLBACK.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class _Job:
    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        group: Callable[[list[tuple[Any, ...]]], list[Any]] | None = None,
    ):
        self.function = function
        self.args = args
        # A write that may share a transaction with the writes queued next
        # to it: ``group(args of each)`` runs them and answers each result.
        self.group = group
        self.cancelled = False
        self.deferred: Deferred = Deferred(self._cancel)

    def _cancel(self, _: Deferred) -> None:
        self.cancelled = True  # skipped if not started; else its result is dropped

    def deliver(self, result: Any) -> None:
        if not self.deferred.called:
            self.deferred.callback(result)  # a Failure goes down the errbacks


def _deliver_all(jobs: list[_Job], results: list[Any]) -> None:
    for job, result in zip(jobs, results, strict=False):
        job.deliver(result)


class _JobQueue:
    """The jobs of one file, run one at a time and in order.

    Jobs wait here, on the reactor thread's side, until the file is theirs:
    they never wait in the pool, and a pool thread never waits for another
    one. While the queue has jobs, one pool job drains it, running them
    one after another without a trip through the reactor in between (each
    result is sent back as soon as it is ready), and gives its thread back
    after ``BATCH`` jobs so that other files get their turn. Without a pool
    (fast tests) jobs run at once, in the calling thread.

    ``submit`` is called on the reactor thread only; ``_mutex`` guards
    ``running`` and the deque against the draining thread and is never
    held while a job runs.
    """

    BATCH = 32
    GROUP = 256  # writes committed together at most

    def __init__(
        self,
        run_in_pool: Callable[[Callable[[], None]], Deferred] | None,
        call_from_thread: Callable[..., None] | None,
    ):
        self._run_in_pool = run_in_pool
        self._call_from_thread = call_from_thread
        self._jobs: deque[_Job] = deque()
        self._mutex = threading.Lock()
        self.running = False  # a drain is under way (or an inline read)

    def submit(self, function: Callable[..., T], *args: Any) -> Deferred:
        return self._submit(_Job(function, args))

    def submit_grouped(
        self, group: Callable[[list[tuple[Any, ...]]], list[Any]], *args: Any
    ) -> Deferred:
        """A write: the writes found queued one after another when the drain
        reaches them run as one group, ``group([args, ...])``, which answers
        one result (or ``Failure``) per write (group commit)."""
        return self._submit(_Job(group, args, group))

    def _submit(self, job: _Job) -> Deferred:
        with self._mutex:
            self._jobs.append(job)
            start = not self.running
            self.running = True
        if start:
            self._start()
        return job.deferred

    def _start(self) -> None:
        if self._run_in_pool is None:
            self._drain(inline=True)
            return
        try:
            d = self._run_in_pool(self._drain)
        except BaseException:
            self._fail_all(Failure())
            return
        d.addErrback(self._fail_all)

    def _fail_all(self, failure: Failure) -> None:
        log.failure("storage jobs could not run", failure)
        with self._mutex:
            jobs, self._jobs = list(self._jobs), deque()
            self.running = False
        for job in jobs:
            job.deliver(failure)

    def _drain(self, inline: bool = False) -> None:
        done = 0
        while True:
            with self._mutex:
                if not self._jobs:
                    self.running = False
                    return
                if not inline and done >= self.BATCH:
                    break
                job = self._jobs.popleft()
                group = [job]
                if job.group is not None:
                    # Group commit: the writes queued behind this one join it.
                    while (
                        self._jobs
                        and self._jobs[0].group == job.group
                        and len(group) < self.GROUP
                    ):
                        group.append(self._jobs.popleft())
                    group = [j for j in group if not j.cancelled]
            if (job.group is None and job.cancelled) or not group:
                continue
            done += len(group)
            if job.group is None:
                try:
                    results = [job.function(*job.args)]
                except BaseException:
                    results = [Failure()]
            else:
                try:
                    results = job.group([j.args for j in group])
                except BaseException:
                    results = [Failure()] * len(group)
            # Free again before the callers hear back, so that the read they
            # make next may run inline.
            with self._mutex:
                finished = not self._jobs
                if finished:
                    self.running = False
            if inline:
                _deliver_all(group, results)
            else:
                self._call_from_thread(_deliver_all, group, results)  # type: ignore[misc]
            if finished:
                return
        # A batch is done and jobs remain: come again, behind other files.
        self._call_from_thread(self._start)  # type: ignore[misc]

    def hold(self) -> bool:
        """Take the free file for work done right now on the reactor
        thread (``release`` after); False if jobs are under way."""
        with self._mutex:
            if self.running:
                return False
            self.running = True
            return True

    def release(self) -> None:
        with self._mutex:
            start = bool(self._jobs)
            self.running = start
        if start:
            self._start()


class _PrefixFile:
    """The SQLite file of one prefix and its connection, opened on demand.

    Work on the file is serialised by ``queue`` (a ``_JobQueue``) *before*
    it goes to the thread pool: ``connection`` is only touched by the job
    the queue runs (or by an inline read on the reactor thread, which holds
    the free queue for its duration). The other attributes belong to the
    reactor thread.
    """

    def __init__(self, prefix: str, path: str | None, queue: _JobQueue):
        self.prefix = prefix
        self.path = path  # None: an in-memory database
        self.queue = queue
        self.connection: sqlite3.Connection | None = None
        self.users = 0  # operations under way
        self.may_be_open = False
        self.idle_call: Any = None
        self.commits = 0  # write transactions committed (groups)
        self.grouped_writes = 0  # writes they held

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def run(self, work: Callable[[sqlite3.Connection], T], create: bool) -> T:
        """Run ``work`` (a job of the queue, in a pool thread)."""
        try:
            if self.connection is None:
                if not create and (self.path is None or not os.path.exists(self.path)):
                    raise _NoFile()
                self.connection = _connect(self.path)
            return work(self.connection)
        except UnicodeEncodeError:
            raise _not_unicode() from None
        except (sqlite3.DatabaseError, OSError) as e:
            raise _unavailable(self.prefix, e) from e

    def run_group(
        self, writes: list[tuple[Callable[[sqlite3.Connection], Any], bool]]
    ) -> list[Any]:
        """Run writes ``(work, create)`` (jobs of the queue, in a pool
        thread) in one transaction, committed once (one fsync), each in its
        savepoint: a write that fails is undone alone, and its caller gets
        its error (a ``Failure``) while the others get their results once the
        transaction is durable. When SQLite itself rolls the transaction
        back (a full disk, say), or the commit fails, every write of the
        group fails: none was acknowledged."""
        with _sqlite_errors(self.prefix):
            if self.connection is None:
                create = any(create for _, create in writes)
                if not create and (self.path is None or not os.path.exists(self.path)):
                    raise _NoFile()
                self.connection = _connect(self.path)
            connection = self.connection
            results: list[Any] = []
            # A write alone needs no savepoint: its failure rolls back all.
            savepoints = len(writes) > 1
            connection.execute("BEGIN IMMEDIATE")
            try:
                for work, _ in writes:
                    if savepoints:
                        connection.execute("SAVEPOINT write")
                    try:
                        with _sqlite_errors(self.prefix):
                            result = work(connection)
                    except BaseException:
                        if not savepoints or not connection.in_transaction:
                            raise  # the whole group is rolled back
                        results.append(Failure())
                        connection.execute("ROLLBACK TO write")
                    else:
                        results.append(result)
                    if savepoints:
                        connection.execute("RELEASE write")
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            self.commits += 1
            self.grouped_writes += len(writes)
            return results

    def try_run(self, work: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run ``work`` now, on the calling thread, if the file is open and
        no job holds it; ``(False, None)`` otherwise. It never waits: SQLite
        gets a zero busy timeout, and a file another connection holds busy
        also answers ``(False, None)``, for the pool to wait instead."""
        if self.connection is None or not self.queue.hold():
            return False, None
        connection = self.connection
        try:
            connection.execute("PRAGMA busy_timeout = 0")
            try:
                return True, work(connection)
            finally:
                connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except UnicodeEncodeError:
            raise _not_unicode() from None
        except sqlite3.OperationalError as e:
            if _is_busy(e):
                return False, None
            raise _unavailable(self.prefix, e) from e
        except (sqlite3.DatabaseError, OSError) as e:
            raise _unavailable(self.prefix, e) from e
        finally:
            self.queue.release()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def remove(self) -> None:
        """Close, then delete the file and its WAL companions."""
        self.close()
        if self.path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.remove(self.path + suffix)
                except FileNotFoundError:
                    pass


@contextlib.contextmanager
def _sqlite_errors(prefix: str) -> Iterator[None]:
    """What ``_PrefixFile.run`` makes of the errors of SQLite."""
    try:
        yield
    except UnicodeEncodeError:
        raise _not_unicode() from None
    except (sqlite3.DatabaseError, OSError) as e:
        raise _unavailable(prefix, e) from e


def _not_unicode() -> InvalidRequest:
    # A string with a lone surrogate (an id, a key, a selector's operand)
    # cannot be given to SQLite: the transaction is rolled back.
    return InvalidRequest("Strings must be valid Unicode (a lone surrogate was given)")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _unavailable(prefix: str, error: BaseException) -> BaseException:
    """What a failure of a file becomes: ``StorageUnavailable`` (503) for
    what is worth a retry or an operator's look (a full disk, an unreadable
    or corrupt file), without the file's path; other SQLite errors are
    bugs and stay what they are."""
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
    elif type(error) is sqlite3.DatabaseError:
        reason = "unreadable storage file"  # not a database, or malformed
    elif isinstance(error, sqlite3.OperationalError) and any(
        word in str(error).lower() for word in _TRANSIENT_SQLITE_ERRORS
    ):
        reason = str(error)
    else:
        return error
    # The log has the details (the path is there); the client does not.
    log.error(
        "storage file of {prefix} unavailable: {error}", prefix=prefix, error=repr(error)
    )
    return StorageUnavailable(f"storage unavailable ({_strip_paths(reason)})")


def _strip_paths(text: str) -> str:
    return re.sub(r"(?<!\w)/[^\s'\"]+", "<path>", text)
