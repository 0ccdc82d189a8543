"""Unit tests of the CouchDB engine over an in-memory HTTP fake (StubTreq).

No sockets, no sleeps: a tiny resource plays CouchDB and records what the
engine sent; a ``Clock`` drives the timeouts.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cozyd.storage.couchdb import CouchDBStore, InvalidDatabaseName, couchdb_db_path
from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    DocumentStore,
    InvalidRequest,
    StorageError,
    StorageUnavailable,
)

PASSWORD = "s3cr3t-Pa55"
URL = f"http://admin:{PASSWORD}@couch.test:5984/"
DB = "cozyab12/io-cozy-files"


class FakeCouch(Resource):
    """Answers from a routing function and records every request."""

    isLeaf = True

    def __init__(self, route=None):
        super().__init__()
        self.route = route or (lambda method, path, query, body: (200, {"ok": True}))
        self.requests: list[dict[str, Any]] = []
        self.pending: list[Any] = []

    def render(self, request):
        raw = request.content.read() if request.content else b""
        uri = request.uri.decode("ascii")
        path, _, query = uri.partition("?")
        entry = {
            "method": request.method.decode(),
            "uri": uri,
            "path": path,
            "query": query,
            "headers": {
                k.decode().lower(): [v.decode() for v in vs]
                for k, vs in request.requestHeaders.getAllRawHeaders()
            },
            "body": json.loads(raw) if raw else None,
        }
        self.requests.append(entry)
        answer = self.route(entry["method"], path, query, entry["body"])
        if answer is NOT_DONE_YET:
            self.pending.append(request)
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain")  # as pouchdb-server
        return b"" if body is None else json.dumps(body).encode()


def make_store(route=None, *, timeout: float = 30.0):
    clock = Clock()
    fake = FakeCouch(route)
    store = CouchDBStore(URL, reactor=clock, timeout=timeout, http_client=StubTreq(fake))
    return store, fake, clock


def result_of(coro):
    """Run a coroutine that cannot wait on anything and return its result."""
    d = Deferred.fromCoroutine(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the coroutine is still waiting"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_implements_the_interface():
    store, _, _ = make_store()
    assert isinstance(store, DocumentStore)
    assert store.engine == "couchdb"


# -- names and URLs ------------------------------------------------------------
def test_db_names_are_escaped_like_cozy_stack():
    assert couchdb_db_path("cozyab12/io-cozy-files") == "cozyab12%2Fio-cozy-files"
    assert couchdb_db_path("global/instances") == "global%2Finstances"
    store, fake, _ = make_store()
    result_of(store.db_info(DB))
    assert fake.requests[-1]["path"] == "/cozyab12%2Fio-cozy-files"


def test_create_db_records_then_creates():
    def route(method, path, query, body):
        if method == "GET":
            return 404, {"error": "not_found", "reason": "missing"}
        return 201, {"ok": True}

    store, fake, _ = make_store(route)
    result_of(store.create_db(DB))
    seen = [(r["method"], r["path"]) for r in fake.requests]
    assert seen == [
        ("GET", "/global%2Fdatabases/cozyab12"),
        ("PUT", "/global%2Fdatabases/cozyab12"),
        ("PUT", "/cozyab12%2Fio-cozy-files"),
    ]
    assert fake.requests[1]["body"] == {"_id": "cozyab12", "dbs": ["io-cozy-files"]}


@pytest.mark.parametrize(
    "doc_id, path",
    [
        ("plain", "plain"),
        ("a/b", "a%2Fb"),
        ("é ?#&", "%C3%A9%20%3F%23%26"),
        ("_design/by-name", "_design/by-name"),
        ("_design/a/b", "_design/a%2Fb"),
        ("_local/x/y", "_local/x%2Fy"),
    ],
)
def test_doc_ids_are_escaped(doc_id, path):
    store, fake, _ = make_store(lambda *a: (200, {"_id": doc_id, "_rev": "1-a"}))
    result_of(store.get_doc(DB, doc_id))
    assert fake.requests[-1]["path"] == f"/cozyab12%2Fio-cozy-files/{path}"


@pytest.mark.parametrize("doc_id", ["_all_docs", "_find", "_design/", "", None, 3])
def test_reserved_or_bad_ids_never_reach_the_server(doc_id):
    store, fake, _ = make_store()
    with pytest.raises(InvalidRequest):
        result_of(store.get_doc(DB, doc_id))
    with pytest.raises(InvalidRequest):
        result_of(store.put_doc(DB, {"_id": doc_id}))
    assert fake.requests == []


@pytest.mark.parametrize(
    "name", ["nodash", "Upper/x", "a/B", "a/b/c", "a/", "/b", "a/_x", "../x", "a%2Fb", ""]
)
def test_bad_db_names_never_reach_the_server(name):
    store, fake, _ = make_store()
    with pytest.raises(InvalidDatabaseName) as info:
        result_of(store.ensure_db(name))
    assert isinstance(info.value, ValueError)
    assert info.value.status == 400
    with pytest.raises(InvalidRequest):
        result_of(store.get_doc(name, "x"))
    assert fake.requests == []


@pytest.mark.parametrize("prefix", ["", "a/b", "Upper", "1abc"])
def test_bad_prefixes_are_refused(prefix):
    store, fake, _ = make_store()
    with pytest.raises(InvalidRequest):
        result_of(store.list_dbs(prefix))
    with pytest.raises(InvalidRequest):
        result_of(store.delete_prefix(prefix))
    assert fake.requests == []


def test_query_parameters_are_json_encoded():
    store, fake, _ = make_store(
        lambda *a: (200, {"rows": [], "total_rows": 0, "offset": 0})
    )
    result_of(
        store.all_docs(
            DB, start_key='a"b', end_key="z", limit=3, inclusive_end=False, descending=True
        )
    )
    assert fake.requests[-1]["query"] == (
        "startkey=%22a%5C%22b%22&endkey=%22z%22&inclusive_end=false&descending=true&limit=3"
    )


def test_accept_json_and_authorization_header():
    store, fake, _ = make_store()
    result_of(store.put_doc(DB, {"_id": "x", "a": 1}))
    headers = fake.requests[-1]["headers"]
    assert headers["accept"] == ["application/json"]
    assert headers["content-type"] == ["application/json"]
    expected = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert headers["authorization"] == [f"Basic {expected}"]
    assert PASSWORD not in fake.requests[-1]["uri"]


def test_percent_encoded_credentials_are_decoded():
    store = CouchDBStore(
        "http://us%40er:p%3Aw@couch.test/",
        reactor=Clock(),
        http_client=StubTreq(FakeCouch()),
    )
    assert store._auth == b"Basic " + base64.b64encode(b"us@er:p:w")
    assert store.url == "http://couch.test/"


# -- credentials stay secret -------------------------------------------------------
class RefusingClient:
    """An HTTP client whose every request fails to connect."""

    def __init__(self, exc):
        self.exc = exc

    def request(self, *args, **kwargs):
        return fail(self.exc)


@pytest.mark.parametrize(
    "exc",
    [
        net_error.ConnectionRefusedError("Connection refused"),
        net_error.DNSLookupError("no such host"),
        net_error.ConnectionLost(),
    ],
)
def test_network_errors_are_unavailable_and_keep_credentials_secret(exc):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = CouchDBStore(URL, reactor=Clock(), http_client=RefusingClient(exc))
        assert PASSWORD not in repr(store)
        with pytest.raises(StorageUnavailable) as info:
            result_of(store.get_doc(DB, "x"))
        assert info.value.status == 503
        for text in (str(info.value), info.value.detail, repr(info.value)):
            assert PASSWORD not in text and "admin:" not in text
        assert "couch.test:5984" in str(info.value)
        assert result_of(store.health()) is False
        with pytest.raises(StorageUnavailable):
            result_of(store.start())
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    logged = " ".join(formatEvent(e) + repr(e) for e in events)
    assert "unreachable" in logged
    assert PASSWORD not in logged


def test_bad_url_does_not_echo_the_password():
    with pytest.raises(ValueError) as info:
        CouchDBStore(
            f"ftp://admin:{PASSWORD}@couch.test/",
            reactor=Clock(),
            http_client=StubTreq(FakeCouch()),
        )
    assert PASSWORD not in str(info.value)


# -- error mapping ------------------------------------------------------------
@pytest.mark.parametrize(
    "status, body, cls, code, detail",
    [
        (
            404,
            {"error": "not_found", "reason": "missing"},
            DocNotFound,
            "not_found",
            "missing",
        ),
        (
            404,
            {"error": "not_found", "reason": "deleted"},
            DocNotFound,
            "not_found",
            "deleted",
        ),
        (
            404,
            {"error": "not_found", "reason": "Database does not exist."},
            DatabaseNotFound,
            "not_found",
            "Database does not exist.",
        ),
        (
            404,
            {"error": "not_found", "reason": "no_db_file"},
            DatabaseNotFound,
            "not_found",
            "Database does not exist.",
        ),
        (
            409,
            {"error": "conflict", "reason": "Document update conflict."},
            DocConflict,
            "conflict",
            "Document update conflict.",
        ),
        (
            400,
            {"error": "bad_request", "reason": "Invalid rev format"},
            InvalidRequest,
            "bad_request",
            "Invalid rev format",
        ),
        (
            400,
            {
                "error": "no_usable_index",
                "reason": "No index exists for this sort, try indexing by the sort fields.",
            },
            InvalidRequest,
            "no_usable_index",
            "No index exists for this sort, try indexing by the sort fields.",
        ),
        (
            403,
            {"error": "forbidden", "reason": "nope"},
            StorageError,
            "forbidden",
            "CouchDB answered 403 forbidden: nope",
        ),
        (
            500,
            {"error": "unknown_error", "reason": "badarg"},
            StorageError,
            "unknown_error",
            "CouchDB answered 500 unknown_error: badarg",
        ),
        (500, None, StorageError, "unknown_error", "CouchDB answered 500 error"),
        (
            503,
            {"error": "service_unavailable", "reason": "no quorum"},
            StorageUnavailable,
            "service_unavailable",
            "no quorum",
        ),
    ],
)
def test_error_mapping(status, body, cls, code, detail):
    store, _, _ = make_store(lambda *a: (status, body))
    with pytest.raises(StorageError) as info:
        result_of(store.get_doc(DB, "x"))
    assert type(info.value) is cls
    assert (info.value.status, info.value.code, info.value.detail) == (
        status if status != 404 or cls is not DatabaseNotFound else 404,
        code,
        detail,
    )


def test_412_on_create_is_database_exists():
    def route(method, path, query, body):
        if path.startswith("/global"):
            return (
                (404, {"error": "not_found", "reason": "missing"})
                if method == "GET"
                else (201, {"ok": True})
            )
        if method == "HEAD":
            return 404, None  # not there yet… but created by someone else now
        return 412, {
            "error": "file_exists",
            "reason": "The database could not be created, the file already exists.",
        }

    store, _, _ = make_store(route)
    with pytest.raises(DatabaseExists):
        result_of(store.create_db(DB))
    result_of(store.ensure_db(DB))  # lost the race to create it: fine


def test_db_call_404_without_reason_is_database_not_found():
    store, _, _ = make_store(lambda *a: (404, None))
    with pytest.raises(DatabaseNotFound):
        result_of(store.db_info(DB))
    assert result_of(store.db_exists(DB)) is False


def test_delete_db_of_a_missing_db_is_not_found():
    store, fake, _ = make_store(
        lambda *a: (404, {"error": "not_found", "reason": "Database does not exist."})
    )
    with pytest.raises(DatabaseNotFound):
        result_of(store.delete_db(DB))
    assert [r["method"] for r in fake.requests] == ["DELETE"]


def test_delete_without_rev_is_a_conflict_like_couchdb():
    store, fake, _ = make_store()
    with pytest.raises(DocConflict):
        result_of(store.delete_doc(DB, "x", ""))
    assert fake.requests == []


# -- timeouts and cancellation ----------------------------------------------------
def test_timeout_is_storage_unavailable():
    store, _, clock = make_store(lambda *a: NOT_DONE_YET, timeout=5)
    d = Deferred.fromCoroutine(store.get_doc(DB, "x"))
    results: list[Any] = []
    d.addBoth(results.append)
    assert results == []
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    assert len(results) == 1
    assert results[0].check(StorageUnavailable)
    assert "within 5s" in str(results[0].value)
    assert PASSWORD not in str(results[0].value)


def test_every_request_has_one_timer_for_the_whole_exchange():
    calls: list[dict] = []
    waiting: list[Deferred] = []

    class RecordingClient:
        def request(self, method, url, **kwargs):
            calls.append(kwargs)
            d = Deferred()
            waiting.append(d)
            return d

    clock = Clock()
    store = CouchDBStore(URL, reactor=clock, timeout=7, http_client=RecordingClient())
    d = Deferred.fromCoroutine(store.db_exists(DB))
    results: list[Any] = []
    d.addBoth(results.append)
    # One timer (the store's), none per stage or in the client.
    assert [call.getTime() for call in clock.getDelayedCalls()] == [7]
    assert "timeout" not in calls[0] and "auth" not in calls[0]
    assert store.requests_sent == 1
    clock.advance(7)
    assert results[0].check(StorageUnavailable)
    assert "within 7s" in str(results[0].value)


def test_cancelling_the_caller_is_not_a_storage_error():
    store, _, clock = make_store(lambda *a: NOT_DONE_YET, timeout=5)
    d = Deferred.fromCoroutine(store.get_doc(DB, "x"))
    results: list[Any] = []
    d.addBoth(results.append)
    clock.advance(1)
    d.cancel()
    assert len(results) == 1
    assert results[0].check(CancelledError)
    assert not clock.getDelayedCalls()


def test_body_that_is_not_json():
    class Text(Resource):
        isLeaf = True

        def render(self, request):
            return b"<html>proxy error</html>"

    store = CouchDBStore(URL, reactor=Clock(), http_client=StubTreq(Text()))
    with pytest.raises(StorageError) as info:
        result_of(store.get_doc(DB, "x"))
    assert info.value.status == 502


# -- answers normalised to what CouchDB says ------------------------------------------
def test_sequences_pass_through_and_a_numeric_since_goes_out_as_text():
    answer = {
        "results": [{"id": "a", "seq": "3-g1AAA", "changes": [{"rev": "1-a"}]}],
        "last_seq": "3-g1AAA",
        "pending": 0,
    }
    store, fake, _ = make_store(lambda *a: (200, answer))
    changes = result_of(store.changes(DB, since=0))
    assert changes == answer
    assert fake.requests[-1]["query"] == "since=0"


def test_changes_with_doc_ids_posts_the_filter():
    store, fake, _ = make_store(
        lambda *a: (200, {"results": [], "last_seq": "0", "pending": 0})
    )
    result_of(store.changes(DB, doc_ids=["a", "b"], style="all_docs"))
    request = fake.requests[-1]
    assert request["method"] == "POST"
    assert "filter=_doc_ids" in request["query"]
    assert "style=all_docs" in request["query"]
    assert request["body"] == {"doc_ids": ["a", "b"]}


def test_bulk_get_on_couchdb_is_one_call():
    answer = {
        "results": [
            {"id": "a", "docs": [{"ok": {"_id": "a", "_rev": "1-a"}}]},
            {"id": "a", "docs": [{"ok": {"_id": "a", "_rev": "2-a"}}]},
        ]
    }
    store, fake = started_store(WELCOME_COUCHDB, lambda *a: (200, answer))
    requests = [{"id": "a", "rev": "1-a"}, {"id": "a"}]
    assert result_of(store.bulk_get(DB, requests, revs=True)) == answer["results"]
    assert [(r["method"], r["query"], r["body"]) for r in fake.requests] == [
        ("POST", "revs=true", {"docs": requests})
    ]


def test_bulk_docs_new_edits_false_answers_only_errors():
    store, fake, _ = make_store(lambda *a: (201, [{"ok": True, "id": "a", "rev": "1-a"}]))
    assert (
        result_of(store.bulk_docs(DB, [{"_id": "a", "_rev": "1-a"}], new_edits=False)) == []
    )
    assert fake.requests[-1]["body"]["new_edits"] is False


def test_all_docs_rows_have_doc_only_when_asked():
    rows = [
        {"id": "a", "key": "a", "value": {"rev": "2-a", "deleted": True}, "doc": None},
        {"key": "zz", "error": "not_found"},
    ]
    store, fake, _ = make_store(
        lambda *a: (200, {"total_rows": 0, "offset": 0, "rows": [dict(r) for r in rows]})
    )
    result = result_of(store.all_docs(DB, keys=["a", "zz"]))
    assert result["rows"] == [
        {"id": "a", "key": "a", "value": {"rev": "2-a", "deleted": True}},
        {"key": "zz", "error": "not_found"},
    ]
    assert fake.requests[-1]["method"] == "POST"
    assert fake.requests[-1]["body"] == {"keys": ["a", "zz"]}
    result = result_of(store.all_docs(DB, keys=["a"], include_docs=True))
    assert result["rows"][0]["doc"] is None


def test_local_docs_accept_ids_with_or_without_prefix():
    store, fake, _ = make_store(
        lambda *a: (201, {"ok": True, "id": "_local/x", "rev": "0-1"})
    )
    assert result_of(store.put_local(DB, {"_id": "_local/x", "a": 1})) == {
        "ok": True,
        "id": "_local/x",
        "rev": "0-1",
    }
    result_of(store.get_local(DB, "x"))
    result_of(store.delete_local(DB, "_local/x", "0-1"))
    assert [(r["method"], r["path"], r["query"]) for r in fake.requests] == [
        ("PUT", "/cozyab12%2Fio-cozy-files/_local/x", ""),
        ("GET", "/cozyab12%2Fio-cozy-files/_local/x", ""),
        ("DELETE", "/cozyab12%2Fio-cozy-files/_local/x", "rev=0-1"),
    ]


def test_create_index_body():
    store, fake, _ = make_store(
        lambda *a: (200, {"result": "created", "id": "_design/by-a", "name": "by-a"})
    )
    result = result_of(
        store.create_index(
            DB,
            ["a", {"b": "desc"}],
            ddoc="by-a",
            name="by-a",
            partial_filter_selector={"c": 1},
        )
    )
    assert result == {"result": "created", "id": "_design/by-a", "name": "by-a"}
    assert fake.requests[-1]["body"] == {
        "index": {"fields": ["a", {"b": "desc"}], "partial_filter_selector": {"c": 1}},
        "type": "json",
        "ddoc": "by-a",
        "name": "by-a",
    }


# -- bookkeeping of a prefix's databases --------------------------------------------
class FakeRegistry:
    """Just enough CouchDB for the bookkeeping: docs with revs, dbs."""

    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.dbs: set[str] = set()
        self.conflicts_left = 0

    def __call__(self, method, path, query, body):
        if path.startswith("/global%2Fdatabases/"):
            key = path.rsplit("/", 1)[1]
            doc = self.docs.get(key)
            if method == "GET":
                return (
                    (200, dict(doc))
                    if doc
                    else (404, {"error": "not_found", "reason": "missing"})
                )
            if self.conflicts_left:
                self.conflicts_left -= 1
                # someone else wrote meanwhile
                if doc:
                    doc["_rev"] = f"{int(doc['_rev'].split('-')[0]) + 1}-other"
                return 409, {"error": "conflict", "reason": "Document update conflict."}
            current = doc["_rev"] if doc else None
            given = body.get("_rev") if body else query.partition("rev=")[2] or None
            if current != given:
                return 409, {"error": "conflict", "reason": "Document update conflict."}
            if method == "DELETE":
                del self.docs[key]
                return 200, {"ok": True}
            gen = int(current.split("-")[0]) + 1 if current else 1
            self.docs[key] = dict(body, _rev=f"{gen}-x")
            return 201, {"ok": True, "id": key, "rev": f"{gen}-x"}
        name = path.lstrip("/")
        if method == "HEAD":
            return (200, None) if name in self.dbs else (404, None)
        if method == "PUT":
            self.dbs.add(name)
            return 201, {"ok": True}
        if method == "DELETE":
            if name not in self.dbs:
                return 404, {"error": "not_found", "reason": "Database does not exist."}
            self.dbs.remove(name)
            return 200, {"ok": True}
        return 200, {}


def test_list_and_delete_prefix_with_bookkeeping():
    couch = FakeRegistry()
    store, _, _ = make_store(couch)
    for part in ("io-cozy-files", "io-cozy-apps", "io-cozy-notes"):
        result_of(store.create_db(f"cozyab12/{part}"))
    couch.conflicts_left = 2  # two concurrent writers on the next update
    result_of(store.create_db("cozyab12/io-cozy-jobs"))
    assert couch.docs["cozyab12"]["dbs"] == [
        "io-cozy-apps",
        "io-cozy-files",
        "io-cozy-jobs",
        "io-cozy-notes",
    ]
    result_of(store.delete_db("cozyab12/io-cozy-notes"))
    # A database gone behind our back (crash between delete and record).
    couch.dbs.discard("cozyab12%2Fio-cozy-jobs")
    assert result_of(store.list_dbs("cozyab12")) == [
        "cozyab12/io-cozy-apps",
        "cozyab12/io-cozy-files",
    ]
    result_of(store.delete_prefix("cozyab12"))
    assert couch.dbs == set() and couch.docs == {}
    result_of(store.delete_prefix("cozyab12"))  # idempotent
    assert result_of(store.list_dbs("cozyab12")) == []


def test_delete_prefix_goes_round_again_when_a_db_is_added_meanwhile():
    couch = FakeRegistry()
    store, _, _ = make_store(couch)
    result_of(store.create_db("cozyab12/io-cozy-files"))
    couch.conflicts_left = 1
    result_of(store.delete_prefix("cozyab12"))
    assert couch.docs == {} and couch.dbs == set()


def test_close_does_not_touch_an_injected_client():
    store, fake, _ = make_store()
    result_of(store.close())
    with pytest.raises(StorageUnavailable):
        result_of(store.get_doc(DB, "x"))
    assert fake.requests == []


# -- whatever the server says it is -----------------------------------------------
WELCOME_COUCHDB = {"couchdb": "Welcome", "version": "3.5.0"}
WELCOME_POUCHDB = {"express-pouchdb": "Welcome!", "version": "4.2.0"}


def started_store(welcome, route):
    def full_route(method, path, query, body):
        if path == "/":
            return 200, welcome
        if path == "/global%2Fdatabases":
            return 412, {"error": "file_exists", "reason": "exists"}
        return route(method, path, query, body)

    store, fake, _ = make_store(full_route)
    result_of(store.start())
    del fake.requests[:]
    return store, fake


def deleted_doc_route(method, path, query, body):
    if "open_revs=all" in query:
        return 200, [{"ok": {"_id": "x", "_rev": "2-b", "_deleted": True}}]
    return 404, {"error": "not_found", "reason": "missing"}


@pytest.mark.parametrize("welcome", [WELCOME_COUCHDB, WELCOME_POUCHDB])
def test_answers_are_taken_as_they_are_whatever_the_server(welcome):
    # The engine targets Apache CouchDB 3.x: another server's answers are
    # not completed with extra requests.
    store, fake = started_store(welcome, deleted_doc_route)
    with pytest.raises(DocNotFound) as info:
        result_of(store.get_doc(DB, "x"))
    assert info.value.detail == "missing"
    assert len(fake.requests) == 1


def test_index_ddoc_may_be_given_with_its_prefix():
    store, fake, _ = make_store(
        lambda *a: (200, {"result": "exists", "id": "_design/x", "name": "x"})
    )
    result_of(store.create_index(DB, ["a"], ddoc="_design/x"))
    assert fake.requests[-1]["body"]["ddoc"] == "x"


@pytest.mark.parametrize("arguments", [{"limit": -1}, {"skip": -1}, {"limit": "3"}])
def test_all_docs_refuses_bad_limits(arguments):
    store, fake, _ = make_store()
    with pytest.raises(InvalidRequest) as info:
        result_of(store.all_docs(DB, **arguments))
    assert info.value.code == "query_parse_error"
    assert fake.requests == []


def test_doc_validation_is_a_bad_request():
    store, _, _ = make_store(
        lambda *a: (
            500,
            {"error": "doc_validation", "reason": "Bad special document member: _unknown"},
        )
    )
    with pytest.raises(InvalidRequest) as info:
        result_of(store.put_doc(DB, {"_id": "x", "_unknown": 1}))
    assert (info.value.status, info.value.code) == (400, "doc_validation")
