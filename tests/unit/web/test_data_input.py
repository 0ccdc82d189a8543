"""Bad input on /data: each gets a 4xx with a JSON body, never a 500, and
nothing is written. Generated documents round-trip; generated Mango
selectors give what a plain Python evaluation of the selector gives."""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cozyd.storage import mango
from cozyd.storage.interface import InvalidRequest
from cozyd.testing import MemoryClient, memory_stack
from tests.support.data import Data, cli_token, events_of, new_instance

SMALL_LIMIT = 4096


@pytest.fixture
def small(tmp_path):
    """A stack whose bodies may not exceed SMALL_LIMIT bytes."""
    stack = memory_stack(str(tmp_path), server={"max_body_size": str(SMALL_LIMIT)})
    admin = MemoryClient(stack.admin)
    new_instance(admin)
    data = Data(MemoryClient(stack.public), cli_token(admin))
    data.put("/io.cozy.events/")
    data.put("/io.cozy.events/existing", {"a": 1})
    return stack, data


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


WRITE_ROUTES = [
    ("POST", "/io.cozy.events/"),
    ("PUT", "/io.cozy.events/some-id"),
    ("PUT", "/io.cozy.events/existing"),
    ("POST", "/io.cozy.events/_bulk_docs"),
    ("POST", "/io.cozy.events/_index"),
    ("POST", "/io.cozy.events/_find"),
    ("POST", "/io.cozy.events/_bulk_get"),
    ("POST", "/io.cozy.events/_revs_diff"),
    ("POST", "/io.cozy.events/_all_docs"),
    ("PUT", "/io.cozy.events/_local/cp"),
    ("POST", "/io.cozy.events/_changes?filter=_selector"),
]

DOCUMENT_ROUTES = (
    "/io.cozy.events/",
    "/io.cozy.events/some-id",
    "/io.cozy.events/_local/cp",
)

BAD_BODIES = {
    "malformed": b'{"a": ',
    "not utf-8": b'{"a": "\xff\xfe"}',
    "nan": b'{"a": NaN}',
    "trailing garbage": b'{"a": 1} x',
    "empty": b"",
    "deep": nested(300),
    "very deep": nested(100_000),
    "too large": b'{"a": "' + b"x" * (SMALL_LIMIT + 10) + b'"}',
    "array": b"[1, 2, 3]",
    "string": b'"text"',
    "null": b"null",
    "wrong types": b'{"docs": "x", "keys": 3, "selector": [], "index": 5, "new_edits": 1}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
@pytest.mark.parametrize("method,path", WRITE_ROUTES)
def test_bad_bodies_are_refused_and_write_nothing(small, method, path, name):
    stack, data = small
    if name == "wrong types" and path in DOCUMENT_ROUTES:
        pytest.skip("any object is a valid document there")
    events = events_of(stack)
    before = data.get("/io.cozy.events/").json()["update_seq"]
    response = data.request(method, path, raw=BAD_BODIES[name])
    assert 400 <= response.status < 500, response.body
    assert isinstance(response.json(), (dict, str))
    if name == "too large":
        assert response.status == 413
    assert data.get("/io.cozy.events/").json()["update_seq"] == before
    assert events == []
    assert data.get("/io.cozy.events/existing").json()["a"] == 1


@pytest.mark.parametrize(
    "doc_id", ["_foo", "_design", "_local", "_all_docs_x", "_changes2"]
)
def test_ids_starting_with_underscore(small, doc_id):
    _, data = small
    for method in ("GET", "PUT", "DELETE"):
        response = data.request(
            method,
            f"/io.cozy.events/{doc_id}",
            {"a": 1},
            params={"rev": "1-abc"} if method == "DELETE" else None,
        )
        assert response.status == 400, (method, response.body)
        assert response.json()["error"] == "bad_id"
    bulk = data.post("/io.cozy.events/_bulk_docs", {"docs": [{"_id": doc_id}]})
    assert bulk.status == 400


@pytest.mark.parametrize(
    "doctype",
    [
        "IO.COZY",
        "io.cozy.",
        ".io",
        "io..cozy",
        "io cozy",
        "io-cozy",
        "io/cozy",
        "ïo.cozy",
        "io.cozy.*",
    ],
)
def test_invalid_doctypes(small, doctype):
    _, data = small
    from urllib.parse import quote

    path = "/" + quote(doctype, safe="")
    for method, suffix, body in (
        ("GET", "/x", None),
        ("POST", "/", {"a": 1}),
        ("POST", "/_find", {"selector": {}}),
        ("GET", "/_changes", None),
        ("PUT", "/", None),
    ):
        response = data.request(method, path + suffix, body)
        assert response.status == 403, (method, suffix, response.body)
        assert "is not a valid doctype name" in response.json()["error"]


def test_body_helper_trusts_content_length_first():
    from io import BytesIO

    from twisted.web.test.requesthelper import DummyRequest

    from cozyd.errors import BadRequest, PayloadTooLarge
    from cozyd.web.common import read_body, read_json

    request = DummyRequest([b""])
    request.content = BytesIO(b"{}")
    request.requestHeaders.setRawHeaders(b"content-length", [b"999999"])
    with pytest.raises(PayloadTooLarge):
        read_body(request, 1000)  # refused on the header, before reading
    request.requestHeaders.setRawHeaders(b"content-length", [b"2"])
    assert read_json(request, 1000) == {}
    request.content = BytesIO(b"x" * 1001)
    request.requestHeaders.removeHeader(b"content-length")
    with pytest.raises(PayloadTooLarge):
        read_body(request, 1000)
    request.content = BytesIO(b"[1, 2")
    with pytest.raises(BadRequest):
        read_json(request, 1000)


# -- generated documents ----------------------------------------------------------
def fresh_data() -> Data:
    directory = tempfile.mkdtemp(prefix="cozyd-data-")
    atexit.register(shutil.rmtree, directory, True)
    stack = memory_stack(directory)
    admin = MemoryClient(stack.admin)
    new_instance(admin)
    data = Data(MemoryClient(stack.public), cli_token(admin))
    data.put("/io.cozy.events/")
    return data


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_KEYS = _TEXT.filter(lambda key: not key.startswith("_"))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)
DOCUMENTS = st.dictionaries(_KEYS, _JSON, max_size=6)

_DOCS_DATA: list[Data] = []


def shared_data() -> Data:
    if not _DOCS_DATA:
        _DOCS_DATA.append(fresh_data())
    return _DOCS_DATA[0]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_generated_documents_round_trip(doc):
    data = shared_data()
    created = data.post("/io.cozy.events/", doc)
    assert created.status == 201, created.body
    body = created.json()
    read = data.get(f"/io.cozy.events/{body['id']}").json()
    assert read == {
        **doc,
        "_id": body["id"],
        "_rev": body["rev"],
        "_type": "io.cozy.events",
    }
    updated = data.put(
        f"/io.cozy.events/{body['id']}",
        {**doc, "_id": body["id"], "_rev": body["rev"], "extra": doc},
    )
    assert updated.status == 200, updated.body
    assert data.get(f"/io.cozy.events/{body['id']}").json()["extra"] == doc


@settings(deadline=None)
@given(st.binary(max_size=200), st.sampled_from(WRITE_ROUTES))
def test_arbitrary_bytes_never_give_a_500(raw, route):
    data = shared_data()
    method, path = route
    response = data.request(method, path, raw=raw)
    assert response.status < 500, response.body


# -- generated Mango selectors ------------------------------------------------------
FIELDS = ["a", "b", "c.d", "tags", "n"]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["x", "y", "Z", "é", "xy", ""]),
)
_ANY_VALUE = st.one_of(_VALUES, st.lists(_VALUES, max_size=3))
_REGEXES = ["^x", "y$", "[a-z]", "(?i)z", "é", "(", "^$"]
_TYPES = ["null", "boolean", "number", "string", "array", "object", "nope"]


def _conditions(inner):
    return st.one_of(
        _ANY_VALUE,
        st.builds(
            lambda op, v: {op: v},
            st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]),
            _ANY_VALUE,
        ),
        st.builds(lambda v: {"$exists": v}, st.booleans()),
        st.builds(lambda v: {"$type": v}, st.sampled_from(_TYPES)),
        st.builds(
            lambda op, v: {op: v},
            st.sampled_from(["$in", "$nin", "$all"]),
            st.lists(_VALUES, max_size=3),
        ),
        st.builds(lambda v: {"$size": v}, st.integers(0, 3)),
        st.builds(lambda d, r: {"$mod": [d, r]}, st.integers(0, 3), st.integers(0, 2)),
        st.builds(lambda v: {"$regex": v}, st.sampled_from(_REGEXES)),
        st.builds(lambda c: {"$elemMatch": c}, inner),
        st.builds(lambda c: {"$not": c}, inner),
        st.just({"$bogus": 1}),
    )


CONDITIONS = st.recursive(_VALUES, _conditions, max_leaves=4)
SELECTORS = st.recursive(
    st.dictionaries(st.sampled_from(FIELDS), CONDITIONS, min_size=0, max_size=2),
    lambda inner: st.builds(
        lambda op, parts: {op: parts},
        st.sampled_from(["$and", "$or", "$nor"]),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=6,
)


def _sample_docs() -> list[dict]:
    rng = random.Random(4)
    choices = [
        None,
        True,
        False,
        0,
        1,
        2,
        -1,
        3,
        "x",
        "y",
        "Z",
        "xy",
        "é",
        "",
        [],
        ["x"],
        [1, 2],
        ["x", "y", 1],
        {"d": 1},
    ]
    docs = []
    for i in range(60):
        doc = {"_id": f"doc{i:02d}"}
        for name in ("a", "b", "tags", "n"):
            if rng.random() < 0.8:
                doc[name] = rng.choice(choices)
        if rng.random() < 0.6:
            doc["c"] = (
                {"d": rng.choice(choices)} if rng.random() < 0.8 else rng.choice(choices)
            )
        docs.append(doc)
    return docs


_SELECTOR_DATA: list[tuple[Data, dict[str, dict]]] = []


def selector_data() -> tuple[Data, dict[str, dict]]:
    if not _SELECTOR_DATA:
        data = fresh_data()
        docs = _sample_docs()
        assert data.post("/io.cozy.events/_bulk_docs", {"docs": docs}).status == 201
        # An index on _id serves any selector: no "no_index" refusal.
        data.post("/io.cozy.events/_index", {"index": {"fields": ["_id"]}, "ddoc": "by-id"})
        stored = {
            row["id"]: row["doc"]
            for row in data.get(
                "/io.cozy.events/_all_docs", params={"include_docs": "true"}
            ).json()["rows"]
            if not row["id"].startswith("_design/")
        }
        _SELECTOR_DATA.append((data, stored))
    return _SELECTOR_DATA[0]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SELECTORS)
def test_find_matches_a_python_evaluation(selector):
    data, docs = selector_data()
    response = data.post("/io.cozy.events/_find", {"selector": selector, "limit": 1000})
    assert response.status < 500, response.body
    try:
        normalized = mango.normalize(selector)
    except InvalidRequest:
        assert response.status == 400, (selector, response.body)
        return
    assert response.status == 200, (selector, response.body)
    expected = sorted(
        doc_id for doc_id, doc in docs.items() if mango.matches(normalized, doc)
    )
    assert sorted(doc["_id"] for doc in response.json()["docs"]) == expected, selector
    # The changes feed filtered by the same selector agrees.
    feed = data.post(
        "/io.cozy.events/_changes", {"selector": selector}, params={"filter": "_selector"}
    )
    assert feed.status == 200
    # (design documents are in the feed too, and {} matches them)
    assert (
        sorted(
            row["id"]
            for row in feed.json()["results"]
            if not row["id"].startswith("_design/")
        )
        == expected
    )


def test_json_depth_limit_is_the_documented_one(small):
    _, data = small
    assert data.post("/io.cozy.events/", raw=nested(150)).status == 201
    response = data.post("/io.cozy.events/", raw=nested(201))
    assert response.status == 400
    assert "nested deeper" in json.dumps(response.json())
