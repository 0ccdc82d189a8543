"""The in-process event hub: who wrote what, for realtime and triggers.

Every document write made through cozyd is published here as an event, by
the document layer (``cozyd.documents``) and by nothing else::

    {"verb": "CREATED" | "UPDATED" | "DELETED", "doctype": "io.cozy.x",
     "id": "<doc id>", "doc": {... the document, with _id and _rev ...}}

Events come once per changed document, after the engine stored it; design
and ``_local/`` documents are never published. The databases shared by all
instances (``global/instances``, ``global/domain_aliases``) publish under the
key ``"global"``.

Subscribers listen to one instance, either to one doctype or to all of
them (``doctype=None``). Instances are told apart by a key: an object with
a ``prefix`` attribute (an ``Instance``) is keyed by its prefix, a string
is used as it is (a prefix or a domain, as long as publishers and
subscribers agree).

Callbacks run synchronously, in the order they subscribed, when the event
is published. They must be quick (queue a message, schedule a job); one
that raises is logged and does not stop the others nor the write that
published. A callback may return an awaitable: it is run to completion in
the background and a failure is logged.

The hub holds no reference to documents after a publish: each event is
delivered as a deep copy made once per publish, which subscribers must not
modify (they share it).

``subscribe_all(callback)`` listens to every instance at once (the
"firehose": ``callback(key, event)``), for whoever forwards this node's
events elsewhere (the Redis bridge of ``cozyd.realtime.redis``). The hub
only ever carries this node's own writes: events coming from other nodes
go straight to the websockets (``cozyd.realtime.fanout``), so that a
trigger fires once, on the node that wrote.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

CREATED = "CREATED"
UPDATED = "UPDATED"
DELETED = "DELETED"
VERBS = frozenset({CREATED, UPDATED, DELETED, "NOTIFIED"})

Event = dict[str, Any]
Callback = Callable[[Event], Any]


def instance_key(instance: Any) -> str:
    """The key of an instance: its prefix, or the string given."""
    if isinstance(instance, str):
        return instance
    prefix = getattr(instance, "prefix", None)
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(f"cannot key events by {instance!r}")
    return prefix


def make_event(verb: str, doctype: str, doc: dict[str, Any]) -> Event:
    if verb not in VERBS:
        raise ValueError(f"unknown event verb {verb!r}")
    return {"verb": verb, "doctype": doctype, "id": doc.get("_id"), "doc": doc}


class EventHub:
    def __init__(self) -> None:
        # instance key -> doctype (or None for all) -> callbacks in order
        self._subscribers: dict[str, dict[str | None, list[Callback]]] = {}
        # callbacks of every instance's events: callback(key, event)
        self._firehose: list[Callable[[str, Event], Any]] = []

    def subscribe(
        self, instance: Any, doctype: str | None, callback: Callback
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``instance`` (of
        ``doctype`` only, unless None). Returns the function that
        unsubscribes (idempotent)."""
        key = instance_key(instance)
        callbacks = self._subscribers.setdefault(key, {}).setdefault(doctype, [])
        # A wrapper of our own: the same callback may be subscribed twice and
        # each unsubscribe removes its own subscription.
        entry: list[Callback] = [callback]

        def deliver(event: Event) -> Any:
            return entry[0](event)

        callbacks.append(deliver)

        def unsubscribe() -> None:
            by_doctype = self._subscribers.get(key)
            if by_doctype is None:
                return
            registered = by_doctype.get(doctype)
            if registered is not None and deliver in registered:
                registered.remove(deliver)
                if not registered:
                    del by_doctype[doctype]
                if not by_doctype:
                    del self._subscribers[key]

        return unsubscribe

    def subscribe_all(self, callback: Callable[[str, Event], Any]) -> Callable[[], None]:
        """Call ``callback(key, event)`` for every event of every instance
        (``key`` as ``instance_key`` gives it). Returns the unsubscribe."""
        entry: list[Callable[[str, Event], Any]] = [callback]

        def deliver(key: str, event: Event) -> Any:
            return entry[0](key, event)

        self._firehose.append(deliver)

        def unsubscribe() -> None:
            if deliver in self._firehose:
                self._firehose.remove(deliver)

        return unsubscribe

    def has_subscribers(self, instance: Any, doctype: str) -> bool:
        """Would an event of ``doctype`` reach anyone? (Publishers may skip
        building events nobody listens to.)"""
        if self._firehose:
            return True
        by_doctype = self._subscribers.get(instance_key(instance))
        return bool(by_doctype) and (doctype in by_doctype or None in by_doctype)

    def publish(self, instance: Any, event: Event) -> None:
        """Deliver ``event`` to the instance's subscribers of its doctype and
        to those of every doctype."""
        key = instance_key(instance)
        by_doctype = self._subscribers.get(key)
        targets: list[Callable[[Event], Any]] = []
        if by_doctype:
            targets = [*by_doctype.get(event["doctype"], ()), *by_doctype.get(None, ())]
        if self._firehose:
            targets += [functools.partial(deliver, key) for deliver in self._firehose]
        if not targets:
            return
        delivered = copy.deepcopy(event)
        for deliver in targets:
            try:
                result = deliver(delivered)
            except Exception:
                log.failure(
                    "an event subscriber failed on {verb} {doctype}",
                    verb=event.get("verb"),
                    doctype=event.get("doctype"),
                )
                continue
            if inspect.isawaitable(result):
                d = defer.ensureDeferred(result)
                verb = event.get("verb")
                d.addErrback(
                    lambda failure, verb=verb: log.failure(
                        "an event subscriber failed on {verb}", failure, verb=verb
                    )
                )

    def publish_doc(
        self, instance: Any, verb: str, doctype: str, doc: dict[str, Any]
    ) -> None:
        """Publish a write of ``doc`` (skipped when nobody listens)."""
        if self.has_subscribers(instance, doctype):
            self.publish(instance, make_event(verb, doctype, doc))
