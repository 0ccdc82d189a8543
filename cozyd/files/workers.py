"""The job workers of the files: ``trash-files`` and ``thumbnail``.

Both are reserved to the stack (``cozyd.jobs.model.RESERVED_WORKERS``):
apps cannot push them, the CLI and the stack can.

- ``trash-files`` destroys entries of the trash for good (contents,
  versions, thumbnails): ``{"ids": [...]}`` names them; without ``ids`` it
  empties the whole trash. An id that is gone or not in the trash is
  skipped and listed in the job's result.
- ``thumbnail`` (re)makes the thumbnails of an image file:
  ``{"id": <file id>}``, or the file of the ``@event`` that fired the
  trigger. A file that is no image makes none (``{"made": false}``).

The daemon registers them with the job system (``files_workers`` in
``cozyd.service``), as they need the VFS.
"""

from __future__ import annotations

from typing import Any

import attrs

from cozyd.files.vfs import VFS, FileNotFound, NotTrashed, Protected
from cozyd.jobs.workers import JobContext, Worker, WorkerError

#: At most this many ids in one ``trash-files`` job.
MAX_IDS = 10_000


@attrs.define
class TrashFilesWorker:
    vfs: VFS
    name: str = "trash-files"
    concurrency: int = 1
    max_exec_count: int = 2
    timeout: float = 1800.0

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        ids = context.message.get("ids")
        if ids is None:
            await self.vfs.empty_trash(context.instance)
            return {"emptied": True}
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_IDS
            or not all(isinstance(i, str) and i for i in ids)
        ):
            raise WorkerError(
                "invalid ids", f"ids must be a list of at most {MAX_IDS} ids", retry=False
            )
        destroyed = 0
        skipped: list[str] = []
        for doc_id in dict.fromkeys(ids):
            try:
                await self.vfs.destroy(context.instance, doc_id)
            except (FileNotFound, NotTrashed, Protected):
                skipped.append(doc_id)
                continue
            destroyed += 1
        return {"destroyed": destroyed, "skipped": skipped}


@attrs.define
class ThumbnailWorker:
    vfs: VFS
    thumbnails: Any  # cozyd.files.thumbs.Thumbnails
    name: str = "thumbnail"
    concurrency: int = 2
    max_exec_count: int = 2
    timeout: float = 300.0

    def _file_id(self, context: JobContext) -> str:
        doc_id = context.message.get("id") or context.message.get("file_id")
        if doc_id is None and context.event:
            doc = context.event.get("doc") or {}
            doc_id = doc.get("_id") if isinstance(doc, dict) else None
        if not isinstance(doc_id, str) or not doc_id:
            raise WorkerError("invalid id", "the id of a file is required", retry=False)
        return doc_id

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        doc_id = self._file_id(context)
        try:
            doc = await self.vfs.get(context.instance, doc_id)
        except FileNotFound:
            raise WorkerError("file not found", doc_id, retry=False) from None
        if not self.thumbnails.wanted(doc):
            return {"made": False}
        await self.thumbnails.make(context.instance, doc)
        return {"made": True}


def files_workers(vfs: VFS, thumbnails: Any) -> list[Worker]:
    """The workers the daemon registers once the VFS is built."""
    return [TrashFilesWorker(vfs), ThumbnailWorker(vfs, thumbnails)]
