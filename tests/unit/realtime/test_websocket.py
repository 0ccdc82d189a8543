"""The io.cozy.websocket protocol, in memory: autobahn's client against the
server protocol over twisted's in-memory transports, on a fake clock.

The permissions are real permission sets (``TokenAccess`` of
``cozyd.web.realtime``) made from scopes; the Guard's path (real tokens,
the session cookie) is driven through the real daemon in
``tests/integration/test_realtime.py``.
"""

from __future__ import annotations

import json

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.test import iosim

from cozyd.permissions.rules import PermissionSet
from cozyd.realtime.fanout import Fanout
from cozyd.realtime.hub import EventHub, make_event
from cozyd.realtime.websocket import (
    CLOSE_AUTH_FIRST,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_BAD_MESSAGE,
    CLOSE_FLOOD,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_BIG,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    AuthenticationFailed,
    Limits,
    RealtimeFactory,
)
from cozyd.web.realtime import TokenAccess

ALICE, BOB = "alice-prefix", "bob-prefix"
SCOPES = {
    "all-events": "io.cozy.events io.cozy.settings",
    "one-note": "io.cozy.notes:GET:note-1",
    "tagged": "io.cozy.files:GET:work:tags",
    "thumbs": "io.cozy.files",
}


async def authenticate(token: str) -> TokenAccess:
    if token not in SCOPES:
        raise AuthenticationFailed("invalid_token")
    return TokenAccess(PermissionSet.from_scope(SCOPES[token], type="cli"))


class Client(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.messages: list = []
        self.opened = False
        self.close_code = None
        self.close_reason = None

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.close_code, self.close_reason = code, reason


class World:
    def __init__(self, clock, **limits):
        self.clock = clock
        self.hub = EventHub()
        self.fanout = Fanout(self.hub)
        self.factory = RealtimeFactory(
            self.fanout, limits=Limits(ping_interval=0, **limits), clock=clock
        )
        # autobahn's own handshake timers run on the global reactor: none here.
        self.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.pumps = []

    def connect(self, instance=ALICE, protocols=("io.cozy.websocket",)):
        server = self.factory.connection(
            None, instance=instance, domain=instance, authenticate=authenticate
        )
        client_factory = WebSocketClientFactory(
            "ws://alice.cozy.test/realtime/", protocols=list(protocols) or None
        )
        client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        client = Client()
        client.factory = client_factory
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
            clock=self.clock,
        )
        self.pumps.append(pump)
        client.server = server
        client.pump = pump
        assert client.opened
        return client

    def send(self, client, message, binary=False):
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        client.sendMessage(payload, isBinary=binary)
        client.pump.flush()

    def auth(self, client, token="all-events"):
        self.send(client, {"method": "AUTH", "payload": token})

    def subscribe(self, client, doctype, doc_id=None, method="SUBSCRIBE"):
        payload = {"type": doctype} if doc_id is None else {"type": doctype, "id": doc_id}
        self.send(client, {"method": method, "payload": payload})

    def publish(self, verb, doctype, doc, instance=ALICE):
        self.hub.publish(instance, make_event(verb, doctype, doc))
        self.flush()

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def close_all(self):
        for pump in self.pumps:
            client = pump.client
            if client.close_code is None:
                client.sendClose(1000)
        self.flush()


@pytest.fixture
def world(clock):
    w = World(clock)
    yield w
    w.close_all()
    w.clock.advance(3600)  # the auth timers of connections left open fire


def payload(message):
    return message["payload"]


def test_auth_subscribe_and_receive_events(world):
    client = world.connect()
    assert client.websocket_protocol_in_use == "io.cozy.websocket"
    world.auth(client)
    world.subscribe(client, "io.cozy.events")
    world.publish("CREATED", "io.cozy.events", {"_id": "e1", "_rev": "1-a", "n": 1})
    world.publish("UPDATED", "io.cozy.events", {"_id": "e1", "_rev": "2-b", "n": 2})
    world.publish("DELETED", "io.cozy.events", {"_id": "e1", "_rev": "3-c", "n": 2})
    world.publish("CREATED", "io.cozy.other", {"_id": "o1", "_rev": "1-a"})
    assert client.messages == [
        {
            "event": "CREATED",
            "payload": {
                "type": "io.cozy.events",
                "id": "e1",
                "doc": {"_id": "e1", "_rev": "1-a", "n": 1},
            },
        },
        {
            "event": "UPDATED",
            "payload": {
                "type": "io.cozy.events",
                "id": "e1",
                "doc": {"_id": "e1", "_rev": "2-b", "n": 2},
            },
        },
        {
            "event": "DELETED",
            "payload": {
                "type": "io.cozy.events",
                "id": "e1",
                "doc": {"_id": "e1", "_rev": "3-c", "n": 2},
            },
        },
    ]


def test_a_client_offering_no_subprotocol_is_served_too(world):
    client = world.connect(protocols=())
    assert client.websocket_protocol_in_use is None
    world.auth(client)
    world.subscribe(client, "io.cozy.events")
    world.publish("CREATED", "io.cozy.events", {"_id": "e1"})
    assert [m["event"] for m in client.messages] == ["CREATED"]


def test_id_subscriptions_and_unsubscribe(world):
    client = world.connect()
    world.auth(client)
    world.subscribe(client, "io.cozy.events", "e1")
    world.subscribe(client, "io.cozy.events", "e2")
    world.publish("CREATED", "io.cozy.events", {"_id": "e3"})
    world.publish("CREATED", "io.cozy.events", {"_id": "e1"})
    world.subscribe(client, "io.cozy.events", "e1", method="UNSUBSCRIBE")
    world.publish("UPDATED", "io.cozy.events", {"_id": "e1"})
    world.publish("UPDATED", "io.cozy.events", {"_id": "e2"})
    assert [(m["event"], payload(m)["id"]) for m in client.messages] == [
        ("CREATED", "e1"),
        ("UPDATED", "e2"),
    ]
    # A type and an id subscription: one delivery per event.
    world.subscribe(client, "io.cozy.events")
    client.messages.clear()
    world.publish("UPDATED", "io.cozy.events", {"_id": "e2"})
    assert len(client.messages) == 1
    world.subscribe(client, "io.cozy.events", method="unsubscribe")  # any case
    world.subscribe(client, "io.cozy.events", "e2", method="UNSUBSCRIBE")
    world.publish("UPDATED", "io.cozy.events", {"_id": "e2"})
    assert len(client.messages) == 1
    assert world.fanout.topics() == 0
    assert not world.hub.has_subscribers(ALICE, "io.cozy.events")


def test_events_of_another_instance_never_arrive(world):
    alice = world.connect(ALICE)
    bob = world.connect(BOB)
    for client in (alice, bob):
        world.auth(client)
        world.subscribe(client, "io.cozy.events")
    world.publish("CREATED", "io.cozy.events", {"_id": "for-alice"}, instance=ALICE)
    world.fanout.notify(BOB, "io.cozy.events", "for-bob", {"_id": "for-bob"})
    world.flush()
    assert [payload(m)["id"] for m in alice.messages] == ["for-alice"]
    assert [payload(m)["id"] for m in bob.messages] == ["for-bob"]
    assert bob.messages[0]["event"] == "NOTIFIED"


def test_the_first_message_must_be_auth(world):
    client = world.connect()
    world.subscribe(client, "io.cozy.events")
    assert client.messages == [
        {
            "event": "error",
            "payload": {
                "status": "405 Method Not Allowed",
                "code": "method not allowed",
                "title": "The SUBSCRIBE method is not supported",
                "source": {"method": "SUBSCRIBE"},
            },
        }
    ]
    assert client.close_code == CLOSE_AUTH_FIRST
    assert world.factory.connections == set()


@pytest.mark.parametrize("token", ["", "nope", None, 42])
def test_a_bad_token_is_refused_and_the_connection_closed(world, token):
    client = world.connect()
    world.send(client, {"method": "auth", "payload": token})
    assert client.messages[0]["payload"]["status"] == "401 Unauthorized"
    assert client.messages[0]["payload"]["code"] == "unauthorized"
    assert client.messages[0]["payload"]["title"] == "The authentication has failed"
    assert client.close_code == CLOSE_UNAUTHORIZED


@pytest.mark.parametrize("garbage", [b"not json", b"[1,2]", b'"AUTH"', b"\xff\xfe"])
def test_garbage_first_is_an_unknown_method(world, garbage):
    client = world.connect()
    world.send(client, garbage, binary=True)
    assert client.messages[0]["payload"]["title"] == "The  method is not supported"
    assert client.close_code == CLOSE_AUTH_FIRST


def test_binary_frames_holding_json_are_read_as_the_reference_does(world):
    client = world.connect()
    world.send(
        client, json.dumps({"method": "AUTH", "payload": "all-events"}).encode(), True
    )
    world.subscribe(client, "io.cozy.events")
    world.publish("CREATED", "io.cozy.events", {"_id": "e1"})
    assert [m["event"] for m in client.messages] == ["CREATED"]


def test_errors_after_auth_keep_the_connection(world):
    client = world.connect()
    world.auth(client)
    world.auth(client)  # AUTH twice: not a method of an authenticated connection
    world.send(client, {"method": "PUBLISH", "payload": {"type": "io.cozy.events"}})
    world.send(client, {"method": "SUBSCRIBE", "payload": {}})
    world.subscribe(client, "io.cozy.contacts")
    world.subscribe(client, "io.cozy.events", method="UNSUBSCRIBE")  # not subscribed: fine
    assert [payload(m)["status"] for m in client.messages] == [
        "405 Method Not Allowed",
        "405 Method Not Allowed",
        "404 Page Not Found",
        "403 Forbidden",
    ]
    assert payload(client.messages[1])["title"] == "The PUBLISH method is not supported"
    assert payload(client.messages[2]) == {
        "status": "404 Page Not Found",
        "code": "page not found",
        "title": "The type parameter is mandatory for SUBSCRIBE",
        "source": {"method": "SUBSCRIBE", "payload": {"type": "", "id": ""}},
    }
    assert payload(client.messages[3]) == {
        "status": "403 Forbidden",
        "code": "forbidden",
        "title": "The application can't subscribe to io.cozy.contacts",
        "source": {
            "method": "SUBSCRIBE",
            "payload": {"type": "io.cozy.contacts", "id": ""},
        },
    }
    assert client.close_code is None
    world.subscribe(client, "io.cozy.events")
    world.publish("CREATED", "io.cozy.events", {"_id": "still-served"})
    assert payload(client.messages[-1])["id"] == "still-served"


@pytest.mark.parametrize(
    "message",
    [
        b"{oops",
        b"[]",
        b'{"method": "SUBSCRIBE", "payload": "io.cozy.events"}',
        b'{"method": 3}',
        b'{"method": "SUBSCRIBE", "payload": {"type": 5}}',
    ],
)
def test_after_auth_what_is_not_a_command_closes(world, message):
    client = world.connect()
    world.auth(client)
    world.subscribe(client, "io.cozy.events")
    world.send(client, message)
    assert client.close_code == CLOSE_BAD_MESSAGE
    assert world.fanout.topics() == 0


def test_an_id_of_the_values_may_be_watched_not_the_doctype(world):
    client = world.connect()
    world.auth(client, "one-note")
    world.subscribe(client, "io.cozy.notes")
    world.subscribe(client, "io.cozy.notes", "note-2")
    world.subscribe(client, "io.cozy.notes", "note-1")
    world.publish("UPDATED", "io.cozy.notes", {"_id": "note-1"})
    world.publish("UPDATED", "io.cozy.notes", {"_id": "note-2"})
    assert [m["event"] for m in client.messages] == ["error", "error", "UPDATED"]
    assert payload(client.messages[2])["id"] == "note-1"


def test_selector_rules_are_checked_on_every_event(world):
    client = world.connect()
    world.auth(client, "tagged")
    world.subscribe(client, "io.cozy.files")  # the whole doctype: no
    world.subscribe(client, "io.cozy.files", "f1")  # maybe: each event says
    world.publish("CREATED", "io.cozy.files", {"_id": "f1", "tags": ["work", "x"]})
    world.publish("UPDATED", "io.cozy.files", {"_id": "f1", "tags": ["home"]})
    world.publish("UPDATED", "io.cozy.files", {"_id": "f1", "tags": ["work"], "v": 3})
    world.publish("DELETED", "io.cozy.files", {"_id": "f1", "_deleted": True})
    assert client.messages[0]["payload"]["status"] == "403 Forbidden"
    assert [(m["event"], payload(m)["doc"].get("v")) for m in client.messages[1:]] == [
        ("CREATED", None),
        ("UPDATED", 3),
    ]


def test_the_reference_special_doctypes(world):
    client = world.connect()
    world.auth(client, "thumbs")
    world.subscribe(client, "io.cozy.files.thumbnails")  # needs io.cozy.files
    world.subscribe(client, "io.cozy.notes.events", "n1")  # idem
    world.subscribe(client, "io.cozy.auth.confirmations")  # free for all
    world.subscribe(client, "io.cozy.sharings.initial_sync")  # idem
    world.subscribe(client, "io.cozy.settings", "io.cozy.settings.passphrase")  # no
    assert [payload(m)["source"]["payload"]["type"] for m in client.messages] == [
        "io.cozy.settings"
    ]
    other = world.connect()
    world.auth(other, "all-events")  # holds io.cozy.settings
    world.subscribe(other, "io.cozy.settings", "io.cozy.settings.passphrase")
    world.subscribe(other, "io.cozy.files.thumbnails")
    assert [payload(m)["source"]["payload"]["type"] for m in other.messages] == [
        "io.cozy.files.thumbnails"
    ]
    world.fanout.notify(ALICE, "io.cozy.files.thumbnails", "f1", {"format": "small"})
    world.fanout.notify(
        ALICE, "io.cozy.settings", "io.cozy.settings.passphrase", {"salt": "x"}
    )
    world.flush()
    assert payload(client.messages[-1])["doc"] == {"format": "small"}
    assert payload(other.messages[-1])["id"] == "io.cozy.settings.passphrase"


def test_a_message_too_big_closes_with_1009(clock):
    world = World(clock, max_message_size=64)
    client = world.connect()
    world.auth(client)
    world.send(client, {"method": "SUBSCRIBE", "payload": {"type": "x" * 100}})
    assert client.close_code == CLOSE_TOO_BIG
    assert world.factory.connections == set()


def test_a_flood_closes_with_4429(clock):
    world = World(clock, burst=5, messages_per_second=1)
    client = world.connect()
    world.auth(client)
    for i in range(4):
        world.subscribe(client, f"io.cozy.events{i}")
    assert client.close_code is None
    world.subscribe(client, "io.cozy.events")
    assert client.close_code == CLOSE_FLOOD
    assert world.fanout.topics() == 0


def test_the_rate_refills_with_time(clock):
    world = World(clock, burst=2, messages_per_second=1)
    client = world.connect()
    world.auth(client)
    for _ in range(5):
        world.subscribe(client, "io.cozy.events")
        clock.advance(1)
    assert client.close_code is None
    world.close_all()


def test_subscriptions_per_connection_are_limited(clock):
    world = World(clock, max_subscriptions=3)
    client = world.connect()
    world.auth(client)
    for i in range(4):
        world.subscribe(client, "io.cozy.events", f"e{i}")
    assert [m["event"] for m in client.messages] == ["error"]
    assert payload(client.messages[0])["status"] == "429 Too Many Requests"
    assert world.fanout.listeners(ALICE, "io.cozy.events") == 3
    world.close_all()
    assert world.fanout.topics() == 0


def test_no_auth_in_time_closes(world):
    client = world.connect()
    world.clock.advance(59)
    world.flush()
    assert client.close_code is None
    world.clock.advance(2)
    world.flush()
    assert client.close_code == CLOSE_AUTH_TIMEOUT


def test_a_reader_too_slow_is_closed_with_1013(clock):
    world = World(clock, max_queue=3)
    slow, fast = world.connect(), world.connect()
    for client in (slow, fast):
        world.auth(client)
        world.subscribe(client, "io.cozy.events")
    slow.server.transport_full()  # its send buffer is full (the transport says so)
    for i in range(3):
        world.publish("CREATED", "io.cozy.events", {"_id": f"e{i}"})
    assert slow.messages == [] and slow.close_code is None
    world.publish("CREATED", "io.cozy.events", {"_id": "e3"})
    assert slow.close_code == CLOSE_TOO_SLOW
    assert [payload(m)["id"] for m in fast.messages] == ["e0", "e1", "e2", "e3"]
    assert world.fanout.listeners(ALICE, "io.cozy.events") == 1


def test_queued_events_go_out_when_the_buffer_drains(clock):
    world = World(clock, max_queue=10)
    client = world.connect()
    world.auth(client)
    world.subscribe(client, "io.cozy.events")
    client.server.transport_full()
    for i in range(3):
        world.publish("CREATED", "io.cozy.events", {"_id": f"e{i}"})
    assert client.messages == []
    client.server.transport_drained()
    world.flush()
    assert [payload(m)["id"] for m in client.messages] == ["e0", "e1", "e2"]
    world.close_all()


def test_a_send_buffer_full_for_too_long_closes(clock):
    world = World(clock, write_timeout=10)
    client = world.connect()
    world.auth(client)
    client.server.transport_full()
    clock.advance(9)
    world.flush()
    assert client.close_code is None
    clock.advance(2)
    world.flush()
    assert client.close_code == CLOSE_TOO_SLOW


def test_a_closed_connection_leaves_nothing_behind(world):
    clients = [world.connect() for _ in range(3)]
    for client in clients:
        world.auth(client)
        world.subscribe(client, "io.cozy.events")
        world.subscribe(client, "io.cozy.events", "e1")
    assert len(world.factory.connections) == 3
    clients[0].sendClose(1000)
    clients[1].dropConnection(abort=True)
    world.flush()
    assert world.fanout.listeners(ALICE, "io.cozy.events") == 2
    assert len(world.factory.connections) == 1
    d = world.factory.close_all()
    world.flush()
    assert clients[2].close_code == CLOSE_GOING_AWAY
    assert d.called
    assert world.fanout.topics() == 0
    assert not world.hub.has_subscribers(ALICE, "io.cozy.events")


def test_a_failing_authentication_backend_closes_cleanly(clock):
    world = World(clock)
    server = world.factory.connection(
        None, instance=ALICE, domain=ALICE, authenticate=lambda token: defer.fail(OSError())
    )
    del server  # (built through the factory: the next connection is checked)

    async def broken(token):
        raise RuntimeError("storage down")

    client_factory = WebSocketClientFactory("ws://alice.cozy.test/realtime/")
    client_factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    client = Client()
    client.factory = client_factory
    server = world.factory.connection(
        None, instance=ALICE, domain=ALICE, authenticate=broken
    )
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
        clock=clock,
    )
    client.sendMessage(b'{"method": "AUTH", "payload": "x"}')
    pump.flush()
    assert client.close_code == 1011
