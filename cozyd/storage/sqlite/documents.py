"""Documents and revisions in one logical database of a file: what callers
pass (ids, bodies, edits), the rows of ``docs``, ``leaf_revs`` and
``local_docs``, and the reads spanning several documents (``_bulk_get``,
``open_revs``)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cozyd import jsontext
from cozyd.storage import mango
from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    Doc,
    DocConflict,
    DocNotFound,
    InvalidRequest,
)
from cozyd.storage.names import split_db_name
from cozyd.storage.revisions import (
    DEFAULT_REVS_LIMIT,
    InvalidRevision,
    MergeOutcome,
    RevTree,
    add_child,
    merge_path,
    new_rev,
    parse_rev,
    revision_path,
    stem,
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
    if doc_id.startswith("_") and not doc_id.startswith((_DESIGN_PREFIX, _LOCAL_PREFIX)):
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
        text = jsontext.strict(body)
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
        raise InvalidRequest("Bad special document member: _deleted", code="doc_validation")
    body = {}
    for name, value in doc.items():
        if not name.startswith("_") or name in _KEPT_SPECIAL_FIELDS:
            body[name] = value
        elif name == "_attachments":
            raise InvalidRequest("Attachments are not supported.", code="doc_validation")
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
    #: The revision tree as stored, parsed on first use (``tree``): reading
    #: the winner needs none of it, and a document edited a thousand times
    #: has a thousand revisions in it.
    tree_json: str
    _tree: RevTree | None = field(default=None, repr=False)

    @property
    def tree(self) -> RevTree:
        if self._tree is None:
            self._tree = RevTree.from_json(json.loads(self.tree_json))
        return self._tree

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
    return _StoredDoc(doc_id, rev, bool(deleted), seq, body, conflicts, tree)


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
            self.conn.execute("SELECT 1 FROM dbs WHERE name = ?", (self.name,)).fetchone()
            is not None
        )

    def meta(self) -> _DbMeta:
        """The database's row; ``DatabaseNotFound`` when there is none."""
        if self._meta is None:
            row = self.conn.execute(
                "SELECT uuid, update_seq, doc_count, doc_del_count FROM dbs WHERE name = ?",
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
        """Delete the database's rows (its SQL indexes are dropped first, by
        ``_MangoIndexes.drop_all``)."""
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
        deleted = stored.deleted if rev == stored.rev else stored.tree.is_deleted(rev)
        doc = _doc_json(stored.id, rev, deleted, json.loads(bodies[rev]))
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
                jsontext.compact(tree.to_json()),
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
    if (
        generation != 0
        or not (counter.isascii() and counter.isdigit())
        or (int(counter) >= _SQLITE_MAX_INT)
    ):
        raise InvalidRevision()
    return int(counter)


# =============================================================================
# Reading several documents
# =============================================================================
def _read_leaf(database: _Database, stored: _StoredDoc, rev: str | None, revs: bool) -> Doc:
    """The document at revision ``rev``, which must be a leaf."""
    if rev is None or not stored.tree.is_leaf(rev):
        raise DocNotFound("missing")  # unknown, or its body compacted away
    return database.leaf_doc(stored, rev, revs=revs)


def _add_meta(
    doc: Doc,
    stored: _StoredDoc,
    rev: str,
    *,
    revs_info: bool,
    conflicts: bool,
    deleted_conflicts: bool,
) -> None:
    if revs_info:
        doc["_revs_info"] = stored.tree.revs_info(rev)
    if conflicts and (found := stored.tree.conflicts()):
        doc["_conflicts"] = found
    if deleted_conflicts and (found := stored.tree.deleted_conflicts()):
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
        {"ok": database.leaf_doc(stored, rev, revs=revs, bodies=bodies)} for rev in found
    ] + [{"missing": rev} for rev in missing]


def _bulk_get_error(doc_id: Any, rev: Any, error: str, reason: str) -> Doc:
    return {
        "id": doc_id,
        "docs": [{"error": {"id": doc_id, "rev": rev, "error": error, "reason": reason}}],
    }


def _bulk_get_one(database: _Database, request: Any, revs: bool, latest: bool) -> Doc:
    """One entry of ``_bulk_get``'s results, errors shaped as CouchDB's."""
    if not isinstance(request, dict):
        return _bulk_get_error(None, None, "bad_request", "document must be a JSON object")
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
