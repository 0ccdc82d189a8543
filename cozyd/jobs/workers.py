"""What a worker is, as the job system sees it.

The job system (``cozyd.jobs``) takes a queued job of ``io.cozy.jobs``,
marks it running and calls its worker's ``run`` with a ``JobContext``; the
job is ``done`` when ``run`` returns, ``errored`` when it raises (retried
up to ``max_exec_count`` times, with back-off, unless the error says it is
not worth it), and errored with ``"timeout"`` when it outlasts ``timeout``
seconds: then the Deferred of ``run`` is cancelled (a worker that runs a
process stops it on cancellation: TERM, then KILL).

A worker is registered once per daemon (``JobSystem.register(worker)``);
its ``concurrency`` is the number of its jobs one node runs at a time.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from cozyd.documents.layer import Documents
from cozyd.instance.model import Instance


@attrs.define
class JobContext:
    instance: Instance
    #: The job document's id in ``io.cozy.jobs`` (``COZY_JOB_ID``).
    job_id: str
    worker: str
    #: The job's message, as pushed (a konnector's: ``{"konnector": slug,
    #: "account": id, ...}``; a mail's: ``{"mode": ..., ...}``).
    message: dict[str, Any]
    #: The privileged document layer (every write publishes its event).
    documents: Documents
    #: True when the owner launched it by hand (``COZY_JOB_MANUAL_EXECUTION``).
    manual: bool = False
    #: The trigger that made the job, if any.
    trigger_id: str | None = None
    #: Seconds the job may run (``COZY_TIME_LIMIT``).
    timeout: float = 300.0
    #: This attempt's number, from 1.
    attempt: int = 1
    #: The event that fired an ``@event`` trigger (``{"verb", "doctype",
    #: "id", "doc"}``), if any.
    event: dict[str, Any] | None = None
    #: The body of a ``@webhook`` call (``COZY_PAYLOAD``), if any.
    payload: Any = None


class WorkerError(Exception):
    """A job's failure as the job document records it: ``code`` is the
    error stored on the job (``"LOGIN_FAILED"``, ``"VENDOR_DOWN"``...);
    ``retry`` False says another attempt would fail the same way."""

    def __init__(self, code: str, message: str = "", *, retry: bool = True):
        super().__init__(message or code)
        self.code = code
        self.retry = retry


class Worker(Protocol):
    #: The worker's type, as jobs name it: ``"log"``, ``"sendmail"``...
    name: str
    concurrency: int
    max_exec_count: int
    #: Default seconds a job of this worker may run.
    timeout: float

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        """Do the job; raise ``WorkerError`` to fail it. What it returns
        (if anything) is stored as the job's result."""
        ...
