"""Mango selectors: field paths, validation (``InvalidRequest`` with
CouchDB's error names) and the normalized form CouchDB rewrites them into."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cozyd.storage.interface import InvalidRequest
from cozyd.storage.mango.common import Doc, _json, mango_error
from cozyd.storage.mango.regex import _check_regex


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
        raise mango_error("invalid_selector", "Selector is nested too deeply.") from None
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
