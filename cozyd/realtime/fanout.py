"""Who listens to what over the websockets, and the delivery of events to them.

A *topic* is one doctype of one instance (its key, as ``hub.instance_key``
gives it) with at least one websocket subscriber: some subscribe to the
whole doctype, others watch some ids. A topic listens to the node's
``EventHub`` while it has subscribers, and only then (the hub builds no
event for a doctype nobody listens to).

Events reach a topic from three places:

- this node's writes, through the hub (``EventHub.subscribe``);
- ``NOTIFIED`` events (``POST /realtime/:doctype/:id``), through
  ``notify``: they are not document writes, so they never go through the
  hub (``@event`` triggers must not see them, as in cozy-stack);
- other nodes' writes and notifications, through ``deliver`` (the Redis
  bridge of ``cozyd.realtime.redis`` calls it).

``notify`` and the hub's firehose are what the bridge forwards to the other
nodes (``forward_to``).

Events are delivered in the order they come, on the reactor's next turns
in the daemon (``schedule``), ``CHUNK`` messages a turn: a write answers its
client, and the other sockets are served, while its event goes out to
thousands of websockets. An event is encoded once for all the
subscribers it reaches: the topic
hands each subscriber the same ``Outgoing`` (the frame's JSON, built on
first use). Each subscriber decides whether it may read the document
(``Subscriber.push``); one that fails is logged and the others still get
the event.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.logger import Logger

from cozyd.realtime.hub import Event, EventHub, instance_key

log = Logger()

NOTIFIED = "NOTIFIED"
#: Websocket messages written in one turn of the reactor, at most.
CHUNK = 1000


class Outgoing:
    """One event as the websockets send it, encoded once (lazily)."""

    __slots__ = ("_payload", "event", "prepared")

    def __init__(self, event: Event):
        self.event = event
        self._payload: bytes | None = None
        #: A transport-level cache (the websocket frame, built once).
        self.prepared: Any = None

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            event = self.event
            message = {
                "event": event["verb"],
                "payload": {
                    "type": event["doctype"],
                    "id": event["id"],
                    "doc": event["doc"],
                },
            }
            self._payload = json.dumps(message, separators=(",", ":")).encode("utf-8")
        return self._payload


class Subscriber(Protocol):
    def push(self, outgoing: Outgoing, watched: bool) -> None:
        """Deliver one event; ``watched`` says it came through an id
        subscription (rather than one on the whole doctype)."""


class Topic:
    __slots__ = ("by_id", "detach", "doctype", "key", "whole")

    def __init__(self, key: str, doctype: str):
        self.key = key
        self.doctype = doctype
        self.whole: set[Subscriber] = set()
        self.by_id: dict[str, set[Subscriber]] = {}
        self.detach: Callable[[], None] | None = None

    @property
    def empty(self) -> bool:
        return not self.whole and not self.by_id


class Fanout:
    def __init__(
        self, hub: EventHub, *, schedule: Callable[[Callable[[], Any]], Any] | None = None
    ):
        """``schedule(f)`` runs ``f`` on a next turn of the reactor (the
        daemon's ``callLater(0, f)``): a write then answers its client
        before its event is written to thousands of websockets. None:
        delivered at once, inside the publish."""
        self._hub = hub
        self._schedule = schedule
        self._pending: collections.deque[list[Any]] = collections.deque()
        self._pumping = False
        self._topics: dict[tuple[str, str], Topic] = {}
        self._forwarders: list[Callable[[str, Event], Any]] = []
        #: Events delivered, websocket messages pushed (for the metrics).
        self.events = 0
        self.pushed = 0

    # -- subscriptions ----------------------------------------------------------
    def subscribe(
        self, instance: Any, doctype: str, doc_id: str | None, subscriber: Subscriber
    ) -> None:
        """``subscriber`` gets the events of ``doctype`` (only those of
        ``doc_id`` unless None) of ``instance``. Idempotent."""
        key = instance_key(instance)
        topic = self._topics.get((key, doctype))
        if topic is None:
            topic = self._topics[(key, doctype)] = Topic(key, doctype)
            topic.detach = self._hub.subscribe(
                key, doctype, lambda event, topic=topic: self._dispatch(topic, event)
            )
        if doc_id is None:
            topic.whole.add(subscriber)
        else:
            topic.by_id.setdefault(doc_id, set()).add(subscriber)

    def unsubscribe(
        self, instance: Any, doctype: str, doc_id: str | None, subscriber: Subscriber
    ) -> None:
        key = instance_key(instance)
        topic = self._topics.get((key, doctype))
        if topic is None:
            return
        if doc_id is None:
            topic.whole.discard(subscriber)
        else:
            watchers = topic.by_id.get(doc_id)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del topic.by_id[doc_id]
        if topic.empty:
            del self._topics[(key, doctype)]
            if topic.detach is not None:
                topic.detach()

    def unsubscribe_all(
        self,
        instance: Any,
        subscriptions: Iterable[tuple[str, str | None]],
        subscriber: Subscriber,
    ) -> None:
        for doctype, doc_id in list(subscriptions):
            self.unsubscribe(instance, doctype, doc_id, subscriber)

    def topics(self) -> int:
        return len(self._topics)

    def listeners(self, instance: Any, doctype: str) -> int:
        topic = self._topics.get((instance_key(instance), doctype))
        if topic is None:
            return 0
        return len(topic.whole) + sum(len(s) for s in topic.by_id.values())

    # -- events -----------------------------------------------------------------
    def forward_to(self, forward: Callable[[str, Event], Any]) -> Callable[[], None]:
        """Also give ``forward(key, event)`` every ``NOTIFIED`` event made
        here (the bridge to other nodes). Returns the function that stops it."""
        self._forwarders.append(forward)

        def stop() -> None:
            if forward in self._forwarders:
                self._forwarders.remove(forward)

        return stop

    def notify(self, instance: Any, doctype: str, doc_id: str, doc: dict[str, Any]) -> None:
        """A ``NOTIFIED`` event: to this node's subscribers and the others'."""
        key = instance_key(instance)
        event: Event = {"verb": NOTIFIED, "doctype": doctype, "id": doc_id, "doc": doc}
        self.deliver(key, event)
        for forward in list(self._forwarders):
            try:
                forward(key, event)
            except Exception:
                log.failure("forwarding a NOTIFIED event of {doctype}", doctype=doctype)

    def deliver(self, key: str, event: Event) -> None:
        """An event of another node (or a notification): to the subscribers
        of its topic here."""
        topic = self._topics.get((key, event.get("doctype")))
        if topic is not None:
            self._dispatch(topic, event)

    def _dispatch(self, topic: Topic, event: Event) -> None:
        self.events += 1
        outgoing = Outgoing(event)
        whole = topic.whole
        # The subscribers of the whole doctype, then those watching this id
        # only (checked on each event): one list, nothing made per
        # subscriber (10,000 tuples an event, kept while the event goes
        # out, were enough to make the collector's full passes the tail).
        targets: list[Subscriber] = list(whole)
        split = len(targets)
        doc_id = event.get("id")
        watchers = topic.by_id.get(doc_id) if isinstance(doc_id, str) else None
        if watchers:
            targets += [s for s in watchers if s not in whole]
        if self._schedule is None:
            self._push_range(outgoing, targets, split, 0, len(targets))
            return
        self._pending.append([outgoing, targets, split, 0])
        if not self._pumping:
            self._pumping = True
            # A turn of I/O first: the write whose event this is gets its
            # answer out before the fan-out's first chunk.
            self._schedule(lambda: self._schedule(self._pump))

    def _pump(self) -> None:
        """Deliver up to ``CHUNK`` messages, then let the reactor do its
        I/O (answers, other sockets) before the next ones. Events go out
        one after the other, so each subscriber gets them in order."""
        budget = CHUNK
        pending = self._pending
        while pending and budget > 0:
            entry = pending[0]
            outgoing, targets, split, start = entry
            stop = min(len(targets), start + budget)
            self._push_range(outgoing, targets, split, start, stop)
            budget -= stop - start
            if stop == len(targets):
                pending.popleft()
            else:
                entry[3] = stop
        if pending:
            assert self._schedule is not None
            self._schedule(self._pump)
        else:
            self._pumping = False

    def _push_range(
        self,
        outgoing: Outgoing,
        targets: list[Subscriber],
        split: int,
        start: int,
        stop: int,
    ) -> None:
        """Push to ``targets[start:stop]``; those from ``split`` on came
        through an id subscription."""
        for index in range(start, stop):
            subscriber = targets[index]
            try:
                subscriber.push(outgoing, index >= split)
            except Exception:
                log.failure(
                    "a realtime subscriber failed on {verb} {doctype}",
                    verb=outgoing.event.get("verb"),
                    doctype=outgoing.event.get("doctype"),
                )
        self.pushed += stop - start
