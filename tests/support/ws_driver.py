"""The process behind ``tests.support.realtime_client``: autobahn's Twisted
websocket client, driven by JSON lines on stdin, telling what happens as
JSON lines on stdout (its own reactor, away from the test process's).

In:  {"op": "connect", "id": N, "host": h, "port": p, "domain": d,
      "path": "/realtime/", "protocols": [...], "headers": {...}}
     {"op": "send", "id": N, "data": "<text>" | "b64": "...", "binary": bool}
     {"op": "close", "id": N, "code": 1000} | {"op": "drop", "id": N}
     {"op": "pause", "id": N} | {"op": "resume", "id": N}   (stop/start reading)
Out: {"id": N, "open": "<subprotocol>"} | {"id": N, "message": "<text>"}
     {"id": N, "closed": code, "reason": "..."} | {"id": N, "error": "..."}
"""

from __future__ import annotations

import base64
import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints, reactor, stdio
from twisted.protocols.basic import LineReceiver

connections: dict[int, Client] = {}
#: stdout, through the reactor (StandardIO makes the descriptor non-blocking:
#: writing to it directly could lose what a full pipe does not take).
out: list = []


def say(**fields) -> None:
    out[0].write(json.dumps(fields).encode() + b"\n")


class Client(WebSocketClientProtocol):
    ident = 0
    _handshake_sent = False

    def sendData(self, data, sync=False, chopsize=None):
        if not self._handshake_sent and data.startswith(b"GET "):
            # autobahn always writes the port in Host ("host:80"); browsers
            # leave the default one out, and instances are named without it.
            self._handshake_sent = True
            factory = self.factory
            data = data.replace(
                f"Host: {factory.host}:{factory.port}\r\n".encode(),
                f"Host: {factory.host}\r\n".encode(),
            )
        super().sendData(data, sync=sync, chopsize=chopsize)

    def onOpen(self) -> None:
        say(id=self.ident, open=self.websocket_protocol_in_use)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        say(id=self.ident, message=payload.decode("utf-8", "replace"))

    def onClose(self, wasClean, code, reason) -> None:
        connections.pop(self.ident, None)
        say(id=self.ident, closed=code, reason=reason)


class Commands(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 10_000_000

    def lineReceived(self, line: bytes) -> None:
        command = json.loads(line)
        op, ident = command["op"], command.get("id")
        try:
            getattr(self, "do_" + op)(ident, command)
        except Exception as exc:
            say(id=ident, error=f"{type(exc).__name__}: {exc}")

    def do_connect(self, ident, command) -> None:
        factory = WebSocketClientFactory(
            f"ws://{command['domain']}{command.get('path', '/realtime/')}",
            protocols=command.get("protocols") or None,
            headers=command.get("headers") or {},
        )
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=10)

        def build(addr=None):
            client = Client()
            client.factory = factory
            client.ident = ident
            connections[ident] = client
            return client

        factory.buildProtocol = build
        endpoint = endpoints.TCP4ClientEndpoint(reactor, command["host"], command["port"])
        d = endpoint.connect(factory)
        d.addErrback(lambda f: say(id=ident, error=str(f.value)))

    def do_send(self, ident, command) -> None:
        data = (
            base64.b64decode(command["b64"])
            if "b64" in command
            else command["data"].encode("utf-8")
        )
        connections[ident].sendMessage(data, isBinary=bool(command.get("binary")))

    def do_frame(self, ident, command) -> None:
        # A raw frame, as a broken client would send it.
        connections[ident].sendFrame(
            opcode=command["opcode"], payload=base64.b64decode(command["b64"])
        )

    def do_close(self, ident, command) -> None:
        connections[ident].sendClose(command.get("code", 1000))

    def do_drop(self, ident, command) -> None:
        connections[ident].dropConnection(abort=True)

    def do_pause(self, ident, command) -> None:
        connections[ident].transport.pauseProducing()

    def do_resume(self, ident, command) -> None:
        connections[ident].transport.resumeProducing()

    def connectionLost(self, reason) -> None:
        if reactor.running:
            reactor.stop()


def main() -> None:
    commands = Commands()
    stdio.StandardIO(commands)
    out.append(commands.transport)
    reactor.run()


if __name__ == "__main__":
    main()
