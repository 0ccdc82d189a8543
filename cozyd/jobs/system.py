"""The job system: push jobs, run them with their workers, record the result.

::

    jobs = JobSystem(documents, find_instance, reactor=reactor)
    jobs.register(LogWorker())                      # any cozyd.jobs.workers.Worker
    job = await jobs.push(instance, "log", {"hello": "world"})   # the job document
    jobs.startService()                             # runs what is queued

A pushed job is written to ``io.cozy.jobs`` (``queued``, published like
every document) and its reference goes to the backend's queue of its
worker. A node takes it when one of the worker's ``concurrency`` slots is
free: the document goes ``running`` (the claim is a write on the revision
read, so two nodes can never both start it), then the worker's ``run`` is
called with a ``JobContext``. It is retried after a failure, up to
``max_exec_count`` runs with a doubling delay (``retry_delay``, then ×2…,
±10 %), unless the ``WorkerError`` says ``retry=False``; a run that lasts
longer than the timeout is cancelled (its Deferred) and counts as the
error ``timeout``. The document ends ``done`` (with the worker's
``result`` if it returned one) or ``errored`` (with ``error``).

The job's options can only lower the worker's ``max_exec_count`` and
``timeout``, as cozy-stack does. Jobs of the virtual ``client`` worker are
not queued: a client runs them and completes them (``complete``).

On a single node (memory queue), queued jobs of a previous run are queued
again at start, and jobs left ``running`` by a crash are marked errored.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from cozyd.documents import DatabaseNotFound, DocConflict, DocNotFound, Documents
from cozyd.documents import new_doc_id as default_new_id
from cozyd.errors import CozyError, NotFound
from cozyd.jobs import model
from cozyd.jobs.queue import Backend, MemoryBackend, Ref
from cozyd.jobs.workers import JobContext, Worker, WorkerError

log = Logger()

#: cozy-stack's defaults when a worker says nothing.
DEFAULT_MAX_EXEC_COUNT = 1
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_DELAY = 0.06
#: Jobs kept per worker and state by a purge (cozy-stack keeps 50).
KEEP_PER_STATE = 50
#: Seconds a stopping node lets its running jobs finish before cancelling them.
STOP_GRACE = 5.0
#: Seconds between two looks at a shared queue when nothing woke us up.
POLL_INTERVAL = 1.0


class UnknownWorker(NotFound):
    code = "unknown_worker"

    def __init__(self, worker: str):
        super().__init__(f"unknown worker {worker!r}")


class JobNotFound(NotFound):
    def __init__(self, job_id: str = ""):
        super().__init__("Job not found" if not job_id else f"job {job_id} not found")


class JobSystem(Service):
    name = "jobs"

    def __init__(
        self,
        documents: Documents,
        find_instance: Callable[[str], Awaitable[Any]],
        *,
        reactor: Any,
        seconds: Callable[[], float] | None = None,
        backend: Backend | None = None,
        concurrency: dict[str, int] | None = None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        new_id: Callable[[], str] = default_new_id,
    ):
        self.documents = documents
        self._find_instance = find_instance
        self._reactor = reactor
        self._seconds = seconds or reactor.seconds
        self.backend: Backend = backend or MemoryBackend(self._seconds)
        self._concurrency = dict(concurrency or {})
        self.retry_delay = retry_delay
        self._new_id = new_id
        self._workers: dict[str, Worker] = {}
        self._running: dict[str, set[defer.Deferred]] = {}
        self._pumping: set[str] = set()
        self._again: set[str] = set()
        self._indexed: set[str] = set()
        self._poller: task.LoopingCall | None = None
        self._finished: list[Callable[[dict[str, Any]], Any]] = []
        self.backend.on_wake(self._wake)

    # -- workers --------------------------------------------------------------------
    def register(self, worker: Worker) -> None:
        self._workers[worker.name] = worker
        if self.running:
            self._wake(worker.name)

    def worker(self, name: str) -> Worker | None:
        return self._workers.get(name)

    def worker_names(self) -> list[str]:
        return sorted(self._workers)

    def is_known(self, name: str) -> bool:
        return name in self._workers or name == model.CLIENT_WORKER

    def concurrency(self, name: str) -> int:
        worker = self._workers[name]
        return max(1, self._concurrency.get(name) or getattr(worker, "concurrency", 1) or 1)

    def on_finished(self, callback: Callable[[dict[str, Any]], Any]) -> None:
        """``callback(job)`` once a job is done or errored on this node."""
        self._finished.append(callback)

    # -- pushing --------------------------------------------------------------------
    async def push(
        self,
        instance: Any,
        worker_name: str,
        message: Any,
        *,
        manual: bool = False,
        trigger_id: str | None = None,
        event: Any = None,
        payload: Any = None,
        max_exec_count: int | None = None,
        timeout: float | None = None,
        forward_logs: bool = False,
        debounced: bool = False,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job of ``worker_name`` for ``instance``; its document.
        ``job_id`` names it (the scheduler's way of never firing a slot
        twice: a second push of the same id is a ``DocConflict``)."""
        if not self.is_known(worker_name):
            raise UnknownWorker(worker_name)
        doc = model.new_job(
            instance,
            worker_name,
            message,
            queued_at=self._seconds(),
            job_id=job_id or self._new_id(),
            trigger_id=trigger_id,
            manual=manual,
            event=event,
            payload=payload,
            options=model.job_options(max_exec_count, timeout),
            forward_logs=forward_logs,
            debounced=debounced,
        )
        await self.ensure_indexes(instance)
        result = await self.documents.put(instance, model.JOBS, doc, create_db=True)
        doc["_rev"] = result["rev"]
        if worker_name != model.CLIENT_WORKER:
            await self.backend.push(worker_name, self._ref(doc))
        return doc

    @staticmethod
    def _ref(doc: dict[str, Any]) -> Ref:
        return {
            "domain": doc["domain"],
            "prefix": doc.get("prefix", ""),
            "id": doc["_id"],
            "worker": doc["worker"],
        }

    async def ensure_indexes(self, instance: Any) -> None:
        """The indexes the job queries use (once per instance and node)."""
        if instance.prefix in self._indexed:
            return
        for name, fields in (
            ("by-worker-and-state", ["worker", "state"]),
            ("by-trigger-id", ["trigger_id", "queued_at"]),
        ):
            await self.documents.create_index(
                instance, model.JOBS, fields, create_db=True, ddoc=name, name=name
            )
        self._indexed.add(instance.prefix)

    # -- reading --------------------------------------------------------------------
    async def get(self, instance: Any, job_id: str) -> dict[str, Any]:
        try:
            return await self.documents.get(instance, model.JOBS, job_id)
        except (DocNotFound, DatabaseNotFound):
            raise JobNotFound() from None

    async def _find(self, instance: Any, query: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            await self.ensure_indexes(instance)
            found = await self.documents.find(instance, model.JOBS, query)
        except DatabaseNotFound:
            return []
        return found.get("docs", [])

    async def queued(self, instance: Any, worker: str) -> list[dict[str, Any]]:
        """The jobs of ``worker`` that are queued or running."""
        return await self._find(
            instance,
            {
                "selector": {
                    "worker": worker,
                    "state": {"$in": [model.QUEUED, model.RUNNING]},
                },
                "limit": 200,
            },
        )

    async def jobs_of_trigger(
        self, instance: Any, trigger_id: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The jobs a trigger made, most recent first (50 at most)."""
        if limit <= 0 or limit > 50:
            limit = 50
        return await self._find(
            instance,
            {
                "selector": {"trigger_id": trigger_id, "queued_at": {"$gt": None}},
                "sort": [{"trigger_id": "desc"}, {"queued_at": "desc"}],
                "limit": limit,
            },
        )

    async def all_jobs(self, instance: Any) -> list[dict[str, Any]]:
        try:
            rows = await self.documents.all_docs(instance, model.JOBS, include_docs=True)
        except DatabaseNotFound:
            return []
        return [
            row["doc"]
            for row in rows.get("rows", [])
            if "doc" in row and not row["id"].startswith("_design/")
        ]

    async def purge(
        self, instance: Any, keep: float, workers: list[str] | None = None
    ) -> int:
        """Delete the jobs queued more than ``keep`` seconds ago (of
        ``workers``, all by default), keeping the 50 most recent of each
        worker and state, as cozy-stack does. The number deleted."""
        jobs = await self.all_jobs(instance)
        names = set(workers) if workers else {job.get("worker") for job in jobs}
        limit = self._seconds() - keep
        jobs.sort(key=lambda j: j.get("queued_at") or "", reverse=True)
        kept: set[str] = set()
        seen: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.get("worker"), job.get("state"))
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= KEEP_PER_STATE:
                kept.add(job["_id"])
        doomed = [
            {"_id": job["_id"], "_rev": job["_rev"], "_deleted": True}
            for job in jobs
            if job.get("worker") in names
            and job["_id"] not in kept
            and (model.parse_time(job.get("queued_at")) or 0) < limit
        ]
        deleted = 0
        for start in range(0, len(doomed), 1000):
            results = await self.documents.bulk(
                instance, model.JOBS, doomed[start : start + 1000]
            )
            deleted += sum(1 for r in results if r.get("ok"))
        return deleted

    async def complete(
        self, instance: Any, job_id: str, state: str, error: str = ""
    ) -> dict[str, Any]:
        """A ``client`` job done or errored, as its client says."""
        now = model.rfc3339(self._seconds())

        def change(doc: dict[str, Any]) -> None:
            if "_rev" not in doc:
                raise JobNotFound()
            doc["state"] = state
            doc["finished_at"] = now
            doc["event"] = None
            doc.pop("payload", None)
            if state == model.ERRORED:
                doc["error"] = error
            else:
                doc.pop("error", None)

        doc = await self.documents.update(instance, model.JOBS, job_id, change)
        await self._notify(doc)
        return doc

    async def mark_running(self, instance: Any, doc: dict[str, Any]) -> dict[str, Any]:
        """A ``client`` job launched: running at once (its client runs it)."""
        doc = dict(doc)
        doc["state"] = model.RUNNING
        doc["started_at"] = model.rfc3339(self._seconds())
        result = await self.documents.put(instance, model.JOBS, doc)
        doc["_rev"] = result["rev"]
        return doc

    # -- running --------------------------------------------------------------------
    def startService(self) -> Any:
        super().startService()
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self.backend.start()
        if not self.backend.shared:
            await self._recover()
        if self.backend.shared:
            self._poller = task.LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(POLL_INTERVAL, now=False)
        for name in self._workers:
            self._wake(name)

    def _poll(self) -> None:
        for name in self._workers:
            self._wake(name)

    async def _recover(self) -> None:
        """Jobs of a previous run of this node: queued ones queued again,
        running ones (interrupted) errored."""
        lister = getattr(self._find_instance, "list_all", None)
        if lister is None:
            return
        for instance in await lister():
            for doc in await self._find(
                instance,
                {"selector": {"state": {"$in": [model.QUEUED, model.RUNNING]}}},
            ):
                if doc.get("worker") == model.CLIENT_WORKER:
                    continue
                if doc.get("state") == model.QUEUED:
                    await self.backend.push(doc["worker"], self._ref(doc))
                else:
                    await self._finish(instance, doc, error="abort: the daemon stopped")

    def stopService(self) -> Any:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        running = [d for ds in self._running.values() for d in ds]
        if running:
            waiting = defer.DeferredList(running, consumeErrors=True)
            timer = self._reactor.callLater(STOP_GRACE, waiting.cancel)
            try:
                await waiting
            except defer.CancelledError:
                for d in running:
                    d.cancel()
            finally:
                if timer.active():
                    timer.cancel()
        await self.backend.stop()

    def _wake(self, worker: str) -> None:
        if not self.running or worker not in self._workers:
            return
        if worker in self._pumping:
            self._again.add(worker)
            return
        d = defer.Deferred.fromCoroutine(self._pump(worker))
        d.addErrback(lambda f: log.failure("taking jobs of {worker}", f, worker=worker))

    async def _pump(self, worker: str) -> None:
        self._pumping.add(worker)
        try:
            while True:
                self._again.discard(worker)
                running = self._running.setdefault(worker, set())
                while self.running and len(running) < self.concurrency(worker):
                    ref = await self.backend.pop(worker)
                    if ref is None:
                        break
                    d = defer.Deferred.fromCoroutine(self._take(ref))
                    running.add(d)
                    d.addBoth(self._done_one, worker, d)
                if worker not in self._again:
                    return
        finally:
            self._pumping.discard(worker)

    def _done_one(self, result: Any, worker: str, d: defer.Deferred) -> None:
        self._running.get(worker, set()).discard(d)
        if isinstance(result, Failure) and not result.check(defer.CancelledError):
            log.failure("running a job of {worker}", result, worker=worker)
        self._wake(worker)

    async def _take(self, ref: Ref) -> None:
        instance = await self._find_instance(ref["domain"])
        if instance is None:
            return  # the instance is gone, and its jobs with it
        try:
            doc = await self.documents.get(instance, model.JOBS, ref["id"])
        except (DocNotFound, DatabaseNotFound):
            return
        if doc.get("state") != model.QUEUED:
            return
        doc["state"] = model.RUNNING
        doc["started_at"] = model.rfc3339(self._seconds())
        try:
            result = await self.documents.put(instance, model.JOBS, doc)
        except DocConflict:
            return  # another node claimed it
        doc["_rev"] = result["rev"]
        await self._run(instance, doc)

    def _limits(self, worker: Worker, doc: dict[str, Any]) -> tuple[int, float]:
        max_exec = getattr(worker, "max_exec_count", 0) or DEFAULT_MAX_EXEC_COUNT
        timeout = getattr(worker, "timeout", 0) or DEFAULT_TIMEOUT
        wanted_exec = model.options_max_exec_count(doc.get("options"))
        wanted_timeout = model.options_timeout(doc.get("options"))
        if wanted_exec and wanted_exec < max_exec:
            max_exec = wanted_exec
        if wanted_timeout and wanted_timeout < timeout:
            timeout = wanted_timeout
        return max_exec, timeout

    async def _run(self, instance: Any, doc: dict[str, Any]) -> None:
        worker = self._workers[doc["worker"]]
        max_exec, timeout = self._limits(worker, doc)
        message = doc.get("message")
        error = ""
        result = None
        for attempt in range(1, max_exec + 1):
            if attempt > 1:
                delay = self.retry_delay * (2 ** (attempt - 2))
                delay += random.uniform(-0.1, 0.1) * delay
                await task.deferLater(self._reactor, max(delay, 0), lambda: None)
            context = JobContext(
                instance=instance,
                job_id=doc["_id"],
                worker=doc["worker"],
                message=message if isinstance(message, dict) else {"value": message},
                documents=self.documents,
                manual=bool(doc.get("manual_execution")),
                trigger_id=doc.get("trigger_id"),
                timeout=timeout,
                attempt=attempt,
                event=doc.get("event"),
                payload=doc.get("payload"),
            )
            run = defer.ensureDeferred(worker.run(context))
            run.addTimeout(timeout, self._reactor)
            try:
                result = await run
                error = ""
                break
            except defer.TimeoutError:
                error = "timeout"
            except defer.CancelledError:
                if not self.running:
                    error = "abort: the daemon stopped"
                    break
                error = "timeout"
            except WorkerError as exc:
                error = exc.code
                if not exc.retry:
                    break
            except CozyError as exc:
                error = exc.detail
            except Exception as exc:
                log.failure(
                    "job {job_id} of {worker}", job_id=doc["_id"], worker=doc["worker"]
                )
                error = str(exc) or type(exc).__name__
            log.info(
                "job {job_id} of {worker} failed (run {attempt}/{max_exec}): {error}",
                job_id=doc["_id"],
                worker=doc["worker"],
                attempt=attempt,
                max_exec=max_exec,
                error=error,
            )
        await self._finish(instance, doc, error=error, result=result)

    async def _finish(
        self, instance: Any, doc: dict[str, Any], *, error: str = "", result: Any = None
    ) -> None:
        finished = model.rfc3339(self._seconds())

        def change(current: dict[str, Any]) -> None:
            current["state"] = model.ERRORED if error else model.DONE
            current["finished_at"] = finished
            current["event"] = None
            current.pop("payload", None)
            if error:
                current["error"] = error
            if result is not None:
                current["result"] = result

        final = dict(doc)
        change(final)
        try:
            # The revision this node wrote last: one write, no read…
            result = await self.documents.put(instance, model.JOBS, final)
            final["_rev"] = result["rev"]
        except DocConflict:
            try:  # …unless someone changed the document meanwhile.
                final = await self.documents.update(
                    instance, model.JOBS, doc["_id"], change
                )
            except (DatabaseNotFound, DocNotFound):
                return
        except (DatabaseNotFound, DocNotFound):
            return  # purged or the instance destroyed meanwhile
        await self._notify(final)

    async def _notify(self, doc: dict[str, Any]) -> None:
        for callback in self._finished:
            try:
                outcome = callback(doc)
                if isinstance(outcome, Awaitable):
                    await outcome
            except Exception:
                log.failure("a job-finished callback failed")
