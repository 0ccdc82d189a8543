"""Ids no engine can store (a lone surrogate, which JSON can carry and UTF-8
cannot) get a clear 400 under /data, in CouchDB's error shape, and nothing
is written. (tests/integration/test_data_engines.py checks both engines.)"""

from __future__ import annotations

import pytest

from cozyd.testing import MemoryClient
from tests.support.data import Data, cli_token, events_of, new_instance

REASON = "a lone surrogate (\\uD800-\\uDFFF) is not valid Unicode"
EVENTS = "/io.cozy.events"


@pytest.fixture
def data(stack):
    admin = MemoryClient(stack.admin)
    new_instance(admin)
    client = Data(MemoryClient(stack.public), cli_token(admin))
    assert client.post(EVENTS + "/", {"n": 1}).status == 201
    return client


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/_bulk_docs", b'{"docs": [{"_id": "fine"}, {"_id": "bad\\ud800"}]}'),
        (
            "POST",
            "/_bulk_docs",
            b'{"docs": [{"_id": "\\udfff", "_rev": "1-abc"}], "new_edits": false}',
        ),
        ("POST", "/_all_docs", b'{"keys": ["\\ud800"]}'),
        ("POST", "/_bulk_get", b'{"docs": [{"id": "\\ud800"}]}'),
        ("POST", "/_revs_diff", b'{"\\ud800": ["1-abc"]}'),
        # Anywhere in a body, not only in ids: no engine can store it.
        ("POST", "/", b'{"title": "half \\ud800 a pair"}'),
        ("POST", "/_index", b'{"index": {"fields": ["\\udc00"]}}'),
        ("PUT", "/_local/x", b'{"value": {"\\ud800": 1}}'),
    ],
)
def test_a_lone_surrogate_in_an_id_is_a_400(stack, data, method, path, body):
    events = events_of(stack)
    before = data.get(EVENTS + "/_all_docs").json()["total_rows"]
    response = data.request(method, EVENTS + path, raw=body)
    assert response.status == 400, response.body
    # CouchDB's shape (routes of cozy-stack's helpers add "ok" and "status").
    assert {**response.json(), "ok": False, "status": "400"} == {
        "ok": False,
        "status": "400",
        "error": "bad_request",
        "reason": REASON,
    }
    assert data.get(EVENTS + "/_all_docs").json()["total_rows"] == before
    assert events == []


def test_the_query_string_keys_of_all_docs_too(data):
    response = data.get(EVENTS + "/_all_docs", params={"key": '"\\ud800"'})
    assert response.status == 400
    assert response.json() == {"error": "bad_request", "reason": REASON}
