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

from cozyd.storage.mango.collation import (
    collation_key,
    compare,
    json_type,
    string_key,
)
from cozyd.storage.mango.common import (
    Doc,
    mango_error,
)
from cozyd.storage.mango.matching import (
    matches,
)
from cozyd.storage.mango.planner import (
    ALL_DOCS_INDEX,
    DEFAULT_FIND_LIMIT,
    EMPTY_RANGE,
    INDEX_SCAN_WARNING,
    MAX_INDEX_FIELDS,
    NO_INDEX_WARNING,
    FindQuery,
    MangoIndex,
    QueryPlan,
    Range,
    design_doc_id,
    field_ranges,
    generated_index_name,
    has_required_fields,
    index_view,
    indexable_fields,
    indexes_of_design_doc,
    is_constant_field,
    is_usable,
    parse_find_query,
    parse_sort,
    plan_query,
    scan_warning,
)
from cozyd.storage.mango.selectors import (
    BAD_PATH,
    MATCH_ALL,
    NOT_FOUND,
    Cond,
    FieldMatch,
    Logic,
    MatchAll,
    Selector,
    get_field,
    join_field,
    normalize,
    parse_field,
    project,
    selector_to_json,
    set_field,
)
from cozyd.storage.mango.sql import (
    SQL_FALSE,
    SQL_TRUE,
    SqlCondition,
    SqlDocument,
    SqlField,
    compile_sql,
    register_sql_functions,
    sql_literal,
)

__all__ = [
    "ALL_DOCS_INDEX",
    "BAD_PATH",
    "DEFAULT_FIND_LIMIT",
    "EMPTY_RANGE",
    "INDEX_SCAN_WARNING",
    "MATCH_ALL",
    "MAX_INDEX_FIELDS",
    "NOT_FOUND",
    "NO_INDEX_WARNING",
    "SQL_FALSE",
    "SQL_TRUE",
    "Cond",
    "Doc",
    "FieldMatch",
    "FindQuery",
    "Logic",
    "MangoIndex",
    "MatchAll",
    "QueryPlan",
    "Range",
    "Selector",
    "SqlCondition",
    "SqlDocument",
    "SqlField",
    "collation_key",
    "compare",
    "compile_sql",
    "design_doc_id",
    "field_ranges",
    "generated_index_name",
    "get_field",
    "has_required_fields",
    "index_view",
    "indexable_fields",
    "indexes_of_design_doc",
    "is_constant_field",
    "is_usable",
    "join_field",
    "json_type",
    "mango_error",
    "matches",
    "normalize",
    "parse_field",
    "parse_find_query",
    "parse_sort",
    "plan_query",
    "project",
    "register_sql_functions",
    "scan_warning",
    "selector_to_json",
    "set_field",
    "sql_literal",
    "string_key",
]
