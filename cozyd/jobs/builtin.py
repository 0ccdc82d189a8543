"""The stack's own workers: ``log``, ``clean-clients`` (``sendmail`` is
``cozyd.mail.worker``).

``stack_workers(...)`` lists the workers the daemon registers. The files
work's ``trash-files`` and ``thumbnail`` (``cozyd.files.workers``) need
the VFS: the daemon registers them beside (``cozyd.service``);
konnectors and services register theirs the same way
(``JobSystem.register``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from cozyd.jobs.model import parse_time
from cozyd.jobs.workers import JobContext, Worker, WorkerError

log = Logger()

CLIENTS = "io.cozy.oauth.clients"
#: A client still pending this long after its creation is deleted.
PENDING_CLIENT_TTL = 3600.0


@attrs.define
class LogWorker:
    """Writes the job's message to the log (debugging, benchmarks)."""

    name: str = "log"
    concurrency: int = 4
    max_exec_count: int = 1
    timeout: float = 10.0

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        log.info(
            "log job {job_id} of {domain}: {message}",
            job_id=context.job_id,
            domain=context.instance.domain,
            message=context.message,
        )
        return None


@attrs.define
class CleanClientsWorker:
    """Deletes OAuth clients still ``pending`` an hour after their creation
    (registered, never used): the one the message names (``client_id``),
    or every such client of the instance."""

    seconds: Callable[[], float]
    name: str = "clean-clients"
    concurrency: int = 1
    max_exec_count: int = 1
    timeout: float = 60.0

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        from cozyd.documents import DatabaseNotFound, DocConflict, DocNotFound

        documents = context.documents
        wanted = context.message.get("client_id")
        if wanted is not None and not isinstance(wanted, str):
            raise WorkerError("invalid client_id", retry=False)
        try:
            if wanted:
                try:
                    docs = [await documents.get(context.instance, CLIENTS, wanted)]
                except DocNotFound:
                    return {"deleted": 0}
            else:
                rows = await documents.all_docs(
                    context.instance, CLIENTS, include_docs=True
                )
                docs = [
                    r["doc"] for r in rows["rows"] if not r["id"].startswith("_design/")
                ]
        except DatabaseNotFound:
            return {"deleted": 0}
        limit = self.seconds() - PENDING_CLIENT_TTL
        deleted = 0
        for doc in docs:
            metadata = doc.get("cozyMetadata") or {}
            created = (
                parse_time(metadata.get("createdAt"))
                if isinstance(metadata, dict)
                else None
            )
            if not doc.get("pending") or created is None or created > limit:
                continue
            try:
                await documents.delete(
                    context.instance, CLIENTS, doc["_id"], doc["_rev"], doc=doc
                )
                deleted += 1
            except (DocConflict, DocNotFound):
                continue  # used or deleted meanwhile
        return {"deleted": deleted}


def stack_workers(*, seconds: Callable[[], float]) -> list[Worker]:
    """The workers of the stack itself, registered by the daemon (which
    adds ``sendmail``: ``cozyd.mail.worker``, a package above this one)."""
    workers: list[Worker] = [LogWorker(), CleanClientsWorker(seconds)]
    return workers
