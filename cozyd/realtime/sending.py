"""Websocket frames written straight to TCP sockets, many at once, on
several cores.

An event for 10,000 subscribers is 10,000 ``send`` calls, and most of
their time is the kernel's (TCP on its way to each client). ``socket.send``
lets go of the GIL, so the sends of one fan-out can run side by side:
``FrameBatch`` collects the frames of a fan-out round (``begin`` … ``add``
… ``end``), and ``end`` shares them out to ``threads`` threads (the
reactor's own thread being one of them).

Why this is safe: the reactor's thread waits in ``end`` until every send of
the round is done. Nothing else reads, writes or closes these sockets
meanwhile, so no descriptor closed and reused by a new connection can get
another's frame, and no ping or close frame can slip between two frames.
Only sockets whose transport has nothing buffered are added (``direct``);
the frames of one socket all go to the same thread, in order. What a socket
does not take whole (its buffer is full) is handed back, in order with the
frames after it, to its transport's ``write``: buffered as any write, with
its flow control, after the round.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from twisted.internet import tcp

#: Below this many frames, a round is sent from the reactor's thread alone
#: (waking a thread costs more than it saves).
MIN_PARALLEL = 256


def direct(transport: Any) -> bool:
    """May frames be written to ``transport``'s socket directly: a plain TCP
    connection, open, with nothing waiting in its buffers?"""
    return (
        type(transport) is tcp.Server
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
    )


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once when ``direct`` allows it (as
    asyncio's transports do): Twisted's ``write`` always buffers, then
    registers the socket for writing and sends on the reactor's next turn,
    two ``epoll_ctl`` calls and a turn for every websocket an event goes to.
    What the socket does not take goes to ``write`` as usual."""
    if direct(transport):
        sent = _send(transport, data)
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _send(transport: Any, data: bytes) -> int:
    try:
        return transport.socket.send(data)
    except Exception:  # EAGAIN, or an error the transport will find itself
        return 0


def send_all(transports: list[Any], frames: list[bytes]) -> list[tuple[Any, bytes]]:
    """Send ``frames[i]`` to ``transports[i]``, in order; returns what was
    not sent (the rest of a frame a socket did not take whole, and every
    later frame of that socket), in order."""
    left: list[tuple[Any, bytes]] = []
    stuck: set[Any] = set()
    for transport, data in zip(transports, frames, strict=True):
        if stuck and transport in stuck:
            left.append((transport, data))
            continue
        sent = _send(transport, data)
        if sent != len(data):
            stuck.add(transport)
            left.append((transport, data[sent:]))
    return left


class FrameBatch:
    """The frames of one fan-out round, sent together at its end."""

    def __init__(self, threads: int = 1, *, min_parallel: int = MIN_PARALLEL):
        self.threads = max(1, threads)
        self.min_parallel = min_parallel
        # Two lists rather than a tuple a frame: nothing made per frame.
        self._transports: list[Any] = []
        self._frames: list[bytes] = []
        self._depth = 0  # rounds may nest (a delivery that delivers)
        self._inboxes: list[queue.SimpleQueue] = []
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        #: Rounds sent on several threads, frames sent in all (metrics).
        self.parallel_rounds = 0
        self.frames = 0

    @property
    def collecting(self) -> bool:
        return self._depth > 0

    def begin(self) -> None:
        self._depth += 1

    def add(self, transport: Any, data: bytes) -> None:
        """One frame for ``transport`` (``direct`` must allow it)."""
        assert self._depth > 0, "add outside begin/end"
        self._transports.append(transport)
        self._frames.append(data)

    def end(self) -> None:
        self._depth -= 1
        if self._depth > 0 or not self._transports:
            return
        transports, frames = self._transports, self._frames
        self._transports, self._frames = [], []
        self.frames += len(transports)
        if self.threads == 1 or len(transports) < self.min_parallel:
            left = send_all(transports, frames)
        else:
            left = self._send_parallel(transports, frames)
        for transport, data in left:
            transport.write(data)

    def _send_parallel(
        self, transports: list[Any], frames: list[bytes]
    ) -> list[tuple[Any, bytes]]:
        n = self.threads
        parts: list[tuple[list[Any], list[bytes]]] = [([], []) for _ in range(n)]
        for transport, data in zip(transports, frames, strict=True):
            part = parts[hash(transport) % n]
            part[0].append(transport)
            part[1].append(data)
        self._start_threads()
        self.parallel_rounds += 1
        for inbox, part in zip(self._inboxes, parts[1:], strict=True):
            inbox.put(part)
        left = send_all(*parts[0])
        for _ in range(n - 1):
            left += self._done.get()
        return left

    def _start_threads(self) -> None:
        while len(self._inboxes) < self.threads - 1:
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._work,
                args=(inbox,),
                name=f"cozyd-realtime-send-{len(self._inboxes) + 1}",
                daemon=True,
            )
            self._inboxes.append(inbox)
            thread.start()

    def _work(self, inbox: queue.SimpleQueue) -> None:
        while True:
            part = inbox.get()
            if part is None:
                return
            try:
                left = send_all(*part)
            except BaseException:  # never leave the reactor waiting
                left = list(zip(*part, strict=True))
            self._done.put(left)

    def close(self) -> None:
        """Stop the threads (they are daemon threads: this is tidiness)."""
        for inbox in self._inboxes:
            inbox.put(None)
        self._inboxes = []
