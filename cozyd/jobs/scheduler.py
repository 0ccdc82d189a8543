"""The scheduler: triggers of ``io.cozy.triggers`` that make jobs.

::

    scheduler = Scheduler(jobs, instances, hub=hub, reactor=reactor)
    trigger = await scheduler.add(instance, {"type": "@every", "arguments": "1h",
                                             "worker": "log", "message": {}})
    scheduler.startService()      # loads every instance's triggers, fires them

Time triggers (``@at``, ``@in``, ``@every``, ``@cron``, ``@hourly``…) wait
on a timeline: on one node a heap and one reactor timer; with a shared
backend (Redis) a sorted set ``triggers`` that every node polls, where a
due trigger is moved atomically to ``scheduling`` by the node that takes
it, so one node only fires it. The job of a time slot has an id derived
from the trigger and the slot, so a slot can never make two jobs, not
after a restart nor on two nodes. At start, periodic triggers wait for
their next slot; one-shot triggers that came due while the daemon was down
fire once at once (and are deleted, as after every firing).

``@event`` triggers subscribe to the instance's event hub (every document
write of this node is published there); with many nodes each node sees
the writes it made, and learns the triggers other nodes add or delete
through the backend's broadcast. ``@webhook`` triggers fire on
``fire_webhook``, ``@client`` ones only on ``launch``. A ``debounce``
delays the job and folds the firings meanwhile into it (webhook payloads
become ``{"payloads": [...]}``).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from cozyd.documents import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    Documents,
    new_doc_id,
)
from cozyd.errors import BadRequest, NotFound, Unprocessable
from cozyd.jobs import model
from cozyd.jobs.system import JobSystem, UnknownWorker
from cozyd.jobs.triggers import Trigger, parse_trigger
from cozyd.realtime.hub import EventHub

log = Logger()

#: Seconds a node may hold a due trigger before another node takes it back.
SCHEDULING_TTL = 60.0
#: Seconds between two looks at the shared timeline.
SHARED_POLL = 0.05
BROADCAST = "triggers"
#: Documents whose selected values are remembered for ``!=`` rules.
SEEN_LIMIT = 10_000


class TriggerNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Trigger not found")


def slot_job_id(trigger_id: str, due: float) -> str:
    """The id of the job of one time slot of a trigger (never two jobs)."""
    digest = hashlib.sha256(f"{trigger_id}@{due:.3f}".encode()).hexdigest()
    return digest[:32]


def _member(instance: Any, trigger_id: str) -> str:
    return f"{instance.domain}/{trigger_id}"


class Scheduler(Service):
    name = "scheduler"

    def __init__(
        self,
        jobs: JobSystem,
        instances: Any,
        *,
        hub: EventHub,
        reactor: Any,
        seconds: Callable[[], float] | None = None,
    ):
        self.jobs = jobs
        self.documents: Documents = jobs.documents
        self.backend = jobs.backend
        self._instances = instances  # .get(domain) -> Instance | None, .list_all()
        self._hub = hub
        self._reactor = reactor
        self._seconds = seconds or reactor.seconds
        # (prefix, id) -> (instance, Trigger)
        self._triggers: dict[tuple[str, str], tuple[Any, Trigger]] = {}
        self._unsubscribe: dict[tuple[str, str], list[Callable[[], None]]] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._due: dict[tuple[str, str], float] = {}
        self._seq = itertools.count()
        self._timer: Any = None
        self._poller: Any = None
        self._debounced: dict[tuple[str, str], dict[str, Any]] = {}
        #: Selected values of documents seen by @event rules (for ``!=``).
        self._seen: dict[Any, dict[str, Any]] = {}
        self._inflight: set[defer.Deferred] = set()
        #: Worker name -> ``hook(manual=, trigger_state=) -> bool``: asked
        #: before a trigger queues a job of that worker (False: not queued).
        self._before_queue: dict[str, Callable[..., bool]] = {}
        #: Lateness of each firing (seconds after its due time), for the bench.
        self.lateness: list[float] = []
        if hasattr(self.backend, "on_broadcast"):
            self.backend.on_broadcast(BROADCAST, self._on_broadcast)

    # -- the documents ----------------------------------------------------------------
    async def add(
        self, instance: Any, request: dict[str, Any], *, created_by: str = ""
    ) -> dict[str, Any]:
        """Create a trigger from ``type``, ``arguments``, ``worker``,
        ``message``, ``debounce``, ``options``; its document."""
        now = self._seconds()
        stamp = model.rfc3339(now)
        kind = request.get("type")
        worker = request.get("worker") or ""
        if kind == "@client":
            worker = model.CLIENT_WORKER
        metadata: dict[str, Any] = {
            "doctypeVersion": "1",
            "metadataVersion": 1,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        if created_by:
            metadata["createdByApp"] = created_by
        doc = {
            "_id": new_doc_id(),
            "domain": instance.domain,
            "prefix": instance.prefix,
            "type": kind,
            "worker": worker,
            "arguments": request.get("arguments") or "",
            "debounce": request.get("debounce") or "",
            "options": request.get("options"),
            "message": request.get("message"),
            "cozyMetadata": metadata,
        }
        parse_trigger(doc, now=now)  # refuses bad arguments before anything is stored
        if not self.jobs.is_known(worker):
            raise UnknownWorker(worker)
        # (a past @at is accepted, as cozy-stack does: it fires at once)
        result = await self.documents.put(instance, model.TRIGGERS, doc, create_db=True)
        doc["_rev"] = result["rev"]
        await self._register(instance, parse_trigger(doc, now=now), fresh=True)
        await self._broadcast("add", instance, doc["_id"])
        return doc

    async def get(self, instance: Any, trigger_id: str) -> dict[str, Any]:
        try:
            return await self.documents.get(instance, model.TRIGGERS, trigger_id)
        except (DocNotFound, DatabaseNotFound):
            raise TriggerNotFound() from None

    async def all(self, instance: Any) -> list[dict[str, Any]]:
        try:
            rows = await self.documents.all_docs(
                instance, model.TRIGGERS, include_docs=True
            )
        except DatabaseNotFound:
            return []
        return [
            row["doc"]
            for row in rows.get("rows", [])
            if "doc" in row and not row["id"].startswith("_design/")
        ]

    async def state(self, instance: Any, trigger_id: str) -> dict[str, Any]:
        jobs = await self.jobs.jobs_of_trigger(instance, trigger_id)
        return model.trigger_state(trigger_id, jobs)

    async def delete(self, instance: Any, trigger_id: str) -> None:
        doc = await self.get(instance, trigger_id)
        await self.documents.delete(
            instance, model.TRIGGERS, trigger_id, doc["_rev"], doc=doc
        )
        await self._unregister(instance, trigger_id)
        await self._broadcast("delete", instance, trigger_id)

    async def patch(
        self,
        instance: Any,
        trigger_id: str,
        *,
        arguments: str | None = None,
        message: Any = None,
        has_message: bool = False,
    ) -> dict[str, Any]:
        doc = await self.get(instance, trigger_id)
        if arguments and doc.get("type") != "@cron":
            raise Unprocessable(
                "Only @cron triggers can be patched on their arguments",
                source={"pointer": "/data/attributes/Type"},
            )
        now = self._seconds()
        if arguments:
            parse_trigger({**doc, "arguments": arguments}, now=now)  # checks them
            doc["arguments"] = arguments
        if has_message:
            doc["message"] = message
        metadata = doc.get("cozyMetadata")
        if isinstance(metadata, dict):
            metadata["updatedAt"] = model.rfc3339(now)
        try:
            result = await self.documents.put(instance, model.TRIGGERS, doc)
        except DocConflict:
            raise BadRequest("the trigger changed meanwhile; try again") from None
        doc["_rev"] = result["rev"]
        await self._unregister(instance, trigger_id)
        await self._register(instance, parse_trigger(doc, now=now), fresh=True)
        await self._broadcast("add", instance, trigger_id)
        return doc

    # -- firing ------------------------------------------------------------------------
    def before_queue(self, worker: str, hook: Callable[..., bool]) -> None:
        """cozy-stack's BeforeHook: ``hook(manual=, trigger_state=)`` says
        whether a trigger's job for ``worker`` is queued (the konnectors':
        ``cozyd.konnectors.worker.should_queue``)."""
        self._before_queue[worker] = hook

    async def _queue(
        self, instance: Any, trigger: Trigger, *, manual: bool, **options: Any
    ) -> dict[str, Any] | None:
        """Push the trigger's job, unless its worker's hook says no."""
        hook = self._before_queue.get(trigger.worker)
        if hook is not None:
            state = await self.state(instance, trigger.id)
            if not hook(manual=manual, trigger_state=state):
                log.info(
                    "trigger {id} of {domain}: job not queued (last error {error})",
                    id=trigger.id,
                    domain=instance.domain,
                    error=state.get("last_error", ""),
                )
                return None
        return await self.jobs.push(
            instance,
            trigger.worker,
            trigger.doc.get("message"),
            manual=manual,
            **options,
            **self._job_args(trigger),
        )

    def _job_args(self, trigger: Trigger) -> dict[str, Any]:
        options = trigger.doc.get("options")
        return {
            "trigger_id": trigger.id,
            "max_exec_count": model.options_max_exec_count(options),
            "timeout": model.options_timeout(options),
        }

    async def launch(self, instance: Any, trigger_id: str) -> dict[str, Any]:
        """Run a trigger now, by hand: its job (``client`` jobs: running)."""
        doc = await self.get(instance, trigger_id)
        trigger = parse_trigger(doc, now=self._seconds())
        job = await self.jobs.push(
            instance,
            trigger.worker,
            doc.get("message"),
            manual=True,
            **self._job_args(trigger),
        )
        if trigger.worker == model.CLIENT_WORKER:
            job = await self.jobs.mark_running(instance, job)
        return job

    async def fire_webhook(
        self, instance: Any, trigger_id: str, payload: Any, *, manual: bool = False
    ) -> None:
        doc = await self.get(instance, trigger_id)
        if doc.get("type") != "@webhook":
            raise Unprocessable(
                "Not a webhook", source={"pointer": "/data/attributes/Type"}
            )
        trigger = parse_trigger(doc, now=self._seconds())
        await self._fire(instance, trigger, payload=payload, manual=manual)

    async def _fire(
        self,
        instance: Any,
        trigger: Trigger,
        *,
        due: float | None = None,
        event: Any = None,
        payload: Any = None,
        manual: bool = False,
    ) -> dict[str, Any] | None:
        key = (instance.prefix, trigger.id)
        if trigger.debounce > 0:
            pending = self._debounced.get(key)
            if pending is not None:
                pending["payloads"].append(payload)
                pending["event"] = event
                return None
            pending = {"payloads": [payload], "event": event, "manual": manual}
            self._debounced[key] = pending
            pending["timer"] = self._reactor.callLater(
                trigger.debounce, self._flush_debounced, instance, trigger, key
            )
            return None
        job_id = slot_job_id(trigger.id, due) if due is not None else None
        try:
            return await self._queue(
                instance,
                trigger,
                event=event,
                payload=payload,
                manual=manual,
                job_id=job_id,
            )
        except DocConflict:
            return None  # this slot made its job already (another node, a restart)

    def _flush_debounced(
        self, instance: Any, trigger: Trigger, key: tuple[str, str]
    ) -> None:
        pending = self._debounced.pop(key, None)
        if pending is None:
            return
        payloads = [p for p in pending["payloads"] if p is not None]
        payload = {"payloads": payloads} if trigger.type == "@webhook" else None
        d = defer.ensureDeferred(
            self._queue(
                instance,
                trigger,
                event=pending["event"],
                payload=payload,
                manual=pending["manual"],
                debounced=True,
            )
        )
        d.addErrback(lambda f: log.failure("debounced job of {id}", f, id=trigger.id))

    # -- registration ------------------------------------------------------------------
    async def _register(self, instance: Any, trigger: Trigger, *, fresh: bool) -> None:
        key = (instance.prefix, trigger.id)
        self._triggers[key] = (instance, trigger)
        if trigger.type == "@event":
            self._subscribe(instance, trigger)
        elif trigger.is_time:
            now = self._seconds()
            due = trigger.next_time(now)
            if due is not None:
                await self._plan(instance, trigger.id, due, fresh=fresh)

    def _subscribe(self, instance: Any, trigger: Trigger) -> None:
        key = (instance.prefix, trigger.id)
        for old in self._unsubscribe.pop(key, []):
            old()
        doctypes = {rule.doctype for rule in trigger.rules}

        def on_event(event: dict[str, Any]) -> Any:
            current = self._triggers.get(key)
            if current is None or not self.running:
                return None
            return self._on_event(current[0], current[1], event)

        self._unsubscribe[key] = [
            self._hub.subscribe(instance, doctype, on_event) for doctype in doctypes
        ]

    async def _on_event(
        self, instance: Any, trigger: Trigger, event: dict[str, Any]
    ) -> None:
        old = None
        selectors = {r.selector for r in trigger.rules if r.needs_old_doc}
        doc = event.get("doc") or {}
        seen_key = (instance.prefix, trigger.id, event.get("doctype"), doc.get("_id"))
        if selectors and event.get("verb") == "UPDATED":
            old = await self._previous(instance, event)
            if old is None and seen_key in self._seen:
                # The embedded engine keeps no old bodies: the values this
                # node saw last stand for the old document.
                old = self._seen[seen_key]
        if selectors:
            self._remember(seen_key, doc, selectors, deleted=event.get("verb") == "DELETED")
        if trigger.matches(event, old):
            await self._fire(instance, trigger, event=event)

    def _remember(
        self, key: Any, doc: dict[str, Any], selectors: set[str], *, deleted: bool
    ):
        self._seen.pop(key, None)
        if deleted:
            return
        remembered: dict[str, Any] = {}
        for selector in selectors:
            target = remembered
            parts = selector.split(".")
            value: Any = doc
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
        self._seen[key] = remembered
        while len(self._seen) > SEEN_LIMIT:
            self._seen.pop(next(iter(self._seen)))

    async def _previous(
        self, instance: Any, event: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The revision before the event's (for ``!=`` and selector rules)."""
        doc = event.get("doc") or {}
        try:
            current = await self.documents.get(
                instance, event["doctype"], doc["_id"], rev=doc["_rev"], revs=True
            )
            revisions = current.get("_revisions") or {}
            ids = revisions.get("ids") or []
            if len(ids) < 2:
                return None
            previous = f"{revisions['start'] - 1}-{ids[1]}"
            return await self.documents.get(
                instance, event["doctype"], doc["_id"], rev=previous
            )
        except Exception:  # compacted away, deleted meanwhile: no old document
            return None

    async def _unregister(self, instance: Any, trigger_id: str) -> None:
        key = (instance.prefix, trigger_id)
        self._triggers.pop(key, None)
        self._due.pop(key, None)
        for unsubscribe in self._unsubscribe.pop(key, []):
            unsubscribe()
        pending = self._debounced.pop(key, None)
        if pending is not None and pending["timer"].active():
            pending["timer"].cancel()
        if self.backend.shared:
            await self.backend.timeline_remove(_member(instance, trigger_id))

    # -- the timeline ------------------------------------------------------------------
    async def _plan(
        self, instance: Any, trigger_id: str, due: float, *, fresh: bool
    ) -> None:
        if self.backend.shared:
            await self.backend.timeline_add(
                _member(instance, trigger_id), due, only_new=not fresh
            )
            return
        key = (instance.prefix, trigger_id)
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), instance.prefix, trigger_id))
        self._arm()

    def _arm(self) -> None:
        if not self.running or self.backend.shared:
            return
        while self._heap:
            due, _, prefix, trigger_id = self._heap[0]
            if self._due.get((prefix, trigger_id)) != due:
                heapq.heappop(self._heap)  # a stale entry (re-planned, removed)
                continue
            break
        if not self._heap:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, self._heap[0][0] - self._seconds())
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - (self._seconds() + delay)) < 1e-6:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._seconds()
        due_now: list[tuple[float, str, str]] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, prefix, trigger_id = heapq.heappop(self._heap)
            if self._due.get((prefix, trigger_id)) != due:
                continue
            del self._due[(prefix, trigger_id)]
            due_now.append((due, prefix, trigger_id))
        for due, prefix, trigger_id in due_now:
            entry = self._triggers.get((prefix, trigger_id))
            if entry is None:
                continue
            d = self._track(defer.ensureDeferred(self._fire_slot(entry[0], entry[1], due)))
            d.addErrback(lambda f, t=trigger_id: log.failure("trigger {id}", f, id=t))
        self._arm()

    async def _fire_slot(self, instance: Any, trigger: Trigger, due: float) -> None:
        self.lateness.append(self._seconds() - due)
        if trigger.one_shot:
            await self._unregister(instance, trigger.id)
        else:
            following = trigger.next_time(max(due, self._seconds()))
            if following is not None:
                await self._plan(instance, trigger.id, following, fresh=True)
        await self._fire(instance, trigger, due=due)
        if trigger.one_shot:
            try:
                doc = await self.documents.get(instance, model.TRIGGERS, trigger.id)
                await self.documents.delete(
                    instance, model.TRIGGERS, trigger.id, doc["_rev"], doc=doc
                )
            except (DocNotFound, DatabaseNotFound, DocConflict):
                pass  # deleted already (by another node, or by hand)
            await self._broadcast("delete", instance, trigger.id)

    async def _poll_shared(self) -> None:
        now = self._seconds()
        claimed = await self.backend.timeline_claim(now, SCHEDULING_TTL)
        # All at once: a slot due with many others must not wait for them.
        firings = [
            self._track(defer.ensureDeferred(self._fire_member(member, due)))
            for member, due in claimed
        ]
        if firings:
            await defer.DeferredList(firings, consumeErrors=True)

    async def _fire_member(self, member: str, due: float) -> None:
        domain, _, trigger_id = member.rpartition("/")
        self.lateness.append(self._seconds() - due)
        try:
            await self._fire_claimed(member, domain, trigger_id, due)
        except Exception:
            log.failure("trigger {member}", member=member)

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        """Firings in flight, waited for by ``stopService``."""
        self._inflight.add(d)
        d.addBoth(lambda result: (self._inflight.discard(d), result)[1])
        return d

    async def _fire_claimed(
        self, member: str, domain: str, trigger_id: str, due: float
    ) -> None:
        instance = await self._instances.get(domain)
        trigger = None
        if instance is not None:
            entry = self._triggers.get((instance.prefix, trigger_id))
            if entry is not None:
                trigger = entry[1]
            else:
                try:
                    doc = await self.documents.get(instance, model.TRIGGERS, trigger_id)
                    trigger = parse_trigger(doc, now=self._seconds())
                except Exception:
                    trigger = None
        if instance is None or trigger is None:
            await self.backend.timeline_done(member, None)
            return
        following = (
            None if trigger.one_shot else trigger.next_time(max(due, self._seconds()))
        )
        await self._fire(instance, trigger, due=due)
        await self.backend.timeline_done(member, following)
        if trigger.one_shot:
            try:
                doc = await self.documents.get(instance, model.TRIGGERS, trigger.id)
                await self.documents.delete(
                    instance, model.TRIGGERS, trigger.id, doc["_rev"], doc=doc
                )
            except (DocNotFound, DatabaseNotFound, DocConflict):
                pass
            await self._unregister(instance, trigger.id)
            await self._broadcast("delete", instance, trigger.id)

    # -- other nodes -------------------------------------------------------------------
    async def _broadcast(self, op: str, instance: Any, trigger_id: str) -> None:
        if self.backend.shared:
            await self.backend.broadcast(
                BROADCAST,
                json.dumps({"op": op, "domain": instance.domain, "id": trigger_id}),
            )

    def _on_broadcast(self, message: str) -> None:
        d = defer.ensureDeferred(self._apply_broadcast(message))
        d.addErrback(lambda f: log.failure("a trigger change from another node", f))

    async def _apply_broadcast(self, message: str) -> None:
        data = json.loads(message)
        instance = await self._instances.get(data["domain"])
        if instance is None:
            return
        key = (instance.prefix, data["id"])
        if data["op"] == "delete":
            self._triggers.pop(key, None)
            for unsubscribe in self._unsubscribe.pop(key, []):
                unsubscribe()
            return
        try:
            doc = await self.documents.get(instance, model.TRIGGERS, data["id"])
        except (DocNotFound, DatabaseNotFound):
            return
        trigger = parse_trigger(doc, now=self._seconds())
        self._triggers[key] = (instance, trigger)
        if trigger.type == "@event":
            self._subscribe(instance, trigger)

    # -- the service -------------------------------------------------------------------
    def startService(self) -> Any:
        super().startService()
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        for instance in await self._instances.list_all():
            for doc in await self.all(instance):
                try:
                    trigger = parse_trigger(doc, now=self._seconds())
                except Exception:
                    log.warn("skipping the unreadable trigger {id}", id=doc.get("_id"))
                    continue
                await self._register(instance, trigger, fresh=False)
        if self.backend.shared:
            from twisted.internet import task

            self._poller = task.LoopingCall(
                lambda: self._track(defer.ensureDeferred(self._poll_shared())).addErrback(
                    lambda f: log.failure("polling the triggers", f)
                )
            )
            self._poller.clock = self._reactor
            self._poller.start(SHARED_POLL, now=True)
        else:
            self._arm()
        log.info("scheduler started: {n} triggers", n=len(self._triggers))

    def stopService(self) -> Any:
        super().stopService()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for pending in self._debounced.values():
            if pending["timer"].active():
                pending["timer"].cancel()
        self._debounced.clear()
        for unsubscribes in self._unsubscribe.values():
            for unsubscribe in unsubscribes:
                unsubscribe()
        self._unsubscribe.clear()
        self._triggers.clear()
        self._heap.clear()
        self._due.clear()
        if not self._inflight:
            return defer.succeed(None)
        waiting = defer.DeferredList(list(self._inflight), consumeErrors=True)
        return waiting.addCallback(lambda _: None)
