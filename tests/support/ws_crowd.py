"""Many bare ``/realtime/`` subscribers on plain sockets, read by one epoll
loop: cheap enough per message that thousands of them measure the server,
not the client (``bench/realtime.py``), and simple enough to see every
byte a subscriber gets (``tests/integration/test_realtime_crowd.py``).

Each subscriber does the websocket handshake, ``AUTH`` and ``SUBSCRIBE``;
then ``pump`` reads whatever arrived and hands every text frame to
``on_text(index, arrival_time, payload)``, answers pings, and counts
closes.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable

BATCH = 40  # handshakes in flight at once (under a listen backlog of 50)


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked frame, as clients send them."""
    mask = os.urandom(4)
    n = len(payload)
    header = bytes([0x80 | opcode])
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Crowd:
    def __init__(
        self,
        port: int,
        domain: str,
        token: str,
        doctype: str,
        *,
        on_text: Callable[[int, float, bytes], None],
        receive_buffer: int | None = None,
    ):
        self.port = port
        self.domain = domain
        self.token = token
        self.doctype = doctype
        self.on_text = on_text
        self.receive_buffer = receive_buffer
        self.sockets: list[socket.socket] = []
        self._index: dict[int, int] = {}
        self._buffers: list[bytes] = []
        self._epoll = select.epoll()
        self.closed: set[int] = set()
        self.muted: set[int] = set()  # not read by pump (a reader that stalls)

    # -- set-up -----------------------------------------------------------------------
    def connect(self, count: int, timeout: float = 60.0) -> None:
        """``count`` more subscribers, handshaken and subscribed."""
        deadline = time.monotonic() + timeout
        while count > 0:
            batch = [self._open(deadline) for _ in range(min(BATCH, count))]
            for sock in batch:
                self._upgrade(sock, deadline)
            count -= len(batch)

    def _open(self, deadline: float) -> socket.socket:
        sock = socket.socket()
        if self.receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /realtime/ HTTP/1.1\r\n"
                f"Host: {self.domain}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: io.cozy.websocket\r\n\r\n"
            ).encode()
        )
        return sock

    def _upgrade(self, sock: socket.socket, deadline: float) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head[:200].decode(errors="replace"))
        auth = json.dumps({"method": "AUTH", "payload": self.token}).encode()
        sub = json.dumps(
            {"method": "SUBSCRIBE", "payload": {"type": self.doctype}}
        ).encode()
        sock.sendall(client_frame(auth) + client_frame(sub))
        sock.setblocking(False)
        index = len(self.sockets)
        self.sockets.append(sock)
        self._buffers.append(rest)
        self._index[sock.fileno()] = index
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    # -- reading ----------------------------------------------------------------------
    def mute(self, index: int) -> None:
        """Stop reading subscriber ``index`` (its kernel buffers fill up)."""
        self.muted.add(index)
        self._epoll.unregister(self.sockets[index].fileno())

    def unmute(self, index: int) -> None:
        self.muted.discard(index)
        self._epoll.register(self.sockets[index].fileno(), select.EPOLLIN)

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Read until ``until()`` is true (True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        poll, index_of, on_text = self._epoll.poll, self._index, self.on_text
        sockets, buffers = self.sockets, self._buffers
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, _events in poll(min(left, 0.5)):
                index = index_of[fd]
                try:
                    data = sockets[index].recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.perf_counter()
                if not data:
                    self._lost(index)
                    continue
                buffer = buffers[index] + data if buffers[index] else data
                # The frequent case first: one whole small text frame.
                n = len(buffer)
                if n >= 2 and buffer[0] == 0x81 and buffer[1] < 126 and n == 2 + buffer[1]:
                    buffers[index] = b""
                    on_text(index, now, buffer[2:])
                    continue
                buffers[index] = self._frames(index, now, buffer)
        return True

    def _frames(self, index: int, now: float, buffer: bytes) -> bytes:
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            n = buffer[1] & 0x7F
            start = 2
            if n == 126:
                if len(buffer) < 4:
                    break
                n = struct.unpack("!H", buffer[2:4])[0]
                start = 4
            elif n == 127:
                if len(buffer) < 10:
                    break
                n = struct.unpack("!Q", buffer[2:10])[0]
                start = 10
            if len(buffer) < start + n:
                break
            payload = buffer[start : start + n]
            buffer = buffer[start + n :]
            if opcode == 1:
                self.on_text(index, now, payload)
            elif opcode == 9:  # ping
                self.sockets[index].sendall(client_frame(payload, opcode=10))
            elif opcode == 8:
                self.closed.add(index)
        return buffer

    def _lost(self, index: int) -> None:
        self.closed.add(index)
        try:
            self._epoll.unregister(self.sockets[index].fileno())
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self._epoll.close()

    def __enter__(self) -> Crowd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
