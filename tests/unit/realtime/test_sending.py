"""``FrameBatch``: a round's frames sent from several threads, on real
sockets (socket pairs; the transport stands in for twisted's, with its
``socket`` and a ``write`` that keeps what it is handed)."""

from __future__ import annotations

import socket

import pytest

from cozyd.realtime.sending import FrameBatch, send_all


class Transport:
    def __init__(self, send_buffer: int | None = None):
        self.socket, self.peer = socket.socketpair()
        if send_buffer:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.socket.setblocking(False)
        self.peer.setblocking(False)
        self.written = b""  # what went to write(): buffered by twisted

    def write(self, data: bytes) -> None:
        self.written += data

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.socket.close()
        self.peer.close()


@pytest.fixture
def transports():
    made: list[Transport] = []

    def make(count: int, **kwargs) -> list[Transport]:
        new = [Transport(**kwargs) for _ in range(count)]
        made.extend(new)
        return new

    yield make
    for transport in made:
        transport.close()


def test_a_large_round_goes_out_on_several_threads_each_socket_in_order(transports):
    batch = FrameBatch(threads=2, min_parallel=100)
    many = transports(300)
    batch.begin()
    for n in range(3):  # three frames for every socket, interleaved
        for index, transport in enumerate(many):
            batch.add(transport, f"<{index}:{n}>".encode())
    batch.end()
    assert batch.parallel_rounds == 1
    assert batch.frames == 900
    for index, transport in enumerate(many):
        assert transport.received() == f"<{index}:0><{index}:1><{index}:2>".encode()
        assert transport.written == b""
    batch.close()


def test_what_a_full_socket_does_not_take_goes_to_write_in_order(transports):
    batch = FrameBatch(threads=2, min_parallel=1)
    full = transports(1, send_buffer=4096)[0]
    others = transports(50)
    big = b"a" * 500_000
    batch.begin()
    batch.add(full, big)
    for transport in others:
        batch.add(transport, b"hello")
    batch.add(full, b"after")
    batch.end()
    sent = full.received()
    assert 0 < len(sent) < len(big)  # the kernel took a part
    assert sent + full.written == big + b"after"  # the rest, then the next frame
    assert all(t.received() == b"hello" and t.written == b"" for t in others)
    batch.close()


def test_a_small_round_is_sent_from_the_calling_thread(transports):
    batch = FrameBatch(threads=2, min_parallel=10)
    few = transports(3)
    batch.begin()
    for transport in few:
        batch.add(transport, b"x")
    batch.end()
    assert batch.parallel_rounds == 0
    assert [t.received() for t in few] == [b"x"] * 3


def test_rounds_nest_and_send_at_the_outer_end(transports):
    batch = FrameBatch(threads=1)
    (one,) = transports(1)
    batch.begin()
    batch.begin()
    batch.add(one, b"inner")
    batch.end()
    assert batch.collecting and one.received() == b""
    batch.add(one, b"outer")
    batch.end()
    assert not batch.collecting
    assert one.received() == b"innerouter"


def test_a_closed_peer_leaves_the_frame_to_the_transport(transports):
    (gone,) = transports(1)
    gone.peer.close()
    left = send_all([gone, gone], [b"one", b"two"])
    assert left == [(gone, b"one"), (gone, b"two")]
