"""Request bodies over ``[server] max_body_size`` are refused before they
are read (``cozyd.web.site``): in memory against ``BodyLimitSite``, then
against the real daemon with raw sockets, which is what a client uploading
too much meets."""

from __future__ import annotations

import io
import json
import select
import socket
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from cozyd.service import access_log_line
from cozyd.web.site import BodyLimitSite
from tests.support.daemon import http

pytestmark = pytest.mark.integration

LIMIT = 100


# =============================================================================
# In memory: the site on a fake transport and clock
# =============================================================================
class Recorder(Resource):
    """Answers with the size of the body it got."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[bytes, bytes]] = []

    def render(self, request):
        body = request.content.read()
        self.seen.append((request.path, body))
        return b"got %d" % len(body)


class HalfClosingTransport(StringTransport):
    """A TCP-like transport: its write side can be closed alone."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True

    def write(self, data):
        assert not self.write_closed, "written after the write side was closed"
        super().write(data)


@pytest.fixture
def served():
    clock = Clock()
    resource = Recorder()
    site = BodyLimitSite(
        resource, max_body_size=LIMIT, reactor=clock, logFormatter=access_log_line
    )
    site.logFile = io.StringIO()

    def connect(transport=None):
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = transport or HalfClosingTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    return site, resource, clock, connect


def head(method, path, *headers):
    lines = [f"{method} {path} HTTP/1.1", "Host: alice.cozy.test", *headers, "", ""]
    return "\r\n".join(lines).encode("ascii")


def parse(raw: bytes):
    """(status, headers, body) of the one response in ``raw``."""
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def linger_calls(clock, transport):
    return [c for c in clock.getDelayedCalls() if c.func == transport.loseConnection]


def test_a_declared_length_over_the_limit_is_refused_before_the_body(served):
    site, resource, clock, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head(
            "POST",
            "/data/io.cozy.notes/?token=secret",
            "Content-Type: application/json",
            "Content-Length: 1000000000",
        )
    )
    status, headers, body = parse(transport.value())
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert "date" in headers
    assert json.loads(body) == {
        "error": "request_entity_too_large",
        "reason": f"the request body is larger than {LIMIT} bytes",
    }
    assert resource.seen == []
    # Answered and logged (without the query string), our side closed; the
    # rest of the connection after the linger, what comes meanwhile dropped.
    assert site.logFile.getvalue() == f'"POST /data/io.cozy.notes/" 413 {len(body)}\n'
    assert transport.write_closed and not transport.disconnecting
    sent = transport.value()
    protocol.dataReceived(b"x" * 5000)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value() == sent and resource.seen == []
    clock.advance(site.linger)
    assert transport.disconnecting


def test_the_error_is_json_api_outside_data(served):
    _, _, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("PUT", "/settings/passphrase", f"Content-Length: {LIMIT + 1}")
    )
    status, headers, body = parse(transport.value())
    assert status == 413
    assert headers["content-type"] == "application/vnd.api+json"
    [error] = json.loads(body)["errors"]
    assert error["status"] == "413" and error["code"] == "request_entity_too_large"


def test_no_100_continue_for_a_refused_body(served):
    _, _, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("POST", "/data/x/", "Expect: 100-continue", f"Content-Length: {LIMIT * 10}")
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in transport.value()


def test_a_chunked_body_is_refused_once_past_the_limit(served):
    site, resource, clock, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("POST", "/data/io.cozy.notes/", "Transfer-Encoding: chunked")
    )
    protocol.dataReceived(b"3c\r\n" + b"a" * 60 + b"\r\n")
    assert transport.value() == b""  # 60 bytes: fine so far
    # A chunk announcing 16 MB: refused as soon as its data passes the limit.
    protocol.dataReceived(b"1000000\r\n" + b"b" * 30)
    assert transport.value() == b""
    protocol.dataReceived(b"b" * 20)
    status, _, body = parse(transport.value())
    assert status == 413 and json.loads(body)["error"] == "request_entity_too_large"
    sent = transport.value()
    protocol.dataReceived(b"b" * 100_000)
    assert transport.value() == sent and resource.seen == []
    assert site.logFile.getvalue().startswith('"POST /data/io.cozy.notes/" 413 ')
    # The client hangs up before the linger ends: nothing left scheduled.
    assert linger_calls(clock, transport)
    protocol.connectionLost(None)
    assert linger_calls(clock, transport) == []


def test_a_whole_refused_chunked_body_in_one_read(served):
    _, resource, _, connect = served
    protocol, transport = connect()
    body = b"".join(b"a\r\n" + b"c" * 10 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    protocol.dataReceived(
        head("POST", "/data/x/", "Transfer-Encoding: chunked")
        + body
        + head("GET", "/after")
    )
    assert parse(transport.value())[0] == 413
    assert transport.value().count(b"HTTP/1.1") == 1  # and nothing after it
    assert resource.seen == []


def test_bodies_within_the_limit_are_served_on_a_kept_connection(served):
    _, resource, _, connect = served
    protocol, transport = connect()
    protocol.dataReceived(
        head("POST", "/data/a/", f"Content-Length: {LIMIT}") + b"a" * LIMIT
    )
    protocol.dataReceived(
        head("POST", "/b", "Transfer-Encoding: chunked")
        + b"32\r\n"
        + b"b" * 50
        + b"\r\n"
        + b"32\r\n"
        + b"b" * 50
        + b"\r\n"
        + b"0\r\n\r\n"
    )
    protocol.dataReceived(head("GET", "/c"))
    assert resource.seen == [
        (b"/data/a/", b"a" * LIMIT),
        (b"/b", b"b" * LIMIT),
        (b"/c", b""),
    ]
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert not transport.disconnecting


def test_without_a_half_close_the_connection_is_closed_at_once(served):
    _, _, _, connect = served
    protocol, transport = connect(StringTransport())
    protocol.dataReceived(head("POST", "/x", f"Content-Length: {LIMIT + 1}"))
    assert parse(transport.value())[0] == 413
    assert transport.disconnecting


# =============================================================================
# The real daemon, driven with raw sockets
# =============================================================================
DAEMON_LIMIT = 64 * 1024


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(server={"max_body_size": str(DAEMON_LIMIT)})


def open_socket(daemon) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", daemon.ports["public"]), timeout=10)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def read_until_closed(client: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (its side at least)."""
    received = b""
    deadline = time.monotonic() + timeout
    client.settimeout(timeout)
    while time.monotonic() < deadline:
        try:
            data = client.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return received


def raw_head(method: str, path: str, *headers: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: alice.cozy.localhost",
        "Content-Type: application/json",
        *headers,
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def test_daemon_refuses_a_huge_content_length_without_reading(daemon):
    client = open_socket(daemon)
    try:
        started = time.monotonic()
        client.sendall(
            raw_head(
                "POST", "/data/io.cozy.events/?secret=s3cr3t", "Content-Length: 10000000000"
            )
        )
        answer = read_until_closed(client)
        # The answer and the end of it come at once, not after the linger.
        assert time.monotonic() - started < 1.5
    finally:
        client.close()
    status, headers, body = parse(answer)
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": "request_entity_too_large",
        "reason": f"the request body is larger than {DAEMON_LIMIT} bytes",
    }
    # Still serving; the refusal was logged without its query string.
    assert http("GET", daemon.public_url + "/version").json()["version"]
    deadline = time.monotonic() + 5
    while '"POST /data/io.cozy.events/" 413' not in daemon.output:
        assert time.monotonic() < deadline, daemon.output
        time.sleep(0.05)
    assert "s3cr3t" not in daemon.output


def test_daemon_answers_413_to_a_client_sending_its_whole_body(daemon):
    # The client sends a body ten times too large before it reads: the
    # server drops it while lingering, so the client gets the 413, not a reset.
    client = open_socket(daemon)
    try:
        size = DAEMON_LIMIT * 10
        client.sendall(
            raw_head("PUT", "/data/io.cozy.events/doc", f"Content-Length: {size}")
            + b"x" * size
        )
        status, _, body = parse(read_until_closed(client))
    finally:
        client.close()
    assert status == 413
    assert json.loads(body)["error"] == "request_entity_too_large"


def test_daemon_stops_reading_a_chunked_body_past_the_limit(daemon):
    client = open_socket(daemon)
    chunk = b"y" * 8192
    sent = 0
    answer = b""
    try:
        client.sendall(
            raw_head("POST", "/data/io.cozy.events/", "Transfer-Encoding: chunked")
        )
        while sent < DAEMON_LIMIT * 20:
            client.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
            readable, _, _ = select.select(
                [client], [], [], 0.05 if sent > DAEMON_LIMIT else 0
            )
            if readable:
                break
        answer = read_until_closed(client)
    finally:
        client.close()
    # Refused once past the limit, long before the client was done.
    assert DAEMON_LIMIT < sent < DAEMON_LIMIT * 4
    status, _, body = parse(answer)
    assert status == 413
    assert json.loads(body)["error"] == "request_entity_too_large"
    assert "Traceback" not in daemon.output


def test_daemon_serves_chunked_bodies_within_the_limit(daemon):
    client = open_socket(daemon)
    try:
        payload = json.dumps({"a": "z" * 1000}).encode()
        client.sendall(
            raw_head("POST", "/data/io.cozy.events/", "Transfer-Encoding: chunked")
            + b"%x\r\n" % len(payload)
            + payload
            + b"\r\n0\r\n\r\n"
        )
        client.settimeout(10)
        first = client.recv(65536)
    finally:
        client.close()
    # Read and routed: no such instance here, so 404 rather than 413.
    status, _, _ = parse(first)
    assert status == 404
