"""Normalized selectors compiled to SQLite conditions over a JSON ``body``
column, and the SQL functions those conditions call."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cozyd.storage.mango.collation import collation_key, json_type
from cozyd.storage.mango.common import _json
from cozyd.storage.mango.matching import _CONDITION_MATCHERS
from cozyd.storage.mango.selectors import (
    _INDEX_RE,
    BAD_PATH,
    NOT_FOUND,
    Cond,
    Logic,
    MatchAll,
    Selector,
    _is_integer,
    get_field,
    join_field,
)


# =============================================================================
# 4. SQL compilation (SQLite)
# =============================================================================
@dataclass(frozen=True)
class SqlCondition:
    """A SQLite boolean expression with its ``?`` parameters. ``exact``:
    true exactly for the documents the selector matches; otherwise it may
    also be true for some that do not (never the other way round)."""

    sql: str
    params: tuple[Any, ...] = ()
    exact: bool = True


SQL_TRUE = SqlCondition("1")
SQL_FALSE = SqlCondition("0")
_SQL_INEXACT = SqlCondition("1", (), False)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class SqlField:
    """SQL expressions reading one field of the stored documents.

    ``type_sql``: SQLite's ``json_type`` name, NULL when absent (or on a
    bad path); ``key_sql``: the collation key; ``not_found_sql``: true when
    an object on the path lacks the name (what ``$exists: false`` wants);
    ``value_sql`` / ``length_sql``: the scalar value / array length, when
    SQLite's JSON functions can read them (None otherwise).
    """

    type_sql: str
    not_found_sql: str
    value_sql: str | None = None
    length_sql: str | None = None
    key_sql: str | None = None
    each_source: str | None = None  # json_each(…) arguments, for arrays
    scalar_only: bool = False  # never an array (ids, absent fields)
    always_string: bool = False  # _id and _rev
    indexed: bool = False  # compare keys, so that SQLite can seek its index

    def key(self) -> str:
        return self.key_sql or f"mango_key({self.type_sql}, {self.value_sql})"


_ABSENT = SqlField("NULL", "1", "NULL", "NULL", "NULL", scalar_only=True)
_BAD_PATH = SqlField("NULL", "0", "NULL", "NULL", "NULL", scalar_only=True)


@dataclass(frozen=True)
class SqlDocument:
    """How a stored document reads in SQL: a JSON ``body`` column (which
    holds no ``_id``, ``_rev``, ``_deleted`` or ``_conflicts``, but may
    hold the other ``_`` fields CouchDB keeps, such as ``_access``), the
    ``id`` and ``rev`` columns, and optionally a column holding the JSON
    array of ``_conflicts`` (NULL if none) and a 0/1 column telling whether
    the document is a tombstone (``_deleted: true``; without it, documents
    are never deleted ones)."""

    body: str = "body"
    id: str = "id"
    rev: str = "rev"
    conflicts: str | None = None
    deleted: str | None = None
    indexed_fields: frozenset[str] = frozenset()  # the columns of the index read

    def field(self, path: tuple[str, ...]) -> SqlField | None:
        """The expressions for ``path``; None when it cannot be read in
        SQL (the whole document, a path under ``_conflicts``)."""
        sql_field = self._field(path)
        if sql_field is not None and join_field(path) in self.indexed_fields:
            return dataclasses.replace(sql_field, indexed=True)
        return sql_field

    def _field(self, path: tuple[str, ...]) -> SqlField | None:
        if not path:
            return None
        head = path[0]
        if head in ("_id", "_rev", "_conflicts", "_deleted"):
            return self._special_field(head, path[1:])
        if all(_is_plain_name(name) for name in path):
            return self._json_field(path)
        literal = sql_literal(_json(list(path)))
        return SqlField(
            type_sql=f"mango_path_type({self.body}, {literal})",
            not_found_sql=f"mango_path_not_found({self.body}, {literal})",
            key_sql=f"mango_path_key({self.body}, {literal})",
        )

    def _json_field(self, path: tuple[str, ...]) -> SqlField:
        def json_path(names: tuple[str, ...]) -> str:
            return sql_literal("$" + "".join(f'."{name}"' for name in names))

        target = json_path(path)
        type_sql = f"json_type({self.body}, {target})"
        # Not found: some object on the way lacks the next name.
        missing = [f"json_type({self.body}, {json_path(path[:1])}) IS NULL"]
        for depth in range(1, len(path)):
            missing.append(
                f"(json_type({self.body}, {json_path(path[:depth])}) = 'object'"
                f" AND json_type({self.body}, {json_path(path[: depth + 1])})"
                " IS NULL)"
            )
        return SqlField(
            type_sql=type_sql,
            not_found_sql="(" + " OR ".join(missing) + ")",
            value_sql=f"json_extract({self.body}, {target})",
            length_sql=f"json_array_length({self.body}, {target})",
            each_source=f"{self.body}, {target}",
        )

    def _special_field(self, head: str, rest: tuple[str, ...]) -> SqlField | None:
        if head in ("_id", "_rev"):
            column = self.id if head == "_id" else self.rev
            if rest:
                return _BAD_PATH  # a path through a string
            return SqlField(
                "'text'", "0", column, "NULL", scalar_only=True, always_string=True
            )
        if head == "_conflicts" and self.conflicts is not None:
            if rest:
                return None
            # A JSON array, never a scalar: no value_sql (an "= ?" on the
            # column would also let SQLite substitute the operand for it in
            # the JSON functions).
            column = self.conflicts
            return SqlField(
                type_sql=f"json_type({column})",
                not_found_sql=f"({column} IS NULL)",
                length_sql=f"json_array_length({column})",
                key_sql=f"mango_key(json_type({column}), {column})",
                each_source=column,
            )
        if head == "_deleted" and self.deleted is not None:
            if rest:
                return None  # a path through true, or through nothing
            column = self.deleted
            return SqlField(
                type_sql=f"(CASE WHEN {column} THEN 'true' END)",
                not_found_sql=f"(NOT {column})",
                value_sql=f"(CASE WHEN {column} THEN 1 END)",
                length_sql="NULL",
                scalar_only=True,
            )
        return _ABSENT


def _is_plain_name(name: str) -> bool:
    # What a quoted JSON path label of SQLite can hold, and not an integer
    # (Mango reads "a.0" as an array index, SQLite could not).
    return '"' not in name and "\\" not in name and not _INDEX_RE.fullmatch(name)


# SQLite refuses expressions deeper than 1000 levels: a larger condition is
# left to the Python evaluation (an inexact "1").
_MAX_SQL_TERMS = 300


def compile_sql(selector: Selector, document: SqlDocument = SqlDocument()) -> SqlCondition:
    """A SQLite condition for a normalized selector (see ``SqlCondition``)."""
    condition = _compile_sql(selector, document)
    sql = condition.sql
    if sql.count("(") + sql.count(" AND ") + sql.count(" OR ") > _MAX_SQL_TERMS:
        return _SQL_INEXACT
    return condition


def _compile_sql(selector: Selector, document: SqlDocument) -> SqlCondition:
    if isinstance(selector, MatchAll):
        return SQL_TRUE
    if isinstance(selector, Logic):
        parts = [_compile_sql(arg, document) for arg in selector.args]
        if selector.op == "$and":
            return _sql_all(parts)
        if selector.op == "$or":
            return _sql_any(parts) if parts else SQL_TRUE
        if selector.op == "$not":
            return _sql_not(parts[0])
        return _sql_not(_sql_any(parts))  # $nor
    sql_field = document.field(selector.path)
    if sql_field is None:
        return _SQL_INEXACT
    return _compile_cond(selector.cond, sql_field)


def _sql_all(parts: list[SqlCondition]) -> SqlCondition:
    if any(p.sql == "0" for p in parts):
        return SQL_FALSE  # a constant false is exact, whatever the rest
    exact = all(p.exact for p in parts)
    parts = [p for p in parts if p.sql != "1"]
    if not parts:
        return SQL_TRUE if exact else _SQL_INEXACT
    return SqlCondition(
        "(" + " AND ".join(p.sql for p in parts) + ")",
        tuple(x for p in parts for x in p.params),
        exact,
    )


def _sql_any(parts: list[SqlCondition]) -> SqlCondition:
    if any(p.sql == "1" and p.exact for p in parts):
        return SQL_TRUE
    exact = all(p.exact for p in parts)
    if any(p.sql == "1" for p in parts):
        return _SQL_INEXACT
    parts = [p for p in parts if p.sql != "0"]
    if not parts:
        return SQL_FALSE
    return SqlCondition(
        "(" + " OR ".join(p.sql for p in parts) + ")",
        tuple(x for p in parts for x in p.params),
        exact,
    )


def _sql_not(part: SqlCondition) -> SqlCondition:
    if not part.exact:
        return _SQL_INEXACT
    return SqlCondition(f"(NOT IFNULL({part.sql}, 0))", part.params)


def _sql_present(sql_field: SqlField) -> SqlCondition:
    return SqlCondition(f"({sql_field.type_sql} IS NOT NULL)")


def _present_and(sql_field: SqlField, condition: SqlCondition) -> SqlCondition:
    return _sql_all([_sql_present(sql_field), condition])


_SQLITE_TYPES = {
    "null": ("null",),
    "boolean": ("true", "false"),
    "number": ("integer", "real"),
    "string": ("text",),
    "array": ("array",),
    "object": ("object",),
}
_SQL_COMPARISONS = {
    "$eq": "=",
    "$ne": "!=",
    "$lt": "<",
    "$lte": "<=",
    "$gt": ">",
    "$gte": ">=",
}


def _sql_type_in(sql_field: SqlField, types: Iterable[str]) -> SqlCondition:
    names = ", ".join(f"'{t}'" for t in types)
    return SqlCondition(f"({sql_field.type_sql} IN ({names}))") if names else SQL_FALSE


def _compile_cond(cond: Cond, f: SqlField) -> SqlCondition:
    op, arg = cond.op, cond.arg
    if op == "$exists":
        return _sql_present(f) if arg else SqlCondition(f.not_found_sql)
    if op == "$type":
        return _sql_type_in(f, _SQLITE_TYPES.get(arg, ()))
    if op in _SQL_COMPARISONS:
        return _compile_comparison(op, arg, f)
    if op in ("$in", "$nin"):
        return _compile_in(arg, f, negate=op == "$nin")
    if op == "$size":
        if not _fits_sqlite([arg]):
            return SQL_FALSE  # no array is that long
        if f.length_sql is None:
            return _inexact_type(f, "array")
        return _sql_all(
            [_sql_type_in(f, ["array"]), SqlCondition(f"({f.length_sql} = ?)", (arg,))]
        )
    if op == "$mod" and f.value_sql is not None and _fits_sqlite(arg):
        return _sql_all(
            [
                _sql_type_in(f, ["integer"]),
                SqlCondition(f"({f.value_sql} % ? = ?)", tuple(arg)),
            ]
        )
    if op == "$beginsWith" and f.value_sql is not None:
        return _sql_all(
            [
                _sql_type_in(f, ["text"]),
                SqlCondition(f"(substr({f.value_sql}, 1, ?) = ?)", (len(arg), arg)),
            ]
        )
    if op == "$all" and not arg:
        return SQL_FALSE
    if op == "$not":
        return _present_and(f, _sql_not(_compile_cond(arg, f)))
    # What SQL cannot say exactly: keep the documents of the right type.
    return _inexact_type(f, _OPERAND_TYPES.get(op))


_OPERAND_TYPES = {
    "$regex": "text",
    "$beginsWith": "text",
    "$mod": "integer",
    "$all": "array",
    "$elemMatch": "array",
    "$allMatch": "array",
    "$keyMapMatch": "object",
}


def _inexact_type(f: SqlField, sqlite_type: str | None) -> SqlCondition:
    condition = _sql_type_in(f, [sqlite_type]) if sqlite_type else _sql_present(f)
    return SqlCondition(condition.sql, condition.params, exact=False)


def _fits_sqlite(values: Iterable[Any]) -> bool:
    return all(-(2**63) <= v < 2**63 for v in values)


def _compile_comparison(op: str, arg: Any, f: SqlField) -> SqlCondition:
    if f.always_string and not isinstance(arg, str):
        # Types collate first: any string compares with ``arg`` alike (the
        # usual {"_id": {"$gt": null}} holds for every document).
        holds = _CONDITION_MATCHERS[op](arg, "")
        return SQL_TRUE if holds else SQL_FALSE
    if op == "$eq" and f.value_sql is not None and not f.indexed:
        # Equality needs no collation key: the type and the plain value.
        if arg is None or isinstance(arg, bool):
            return _sql_type_in(f, [_json(arg)])
        if isinstance(arg, str):
            return _sql_all(
                [
                    _sql_type_in(f, ["text"]),
                    SqlCondition(f"({f.value_sql} = ?)", (arg,)),
                ]
            )
        if isinstance(arg, float) or (_is_integer(arg) and _fits_sqlite([arg])):
            return _sql_all(
                [
                    _sql_type_in(f, ["integer", "real"]),
                    SqlCondition(f"({f.value_sql} = ?)", (arg,)),
                ]
            )
    return SqlCondition(f"({f.key()} {_SQL_COMPARISONS[op]} ?)", (collation_key(arg),))


def _compile_in(args: list[Any], f: SqlField, *, negate: bool) -> SqlCondition:
    if not args:
        return _sql_present(f) if negate else SQL_FALSE
    keys = tuple(collation_key(arg) for arg in args)
    marks = ", ".join("?" * len(keys))
    scalar = SqlCondition(f"({f.key()} IN ({marks}))", keys)
    if f.scalar_only:
        return _present_and(f, _sql_not(scalar)) if negate else scalar
    if f.each_source is None:
        # Cannot look inside arrays here: let every array through.
        if negate:
            return SqlCondition(
                f"({f.type_sql} = 'array' OR NOT IFNULL({scalar.sql}, 1))",
                keys,
                exact=False,
            )
        return SqlCondition(f"({f.type_sql} = 'array' OR {scalar.sql})", keys, exact=False)
    # An array matches $in when one of its elements does.
    element = SqlCondition(
        f"(EXISTS (SELECT 1 FROM json_each({f.each_source}) AS e"
        f" WHERE mango_key(e.type, e.value) IN ({marks})))",
        keys,
    )
    found = SqlCondition(
        f"(CASE WHEN {f.type_sql} = 'array' THEN {element.sql}"
        f" ELSE IFNULL({scalar.sql}, 0) END)",
        keys + keys,
    )
    if negate:
        return _present_and(f, _sql_not(found))
    return found


# -- SQL functions the compiled conditions call --------------------------------
def _sql_value(sqlite_type: str | None, value: Any) -> Any:
    """The JSON value behind ``json_type`` and ``json_extract`` results."""
    if sqlite_type in ("array", "object"):
        return json.loads(value)
    if sqlite_type == "true":
        return True
    if sqlite_type == "false":
        return False
    if sqlite_type == "null":
        return None
    return value


def _sql_mango_key(sqlite_type: str | None, value: Any) -> bytes | None:
    if sqlite_type is None:
        return None
    return collation_key(_sql_value(sqlite_type, value))


def _sql_path_value(body: str, path_json: str) -> Any:
    return get_field(json.loads(body), tuple(json.loads(path_json)))


def _sql_path_key(body: str, path_json: str) -> bytes | None:
    value = _sql_path_value(body, path_json)
    if value is NOT_FOUND or value is BAD_PATH:
        return None
    return collation_key(value)


_TYPE_NAMES_FOR_SQL = {
    "number": None,
    "boolean": None,
    "string": "text",
    "array": "array",
    "object": "object",
    "null": "null",
}


def _sql_path_type(body: str, path_json: str) -> str | None:
    value = _sql_path_value(body, path_json)
    if value is NOT_FOUND or value is BAD_PATH:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    return _TYPE_NAMES_FOR_SQL[json_type(value)]


def _sql_path_not_found(body: str, path_json: str) -> int:
    return int(_sql_path_value(body, path_json) is NOT_FOUND)


def register_sql_functions(connection: sqlite3.Connection) -> None:
    """Define the functions compiled conditions and index expressions use,
    on every connection (indexes over them need them to be deterministic)."""
    connection.create_function("mango_key", 2, _sql_mango_key, deterministic=True)
    connection.create_function("mango_path_key", 2, _sql_path_key, deterministic=True)
    connection.create_function("mango_path_type", 2, _sql_path_type, deterministic=True)
    connection.create_function(
        "mango_path_not_found", 2, _sql_path_not_found, deterministic=True
    )
