"""treq as the CouchDB engine uses it (``cozyd.storage.http_client``): the
URL goes out as given, no cookie is kept or sent, bodies go as bytes."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from cozyd.storage.http_client import URI, lean_client
from cozyd.testing import result_of


class _Response:
    code = 200
    phrase = b"OK"
    version = (b"HTTP", 1, 1)
    length = 2

    def __init__(self):
        self.headers = Headers({b"Set-Cookie": [b"AuthSession=abc; Path=/"]})

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(b"{}")
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
class _Recorder:
    def __init__(self):
        self.sent: list[tuple[bytes, bytes, Headers, bytes | None]] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        body = None
        if bodyProducer is not None:
            chunks: list[bytes] = []

            class _Consumer:
                write = chunks.append

            bodyProducer.startProducing(_Consumer())
            body = b"".join(chunks)
        self.sent.append((method, uri, headers, body))
        return defer.succeed(_Response())


def _exchange(client, method, url, data=None):
    async def go():
        response = await client.request(method, url, data=data, allow_redirects=False)
        return response.code, await response.content()

    return result_of(defer.Deferred.fromCoroutine(go()))


def test_a_uri_goes_out_unchanged_and_no_cookie_is_kept():
    agent = _Recorder()
    client = lean_client(agent)
    url = "http://127.0.0.1:5984/cozy%2Fio-cozy-files/a%2Fb%20c?rev=1-x&include_docs=true"
    assert _exchange(client, "PUT", URI(url), b'{"a":1}') == (200, b"{}")
    assert _exchange(client, "GET", URI(url)) == (200, b"{}")
    (m1, uri1, _, body1), (m2, uri2, headers2, body2) = agent.sent
    assert (m1, uri1, body1) == (b"PUT", url.encode(), b'{"a":1}')
    assert (m2, uri2, body2) == (b"GET", url.encode(), None)
    # The first answer set a cookie: the second request does not carry it.
    assert not headers2.hasHeader(b"cookie")


def test_text_urls_still_work_and_a_uri_is_ascii():
    agent = _Recorder()
    assert _exchange(lean_client(agent), "GET", "http://127.0.0.1:5984/db/x") == (
        200,
        b"{}",
    )
    assert agent.sent[0][1] == b"http://127.0.0.1:5984/db/x"
    with pytest.raises(ValueError):
        URI("http://café.test/db")
