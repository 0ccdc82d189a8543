"""``EmbeddedStore``: the ``DocumentStore`` on SQLite files (see the package
docstring)."""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from cozyd.memory import release_freed_memory
from cozyd.storage import mango
from cozyd.storage.interface import (
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
from cozyd.storage.revisions import DEFAULT_REVS_LIMIT, missing_revs, parse_rev
from cozyd.storage.sqlite.documents import (
    _DESIGN_PREFIX,
    _LOCAL_PREFIX,
    _add_meta,
    _bulk_get_one,
    _check_doc_id,
    _check_prefix,
    _check_read_id,
    _count,
    _Database,
    _dump_body,
    _Edit,
    _limit,
    _local_counter,
    _local_id,
    _open_revs,
    _parse_edit,
    _read_leaf,
    _split_name,
)
from cozyd.storage.sqlite.files import (
    _JobQueue,
    _NoFile,
    _PrefixFile,
    _transaction,
)
from cozyd.storage.sqlite.find import (
    _FindRun,
    _MangoIndexes,
)
from cozyd.storage.sqlite.views import (
    _AllDocs,
    _Changes,
)

log = Logger()
T = TypeVar("T")


# =============================================================================
# The store
# =============================================================================
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
        self._trim_call: Any = None
        self._closed = False

    #: Seconds between closing idle files and giving their memory back.
    trim_delay = 10.0

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
            pooled = self._pool is not None or self._threadpool is not None
            queue = _JobQueue(
                self._in_thread if pooled else None,
                self._reactor.callFromThread if pooled else None,
            )
            prefix_file = self._files[prefix] = _PrefixFile(prefix, path, queue)
        self._files.move_to_end(prefix)
        return prefix_file

    def _in_thread(self, function: Callable[..., T], *args: Any) -> Deferred:
        if self._pool is not None:
            return self._pool.run(function, *args)
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    def _queued(
        self, prefix_file: _PrefixFile, function: Callable[..., T], *args: Any
    ) -> Deferred:
        """``function(*args)`` in the pool, in the file's queue (see
        ``_JobQueue``): a caller cancelled (a client gone) leaves a job that
        has started to finish before the next one starts."""
        return prefix_file.queue.submit(function, *args)

    async def _run(
        self,
        prefix: str,
        work: Callable[[sqlite3.Connection], T],
        *,
        create: bool = False,
        if_missing: Callable[[], T] | None = None,
        inline: bool = False,
        grouped: bool = False,
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
            if grouped:
                # A write: ``work`` runs inside the transaction of its group.
                return await prefix_file.queue.submit_grouped(
                    prefix_file.run_group, work, create
                )
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
            db,
            work,
            write=False,
            create=False,
            inline=inline,
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

        if write:
            # Group commit: writes to one file queued together share one
            # transaction, each in its savepoint (``_PrefixFile.run_group``).
            def write_work(conn: sqlite3.Connection) -> T:
                database = _Database(conn, part, self._revs_limit)
                if not create:
                    database.meta()  # DatabaseNotFound before anything else
                return work(database)

            return await self._run(prefix, write_work, create=create, grouped=True)

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
        open_files = [f for f in self._files.values() if f.may_be_open and not f.in_memory]
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
        d.addCallback(self._release_memory_soon)
        if not d.called:
            self._background.add(d)
            d.addBoth(self._forget_background, d)
        d.addErrback(
            lambda f: log.failure(
                "closing storage file {prefix}", f, prefix=prefix_file.prefix
            )
        )

    def _release_memory_soon(self, result: Any = None) -> Any:
        """Once files were closed, give what their caches freed back to the
        system (``cozyd.memory``), at most once per ``trim_delay``."""
        if self._trim_call is None and self._reactor is not None and not self._closed:
            self._trim_call = self._reactor.callLater(self.trim_delay, self._trim)
        return result

    def _trim(self) -> None:
        self._trim_call = None
        if self._pool is None and self._threadpool is None:
            release_freed_memory()  # no thread to run it in: at once
            return
        d = self._in_thread(release_freed_memory)
        self._background.add(d)
        d.addBoth(self._forget_background, d)
        d.addErrback(lambda f: log.failure("giving freed memory back", f))

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
        if self._trim_call is not None and self._trim_call.active():
            self._trim_call.cancel()
        self._trim_call = None
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
        def drop(database: _Database) -> None:
            _MangoIndexes(database).drop_all()
            database.drop()

        await self._write(db, drop)

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
                    stored,
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
        [result] = await self._write(db, lambda database: _write_edits(database, [edit]))
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
            lambda database: [_bulk_get_one(database, r, revs, latest) for r in requests],
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
                missing, ancestors = missing_revs(stored.tree if stored else None, rev_list)
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
