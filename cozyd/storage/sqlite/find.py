"""Mango on SQLite: expression indexes mirroring a database's JSON indexes,
and ``_find`` over them (see ``cozyd.storage.mango`` for the selectors)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Generator
from typing import Any

from cozyd.storage import mango
from cozyd.storage.interface import Doc
from cozyd.storage.sqlite.documents import (
    _SQLITE_MAX_INT,
    _Database,
    _doc_json,
)


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

    def __init__(self, database: _Database, query: mango.FindQuery, plan: mango.QueryPlan):
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
        sql = f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)} ORDER BY {order}"
        if exact:
            sql += " LIMIT ? OFFSET ?"
            params += [min(query.limit, _SQLITE_MAX_INT), min(query.skip, _SQLITE_MAX_INT)]
        return sql, params

    def _rows(self, sql: str, params: list[Any]) -> Generator[tuple[Any, ...], None, None]:
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
