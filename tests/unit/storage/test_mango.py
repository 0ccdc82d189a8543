"""Mango: collation, selectors, SQL compilation and the query planner."""

from __future__ import annotations

import functools
import itertools
import json
import random
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cozyd.storage import mango
from cozyd.storage.interface import InvalidRequest, StorageError
from cozyd.storage.mango import (
    Cond,
    FieldMatch,
    Logic,
    MangoIndex,
    collation_key,
    compare,
    matches,
    normalize,
)

# =============================================================================
# Collation
# =============================================================================
# CouchDB's documented collation sequence (views collation specification).
COUCHDB_ORDER = [
    None,
    False,
    True,
    -1e300,
    -1,
    -0.5,
    0,
    0.5,
    1,
    2,
    3.0,
    4,
    2**70,
    "",
    " ",
    "_",
    "-",
    ",",
    "!",
    "?",
    ".",
    "(",
    "@",
    "*",
    "/",
    "&",
    "#",
    "%",
    "+",
    "<",
    "=",
    "|",
    "~",
    "$",
    "0",
    "1",
    "9",
    "a",
    "A",
    "aa",
    "b",
    "B",
    "ba",
    "bb",
    "é",
    "z",
    "\ufff0",
    "\uffff",
    [],
    ["a"],
    ["b"],
    ["b", "c"],
    ["b", "c", "a"],
    ["b", "d"],
    ["b", "d", "e"],
    {},
    {"a": 1},
    {"a": 2},
    {"b": 1},
    {"b": 2},
    {"b": 2, "a": 1},
    {"b": 2, "c": 2},
]


def shuffled(values):
    return random.Random(7).sample(values, len(values))


def test_couchdb_collation_order():
    assert sorted(shuffled(COUCHDB_ORDER), key=collation_key) == COUCHDB_ORDER
    for lower, higher in itertools.pairwise(COUCHDB_ORDER):
        assert compare(lower, higher) == -1 and compare(higher, lower) == 1


def test_icu_like_string_order():
    # The examples of CouchDB's documentation on key ranges.
    words = ["abc", "Abc", "ABC", "abc1", "AbcZZZZZ"]
    assert sorted(shuffled(words), key=collation_key) == words
    # Accents count after letters, case after accents.
    words = ["resume", "Resume", "résumé", "resumes"]
    assert sorted(shuffled(words), key=collation_key) == words
    assert compare("abc\uffff", "abd") < 0 < compare("abc\uffff", "abcz")
    assert compare("straße", "strasse") > 0 and compare("straße", "strasset") < 0


def test_equal_keys_mean_equal_values():
    assert compare(1, 1.0) == 0 and collation_key(1) == collation_key(1.0)
    assert compare(0.0, -0.0) == 0
    assert compare("a", "a") == 0 and compare("a", "A") != 0


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


@given(json_values, json_values)
def test_compare_agrees_with_collation_keys(a, b):
    ka, kb = collation_key(a), collation_key(b)
    assert compare(a, b) == (ka > kb) - (ka < kb)
    assert compare(a, b) == -compare(b, a)


@given(st.lists(json_values, max_size=6))
def test_collation_keys_sort_like_compare(values):
    ordered = sorted(values, key=collation_key)
    for lower, higher in itertools.pairwise(ordered):
        assert compare(lower, higher) <= 0


# =============================================================================
# Normalization
# =============================================================================
def field(path, op, arg):
    return FieldMatch(tuple(path.split(".")), Cond(op, arg))


@pytest.mark.parametrize(
    ("selector", "normalized"),
    [
        ({"a": 1}, field("a", "$eq", 1)),
        (
            {"a": 1, "b": {"$gt": 2}},
            Logic("$and", (field("a", "$eq", 1), field("b", "$gt", 2))),
        ),
        ({"a": {"b": {"c": None}}}, field("a.b.c", "$eq", None)),
        (
            {"a": {"$gt": 1, "$lt": 5}},
            Logic("$and", (field("a", "$gt", 1), field("a", "$lt", 5))),
        ),
        ({"a": {}}, field("a", "$eq", {})),
        ({"a": [1, 2]}, field("a", "$eq", [1, 2])),
        # Negations go down to the conditions.
        ({"$not": {"a": {"$gt": 1}}}, field("a", "$lte", 1)),
        ({"a": {"$not": {"$in": [1]}}}, field("a", "$nin", [1])),
        (
            {"$not": {"$and": [{"a": 1}, {"b": {"$exists": True}}]}},
            Logic("$or", (field("a", "$ne", 1), field("b", "$exists", False))),
        ),
        (
            {"$nor": [{"a": 1}, {"b": 2}]},
            Logic("$and", (field("a", "$ne", 1), field("b", "$ne", 2))),
        ),
        ({"$not": {"$not": {"a": 1}}}, field("a", "$eq", 1)),
        (
            {"a": {"$not": {"$regex": "x"}}},
            FieldMatch(("a",), Cond("$not", Cond("$regex", "x"))),
        ),
        ({"a\\.b.c": 1}, FieldMatch(("a.b", "c"), Cond("$eq", 1))),
        (
            {"a": {"$elemMatch": {"$gt": 1}}},
            FieldMatch(("a",), Cond("$elemMatch", FieldMatch((), Cond("$gt", 1)))),
        ),
        (
            {"a": {"$elemMatch": {"b": 1, "c": 2}}},
            FieldMatch(
                ("a",),
                Cond(
                    "$elemMatch",
                    Logic("$and", (field("b", "$eq", 1), field("c", "$eq", 2))),
                ),
            ),
        ),
        ({}, mango.MATCH_ALL),
    ],
)
def test_normalize(selector, normalized):
    assert normalize(selector) == normalized


@pytest.mark.parametrize(
    ("selector", "code"),
    [
        ({"a": {"$foo": 1}}, "invalid_operator"),
        ({"a": {"$where": "x"}}, "not_supported"),
        ({"$and": {"a": 1}}, "bad_arg"),
        ({"a": {"$in": 1}}, "bad_arg"),
        ({"a": {"$exists": 1}}, "bad_arg"),
        ({"a": {"$size": -1}}, "bad_arg"),
        ({"a": {"$size": True}}, "bad_arg"),
        ({"a": {"$mod": [0, 1]}}, "bad_arg"),
        ({"a": {"$mod": [2]}}, "bad_arg"),
        ({"a": {"$regex": "("}}, "bad_arg"),
        ({"a": {"$type": 1}}, "bad_arg"),
        ({"a": {"$elemMatch": []}}, "bad_arg"),
        ({"$eq": 1}, "invalid_selector"),
        ({"a..b": 1}, "invalid_field_name"),
        ([], "invalid_selector_json"),
    ],
)
def test_normalize_refuses(selector, code):
    with pytest.raises(InvalidRequest) as caught:
        normalize(selector)
    assert caught.value.code == code and caught.value.status == 400


def test_a_selector_nested_too_deeply_is_refused():
    selector = {"a": 1}
    for _ in range(5000):
        selector = {"$and": [selector]}
    with pytest.raises(InvalidRequest):
        normalize(selector)


def test_selector_to_json():
    normalized = normalize({"a": 1, "b": {"c": {"$gt": 2}}, "$not": {"d": {"$regex": "x"}}})
    assert mango.selector_to_json(normalized) == {
        "$and": [
            {"a": {"$eq": 1}},
            {"b.c": {"$gt": 2}},
            {"d": {"$not": {"$regex": "x"}}},
        ]
    }
    assert normalize(mango.selector_to_json(normalized)) == normalized


# =============================================================================
# Matching (CouchDB 3.x semantics)
# =============================================================================
DOC = {
    "_id": "doc",
    "_rev": "1-x",
    "n": 5,
    "neg": -7,
    "f": 2.5,
    "s": "Hello",
    "t": True,
    "z": None,
    "arr": [1, 2, 3],
    "strs": ["a", "b"],
    "empty": [],
    "objs": [{"k": 1}, {"k": 2}],
    "obj": {"x": 1, "y": {"z": "deep"}},
    "nested": [[1, 2]],
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"n": 5}, True),
        ({"n": 5.0}, True),
        ({"n": "5"}, False),
        ({"n": {"$ne": 4}}, True),
        ({"missing": {"$ne": 1}}, False),  # absent fields match nothing…
        ({"missing": {"$exists": False}}, True),  # …but $exists: false
        ({"missing": {"$nin": [1]}}, False),
        ({"$not": {"missing": 1}}, False),
        ({"n.deeper": {"$exists": False}}, False),  # a path through a number: no match
        ({"obj.y.z": "deep"}, True),
        ({"obj": {"y": {"z": "deep"}}}, True),
        ({"obj": {"x": 1, "y": {"z": "deep"}}}, True),
        ({"arr.1": 2}, True),
        ({"arr.3": {"$exists": False}}, False),
        ({"objs.1.k": 2}, True),
        ({"z": None}, True),
        ({"z": {"$exists": True}}, True),
        ({"z": {"$lt": False}}, True),
        ({"t": {"$gt": None}}, True),
        ({"s": {"$gt": 100}}, True),
        ({"arr": {"$gt": "zzz"}}, True),
        ({"arr": [1, 2, 3]}, True),
        ({"arr": 2}, False),
        ({"arr": {"$in": [2]}}, True),
        ({"arr": {"$in": [9]}}, False),
        ({"arr": {"$nin": [9]}}, True),
        ({"arr": {"$nin": [2]}}, False),
        ({"n": {"$in": []}}, False),
        ({"n": {"$nin": []}}, True),
        ({"arr": {"$all": [3, 1]}}, True),
        ({"arr": {"$all": [1, 4]}}, False),
        ({"arr": {"$all": []}}, False),
        ({"arr": {"$all": [1.0]}}, False),  # exact terms
        ({"nested": {"$all": [[1, 2]]}}, True),
        ({"n": {"$all": [5]}}, False),
        ({"arr": {"$size": 3}}, True),
        ({"empty": {"$size": 0}}, True),
        ({"s": {"$size": 5}}, False),
        ({"neg": {"$mod": [3, -1]}}, True),
        ({"n": {"$mod": [2, 1]}}, True),
        ({"f": {"$mod": [2, 0]}}, False),
        ({"s": {"$regex": "^H.l"}}, True),
        ({"s": {"$regex": "^h"}}, False),
        ({"n": {"$regex": "5"}}, False),
        ({"s": {"$beginsWith": "He"}}, True),
        ({"s": {"$beginsWith": "he"}}, False),
        ({"n": {"$type": "number"}}, True),
        ({"t": {"$type": "boolean"}}, True),
        ({"z": {"$type": "null"}}, True),
        ({"obj": {"$type": "object"}}, True),
        ({"arr": {"$type": "array"}}, True),
        ({"s": {"$type": "string"}}, True),
        ({"objs": {"$elemMatch": {"k": 2}}}, True),
        ({"objs": {"$elemMatch": {"k": 3}}}, False),
        ({"arr": {"$elemMatch": {"$gt": 2, "$lt": 4}}}, True),
        ({"n": {"$elemMatch": {}}}, False),
        ({"arr": {"$allMatch": {"$gt": 0}}}, True),
        ({"arr": {"$allMatch": {"$gt": 1}}}, False),
        ({"empty": {"$allMatch": {"$gt": 0}}}, False),
        ({"obj": {"$keyMapMatch": {"$eq": "y"}}}, True),
        ({"obj": {"$keyMapMatch": {"$eq": "w"}}}, False),
        ({"$or": []}, True),
        ({"$and": []}, True),
        ({"$or": [{"n": 1}, {"t": True}]}, True),
        ({"$nor": [{"n": 1}, {"t": False}]}, True),
        ({"_id": "doc"}, True),
        ({"_id": {"$gt": "a"}}, True),
        ({"_rev": {"$regex": "^1-"}}, True),
        ({"n": {"$not": {"$mod": [2, 0]}}}, True),
        ({"objs": {"$elemMatch": {"$not": {"k": 1}}}}, True),
    ],
)
def test_matches(selector, expected):
    assert matches(normalize(selector), DOC) is expected


# =============================================================================
# SQL compilation agrees with the Python evaluation
# =============================================================================
small_strings = st.sampled_from(["", "a", "A", "b", "ab", "é", "a b", "1"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0]),
    small_strings,
)
field_names = st.sampled_from(["a", "b", "c", "0"])


def json_of(leaves):
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(field_names, children, max_size=2)
        ),
        max_leaves=5,
    )


values = json_of(scalars)
paths = st.sampled_from(
    [
        "a",
        "b",
        "a",
        "b",
        "a.b",
        "a.a",
        "b.0",
        "a.0.b",
        "_id",
        "_rev",
        "_conflicts",
        "_other",
        "c\\.d",
    ]
)

OPERAND_STRATEGIES = {
    "$eq": values,
    "$ne": values,
    "$gt": values,
    "$gte": values,
    "$lt": values,
    "$lte": values,
    "$in": st.lists(values, max_size=3),
    "$nin": st.lists(values, max_size=3),
    "$exists": st.booleans(),
    "$type": st.sampled_from(["null", "boolean", "number", "string", "array", "object"]),
    "$size": st.integers(0, 3),
    "$mod": st.tuples(st.integers(1, 3), st.integers(-2, 2)).map(list),
    "$regex": st.sampled_from(["^a", "b$", "."]),
    "$all": st.lists(scalars, max_size=2),
    "$beginsWith": small_strings,
}


simple_conditions = st.sampled_from(sorted(OPERAND_STRATEGIES)).flatmap(
    lambda op: OPERAND_STRATEGIES[op].map(lambda arg: {op: arg})
)
conditions = st.one_of(
    simple_conditions,
    simple_conditions,
    scalars,
    values,
    simple_conditions.map(lambda c: {"$not": c}),
    simple_conditions.map(lambda c: {"$elemMatch": c}),
)
single_selectors = st.builds(lambda p, c: {p: c}, paths, conditions)
selectors = st.recursive(
    single_selectors,
    lambda children: st.one_of(
        st.builds(
            lambda op, items: {op: items},
            st.sampled_from(["$and", "$or", "$nor"]),
            st.lists(children, max_size=3),
        ),
        st.builds(lambda c: {"$not": c}, children),
    ),
    max_leaves=3,
)


def operands(selector):
    """Every value a selector compares with: documents made of them meet
    its conditions' edges (equal values, arrays holding an operand…)."""
    found = []

    def walk(node):
        for key, value in node.items():
            if key in ("$and", "$or", "$nor"):
                for item in value:
                    walk(item)
            elif key in ("$not", "$elemMatch"):
                walk(value)
            elif key.startswith("$"):
                found.append(value)
                if isinstance(value, list):
                    found.extend(value)
            elif (
                isinstance(value, dict) and value and all(k.startswith("$") for k in value)
            ):
                walk(value)
            else:  # an implicit $eq, or nested fields
                found.append(value)
                if isinstance(value, dict):
                    walk(value)

    walk(selector)
    return found


def stored_row(number, body):
    """The row the embedded engine stores: the body holds no _ fields."""
    conflicts = ["1-x"] if number % 2 else None
    return (
        f"id{number}",
        f"1-r{number}",
        json.dumps(body),
        json.dumps(conflicts) if conflicts else None,
    )


def mango_doc(row):
    doc_id, rev, body, conflicts = row
    doc = {"_id": doc_id, "_rev": rev, **json.loads(body)}
    if conflicts:
        doc["_conflicts"] = json.loads(conflicts)
    return doc


@functools.lru_cache(maxsize=1)
def connection():
    conn = sqlite3.connect(":memory:")
    mango.register_sql_functions(conn)
    conn.execute("CREATE TABLE docs (id TEXT, rev TEXT, body TEXT, conflicts TEXT)")
    return conn


def check_sql_agrees_with_python(data, selector):
    try:
        normalized = normalize(selector)
    except InvalidRequest:
        return
    mentioned = st.sampled_from(operands(selector) or [None])
    near = st.one_of(mentioned, scalars)
    related = st.one_of(
        mentioned,
        mentioned,
        st.lists(near, max_size=3),
        st.dictionaries(field_names, near, max_size=3),
        json_of(near),
    )
    bodies = data.draw(
        st.lists(st.dictionaries(field_names, related, max_size=4), min_size=1, max_size=8),
        label="bodies",
    )
    conn = connection()
    rows = [stored_row(n, body) for n, body in enumerate(bodies)]
    conn.execute("DELETE FROM docs")
    conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", rows)
    condition = mango.compile_sql(normalized, mango.SqlDocument(conflicts="conflicts"))
    in_sql = {
        doc_id
        for (doc_id,) in conn.execute(
            f"SELECT id FROM docs WHERE {condition.sql}", condition.params
        )
    }
    in_python = {row[0] for row in rows if matches(normalized, mango_doc(row))}
    assert in_python <= in_sql  # SQL never drops a match
    if condition.exact:
        assert in_sql == in_python


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_sql_agrees_with_python_on_conditions(data):
    check_sql_agrees_with_python(data, data.draw(single_selectors, label="selector"))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_sql_agrees_with_python_on_combinations(data):
    check_sql_agrees_with_python(data, data.draw(selectors, label="selector"))


VALUE_POOL = [
    None,
    True,
    False,
    -1,
    0,
    0.5,
    2,
    2.0,
    "",
    "a",
    "A",
    "b",
    "é",
    "ab",
    [],
    [1],
    ["a", 2],
    [[1]],
    [None, "b"],
    {},
    {"a": 1},
    {"b": None},
]


def exhaustive_conditions():
    for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
        for value in VALUE_POOL:
            yield {op: value}
    for values in ([], [1], ["a", None], [[1]], [2.0, "b", {}]):
        yield {"$in": values}
        yield {"$nin": values}
    for name in ("null", "boolean", "number", "string", "array", "object"):
        yield {"$type": name}
    for n in (0, 1, 2):
        yield {"$size": n}
    yield from (
        {"$exists": True},
        {"$exists": False},
        {"$mod": [2, 0]},
        {"$mod": [3, -1]},
        {"$beginsWith": "a"},
        {"$beginsWith": ""},
        {"$regex": "^a"},
        {"$all": [1]},
        {"$elemMatch": {"$gt": 0}},
    )


@pytest.mark.parametrize("path", ["a", "a.b", "a.0", "_id", "_conflicts"])
def test_every_operator_agrees_with_python_on_every_value(path):
    bodies = (
        [{}]
        + [{"a": value} for value in VALUE_POOL]
        + [{"a": {"b": value}} for value in VALUE_POOL]
        + [{"a": [value]} for value in VALUE_POOL]
    )
    rows = [stored_row(n, body) for n, body in enumerate(bodies)]
    conn = connection()
    conn.execute("DELETE FROM docs")
    conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", rows)
    document = mango.SqlDocument(conflicts="conflicts")
    for condition in exhaustive_conditions():
        for selector in ({path: condition}, {path: {"$not": condition}}):
            normalized = normalize(selector)
            compiled = mango.compile_sql(normalized, document)
            in_sql = {
                doc_id
                for (doc_id,) in conn.execute(
                    f"SELECT id FROM docs WHERE {compiled.sql}", compiled.params
                )
            }
            in_python = {row[0] for row in rows if matches(normalized, mango_doc(row))}
            assert in_python <= in_sql, selector
            if compiled.exact:
                assert in_sql == in_python, selector


@pytest.mark.parametrize(
    "selector",
    [
        {"a": 1},
        {"a": {"$gt": "x"}},
        {"a": {"$in": [1, 2]}},
        {"a": {"$exists": False}},
        {"a.b": {"$size": 2}},
        {"$or": [{"a": 1}, {"b": {"$type": "string"}}]},
        {"a": {"$nin": ["x"]}},
        {"a": {"$mod": [2, 1]}},
        {"a": {"$beginsWith": "x"}},
        {"a.0": 1},
        {"_id": {"$lt": "m"}},
        {"a": {"$not": {"$eq": 1}}},
    ],
)
def test_common_operators_compile_exactly(selector):
    assert mango.compile_sql(normalize(selector)).exact


def test_ids_compared_with_other_types_need_no_sql():
    assert mango.compile_sql(normalize({"_id": {"$gt": None}})) == mango.SQL_TRUE
    assert mango.compile_sql(normalize({"_id": {"$lt": 5}})) == mango.SQL_FALSE
    assert mango.compile_sql(normalize({"_id": {"$lt": []}})) == mango.SQL_TRUE


@pytest.mark.parametrize(
    "selector",
    [{"a": {"$regex": "x"}}, {"a": {"$elemMatch": {"b": 1}}}, {"a": {"$all": [1]}}],
)
def test_some_operators_are_left_to_python(selector):
    condition = mango.compile_sql(normalize(selector))
    assert not condition.exact


def test_field_names_cannot_inject_sql():
    condition = mango.compile_sql(normalize({"it's": 1, 'say "hi"': 2}))
    conn = connection()
    conn.execute("DELETE FROM docs")
    conn.execute(
        "INSERT INTO docs VALUES ('x', '1-a', ?, NULL)",
        (json.dumps({"it's": 1, 'say "hi"': 2}),),
    )
    assert conn.execute(
        f"SELECT id FROM docs WHERE {condition.sql}", condition.params
    ).fetchall() == [("x",)]


# =============================================================================
# Requests, indexes and the planner
# =============================================================================
def test_parse_find_query_defaults():
    query = mango.parse_find_query({"selector": {"a": 1}})
    assert (
        query.limit,
        query.skip,
        query.sort,
        query.fields,
        query.use_index,
        query.bookmark,
    ) == (25, 0, [], None, [], None)
    query = mango.parse_find_query(
        {
            "selector": {},
            "use_index": "_design/d/v",
            "r": 1,
            "sort": [{"a": "desc"}],
            "fields": [],
            "bookmark": "nil",
            "stale": "ok",
            "update": True,
            "conflicts": True,
        }
    )
    assert query.use_index == ["d", "v"] and query.descending and query.fields is None
    assert query.bookmark is None and query.conflicts


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"selector": {}, "limit": "1"}, "invalid_non_neg_integer"),
        ({"selector": {}, "skip": -1}, "invalid_non_neg_integer"),
        ({"selector": {}, "sort": "a"}, "invalid_sort_json"),
        ({"selector": {}, "sort": [{"a": "up"}]}, "invalid_sort_dir"),
        ({"selector": {}, "sort": [""]}, "invalid_sort_field"),
        ({"selector": {}, "fields": "a"}, "invalid_fields"),
        ({"selector": {}, "fields": [1]}, "invalid_field"),
        ({"selector": {}, "use_index": "a/b/c"}, "invalid_index_name"),
        ({"selector": {}, "bookmark": 3}, "invalid_bookmark"),
        ({"selector": {}, "execution_stats": "yes"}, "invalid_boolean"),
        ({"selector": 1}, "invalid_selector_json"),
    ],
)
def test_parse_find_query_refuses(query, code):
    with pytest.raises(InvalidRequest) as caught:
        mango.parse_find_query(query)
    assert caught.value.code == code


def test_project():
    doc = {"_id": "x", "a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert mango.project(doc, ["a.b", "l.1", "nope"]) == {"a": {"b": 1}, "l": {"1": 2}}
    assert mango.project(doc, None) is doc


def test_index_view_and_name():
    view = mango.index_view(["a", {"b": "asc"}], {"c": 1})
    assert view == {
        "map": {
            "fields": {"a": "asc", "b": "asc"},
            "partial_filter_selector": {"c": {"$eq": 1}},
        },
        "reduce": "_count",
        "options": {
            "def": {"fields": ["a", {"b": "asc"}], "partial_filter_selector": {"c": 1}}
        },
    }
    name = mango.generated_index_name(view)
    assert len(name) == 40 and name == mango.generated_index_name(
        mango.index_view(["a", "b"], {"c": {"$eq": 1}})
    )
    with pytest.raises(InvalidRequest):
        mango.index_view([])


def test_indexes_of_design_doc_skips_what_does_not_parse():
    body = {
        "language": "query",
        "views": {
            "good": mango.index_view(["a"]),
            "no-map": {"reduce": "_count"},
            "bad-field": {"map": {"fields": {"a..b": "asc"}}},
            "bad-dir": {"map": {"fields": {"a": "up"}}},
        },
    }
    [index] = mango.indexes_of_design_doc("_design/x", body)
    assert (index.ddoc, index.name, index.columns) == ("_design/x", "good", ["a"])
    assert (
        mango.indexes_of_design_doc("_design/x", {**body, "language": "javascript"}) == []
    )


def index(name, *columns, partial=None):
    return MangoIndex(
        f"_design/{name}",
        name,
        tuple((c, "asc") for c in columns),
        normalize(partial) if partial else None,
    )


def plan(indexes, **query):
    return mango.plan_query(indexes, mango.parse_find_query(query))


def test_is_usable():
    by_ab = index("ab", "a", "b")
    assert mango.is_usable(by_ab, normalize({"a": 1, "b": {"$gt": 0}}), [])
    assert not mango.is_usable(by_ab, normalize({"a": 1}), [])  # b might be absent
    assert mango.is_usable(by_ab, normalize({"a": 1}), ["a", "b"])  # sorted: must exist
    assert mango.is_usable(by_ab, normalize({"a": 1}), ["b"])  # a is fixed
    assert not mango.is_usable(by_ab, normalize({"a": {"$gt": 1}}), ["b"])
    assert not mango.is_usable(by_ab, normalize({"a": 1, "b": 1}), ["b", "a"])
    assert not mango.is_usable(by_ab, normalize({"$or": [{"a": 1}, {"b": 1}]}), [])
    assert mango.is_usable(
        by_ab, normalize({"$or": [{"a": 1, "b": 2}, {"a": 2, "b": 3}]}), []
    )
    assert not mango.is_usable(by_ab, normalize({"a": 1, "b": {"$exists": False}}), [])
    assert mango.is_usable(index("id", "_id"), normalize({"x": 1}), [])


def test_plan_prefers_the_closest_index():
    indexes = [index("ab", "a", "b"), index("a", "a"), index("abc", "a", "b", "c")]
    assert plan(indexes, selector={"a": 1}).index.name == "a"
    assert plan(indexes, selector={"a": 1, "b": 2}).index.name == "ab"
    assert plan(indexes, selector={"a": 1, "b": 2, "c": 3}).index.name == "abc"
    # Ties: fewer columns, then by design document and name.
    tied = [index("z", "a"), index("y", "a")]
    assert plan(tied, selector={"a": 1}).index.name == "y"


def test_plan_falls_back_to_all_docs_with_a_warning():
    chosen = plan([index("a", "a")], selector={"b": 1})
    assert chosen.index is mango.ALL_DOCS_INDEX
    assert chosen.warnings == [mango.NO_INDEX_WARNING]


def test_plan_refuses_a_sort_without_index():
    with pytest.raises(StorageError) as caught:
        plan([index("a", "a")], selector={"b": 1}, sort=["b"])
    assert (caught.value.status, caught.value.code) == (400, "no_usable_index")
    assert plan([], selector={"_id": {"$gt": None}}, sort=["_id"]).index.is_special


def test_plan_use_index():
    indexes = [index("a", "a"), index("ab", "a", "b")]
    assert plan(indexes, selector={"a": 1, "b": 1}, use_index="a").index.name == "a"
    assert (
        plan(indexes, selector={"a": 1, "b": 1}, use_index=["ab", "ab"]).index.name == "ab"
    )
    fallback = plan(indexes, selector={"a": 1}, use_index="ab")
    assert fallback.index.name == "a"
    assert fallback.warnings == [
        (
            "_design/ab was not used because it does not contain a valid index for "
            "this query."
        )
    ]
    with pytest.raises(InvalidRequest) as caught:
        plan(indexes, selector={"a": 1}, use_index="ab", allow_fallback=False)
    assert caught.value.code == "invalid_index"


def test_partial_indexes_only_when_asked():
    partial = index("p", "a", partial={"kind": "x"})
    assert plan([partial], selector={"a": 1}).index.is_special
    assert plan([partial], selector={"a": 1}, use_index="p").index is partial


def test_empty_and_or_run_nothing():
    assert plan([], selector={"$or": []}).nothing_to_run
    assert plan([], selector={"$and": []}).nothing_to_run
    assert not plan([], selector={}).nothing_to_run


def test_field_ranges():
    ranges = dict(
        mango.field_ranges(
            normalize({"a": {"$gt": 1, "$lte": 5}, "b": 3, "c": {"$regex": "x"}})
        )
    )
    assert ranges == {"a": ("$gt", 1, "$lte", 5), "b": ("$eq", 3, "$eq", 3)}
    assert mango.field_ranges(normalize({"a": {"$gt": 5, "$lt": 1}})) == [("a", None)]
    assert dict(mango.field_ranges(normalize({"a": {"$beginsWith": "ab"}})))["a"] == (
        "$gte",
        "ab",
        "$lte",
        "ab\uffff",
    )


@pytest.mark.parametrize(
    "path", ["_deleted", "_deleted.a", "_access", "_access.b", "_other"]
)
def test_deleted_and_kept_special_fields_agree_with_python(path):
    # The changes feed shows tombstones (_deleted: true) to selectors, and
    # bodies keep some "_" fields (_access…): SQL must read them as Python.
    bodies = (
        [{}]
        + [{"_access": value} for value in VALUE_POOL]
        + [{"_access": {"b": value}} for value in VALUE_POOL]
    )
    rows = [
        (f"id{n}", f"1-r{n}", json.dumps(body), deleted)
        for n, body in enumerate(bodies)
        for deleted in (0, 1)
    ]
    conn = sqlite3.connect(":memory:")
    mango.register_sql_functions(conn)
    conn.execute("CREATE TABLE docs (id TEXT, rev TEXT, body TEXT, deleted INTEGER)")
    conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", rows)

    def as_doc(row):
        doc_id, rev, body, deleted = row
        doc = {"_id": doc_id, "_rev": rev, **json.loads(body)}
        if deleted:
            doc["_deleted"] = True
        return doc

    document = mango.SqlDocument(deleted="deleted")
    for condition in exhaustive_conditions():
        for selector in ({path: condition}, {path: {"$not": condition}}):
            normalized = normalize(selector)
            compiled = mango.compile_sql(normalized, document)
            in_sql = {
                (doc_id, rev)
                for doc_id, rev in conn.execute(
                    f"SELECT id, deleted FROM docs WHERE {compiled.sql}", compiled.params
                )
            }
            in_python = {
                (row[0], row[3]) for row in rows if matches(normalized, as_doc(row))
            }
            assert in_python <= in_sql, selector
            if compiled.exact:
                assert in_sql == in_python, selector
    assert mango.compile_sql(normalize({"_deleted": True}), document).exact
