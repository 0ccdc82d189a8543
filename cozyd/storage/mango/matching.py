"""Evaluation of a normalized selector against a document, operator by
operator as CouchDB 3.x does; it has the last word on every match."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cozyd.storage.mango.collation import _same_term, compare, json_type
from cozyd.storage.mango.regex import _compiled_regex
from cozyd.storage.mango.selectors import (
    BAD_PATH,
    NOT_FOUND,
    Cond,
    Logic,
    MatchAll,
    Selector,
    _is_integer,
    get_field,
)


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
