"""``_all_docs`` and ``_changes`` of one logical database."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cozyd.storage import mango
from cozyd.storage.interface import Doc, InvalidRequest
from cozyd.storage.sqlite.documents import (
    _DOC_COLUMNS,
    _SQLITE_MAX_INT,
    _Database,
    _DbMeta,
    _stored_doc,
    _StoredDoc,
)

_SINCE_RE = re.compile(r"([0-9]+)(?:-(.*))?", re.DOTALL)


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
    # rev and _deleted (CouchDB 3 shows a filter no _conflicts).
    SELECTOR_DOCUMENT = mango.SqlDocument(deleted="deleted")

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
            doc = database.winner_doc(stored, conflicts=False)
            return leaves if mango.matches(self.selector, doc) else []
        # style=all_docs: each leaf on its own, without _conflicts.
        bodies = database.leaf_bodies(stored)
        return [
            rev
            for rev in leaves
            if mango.matches(self.selector, database.leaf_doc(stored, rev, bodies=bodies))
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
