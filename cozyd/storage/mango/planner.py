"""JSON indexes as CouchDB stores them in ``language: "query"`` design
documents, ``_find`` request validation, and the index choice of CouchDB's
query planner."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cozyd.storage.interface import InvalidRequest, StorageError
from cozyd.storage.mango.collation import compare
from cozyd.storage.mango.common import Doc, _json, mango_error
from cozyd.storage.mango.selectors import (
    MATCH_ALL,
    Cond,
    FieldMatch,
    Logic,
    Selector,
    _is_integer,
    _Missing,
    join_field,
    normalize,
    parse_field,
    selector_to_json,
)

DEFAULT_FIND_LIMIT = 25
NO_INDEX_WARNING = "No matching index found, create an index to optimize query time."
INDEX_SCAN_WARNING = (
    "The number of documents examined is high in proportion to the number of "
    "results returned. Consider adding a more specific index to improve this."
)
_INDEX_SCAN_RATIO = 10


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
            raise mango_error("invalid_sort_field", f"Invalid sort field: {_json(spec)}")
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
        definition: Doc = {"fields": [{name: direction} for name, direction in self.fields]}
        if self.is_special:
            return {
                "ddoc": None,
                "name": self.name,
                "type": "special",
                "def": definition,
            }
        if self.partial_filter is not None:
            definition["partial_filter_selector"] = selector_to_json(self.partial_filter)
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
    if not isinstance(definition, dict) or not isinstance(definition.get("fields"), dict):
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
        elif isinstance(selector, FieldMatch) and selector.cond != Cond("$exists", False):
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


def _can_use_sort(columns: list[str], sort_fields: list[str], selector: Selector) -> bool:
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
    candidates += [i for i in _filter_by_use_index(every, use_index) if i not in candidates]
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
        isinstance(selector, Logic) and selector.op in ("$and", "$or") and not selector.args
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
    target = f"_design/{use_index[0]}" + (f", {use_index[1]}" if len(use_index) > 1 else "")
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
