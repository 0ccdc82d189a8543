"""The document layer: every write of a document goes through here.

``Documents`` validates a write, stores it through the engine and, once the
engine has answered (the write is durable), publishes ``CREATED`` /
``UPDATED`` / ``DELETED`` with the document on the event hub, exactly once
per changed document. Nothing is published for a refused write, a
conflict, an unchanged document, a design document or a ``_local/`` one.

Two paths share that code:

- ``Documents`` itself is the stack's privileged path: sessions, OAuth
  clients, settings, instance creation… write any doctype, reserved ones
  included;
- ``Documents.checked`` (a ``ClientDocuments``) is the path of writes a
  client asks for (``/data``): the reserved-doctype rules of ``rules.py``
  are enforced before anything is written.

Documents belong to an *owner*: an ``Instance`` (anything with a
``prefix``), or ``GLOBAL`` for the databases shared by every instance
(``global/instances``, ``global/domain_aliases``), whose events are
published under the ``"global"`` key of the hub.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs

from cozyd.documents import rules
from cozyd.errors import Conflict
from cozyd.realtime.hub import CREATED, DELETED, UPDATED, EventHub
from cozyd.storage.interface import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    DocumentStore,
    new_doc_id,
)
from cozyd.storage.names import GLOBAL_PREFIX, db_name

Doc = dict[str, Any]
T = TypeVar("T")

#: How many times ``update`` reads again after a conflict.
UPDATE_RETRIES = 5


class Owner(Protocol):
    """Whose databases: an instance, or the global databases."""

    @property
    def prefix(self) -> str: ...


@attrs.frozen
class GlobalDatabases:
    prefix: str = GLOBAL_PREFIX


#: The owner of the databases every instance shares.
GLOBAL = GlobalDatabases()


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def write_verb(doc: Doc) -> str:
    """The event of a ``new_edits=true`` write of ``doc``."""
    if not _has_text(doc.get("_rev")):
        return CREATED
    if doc.get("_deleted") is True:
        return DELETED
    return UPDATED


def replicated_verb(doc: Doc) -> str:
    """The event of a replicated revision (``new_edits=false``)."""
    rev = doc.get("_rev")
    if doc.get("_deleted") is True:
        return DELETED
    if isinstance(rev, str) and rev.startswith("1-"):
        return CREATED
    return UPDATED


class Documents:
    """Validate, store, publish: the stack's (privileged) path."""

    def __init__(self, store: DocumentStore, hub: EventHub | None = None):
        self.store = store
        self.hub = hub if hub is not None else EventHub()
        self.checked = ClientDocuments(self)

    @staticmethod
    def db(owner: Owner, doctype: str) -> str:
        """The database of ``owner``'s documents of ``doctype``."""
        return db_name(owner.prefix, doctype)

    # -- reads (no rule, no event: a convenience for the domain modules) -------
    async def get(self, owner: Owner, doctype: str, doc_id: str, **options: Any) -> Doc:
        return await self.store.get_doc(self.db(owner, doctype), doc_id, **options)

    async def find(self, owner: Owner, doctype: str, query: Doc, **options: Any) -> Doc:
        return await self.store.find(self.db(owner, doctype), query, **options)

    async def all_docs(self, owner: Owner, doctype: str, **options: Any) -> Doc:
        return await self.store.all_docs(self.db(owner, doctype), **options)

    # -- databases ---------------------------------------------------------------
    async def create_db(self, owner: Owner, doctype: str) -> None:
        await self.store.create_db(self.db(owner, doctype))

    async def ensure_db(self, owner: Owner, doctype: str) -> None:
        await self.store.ensure_db(self.db(owner, doctype))

    async def delete_db(self, owner: Owner, doctype: str) -> None:
        await self.store.delete_db(self.db(owner, doctype))

    async def delete_all(self, owner: Owner) -> None:
        """Every database of ``owner`` (an instance being destroyed: no
        event per document)."""
        await self.store.delete_prefix(owner.prefix)

    async def create_index(
        self,
        owner: Owner,
        doctype: str,
        fields: list[Any],
        *,
        create_db: bool = False,
        **options: Any,
    ) -> Doc:
        """A Mango index (a design document: no event)."""
        db = self.db(owner, doctype)
        return await self._on_db(
            db, create_db, lambda: self.store.create_index(db, fields, **options)
        )

    async def put_local(self, owner: Owner, doctype: str, doc: Doc) -> Doc:
        """A ``_local/`` document (replication checkpoints: no event)."""
        rules.check_id(doc.get("_id"))
        return await self.store.put_local(self.db(owner, doctype), doc)

    # -- documents ---------------------------------------------------------------
    async def put(
        self, owner: Owner, doctype: str, doc: Doc, *, create_db: bool = False
    ) -> Doc:
        """Create (no ``_rev``), update or delete (``"_deleted": true``) one
        document, as the engine's ``put_doc``; returns its ``{"ok", "id",
        "rev"}``. With ``create_db``, a missing database is created first,
        as cozy-stack does on a first write."""
        rules.check_id(doc.get("_id"))
        db = self.db(owner, doctype)
        result = await self._on_db(db, create_db, lambda: self.store.put_doc(db, doc))
        self._publish(
            owner,
            write_verb(doc),
            doctype,
            {**doc, "_id": result["id"], "_rev": result["rev"]},
        )
        return result

    async def create(
        self, owner: Owner, doctype: str, doc: Doc, *, create_db: bool = False
    ) -> Doc:
        """A new document, with a fresh id unless it names one."""
        if "_id" not in doc:
            doc = {**doc, "_id": new_doc_id()}
        return await self.put(owner, doctype, doc, create_db=create_db)

    async def delete(
        self, owner: Owner, doctype: str, doc_id: str, rev: str, *, doc: Doc | None = None
    ) -> Doc:
        """Delete revision ``rev``; the event carries ``doc`` (the document
        deleted, when the caller has it) with the tombstone's revision."""
        rules.check_id(doc_id)
        result = await self.store.delete_doc(self.db(owner, doctype), doc_id, rev)
        self._publish(
            owner, DELETED, doctype, {**(doc or {}), "_id": doc_id, "_rev": result["rev"]}
        )
        return result

    async def bulk(
        self,
        owner: Owner,
        doctype: str,
        docs: list[Any],
        *,
        new_edits: bool = True,
        create_db: bool = False,
    ) -> list[Doc]:
        """CouchDB's ``_bulk_docs``. Every id is checked before anything is
        written; one event per document the engine took (with
        ``new_edits=False``: per revision it did not have yet)."""
        rules.check_ids(docs)
        db = self.db(owner, doctype)
        listening = self.hub.has_subscribers(owner, doctype)
        missing: set[tuple[str, str]] = set()
        if listening and not new_edits:
            missing = await self._missing_revisions(db, docs)
        results = await self._on_db(
            db, create_db, lambda: self.store.bulk_docs(db, docs, new_edits=new_edits)
        )
        if listening:
            if new_edits:
                self._publish_written(owner, doctype, docs, results)
            else:
                self._publish_replicated(owner, doctype, docs, results, missing)
        return results

    async def update(
        self,
        owner: Owner,
        doctype: str,
        doc_id: str,
        change: Callable[[Doc], None],
        *,
        retries: int = UPDATE_RETRIES,
        create_db: bool = False,
    ) -> Doc:
        """Read-modify-write: apply ``change`` to the current document
        (``{"_id": doc_id}`` when there is none yet) and save it; on a
        conflict, read again and retry. A change that changes nothing
        writes nothing. Returns the document as stored."""
        rules.check_id(doc_id)
        db = self.db(owner, doctype)
        for _ in range(retries):
            try:
                current = await self.store.get_doc(db, doc_id)
            except DocNotFound:
                current = None
            except DatabaseNotFound:
                if not create_db:
                    raise
                current = None
            doc = copy.deepcopy(current) if current is not None else {"_id": doc_id}
            change(doc)
            if current is not None and doc == current:
                return doc
            try:
                result = await self.put(owner, doctype, doc, create_db=create_db)
            except DocConflict:
                continue
            doc["_rev"] = result["rev"]
            return doc
        raise Conflict(f"{doc_id} is being changed concurrently; try again")

    # -- helpers -----------------------------------------------------------------
    async def _on_db(
        self, db: str, create_db: bool, write: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await write()
        except DatabaseNotFound:
            if not create_db:
                raise
            await self.store.ensure_db(db)
            return await write()

    async def _missing_revisions(self, db: str, docs: list[Any]) -> set[tuple[str, str]]:
        """The ``(id, rev)`` of ``docs`` the database does not hold yet."""
        asked: dict[str, list[str]] = {}
        for doc in docs:
            if (
                isinstance(doc, dict)
                and isinstance(doc.get("_id"), str)
                and isinstance(doc.get("_rev"), str)
            ):
                asked.setdefault(doc["_id"], []).append(doc["_rev"])
        if not asked:
            return set()
        try:
            diff = await self.store.revs_diff(db, asked)
        except DatabaseNotFound:
            return {(doc_id, rev) for doc_id, revs in asked.items() for rev in revs}
        return {
            (doc_id, rev)
            for doc_id, entry in diff.items()
            for rev in entry.get("missing", ())
        }

    def _publish_written(
        self, owner: Owner, doctype: str, docs: list[Any], results: list[Doc]
    ) -> None:
        for doc, result in zip(docs, results, strict=False):
            if not isinstance(doc, dict) or "error" in result or not result.get("ok"):
                continue
            self._publish(
                owner,
                write_verb(doc),
                doctype,
                {**doc, "_id": result["id"], "_rev": result["rev"]},
            )

    def _publish_replicated(
        self,
        owner: Owner,
        doctype: str,
        docs: list[Any],
        results: list[Doc],
        missing: set[tuple[str, str]],
    ) -> None:
        # CouchDB lists only the documents it refused.
        refused = {result.get("id") for result in results}
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("_id") in refused:
                continue
            key = (doc.get("_id"), doc.get("_rev"))
            if key not in missing:
                continue  # already there (or not a revision): nothing changed
            missing.discard(key)  # a revision sent twice changes once
            self._publish(
                owner,
                replicated_verb(doc),
                doctype,
                {k: v for k, v in doc.items() if k != "_revisions"},
            )

    def _publish(self, owner: Owner, verb: str, doctype: str, doc: Doc) -> None:
        if rules.is_design_or_local(doc.get("_id")):
            return
        self.hub.publish_doc(owner, verb, doctype, doc)


class ClientDocuments:
    """The path of the writes a client asks for (``/data``): the rules on
    reserved doctypes and protected design documents first, then the same
    store-and-publish as ``Documents``."""

    def __init__(self, documents: Documents):
        self._documents = documents

    async def create_db(self, owner: Owner, doctype: str) -> None:
        rules.check_writable(doctype)
        await self._documents.create_db(owner, doctype)

    async def delete_db(self, owner: Owner, doctype: str) -> None:
        rules.check_writable(doctype)
        await self._documents.delete_db(owner, doctype)

    async def create_index(
        self,
        owner: Owner,
        doctype: str,
        fields: list[Any],
        *,
        create_db: bool = False,
        **options: Any,
    ) -> Doc:
        rules.check_readable(doctype)
        return await self._documents.create_index(
            owner, doctype, fields, create_db=create_db, **options
        )

    async def put_local(self, owner: Owner, doctype: str, doc: Doc) -> Doc:
        rules.check_readable(doctype)
        return await self._documents.put_local(owner, doctype, doc)

    async def put(
        self, owner: Owner, doctype: str, doc: Doc, *, create_db: bool = False
    ) -> Doc:
        rules.check_client_write(doctype, doc.get("_id"))
        return await self._documents.put(owner, doctype, doc, create_db=create_db)

    async def create(
        self, owner: Owner, doctype: str, doc: Doc, *, create_db: bool = False
    ) -> Doc:
        rules.check_client_write(doctype, doc.get("_id"))
        return await self._documents.create(owner, doctype, doc, create_db=create_db)

    async def delete(
        self, owner: Owner, doctype: str, doc_id: str, rev: str, *, doc: Doc | None = None
    ) -> Doc:
        rules.check_client_write(doctype, doc_id)
        rules.check_design_delete(doctype, doc_id)
        return await self._documents.delete(owner, doctype, doc_id, rev, doc=doc)

    async def bulk(
        self,
        owner: Owner,
        doctype: str,
        docs: list[Any],
        *,
        new_edits: bool = True,
        create_db: bool = False,
    ) -> list[Doc]:
        rules.check_writable(doctype)
        return await self._documents.bulk(
            owner, doctype, docs, new_edits=new_edits, create_db=create_db
        )
