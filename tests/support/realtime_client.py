"""Real websocket clients for the tests: autobahn's, from Python.

The clients run in a helper process (``tests/support/ws_driver.py``, its
own Twisted reactor) that the test drives through pipes, so that the test
process's reactor is never run. ``RealtimeClients`` is that process;
``clients.connect(base_url, domain)`` opens ``/realtime/`` with the
``Host`` of ``domain`` and the ``io.cozy.websocket`` sub-protocol, and the
``RealtimeClient`` it returns sends commands (``auth``, ``subscribe``…, or
any raw text or bytes), waits for messages (``recv``, decoded JSON) and for
the close (``closed()`` → ``(code, reason)``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class NoMessage(AssertionError):
    pass


class RealtimeClient:
    def __init__(self, clients: RealtimeClients, ident: int):
        self._clients = clients
        self.ident = ident
        self.messages: queue.Queue[str] = queue.Queue()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.subprotocol: str | None = None
        self.close_code: Any = None
        self.close_reason: Any = None
        self.is_closed = False

    def _command(self, op: str, **fields: Any) -> None:
        self._clients.command(op=op, id=self.ident, **fields)

    def send(self, message: Any, *, binary: bool = False) -> None:
        if isinstance(message, bytes):
            self._command("send", b64=base64.b64encode(message).decode(), binary=binary)
            return
        text = message if isinstance(message, str) else json.dumps(message)
        self._command("send", data=text, binary=binary)

    def frame(self, opcode: int, payload: bytes) -> None:
        self._command("frame", opcode=opcode, b64=base64.b64encode(payload).decode())

    def auth(self, token: str) -> None:
        self.send({"method": "AUTH", "payload": token})

    def subscribe(self, doctype: str, doc_id: str | None = None) -> None:
        payload = {"type": doctype} if doc_id is None else {"type": doctype, "id": doc_id}
        self.send({"method": "SUBSCRIBE", "payload": payload})

    def unsubscribe(self, doctype: str, doc_id: str | None = None) -> None:
        payload = {"type": doctype} if doc_id is None else {"type": doctype, "id": doc_id}
        self.send({"method": "UNSUBSCRIBE", "payload": payload})

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def recv(self, timeout: float = 10.0) -> Any:
        try:
            return json.loads(self.messages.get(timeout=timeout))
        except queue.Empty:
            raise NoMessage(f"no message within {timeout}s") from None

    def no_message(self, wait: float = 0.5) -> None:
        try:
            message = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message: {message!r}")

    def closed(self, timeout: float = 10.0) -> tuple[Any, Any]:
        while not self.is_closed:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"not closed within {timeout}s") from None
            if "closed" in event:
                self.is_closed = True
                self.close_code, self.close_reason = event["closed"], event.get("reason")
        return self.close_code, self.close_reason

    def close(self, code: int = 1000) -> tuple[Any, Any]:
        if not self.is_closed:
            self._command("close", code=code)
        return self.closed()

    def drop(self) -> None:
        self._command("drop")


class RealtimeClients:
    """The helper process and its connections (a context manager)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ws_driver"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ids = itertools.count(1)
        self._clients: dict[int, RealtimeClient] = {}
        self._write_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> RealtimeClients:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def command(self, **fields: Any) -> None:
        with self._write_lock:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(fields) + "\n")
            self._process.stdin.flush()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            client = self._clients.get(event.get("id"))
            if client is None:
                continue
            if "message" in event:
                client.messages.put(event["message"])
            else:
                client.events.put(event)

    def connect(
        self,
        base_url: str,
        domain: str,
        *,
        protocols: list[str] | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/realtime/",
        timeout: float = 10.0,
    ) -> RealtimeClient:
        ident = next(self._ids)
        client = self._clients[ident] = RealtimeClient(self, ident)
        parts = urlsplit(base_url)
        self.command(
            op="connect",
            id=ident,
            host=parts.hostname,
            port=parts.port,
            domain=domain,
            path=path,
            protocols=["io.cozy.websocket"] if protocols is None else protocols,
            headers=headers or {},
        )
        try:
            event = client.events.get(timeout=timeout)
        except queue.Empty:
            raise ConnectionError("the websocket did not open in time") from None
        if "open" not in event:
            raise ConnectionError(f"the websocket did not open: {event}")
        client.subprotocol = event["open"]
        return client

    def stop(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


# -- the Node client (npm's ``ws``) ------------------------------------------------------
#: ``ws``, the websocket client of Node's ecosystem, as apps' tooling uses it.
WS_PACKAGES = {"ws": "8.18.3"}
NODE_SCRIPT = os.path.join(REPO, "tests", "support", "realtime_ws_client.js")


def node_ws_modules() -> str:
    from tests.support.couchdb_server import REPO_ROOT
    from tests.support.node_packages import install_node_packages

    return str(install_node_packages(WS_PACKAGES, REPO_ROOT / ".cache" / "node-ws"))


class NodeClient:
    """``realtime_ws_client.js`` running: what it printed, line by line."""

    def __init__(
        self,
        node_modules: str,
        workdir: str,
        *,
        url: str,
        host: str,
        token: str | None,
        commands: list[dict[str, Any]],
    ):
        config_path = os.path.join(workdir, f"ws-client-{id(self)}.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump({"url": url, "host": host, "token": token, "commands": commands}, f)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process = subprocess.Popen(
            ["node", NODE_SCRIPT, config_path],
            env={**os.environ, "NODE_PATH": node_modules},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"output": line})

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise NoMessage(f"the Node client said nothing within {timeout}s") from None

    def until(self, key: str, timeout: float = 15.0) -> dict[str, Any]:
        while True:
            line = self.next(timeout)
            if key in line:
                return line

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


# -- a bare Redis subscriber (what a node publishes) -----------------------------------
class RedisListener:
    """``SUBSCRIBE realtime:events`` on a raw socket; ``messages()`` gives
    what was published since (each ``<doctype>,<json>``)."""

    def __init__(self, url: str, channel: str = "realtime:events"):
        import socket

        parts = urlsplit(url)
        self._socket = socket.create_connection((parts.hostname, parts.port), timeout=5)
        self._socket.sendall(f"SUBSCRIBE {channel}\r\n".encode())
        self._buffer = b""
        self._socket.settimeout(0.2)

    def messages(self, wait: float = 1.0) -> list[str]:
        import time

        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            self._buffer += data
        found = []
        # RESP arrays: *3 $7 message $<n> channel $<n> payload
        lines = self._buffer.split(b"\r\n")
        for i, line in enumerate(lines):
            if line == b"message" and i + 4 < len(lines):
                found.append(lines[i + 4].decode("utf-8", "replace"))
        return found

    def close(self) -> None:
        self._socket.close()
