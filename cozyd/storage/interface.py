"""The document store: one async interface with CouchDB semantics.

Two engines implement it with identical behaviour (``sqlite.EmbeddedStore``,
``couchdb.CouchDBStore``); the contract suite in ``tests/storage`` runs the
same tests against both. Code above this layer never asks which one it has.

Databases have *logical* names ``<prefix>/<doctype-db>``, e.g.
``cozy1a2b…/io-cozy-files`` or ``global/instances`` (see ``names.py``). The
prefix groups the databases of one instance: the embedded engine keeps one
SQLite file per prefix, the CouchDB engine URL-escapes the slash.

Documents are plain ``dict``s shaped as CouchDB returns them (``_id``,
``_rev``, ``_deleted``, ``_revisions``, ``_conflicts``…). Revision ids are
``"<generation>-<32 hex>"``; each document keeps a revision tree, so
conflicting branches (from replication with ``new_edits=False``) are kept
and one deterministic winner is chosen exactly as CouchDB does: non-deleted
leaves beat deleted ones, then the highest generation, then the greatest
revision hash (string comparison).

Results and errors follow CouchDB 3.x (not pouchdb-server where they differ).
Sequences are opaque strings: callers pass back what they got.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol, runtime_checkable

from cozyd.errors import CozyError

Doc = dict[str, Any]


class StorageError(CozyError):
    """An error with CouchDB's status, ``error`` and ``reason``."""

    status = 500
    code = "unknown_error"


class DocNotFound(StorageError):
    status = 404
    code = "not_found"

    def __init__(self, reason: str = "missing"):
        # CouchDB says "missing" for a document that never existed and
        # "deleted" for one whose winning revision is a tombstone.
        super().__init__(reason)


class DatabaseNotFound(StorageError):
    status = 404
    code = "not_found"

    def __init__(self, reason: str = "Database does not exist."):
        super().__init__(reason)


class DocConflict(StorageError):
    status = 409
    code = "conflict"

    def __init__(self, reason: str = "Document update conflict."):
        super().__init__(reason)


class DatabaseExists(StorageError):
    status = 412
    code = "file_exists"

    def __init__(
        self, reason: str = "The database could not be created, the file already exists."
    ):
        super().__init__(reason)


class InvalidRequest(StorageError):
    """Bad arguments: a malformed id, rev, selector, body… (400)."""

    status = 400
    code = "bad_request"


class NoIndex(StorageError):
    """No index serves this query, and the caller asked for one."""

    status = 400
    code = "no_index"

    def __init__(self, reason: str = "no matching index found, create an index"):
        super().__init__(reason)


class StorageUnavailable(StorageError):
    """The backend cannot be reached or timed out (the request may be retried)."""

    status = 503
    code = "service_unavailable"


def new_doc_id() -> str:
    """A new document id: 32 lowercase hex chars, like CouchDB's uuids."""
    return uuid.uuid4().hex


@runtime_checkable
class DocumentStore(Protocol):
    """What every storage engine provides. All methods are coroutines.

    Unless said otherwise a missing database raises ``DatabaseNotFound``.
    """

    #: ``"embedded"`` or ``"couchdb"`` (for logs and /status only).
    engine: str

    async def start(self) -> None:
        """Open what must be open; raise StorageUnavailable if unreachable."""

    async def close(self) -> None:
        """Release every connection and file; the store is unusable after."""

    async def health(self) -> bool:
        """True when the backend answers (used by ``GET /status``)."""

    # -- databases ---------------------------------------------------------
    async def create_db(self, db: str) -> None:
        """Create a database; ``DatabaseExists`` if it is already there."""

    async def ensure_db(self, db: str) -> None:
        """Create a database unless it exists (idempotent)."""

    async def delete_db(self, db: str) -> None:
        """Delete a database and everything in it."""

    async def db_exists(self, db: str) -> bool: ...

    async def db_info(self, db: str) -> Doc:
        """``{"db_name", "doc_count", "doc_del_count", "update_seq"}``."""

    async def list_dbs(self, prefix: str) -> list[str]:
        """Sorted logical names of the existing databases of ``prefix``."""

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every database of ``prefix`` (idempotent); on the embedded
        engine this also removes the prefix's file."""

    # -- documents ---------------------------------------------------------
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
        """The winning revision (or ``rev``), as CouchDB's ``GET /db/id``.

        ``DocNotFound("missing")`` if unknown, ``DocNotFound("deleted")`` if
        the winner is a tombstone and no ``rev`` was asked.
        """

    async def get_open_revs(
        self,
        db: str,
        doc_id: str,
        open_revs: list[str] | str,
        *,
        revs: bool = False,
        latest: bool = False,
    ) -> list[Doc]:
        """CouchDB's ``open_revs`` (``"all"`` or a list): a list of
        ``{"ok": doc}`` / ``{"missing": rev}``."""

    async def put_doc(self, db: str, doc: Doc) -> Doc:
        """Create or update (``new_edits=true``) one document.

        ``doc["_id"]`` is required. Without ``_rev`` the document must not
        exist (or its winner must be deleted); with it, ``_rev`` must be the
        current winner. ``DocConflict`` otherwise. A body with
        ``"_deleted": true`` deletes. Returns ``{"ok": True, "id", "rev"}``.
        Ids starting with ``_design/`` are design documents, listed by
        ``all_docs`` like CouchDB; other ids starting with ``_`` are refused
        (``InvalidRequest``); ``_local/`` ids go to ``put_local``.
        """

    async def delete_doc(self, db: str, doc_id: str, rev: str) -> Doc:
        """Add a tombstone revision; ``{"ok": True, "id", "rev"}``."""

    async def bulk_docs(
        self, db: str, docs: list[Doc], *, new_edits: bool = True
    ) -> list[Doc]:
        """CouchDB ``_bulk_docs``: per-document results in input order,
        ``{"ok": True, "id", "rev"}`` or ``{"id", "error", "reason"}``.
        With ``new_edits=False`` revisions (and ``_revisions`` histories) are
        stored as given and merged into the tree; the result is ``[]`` as
        CouchDB answers."""

    async def bulk_get(
        self, db: str, requests: list[Doc], *, revs: bool = False, latest: bool = False
    ) -> list[Doc]:
        """CouchDB ``_bulk_get`` ``results`` list: for each request
        ``{"id", "rev"?}`` in order, ``{"id", "docs": [{"ok": doc} |
        {"error": {"id", "rev", "error", "reason"}}]}``. Without ``rev``:
        every leaf. With ``latest`` (CouchDB's ``?latest=true``), a ``rev``
        that is in the tree but no longer a leaf answers the leaves
        descending from it instead of ``not_found``."""

    async def revs_diff(self, db: str, revs: dict[str, list[str]]) -> Doc:
        """CouchDB ``_revs_diff``: ``{id: {"missing": [...],
        "possible_ancestors": [...]}}`` for ids with missing revisions."""

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
        """``{"total_rows", "offset", "rows": [{"id","key","value":{"rev"}
        [, "doc"]}]}`` in CouchDB's collation of ids (design docs included;
        deleted ones only when asked by ``keys``, with ``value.deleted``).
        A key of ``keys`` that names no document, whatever its JSON type
        (a number, ``null``, an object…), gets the row ``{"key": key,
        "error": "not_found"}``, never an error. A ``start_key`` or
        ``end_key`` that is not a string sorts before every id, as in
        CouchDB 3 (Erlang term order: the range starts at the first id, or
        ends before it)."""

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
        """The normal changes feed: ``{"results": [{"seq","id","changes":
        [{"rev"}], "deleted"?, "doc"?}], "last_seq", "pending"}``. Each
        document appears once, at its latest sequence. ``since`` is a value
        returned earlier (or ``"0"`` / ``"now"``).

        At most one filter (``InvalidRequest`` otherwise), as CouchDB's
        ``filter=`` parameter:

        - ``doc_ids`` (``_doc_ids``): only these documents;
        - ``selector`` (``_selector``): a Mango selector (``InvalidRequest``
          if it is not valid) matched against the winning revision, or each
          leaf with ``style="all_docs"``, as CouchDB shows them to it (with
          ``_deleted`` for tombstones and, for the winner, ``_conflicts``);
          ``changes`` lists the revisions that match;
        - ``design_only`` (``_design``): only design documents.

        With ``selector`` or ``design_only``, ``limit`` counts the rows
        returned; ``last_seq`` is the last row's sequence when the limit is
        reached, else the end of the feed; ``pending`` counts every change
        after ``last_seq``, matching or not (as CouchDB counts it)."""

    # -- _local documents (never replicated, no revision tree) ---------------
    async def get_local(self, db: str, doc_id: str) -> Doc: ...

    async def put_local(self, db: str, doc: Doc) -> Doc: ...

    async def delete_local(self, db: str, doc_id: str, rev: str | None) -> Doc: ...

    # -- Mango ------------------------------------------------------------
    async def create_index(
        self,
        db: str,
        fields: list[Any],
        *,
        ddoc: str | None = None,
        name: str | None = None,
        partial_filter_selector: Doc | None = None,
    ) -> Doc:
        """CouchDB ``POST /db/_index`` for a JSON index: ``{"result":
        "created"|"exists", "id": "_design/<ddoc>", "name"}``. The index is
        stored as a design document with ``language: "query"`` as CouchDB
        does, so it shows in ``all_docs`` and ``_design_docs``."""

    async def list_indexes(self, db: str) -> Doc:
        """CouchDB ``GET /db/_index``: ``{"total_rows", "indexes": [...]}``."""

    async def find(self, db: str, query: Doc, *, require_index: bool = False) -> Doc:
        """CouchDB ``POST /db/_find``: ``{"docs", "bookmark", "warning"?,
        "execution_stats"?}``. ``InvalidRequest`` for a bad selector;
        ``StorageError`` 400 ``no_usable_index`` when a sort has no index.
        With ``require_index``, a query no index can serve raises
        ``NoIndex`` (cozy-stack refuses full scans) — on the embedded engine
        before reading anything."""


@runtime_checkable
class RawReads(Protocol):
    """What an engine may add to ``DocumentStore``: reads answered as the
    JSON bytes the engine already has (the CouchDB engine: CouchDB's
    answer), for callers that pass them on unchanged. Each is the JSON
    encoding of what the ``DocumentStore`` method of the same name without
    ``_json`` returns, and raises the same errors; callers fall back to that
    method on an engine without them."""

    async def get_doc_json(self, db: str, doc_id: str) -> bytes:
        """``get_doc(db, doc_id)`` (current revision, no option) as JSON."""

    async def all_docs_json(self, db: str, **options: Any) -> bytes:
        """``all_docs(db, **options)`` as JSON."""

    async def changes_json(
        self,
        db: str,
        *,
        since: str | None = None,
        limit: int | None = None,
        descending: bool = False,
        include_docs: bool = False,
        style: str = "main_only",
    ) -> bytes:
        """``changes`` without a filter, as JSON."""
