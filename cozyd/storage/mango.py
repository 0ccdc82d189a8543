"""Mango (CouchDB ``_find``) support shared by the storage engines.

What is here, in the order a query meets it:

1. **Collation** — CouchDB's order of JSON values: null < false < true <
   numbers < strings < arrays < objects, arrays and objects compared member
   by member. CouchDB compares strings with ICU's root collation; this module
   approximates it without ICU (see ``string_key``): symbols, then digits,
   then letters; letters compared first without regard to case and accents,
   then accents, then case (lower before upper), then code points. Every
   value has a byte key (``collation_key``) whose plain byte order is this
   collation, so SQLite can index and sort it.
2. **Selectors** — ``normalize`` validates a selector (``InvalidRequest``
   with CouchDB's error names) and rewrites it as CouchDB does: implicit
   ``$and``/``$eq`` made explicit, nested field names joined into paths,
   negations pushed down to the conditions. ``matches`` evaluates the result
   against a document, operator by operator as CouchDB 3.x does.
3. **SQL** — ``compile_sql`` turns a normalized selector into a SQLite
   condition over a JSON ``body`` column. Where an operator cannot be
   expressed exactly the condition is widened (never narrowed) and marked
   inexact: the Python evaluation always runs last.
4. **Indexes and queries** — JSON index definitions as CouchDB stores them
   in ``language: "query"`` design documents, ``_find`` request validation,
   and the index choice of CouchDB's query planner.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import sqlite3
import struct
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from cozyd.storage.interface import InvalidRequest, StorageError

Doc = dict[str, Any]

DEFAULT_FIND_LIMIT = 25
NO_INDEX_WARNING = "No matching index found, create an index to optimize query time."
INDEX_SCAN_WARNING = (
    "The number of documents examined is high in proportion to the number of "
    "results returned. Consider adding a more specific index to improve this."
)
_INDEX_SCAN_RATIO = 10


def mango_error(code: str, reason: str) -> InvalidRequest:
    """A 400 error named as CouchDB's Mango names it."""
    return InvalidRequest(reason, code=code)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# =============================================================================
# 1. Collation
# =============================================================================
# ICU's root collation puts ASCII punctuation and symbols in this order,
# before digits and letters.
_ASCII_SYMBOL_ORDER = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"
_SYMBOL_RANK = {char: rank for rank, char in enumerate(_ASCII_SYMBOL_ORDER, 1)}

# Groups of primary weights, in collation order. As in ICU, unassigned code
# points sort after every letter and U+FFFF last of all: "\ufff0" and
# "\uffff" are the usual high ends of string ranges.
(
    _GROUP_SPACE,
    _GROUP_ASCII_SYMBOL,
    _GROUP_SYMBOL,
    _GROUP_DIGIT,
    _GROUP_LETTER,
    _GROUP_UNASSIGNED,
    _GROUP_LAST,
) = range(1, 8)

# Type tags of collation keys, in collation order. 0 ends a list or object.
(
    _TAG_END,
    _TAG_NULL,
    _TAG_FALSE,
    _TAG_TRUE,
    _TAG_NUMBER,
    _TAG_STRING,
    _TAG_ARRAY,
    _TAG_OBJECT,
) = range(8)
_MEMBER = b"\x01"  # starts each member of an object (0 ends the object)


def collation_key(value: Any) -> bytes:
    """Bytes whose order is CouchDB's collation of JSON values."""
    out = bytearray()
    _append_key(out, value)
    return bytes(out)


def _append_key(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(_TAG_NULL)
    elif value is False:
        out.append(_TAG_FALSE)
    elif value is True:
        out.append(_TAG_TRUE)
    elif isinstance(value, (int, float)):
        out.append(_TAG_NUMBER)
        out += _number_key(value)
    elif isinstance(value, str):
        out.append(_TAG_STRING)
        out += string_key(value)
    elif isinstance(value, list):
        out.append(_TAG_ARRAY)
        for item in value:
            _append_key(out, item)
        out.append(_TAG_END)
    elif isinstance(value, dict):
        out.append(_TAG_OBJECT)
        for name, item in value.items():
            out += _MEMBER
            out += string_key(name)
            _append_key(out, item)
        out.append(_TAG_END)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _as_float(number: float) -> float:
    try:
        result = float(number)
    except OverflowError:
        result = math.inf if number > 0 else -math.inf
    return 0.0 if result == 0 else result  # -0.0 and 0.0 are the same number


def _number_key(number: float) -> bytes:
    # IEEE 754 bits, flipped so that unsigned byte order is numeric order.
    bits = struct.unpack(">Q", struct.pack(">d", _as_float(number)))[0]
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | (1 << 63)
    return bits.to_bytes(8, "big")


def string_key(text: str) -> bytes:
    """The sort key of a string: four levels, each ended by zeros.

    Primary weights (4 bytes each) compare base characters: whitespace,
    then symbols, then digits, then letters, case and accents ignored.
    Secondary weights (2 bytes) compare accents, tertiary weights (1 byte)
    compare case, and the last level (3 bytes a code point) breaks any
    remaining tie, so that equal keys mean equal strings.
    """
    if len(text) <= 64:
        return _short_string_key(text)
    return _compute_string_key(text)


@functools.lru_cache(maxsize=16384)
def _short_string_key(text: str) -> bytes:
    return _compute_string_key(text)


def _compute_string_key(text: str) -> bytes:
    primary = bytearray()
    secondary = bytearray()
    tertiary = bytearray()
    for char in unicodedata.normalize("NFD", text):
        weights = _char_weights(char)
        if weights is None:
            continue  # ignorable
        primaries, accent, case = weights
        if not primaries:  # a combining mark: an accent on the previous char
            secondary += accent.to_bytes(2, "big")
            continue
        for weight in primaries:
            primary += weight.to_bytes(4, "big")
            secondary += b"\x00\x01"
            tertiary.append(case)
    identical = b"".join((ord(char) + 1).to_bytes(3, "big") for char in text)
    return (
        bytes(primary)
        + b"\x00" * 4
        + bytes(secondary)
        + b"\x00" * 2
        + bytes(tertiary)
        + b"\x00"
        + identical
        + b"\x00" * 3
    )


@functools.lru_cache(maxsize=4096)
def _char_weights(char: str) -> tuple[tuple[int, ...], int, int] | None:
    """``(primary weights, accent weight, case weight)`` of one character
    of an NFD string, or None for a character collation ignores."""
    category = unicodedata.category(char)
    if category.startswith("M"):
        return (), min(0xFFFF, 0x100 + ord(char)), 0
    if category in ("Cc", "Cf") and not char.isspace():
        return None
    case = 2 if char.isupper() or category == "Lt" else 1
    # Case folding expands some letters (ß → ss): one weight per letter.
    return tuple(_primary_weight(c) for c in char.casefold()), 0, case


def _primary_weight(char: str) -> int:
    if char == "\uffff":
        return _GROUP_LAST << 24
    if char.isspace():
        return _GROUP_SPACE << 24 | ord(char)
    if char in _SYMBOL_RANK:
        return _GROUP_ASCII_SYMBOL << 24 | _SYMBOL_RANK[char]
    category = unicodedata.category(char)
    if category == "Nd":
        return _GROUP_DIGIT << 24 | unicodedata.digit(char)
    if category.startswith("N"):
        return _GROUP_DIGIT << 24 | (16 + ord(char))
    if category in ("Cn", "Co", "Cs"):
        return _GROUP_UNASSIGNED << 24 | ord(char)
    if category.startswith(("P", "S", "Z", "C")):
        return _GROUP_SYMBOL << 24 | ord(char)
    return _GROUP_LETTER << 24 | ord(char)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 as CouchDB collates ``a`` and ``b``."""
    if _is_number(a) and _is_number(b):
        fa, fb = _as_float(a), _as_float(b)
        return (fa > fb) - (fa < fb)
    if isinstance(a, str) and isinstance(b, str):
        ka, kb = string_key(a), string_key(b)
    else:
        ka, kb = collation_key(a), collation_key(b)
    return (ka > kb) - (ka < kb)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_type(value: Any) -> str:
    """Mango's ``$type`` name of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _same_term(a: Any, b: Any) -> bool:
    """Exact equality of JSON terms as Erlang's ``=:=`` sees them: 1 and 1.0
    differ, true and 1 differ, and so do objects with their members in a
    different order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_term(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            ka == kb and _same_term(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


# =============================================================================
# 2. Field paths
# =============================================================================
class _Missing:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NOT_FOUND = _Missing("NOT_FOUND")  # an object on the path lacks the name
BAD_PATH = _Missing("BAD_PATH")  # the path crosses a scalar or a bad index
_INDEX_RE = re.compile(r"[+-]?[0-9]+")


def parse_field(name: Any) -> tuple[str, ...]:
    """``"a.b\\.c"`` → ``("a", "b.c")`` (a backslash escapes a dot)."""
    if not isinstance(name, str):
        raise mango_error("invalid_field_name", f"Invalid field name: {_json(name)}")
    if "\\" in name:
        parts = [part.replace("\\", "") for part in re.split(r"(?<!\\)\.", name)]
    else:
        parts = name.split(".")
    if "" in parts:
        raise mango_error("invalid_field_name", f"Invalid field name: {name}")
    return tuple(parts)


def join_field(path: Iterable[str]) -> str:
    return ".".join(path)


def get_field(value: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path``, or ``NOT_FOUND`` / ``BAD_PATH``. A name that
    is an integer indexes arrays."""
    for name in path:
        if isinstance(value, dict):
            if name not in value:
                return NOT_FOUND
            value = value[name]
        elif isinstance(value, list):
            if not _INDEX_RE.fullmatch(name):
                return BAD_PATH
            position = int(name)
            if not 0 <= position < len(value):
                return BAD_PATH
            value = value[position]
        else:
            return BAD_PATH
    return value


def set_field(doc: Doc, path: tuple[str, ...], value: Any) -> None:
    target = doc
    for name in path[:-1]:
        child = target.get(name)
        if not isinstance(child, dict):
            child = target[name] = {}
        target = child
    target[path[-1]] = value


def project(doc: Doc, fields: list[str] | None) -> Doc:
    """The ``fields`` of ``doc`` (all of them when ``fields`` is None)."""
    if fields is None:
        return doc
    result: Doc = {}
    for name in fields:
        path = parse_field(name)
        value = get_field(doc, path)
        if value is not NOT_FOUND and value is not BAD_PATH:
            set_field(result, path, value)
    return result


# =============================================================================
# 3. Selectors: normalized form, normalization, evaluation
# =============================================================================
@dataclass(frozen=True)
class Cond:
    """A condition on one value: ``op`` is ``"$eq"``, ``"$in"``…; ``arg``
    is the operand (a ``Selector`` for ``$elemMatch``, ``$allMatch`` and
    ``$keyMapMatch``, a ``Cond`` for ``$not``)."""

    op: str
    arg: Any


@dataclass(frozen=True)
class FieldMatch:
    """The value at ``path`` (the value itself when empty) meets ``cond``."""

    path: tuple[str, ...]
    cond: Cond


@dataclass(frozen=True)
class Logic:
    """``$and`` / ``$or`` of selectors; ``$not`` / ``$nor`` survive
    normalization only inside ``$elemMatch``-like operands, as in CouchDB."""

    op: str
    args: tuple[Selector, ...]


@dataclass(frozen=True)
class MatchAll:
    """The empty selector ``{}``."""


Selector = FieldMatch | Logic | MatchAll
MATCH_ALL = MatchAll()

_LOGIC_LIST_OPS = ("$and", "$or", "$nor")
_SUBSELECTOR_OPS = ("$elemMatch", "$allMatch", "$keyMapMatch")
_COMPARISON_OPS = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte")
_UNSUPPORTED_OPS = (
    "$where",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
    "$text",
    "$default",
)
_NEGATIONS = {
    "$lt": "$gte",
    "$gte": "$lt",
    "$lte": "$gt",
    "$gt": "$lte",
    "$eq": "$ne",
    "$ne": "$eq",
    "$in": "$nin",
    "$nin": "$in",
}


def _bad_arg(op: str, arg: Any) -> InvalidRequest:
    return mango_error("bad_arg", f"Bad argument for operator {op}: {_json(arg)}")


def normalize(selector: Any) -> Selector:
    """Validate a selector and rewrite it as CouchDB does (see the module
    docstring); ``InvalidRequest`` for anything CouchDB refuses."""
    if not isinstance(selector, dict):
        raise mango_error(
            "invalid_selector_json",
            f"Selector must be a JSON object, not: {_json(selector)}",
        )
    if not selector:
        return MATCH_ALL
    try:
        normalized = _norm_negations(_norm_fields(_norm_ops(selector), ()))
    except RecursionError:
        raise mango_error(
            "invalid_selector", "Selector is nested too deeply."
        ) from None
    if isinstance(normalized, FieldMatch) and not normalized.path:
        raise mango_error(
            "invalid_selector", "One or more conditions is missing a field name."
        )
    return normalized


def _norm_ops(value: Any) -> Any:
    """Validate operators; make implicit ``$and`` and ``$eq`` explicit."""
    if not isinstance(value, dict) or not value:
        return {"$eq": value}
    if len(value) > 1:
        return {"$and": [_norm_ops({name: arg}) for name, arg in value.items()]}
    ((name, arg),) = value.items()
    if not name.startswith("$"):
        return {name: _norm_ops(arg)}
    _check_operand(name, arg)
    if name in _LOGIC_LIST_OPS:
        return {name: [_norm_ops(item) for item in arg]}
    if name == "$not" or name in _SUBSELECTOR_OPS:
        return {name: _norm_ops(arg)}
    return value


def _check_operand(op: str, arg: Any) -> None:
    valid: bool
    if op in _LOGIC_LIST_OPS or op in ("$in", "$nin", "$all"):
        valid = isinstance(arg, list)
    elif op == "$not" or op in _SUBSELECTOR_OPS:
        valid = isinstance(arg, dict)
    elif op == "$exists":
        valid = isinstance(arg, bool)
    elif op in ("$type", "$beginsWith"):
        valid = isinstance(arg, str)
    elif op == "$size":
        valid = _is_integer(arg) and arg >= 0
    elif op == "$mod":
        # CouchDB fails at match time on a zero divisor; refuse it upfront.
        valid = (
            isinstance(arg, list)
            and len(arg) == 2
            and all(_is_integer(x) for x in arg)
            and arg[0] != 0
        )
    elif op == "$regex":
        valid = isinstance(arg, str)
        if valid:
            _check_regex(arg)
    elif op in _COMPARISON_OPS:
        valid = True
    elif op in _UNSUPPORTED_OPS:
        raise mango_error("not_supported", f"Unsupported operator: {op}")
    else:
        raise mango_error("invalid_operator", f"Invalid operator: {op}")
    if not valid:
        raise _bad_arg(op, arg)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Regular expressions run on RE2, whose matching time is linear in the
# text: a pattern such as "(a+)+$" cannot stall the server. RE2 has no
# backreferences nor lookarounds; patterns that need them are refused.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=256)
def _compiled_regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _check_regex(pattern: str) -> None:
    try:
        _compiled_regex(pattern)
    except re2.error as e:
        reason = f"Bad argument for operator $regex: {_json(pattern)}"
        detail = e.args[0] if e.args else b""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if detail:
            reason += f" ({detail}"
            if _python_regex_compiles(pattern):
                reason += "; backreferences and lookarounds are not supported"
            reason += ")"
        raise mango_error("bad_arg", reason) from None


def _python_regex_compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    return True


def _norm_fields(raw: dict[str, Any], path: tuple[str, ...]) -> Selector:
    """Turn the validated JSON into the normalized tree, pushing field names
    down to the conditions (``{a: {b: {$gt: 1}}}`` → ``a.b $gt 1``)."""
    ((name, arg),) = raw.items()
    if name in _LOGIC_LIST_OPS:
        return Logic(name, tuple(_norm_fields(item, path) for item in arg))
    if name == "$not":
        return Logic("$not", (_norm_fields(arg, path),))
    if name in _SUBSELECTOR_OPS:
        return FieldMatch(path, Cond(name, _norm_fields(arg, ())))
    if name.startswith("$"):
        return FieldMatch(path, Cond(name, arg))
    return _norm_fields(arg, path + parse_field(name))


def _norm_negations(selector: Selector) -> Selector:
    """Push ``$not`` and ``$nor`` down to the conditions (De Morgan)."""
    if isinstance(selector, Logic):
        if selector.op == "$not":
            return _negate(selector.args[0])
        if selector.op == "$nor":
            return Logic("$and", tuple(_negate(arg) for arg in selector.args))
        return Logic(selector.op, tuple(_norm_negations(arg) for arg in selector.args))
    return selector


def _negate(selector: Selector) -> Selector:
    if isinstance(selector, Logic):
        if selector.op == "$not":
            return _norm_negations(selector.args[0])
        if selector.op == "$nor":
            return Logic("$or", tuple(_norm_negations(arg) for arg in selector.args))
        flipped = "$or" if selector.op == "$and" else "$and"
        return Logic(flipped, tuple(_negate(arg) for arg in selector.args))
    if isinstance(selector, FieldMatch):
        return FieldMatch(selector.path, _negate_cond(selector.cond))
    return selector


def _negate_cond(cond: Cond) -> Cond:
    if cond.op in _NEGATIONS:
        return Cond(_NEGATIONS[cond.op], cond.arg)
    if cond.op == "$exists":
        return Cond("$exists", not cond.arg)
    return Cond("$not", cond)


def selector_to_json(selector: Selector) -> Doc:
    """The JSON of a normalized selector, as CouchDB shows it (index
    definitions keep their ``partial_filter_selector`` in this form)."""
    if isinstance(selector, MatchAll):
        return {}
    if isinstance(selector, Logic):
        args = [selector_to_json(arg) for arg in selector.args]
        return {selector.op: args[0] if selector.op == "$not" else args}
    return {join_field(selector.path): _cond_to_json(selector.cond)}


def _cond_to_json(cond: Cond) -> Doc:
    if cond.op in _SUBSELECTOR_OPS:
        return {cond.op: selector_to_json(cond.arg)}
    if cond.op == "$not":
        return {"$not": _cond_to_json(cond.arg)}
    return {cond.op: cond.arg}


# -- evaluation ----------------------------------------------------------------
def matches(selector: Selector, doc: Any) -> bool:
    """Does ``doc`` (a document with ``_id`` and ``_rev``) match?"""
    if isinstance(selector, MatchAll):
        return True
    if isinstance(selector, Logic):
        if selector.op == "$and":
            return all(matches(arg, doc) for arg in selector.args)
        if selector.op == "$or":
            return not selector.args or any(matches(arg, doc) for arg in selector.args)
        if selector.op == "$not":
            return not matches(selector.args[0], doc)
        return not any(matches(arg, doc) for arg in selector.args)  # $nor
    value = get_field(doc, selector.path)
    if value is NOT_FOUND:
        return selector.cond == Cond("$exists", False)
    if value is BAD_PATH:
        return False
    return _cond_matches(selector.cond, value)


def _cond_matches(cond: Cond, value: Any) -> bool:
    return _CONDITION_MATCHERS[cond.op](cond.arg, value)


def _match_in(args: list[Any], value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(compare(v, arg) == 0 for arg in args for v in values)


def _match_nin(args: list[Any], value: Any) -> bool:
    if isinstance(value, list):
        return not _match_in(args, value)
    return all(compare(value, arg) != 0 for arg in args)


def _match_all(args: list[Any], value: Any) -> bool:
    if not args or not isinstance(value, list):
        return False
    if all(any(_same_term(arg, v) for v in value) for arg in args):
        return True
    # CouchDB also accepts {"$all": [[…]]} equal to the array itself.
    return len(args) == 1 and isinstance(args[0], list) and _same_term(args[0], value)


def _match_mod(arg: list[int], value: Any) -> bool:
    if not _is_integer(value):
        return False
    divisor, remainder = arg
    # Erlang's rem: the result has the sign of the dividend.
    result = abs(value) % abs(divisor)
    return (-result if value < 0 else result) == remainder


def _match_regex(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and _compiled_regex(pattern).search(value) is not None


_CONDITION_MATCHERS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda arg, value: compare(value, arg) == 0,
    "$ne": lambda arg, value: compare(value, arg) != 0,
    "$lt": lambda arg, value: compare(value, arg) < 0,
    "$lte": lambda arg, value: compare(value, arg) <= 0,
    "$gt": lambda arg, value: compare(value, arg) > 0,
    "$gte": lambda arg, value: compare(value, arg) >= 0,
    "$in": _match_in,
    "$nin": _match_nin,
    "$exists": lambda arg, value: arg,  # the value is there
    "$type": lambda arg, value: json_type(value) == arg,
    "$mod": _match_mod,
    "$regex": _match_regex,
    "$size": lambda arg, value: isinstance(value, list) and len(value) == arg,
    "$all": _match_all,
    "$beginsWith": lambda arg, value: isinstance(value, str) and value.startswith(arg),
    "$elemMatch": lambda arg, value: (
        isinstance(value, list) and any(matches(arg, v) for v in value)
    ),
    "$allMatch": lambda arg, value: (
        isinstance(value, list) and bool(value) and all(matches(arg, v) for v in value)
    ),
    "$keyMapMatch": lambda arg, value: (
        isinstance(value, dict) and any(matches(arg, k) for k in value)
    ),
    "$not": lambda arg, value: not _cond_matches(arg, value),
}


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


def compile_sql(
    selector: Selector, document: SqlDocument = SqlDocument()
) -> SqlCondition:
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
        return SqlCondition(
            f"({f.type_sql} = 'array' OR {scalar.sql})", keys, exact=False
        )
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


# =============================================================================
# 5. Indexes, queries and the planner
# =============================================================================
def parse_sort(sort: Any) -> list[tuple[str, str]]:
    """``["a", {"b": "desc"}]`` → ``[("a", "asc"), ("b", "desc")]``."""
    if not isinstance(sort, list):
        raise mango_error(
            "invalid_sort_json",
            f"Sort must be an array of sort specs, not: {_json(sort)}",
        )
    fields = []
    for spec in sort:
        if isinstance(spec, str) and spec:
            fields.append((spec, "asc"))
        elif isinstance(spec, dict) and len(spec) == 1:
            ((name, direction),) = spec.items()
            if direction not in ("asc", "desc"):
                raise mango_error(
                    "invalid_sort_dir", f"Invalid sort direction: {_json(direction)}"
                )
            fields.append((name, direction))
        else:
            raise mango_error(
                "invalid_sort_field", f"Invalid sort field: {_json(spec)}"
            )
    for name, _ in fields:
        parse_field(name)
    if len({direction for _, direction in fields}) > 1:
        raise mango_error(
            "unsupported_mixed_sort",
            "Sorts currently only support a single direction for all fields.",
        )
    return fields


@dataclass(frozen=True)
class MangoIndex:
    """A JSON index (or ``_all_docs``, the special index: ``ddoc`` None)."""

    ddoc: str | None
    name: str
    fields: tuple[tuple[str, str], ...]
    partial_filter: Selector | None = None

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.fields]

    @property
    def is_special(self) -> bool:
        return self.ddoc is None

    def to_json(self) -> Doc:
        """As ``GET /db/_index`` lists it."""
        definition: Doc = {
            "fields": [{name: direction} for name, direction in self.fields]
        }
        if self.is_special:
            return {
                "ddoc": None,
                "name": self.name,
                "type": "special",
                "def": definition,
            }
        if self.partial_filter is not None:
            definition["partial_filter_selector"] = selector_to_json(
                self.partial_filter
            )
        return {
            "ddoc": self.ddoc,
            "name": self.name,
            "type": "json",
            "partitioned": False,
            "def": definition,
        }


ALL_DOCS_INDEX = MangoIndex(None, "_all_docs", (("_id", "asc"),))
#: SQLite indexes (and the expressions over them) have bounds of their own.
MAX_INDEX_FIELDS = 100


def index_view(fields: Any, partial_filter_selector: Any = None) -> Doc:
    """The design document view CouchDB stores for a JSON index."""
    if not isinstance(fields, list) or not fields:
        raise mango_error("invalid_index", "Index fields must be a non-empty array.")
    if len(fields) > MAX_INDEX_FIELDS:
        raise mango_error(
            "invalid_index", f"An index can have at most {MAX_INDEX_FIELDS} fields."
        )
    parsed = parse_sort(fields)
    definition: Doc = {"fields": fields}
    selector: Selector = MATCH_ALL
    if partial_filter_selector is not None:
        selector = normalize(partial_filter_selector)
        definition["partial_filter_selector"] = partial_filter_selector
    return {
        "map": {
            "fields": dict(parsed),
            "partial_filter_selector": selector_to_json(selector),
        },
        "reduce": "_count",
        "options": {"def": definition},
    }


def generated_index_name(view: Doc) -> str:
    """CouchDB names an index after a SHA-1 of its definition (40 hex)."""
    canonical = json.dumps(
        view["map"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()


def design_doc_id(ddoc: str) -> str:
    return ddoc if ddoc.startswith("_design/") else "_design/" + ddoc


def indexes_of_design_doc(ddoc_id: str, body: Mapping[str, Any]) -> list[MangoIndex]:
    """The JSON indexes a ``language: "query"`` design document defines
    (views that do not parse are ignored, as CouchDB does)."""
    views = body.get("views")
    if body.get("language") != "query" or not isinstance(views, dict):
        return []
    indexes = []
    for name, view in views.items():
        index = _index_of_view(ddoc_id, name, view)
        if index is not None:
            indexes.append(index)
    return indexes


def _index_of_view(ddoc_id: str, name: str, view: Any) -> MangoIndex | None:
    definition = view.get("map") if isinstance(view, dict) else None
    if not isinstance(definition, dict) or not isinstance(
        definition.get("fields"), dict
    ):
        return None
    fields = definition["fields"]
    if not fields or not all(d in ("asc", "desc") for d in fields.values()):
        return None
    if len(fields) > MAX_INDEX_FIELDS:
        return None  # written by hand in a design document: not indexed
    try:
        for field_name in fields:
            parse_field(field_name)
        selector = definition.get("partial_filter_selector") or {}
        partial = normalize(selector) if selector else None
    except InvalidRequest:
        return None
    return MangoIndex(ddoc_id, name, tuple(fields.items()), partial)


@dataclass(frozen=True)
class FindQuery:
    """A validated ``_find`` request."""

    selector: Selector
    limit: int = DEFAULT_FIND_LIMIT
    skip: int = 0
    sort: list[tuple[str, str]] = field(default_factory=list)
    fields: list[str] | None = None
    use_index: list[str] = field(default_factory=list)
    bookmark: str | None = None
    conflicts: bool = False
    execution_stats: bool = False
    allow_fallback: bool = True

    @property
    def descending(self) -> bool:
        return bool(self.sort) and self.sort[0][1] == "desc"


def _non_negative_int(value: Any) -> int:
    if not _is_integer(value) or value < 0:
        raise mango_error(
            "invalid_non_neg_integer",
            f"{_json(value)} is not an integer greater than or equal to zero",
        )
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise mango_error("invalid_boolean", f"Invalid boolean value: {_json(value)}")
    return value


def _positive_int(value: Any) -> int:
    if not _is_integer(value) or value < 1:
        raise mango_error(
            "invalid_pos_integer", f"{_json(value)} is not an integer greater than zero"
        )
    return value


def _use_index(value: Any) -> list[str]:
    if value is None or value == []:
        return []
    if isinstance(value, str):
        parts = value.split("/")
        if parts[0] == "_design":
            parts = parts[1:]
        if 1 <= len(parts) <= 2 and all(parts):
            return parts
    elif (
        isinstance(value, list)
        and 1 <= len(value) <= 2
        and all(isinstance(v, str) for v in value)
    ):
        return [value[0].removeprefix("_design/"), *value[1:]]
    raise mango_error("invalid_index_name", f"Invalid index name: {_json(value)}")


def _fields(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        raise mango_error(
            "invalid_fields", f"Fields must be an array of strings, not: {_json(value)}"
        )
    for name in value:
        if not isinstance(name, str):
            raise mango_error(
                "invalid_field", f"Invalid JSON for field spec: {_json(name)}"
            )
        parse_field(name)
    return value or None


def _bookmark(value: Any) -> str | None:
    # CouchDB answers "nil" when a query returned nothing: take it back.
    if value is None or value in ("", "nil"):
        return None
    if not isinstance(value, str):
        raise mango_error("invalid_bookmark", f"Invalid bookmark value: {_json(value)}")
    return value


def _stale(value: Any) -> None:
    if value not in ("ok", "false", False):
        raise mango_error("invalid_ok_or_false_value", f"Invalid value: {_json(value)}")


def _partition(value: Any) -> None:
    if value != "":
        raise mango_error("bad_request", "Partitioned queries are not supported.")


_FIND_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "limit": _non_negative_int,
    "skip": _non_negative_int,
    "sort": parse_sort,
    "fields": _fields,
    "use_index": _use_index,
    "bookmark": _bookmark,
    "conflicts": _boolean,
    "execution_stats": _boolean,
    "allow_fallback": _boolean,
}
# Accepted for CouchDB compatibility, without effect on a single node.
_IGNORED_FIND_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "r": _positive_int,
    "update": _boolean,
    "stable": _boolean,
    "stale": _stale,
    "partition": _partition,
}


def parse_find_query(query: Any) -> FindQuery:
    """Validate a ``_find`` body as CouchDB does (``InvalidRequest``)."""
    if not isinstance(query, dict):
        raise mango_error("bad_request", "Request body must be a JSON object")
    if "selector" not in query:
        raise mango_error("missing_required_key", "Missing required key: selector")
    options: dict[str, Any] = {}
    for name, value in query.items():
        if name == "selector":
            continue
        if name in _FIND_OPTIONS:
            options[name] = _FIND_OPTIONS[name](value)
        elif name in _IGNORED_FIND_OPTIONS:
            _IGNORED_FIND_OPTIONS[name](value)
        else:
            raise mango_error("invalid_key", f"Invalid key {name} for this request.")
    return FindQuery(selector=normalize(query["selector"]), **options)


# -- what the planner knows of a selector --------------------------------------
def has_required_fields(selector: Selector, required: Iterable[str]) -> bool:
    """Does every matching document need all of ``required``? (Looks
    through ``$and`` and ``$or``, like CouchDB.)"""
    remaining = [parse_field(name) for name in required]
    return not _remaining_required([selector], remaining)


def _remaining_required(
    selectors: list[Selector], remaining: list[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    for selector in selectors:
        if not remaining:
            return []
        if isinstance(selector, Logic) and selector.op == "$and":
            remaining = _remaining_required(list(selector.args), remaining)
        elif isinstance(selector, Logic) and selector.op == "$or":
            # Each branch must cover a field for it to be required.
            left: set[tuple[str, ...]] = set()
            for arg in selector.args:
                left.update(_remaining_required([arg], remaining))
            remaining = sorted(left)
        elif isinstance(selector, FieldMatch) and selector.cond != Cond(
            "$exists", False
        ):
            remaining = [path for path in remaining if path != selector.path]
    return remaining


def is_constant_field(selector: Selector, name: str) -> bool:
    """Is the field fixed by an ``$eq`` seen through ``$and``?"""
    path = parse_field(name)

    def constant(sel: Selector) -> bool:
        if isinstance(sel, Logic) and sel.op == "$and":
            return any(constant(arg) for arg in sel.args)
        return isinstance(sel, FieldMatch) and sel.path == path and sel.cond.op == "$eq"

    return constant(selector)


_INDEXABLE_OPS = ("$lt", "$lte", "$eq", "$gt", "$gte", "$beginsWith", "$exists")


def _indexable_paths(selector: Selector) -> list[tuple[str, ...]]:
    if isinstance(selector, Logic):
        if selector.op != "$and":
            return []
        return sorted({p for arg in selector.args for p in _indexable_paths(arg)})
    if isinstance(selector, FieldMatch) and selector.cond.op in _INDEXABLE_OPS:
        return [selector.path]
    return []


def indexable_fields(selector: Selector) -> list[str]:
    """Fields an index range could restrict (conditions under ``$and``)."""
    return [join_field(path) for path in _indexable_paths(selector)]


# Range bounds: a value, or one of these sentinels below / above everything.
_MIN, _MAX = _Missing("MIN"), _Missing("MAX")
EMPTY_RANGE = None
Range = tuple[str, Any, str, Any]  # (low op, low, high op, high)


def _range_compare(a: Any, b: Any) -> int:
    if a is b and a in (_MIN, _MAX):
        return 0
    if a is _MIN or b is _MAX:
        return -1
    if a is _MAX or b is _MIN:
        return 1
    return compare(a, b)


def field_ranges(selector: Selector) -> list[tuple[str, Range | None]]:
    """For each indexable field, the range its conditions allow (CouchDB's
    planner input); stops at the first field whose range is empty."""
    ranges: list[tuple[str, Range | None]] = []
    for path in _indexable_paths(selector):
        bounds = _narrow(selector, path, ("$gt", _MIN, "$lt", _MAX))
        if bounds is EMPTY_RANGE:
            return [(join_field(path), EMPTY_RANGE)]
        ranges.append((join_field(path), bounds))
    return ranges


def _narrow(
    selector: Selector, path: tuple[str, ...], bounds: Range | None
) -> Range | None:
    if bounds is EMPTY_RANGE:
        return EMPTY_RANGE
    if isinstance(selector, Logic) and selector.op == "$and":
        for arg in selector.args:
            bounds = _narrow(arg, path, bounds)
        return bounds
    if isinstance(selector, FieldMatch) and selector.path == path:
        return _narrow_cond(selector.cond, bounds)
    return bounds


def _range_position(low: Any, value: Any, high: Any) -> str:
    if (c := _range_compare(value, low)) < 0:
        return "min"
    if c == 0:
        return "low"
    c = _range_compare(value, high)
    return "mid" if c < 0 else "high" if c == 0 else "max"


def _narrow_cond(cond: Cond, bounds: Range) -> Range | None:
    low_op, low, high_op, high = bounds
    op, arg = cond.op, cond.arg
    if op == "$beginsWith":
        low_bounds = _narrow_cond(Cond("$gte", arg), bounds)
        return (
            None
            if low_bounds is None
            else _narrow_cond(Cond("$lte", arg + "\uffff"), low_bounds)
        )
    if op not in ("$lt", "$lte", "$eq", "$gte", "$gt"):
        return bounds  # filtered after the index scan
    position = _range_position(low, arg, high)
    equal = ("$eq", arg, "$eq", arg)
    if op == "$lt":
        return {"min": None, "low": None, "max": bounds}.get(
            position, (low_op, low, "$lt", arg)
        )
    if op == "$lte":
        if position == "low":
            return equal if low_op in ("$gte", "$eq") else None
        return {"min": None, "mid": (low_op, low, "$lte", arg)}.get(position, bounds)
    if op == "$eq":
        if position == "low":
            return equal if low_op in ("$gte", "$eq") else None
        if position == "high":
            return equal if high_op in ("$lte", "$eq") else None
        return equal if position == "mid" else None
    if op == "$gte":
        if position == "high":
            return equal if high_op in ("$lte", "$eq") else None
        return {"mid": ("$gte", arg, high_op, high), "max": None}.get(position, bounds)
    # $gt
    return {"min": bounds, "high": None, "max": None}.get(
        position, ("$gt", arg, high_op, high)
    )


def is_usable(index: MangoIndex, selector: Selector, sort_fields: list[str]) -> bool:
    """CouchDB's test of whether an index can serve a query."""
    if index.is_special:
        if not sort_fields:
            return True
        return "_id" in indexable_fields(selector) and sort_fields == ["_id"]
    columns = index.columns
    required = set(columns) - set(sort_fields) - {"_id", "_rev"}
    return has_required_fields(selector, sorted(required)) and _can_use_sort(
        columns, sort_fields, selector
    )


def _can_use_sort(
    columns: list[str], sort_fields: list[str], selector: Selector
) -> bool:
    if not sort_fields:
        return True
    if not columns:
        return False
    if columns[0] == sort_fields[0]:
        return columns[: len(sort_fields)] == sort_fields
    if is_constant_field(selector, columns[0]):
        return _can_use_sort(columns[1:], sort_fields, selector)
    return False


@dataclass
class QueryPlan:
    index: MangoIndex
    warnings: list[str]
    nothing_to_run: bool = False  # the selector can match nothing at all


def _filter_by_use_index(
    indexes: list[MangoIndex], use_index: list[str]
) -> list[MangoIndex]:
    if not use_index:
        return []
    ddoc = design_doc_id(use_index[0])
    return [
        index
        for index in indexes
        if index.ddoc == ddoc and (len(use_index) == 1 or index.name == use_index[1])
    ]


def plan_query(indexes: list[MangoIndex], query: FindQuery) -> QueryPlan:
    """Choose the index for a query as CouchDB 3.x does (``indexes``: the
    JSON indexes of the database; ``_all_docs`` is always a candidate)."""
    selector, use_index = query.selector, query.use_index
    every = [ALL_DOCS_INDEX, *indexes]
    # Partial indexes only when asked for: they may not hold every match.
    candidates = [i for i in every if i.partial_filter is None]
    candidates += [
        i for i in _filter_by_use_index(every, use_index) if i not in candidates
    ]
    sort_fields = [name for name, _ in query.sort]
    usable = [i for i in candidates if is_usable(i, selector, sort_fields)]
    if not usable:
        raise StorageError(
            "No index exists for this sort, try indexing by the sort fields.",
            status=400,
            code="no_usable_index",
        )
    chosen = _filter_by_use_index(usable, use_index)
    if not chosen:
        if not (query.allow_fallback or (not use_index and len(usable) > 1)):
            raise _invalid_index_error(use_index)
        chosen = usable
    json_indexes = [i for i in chosen if not i.is_special]
    index = _best_index(json_indexes, selector) if json_indexes else ALL_DOCS_INDEX
    warnings = []
    if use_index and index not in _filter_by_use_index([index], use_index):
        warnings.append(_unused_index_warning(use_index))
    if index.is_special:
        warnings.append(NO_INDEX_WARNING)
    noop = (
        isinstance(selector, Logic)
        and selector.op in ("$and", "$or")
        and not selector.args
    )
    return QueryPlan(index, warnings, nothing_to_run=noop)


def _best_index(indexes: list[MangoIndex], selector: Selector) -> MangoIndex:
    ranges = dict(field_ranges(selector))

    def rank(index: MangoIndex) -> tuple[int, int, str, str]:
        prefix = 0
        for column in index.columns:
            if column not in ranges:
                break
            prefix += 1
        # Closest to the selector's fields, then fewest columns, then by name.
        return len(ranges) - prefix, len(index.columns), index.ddoc or "", index.name

    return min(indexes, key=rank)


def _invalid_index_error(use_index: list[str]) -> InvalidRequest:
    if not use_index:
        return mango_error(
            "invalid_index", "You must specify an index with the `use_index` parameter."
        )
    target = f"_design/{use_index[0]}" + (
        f", {use_index[1]}" if len(use_index) > 1 else ""
    )
    return mango_error(
        "invalid_index",
        f"{target} specified by `use_index` could not be found or it is not suitable.",
    )


def _unused_index_warning(use_index: list[str]) -> str:
    if len(use_index) == 1:
        return (
            f"_design/{use_index[0]} was not used because it does not contain a "
            "valid index for this query."
        )
    return (
        f"_design/{use_index[0]}, {use_index[1]} was not used because it is not a "
        "valid index for this query."
    )


def scan_warning(docs_examined: int, results: int) -> str | None:
    """CouchDB's warning when a query reads many documents per result."""
    ratio = docs_examined / results if results else docs_examined
    return INDEX_SCAN_WARNING if ratio > _INDEX_SCAN_RATIO else None
