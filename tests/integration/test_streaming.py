"""The real daemon's edge with real sockets: a 1 GiB chunked body streamed
to a route with flat memory, back-pressure, the head deadline and two
Host headers."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from tests.integration.test_body_limit import parse, read_until_closed

pytestmark = pytest.mark.integration

GIB = 1024**3
PIECE = 1024 * 1024


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(server={"test_routes": "true", "header_timeout": "1.5"})


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def connect(daemon) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", daemon.ports["public"]), timeout=60)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def send_chunked(client: socket.socket, path: str, total: int) -> str:
    """Send ``total`` bytes chunked (1 MiB chunks); their sha256."""
    client.sendall(
        f"POST {path} HTTP/1.1\r\nHost: anything.test\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    digest = hashlib.sha256()
    piece = bytearray(PIECE)
    sent = 0
    while sent < total:
        # Each piece differs: a hash of the wrong order or a lost chunk differs.
        piece[:8] = sent.to_bytes(8, "big")
        data = bytes(piece[: min(PIECE, total - sent)])
        digest.update(data)
        client.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
        sent += len(data)
    client.sendall(b"0\r\n\r\n")
    return digest.hexdigest()


def read_response(client: socket.socket) -> tuple[int, dict]:
    """One response (Content-Length or chunked), its status and JSON body."""
    received = b""
    while True:
        top, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            _, headers, _ = parse(received)
            if "content-length" in headers and len(body) >= int(headers["content-length"]):
                break
            if headers.get("transfer-encoding") == "chunked" and body.endswith(
                b"0\r\n\r\n"
            ):
                body = dechunk(body)
                break
        data = client.recv(65536)
        assert data, f"closed before the whole response: {received!r}"
        received += data
    return int(top.split()[1]), json.loads(body)


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return out
        out, body = out + body[:length], body[length + 2 :]


def test_a_gigabyte_streams_through_with_flat_memory(daemon):
    pid = daemon.process.pid
    # Warm up (imports, buffers), then measure the peak from here.
    client = connect(daemon)
    try:
        send_chunked(client, "/_debug/sha256", PIECE)
        assert read_response(client)[0] == 200
    finally:
        client.close()
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = rss_kib(pid, "VmRSS")
    client = connect(daemon)
    try:
        started = time.monotonic()
        expected = send_chunked(client, "/_debug/sha256", GIB)
        status, body = read_response(client)
    finally:
        client.close()
    assert status == 200, body
    assert body == {"sha256": expected, "size": GIB}
    grown = rss_kib(pid, "VmHWM") - before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB for a 1 GiB body"
    assert time.monotonic() - started < 600


def test_a_slow_route_pushes_back_on_the_client(daemon):
    # The handler takes a reactor turn per chunk: the daemon stops reading
    # meanwhile, yet every byte arrives in order.
    client = connect(daemon)
    try:
        expected = send_chunked(client, "/_debug/sha256?slow=true", 64 * PIECE)
        status, body = read_response(client)
    finally:
        client.close()
    assert (status, body) == (200, {"sha256": expected, "size": 64 * PIECE})


def test_test_routes_are_off_by_default(make_daemon):
    plain = make_daemon("plain")
    client = connect(plain)
    try:
        client.sendall(
            b"POST /_debug/sha256 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc"
        )
        status, _, _ = parse(client.recv(65536))
    finally:
        client.close()
    assert status == 404


def test_a_trickling_head_is_closed_at_the_deadline(daemon):
    client = connect(daemon)
    started = time.monotonic()
    try:
        client.sendall(b"GET /version HTTP/1.1\r\nHost: a.test\r\n")
        closed_at = None
        for _ in range(40):  # a header byte every 0.1 s, never the end
            try:
                client.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            time.sleep(0.1)
            client.settimeout(0.01)
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                closed_at = time.monotonic()
                break
    finally:
        client.close()
    assert closed_at is not None, "the connection stayed open"
    assert 1.0 < closed_at - started < 3.5
    # A head sent at once is served.
    client = connect(daemon)
    try:
        client.sendall(b"GET /version HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        client.close()


def test_two_host_headers_get_400(daemon):
    client = connect(daemon)
    try:
        client.sendall(b"GET /version HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n")
        status, headers, body = parse(read_until_closed(client))
    finally:
        client.close()
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["errors"][0]["status"] == "400"
