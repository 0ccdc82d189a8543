"""The tree of an instance: directories and files as ``io.cozy.files``
documents, contents in a ``ContentStore``.

Documents look like cozy-stack's: directories carry their ``path``, files
their ``dir_id`` and ``name`` (a file's path is its parent's path and its
name); ``size`` is a string; ``md5sum`` is base64; the key of the content
on disk is ``internal_vfs_id``. Every write goes through the document
layer (``Documents``), which publishes it.

Tree changes of one instance (create, move, rename, trash, restore,
destroy, the commit of an upload) run one at a time under the instance's
lock, after their checks are made again inside it: two moves of the same
directory, a move into a directory being trashed, two uploads of the same
name end in a consistent tree (no cycle, no two entries with one path).
The bytes of an upload stream outside the lock; only its commit is inside.
(One node: several nodes would take the lock in Redis.)
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cozyd.documents import DocConflict, DocNotFound, Documents, new_doc_id
from cozyd.errors import BadRequest, Conflict, CozyError, NotFound, PayloadTooLarge
from cozyd.files import names
from cozyd.files.store import ContentStore, TempFile
from cozyd.instance.defaults import ROOT_DIR_ID, TRASH_DIR_ID, TRASH_DIR_NAME

log = Logger()

FILES = "io.cozy.files"
VERSIONS = "io.cozy.files.versions"
TRASH_PATH = "/" + TRASH_DIR_NAME
DIRECTORY = "directory"
FILE = "file"
#: Documents read per query when walking a whole tree.
PAGE = 1000
#: Seconds a directory's count of entries is kept at most.
COUNT_TTL = 5.0
#: The Mango index of (directory, name), made on first use.
NAME_INDEX = "cozyd-dir-id-name"
#: Bytes of an upload gathered before each write to disk.
WRITE_BATCH = 1024 * 1024

Doc = dict[str, Any]


# -- errors (cozy-stack's statuses and words) ---------------------------------------
class FileNotFound(NotFound):
    code = "not_found"

    def __init__(self, detail: str = "File or directory not found"):
        super().__init__(detail)


class ParentNotFound(NotFound):
    def __init__(self, detail: str = "The parent directory does not exist"):
        super().__init__(detail)


class NameConflict(Conflict):
    def __init__(self, detail: str = "Conflict: a file with the same name already exists"):
        super().__init__(detail)


class PreconditionFailed(CozyError):
    status = 412
    code = "precondition_failed"


class InvalidHash(PreconditionFailed):
    def __init__(self) -> None:
        super().__init__("Invalid hash")


class SizeMismatch(PreconditionFailed):
    def __init__(self) -> None:
        super().__init__("Content length does not match")


class ForbiddenMove(PreconditionFailed):
    def __init__(self) -> None:
        super().__init__("Forbidden document move")


class FileTooBig(PayloadTooLarge):
    def __init__(self, detail: str = "The file is too big and exceeds the disk quota"):
        super().__init__(detail)


class AlreadyTrashed(BadRequest):
    def __init__(self) -> None:
        super().__init__("File or directory is already in the trash")


class NotTrashed(BadRequest):
    def __init__(self) -> None:
        super().__init__("File or directory is not in the trash")


class Protected(CozyError):
    status = 403
    code = "forbidden"


# -- what an upload says about itself -------------------------------------------------
@attrs.frozen
class Upload:
    name: str
    dir_id: str
    size: int | None = None  # declared (Content-Length or Size)
    md5: bytes | None = None  # Content-MD5
    content_type: str | None = None
    tags: tuple[str, ...] = ()
    executable: bool = False
    encrypted: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    metadata: dict[str, Any] | None = None
    app: str = ""


@attrs.define
class Usage:
    files: int = 0
    trash: int = 0
    versions: int = 0

    @property
    def used(self) -> int:
        return self.files + self.versions


def is_dir(doc: Doc) -> bool:
    return doc.get("type") == DIRECTORY


def size_of(doc: Doc) -> int:
    try:
        return int(doc.get("size") or 0)
    except (TypeError, ValueError):
        return 0


def in_trash_path(path: str) -> bool:
    return path == TRASH_PATH or path.startswith(TRASH_PATH + "/")


class VFS:
    """The file systems of every instance (one object, instances passed in)."""

    def __init__(
        self,
        documents: Documents,
        files_dir: Callable[[Any], str],
        *,
        run_blocking: Callable[..., Awaitable[Any]],
        seconds: Callable[[], float] = time.time,
        versions_max: int = 20,
        versions_min_delay: float = 900.0,
        max_file_size: int = 2**40,
        on_uploaded: Callable[[Any, Doc], Any] | None = None,
        on_removed: Callable[[Any, str], Any] | None = None,
        image_metadata: Callable[[str], Doc] | None = None,
    ):
        self.documents = documents
        self._files_dir = files_dir
        self._run = run_blocking
        self._seconds = seconds
        self.versions_max = versions_max
        self.versions_min_delay = versions_min_delay
        self.max_file_size = max_file_size
        self.on_uploaded = on_uploaded
        #: Reads an image's metadata (size, EXIF date) before the commit.
        self.image_metadata = image_metadata
        self._locks: dict[str, defer.DeferredLock] = {}
        self._usage: dict[str, Usage] = {}
        self._indexed: set[str] = set()
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}

    # -- plumbing ---------------------------------------------------------------
    def store_of(self, instance: Any) -> ContentStore:
        return ContentStore(self._files_dir(instance))

    def lock(self, instance: Any) -> defer.DeferredLock:
        lock = self._locks.get(instance.prefix)
        if lock is None:
            lock = self._locks[instance.prefix] = defer.DeferredLock()
        return lock

    async def _locked(self, instance: Any, step: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``step`` under the instance's lock, to its end even when the
        request that asked for it is cancelled (a client that hangs up
        stops waiting, but a commit is never left halfway)."""
        return await _shield(self._run_locked(instance, step))

    async def _run_locked(self, instance: Any, step: Callable[[], Awaitable[Any]]) -> Any:
        lock = self.lock(instance)
        await lock.acquire()
        try:
            return await step()
        finally:
            self._forget_counts(instance)
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(instance.prefix, None)

    def _forget_counts(self, instance: Any) -> None:
        if self._counts:
            for key in [k for k in self._counts if k[0] == instance.prefix]:
                del self._counts[key]

    def now(self) -> str:
        moment = datetime.datetime.fromtimestamp(self._seconds(), datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _cozy_metadata(self, instance: Any, app: str, *, upload: bool) -> Doc:
        now = self.now()
        meta: Doc = {
            "doctypeVersion": "1",
            "metadataVersion": 1,
            "createdAt": now,
            "createdOn": f"https://{instance.domain}/",
            "updatedAt": now,
        }
        if app:
            meta["createdByApp"] = app
        if upload:
            meta["uploadedAt"] = now
            meta["uploadedOn"] = f"https://{instance.domain}/"
            if app:
                meta["uploadedBy"] = {"slug": app}
        return meta

    # -- reading ----------------------------------------------------------------
    async def get(self, instance: Any, doc_id: str) -> Doc:
        if not doc_id or doc_id.startswith("_"):
            raise FileNotFound()
        try:
            doc = await self.documents.get(instance, FILES, doc_id)
        except DocNotFound:
            raise FileNotFound() from None
        if doc.get("type") not in (FILE, DIRECTORY):
            raise FileNotFound()
        return doc

    async def _find(self, instance: Any, query: Doc) -> list[Doc]:
        result = await self.documents.find(instance, FILES, query)
        return result.get("docs", [])

    async def child(self, instance: Any, dir_id: str, name: str) -> Doc | None:
        await self._ensure_name_index(instance)
        docs = await self._find(
            instance, {"selector": {"dir_id": dir_id, "name": name}, "limit": 2}
        )
        return docs[0] if docs else None

    async def _ensure_name_index(self, instance: Any) -> None:
        """The index of names in a directory (once per instance and
        process): a name lookup in a directory of 10,000 entries reads
        one row, not all of them."""
        if instance.prefix in self._indexed:
            return
        await self.documents.create_index(
            instance, FILES, ["dir_id", "name"], ddoc=NAME_INDEX, name=NAME_INDEX
        )
        self._indexed.add(instance.prefix)

    async def dir_by_path(self, instance: Any, path: str) -> Doc | None:
        docs = await self._find(
            instance, {"selector": {"path": path, "type": DIRECTORY}, "limit": 2}
        )
        return docs[0] if docs else None

    async def by_path(self, instance: Any, path: str) -> Doc:
        parts = names.split_path(path)
        if not parts:
            return await self.get(instance, ROOT_DIR_ID)
        clean = "/" + "/".join(parts)
        found = await self.dir_by_path(instance, clean)
        if found is not None:
            return found
        parent_path = "/" + "/".join(parts[:-1])
        parent = await self.dir_by_path(instance, parent_path)
        if parent is None:
            raise FileNotFound()
        doc = await self.child(instance, parent["_id"], parts[-1])
        if doc is None or is_dir(doc):
            raise FileNotFound()
        return doc

    async def path_of(self, instance: Any, doc: Doc) -> str:
        if is_dir(doc):
            return doc.get("path") or "/"
        parent = await self.get(instance, doc.get("dir_id", ""))
        return names.join(parent.get("path") or "/", doc.get("name", ""))

    async def ancestors(self, instance: Any, doc: Doc) -> list[str]:
        """The ids of ``doc``'s directories, from its parent up to the root."""
        found: list[str] = []
        seen = {doc.get("_id")}
        current = doc
        while current.get("_id") != ROOT_DIR_ID:
            parent_id = current.get("dir_id")
            if not parent_id or parent_id in seen:
                break  # a broken tree: fsck reports it
            found.append(parent_id)
            seen.add(parent_id)
            try:
                current = await self.get(instance, parent_id)
            except FileNotFound:
                break
        return found

    async def children(
        self,
        instance: Any,
        dir_id: str,
        *,
        limit: int = 30,
        cursor: str | None = None,
        skip: int = 0,
    ) -> tuple[list[Doc], str | None]:
        """One page of a directory's entries (by id), and the cursor of the
        next page (None on the last one). The trash is hidden at the root."""
        selector: Doc = {"dir_id": dir_id}
        if cursor:
            selector["_id"] = {"$gt": cursor}
        else:
            selector["_id"] = {"$gt": None}
        docs = await self._find(
            instance,
            {
                "selector": selector,
                "sort": [{"dir_id": "asc"}, {"_id": "asc"}],
                "limit": limit + 1 + (1 if dir_id == ROOT_DIR_ID else 0),
                "skip": skip,
                "use_index": "dir-children",
            },
        )
        docs = [d for d in docs if d.get("_id") != TRASH_DIR_ID]
        page = docs[:limit]
        more = len(docs) > limit
        return page, (page[-1]["_id"] if more and page else None)

    async def count_children(self, instance: Any, dir_id: str) -> int:
        """Entries of a directory (cached until the next tree change of the
        instance by this process, ``COUNT_TTL`` seconds at most)."""
        key = (instance.prefix, dir_id)
        cached = self._counts.get(key)
        if cached is not None and cached[0] > self._seconds():
            return cached[1]
        count = await self._count_children(instance, dir_id)
        self._counts[key] = (self._seconds() + COUNT_TTL, count)
        return count

    async def _count_children(self, instance: Any, dir_id: str) -> int:
        count = 0
        async for _ in self._walk_children(instance, dir_id, fields=["_id"]):
            count += 1
        if dir_id == ROOT_DIR_ID:
            count -= 1  # the trash
        return max(count, 0)

    async def _walk_children(self, instance: Any, dir_id: str, *, fields=None):
        cursor = None
        while True:
            query: Doc = {
                "selector": {"dir_id": dir_id, "_id": {"$gt": cursor}},
                "sort": [{"dir_id": "asc"}, {"_id": "asc"}],
                "limit": PAGE,
                "use_index": "dir-children",
            }
            if fields:
                query["fields"] = fields
            docs = await self._find(instance, query)
            for doc in docs:
                yield doc
            if len(docs) < PAGE:
                return
            cursor = docs[-1]["_id"]

    async def descendant_dirs(self, instance: Any, path: str) -> list[Doc]:
        """Every directory below ``path`` (not itself)."""
        found: list[Doc] = []
        start = path.rstrip("/") + "/"
        cursor = start
        while True:
            docs = await self._find(
                instance,
                {
                    "selector": {"path": {"$gt": cursor, "$lt": start + "\uffff"}},
                    "sort": [{"path": "asc"}],
                    "limit": PAGE,
                    "use_index": "dir-by-path",
                },
            )
            found.extend(d for d in docs if is_dir(d))
            if len(docs) < PAGE:
                return found
            cursor = docs[-1]["path"]

    async def subtree(self, instance: Any, directory: Doc) -> tuple[list[Doc], list[Doc]]:
        """The directories (itself included) and files of a subtree."""
        dirs = [directory, *await self.descendant_dirs(instance, directory["path"])]
        files: list[Doc] = []
        for one in dirs:
            async for doc in self._walk_children(instance, one["_id"]):
                if not is_dir(doc):
                    files.append(doc)
        return dirs, files

    async def dir_size(self, instance: Any, directory: Doc) -> int:
        _, files = await self.subtree(instance, directory)
        return sum(size_of(f) for f in files)

    # -- checks -----------------------------------------------------------------
    async def _parent(self, instance: Any, dir_id: str) -> Doc:
        try:
            parent = await self.get(instance, dir_id)
        except FileNotFound:
            raise ParentNotFound() from None
        if not is_dir(parent):
            raise ParentNotFound()
        if in_trash_path(parent.get("path", "")):
            raise ParentNotFound("The parent directory is in the trash")
        return parent

    async def _free(
        self, instance: Any, dir_id: str, name: str, *, but: str | None = None
    ) -> None:
        existing = await self.child(instance, dir_id, name)
        if existing is not None and existing["_id"] != but:
            raise NameConflict()

    async def _free_name(self, instance: Any, dir_id: str, name: str) -> str:
        candidate, n = name, 1
        while await self.child(instance, dir_id, candidate) is not None:
            n += 1
            candidate = names.conflict_name(name, n)
        return candidate

    # -- usage and quota ----------------------------------------------------------
    @staticmethod
    def _usage_key(instance: Any) -> str:
        # A domain destroyed and created again keeps its prefix, not its
        # secrets: the figures of the old one are never reused.
        secret = getattr(instance, "cli_secret", b"") or b""
        return f"{instance.prefix}/{hashlib.sha256(secret).hexdigest()[:16]}"

    async def usage(self, instance: Any) -> Usage:
        cached = self._usage.get(self._usage_key(instance))
        if cached is not None:
            return cached
        usage = Usage()
        trash_dirs = {TRASH_DIR_ID}
        trash = await self.get_or_none(instance, TRASH_DIR_ID)
        if trash is not None:
            trash_dirs |= {
                d["_id"] for d in await self.descendant_dirs(instance, TRASH_PATH)
            }
        cursor = None
        while True:
            docs = await self._find(
                instance,
                {
                    "selector": {"type": FILE, "_id": {"$gt": cursor}},
                    "fields": ["_id", "size", "dir_id"],
                    "sort": [{"_id": "asc"}],
                    "limit": PAGE,
                },
            )
            for doc in docs:
                usage.files += size_of(doc)
                if doc.get("dir_id") in trash_dirs:
                    usage.trash += size_of(doc)
            if len(docs) < PAGE:
                break
            cursor = docs[-1]["_id"]
        result = await self.documents.all_docs(instance, VERSIONS, include_docs=True)
        for row in result.get("rows", []):
            usage.versions += size_of(row.get("doc") or {})
        self._usage[self._usage_key(instance)] = usage
        return usage

    def forget_usage(self, instance: Any) -> None:
        self._usage.pop(self._usage_key(instance), None)

    async def get_or_none(self, instance: Any, doc_id: str) -> Doc | None:
        try:
            return await self.get(instance, doc_id)
        except FileNotFound:
            return None

    async def check_quota(self, instance: Any, extra: int) -> None:
        if extra > self.max_file_size:
            raise FileTooBig()
        quota = getattr(instance, "disk_quota", 0) or 0
        if quota <= 0:
            return
        usage = await self.usage(instance)
        if usage.used + extra > quota:
            raise FileTooBig()

    # -- directories --------------------------------------------------------------
    async def create_dir(
        self,
        instance: Any,
        dir_id: str,
        name: str,
        *,
        tags: tuple[str, ...] = (),
        created_at: str | None = None,
        updated_at: str | None = None,
        app: str = "",
        metadata: Doc | None = None,
    ) -> Doc:
        names.check_name(name)

        async def step() -> Doc:
            parent = await self._parent(instance, dir_id)
            await self._free(instance, dir_id, name)
            now = self.now()
            doc: Doc = {
                "_id": new_doc_id(),
                "type": DIRECTORY,
                "name": name,
                "dir_id": dir_id,
                "path": names.join(parent.get("path") or "/", name),
                "created_at": created_at or now,
                "updated_at": updated_at or created_at or now,
                "tags": _dedup(tags),
                "cozyMetadata": self._cozy_metadata(instance, app, upload=False),
            }
            if metadata:
                doc["metadata"] = metadata
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            return doc

        return await self._locked(instance, step)

    async def mkdir_p(self, instance: Any, path: str, *, app: str = "") -> Doc:
        parts = names.split_path(path)
        current = await self.get(instance, ROOT_DIR_ID)
        for part in parts:
            existing = await self.child(instance, current["_id"], part)
            if existing is not None:
                if not is_dir(existing):
                    raise NameConflict()
                current = existing
                continue
            try:
                current = await self.create_dir(instance, current["_id"], part, app=app)
            except NameConflict:
                found = await self.child(instance, current["_id"], part)
                if found is None or not is_dir(found):
                    raise
                current = found
        return current

    # -- uploads ------------------------------------------------------------------
    async def receive(
        self,
        instance: Any,
        upload: Upload,
        read_into: Callable[[Callable[[bytes], Any]], Awaitable[int]],
        *,
        old_size: int = 0,
    ) -> TempFile:
        """Stream a body to a temporary file (MD5 on the fly), checking
        size, MD5 and quota; the temporary file, or an error with nothing
        left behind."""
        if upload.size is not None:
            await self.check_quota(instance, upload.size)
        store = self.store_of(instance)
        temp: TempFile = await self._run(store.start)
        quota = getattr(instance, "disk_quota", 0) or 0
        limit = self.max_file_size
        if quota > 0:
            usage = await self.usage(instance)
            limit = min(limit, max(quota - usage.used, 0))
        # Chunks are written in batches of WRITE_BATCH bytes (one trip to
        # the blocking pool each): memory stays bounded by one batch.
        pending: list[bytes] = []
        counts = {"received": 0, "pending": 0}
        try:

            def sink(chunk: bytes):
                counts["received"] += len(chunk)
                if upload.size is not None and counts["received"] > upload.size:
                    raise SizeMismatch()
                if counts["received"] > limit:
                    raise FileTooBig()
                pending.append(chunk)
                counts["pending"] += len(chunk)
                if counts["pending"] < WRITE_BATCH:
                    return None
                data = b"".join(pending)
                pending.clear()
                counts["pending"] = 0
                return self._run(temp.write, data)

            await read_into(sink)
            if pending:
                await self._run(temp.write, b"".join(pending))
                pending.clear()
            if upload.size is not None and temp.size != upload.size:
                raise SizeMismatch()
            if upload.md5 is not None and temp.md5.digest() != upload.md5:
                raise InvalidHash()
            await self._run(temp.finish)
        except BaseException:
            await self._run(temp.abort)
            raise
        return temp

    def _file_doc(
        self, instance: Any, upload: Upload, temp: TempFile, base: Doc | None
    ) -> Doc:
        now = self.now()
        mime, klass = names.mime_and_class(upload.name, upload.content_type)
        if base is None:
            doc: Doc = {
                "_id": new_doc_id(),
                "type": FILE,
                "name": upload.name,
                "dir_id": upload.dir_id,
                "created_at": upload.created_at or now,
                "tags": _dedup(upload.tags),
                "trashed": False,
                "cozyMetadata": self._cozy_metadata(instance, upload.app, upload=True),
            }
        else:
            doc = copy.deepcopy(base)
            meta = doc.setdefault("cozyMetadata", {})
            meta["updatedAt"] = now
            meta["uploadedAt"] = now
            meta["uploadedOn"] = f"https://{instance.domain}/"
            if upload.app:
                meta["uploadedBy"] = {"slug": upload.app}
            if upload.tags:
                doc["tags"] = _dedup(upload.tags)
        doc.update(
            {
                "updated_at": upload.updated_at or now,
                "size": str(temp.size),
                "md5sum": base64.b64encode(temp.md5.digest()).decode("ascii"),
                "mime": mime,
                "class": klass,
                "executable": upload.executable,
                "encrypted": upload.encrypted,
                "internal_vfs_id": temp.key,
            }
        )
        if doc["updated_at"] < doc["created_at"]:
            doc["updated_at"] = doc["created_at"]
        if upload.metadata is not None:
            doc["metadata"] = upload.metadata
        return doc

    async def create_file(
        self,
        instance: Any,
        upload: Upload,
        read_into: Callable[[Callable[[bytes], Any]], Awaitable[int]],
    ) -> Doc:
        names.check_name(upload.name)
        # Refused before a byte is read (and checked again at the commit).
        await self._parent(instance, upload.dir_id)
        await self._free(instance, upload.dir_id, upload.name)
        temp = await self.receive(instance, upload, read_into)
        return await self._commit_new(instance, upload, temp)

    async def _commit_new(self, instance: Any, upload: Upload, temp: TempFile) -> Doc:
        store = self.store_of(instance)

        async def step() -> Doc:
            try:
                await self._parent(instance, upload.dir_id)
                await self._free(instance, upload.dir_id, upload.name)
                await self.check_quota(instance, temp.size)
            except BaseException:
                await self._run(temp.abort)
                raise
            doc = self._file_doc(instance, upload, temp, None)
            await self._add_image_metadata(doc, temp, upload)
            await self._run(store.commit, temp, doc["_id"])
            try:
                result = await self.documents.put(instance, FILES, doc)
            except BaseException:
                await self._run(store.delete, temp.key)
                await self._run(store.unmark, temp.key)
                raise
            await self._run(store.unmark, temp.key)
            doc["_rev"] = result["rev"]
            self._count(instance, files=temp.size)
            return doc

        doc = await self._locked(instance, step)
        self._uploaded(instance, doc)
        return doc

    async def overwrite(
        self,
        instance: Any,
        doc_id: str,
        upload: Upload,
        read_into: Callable[[Callable[[bytes], Any]], Awaitable[int]],
        *,
        if_match: str | None = None,
    ) -> Doc:
        current = await self.get(instance, doc_id)
        if is_dir(current):
            raise BadRequest("cannot overwrite a directory")
        _check_rev(current, if_match)
        temp = await self.receive(instance, upload, read_into)
        store = self.store_of(instance)

        async def step() -> Doc:
            try:
                base = await self.get(instance, doc_id)
                _check_rev(base, if_match)
                keep = await self._keeps_version(instance, base)
                extra = temp.size if keep else temp.size - size_of(base)
                await self.check_quota(instance, max(extra, 0))
            except BaseException:
                await self._run(temp.abort)
                raise
            up = attrs.evolve(upload, name=base["name"], dir_id=base["dir_id"])
            doc = self._file_doc(instance, up, temp, base)
            await self._add_image_metadata(doc, temp, upload)
            old_key = base.get("internal_vfs_id")
            await self._run(store.commit, temp, doc_id)
            if old_key:
                await self._run(store.mark, old_key, doc_id)
            try:
                result = await self.documents.put(instance, FILES, doc)
            except BaseException as error:
                await self._run(store.delete, temp.key)
                await self._run(store.unmark, temp.key)
                if old_key:
                    await self._run(store.unmark, old_key)
                if isinstance(error, DocConflict):
                    raise PreconditionFailed("the file changed meanwhile") from None
                raise
            doc["_rev"] = result["rev"]
            await self._run(store.unmark, temp.key)
            self._count(instance, files=temp.size - size_of(base))
            if old_key:
                if keep:
                    await self._add_version(instance, base)
                else:
                    await self._run(store.delete, old_key)
                await self._run(store.unmark, old_key)
            return doc

        doc = await self._locked(instance, step)
        self._uploaded(instance, doc)
        return doc

    async def _add_image_metadata(self, doc: Doc, temp: TempFile, upload: Upload) -> None:
        """An image's width, height and EXIF date go to its ``metadata``;
        the EXIF date is its ``created_at`` unless the client gave one
        (cozy-stack's order: EXIF, CreatedAt, Date, now)."""
        if self.image_metadata is None or doc.get("class") != "image":
            return
        try:
            found = await self._run(self.image_metadata, temp.path)
        except Exception:
            log.failure("reading the metadata of an image")
            return
        if not found:
            return
        doc["metadata"] = {**found, **(doc.get("metadata") or {})}
        if found.get("datetime"):
            doc["created_at"] = found["datetime"]
            if doc.get("updated_at", "") < doc["created_at"]:
                doc["updated_at"] = doc["created_at"]

    def _uploaded(self, instance: Any, doc: Doc) -> None:
        if self.on_uploaded is not None:
            try:
                self.on_uploaded(instance, doc)
            except Exception:
                log.failure("after the upload of {id}", id=doc.get("_id"))

    def _count(self, instance: Any, *, files: int = 0, trash: int = 0, versions: int = 0):
        usage = self._usage.get(self._usage_key(instance))
        if usage is not None:
            usage.files += files
            usage.trash += trash
            usage.versions += versions

    # -- versions -----------------------------------------------------------------
    async def versions_of(self, instance: Any, doc_id: str) -> list[Doc]:
        result = await self.documents.all_docs(
            instance,
            VERSIONS,
            include_docs=True,
            start_key=f"{doc_id}/",
            end_key=f"{doc_id}/\uffff",
        )
        docs = [row["doc"] for row in result.get("rows", []) if row.get("doc")]
        docs.sort(key=lambda d: d.get("updated_at", ""))
        return docs

    async def _keeps_version(self, instance: Any, base: Doc) -> bool:
        if self.versions_max <= 0 or not base.get("internal_vfs_id"):
            return False
        if self.versions_min_delay > 0:
            versions = await self.versions_of(instance, base["_id"])
            if versions:
                newest = versions[-1].get("cozyMetadata", {}).get("uploadedAt", "")
                newest_at = _parse_time(newest)
                if newest_at is not None and (
                    self._seconds() - newest_at < self.versions_min_delay
                ):
                    return False
        return True

    async def _add_version(self, instance: Any, base: Doc) -> None:
        key = base["internal_vfs_id"]
        version = {
            "_id": f"{base['_id']}/{key}",
            "updated_at": base.get("updated_at"),
            "size": base.get("size", "0"),
            "md5sum": base.get("md5sum"),
            "tags": base.get("tags", []),
            "internal_vfs_id": key,
            "relationships": {"file": {"data": {"_id": base["_id"], "_type": FILES}}},
            "cozyMetadata": {
                **base.get("cozyMetadata", {}),
                "uploadedAt": base.get("cozyMetadata", {}).get("uploadedAt") or self.now(),
                "versionCreatedAt": self.now(),
            },
        }
        await self.documents.put(instance, VERSIONS, version, create_db=True)
        self._count(instance, versions=size_of(version))
        versions = await self.versions_of(instance, base["_id"])
        for old in versions[: max(len(versions) - self.versions_max, 0)]:
            await self.delete_version(instance, old)

    async def get_version(self, instance: Any, version_id: str) -> Doc:
        try:
            return await self.documents.get(instance, VERSIONS, version_id)
        except DocNotFound:
            raise FileNotFound("Version not found") from None

    async def delete_version(self, instance: Any, version: Doc) -> None:
        store = self.store_of(instance)
        key = version.get("internal_vfs_id", "")
        file_id = version["_id"].split("/", 1)[0]
        if key:
            await self._run(store.mark, key, file_id)
        await self.documents.delete(instance, VERSIONS, version["_id"], version["_rev"])
        self._count(instance, versions=-size_of(version))
        if key:
            await self._run(store.delete, key)
            await self._run(store.unmark, key)

    async def revert(self, instance: Any, doc_id: str, version_id: str) -> Doc:
        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            version = await self.get_version(instance, version_id)
            if not version_id.startswith(doc_id + "/"):
                raise FileNotFound("Version not found")
            doc = copy.deepcopy(base)
            for field in ("size", "md5sum", "internal_vfs_id", "updated_at", "tags"):
                if field in version:
                    doc[field] = version[field]
            doc.setdefault("cozyMetadata", {})["updatedAt"] = self.now()
            old_key = base.get("internal_vfs_id")
            # The current content becomes a version; the version's, current.
            await self.documents.delete(instance, VERSIONS, version["_id"], version["_rev"])
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            self._count(
                instance,
                files=size_of(doc) - size_of(base),
                versions=-size_of(version),
            )
            if old_key:
                await self._add_version(instance, base)
            return doc

        return await self._locked(instance, step)

    async def version_with_metadata(
        self,
        instance: Any,
        doc_id: str,
        metadata: Doc,
        *,
        tags: tuple[str, ...] = (),
    ) -> Doc:
        """A new version of a file with the same content and new metadata:
        the current one becomes an old version (POST /files/:id/versions)."""
        store = self.store_of(instance)
        source = await self.get(instance, doc_id)
        if is_dir(source) or not source.get("internal_vfs_id"):
            raise BadRequest("only a file has versions")
        await self.check_quota(instance, size_of(source))
        key = await self._run(store.copy, source["internal_vfs_id"])

        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            if base.get("internal_vfs_id") != source.get("internal_vfs_id"):
                raise PreconditionFailed("the file changed meanwhile")
            doc = copy.deepcopy(base)
            doc["internal_vfs_id"] = key
            doc["metadata"] = metadata
            if tags:
                doc["tags"] = _dedup([*doc.get("tags", []), *tags])
            now = self.now()
            meta = doc.setdefault("cozyMetadata", {})
            meta["updatedAt"] = meta["uploadedAt"] = now
            old_key = base["internal_vfs_id"]
            await self._run(store.mark, key, doc_id)
            await self._run(store.mark, old_key, doc_id)
            try:
                result = await self.documents.put(instance, FILES, doc)
            except BaseException:
                await self._run(store.unmark, old_key)
                raise
            finally:
                await self._run(store.unmark, key)
            doc["_rev"] = result["rev"]
            await self._add_version(instance, base)
            await self._run(store.unmark, old_key)
            return doc

        try:
            return await self._locked(instance, step)
        except BaseException:
            await self._run(store.delete, key)
            raise

    async def clean_versions(self, instance: Any) -> None:
        result = await self.documents.all_docs(instance, VERSIONS, include_docs=True)
        for row in result.get("rows", []):
            if row.get("doc") and not row["id"].startswith("_design"):
                await self.delete_version(instance, row["doc"])

    # -- metadata changes ---------------------------------------------------------
    async def patch(
        self,
        instance: Any,
        doc_id: str,
        changes: Doc,
        *,
        if_match: str | None = None,
    ) -> Doc:
        """Rename, move, tag, … one entry (``changes``: the JSON:API
        attributes of a PATCH)."""
        if doc_id in (ROOT_DIR_ID, TRASH_DIR_ID):
            raise Protected("the root and the trash cannot be changed")
        if "name" in changes:
            names.check_name(changes["name"])

        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            _check_rev(base, if_match)
            doc = copy.deepcopy(base)
            if "tags" in changes:
                tags = changes["tags"]
                if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                    raise names.InvalidName(
                        "tags must be a list of strings", code="bad_tags"
                    )
                doc["tags"] = _dedup(tags)
            if "executable" in changes and not is_dir(doc):
                doc["executable"] = bool(changes["executable"])
            if "updated_at" in changes and isinstance(changes["updated_at"], str):
                doc["updated_at"] = changes["updated_at"]
            if "class" in changes and isinstance(changes["class"], str):
                doc["class"] = changes["class"]
            if "mime" in changes and isinstance(changes["mime"], str):
                doc["mime"] = changes["mime"]
            favorite = (changes.get("cozyMetadata") or {}).get("favorite")
            if isinstance(favorite, bool):
                doc.setdefault("cozyMetadata", {})["favorite"] = favorite
            name = changes.get("name", doc["name"])
            dir_id = changes.get("dir_id", doc["dir_id"])
            if not isinstance(dir_id, str):
                raise names.InvalidName("dir_id must be a string", code="bad_dir_id")
            moved = name != base["name"] or dir_id != base["dir_id"]
            if moved:
                return await self._move(instance, base, doc, name, dir_id)
            doc.setdefault("cozyMetadata", {})["updatedAt"] = self.now()
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            return doc

        return await self._locked(instance, step)

    async def _move(
        self,
        instance: Any,
        base: Doc,
        doc: Doc,
        name: str,
        dir_id: str,
        *,
        trashing: bool | None = None,
    ) -> Doc:
        """Inside the lock: ``doc`` (changed from ``base``) gets ``name``
        in ``dir_id``, and a directory's subtree its new paths."""
        try:
            parent = await self.get(instance, dir_id)
        except FileNotFound:
            raise ParentNotFound() from None
        if not is_dir(parent):
            raise ParentNotFound()
        old_path = await self.path_of(instance, base)
        new_path = names.join(parent.get("path") or "/", name)
        if is_dir(base) and (
            dir_id == base["_id"]
            or (parent.get("path") or "/").startswith(old_path.rstrip("/") + "/")
        ):
            raise ForbiddenMove()
        if trashing is None and in_trash_path(parent.get("path", "")) != in_trash_path(
            old_path
        ):
            raise ForbiddenMove() if not in_trash_path(old_path) else NotTrashed()
        await self._free(instance, dir_id, name, but=base["_id"])
        doc["name"] = name
        doc["dir_id"] = dir_id
        doc.setdefault("cozyMetadata", {})["updatedAt"] = self.now()
        if is_dir(doc):
            doc["path"] = new_path
        if trashing is not None and not is_dir(doc):
            doc["trashed"] = trashing
        result = await self.documents.put(instance, FILES, doc)
        doc["_rev"] = result["rev"]
        if is_dir(base):
            await self._move_subtree(instance, old_path, new_path, trashing)
        return doc

    async def _move_subtree(
        self, instance: Any, old_path: str, new_path: str, trashing: bool | None
    ) -> None:
        below = await self.descendant_dirs(instance, old_path)
        changed: list[Doc] = []
        for one in below:
            one = copy.deepcopy(one)
            one["path"] = new_path + one["path"][len(old_path) :]
            changed.append(one)
        for start in range(0, len(changed), PAGE):
            await self.documents.bulk(instance, FILES, changed[start : start + PAGE])
        if trashing is None:
            return
        # Files of the subtree follow the trash state of their directory.
        dir_ids = [d["_id"] for d in below]
        new_root = await self.dir_by_path(instance, new_path)
        if new_root is not None:
            dir_ids.append(new_root["_id"])
        files: list[Doc] = []
        for one in dir_ids:
            async for doc in self._walk_children(instance, one):
                if not is_dir(doc) and doc.get("trashed") != trashing:
                    doc["trashed"] = trashing
                    files.append(doc)
        for start in range(0, len(files), PAGE):
            await self.documents.bulk(instance, FILES, files[start : start + PAGE])

    # -- trash --------------------------------------------------------------------
    async def trash(
        self,
        instance: Any,
        doc_id: str,
        *,
        if_match: str | None = None,
        by: Doc | None = None,
    ) -> Doc:
        if doc_id in (ROOT_DIR_ID, TRASH_DIR_ID):
            raise Protected("the root and the trash cannot be trashed")

        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            _check_rev(base, if_match)
            path = await self.path_of(instance, base)
            if in_trash_path(path) or base.get("trashed"):
                raise AlreadyTrashed()
            parent = await self.get(instance, base["dir_id"])
            doc = copy.deepcopy(base)
            doc["restore_path"] = parent.get("path") or "/"
            meta = doc.setdefault("cozyMetadata", {})
            meta["trashedAt"] = self.now()
            if by:
                meta["trashedBy"] = by
            name = await self._free_name(instance, TRASH_DIR_ID, base["name"])
            moved = await self._move(instance, base, doc, name, TRASH_DIR_ID, trashing=True)
            self.forget_usage(instance)
            return moved

        return await self._locked(instance, step)

    async def restore(self, instance: Any, doc_id: str) -> Doc:
        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            path = await self.path_of(instance, base)
            if not in_trash_path(path) or doc_id == TRASH_DIR_ID:
                raise NotTrashed()
            restore_path = base.get("restore_path") or "/"
            target = await self.dir_by_path(instance, restore_path)
            if target is None or in_trash_path(target.get("path", "")):
                target = await self._mkdir_p_locked(instance, restore_path)
            doc = copy.deepcopy(base)
            doc.pop("restore_path", None)
            name = await self._free_name(instance, target["_id"], base["name"])
            moved = await self._move(
                instance, base, doc, name, target["_id"], trashing=False
            )
            self.forget_usage(instance)
            return moved

        return await self._locked(instance, step)

    async def _mkdir_p_locked(self, instance: Any, path: str) -> Doc:
        current = await self.get(instance, ROOT_DIR_ID)
        for part in names.split_path(path):
            existing = await self.child(instance, current["_id"], part)
            if existing is not None and is_dir(existing):
                current = existing
                continue
            part_name = (
                part
                if existing is None
                else await self._free_name(instance, current["_id"], part)
            )
            now = self.now()
            doc: Doc = {
                "_id": new_doc_id(),
                "type": DIRECTORY,
                "name": part_name,
                "dir_id": current["_id"],
                "path": names.join(current.get("path") or "/", part_name),
                "created_at": now,
                "updated_at": now,
                "tags": [],
                "cozyMetadata": self._cozy_metadata(instance, "", upload=False),
            }
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            current = doc
        return current

    async def trash_list(
        self, instance: Any, *, limit: int = 30, cursor: str | None = None, skip: int = 0
    ) -> tuple[list[Doc], str | None]:
        return await self.children(
            instance, TRASH_DIR_ID, limit=limit, cursor=cursor, skip=skip
        )

    async def destroy(
        self, instance: Any, doc_id: str, *, if_match: str | None = None
    ) -> None:
        """Delete for good an entry of the trash (a directory: its subtree)."""

        async def step() -> None:
            base = await self.get(instance, doc_id)
            _check_rev(base, if_match)
            if doc_id in (ROOT_DIR_ID, TRASH_DIR_ID):
                raise Protected("the root and the trash cannot be destroyed")
            path = await self.path_of(instance, base)
            if not in_trash_path(path):
                raise NotTrashed()
            await self._destroy_locked(instance, base)

        await self._locked(instance, step)

    async def _destroy_locked(self, instance: Any, base: Doc) -> None:
        store = self.store_of(instance)
        if is_dir(base):
            dirs, files = await self.subtree(instance, base)
        else:
            dirs, files = [], [base]
        keys: list[tuple[str, str]] = []
        versions: list[Doc] = []
        for f in files:
            if f.get("internal_vfs_id"):
                keys.append((f["internal_vfs_id"], f["_id"]))
            versions.extend(await self.versions_of(instance, f["_id"]))
        for v in versions:
            if v.get("internal_vfs_id"):
                keys.append((v["internal_vfs_id"], v["_id"].split("/", 1)[0]))
        for key, owner in keys:
            await self._run(store.mark, key, owner)
        if versions:
            await self.documents.bulk(
                instance,
                VERSIONS,
                [{"_id": v["_id"], "_rev": v["_rev"], "_deleted": True} for v in versions],
            )
        # Deepest first: a crash leaves children without parents only
        # inside what was being destroyed (fsck repairs it).
        entries = files + sorted(dirs, key=lambda d: -len(d.get("path", "")))
        for start in range(0, len(entries), PAGE):
            await self.documents.bulk(
                instance,
                FILES,
                [{**e, "_deleted": True} for e in entries[start : start + PAGE]],
            )
        for key, _ in keys:
            await self._run(store.delete, key)
            await self._run(store.unmark, key)
        self.forget_usage(instance)

    async def empty_trash(self, instance: Any) -> None:
        async def step() -> None:
            entries = [d async for d in self._walk_children(instance, TRASH_DIR_ID)]
            for entry in entries:
                await self._destroy_locked(instance, entry)

        await self._locked(instance, step)

    # -- copy -----------------------------------------------------------------------
    async def copy_file(
        self,
        instance: Any,
        doc_id: str,
        *,
        name: str | None = None,
        dir_id: str | None = None,
        app: str = "",
    ) -> Doc:
        store = self.store_of(instance)
        source = await self.get(instance, doc_id)
        if is_dir(source):
            raise BadRequest("directories cannot be copied")
        target_dir = dir_id or source["dir_id"]
        if name is not None:
            names.check_name(name)
        await self.check_quota(instance, size_of(source))
        key = await self._run(store.copy, source["internal_vfs_id"])

        async def step() -> Doc:
            await self._parent(instance, target_dir)
            if name is None:
                wanted = names.copy_name(source["name"])
                final = await self._free_name(instance, target_dir, wanted)
            else:
                await self._free(instance, target_dir, name)
                final = name
            await self.check_quota(instance, size_of(source))
            doc = copy.deepcopy(source)
            for field in ("_rev", "referenced_by", "restore_path"):
                doc.pop(field, None)
            doc.update(
                {
                    "_id": new_doc_id(),
                    "name": final,
                    "dir_id": target_dir,
                    "internal_vfs_id": key,
                    "trashed": False,
                    "cozyMetadata": self._cozy_metadata(instance, app, upload=True),
                }
            )
            await self._run(store.mark, key, doc["_id"])
            try:
                result = await self.documents.put(instance, FILES, doc)
            finally:
                await self._run(store.unmark, key)
            doc["_rev"] = result["rev"]
            self._count(instance, files=size_of(doc))
            return doc

        try:
            return await self._locked(instance, step)
        except BaseException:
            await self._run(store.delete, key)
            raise

    # -- references -------------------------------------------------------------------
    async def add_references(self, instance: Any, doc_id: str, refs: list[Doc]) -> Doc:
        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            doc = copy.deepcopy(base)
            current = doc.setdefault("referenced_by", [])
            for ref in refs:
                if ref not in current:
                    current.append(ref)
            if doc == base:
                return doc
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            return doc

        return await self._locked(instance, step)

    async def remove_references(self, instance: Any, doc_id: str, refs: list[Doc]) -> Doc:
        async def step() -> Doc:
            base = await self.get(instance, doc_id)
            doc = copy.deepcopy(base)
            doc["referenced_by"] = [
                r for r in doc.get("referenced_by", []) if r not in refs
            ]
            if doc == base:
                return doc
            result = await self.documents.put(instance, FILES, doc)
            doc["_rev"] = result["rev"]
            return doc

        return await self._locked(instance, step)

    async def referencing(self, instance: Any, doctype: str, doc_id: str) -> list[Doc]:
        """Files referenced by the document ``doctype/doc_id``."""
        return await self._find(
            instance,
            {
                "selector": {
                    "referenced_by": {"$elemMatch": {"type": doctype, "id": doc_id}}
                },
                "limit": 10000,
            },
        )

    # -- start ----------------------------------------------------------------------
    async def recover(self, instance: Any) -> dict[str, int]:
        """Leftovers of a crash: temporary files deleted, pending keys
        resolved against the documents (kept when referenced)."""
        store = self.store_of(instance)
        removed_tmp = await self._run(store.clean_tmp)
        deleted = kept = 0
        for key, owner in await self._run(store.pending):
            if await self.key_referenced(instance, key, owner):
                kept += 1
            else:
                await self._run(store.delete, key)
                deleted += 1
            await self._run(store.unmark, key)
        self.forget_usage(instance)
        return {"tmp": removed_tmp, "deleted": deleted, "kept": kept}

    async def key_referenced(self, instance: Any, key: str, owner: str) -> bool:
        if not owner:
            # A marker whose write a crash cut: the upload it marks died
            # before its document could be written.
            return False
        try:
            doc = await self.documents.get(instance, FILES, owner)
            if doc.get("internal_vfs_id") == key:
                return True
        except DocNotFound:
            pass
        try:
            await self.documents.get(instance, VERSIONS, f"{owner}/{key}")
            return True
        except DocNotFound:
            return False
        except Exception:
            return False


def _shield(awaitable) -> defer.Deferred:
    """``awaitable`` as a Deferred that a cancellation does not stop: the
    caller stops waiting, the steps run on."""
    inner = defer.ensureDeferred(awaitable)
    if inner.called:
        return inner
    outer: defer.Deferred = defer.Deferred()

    def done(result):
        if not outer.called:
            outer.callback(result)
        elif isinstance(result, Failure):
            log.failure("a file system change failed after its request went away", result)

    inner.addBoth(done)
    return outer


def _dedup(tags) -> list[str]:
    seen: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if tag and tag not in seen:
            seen.append(tag)
    return seen


def _check_rev(doc: Doc, if_match: str | None) -> None:
    if if_match is None:
        return
    wanted = if_match.strip().strip('"')
    if wanted and wanted != doc.get("_rev"):
        raise PreconditionFailed("Precondition Failed: the revision does not match")


def _parse_time(text: str) -> float | None:
    if not text:
        return None
    try:
        value = text.replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
