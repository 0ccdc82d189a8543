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

The modules, in that order: ``collation``; ``selectors`` (paths,
validation, normalization) with ``regex`` (``$regex`` on RE2, linear in
the text); ``matching`` (the Python evaluation); ``sql`` (the SQLite
compiler and functions); ``planner`` (indexes, ``_find`` queries, the
index choice). Every public name is importable from this package.
"""

from __future__ import annotations

from cozyd.storage.mango.common import (
    Doc,
    mango_error,
)
from cozyd.storage.mango.collation import (
    collation_key,
    compare,
    json_type,
    string_key,
)
from cozyd.storage.mango.selectors import (
    BAD_PATH,
    Cond,
    FieldMatch,
    get_field,
    join_field,
    Logic,
    MATCH_ALL,
    MatchAll,
    normalize,
    NOT_FOUND,
    parse_field,
    project,
    Selector,
    selector_to_json,
    set_field,
)
from cozyd.storage.mango.matching import (
    matches,
)
from cozyd.storage.mango.sql import (
    compile_sql,
    register_sql_functions,
    SQL_FALSE,
    sql_literal,
    SQL_TRUE,
    SqlCondition,
    SqlDocument,
    SqlField,
)
from cozyd.storage.mango.planner import (
    ALL_DOCS_INDEX,
    DEFAULT_FIND_LIMIT,
    design_doc_id,
    EMPTY_RANGE,
    field_ranges,
    FindQuery,
    generated_index_name,
    has_required_fields,
    INDEX_SCAN_WARNING,
    index_view,
    indexable_fields,
    indexes_of_design_doc,
    is_constant_field,
    is_usable,
    MangoIndex,
    MAX_INDEX_FIELDS,
    NO_INDEX_WARNING,
    parse_find_query,
    parse_sort,
    plan_query,
    QueryPlan,
    Range,
    scan_warning,
)

__all__ = [
    "Doc",
    "mango_error",
    "collation_key",
    "compare",
    "json_type",
    "string_key",
    "BAD_PATH",
    "Cond",
    "FieldMatch",
    "get_field",
    "join_field",
    "Logic",
    "MATCH_ALL",
    "MatchAll",
    "normalize",
    "NOT_FOUND",
    "parse_field",
    "project",
    "Selector",
    "selector_to_json",
    "set_field",
    "matches",
    "compile_sql",
    "register_sql_functions",
    "SQL_FALSE",
    "sql_literal",
    "SQL_TRUE",
    "SqlCondition",
    "SqlDocument",
    "SqlField",
    "ALL_DOCS_INDEX",
    "DEFAULT_FIND_LIMIT",
    "design_doc_id",
    "EMPTY_RANGE",
    "field_ranges",
    "FindQuery",
    "generated_index_name",
    "has_required_fields",
    "INDEX_SCAN_WARNING",
    "index_view",
    "indexable_fields",
    "indexes_of_design_doc",
    "is_constant_field",
    "is_usable",
    "MangoIndex",
    "MAX_INDEX_FIELDS",
    "NO_INDEX_WARNING",
    "parse_find_query",
    "parse_sort",
    "plan_query",
    "QueryPlan",
    "Range",
    "scan_warning",
]
