"""Read-modify-write of one document, retried when someone else wrote first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cozyd.errors import Conflict
from cozyd.storage.interface import DocConflict, DocNotFound, DocumentStore

RETRIES = 5


async def update_doc(store: DocumentStore, db: str, doc_id: str,
                     change: Callable[[dict[str, Any]], None], *,
                     retries: int = RETRIES) -> dict[str, Any]:
    """Apply ``change`` to the current document (``{"_id": doc_id}`` when it
    does not exist yet) and save it; on a conflict, read again and retry."""
    for _ in range(retries):
        try:
            doc = await store.get_doc(db, doc_id)
        except DocNotFound:
            doc = {"_id": doc_id}
        change(doc)
        try:
            result = await store.put_doc(db, doc)
        except DocConflict:
            continue
        doc["_rev"] = result["rev"]
        return doc
    raise Conflict(f"{doc_id} is being changed concurrently; try again")
