"""The embedded storage engine: CouchDB semantics on SQLite.

One SQLite file per prefix (``<directory>/<prefix>.sqlite``) holds all the
databases of that prefix, so an instance's data stays apart from the
others' and destroying or exporting it is a matter of one file. Each file:

- ``dbs``: one row per logical database (its incarnation token, update
  sequence and document counts);
- ``docs``: one row per document: its revision tree (JSON, see
  ``revisions.py``), its winning revision and that revision's body;
- ``leaf_revs``: the bodies of the other leaves (conflicting branches and
  deleted leaves); bodies of inner revisions are not kept, as after a
  CouchDB compaction;
- ``local_docs``: ``_local`` documents (no history, no sequence);
- ``mango_sql_indexes``: the SQLite expression indexes created for the
  Mango indexes of each database (see ``_MangoIndexes``).

Connections are opened on demand, at most ``max_open`` at a time (least
recently used closed first), and closed after ``idle_timeout`` seconds
without use: an idle instance holds no open file. All blocking SQLite work
runs in ``threadpool`` (or synchronously without one, for fast tests), one
thread at a time per file. Every write is one transaction (a whole
``bulk_docs`` batch included) in WAL mode with ``synchronous=FULL``, so an
acknowledged write survives a crash.

Document ids are ordered by code point, which is what CouchDB's
``_all_docs`` does (raw collation of ids).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from cozyd.storage import mango
from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    Doc,
    DocConflict,
    DocNotFound,
    InvalidRequest,
    NoIndex,
    StorageError,
    StorageUnavailable,
    new_doc_id,
)
from cozyd.storage.names import split_db_name
from cozyd.storage.revisions import (
    DEFAULT_REVS_LIMIT,
    InvalidRevision,
    MergeOutcome,
    RevTree,
    add_child,
    merge_path,
    missing_revs,
    new_rev,
    parse_rev,
    revision_path,
    stem,
)

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

# Fields of a document body CouchDB keeps although they start with "_".
_KEPT_SPECIAL_FIELDS = frozenset(
    {
        "_access",
        "_replication_state",
        "_replication_state_time",
        "_replication_state_reason",
        "_replication_id",
        "_replication_stats",
    }
)
# Fields CouchDB accepts in a body and ignores.
_IGNORED_SPECIAL_FIELDS = frozenset(
    {"_revs_info", "_local_seq", "_conflicts", "_deleted_conflicts"}
)
_LOCAL_PREFIX = "_local/"
_DESIGN_PREFIX = "_design/"
_SINCE_RE = re.compile(r"([0-9]+)(?:-(.*))?", re.DOTALL)
_SQLITE_MAX_INT = 2**63 - 1


# =============================================================================
# Validation of what callers pass
# =============================================================================
def _split_name(db: Any) -> tuple[str, str]:
    try:
        return split_db_name(db if isinstance(db, str) else "")
    except ValueError:
        raise InvalidRequest(
            f"Invalid database name: {db!r}", code="illegal_database_name"
        ) from None


def _check_prefix(prefix: Any) -> str:
    _split_name(f"{prefix}/x" if isinstance(prefix, str) else None)
    return prefix


def _illegal_id(reason: str) -> InvalidRequest:
    return InvalidRequest(reason, code="illegal_docid")


def _check_doc_id(doc_id: Any) -> str:
    """CouchDB's rules for the id of a document being written."""
    if not isinstance(doc_id, str):
        raise _illegal_id("Document id must be a string")
    if not doc_id:
        raise _illegal_id("Document id must not be empty")
    if doc_id in (_DESIGN_PREFIX, _LOCAL_PREFIX):
        raise _illegal_id(f"Illegal document id `{doc_id}`")
    if doc_id.startswith("_") and not doc_id.startswith(
        (_DESIGN_PREFIX, _LOCAL_PREFIX)
    ):
        raise _illegal_id("Only reserved document ids may start with underscore.")
    return doc_id


def _check_read_id(doc_id: Any) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise _illegal_id("Document id must be a non-empty string")
    return doc_id


def _local_id(doc_id: Any) -> str:
    """``x`` or ``_local/x`` → ``_local/x``."""
    doc_id = _check_read_id(doc_id)
    if not doc_id.startswith(_LOCAL_PREFIX):
        doc_id = _LOCAL_PREFIX + doc_id
    return _check_doc_id(doc_id)


def _dump_body(body: Mapping[str, Any]) -> str:
    """The stored JSON of a body (``InvalidRequest`` if it is not JSON)."""
    try:
        text = json.dumps(
            body, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidRequest(f"Document is not valid JSON: {e}") from None
    return text


def _count(value: Any, name: str) -> int:
    """A limit or a skip: any non-negative integer, the ones beyond what
    SQLite holds (64 bits) clamped: no database has that many rows."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return min(value, _SQLITE_MAX_INT)


def _limit(value: Any) -> int | None:
    return None if value is None else _count(value, "limit")


@dataclass
class _Edit:
    """A document to write, split into what CouchDB reads from it."""

    id: str
    rev: str | None  # the parent revision (interactive edit)
    path: list[str] | None  # the revisions brought (replication)
    deleted: bool
    body: Doc
    body_json: str

    @property
    def is_local(self) -> bool:
        return self.id.startswith(_LOCAL_PREFIX)


def _parse_edit(
    doc: Any, *, new_edits: bool, default_id: Callable[[], str] | None = None
) -> _Edit:
    if not isinstance(doc, dict):
        raise InvalidRequest("Document must be a JSON object")
    if "_id" not in doc and default_id is not None:
        doc_id = default_id()
    else:
        doc_id = _check_doc_id(doc.get("_id"))
    rev = doc.get("_rev")
    if rev is not None:
        parse_rev(rev)
    deleted = doc.get("_deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidRequest(
            "Bad special document member: _deleted", code="doc_validation"
        )
    body = {}
    for name, value in doc.items():
        if not name.startswith("_") or name in _KEPT_SPECIAL_FIELDS:
            body[name] = value
        elif name == "_attachments":
            raise InvalidRequest(
                "Attachments are not supported.", code="doc_validation"
            )
        elif (
            name not in ("_id", "_rev", "_deleted", "_revisions")
            and name not in _IGNORED_SPECIAL_FIELDS
        ):
            raise InvalidRequest(
                f"Bad special document member: {name}", code="doc_validation"
            )
    path = None
    if doc_id.startswith(_LOCAL_PREFIX):
        pass  # no history: the revision is a counter
    elif not new_edits:
        if rev is None and "_revisions" not in doc:
            raise InvalidRequest(f"Document {doc_id} has no _rev to replicate")
        path = revision_path(rev, doc.get("_revisions"))
    elif "_revisions" in doc:
        # The newest revision of the history is the one edited.
        rev = revision_path(rev, doc["_revisions"])[0]
    return _Edit(doc_id, rev, path, deleted, body, _dump_body(body))


def _doc_json(doc_id: str, rev: str, deleted: bool, body: Mapping[str, Any]) -> Doc:
    doc: Doc = {"_id": doc_id, "_rev": rev}
    doc.update(body)
    if deleted:
        doc["_deleted"] = True
    return doc


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
            connection.execute(
                "INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,)
            )
        elif version != SCHEMA_VERSION:
            connection.execute(
                "UPDATE schema_version SET version = ?", (SCHEMA_VERSION,)
            )


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


class _PrefixFile:
    """The SQLite file of one prefix and its connection, opened on demand.

    Work on the file is serialised by ``queue``, a ``DeferredLock`` taken
    on the reactor thread *before* a job goes to the thread pool: a pool
    thread never waits for another one, and ``connection`` is only touched
    by the job holding the queue (or by an inline read on the reactor
    thread, which takes the free queue for its duration). The attributes
    belong to the reactor thread.
    """

    def __init__(self, prefix: str, path: str | None):
        self.prefix = prefix
        self.path = path  # None: an in-memory database
        self.queue = DeferredLock()
        self.connection: sqlite3.Connection | None = None
        self.users = 0  # operations under way
        self.may_be_open = False
        self.idle_call: Any = None

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def run(self, work: Callable[[sqlite3.Connection], T], create: bool) -> T:
        """Run ``work`` (in a pool thread, the queue held for it)."""
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

    def try_run(self, work: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run ``work`` now, on the calling thread, if the file is open and
        no job holds it; ``(False, None)`` otherwise. It never waits: SQLite
        gets a zero busy timeout, and a file another connection holds busy
        also answers ``(False, None)``, for the pool to wait instead."""
        if self.connection is None or self.queue.locked:
            return False, None
        self.queue.acquire()  # free: taken at once
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
    log.error("storage file of {prefix} unavailable: {error}", prefix=prefix,
              error=repr(error))
    return StorageUnavailable(f"storage unavailable ({_strip_paths(reason)})")


def _strip_paths(text: str) -> str:
    return re.sub(r"(?<!\w)/[^\s'\"]+", "<path>", text)


# =============================================================================
# One logical database inside a file, for the length of one operation
# =============================================================================
@dataclass
class _StoredDoc:
    id: str
    rev: str  # the winner
    deleted: bool
    seq: int
    body_json: str
    conflicts_json: str | None
    tree: RevTree

    def body(self) -> Doc:
        return json.loads(self.body_json)


@dataclass
class _DbMeta:
    uuid: str
    update_seq: int
    doc_count: int
    doc_del_count: int

    def seq(self, number: int) -> str:
        """An emitted sequence: the number and the database's incarnation,
        so that a sequence of a deleted and re-created database is known."""
        return f"{number}-{self.uuid}"


_DOC_COLUMNS = "id, rev, deleted, seq, body, conflicts, tree"


def _stored_doc(row: tuple[Any, ...]) -> _StoredDoc:
    doc_id, rev, deleted, seq, body, conflicts, tree = row
    return _StoredDoc(
        doc_id,
        rev,
        bool(deleted),
        seq,
        body,
        conflicts,
        RevTree.from_json(json.loads(tree)),
    )


@dataclass
class _Database:
    """SQL for one logical database (``name``: the part after the prefix).

    Its methods expect the database to exist (``EmbeddedStore`` checks it
    with ``meta()`` first), but ``exists`` and ``create``."""

    conn: sqlite3.Connection
    name: str
    revs_limit: int = DEFAULT_REVS_LIMIT
    _meta: _DbMeta | None = field(default=None, init=False)

    # -- the database itself ---------------------------------------------------
    def exists(self) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM dbs WHERE name = ?", (self.name,)
            ).fetchone()
            is not None
        )

    def meta(self) -> _DbMeta:
        """The database's row; ``DatabaseNotFound`` when there is none."""
        if self._meta is None:
            row = self.conn.execute(
                "SELECT uuid, update_seq, doc_count, doc_del_count FROM dbs"
                " WHERE name = ?",
                (self.name,),
            ).fetchone()
            if row is None:
                raise DatabaseNotFound()
            self._meta = _DbMeta(*row)
        return self._meta

    def create(self) -> None:
        if self.exists():
            raise DatabaseExists()
        self.conn.execute(
            "INSERT INTO dbs (name, uuid, created) VALUES (?, ?, ?)",
            (self.name, secrets.token_hex(4), time.time()),
        )

    def drop(self) -> None:
        _MangoIndexes(self).drop_all()
        for table in ("docs", "leaf_revs", "local_docs"):
            self.conn.execute(f"DELETE FROM {table} WHERE db = ?", (self.name,))
        self.conn.execute("DELETE FROM dbs WHERE name = ?", (self.name,))

    def info(self, db: str) -> Doc:
        meta = self.meta()
        return {
            "db_name": db,
            "doc_count": meta.doc_count,
            "doc_del_count": meta.doc_del_count,
            "update_seq": meta.seq(meta.update_seq),
            "purge_seq": meta.seq(0),
            "compact_running": False,
            "instance_start_time": "0",
            "props": {},
        }

    # -- reading documents -----------------------------------------------------
    def load(self, doc_id: str) -> _StoredDoc | None:
        row = self.conn.execute(
            f"SELECT {_DOC_COLUMNS} FROM docs WHERE db = ? AND id = ?",
            (self.name, doc_id),
        ).fetchone()
        return _stored_doc(row) if row else None

    def leaf_bodies(self, stored: _StoredDoc) -> dict[str, str]:
        """The body JSON of each leaf of a stored document."""
        bodies = {stored.rev: stored.body_json}
        if len(stored.tree.leaves()) > 1:
            rows = self.conn.execute(
                "SELECT rev, body FROM leaf_revs WHERE db = ? AND id = ?",
                (self.name, stored.id),
            )
            bodies.update(rows)
        return bodies

    def leaf_doc(
        self,
        stored: _StoredDoc,
        rev: str,
        *,
        revs: bool = False,
        bodies: dict[str, str] | None = None,
    ) -> Doc:
        """The document at leaf ``rev``, as CouchDB returns it."""
        if bodies is None:
            bodies = (
                {stored.rev: stored.body_json}
                if rev == stored.rev
                else self.leaf_bodies(stored)
            )
        doc = _doc_json(
            stored.id, rev, stored.tree.is_deleted(rev), json.loads(bodies[rev])
        )
        if revs:
            doc["_revisions"] = stored.tree.revisions(rev)
        return doc

    def winner_doc(self, stored: _StoredDoc, *, conflicts: bool = False) -> Doc:
        doc = _doc_json(stored.id, stored.rev, stored.deleted, stored.body())
        if conflicts and stored.conflicts_json:
            doc["_conflicts"] = json.loads(stored.conflicts_json)
        return doc

    # -- writing documents -----------------------------------------------------
    def save(
        self,
        doc_id: str,
        old: _StoredDoc | None,
        tree: RevTree,
        new_leaf: tuple[str, str] | None = None,
    ) -> None:
        """Store ``tree`` (stemmed here) as the new state of ``doc_id``;
        ``new_leaf``: the ``(rev, body JSON)`` of a revision just added."""
        tree = stem(tree, self.revs_limit)
        bodies = self.leaf_bodies(old) if old else {}
        if new_leaf is not None:
            bodies[new_leaf[0]] = new_leaf[1]
        leaves = tree.leaves()
        winner = leaves[0]
        deleted = tree.is_deleted(winner)
        conflicts = tree.conflicts()
        meta = self.meta()
        meta.update_seq += 1
        self.conn.execute(
            """INSERT INTO docs
                   (db, id, rev, deleted, design, seq, body, conflicts, tree)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (db, id) DO UPDATE SET rev = excluded.rev,
                   deleted = excluded.deleted, seq = excluded.seq, body = excluded.body,
                   conflicts = excluded.conflicts, tree = excluded.tree""",
            (
                self.name,
                doc_id,
                winner,
                int(deleted),
                int(doc_id.startswith(_DESIGN_PREFIX)),
                meta.update_seq,
                bodies[winner],
                json.dumps(conflicts) if conflicts else None,
                json.dumps(tree.to_json(), separators=(",", ":")),
            ),
        )
        if (old and len(old.tree.leaves()) > 1) or len(leaves) > 1:
            self._save_losing_leaves(doc_id, leaves[1:], bodies)
        self._count_change(old, deleted)

    def _save_losing_leaves(
        self, doc_id: str, losers: list[str], bodies: dict[str, str]
    ) -> None:
        self.conn.execute(
            "DELETE FROM leaf_revs WHERE db = ? AND id = ?", (self.name, doc_id)
        )
        self.conn.executemany(
            "INSERT INTO leaf_revs (db, id, rev, body) VALUES (?, ?, ?, ?)",
            [(self.name, doc_id, rev, bodies[rev]) for rev in losers],
        )

    def _count_change(self, old: _StoredDoc | None, deleted: bool) -> None:
        meta = self.meta()
        if old is not None:
            if old.deleted:
                meta.doc_del_count -= 1
            else:
                meta.doc_count -= 1
        if deleted:
            meta.doc_del_count += 1
        else:
            meta.doc_count += 1
        self.conn.execute(
            "UPDATE dbs SET update_seq = ?, doc_count = ?, doc_del_count = ?"
            " WHERE name = ?",
            (meta.update_seq, meta.doc_count, meta.doc_del_count, self.name),
        )

    def edit(self, edit: _Edit) -> Doc:
        """An interactive edit (``new_edits=true``): its bulk_docs result."""
        if edit.is_local:
            return self.put_local(edit)
        stored = self.load(edit.id)
        parent = edit.rev
        if stored is None:
            tree = RevTree()
            if parent is not None:
                return _conflict_result(edit.id)  # a revision of nothing
        else:
            tree = stored.tree
            if parent is not None:
                if not tree.is_leaf(parent):
                    return _conflict_result(edit.id)
            elif stored.deleted and not edit.deleted:
                parent = stored.rev  # re-create on top of the tombstone
            else:
                return _conflict_result(edit.id)
        rev = new_rev(parent, edit.body, edit.deleted)
        self.save(
            edit.id,
            stored,
            add_child(tree, parent, rev, edit.deleted),
            (rev, edit.body_json),
        )
        return {"ok": True, "id": edit.id, "rev": rev}

    def replicate(self, edit: _Edit) -> None:
        """A replicated revision (``new_edits=false``): merged as it is."""
        if edit.is_local:
            self.put_local(edit)
            return
        assert edit.path is not None
        stored = self.load(edit.id)
        tree = stored.tree if stored else RevTree()
        merged, outcome = merge_path(tree, edit.path, edit.deleted)
        if outcome is MergeOutcome.EXISTS:
            return
        new_leaf = (
            (edit.path[0], edit.body_json) if outcome is MergeOutcome.NEW_LEAF else None
        )
        self.save(edit.id, stored, merged, new_leaf)

    # -- _local documents ------------------------------------------------------
    def get_local(self, doc_id: str) -> Doc:
        row = self.conn.execute(
            "SELECT rev, body FROM local_docs WHERE db = ? AND id = ?",
            (self.name, doc_id),
        ).fetchone()
        if row is None:
            raise DocNotFound("missing")
        return _doc_json(doc_id, f"0-{row[0]}", False, json.loads(row[1]))

    def put_local(self, edit: _Edit) -> Doc:
        """CouchDB keeps no history of local documents and checks no
        revision: the new one is the given one plus one."""
        if edit.deleted:
            self.conn.execute(
                "DELETE FROM local_docs WHERE db = ? AND id = ?", (self.name, edit.id)
            )
            return {"ok": True, "id": edit.id, "rev": "0-0"}
        counter = _local_counter(edit.rev) + 1
        self.conn.execute(
            "INSERT OR REPLACE INTO local_docs (db, id, rev, body) VALUES (?, ?, ?, ?)",
            (self.name, edit.id, counter, edit.body_json),
        )
        return {"ok": True, "id": edit.id, "rev": f"0-{counter}"}

    def delete_local(self, doc_id: str) -> Doc:
        self.get_local(doc_id)  # 404 when missing, as CouchDB
        self.conn.execute(
            "DELETE FROM local_docs WHERE db = ? AND id = ?", (self.name, doc_id)
        )
        return {"ok": True, "id": doc_id, "rev": "0-0"}

    # -- design documents ------------------------------------------------------
    def design_docs(self) -> list[tuple[str, Doc]]:
        # An id range, so the primary key finds them without a scan.
        rows = self.conn.execute(
            "SELECT id, body FROM docs WHERE db = ? AND id >= '_design/'"
            " AND id < '_design0' AND design = 1 AND deleted = 0 ORDER BY id",
            (self.name,),
        )
        return [(doc_id, json.loads(body)) for doc_id, body in rows]

    def mango_indexes(self) -> list[mango.MangoIndex]:
        indexes = []
        for doc_id, body in self.design_docs():
            indexes.extend(mango.indexes_of_design_doc(doc_id, body))
        return sorted(indexes, key=lambda index: (index.ddoc, index.name))


def _conflict_result(doc_id: str) -> Doc:
    error = DocConflict()
    return {"id": doc_id, "error": error.code, "reason": error.detail}


def _local_counter(rev: str | None) -> int:
    if rev is None:
        return 0
    generation, counter = parse_rev(rev)
    # The next counter must fit SQLite's 64-bit integers.
    if generation != 0 or not (counter.isascii() and counter.isdigit()) or (
        int(counter) >= _SQLITE_MAX_INT
    ):
        raise InvalidRevision()
    return int(counter)


# =============================================================================
# Mango: SQLite indexes for JSON indexes, and _find
# =============================================================================
def _sql_name(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


class _MangoIndexes:
    """SQLite expression indexes mirroring a database's Mango indexes.

    A JSON index on fields ``[a, b]`` becomes an index on the collation
    keys of ``a`` and ``b`` then the id, limited to the database's live
    non-design documents that have both fields: the rows CouchDB's index
    holds, in its order. Indexes of the same fields share one SQLite index
    (a partial filter is applied at query time).
    """

    DOCUMENT = mango.SqlDocument(conflicts="conflicts")

    def __init__(self, database: _Database):
        self.db = database

    def sql_index_name(self, columns: list[str]) -> str:
        digest = hashlib.sha1(json.dumps([self.db.name, columns]).encode()).hexdigest()
        return "mango_" + digest[:24]

    def key_sql(self, column: str) -> str:
        sql_field = self.DOCUMENT.field(mango.parse_field(column))
        assert sql_field is not None  # index fields are non-empty paths
        return sql_field.key()

    def where_sql(self, columns: list[str]) -> str:
        """The index's WHERE clause; queries repeat it word for word so
        that SQLite sees the index applies."""
        terms = [f"db = {mango.sql_literal(self.db.name)}", "deleted = 0", "design = 0"]
        for column in columns:
            if column not in ("_id", "_rev"):
                sql_field = self.DOCUMENT.field(mango.parse_field(column))
                assert sql_field is not None
                terms.append(f"{sql_field.type_sql} IS NOT NULL")
        return " AND ".join(terms)

    def sync(self) -> None:
        """Create and drop SQLite indexes to match the design documents."""
        wanted = {
            self.sql_index_name(index.columns): index.columns
            for index in self.db.mango_indexes()
        }
        existing = dict(
            self.db.conn.execute(
                "SELECT name, columns FROM mango_sql_indexes WHERE db = ?",
                (self.db.name,),
            )
        )
        for name in existing.keys() - wanted.keys():
            self._drop(name)
        for name in wanted.keys() - existing.keys():
            columns = wanted[name]
            keys = ", ".join([*(self.key_sql(c) for c in columns), "id"])
            self.db.conn.execute(
                f"CREATE INDEX {_sql_name(name)} ON docs ({keys})"
                f" WHERE {self.where_sql(columns)}"
            )
            self.db.conn.execute(
                "INSERT INTO mango_sql_indexes VALUES (?, ?, ?)",
                (name, self.db.name, json.dumps(columns)),
            )

    def drop_all(self) -> None:
        for (name,) in self.db.conn.execute(
            "SELECT name FROM mango_sql_indexes WHERE db = ?", (self.db.name,)
        ).fetchall():
            self._drop(name)

    def _drop(self, name: str) -> None:
        self.db.conn.execute(f"DROP INDEX IF EXISTS {_sql_name(name)}")
        self.db.conn.execute("DELETE FROM mango_sql_indexes WHERE name = ?", (name,))


class _FindRun:
    """One ``_find`` query against a database, in a read transaction.

    The SQL statement reads the chosen index in its order (the ``_all_docs``
    special index is the primary key), with the selector compiled to SQL as
    a pre-filter; every row is then checked in Python, which has the last
    word. When the compiled selector is exact, ``skip`` and ``limit`` go to
    SQLite too.
    """

    def __init__(
        self, database: _Database, query: mango.FindQuery, plan: mango.QueryPlan
    ):
        self.db = database
        self.query = query
        self.plan = plan
        self.index = plan.index
        self.indexes = _MangoIndexes(database)
        # The index order: its columns' collation keys, then the id.
        self.order_sql = (
            ["id"]
            if self.index.is_special
            else [*(self.indexes.key_sql(c) for c in self.index.columns), "id"]
        )
        # Leading columns fixed by the selector ($eq) are left out of ORDER BY
        # and bookmarks: SQLite only sees the index order without them.
        self.fixed = 0
        for column in self.index.columns if not self.index.is_special else ():
            if not mango.is_constant_field(query.selector, column):
                break
            self.fixed += 1

    def execute(self) -> Doc:
        started = time.perf_counter()
        examined: int = 0
        docs: list[Doc] = []
        last_row: list[Any] | None = None
        if not self.plan.nothing_to_run and self.query.limit > 0:
            examined, docs, last_row = self._scan()
        result: Doc = {"docs": docs, "bookmark": self._bookmark(last_row)}
        warnings = list(self.plan.warnings)
        if (warning := mango.scan_warning(examined, len(docs))) is not None:
            warnings.append(warning)
        if warnings:
            result["warning"] = "\n".join(warnings)
        if self.query.execution_stats:
            result["execution_stats"] = {
                "total_keys_examined": examined,
                "total_docs_examined": examined,
                "total_quorum_docs_examined": 0,
                "results_returned": len(docs),
                "execution_time_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        return result

    def _scan(self) -> tuple[int, list[Doc], list[Any] | None]:
        """(rows examined, documents, order keys of the last one returned)"""
        query = self.query
        selector = mango.compile_sql(
            query.selector,
            mango.SqlDocument(
                conflicts="conflicts" if query.conflicts else None,
                indexed_fields=frozenset(self.index.columns),
            ),
        )
        partial = self.index.partial_filter
        partial_sql = (
            mango.SQL_TRUE
            if partial is None
            else mango.compile_sql(partial, _MangoIndexes.DOCUMENT)
        )
        exact = selector.exact and partial_sql.exact
        sql, params = self._statement(selector, partial_sql, exact)
        docs: list[Doc] = []
        examined = 0
        to_skip = 0 if exact else query.skip
        last_row = None
        with contextlib.closing(self._rows(sql, params)) as rows:
            for row in rows:
                examined += 1
                doc, keys = self._candidate(row)
                if doc is None:
                    continue
                if to_skip:
                    to_skip -= 1
                    continue
                docs.append(mango.project(doc, query.fields))
                last_row = [*keys, doc["_id"]]
                if len(docs) >= query.limit:
                    break
        return examined, docs, last_row

    def _candidate(self, row: tuple[Any, ...]) -> tuple[Doc | None, list[bytes]]:
        """The document of a row if it matches (with the row's order keys)."""
        doc_id, rev, body, conflicts, *keys = row
        # Partial filters see _conflicts, as CouchDB's index does; the query
        # sees them only when it asks for them.
        doc = _doc_json(doc_id, rev, False, json.loads(body))
        if conflicts:
            doc["_conflicts"] = json.loads(conflicts)
        partial = self.index.partial_filter
        if partial is not None and not mango.matches(partial, doc):
            return None, keys
        if not self.query.conflicts:
            doc.pop("_conflicts", None)
        if not mango.matches(self.query.selector, doc):
            return None, keys
        return doc, keys

    def _statement(
        self, selector: mango.SqlCondition, partial: mango.SqlCondition, exact: bool
    ) -> tuple[str, list[Any]]:
        index, query = self.index, self.query
        if index.is_special:
            source = "docs"
            where = ["db = ?", "deleted = 0", "design = 0"]
            params: list[Any] = [self.db.name]
        else:
            name = _sql_name(self.indexes.sql_index_name(index.columns))
            source = f"docs INDEXED BY {name}"
            where = [self.indexes.where_sql(index.columns)]
            params = []
        where += [selector.sql, partial.sql]
        params += [*selector.params, *partial.params]
        sort_sql = self.order_sql[self.fixed :]
        if query.bookmark is not None:
            after = self._resume_after(query.bookmark)[self.fixed :]
            after_op, bound_op = ("<", "<=") if query.descending else (">", ">=")
            # The bound on the first key alone lets SQLite seek the index.
            where.append(f"{sort_sql[0]} {bound_op} ?")
            where.append(
                f"({', '.join(sort_sql)}) {after_op} ({', '.join('?' * len(after))})"
            )
            params += [after[0], *after]
        direction = "DESC" if query.descending else "ASC"
        order = ", ".join(f"{key} {direction}" for key in sort_sql)
        columns = ", ".join(["id", "rev", "body", "conflicts", *self.order_sql[:-1]])
        sql = (
            f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)}"
            f" ORDER BY {order}"
        )
        if exact:
            sql += " LIMIT ? OFFSET ?"
            params += [min(query.limit, _SQLITE_MAX_INT), min(query.skip, _SQLITE_MAX_INT)]
        return sql, params

    def _rows(
        self, sql: str, params: list[Any]
    ) -> Generator[tuple[Any, ...], None, None]:
        try:
            cursor = self.db.conn.execute(sql, params)
        except sqlite3.OperationalError as e:
            if "no query solution" not in str(e):
                raise
            # SQLite would not read the index as asked: let it plan alone.
            cursor = self.db.conn.execute(
                re.sub(r" INDEXED BY \S+", "", sql, count=1), params
            )
        try:
            while rows := cursor.fetchmany(100):
                yield from rows
        finally:
            cursor.close()

    # A bookmark holds the order keys of the last row returned; the next
    # page starts right after it.
    def _bookmark(self, last_row: list[Any] | None) -> str:
        if last_row is None:
            return self.query.bookmark or "nil"
        *keys, doc_id = last_row
        data = json.dumps({"k": [key.hex() for key in keys], "id": doc_id})
        return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")

    def _resume_after(self, bookmark: str) -> list[Any]:
        try:
            data = json.loads(
                base64.urlsafe_b64decode(bookmark + "=" * (-len(bookmark) % 4))
            )
            keys = [bytes.fromhex(key) for key in data["k"]]
            doc_id = data["id"]
            if len(keys) != len(self.order_sql) - 1 or not isinstance(doc_id, str):
                raise ValueError("bookmark of another index")
        except (ValueError, TypeError, KeyError):
            raise mango.mango_error(
                "invalid_bookmark", f"Invalid bookmark value: {json.dumps(bookmark)}"
            ) from None
        return [*keys, doc_id]


# =============================================================================
# The store
# =============================================================================
def _parse_since(since: Any, meta: _DbMeta) -> int:
    """A sequence number from what ``changes`` accepts as ``since``."""
    if since is None or since == 0 or since == "0":
        return 0
    if since == "now":
        return meta.update_seq
    if isinstance(since, int) and not isinstance(since, bool) and since >= 0:
        return min(since, _SQLITE_MAX_INT)  # beyond the end either way
    match = _SINCE_RE.fullmatch(since) if isinstance(since, str) else None
    if match is None:
        raise InvalidRequest("Malformed sequence supplied in 'since' parameter.")
    if match.group(2) is not None and match.group(2) != meta.uuid:
        return 0  # from an earlier incarnation of the database: start over
    return min(int(match.group(1)), _SQLITE_MAX_INT)


class EmbeddedStore:
    """``DocumentStore`` on SQLite files (see the module docstring).

    ``directory``: where the files live; None keeps each prefix in an
    in-memory database for the store's lifetime (fast tests). The SQLite
    calls run in ``pool`` (a ``cozyd.pools`` pool: ``run(f, *args)`` returns
    a Deferred) or in a Twisted ``threadpool``; without either they run in
    the calling thread, so the coroutines complete at once. ``reactor`` (an
    ``IReactorTime``) runs the idle timers; without one, connections close
    only when ``max_open`` is reached or on ``close()``.
    """

    engine = "embedded"

    def __init__(
        self,
        directory: str | None,
        *,
        reactor: Any = None,
        threadpool: Any = None,
        pool: Any = None,
        idle_timeout: float = 30.0,
        max_open: int = 64,
        revs_limit: int = DEFAULT_REVS_LIMIT,
    ):
        if threadpool is not None and reactor is None:
            raise ValueError("a threadpool needs a reactor")
        if threadpool is not None and pool is not None:
            raise ValueError("a threadpool or a pool, not both")
        if max_open < 1 or revs_limit < 1:
            raise ValueError("max_open and revs_limit must be at least 1")
        self._directory = directory
        self._reactor = reactor
        self._threadpool = threadpool
        self._pool = pool
        self._idle_timeout = idle_timeout
        self._max_open = max_open
        self._revs_limit = revs_limit
        # Every prefix met so far, least recently used first.
        self._files: OrderedDict[str, _PrefixFile] = OrderedDict()
        self._background: set[Deferred] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<EmbeddedStore {self._directory or ':memory:'}>"

    # -- plumbing --------------------------------------------------------------
    def _file(self, prefix: str) -> _PrefixFile:
        prefix_file = self._files.get(prefix)
        if prefix_file is None:
            path = (
                None
                if self._directory is None
                else os.path.join(self._directory, f"{prefix}.sqlite")
            )
            prefix_file = self._files[prefix] = _PrefixFile(prefix, path)
        self._files.move_to_end(prefix)
        return prefix_file

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Deferred:
        if self._pool is not None:
            return self._pool.run(function, *args)
        if self._threadpool is not None:
            return deferToThreadPool(self._reactor, self._threadpool, function, *args)
        return maybeDeferred(function, *args)

    def _queued(
        self, prefix_file: _PrefixFile, function: Callable[..., T], *args: Any
    ) -> Deferred:
        """``function(*args)`` in the pool once the file's queue is ours.

        The queue is taken here, on the reactor thread, so a job reaches
        the pool only when its file is free. It is released when the job
        ends, not when the caller stops waiting: a caller cancelled (a
        client gone) leaves the job to finish before the next one starts.
        """
        acquired = prefix_file.queue.acquire()

        def cancel(_: Deferred) -> None:
            if not acquired.called:
                acquired.cancel()  # still waiting: leave the queue

        result = Deferred(cancel)

        def start(_: Any) -> None:
            try:
                job = self._in_thread(function, *args)
            except BaseException:
                prefix_file.queue.release()
                raise
            job.addBoth(finish)

        def finish(outcome: Any) -> None:
            prefix_file.queue.release()
            if not result.called:  # else the caller was cancelled: drop it
                result.callback(outcome)

        def failed(failure: Any) -> None:
            if not result.called:
                result.errback(failure)

        acquired.addCallback(start).addErrback(failed)
        return result

    async def _run(
        self,
        prefix: str,
        work: Callable[[sqlite3.Connection], T],
        *,
        create: bool = False,
        if_missing: Callable[[], T] | None = None,
        inline: bool = False,
    ) -> T:
        """Run ``work`` with the connection of ``prefix``'s file. Without a
        file, ``create`` makes one; else ``if_missing()`` answers (by
        default: the database does not exist).

        ``inline`` work (a primary-key read) runs on the calling thread when
        the file is open and free: handing such a read to a worker thread
        costs more than the read itself. Busy or closed files still go to
        the thread pool, so the caller never waits on a lock.
        """
        if self._closed:
            raise StorageUnavailable("the storage is closed")
        prefix_file = self._file(prefix)
        prefix_file.users += 1
        prefix_file.may_be_open = True
        try:
            if inline:
                done, result = prefix_file.try_run(work)
                if done:
                    return result  # type: ignore[return-value]
            return await self._queued(prefix_file, prefix_file.run, work, create)
        except _NoFile:
            if if_missing is None:
                raise DatabaseNotFound() from None
            return if_missing()
        finally:
            prefix_file.users -= 1
            self._after_use(prefix_file)

    async def _read(
        self,
        db: str,
        work: Callable[[_Database], T],
        *,
        inline: bool = False,
        one_statement: bool = False,
    ) -> T:
        """Run ``work`` on an existing database, in a read transaction.

        ``inline`` reads are primary-key reads: they run on the calling
        thread when they can (see ``_run``) and check that the database
        exists themselves, only when the document is not found.
        ``one_statement`` work needs no snapshot: it runs without BEGIN."""
        return await self._in_transaction(
            db, work, write=False, create=False, inline=inline,
            one_statement=one_statement,
        )

    async def _write(
        self, db: str, work: Callable[[_Database], T], *, create: bool = False
    ) -> T:
        """Run ``work`` in a write transaction: on an existing database, or
        (``create``) on one that may not exist yet."""
        return await self._in_transaction(db, work, write=True, create=create)

    async def _in_transaction(
        self,
        db: str,
        work: Callable[[_Database], T],
        *,
        write: bool,
        create: bool,
        inline: bool = False,
        one_statement: bool = False,
    ) -> T:
        prefix, part = _split_name(db)

        def in_transaction(conn: sqlite3.Connection) -> T:
            if one_statement and not write:
                return work(_Database(conn, part, self._revs_limit))
            with _transaction(conn, write=write):
                database = _Database(conn, part, self._revs_limit)
                if not create and not inline:
                    database.meta()  # DatabaseNotFound before anything else
                return work(database)

        return await self._run(prefix, in_transaction, create=create, inline=inline)

    def _after_use(self, prefix_file: _PrefixFile) -> None:
        if prefix_file.in_memory or self._closed:
            return
        self._schedule_idle_close(prefix_file)
        self._close_beyond_max_open()

    def _schedule_idle_close(self, prefix_file: _PrefixFile) -> None:
        if self._reactor is None:
            return
        call = prefix_file.idle_call
        if call is not None and call.active():
            call.reset(self._idle_timeout)
        else:
            prefix_file.idle_call = self._reactor.callLater(
                self._idle_timeout, self._close_if_idle, prefix_file
            )

    def _close_if_idle(self, prefix_file: _PrefixFile) -> None:
        prefix_file.idle_call = None
        if prefix_file.users == 0:
            self._close_file(prefix_file)
        # else: the end of the current use schedules a new timer

    def _close_beyond_max_open(self) -> None:
        open_files = [
            f for f in self._files.values() if f.may_be_open and not f.in_memory
        ]
        excess = len(open_files) - self._max_open
        for prefix_file in open_files:  # least recently used first
            if excess <= 0:
                break
            if prefix_file.users == 0:
                self._close_file(prefix_file)
                excess -= 1

    def _close_file(self, prefix_file: _PrefixFile) -> None:
        """Close a file's connection in the background (it waits for the
        operation using it, if any)."""
        prefix_file.may_be_open = False
        if prefix_file.idle_call is not None and prefix_file.idle_call.active():
            prefix_file.idle_call.cancel()
        prefix_file.idle_call = None
        d = self._queued(prefix_file, prefix_file.close)
        if not d.called:
            self._background.add(d)
            d.addBoth(self._forget_background, d)
        d.addErrback(
            lambda f: log.failure(
                "closing storage file {prefix}", f, prefix=prefix_file.prefix
            )
        )

    def _forget_background(self, result: Any, d: Deferred) -> Any:
        self._background.discard(d)
        return result

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        if self._directory is None:
            return
        try:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
        except OSError as e:
            log.error("cannot create the storage directory: {error}", error=repr(e))
            raise StorageUnavailable(
                f"cannot create the storage directory ({e.strerror})"
            ) from e

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        files = list(self._files.values())
        for prefix_file in files:
            if prefix_file.idle_call is not None and prefix_file.idle_call.active():
                prefix_file.idle_call.cancel()
            prefix_file.may_be_open = False
        closing = [self._queued(f, f.close) for f in files]
        await DeferredList([*closing, *self._background], consumeErrors=True)

    async def health(self) -> bool:
        if self._closed:
            return False
        if self._directory is None:
            return True
        return os.path.isdir(self._directory) and os.access(self._directory, os.W_OK)

    # -- databases -------------------------------------------------------------
    async def create_db(self, db: str) -> None:
        await self._write(db, _Database.create, create=True)

    async def ensure_db(self, db: str) -> None:
        def ensure(database: _Database) -> None:
            if not database.exists():
                database.create()

        await self._write(db, ensure, create=True)

    async def delete_db(self, db: str) -> None:
        await self._write(db, _Database.drop)

    async def db_exists(self, db: str) -> bool:
        prefix, part = _split_name(db)

        def exists(conn: sqlite3.Connection) -> bool:
            return _Database(conn, part).exists()

        return await self._run(prefix, exists, if_missing=lambda: False)

    async def db_info(self, db: str) -> Doc:
        return await self._read(db, lambda database: database.info(db))

    async def list_dbs(self, prefix: str) -> list[str]:
        _check_prefix(prefix)

        def names(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT name FROM dbs ORDER BY name")
            return [f"{prefix}/{name}" for (name,) in rows]

        return await self._run(prefix, names, if_missing=list)

    async def delete_prefix(self, prefix: str) -> None:
        _check_prefix(prefix)
        if self._closed:
            raise StorageUnavailable("the storage is closed")
        prefix_file = self._file(prefix)
        if prefix_file.idle_call is not None and prefix_file.idle_call.active():
            prefix_file.idle_call.cancel()
        prefix_file.may_be_open = False
        await self._queued(prefix_file, prefix_file.remove)

    # -- documents -------------------------------------------------------------
    async def get_doc(
        self,
        db: str,
        doc_id: str,
        *,
        rev: str | None = None,
        revs: bool = False,
        conflicts: bool = False,
        deleted_conflicts: bool = False,
        revs_info: bool = False,
        latest: bool = False,
    ) -> Doc:
        doc_id = _check_read_id(doc_id)
        if doc_id.startswith(_LOCAL_PREFIX):
            return await self.get_local(db, doc_id)
        if rev is not None:
            parse_rev(rev)
        # Like CouchDB: "latest" reads the winner whatever the rev, and the
        # meta fields come only with the winner.
        wants_winner = rev is None or latest

        def get(database: _Database) -> Doc:
            stored = database.load(doc_id)
            if stored is None:
                database.meta()  # DatabaseNotFound when there is no database
                raise DocNotFound("missing")
            if wants_winner:
                if stored.deleted:
                    raise DocNotFound("deleted")
                doc = database.leaf_doc(stored, stored.rev, revs=revs)
                _add_meta(
                    doc,
                    stored.tree,
                    stored.rev,
                    revs_info=revs_info,
                    conflicts=conflicts,
                    deleted_conflicts=deleted_conflicts,
                )
                return doc
            return _read_leaf(database, stored, rev, revs)

        # The winner comes with its row: one SELECT, no snapshot needed.
        return await self._read(db, get, inline=True, one_statement=wants_winner)

    async def get_open_revs(
        self,
        db: str,
        doc_id: str,
        open_revs: list[str] | str,
        *,
        revs: bool = False,
        latest: bool = False,
    ) -> list[Doc]:
        doc_id = _check_read_id(doc_id)
        if open_revs != "all":
            if not isinstance(open_revs, list):
                raise InvalidRequest('open_revs must be "all" or a list of revisions')
            for rev in open_revs:
                parse_rev(rev)

        def get(database: _Database) -> list[Doc]:
            stored = database.load(doc_id)
            if open_revs == "all":
                if stored is None:
                    raise DocNotFound("missing")
                return _open_revs(database, stored, stored.tree.leaves(), [], revs)
            if stored is None:
                return [{"missing": rev} for rev in open_revs]
            found: list[str] = []
            missing: list[str] = []
            for rev in open_revs:
                if latest and rev in stored.tree:
                    leaves = stored.tree.descendant_leaves(rev)
                else:
                    leaves = [rev] if stored.tree.is_leaf(rev) else []
                found.extend(leaf for leaf in leaves if leaf not in found)
                if not leaves:
                    missing.append(rev)
            return _open_revs(database, stored, found, missing, revs)

        return await self._read(db, get)

    async def put_doc(self, db: str, doc: Doc) -> Doc:
        edit = _parse_edit(doc, new_edits=True)
        if edit.is_local:
            return await self.put_local(db, doc)
        [result] = await self._write(
            db, lambda database: _write_edits(database, [edit])
        )
        if "error" in result:
            raise DocConflict()
        return result

    async def delete_doc(self, db: str, doc_id: str, rev: str) -> Doc:
        doc_id = _check_read_id(doc_id)
        if doc_id.startswith(_LOCAL_PREFIX):
            return await self.delete_local(db, doc_id, rev)
        _check_doc_id(doc_id)
        if rev is not None:
            parse_rev(rev)
        edit = _Edit(doc_id, rev, None, True, {}, "{}")

        def delete(database: _Database) -> Doc:
            stored = database.load(doc_id)
            if stored is None:
                raise DocNotFound("missing")
            if stored.deleted:
                raise DocNotFound("deleted")
            if rev is None:
                raise DocConflict()  # CouchDB wants the revision deleted
            [result] = _write_edits(database, [edit])
            if "error" in result:
                raise DocConflict()
            return result

        return await self._write(db, delete)

    async def bulk_docs(
        self, db: str, docs: list[Doc], *, new_edits: bool = True
    ) -> list[Doc]:
        if not isinstance(docs, list):
            raise InvalidRequest("docs must be an array")
        # Refuse a bad batch before writing any of it, as CouchDB does.
        edits = [
            _parse_edit(doc, new_edits=new_edits, default_id=new_doc_id) for doc in docs
        ]
        if new_edits:
            return await self._write(db, lambda database: _write_edits(database, edits))
        await self._write(db, lambda database: _replicate(database, edits))
        return []

    async def bulk_get(
        self,
        db: str,
        requests: list[Doc],
        *,
        revs: bool = False,
        latest: bool = False,
    ) -> list[Doc]:
        if not isinstance(requests, list):
            raise InvalidRequest("docs must be an array")
        return await self._read(
            db,
            lambda database: [
                _bulk_get_one(database, r, revs, latest) for r in requests
            ],
        )

    async def revs_diff(self, db: str, revs: dict[str, list[str]]) -> Doc:
        if not isinstance(revs, dict) or not all(
            isinstance(r, list) and all(isinstance(x, str) for x in r)
            for r in revs.values()
        ):
            raise InvalidRequest("_revs_diff wants an object of revision lists")
        for rev_list in revs.values():
            for rev in rev_list:
                parse_rev(rev)

        def diff(database: _Database) -> Doc:
            result: Doc = {}
            for doc_id, rev_list in revs.items():
                stored = database.load(doc_id)
                missing, ancestors = missing_revs(
                    stored.tree if stored else None, rev_list
                )
                if missing:
                    entry: Doc = {"missing": missing}
                    if ancestors:
                        entry["possible_ancestors"] = ancestors
                    result[doc_id] = entry
            return result

        return await self._read(db, diff)

    async def all_docs(
        self,
        db: str,
        *,
        keys: list[str] | None = None,
        start_key: str | None = None,
        end_key: str | None = None,
        inclusive_end: bool = True,
        descending: bool = False,
        limit: int | None = None,
        skip: int = 0,
        include_docs: bool = False,
        conflicts: bool = False,
        update_seq: bool = False,
    ) -> Doc:
        limit = _limit(limit)
        skip = _count(skip, "skip")
        if keys is not None and not isinstance(keys, list):
            raise InvalidRequest("keys must be an array")
        query = _AllDocs(
            keys,
            start_key,
            end_key,
            inclusive_end,
            descending,
            limit,
            skip,
            include_docs,
            conflicts,
        )

        def run(database: _Database) -> Doc:
            result = query.run(database)
            if update_seq:
                meta = database.meta()
                result["update_seq"] = meta.seq(meta.update_seq)
            return result

        return await self._read(db, run)

    async def changes(
        self,
        db: str,
        *,
        since: str | None = None,
        limit: int | None = None,
        descending: bool = False,
        include_docs: bool = False,
        style: str = "main_only",
        conflicts: bool = False,
        doc_ids: list[str] | None = None,
        selector: Doc | None = None,
        design_only: bool = False,
    ) -> Doc:
        limit = _limit(limit)
        if style not in ("main_only", "all_docs"):
            raise InvalidRequest(f"Invalid style: {style!r}")
        if doc_ids is not None and not (
            isinstance(doc_ids, list) and all(isinstance(i, str) for i in doc_ids)
        ):
            raise InvalidRequest("doc_ids must be an array of strings")
        if (doc_ids is not None) + (selector is not None) + bool(design_only) > 1:
            raise InvalidRequest("changes takes one filter at most")
        query = _Changes(
            since,
            limit,
            descending,
            include_docs,
            style == "all_docs",
            conflicts,
            doc_ids,
            None if selector is None else mango.normalize(selector),
            bool(design_only),
        )
        return await self._read(db, query.run)

    # -- _local documents ------------------------------------------------------
    async def get_local(self, db: str, doc_id: str) -> Doc:
        doc_id = _local_id(doc_id)
        return await self._read(db, lambda database: database.get_local(doc_id))

    async def put_local(self, db: str, doc: Doc) -> Doc:
        if not isinstance(doc, dict):
            raise InvalidRequest("Document must be a JSON object")
        edit = _parse_edit({**doc, "_id": _local_id(doc.get("_id"))}, new_edits=True)
        _local_counter(edit.rev)
        return await self._write(db, lambda database: database.put_local(edit))

    async def delete_local(self, db: str, doc_id: str, rev: str | None) -> Doc:
        doc_id = _local_id(doc_id)
        if rev is not None:
            _local_counter(rev)
        return await self._write(db, lambda database: database.delete_local(doc_id))

    # -- Mango -----------------------------------------------------------------
    async def create_index(
        self,
        db: str,
        fields: list[Any],
        *,
        ddoc: str | None = None,
        name: str | None = None,
        partial_filter_selector: Doc | None = None,
    ) -> Doc:
        view = mango.index_view(fields, partial_filter_selector)
        for value in (ddoc, name):
            if value is not None and (not isinstance(value, str) or not value):
                raise mango.mango_error(
                    "invalid_empty_string", "Index name or ddoc cannot be empty string"
                )
        generated = mango.generated_index_name(view)
        ddoc_id = mango.design_doc_id(ddoc or generated)
        _check_doc_id(ddoc_id)
        index_name = name or generated

        def create(database: _Database) -> Doc:
            stored = database.load(ddoc_id)
            body: Doc = {"language": "query"}
            parent = None
            if stored is not None and not stored.deleted:
                body, parent = stored.body(), stored.rev
            if body.get("language") != "query":
                raise mango.mango_error(
                    "invalid_ddoc_lang",
                    "Existing design doc has an invalid language: "
                    f"{body.get('language')!r}",
                )
            views = body.get("views")
            if not isinstance(views, dict):
                views = {}
            updated = {**body, "views": {**views, index_name: view}}
            if updated == body:
                return {"result": "exists", "id": ddoc_id, "name": index_name}
            edit = _Edit(
                ddoc_id,
                parent,
                None,
                False,
                updated,
                _dump_body(updated),
            )
            [result] = _write_edits(database, [edit])
            if "error" in result:
                raise StorageError(
                    "Encountered a conflict while saving the design document.",
                    code="error_saving_ddoc",
                )
            return {"result": "created", "id": ddoc_id, "name": index_name}

        return await self._write(db, create)

    async def list_indexes(self, db: str) -> Doc:
        def indexes(database: _Database) -> Doc:
            found = [mango.ALL_DOCS_INDEX, *database.mango_indexes()]
            return {"total_rows": len(found), "indexes": [i.to_json() for i in found]}

        return await self._read(db, indexes)

    async def find(self, db: str, query: Doc, *, require_index: bool = False) -> Doc:
        parsed = mango.parse_find_query(query)

        def find(database: _Database) -> Doc:
            plan = mango.plan_query(database.mango_indexes(), parsed)
            if require_index and plan.index.is_special:
                raise NoIndex()
            return _FindRun(database, parsed, plan).execute()

        return await self._read(db, find)


# =============================================================================
# Operations spanning several documents
# =============================================================================
def _write_edits(database: _Database, edits: list[_Edit]) -> list[Doc]:
    results = [database.edit(edit) for edit in edits]
    if any(edit.id.startswith(_DESIGN_PREFIX) for edit in edits):
        _MangoIndexes(database).sync()
    return results


def _replicate(database: _Database, edits: list[_Edit]) -> None:
    for edit in edits:
        database.replicate(edit)
    if any(edit.id.startswith(_DESIGN_PREFIX) for edit in edits):
        _MangoIndexes(database).sync()


def _read_leaf(
    database: _Database, stored: _StoredDoc, rev: str | None, revs: bool
) -> Doc:
    """The document at revision ``rev``, which must be a leaf."""
    if rev is None or not stored.tree.is_leaf(rev):
        raise DocNotFound("missing")  # unknown, or its body compacted away
    return database.leaf_doc(stored, rev, revs=revs)


def _add_meta(
    doc: Doc,
    tree: RevTree,
    rev: str,
    *,
    revs_info: bool,
    conflicts: bool,
    deleted_conflicts: bool,
) -> None:
    if revs_info:
        doc["_revs_info"] = tree.revs_info(rev)
    if conflicts and (found := tree.conflicts()):
        doc["_conflicts"] = found
    if deleted_conflicts and (found := tree.deleted_conflicts()):
        doc["_deleted_conflicts"] = found


def _open_revs(
    database: _Database,
    stored: _StoredDoc,
    found: list[str],
    missing: list[str],
    revs: bool,
) -> list[Doc]:
    bodies = database.leaf_bodies(stored)
    return [
        {"ok": database.leaf_doc(stored, rev, revs=revs, bodies=bodies)}
        for rev in found
    ] + [{"missing": rev} for rev in missing]


def _bulk_get_error(doc_id: Any, rev: Any, error: str, reason: str) -> Doc:
    return {
        "id": doc_id,
        "docs": [
            {"error": {"id": doc_id, "rev": rev, "error": error, "reason": reason}}
        ],
    }


def _bulk_get_one(
    database: _Database, request: Any, revs: bool, latest: bool
) -> Doc:
    """One entry of ``_bulk_get``'s results, errors shaped as CouchDB's."""
    if not isinstance(request, dict):
        return _bulk_get_error(
            None, None, "bad_request", "document must be a JSON object"
        )
    doc_id = request.get("id")
    if doc_id is None:
        return _bulk_get_error(None, None, "bad_request", "document id missed")
    try:
        _check_doc_id(doc_id)
    except InvalidRequest as e:
        return _bulk_get_error(doc_id, None, e.code, e.detail)
    rev = request.get("rev")
    if rev is not None:
        try:
            parse_rev(rev)
        except InvalidRequest as e:
            return _bulk_get_error(doc_id, rev, e.code, e.detail)
    stored = database.load(doc_id)
    if stored is not None:
        if rev is None:
            leaves = stored.tree.leaves()
        elif latest and rev in stored.tree:
            # CouchDB's latest=true: the leaves that grew from ``rev``.
            leaves = stored.tree.descendant_leaves(rev)
        else:
            leaves = [rev] if stored.tree.is_leaf(rev) else []
        if leaves:
            bodies = database.leaf_bodies(stored)
            return {
                "id": doc_id,
                "docs": [
                    {"ok": database.leaf_doc(stored, leaf, revs=revs, bodies=bodies)}
                    for leaf in leaves
                ],
            }
    return _bulk_get_error(
        doc_id, rev if rev is not None else "undefined", "not_found", "missing"
    )


@dataclass
class _AllDocs:
    """``_all_docs``. Any JSON value may be a key: ids are strings, and
    CouchDB compares keys with ids in Erlang term order, where every other
    JSON value sorts before every string. So a non-string key names no
    document, and as a range bound lies below every id."""

    keys: list[Any] | None
    start_key: Any
    end_key: Any
    inclusive_end: bool
    descending: bool
    limit: int | None
    skip: int
    include_docs: bool
    conflicts: bool

    def run(self, database: _Database) -> Doc:
        meta = database.meta()
        if self.keys is not None:
            rows = self._rows_for_keys(database, self.keys)
            return {"total_rows": meta.doc_count, "offset": None, "rows": rows}
        where, params = self._range()
        sql = (
            f"SELECT {_DOC_COLUMNS} FROM docs WHERE db = ? AND deleted = 0{where}"
            f" ORDER BY id {'DESC' if self.descending else 'ASC'} LIMIT ? OFFSET ?"
        )
        found = database.conn.execute(
            sql,
            [
                database.name,
                *params,
                -1 if self.limit is None else self.limit,
                self.skip,
            ],
        )
        rows = [self._row(database, _stored_doc(row)) for row in found]
        return {
            "total_rows": meta.doc_count,
            "offset": self._offset(database, meta),
            "rows": rows,
        }

    def _range(self) -> tuple[str, list[str]]:
        where, params = "", []
        low, high = ">=", "<=" if self.inclusive_end else "<"
        if self.descending:
            low, high = "<=", ">=" if self.inclusive_end else ">"
        for key, operator in ((self.start_key, low), (self.end_key, high)):
            if key is None:
                continue
            if not isinstance(key, str):
                # Below every id: "id > key" always holds, "id < key" never.
                if operator in ("<", "<="):
                    where += " AND 0"
                continue
            where += f" AND id {operator} ?"
            params.append(key)
        return where, params

    def _offset(self, database: _Database, meta: _DbMeta) -> int:
        """Rows before the first one returned, as CouchDB counts them."""
        before = 0
        if self.start_key is not None and not isinstance(self.start_key, str):
            before = meta.doc_count if self.descending else 0
        elif self.start_key is not None:
            (before,) = database.conn.execute(
                f"SELECT count(*) FROM docs WHERE db = ? AND deleted = 0"
                f" AND id {'>' if self.descending else '<'} ?",
                (database.name, self.start_key),
            ).fetchone()
        return min(meta.doc_count, before + self.skip)

    def _rows_for_keys(self, database: _Database, keys: list[Any]) -> list[Doc]:
        keys = keys[::-1] if self.descending else list(keys)
        keys = keys[self.skip :]
        if self.limit is not None:
            keys = keys[: self.limit]
        rows = []
        for key in keys:
            stored = database.load(key) if isinstance(key, str) else None
            if stored is None:
                rows.append({"key": key, "error": "not_found"})
            elif stored.deleted:
                row: Doc = {
                    "id": stored.id,
                    "key": key,
                    "value": {"rev": stored.rev, "deleted": True},
                }
                if self.include_docs:
                    row["doc"] = None
                rows.append(row)
            else:
                rows.append(self._row(database, stored))
        return rows

    def _row(self, database: _Database, stored: _StoredDoc) -> Doc:
        row: Doc = {"id": stored.id, "key": stored.id, "value": {"rev": stored.rev}}
        if self.include_docs:
            row["doc"] = database.winner_doc(stored, conflicts=self.conflicts)
        return row


@dataclass
class _Changes:
    since: Any
    limit: int | None
    descending: bool
    include_docs: bool
    all_leaves: bool  # style=all_docs
    conflicts: bool
    doc_ids: list[str] | None
    selector: mango.Selector | None  # filter=_selector (normalized)
    design_only: bool  # filter=_design

    # What the selector sees of a winning revision, in SQL: its body, id,
    # rev, _conflicts (CouchDB opens it with them) and _deleted.
    SELECTOR_DOCUMENT = mango.SqlDocument(conflicts="conflicts", deleted="deleted")

    def run(self, database: _Database) -> Doc:
        meta = database.meta()
        # Descending reads from the end: CouchDB ignores "since" then.
        since = 0 if self.descending else _parse_since(self.since, meta)
        where, params, exact = self._filter_sql()
        sql = (
            f"SELECT {_DOC_COLUMNS} FROM docs WHERE db = ? AND seq > ?{where}"
            f" ORDER BY seq {'DESC' if self.descending else 'ASC'}"
        )
        if exact:
            sql += " LIMIT ?"
            params = [*params, -1 if self.limit is None else self.limit]
        results: list[Doc] = []
        last_returned: int | None = None
        if self.limit != 0:
            with contextlib.closing(
                database.conn.execute(sql, [database.name, since, *params])
            ) as cursor:
                for row in _fetch_rows(cursor):
                    stored = _stored_doc(row)
                    result = self._result(database, meta, stored, exact)
                    if result is None:
                        continue
                    results.append(result)
                    last_returned = stored.seq
                    if self.limit is not None and len(results) >= self.limit:
                        break
        if self.descending:
            last = last_returned or 0
        elif self.limit is not None and len(results) >= self.limit:
            last = since if last_returned is None else last_returned  # more may follow
        else:
            last = max(since, meta.update_seq)  # read to the end of the feed
        return {
            "results": results,
            "last_seq": meta.seq(last),
            "pending": self._pending(database, last),
        }

    def _filter_sql(self) -> tuple[str, list[Any], bool]:
        """The SQL part of the filter: ``(WHERE terms, params, exact)``;
        not ``exact``: rows must also pass ``_matching_revs``."""
        if self.doc_ids is not None:
            return (
                " AND id IN (SELECT value FROM json_each(?))",
                [json.dumps(self.doc_ids)],
                True,
            )
        if self.design_only:
            return " AND design = 1", [], True
        if self.selector is None:
            return "", [], True
        if self.all_leaves:
            return "", [], False  # each leaf is matched: in Python
        condition = mango.compile_sql(self.selector, self.SELECTOR_DOCUMENT)
        if condition.sql == "1":
            return "", [], condition.exact
        return f" AND {condition.sql}", list(condition.params), condition.exact

    def _pending(self, database: _Database, last: int) -> int:
        # CouchDB counts every change after last_seq, except with doc_ids.
        id_filter, id_params = "", []
        if self.doc_ids is not None:
            id_filter = " AND id IN (SELECT value FROM json_each(?))"
            id_params = [json.dumps(self.doc_ids)]
        comparison = "<" if self.descending else ">"
        (count,) = database.conn.execute(
            f"SELECT count(*) FROM docs WHERE db = ? AND seq {comparison} ?{id_filter}",
            [database.name, last, *id_params],
        ).fetchone()
        return count

    def _matching_revs(
        self, database: _Database, stored: _StoredDoc, leaves: list[str]
    ) -> list[str]:
        """The revisions among ``leaves`` whose documents the selector
        matches, each shown to it as CouchDB opens it."""
        assert self.selector is not None
        if not self.all_leaves:
            doc = database.winner_doc(stored, conflicts=True)
            return leaves if mango.matches(self.selector, doc) else []
        # style=all_docs: each leaf on its own, without _conflicts.
        bodies = database.leaf_bodies(stored)
        return [
            rev
            for rev in leaves
            if mango.matches(
                self.selector, database.leaf_doc(stored, rev, bodies=bodies)
            )
        ]

    def _result(
        self, database: _Database, meta: _DbMeta, stored: _StoredDoc, exact: bool
    ) -> Doc | None:
        """The feed's row for ``stored``; None when the filter drops it."""
        leaves = stored.tree.leaves() if self.all_leaves else [stored.rev]
        if self.selector is not None and not exact:
            leaves = self._matching_revs(database, stored, leaves)
            if not leaves:
                return None
        result: Doc = {
            "seq": meta.seq(stored.seq),
            "id": stored.id,
            "changes": [{"rev": rev} for rev in leaves],
        }
        if stored.deleted:
            result["deleted"] = True
        if self.include_docs:
            result["doc"] = database.winner_doc(stored, conflicts=self.conflicts)
        return result


def _fetch_rows(cursor: sqlite3.Cursor) -> Iterator[tuple[Any, ...]]:
    """The rows of ``cursor``, fetched a page at a time: a loop that stops
    early leaves the rest unread."""
    while rows := cursor.fetchmany(100):
        yield from rows
