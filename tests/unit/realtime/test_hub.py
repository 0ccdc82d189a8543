"""The in-process event hub."""

import pytest
from twisted.internet import defer

from cozyd.instance.model import Instance
from cozyd.realtime.hub import CREATED, DELETED, UPDATED, EventHub, instance_key, make_event


def event(verb=CREATED, doctype="io.cozy.events", doc_id="a"):
    return make_event(verb, doctype, {"_id": doc_id, "_rev": "1-x", "n": 1})


def test_doctype_and_all_subscribers_get_events_of_their_instance_only():
    hub = EventHub()
    seen = {"events": [], "all": [], "bob": [], "other": []}
    hub.subscribe("alice", "io.cozy.events", seen["events"].append)
    hub.subscribe("alice", None, seen["all"].append)
    hub.subscribe("bob", None, seen["bob"].append)
    hub.subscribe("alice", "io.cozy.other", seen["other"].append)
    hub.publish("alice", event())
    hub.publish("alice", event(UPDATED, "io.cozy.notes", "b"))
    assert [e["id"] for e in seen["events"]] == ["a"]
    assert [(e["verb"], e["doctype"]) for e in seen["all"]] == [
        (CREATED, "io.cozy.events"),
        (UPDATED, "io.cozy.notes"),
    ]
    assert seen["bob"] == [] and seen["other"] == []
    assert seen["events"][0] == {
        "verb": CREATED,
        "doctype": "io.cozy.events",
        "id": "a",
        "doc": {"_id": "a", "_rev": "1-x", "n": 1},
    }


def test_unsubscribe_stops_delivery_and_is_idempotent():
    hub = EventHub()
    got = []
    first = hub.subscribe("alice", "io.cozy.events", got.append)
    second = hub.subscribe("alice", "io.cozy.events", got.append)  # same callback twice
    hub.publish("alice", event())
    assert len(got) == 2
    first()
    first()
    hub.publish("alice", event())
    assert len(got) == 3
    second()
    assert not hub.has_subscribers("alice", "io.cozy.events")
    hub.publish("alice", event())
    assert len(got) == 3


def test_a_failing_subscriber_does_not_stop_the_others(caplog):
    hub = EventHub()
    got = []

    def broken(_event):
        raise RuntimeError("boom")

    hub.subscribe("alice", None, broken)
    hub.subscribe("alice", None, got.append)
    hub.publish("alice", event(DELETED))
    assert [e["verb"] for e in got] == [DELETED]


def test_async_subscribers_run_and_their_failures_are_contained():
    hub = EventHub()
    waiting = defer.Deferred()
    got = []

    async def slow(e):
        got.append(await waiting)

    async def failing(e):
        raise RuntimeError("late boom")

    hub.subscribe("alice", None, slow)
    hub.subscribe("alice", None, failing)
    hub.publish("alice", event())
    waiting.callback("done")
    assert got == ["done"]


def test_subscribers_get_a_copy():
    hub = EventHub()
    got = []
    hub.subscribe("alice", None, got.append)
    doc = {"_id": "a", "_rev": "1-x", "tags": ["x"]}
    hub.publish_doc("alice", CREATED, "io.cozy.events", doc)
    doc["tags"].append("y")
    assert got[0]["doc"]["tags"] == ["x"]


class CountsCopies:
    """A document value that records each deep copy made of it."""

    def __init__(self, copies):
        self.copies = copies

    def __deepcopy__(self, memo):
        self.copies.append(self)
        return CountsCopies(self.copies)


def test_publish_doc_builds_nothing_without_subscribers():
    hub = EventHub()
    copies = []
    doc = {"_id": "a", "_rev": "1-x", "value": CountsCopies(copies)}
    hub.publish_doc("alice", CREATED, "io.cozy.events", doc)
    # Listeners of another doctype or another instance do not count.
    hub.subscribe("alice", "io.cozy.notes", lambda e: None)
    hub.subscribe("bob", None, lambda e: None)
    hub.publish_doc("alice", CREATED, "io.cozy.events", doc)
    assert copies == []
    # With listeners, the event is copied once, however many they are.
    got = []
    hub.subscribe("alice", "io.cozy.events", got.append)
    hub.subscribe("alice", None, got.append)
    hub.publish_doc("alice", CREATED, "io.cozy.events", doc)
    assert len(copies) == 1 and len(got) == 2
    assert got[0] is got[1] and got[0]["doc"]["value"] is not doc["value"]


def test_instances_are_keyed_by_prefix():
    instance = Instance.new("alice.cozy.test")
    assert instance_key(instance) == instance.prefix
    hub = EventHub()
    got = []
    hub.subscribe(instance, None, got.append)
    hub.publish(instance.prefix, event())
    assert len(got) == 1
    with pytest.raises(TypeError):
        instance_key(42)
    with pytest.raises(ValueError):
        make_event("EXPLODED", "io.cozy.events", {"_id": "a"})
