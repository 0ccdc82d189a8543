"""The site's edge (``cozyd.web.site``) on a fake transport and clock:
streamed bodies (chunks before the end, back-pressure, limits, early
answers), bodies nobody reads, two Host headers, the head deadline."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from cozyd.errors import Forbidden
from cozyd.service import access_log_line
from cozyd.testing import sync
from cozyd.web.bodies import body_stream
from cozyd.web.common import json_response, jsonapi_errors
from cozyd.web.routing import Service, route, streamed
from cozyd.web.site import CozySite

LIMIT = 1000
STREAM_LIMIT = 10_000


class HalfClosingTransport(StringTransport):
    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class Uploads(Service):
    errors = jsonapi_errors

    def __init__(self):
        super().__init__()
        self.chunks: list[bytes] = []
        self.gates: list[defer.Deferred] = []
        self.slow = False
        self.started = 0

    @route("upload", "POST", body=streamed(STREAM_LIMIT))
    async def upload(self, request):
        self.started += 1
        if request.args.get(b"refuse"):
            raise Forbidden("not you")
        digest = hashlib.sha256()

        def sink(chunk):
            self.chunks.append(chunk)
            digest.update(chunk)
            if self.slow:
                gate = defer.Deferred()
                self.gates.append(gate)
                return gate
            return None

        size = await body_stream(request).read_into(sink)
        return json_response(request, {"size": size, "sha256": digest.hexdigest()})

    @route("read", "GET")
    def read(self, request):
        return b"kept %d" % len(request.content.read())

    @route("fields", "POST")
    def fields(self, request):
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        return json_response(request, args)

    @route("form", "POST")
    def form(self, request):
        return b"got %d" % len(request.content.read())


@pytest.fixture
def served():
    clock = Clock()
    service = Uploads()
    site = CozySite(
        service,
        max_body_size=LIMIT,
        header_timeout=5,
        reactor=clock,
        logFormatter=access_log_line,
    )
    site.logFile = io.StringIO()

    def connect():
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = HalfClosingTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    return site, service, clock, connect


def head(method, path, *headers, host=True):
    lines = [
        f"{method} {path} HTTP/1.1",
        *(["Host: a.test"] if host else []),
        *headers,
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def parse(raw: bytes):
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (li.partition(":") for li in lines)
    }
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            out, rest = out + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        body = out
    return int(status_line.split()[1]), headers, body


def test_a_streamed_body_reaches_the_handler_as_it_arrives(served):
    _, service, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", "Transfer-Encoding: chunked"))
    assert service.started == 1  # the handler runs before any of the body
    protocol.dataReceived(chunk(b"a" * 300))
    assert service.chunks == [b"a" * 300] and transport.value() == b""
    protocol.dataReceived(chunk(b"b" * 300))
    assert len(service.chunks) == 2
    protocol.dataReceived(b"0\r\n\r\n")
    status, _, body = parse(transport.value())
    assert status == 200
    assert json.loads(body) == {
        "size": 600,
        "sha256": hashlib.sha256(b"a" * 300 + b"b" * 300).hexdigest(),
    }
    # The connection serves the next request.
    protocol.dataReceived(head("POST", "/form", "Content-Length: 3") + b"xyz")
    assert transport.value().endswith(b"got 3")


def test_a_slow_handler_pauses_the_connection(served):
    _, service, _, connect = served
    service.slow = True
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", "Content-Length: 900") + b"x" * 100)
    assert service.chunks == [b"x" * 100]
    assert transport.producerState == "paused"  # the sink is busy
    protocol.dataReceived(b"y" * 800)  # still in flight when it paused: queued
    assert len(service.chunks) == 1
    service.gates.pop(0).callback(None)
    assert service.chunks[1] == b"y" * 800 and transport.producerState == "paused"
    service.gates.pop(0).callback(None)
    assert transport.producerState == "producing"
    status, _, body = parse(transport.value())
    assert status == 200 and json.loads(body)["size"] == 900


def test_a_streamed_route_has_its_own_limit(served):
    _, service, _, connect = served
    protocol, transport = connect()
    # Past the site's limit but within the route's: served.
    protocol.dataReceived(
        head("POST", "/upload", f"Content-Length: {LIMIT * 2}") + b"z" * LIMIT * 2
    )
    assert parse(transport.value())[0] == 200
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", f"Content-Length: {STREAM_LIMIT + 1}"))
    assert parse(transport.value())[0] == 413 and service.started == 1
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", "Transfer-Encoding: chunked"))
    protocol.dataReceived(chunk(b"q" * STREAM_LIMIT))
    protocol.dataReceived(chunk(b"q"))
    status, _, body = parse(transport.value())
    assert status == 413 and json.loads(body)["errors"][0]["status"] == "413"
    assert transport.write_closed


def test_an_early_answer_ends_the_connection_after_a_linger(served):
    site, _service, clock, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("POST", "/upload?refuse=1", "Content-Length: 500", "Expect: 100-continue")
    )
    status, headers, _body = parse(transport.value())
    assert status == 403 and headers["connection"] == "close"
    assert b"100 Continue" not in transport.value()
    assert transport.write_closed and not transport.disconnecting
    sent = transport.value()
    protocol.dataReceived(b"w" * 500 + head("GET", "/read"))  # dropped
    assert transport.value() == sent
    clock.advance(site.linger)
    assert transport.disconnecting


def test_a_client_going_away_fails_the_stream(served):
    _, service, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", "Content-Length: 500") + b"v" * 10)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert service.chunks == [b"v" * 10] and transport.value() == b""


def test_bodies_of_bodiless_routes_are_not_kept(served):
    _, _, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(head("GET", "/read", "Content-Length: 5") + b"12345")
    assert transport.value().endswith(b"kept 0")
    protocol.dataReceived(head("POST", "/form", f"Content-Length: {LIMIT + 1}"))
    assert parse(transport.value().split(b"kept 0", 1)[1])[0] == 413


def test_two_host_headers_are_refused(served):
    _, _, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(head("GET", "/read", "Host: b.test"))
    status, _, body = parse(transport.value())
    assert status == 400 and "Host" in json.loads(body)["errors"][0]["detail"]
    assert transport.write_closed


def test_a_trickling_head_is_cut_at_the_deadline(served):
    _, _, clock, connect = served
    protocol, transport = connect()
    protocol.dataReceived(b"GET /read HTTP/1.1\r\n")
    for _ in range(4):
        clock.advance(1)
        protocol.dataReceived(b"X-A: b\r\n")  # each byte resets the idle timeout
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting


def test_the_deadline_is_per_head(served):
    _, _, clock, connect = served
    protocol, transport = connect()
    clock.advance(4)
    protocol.dataReceived(head("GET", "/read"))
    clock.advance(4)
    protocol.dataReceived(head("GET", "/read"))
    clock.advance(4)
    assert transport.value().count(b"200 OK") == 2 and not transport.disconnecting
    protocol.dataReceived(b"GET /read HTTP/1.1\r\n")  # a new head: a new deadline
    clock.advance(5)
    assert transport.disconnecting
    # A connection that never sends a head is closed too.
    protocol, transport = connect()
    clock.advance(5)
    assert transport.disconnecting


def test_a_bodiless_request_meets_one_match(served, monkeypatch):
    """A GET is matched once, by the service; a request with a body once
    too, at its headers (for its body policy), the service taking that
    match."""
    from werkzeug.routing import MapAdapter

    _, service, _, connect = served
    calls = []
    match = MapAdapter.match

    def counted(self, *args, **kwargs):
        calls.append(self.map)
        return match(self, *args, **kwargs)

    monkeypatch.setattr(MapAdapter, "match", counted)
    protocol, transport = connect()
    protocol.dataReceived(head("GET", "/read"))
    assert transport.value().endswith(b"kept 0")
    assert calls == [type(service).app.url_map]
    protocol.dataReceived(head("POST", "/form", "Content-Length: 2") + b"ab")
    assert transport.value().endswith(b"got 2")
    assert len(calls) == 2  # at the headers only


def test_the_edge_settings_are_configurable(tmp_path):
    from cozyd.config import ConfigError, load_config
    from cozyd.testing import write_config

    path = write_config(str(tmp_path))
    defaults = load_config(path, env={})
    assert defaults.get("server", "header_timeout") == 30.0
    assert defaults.get("server", "test_routes") is False
    tuned = load_config(path, env={"COZYD_SERVER_HEADER_TIMEOUT": "2.5"})
    assert tuned.get("server", "header_timeout") == 2.5
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={"COZYD_SERVER_HEADER_TIMEOUT": "-1"})
    assert "header_timeout" in str(raised.value)


def test_an_empty_streamed_body(served):
    _, _service, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(head("POST", "/upload", "Content-Length: 0"))
    status, _, body = parse(transport.value())
    assert status == 200 and json.loads(body)["size"] == 0
    protocol.dataReceived(head("GET", "/read"))
    assert transport.value().endswith(b"kept 0") and not transport.disconnecting


def test_the_public_root_tells_the_site_its_routes(stack, admin):
    from tests.unit.web.conftest import create

    create(admin, "alice.cozy.test")
    root = stack.public  # the app hosts, then the instances' site
    found = root.route_for_uri(b"POST", b"/data/io.cozy.notes/?x=1", b"alice.cozy.test")
    assert found.route.handler.__name__ == "create_doc"
    assert found.params == {"doctype": "io.cozy.notes"}
    # Any host that is not an app of a known instance goes to the site.
    assert (
        root.route_for_uri(b"GET", b"/version", b"unknown.test").route.handler.__name__
        == "version"
    )
    sync(stack.registry.resolve("alice.cozy.test"))
    assert root.route_for_uri(b"GET", b"/version", b"home.alice.cozy.test") is None


@pytest.mark.parametrize(
    ("content_type", "fields"),
    [
        ("application/x-www-form-urlencoded", {"q": ["1"], "a": ["2"]}),
        ("Application/X-WWW-Form-Urlencoded; charset=utf-8", {"q": ["1"], "a": ["2"]}),
        ("application/json", {"q": ["1"]}),
        ("text/plain; boundary=x", {"q": ["1"]}),
    ],
)
def test_only_form_bodies_become_arguments(served, content_type, fields):
    _, _, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("POST", "/fields?q=1", f"Content-Type: {content_type}", "Content-Length: 3")
        + b"a=2"
    )
    status, _, body = parse(transport.value())
    assert (status, json.loads(body)) == (200, fields)
