"""Topics of the websockets, fed by the hub, notifications and other nodes."""

from __future__ import annotations

import json

from cozyd.realtime.fanout import Fanout, Outgoing
from cozyd.realtime.hub import EventHub, make_event
from cozyd.realtime.redis import decode, encode


class Recorder:
    def __init__(self):
        self.got = []

    def push(self, outgoing, watched):
        self.got.append((json.loads(outgoing.payload), watched))


def test_topics_listen_to_the_hub_only_while_they_have_subscribers():
    hub = EventHub()
    fanout = Fanout(hub)
    sub = Recorder()
    assert not hub.has_subscribers("alice", "io.cozy.events")
    fanout.subscribe("alice", "io.cozy.events", None, sub)
    fanout.subscribe("alice", "io.cozy.events", "e1", sub)
    assert hub.has_subscribers("alice", "io.cozy.events")
    hub.publish("alice", make_event("CREATED", "io.cozy.events", {"_id": "e1"}))
    assert len(sub.got) == 1 and sub.got[0][1] is False  # once, as a type subscriber
    fanout.unsubscribe("alice", "io.cozy.events", None, sub)
    hub.publish("alice", make_event("UPDATED", "io.cozy.events", {"_id": "e1"}))
    assert sub.got[-1][1] is True and len(sub.got) == 2
    fanout.unsubscribe("alice", "io.cozy.events", "e1", sub)
    assert fanout.topics() == 0
    assert not hub.has_subscribers("alice", "io.cozy.events")


def test_an_event_is_encoded_once_for_every_subscriber():
    hub = EventHub()
    fanout = Fanout(hub)
    seen = []

    class Same:
        def push(self, outgoing, watched):
            seen.append(outgoing)

    for _ in range(3):
        fanout.subscribe("alice", "io.cozy.events", None, Same())
    hub.publish("alice", make_event("CREATED", "io.cozy.events", {"_id": "e1"}))
    assert len(seen) == 3 and len({id(o) for o in seen}) == 1
    assert seen[0].payload is seen[1].payload


def test_notify_goes_to_subscribers_and_forwarders_not_the_hub():
    hub = EventHub()
    fanout = Fanout(hub)
    triggers, forwarded, sub = [], [], Recorder()
    hub.subscribe("alice", None, triggers.append)
    stop = fanout.forward_to(lambda key, event: forwarded.append((key, event)))
    fanout.subscribe("alice", "io.cozy.jobs", "j1", sub)
    fanout.notify("alice", "io.cozy.jobs", "j1", {"_id": "j1", "imported": 10})
    assert triggers == []
    assert forwarded == [
        (
            "alice",
            {
                "verb": "NOTIFIED",
                "doctype": "io.cozy.jobs",
                "id": "j1",
                "doc": {"_id": "j1", "imported": 10},
            },
        )
    ]
    assert sub.got[0][0] == {
        "event": "NOTIFIED",
        "payload": {
            "type": "io.cozy.jobs",
            "id": "j1",
            "doc": {"_id": "j1", "imported": 10},
        },
    }
    stop()
    fanout.notify("alice", "io.cozy.jobs", "j1", {"_id": "j1"})
    assert len(forwarded) == 1 and len(sub.got) == 2


def test_deliver_reaches_the_instance_topic_only():
    fanout = Fanout(EventHub())
    alice, bob = Recorder(), Recorder()
    fanout.subscribe("alice", "io.cozy.events", None, alice)
    fanout.subscribe("bob", "io.cozy.events", None, bob)
    fanout.deliver("alice", make_event("UPDATED", "io.cozy.events", {"_id": "x"}))
    fanout.deliver("carol", make_event("UPDATED", "io.cozy.events", {"_id": "y"}))
    assert len(alice.got) == 1 and bob.got == []


def test_a_failing_subscriber_does_not_stop_the_others(caplog):
    fanout = Fanout(EventHub())

    class Broken:
        def push(self, outgoing, watched):
            raise RuntimeError("boom")

    good = Recorder()
    fanout.subscribe("alice", "io.cozy.events", None, Broken())
    fanout.subscribe("alice", "io.cozy.events", None, good)
    fanout.deliver("alice", make_event("UPDATED", "io.cozy.events", {"_id": "x"}))
    assert len(good.got) == 1


def test_the_firehose_sees_every_instance():
    hub = EventHub()
    seen = []
    stop = hub.subscribe_all(lambda key, event: seen.append((key, event["id"])))
    assert hub.has_subscribers("anyone", "io.cozy.x")
    hub.publish("alice", make_event("CREATED", "io.cozy.a", {"_id": "1"}))
    hub.publish("global", make_event("CREATED", "instances", {"_id": "2"}))
    stop()
    hub.publish("alice", make_event("CREATED", "io.cozy.a", {"_id": "3"}))
    assert seen == [("alice", "1"), ("global", "2")]
    assert not hub.has_subscribers("anyone", "io.cozy.x")


def test_redis_messages_round_trip_and_garbage_is_ignored():
    event = make_event("UPDATED", "io.cozy.events", {"_id": "e1", "_rev": "2-x", "é": [1]})
    message = encode("node-a", "alice", event)
    assert message.startswith("io.cozy.events,{")
    assert decode(message) == ("node-a", "alice", event)
    assert decode(message.encode()) == ("node-a", "alice", event)
    for garbage in ("", "no comma", "x,{not json", "x,[1]", 'x,{"node": "a"}', "x,null"):
        assert decode(garbage) is None


def test_outgoing_payload_is_the_reference_frame():
    out = Outgoing(make_event("DELETED", "io.cozy.events", {"_id": "e1", "_rev": "3-z"}))
    assert json.loads(out.payload) == {
        "event": "DELETED",
        "payload": {
            "type": "io.cozy.events",
            "id": "e1",
            "doc": {"_id": "e1", "_rev": "3-z"},
        },
    }


def test_with_a_scheduler_events_go_out_on_a_next_turn_in_order(clock):
    hub = EventHub()
    fanout = Fanout(hub, schedule=lambda f: clock.callLater(0, f))
    sub = Recorder()
    fanout.subscribe("alice", "io.cozy.events", None, sub)
    hub.publish("alice", make_event("CREATED", "io.cozy.events", {"_id": "1"}))
    fanout.notify("alice", "io.cozy.events", "2", {"_id": "2"})
    assert sub.got == []  # the writer's answer goes first
    clock.advance(0)
    assert [m["payload"]["id"] for m, _ in sub.got] == ["1", "2"]


def test_large_fan_outs_go_in_chunks_and_keep_each_subscribers_order(monkeypatch):
    from cozyd.realtime import fanout as module

    monkeypatch.setattr(module, "CHUNK", 3)
    turns = []  # what the reactor would run on its next turns
    hub = EventHub()
    fanout = Fanout(hub, schedule=turns.append)
    subs = [Recorder() for _ in range(5)]
    for sub in subs:
        fanout.subscribe("alice", "io.cozy.events", None, sub)
    hub.publish("alice", make_event("CREATED", "io.cozy.events", {"_id": "1"}))
    hub.publish("alice", make_event("UPDATED", "io.cozy.events", {"_id": "1"}))
    assert len(turns) == 1
    turns.pop(0)()
    assert sum(len(s.got) for s in subs) == 0  # a turn of I/O first
    turns.pop(0)()
    assert sum(len(s.got) for s in subs) == 3  # then one chunk a turn
    while turns:
        turns.pop(0)()
    for sub in subs:
        assert [m["event"] for m, _ in sub.got] == ["CREATED", "UPDATED"]
