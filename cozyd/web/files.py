"""``/files``: the virtual file system of an instance (cozy-stack's
``web/files``), over ``cozyd.files``.

Every route resolves the caller's permission set (``Guard``) and checks
the entry it touches with ``cozyd.files.access.authorize`` (a rule on a
directory covers its subtree; share tokens go through the same check).
Uploads are streamed (``body=streamed``) to the VFS, which writes them to
a temporary file while hashing, then commits; downloads stream from disk
with ``Range`` and back-pressure (``ContentProducer``). Errors are JSON:API.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
import secrets
import time
import zipfile
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from attrs import evolve as attrs_evolve
from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from cozyd.errors import BadRequest, CozyError, NotFound, PermissionDenied
from cozyd.files import access, names
from cozyd.files.names import InvalidName
from cozyd.files.vfs import (
    DIRECTORY,
    FILE,
    FILES,
    TRASH_DIR_ID,
    VFS,
    FileNotFound,
    Upload,
    is_dir,
)
from cozyd.instance.defaults import ROOT_DIR_ID
from cozyd.web.bodies import body_stream, read_json
from cozyd.web.common import JSONAPI, instance_of, json_response, jsonapi_errors
from cozyd.web.guard import Guard, permissions_of
from cozyd.web.params import query_bool, query_int, query_param
from cozyd.web.routing import Service, json_body, route, streamed, token
from cozyd.web.streaming import json_rows_response

log = Logger()

#: Largest body a streamed route lets through the site (the VFS enforces
#: ``[fs] max_file_size`` and the quota itself, with the reference's 413).
MAX_UPLOAD = 2**50
CHUNK = 64 * 1024
#: How long a download link, an archive link or a thumbnail secret lives.
SECRET_TTL = 600.0
DEFAULT_PAGE = 30
MAX_PAGE = 1000
THUMB_FORMATS = ("tiny", "small", "medium", "large")
#: Metadata keys that need a permission of their own (files.md).
SPECIAL_METADATA = {
    "carbonCopy": "io.cozy.certified.carbon_copy",
    "electronicSafe": "io.cozy.certified.electronic_safe",
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Secrets:
    """Short-lived secrets (download links, archives, thumbnails), in
    memory: they name what they give access to, for one instance."""

    def __init__(self, seconds: Callable[[], float] = time.time, ttl: float = SECRET_TTL):
        self._seconds = seconds
        self._ttl = ttl
        self._values: dict[str, tuple[float, str, Any]] = {}

    def issue(self, prefix: str, value: Any, ttl: float | None = None) -> str:
        now = self._seconds()
        self._values = {k: v for k, v in self._values.items() if v[0] > now}
        secret = secrets.token_urlsafe(24)
        self._values[secret] = (now + (ttl or self._ttl), prefix, value)
        return secret

    def get(self, prefix: str, secret: str) -> Any:
        entry = self._values.get(secret)
        if entry is None or entry[0] <= self._seconds() or entry[1] != prefix:
            raise NotFound("the link is not valid, or expired")
        return entry[2]


# -- JSON:API rendering ---------------------------------------------------------------
HIDDEN = frozenset({"internal_vfs_id", "referenced_by"})


def attributes(doc: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    attrs = {k: v for k, v in doc.items() if not k.startswith("_") and k not in HIDDEN}
    if not is_dir(doc):
        attrs.setdefault("size", "0")
        attrs.setdefault("trashed", False)
        if path is not None:
            attrs["path"] = path
    return attrs


def file_object(
    doc: dict[str, Any], *, path: str | None = None, thumbs: str | None = None
) -> dict[str, Any]:
    doc_id = doc["_id"]
    obj: dict[str, Any] = {
        "type": FILES,
        "id": doc_id,
        "meta": {"rev": doc.get("_rev", "")},
        "attributes": attributes(doc, path),
        "links": {"self": f"/files/{quote(doc_id, safe='')}"},
    }
    relationships: dict[str, Any] = {}
    if doc.get("dir_id"):
        relationships["parent"] = {
            "links": {"related": f"/files/{quote(doc['dir_id'], safe='')}"},
            "data": {"type": FILES, "id": doc["dir_id"]},
        }
    refs = doc.get("referenced_by") or []
    if refs:
        relationships["referenced_by"] = {
            "links": {
                "self": f"/files/{quote(doc_id, safe='')}/relationships/referenced_by"
            },
            "data": refs,
        }
    if relationships:
        obj["relationships"] = relationships
    if thumbs:
        for fmt in THUMB_FORMATS:
            obj["links"][fmt] = f"/files/{quote(doc_id, safe='')}/thumbnails/{thumbs}/{fmt}"
    return obj


def jsonapi(request: IRequest, body: Any, status: int = 200) -> bytes:
    return json_response(request, body, status=status, content_type=JSONAPI)


def _parse_time_header(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


def _query_time(request: IRequest, name: str) -> str | None:
    text = query_param(request, name)
    if not text:
        return None
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidName(f"invalid {name} date", code="invalid_date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


# -- downloads ---------------------------------------------------------------------------
@implementer(interfaces.IPushProducer)
class ContentProducer:
    """Writes ``length`` bytes of a file from ``offset`` until the transport
    says its buffer is full (``pauseProducing``), and goes on when it
    drained (``resumeProducing``): back-pressure from the client, memory
    flat whatever the size."""

    def __init__(self, request: IRequest, fileobj, offset: int, length: int):
        self.request = request
        self.file = fileobj
        self.remaining = length
        self._paused = False
        self._pumping = False
        fileobj.seek(offset)

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused and self.request is not None:
                if self.remaining <= 0:
                    self._done()
                    return
                data = self.file.read(min(CHUNK, self.remaining))
                if not data:
                    self._done()
                    return
                self.remaining -= len(data)
                self.request.write(data)
        finally:
            self._pumping = False

    def _done(self) -> None:
        request, self.request = self.request, None
        self.file.close()
        if request is not None:
            request.unregisterProducer()
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.file.close()
        self.request = None


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(start, end)`` inclusive, None (no or several ranges: the whole
    content) or False (unsatisfiable: 416)."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None if "," in header else False
    first, last = match.groups()
    if first == "" and last == "":
        return False
    if first == "":
        length = int(last)
        if length == 0:
            return False
        return (max(size - length, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return False
    return (start, min(end, size - 1))


class FilesService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        vfs: VFS,
        guard: Guard,
        *,
        seconds: Callable[[], float] = time.time,
        scheme: str = "http",
        pause: Callable[[], Awaitable[Any]] | None = None,
        secrets_store: Secrets | None = None,
        thumbnails: Any = None,
    ):
        super().__init__()
        self.vfs = vfs
        self.guard = guard
        self.scheme = scheme
        self.pause = pause
        self.secrets = secrets_store or Secrets(seconds)
        self.thumbnails = thumbnails

    # -- helpers --------------------------------------------------------------------
    async def _authorize(self, request: IRequest, verb: str, doc: dict[str, Any]) -> None:
        await access.authorize(
            self.vfs, instance_of(request), permissions_of(request), verb, doc
        )

    def _app(self, request: IRequest) -> str:
        permissions = permissions_of(request)
        if permissions.type in ("app", "konnector", "webapp"):
            return permissions.subject or ""
        return ""

    async def _doc_by_path_param(self, request: IRequest) -> dict[str, Any]:
        path = query_param(request, "Path")
        if not path:
            raise BadRequest("the Path parameter is missing")
        return await self.vfs.by_path(instance_of(request), path)

    def _thumbs_secret(self, request: IRequest, doc: dict[str, Any]) -> str | None:
        if is_dir(doc) or doc.get("class") != "image" or self.thumbnails is None:
            return None
        return self.secrets.issue(instance_of(request).prefix, ("thumb", doc["_id"]))

    async def _object(self, request: IRequest, doc: dict[str, Any], *, with_path=False):
        path = await self.vfs.path_of(instance_of(request), doc) if with_path else None
        return file_object(doc, path=path, thumbs=self._thumbs_secret(request, doc))

    async def _answer_doc(
        self, request: IRequest, doc: dict[str, Any], status: int = 200
    ) -> bytes:
        instance = instance_of(request)
        if status == 201:
            request.setHeader(
                b"Location",
                f"{self.scheme}://{instance.domain}/files/{quote(doc['_id'], safe='')}".encode(),
            )
        body = {"data": await self._object(request, doc)}
        return jsonapi(request, body, status)

    def _page(self, request: IRequest) -> tuple[int, str | None, int]:
        limit = query_int(request, "page[limit]", minimum=1) or DEFAULT_PAGE
        cursor = query_param(request, "page[cursor]") or None
        skip = query_int(request, "page[skip]", minimum=0) or 0
        return min(limit, MAX_PAGE), cursor, skip

    async def _listing(
        self, request: IRequest, directory: dict[str, Any], base: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        limit, cursor, skip = self._page(request)
        instance = instance_of(request)
        page, next_cursor = await self.vfs.children(
            instance, directory["_id"], limit=limit, cursor=cursor, skip=skip
        )
        count = await self.vfs.count_children(instance, directory["_id"])
        links: dict[str, Any] = {}
        if next_cursor:
            links["next"] = f"{base}?page[cursor]={quote(next_cursor, safe='')}" + (
                f"&page[limit]={limit}" if limit != DEFAULT_PAGE else ""
            )
        return (
            [file_object(d, thumbs=self._thumbs_secret(request, d)) for d in page],
            links,
            count,
        )

    # -- create ----------------------------------------------------------------------
    @route("", "POST", auth=token(collection=False), body=streamed(MAX_UPLOAD))
    async def create_at_root(self, request: IRequest):
        return await self._create(request, ROOT_DIR_ID)

    @route("{dir_id}", "POST", auth=token(collection=False), body=streamed(MAX_UPLOAD))
    async def create(self, request: IRequest, dir_id: str):
        return await self._create(request, dir_id)

    async def _create(self, request: IRequest, dir_id: str):
        instance = instance_of(request)
        kind = query_param(request, "Type")
        name = query_param(request, "Name")
        if kind not in (FILE, DIRECTORY):
            raise InvalidName("Invalid or missing Type", code="invalid_type")
        names.check_name(name)
        tags = tuple(
            t.strip() for t in (query_param(request, "Tags") or "").split(",") if t.strip()
        )
        try:
            parent = await self.vfs.get(instance, dir_id)
        except FileNotFound:
            parent = None
        if parent is None or not is_dir(parent):
            # A 404 only to those who may write there (no probing of ids).
            await self._authorize(request, "POST", {"_id": dir_id, "dir_id": ""})
            raise NotFound("The parent directory does not exist")
        await self._authorize(request, "POST", parent)
        created_at = _query_time(request, "CreatedAt")
        updated_at = _query_time(request, "UpdatedAt") or _parse_time_header(
            request.getHeader(b"date")
        )
        metadata = self._metadata_by_id(request)
        if kind == DIRECTORY:
            doc = await self.vfs.create_dir(
                instance,
                dir_id,
                name,
                tags=tags,
                created_at=created_at,
                updated_at=updated_at,
                app=self._app(request),
                metadata=metadata,
            )
            return await self._answer_doc(request, doc, 201)
        upload = self._upload(request, name, dir_id, tags, created_at, updated_at)
        if metadata is not None:
            upload = attrs_evolve(upload, metadata={**(upload.metadata or {}), **metadata})
        stream = body_stream(request)
        doc = await self.vfs.create_file(instance, upload, stream.read_into)
        return await self._answer_doc(request, doc, 201)

    def _metadata_by_id(self, request: IRequest) -> dict[str, Any] | None:
        metadata_id = query_param(request, "MetadataID")
        if not metadata_id:
            return None
        try:
            entry = self.secrets.get(instance_of(request).prefix, metadata_id)
        except NotFound:
            raise InvalidName(
                "Invalid or expired MetadataID", code="invalid_metadata"
            ) from None
        if not (isinstance(entry, tuple) and entry[0] == "metadata"):
            raise InvalidName("Invalid or expired MetadataID", code="invalid_metadata")
        return dict(entry[1])

    def _metadata_body(self, request: IRequest) -> dict[str, Any]:
        body = read_json(request)
        data = body.get("data") if isinstance(body, dict) else None
        attributes_ = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attributes_, dict):
            raise BadRequest("a JSON:API io.cozy.files.metadata object is expected")
        permissions = permissions_of(request)
        for key, doctype in SPECIAL_METADATA.items():
            if key in attributes_ and not permissions.allows_collection("POST", doctype):
                raise PermissionDenied(f"{key} needs a permission on {doctype}")
        return attributes_

    @route("upload/metadata", "POST", auth=token(FILES, verb="POST"))
    async def upload_metadata(self, request: IRequest):
        attributes_ = self._metadata_body(request)
        secret = self.secrets.issue(instance_of(request).prefix, ("metadata", attributes_))
        return jsonapi(
            request,
            {
                "data": {
                    "type": "io.cozy.files.metadata",
                    "id": secret,
                    "attributes": attributes_,
                }
            },
            201,
        )

    @route("{file_id}/versions", "POST", auth=token(collection=False))
    async def new_version(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PUT", doc)
        attributes_ = self._metadata_body(request)
        tags = tuple(
            t.strip() for t in (query_param(request, "Tags") or "").split(",") if t.strip()
        )
        new = await self.vfs.version_with_metadata(
            instance, file_id, attributes_, tags=tags
        )
        return await self._answer_doc(request, new)

    def _upload(self, request, name, dir_id, tags, created_at, updated_at) -> Upload:
        size: int | None = None
        size_text = query_param(request, "Size")
        if size_text is None:
            size_text = _header(request, b"content-length")
        if size_text not in (None, ""):
            try:
                size = int(size_text)
            except ValueError:
                raise InvalidName("invalid Size", code="invalid_size") from None
            if size < 0:
                raise InvalidName("invalid Size", code="invalid_size")
        md5: bytes | None = None
        md5_text = _header(request, b"content-md5")
        if md5_text:
            try:
                md5 = base64.b64decode(md5_text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("Invalid Content-MD5 header") from None
            if len(md5) != 16:
                raise BadRequest("Invalid Content-MD5 header")
        metadata = None
        metadata_text = query_param(request, "Metadata")
        if metadata_text:
            import json

            try:
                metadata = json.loads(metadata_text)
            except ValueError:
                raise InvalidName("invalid Metadata", code="invalid_metadata") from None
            if not isinstance(metadata, dict):
                raise InvalidName("invalid Metadata", code="invalid_metadata")
        return Upload(
            name=name,
            dir_id=dir_id,
            size=size,
            md5=md5,
            content_type=_header(request, b"content-type"),
            tags=tags,
            executable=bool(query_bool(request, "Executable")),
            encrypted=bool(query_bool(request, "Encrypted")),
            created_at=created_at,
            updated_at=updated_at,
            metadata=metadata,
            app=self._app(request),
        )

    # -- overwrite -------------------------------------------------------------------
    @route("{file_id}", "PUT", auth=token(collection=False), body=streamed(MAX_UPLOAD))
    async def overwrite(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PUT", doc)
        if is_dir(doc):
            raise BadRequest("a directory has no content to overwrite")
        tags = tuple(
            t.strip() for t in (query_param(request, "Tags") or "").split(",") if t.strip()
        )
        upload = self._upload(
            request,
            doc["name"],
            doc["dir_id"],
            tags,
            None,
            _query_time(request, "UpdatedAt")
            or _parse_time_header(request.getHeader(b"date")),
        )
        new = await self.vfs.overwrite(
            instance,
            file_id,
            upload,
            body_stream(request).read_into,
            if_match=_header(request, b"if-match"),
        )
        return await self._answer_doc(request, new)

    # -- metadata ---------------------------------------------------------------------
    @route("metadata", "GET", auth=token(collection=False))
    async def metadata_by_path(self, request: IRequest):
        doc = await self._doc_by_path_param(request)
        await self._authorize(request, "GET", doc)
        return await self._show(request, doc, "/files/metadata")

    @route("{file_id}", "GET", auth=token(collection=False))
    async def show(self, request: IRequest, file_id: str):
        doc = await self.vfs.get(instance_of(request), file_id)
        await self._authorize(request, "GET", doc)
        return await self._show(request, doc, f"/files/{quote(file_id, safe='')}")

    async def _show(self, request: IRequest, doc: dict[str, Any], base: str):
        if request.method == b"HEAD":
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", JSONAPI.encode())
            return b""
        obj = await self._object(request, doc)
        if not is_dir(doc):
            return jsonapi(request, {"data": obj})
        included, links, count = await self._listing(request, doc, base)
        obj.setdefault("relationships", {})["contents"] = {
            "data": [{"type": FILES, "id": i["id"]} for i in included],
            "meta": {"count": count},
        }
        body: dict[str, Any] = {"data": obj, "included": included}
        if links:
            body["links"] = links
        return jsonapi(request, body)

    @route("{file_id}/relationships/contents", "GET", auth=token(collection=False))
    async def contents(self, request: IRequest, file_id: str):
        doc = await self.vfs.get(instance_of(request), file_id)
        await self._authorize(request, "GET", doc)
        if not is_dir(doc):
            raise BadRequest("not a directory")
        included, links, count = await self._listing(
            request, doc, f"/files/{quote(file_id, safe='')}/relationships/contents"
        )
        body: dict[str, Any] = {"data": included, "meta": {"count": count}}
        if links:
            body["links"] = links
        return jsonapi(request, body)

    @route("{file_id}/size", "GET", auth=token(collection=False))
    async def size(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "GET", doc)
        total = (
            await self.vfs.dir_size(instance, doc)
            if is_dir(doc)
            else int(doc.get("size") or 0)
        )
        return jsonapi(
            request,
            {
                "data": {
                    "type": "io.cozy.files.sizes",
                    "id": file_id,
                    "attributes": {"size": str(total)},
                    "meta": {},
                }
            },
        )

    # -- patch ------------------------------------------------------------------------
    def _patch_attributes(self, request: IRequest) -> dict[str, Any]:
        body = read_json(request)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("attributes", {}), dict):
            raise BadRequest('a JSON:API body is expected: {"data": {"attributes": …}}')
        return data.get("attributes") or {}

    @route("metadata", "PATCH", auth=token(collection=False))
    async def patch_by_path(self, request: IRequest):
        doc = await self._doc_by_path_param(request)
        return await self._patch(request, doc, self._patch_attributes(request))

    @route("{file_id}", "PATCH", auth=token(collection=False))
    async def patch(self, request: IRequest, file_id: str):
        changes = self._patch_attributes(request)
        doc = await self.vfs.get(instance_of(request), file_id)
        return await self._patch(request, doc, changes)

    async def _patch(self, request, doc, changes, if_match: str | bool | None = False):
        instance = instance_of(request)
        await self._authorize(request, "PATCH", doc)
        if if_match is False:
            if_match = _header(request, b"if-match")
        if changes.get("dir_id") and changes["dir_id"] != doc.get("dir_id"):
            try:
                target = await self.vfs.get(instance, changes["dir_id"])
            except FileNotFound:
                raise NotFound("The parent directory does not exist") from None
            await self._authorize(request, "POST", target)
        if changes.get("move_to_trash"):
            new = await self.vfs.trash(instance, doc["_id"], if_match=if_match)
        elif changes.get("permanent_delete"):
            await self.vfs.destroy(instance, doc["_id"], if_match=if_match)
            return await self._answer_doc(request, doc)
        else:
            new = await self.vfs.patch(instance, doc["_id"], changes, if_match=if_match)
        return await self._answer_doc(request, new)

    @route("", "PATCH", auth=token(collection=False))
    async def patch_batch(self, request: IRequest):
        body = read_json(request)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BadRequest("a JSON:API body with a data array is expected")
        instance = instance_of(request)
        results = []
        errors = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise BadRequest("each item needs an id")
            attributes_ = item.get("attributes") or {}
            rev = (item.get("meta") or {}).get("rev")
            try:
                doc = await self.vfs.get(instance, item["id"])
                await self._authorize(request, "PATCH", doc)
                if attributes_.get("move_to_trash"):
                    new = await self.vfs.trash(instance, doc["_id"], if_match=rev)
                else:
                    new = await self.vfs.patch(
                        instance, doc["_id"], attributes_, if_match=rev
                    )
                results.append(file_object(new))
            except CozyError as error:
                errors.append({**error.jsonapi(), "source": {"id": item["id"]}})
        body_out: dict[str, Any] = {"data": results}
        if errors:
            body_out["errors"] = errors
        return jsonapi(request, body_out)

    # -- trash --------------------------------------------------------------------------
    @route("{file_id}", "DELETE", auth=token(collection=False))
    async def trash(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PATCH", doc)
        permissions = permissions_of(request)
        by = {"kind": permissions.type}
        if permissions.subject:
            by["displayName"] = permissions.subject
        new = await self.vfs.trash(
            instance, file_id, if_match=_header(request, b"if-match"), by=by
        )
        return await self._answer_doc(request, new)

    @route("trash", "GET", auth=token(FILES, verb="GET"))
    async def trash_list(self, request: IRequest):
        instance = instance_of(request)
        trash = await self.vfs.get(instance, TRASH_DIR_ID)
        included, links, count = await self._listing(request, trash, "/files/trash")
        body: dict[str, Any] = {"data": included, "meta": {"count": count}}
        if links:
            body["links"] = links
        return jsonapi(request, body)

    @route("trash", "DELETE", auth=token(FILES, verb="DELETE"))
    async def empty_trash(self, request: IRequest):
        await self.vfs.empty_trash(instance_of(request))
        request.setResponseCode(204)
        return b""

    @route("trash/{file_id}", "POST", auth=token(collection=False))
    async def restore(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "POST", doc)
        new = await self.vfs.restore(instance, file_id)
        return await self._answer_doc(request, new)

    @route("trash/{file_id}", "DELETE", auth=token(collection=False))
    async def destroy(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "DELETE", doc)
        await self.vfs.destroy(instance, file_id, if_match=_header(request, b"if-match"))
        request.setResponseCode(204)
        return b""

    # -- downloads ---------------------------------------------------------------------
    @route("download", "GET", auth=token(collection=False))
    async def download_by_path(self, request: IRequest):
        doc = await self._doc_by_path_param(request)
        await self._authorize(request, "GET", doc)
        return self._send(request, doc)

    @route("download/{file_id}", "GET", auth=token(collection=False))
    async def download(self, request: IRequest, file_id: str):
        doc = await self.vfs.get(instance_of(request), file_id)
        await self._authorize(request, "GET", doc)
        return self._send(request, doc)

    @route("download/{file_id}/{version_id}", "GET", auth=token(collection=False))
    async def download_version(self, request: IRequest, file_id: str, version_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "GET", doc)
        version = await self.vfs.get_version(instance, f"{file_id}/{version_id}")
        merged = {
            **doc,
            **{
                k: version[k] for k in ("size", "md5sum", "internal_vfs_id") if k in version
            },
        }
        return self._send(request, merged)

    def _send(self, request: IRequest, doc: dict[str, Any], name: str | None = None):
        if is_dir(doc):
            raise BadRequest("a directory cannot be downloaded (use an archive)")
        instance = instance_of(request)
        store = self.vfs.store_of(instance)
        key = doc.get("internal_vfs_id") or ""
        try:
            fileobj = store.open(key)
        except (OSError, ValueError):
            raise FileNotFound("the content of this file is missing") from None
        try:
            size = int(doc.get("size") or 0)
            etag = f'"{doc.get("md5sum", "")}"'
            request.setHeader(b"ETag", etag.encode("ascii"))
            request.setHeader(b"Accept-Ranges", b"bytes")
            mime = doc.get("mime") or names.DEFAULT_MIME
            request.setHeader(b"Content-Type", mime.encode("latin-1", "replace"))
            dl = query_param(request, "Dl") in ("1", "true")
            request.setHeader(
                b"Content-Disposition",
                names.content_disposition(
                    "attachment" if dl else "inline", name or doc.get("name", "file")
                ).encode("ascii"),
            )
            request.setHeader(b"Content-Security-Policy", b"default-src 'none'; sandbox")
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            inm = _header(request, b"if-none-match")
            if inm and etag in [v.strip() for v in inm.split(",")]:
                fileobj.close()
                request.setResponseCode(304)
                return b""
            wanted = parse_range(_header(request, b"range"), size)
            if wanted is False:
                fileobj.close()
                request.setResponseCode(416)
                request.setHeader(b"Content-Range", f"bytes */{size}".encode())
                request.setHeader(b"Content-Type", JSONAPI.encode())
                return jsonapi(
                    request,
                    {
                        "errors": [
                            {
                                "status": "416",
                                "title": "Requested Range Not Satisfiable",
                                "detail": "Requested Range Not Satisfiable",
                            }
                        ]
                    },
                    416,
                )
            if wanted is None:
                start, length = 0, size
                request.setResponseCode(200)
            else:
                start, end = wanted
                length = end - start + 1
                request.setResponseCode(206)
                request.setHeader(b"Content-Range", f"bytes {start}-{end}/{size}".encode())
            request.setHeader(b"Content-Length", str(length).encode())
            if request.method == b"HEAD" or length == 0:
                fileobj.close()
                # Finished here: the Content-Length stays the content's.
                request.finish()
                return NOT_DONE_YET
        except BaseException:
            fileobj.close()
            raise
        ContentProducer(request, fileobj, start, length).start()
        return NOT_DONE_YET

    # -- versions ------------------------------------------------------------------------
    @route("revert/{file_id}/{version_id}", "POST", auth=token(collection=False))
    async def revert(self, request: IRequest, file_id: str, version_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "POST", doc)
        new = await self.vfs.revert(instance, file_id, f"{file_id}/{version_id}")
        return await self._answer_doc(request, new)

    @route("{file_id}/{version_id}", "DELETE", auth=token(collection=False))
    async def delete_version(self, request: IRequest, file_id: str, version_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "DELETE", doc)
        version = await self.vfs.get_version(instance, f"{file_id}/{version_id}")
        await self.vfs.delete_version(instance, version)
        request.setResponseCode(204)
        return b""

    @route("{file_id}/{version_id}", "PATCH", auth=token(collection=False))
    async def patch_version(self, request: IRequest, file_id: str, version_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PATCH", doc)
        changes = self._patch_attributes(request)
        tags = changes.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidName("tags must be a list of strings", code="bad_tags")
        version_id = f"{file_id}/{version_id}"
        await self.vfs.get_version(instance, version_id)

        def change(v: dict[str, Any]) -> None:
            v["tags"] = sorted(set(tags), key=tags.index)

        new = await self.vfs.documents.update(
            instance, "io.cozy.files.versions", version_id, change
        )
        return jsonapi(request, {"data": _version_object(new)})

    @route("versions", "DELETE", auth=token(FILES, verb="DELETE"))
    async def clean_versions(self, request: IRequest):
        await self.vfs.clean_versions(instance_of(request))
        request.setResponseCode(204)
        return b""

    @route("{file_id}/versions", "GET", auth=token(collection=False))
    async def list_versions(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "GET", doc)
        versions = await self.vfs.versions_of(instance, file_id)
        return jsonapi(request, {"data": [_version_object(v) for v in versions]})

    # -- copy ------------------------------------------------------------------------------
    @route("{file_id}/copy", "POST", auth=token(collection=False))
    async def copy(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "GET", doc)
        dir_id = query_param(request, "DirID") or doc["dir_id"]
        target = await self.vfs.get(instance, dir_id)
        await self._authorize(request, "POST", target)
        new = await self.vfs.copy_file(
            instance,
            file_id,
            name=query_param(request, "Name"),
            dir_id=dir_id,
            app=self._app(request),
        )
        return await self._answer_doc(request, new, 201)

    # -- references ------------------------------------------------------------------------
    def _refs(self, request: IRequest) -> list[dict[str, str]]:
        body = read_json(request)
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(
            isinstance(r, dict)
            and isinstance(r.get("type"), str)
            and isinstance(r.get("id"), str)
            for r in data
        ):
            raise BadRequest("a data array of {type, id} is expected")
        return [{"type": r["type"], "id": r["id"]} for r in data]

    async def _refs_answer(self, request, doc) -> bytes:
        refs = doc.get("referenced_by") or []
        return jsonapi(
            request,
            {"data": refs, "meta": {"rev": doc.get("_rev"), "count": len(refs)}},
        )

    @route("{file_id}/relationships/referenced_by", "GET", auth=token(collection=False))
    async def get_refs(self, request: IRequest, file_id: str):
        doc = await self.vfs.get(instance_of(request), file_id)
        await self._authorize(request, "GET", doc)
        return await self._refs_answer(request, doc)

    @route("{file_id}/relationships/referenced_by", "POST", auth=token(collection=False))
    async def add_refs(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        refs = self._refs(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PATCH", doc)
        new = await self.vfs.add_references(instance, file_id, refs)
        return await self._refs_answer(request, new)

    @route(
        "{file_id}/relationships/referenced_by",
        "DELETE",
        auth=token(collection=False),
        body=json_body(),
    )
    async def remove_refs(self, request: IRequest, file_id: str):
        instance = instance_of(request)
        refs = self._refs(request)
        doc = await self.vfs.get(instance, file_id)
        await self._authorize(request, "PATCH", doc)
        new = await self.vfs.remove_references(instance, file_id, refs)
        return await self._refs_answer(request, new)

    # -- collection queries ------------------------------------------------------------------
    @route("_find", "POST", auth=token(FILES, verb="GET"))
    async def find(self, request: IRequest):
        query = read_json(request)
        if not isinstance(query, dict) or not isinstance(query.get("selector"), dict):
            raise BadRequest("a Mango query with a selector is expected")
        instance = instance_of(request)
        limit = query.get("limit", 100)
        if not isinstance(limit, int) or limit < 0:
            raise BadRequest("limit must be a non-negative integer")
        limit = min(limit, 1000)
        mango = {
            k: v
            for k, v in query.items()
            if k in ("selector", "sort", "skip", "use_index", "bookmark")
        }
        mango["limit"] = limit
        cursor = query_param(request, "page[cursor]")
        if cursor:
            mango["bookmark"] = cursor
        result = await self.vfs.documents.find(instance, FILES, mango)
        docs = [d for d in result.get("docs", []) if d.get("type") in (FILE, DIRECTORY)]
        data = []
        for doc in docs:
            path = await self.vfs.path_of(instance, doc) if not is_dir(doc) else None
            data.append(file_object(doc, path=path))
        body: dict[str, Any] = {"data": data, "meta": {"count": len(data)}}
        if len(docs) >= limit and result.get("bookmark"):
            body["links"] = {"next": f"/files/_find?page[cursor]={result['bookmark']}"}
        return jsonapi(request, body)

    @route("_all_docs", "POST", auth=token(FILES, verb="GET"))
    async def all_docs(self, request: IRequest):
        body = read_json(request)
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("keys must be a list of ids")
        instance = instance_of(request)
        data = []
        for key in keys[:MAX_PAGE]:
            try:
                doc = await self.vfs.get(instance, key)
            except FileNotFound:
                continue
            data.append(file_object(doc, path=await self.vfs.path_of(instance, doc)))
        return jsonapi(request, {"data": data, "meta": {"count": len(data)}})

    @route("_changes", "GET", auth=token(FILES, verb="GET"))
    async def changes(self, request: IRequest):
        instance = instance_of(request)
        limit = query_int(request, "limit", minimum=0)
        include_docs = bool(query_bool(request, "include_docs"))
        skip_deleted = bool(query_bool(request, "skip_deleted"))
        skip_trashed = bool(query_bool(request, "skip_trashed"))
        include_path = bool(query_bool(request, "include_file_path"))
        fields = [f for f in (query_param(request, "fields") or "").split(",") if f]
        options: dict[str, Any] = {"since": query_param(request, "since") or "0"}
        if limit is not None:
            options["limit"] = limit
        options["include_docs"] = include_docs or skip_trashed or include_path
        result = await self.vfs.documents.store.changes(
            self.vfs.documents.db(instance, FILES), **options
        )
        results = []
        for row in result.get("results", []):
            if row.get("id", "").startswith("_design"):
                continue
            if skip_deleted and row.get("deleted"):
                continue
            doc = row.get("doc")
            if (
                skip_trashed
                and doc
                and (
                    doc.get("trashed")
                    or str(doc.get("path", "")).startswith("/.cozy_trash")
                )
            ):
                continue
            if doc is not None:
                if include_path and not doc.get("_deleted") and not is_dir(doc):
                    try:
                        doc = {**doc, "path": await self.vfs.path_of(instance, doc)}
                    except CozyError:
                        pass
                doc = {k: v for k, v in doc.items() if k != "internal_vfs_id"}
                if fields:
                    doc = {k: v for k, v in doc.items() if k in fields or k.startswith("_")}
                if not include_docs and not include_path and not fields:
                    row = {k: v for k, v in row.items() if k != "doc"}
                else:
                    row = {**row, "doc": doc}
            results.append(row)
        return await json_rows_response(
            request,
            {
                "last_seq": result.get("last_seq"),
                "pending": result.get("pending", 0),
                "results": results,
            },
            "results",
            pause=self.pause,
        )

    # -- links by secret ---------------------------------------------------------------------
    @route("downloads", "POST", auth=token(collection=False), body=json_body())
    async def make_download_link(self, request: IRequest):
        instance = instance_of(request)
        version_id = query_param(request, "VersionId")
        if query_param(request, "Id"):
            doc = await self.vfs.get(instance, query_param(request, "Id") or "")
        elif version_id:
            doc = await self.vfs.get(instance, version_id.split("/", 1)[0])
            await self.vfs.get_version(instance, version_id)
        else:
            doc = await self._doc_by_path_param(request)
        await self._authorize(request, "GET", doc)
        if is_dir(doc):
            raise BadRequest("a directory cannot be downloaded")
        name = query_param(request, "Filename") or doc["name"]
        names.check_name(name)
        secret = self.secrets.issue(instance.prefix, ("file", doc["_id"], version_id))
        obj = file_object(doc)
        obj["links"]["related"] = f"/files/downloads/{secret}/{quote(name, safe='')}"
        return jsonapi(
            request, {"data": obj, "links": {"related": obj["links"]["related"]}}
        )

    @route("downloads/{secret}/{name}", "GET")
    async def download_by_secret(self, request: IRequest, secret: str, name: str):
        instance = instance_of(request)
        _kind, doc_id, version_id = self.secrets.get(instance.prefix, secret)
        doc = await self.vfs.get(instance, doc_id)
        if version_id:
            version = await self.vfs.get_version(instance, version_id)
            doc = {
                **doc,
                **{
                    k: version[k]
                    for k in ("size", "md5sum", "internal_vfs_id")
                    if k in version
                },
            }
        return self._send(request, doc, name=name)

    # -- archives ------------------------------------------------------------------------------
    @route("archive", "POST", auth=token(collection=False))
    async def make_archive(self, request: IRequest):
        instance = instance_of(request)
        body = read_json(request)
        data = body.get("data") if isinstance(body, dict) else None
        attrs_ = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attrs_, dict):
            raise BadRequest("a JSON:API body is expected")
        ids = attrs_.get("ids") or []
        paths = attrs_.get("files") or []
        if not isinstance(ids, list) or not isinstance(paths, list):
            raise BadRequest("ids and files must be lists")
        docs = [await self.vfs.get(instance, i) for i in ids if isinstance(i, str)]
        docs += [await self.vfs.by_path(instance, p) for p in paths if isinstance(p, str)]
        if not docs:
            raise BadRequest("No files to archive")
        for doc in docs:
            await self._authorize(request, "GET", doc)
        name = attrs_.get("name") or "archive"
        if not isinstance(name, str):
            raise BadRequest("name must be a string")
        names.check_name(name + ".zip")
        secret = self.secrets.issue(
            instance.prefix, ("archive", [d["_id"] for d in docs], name)
        )
        related = f"/files/archive/{secret}/{quote(name, safe='')}.zip"
        return jsonapi(
            request,
            {
                "links": {"related": related},
                "data": {
                    "type": "io.cozy.files.archives",
                    "id": secret,
                    "attributes": {"href": related},
                },
            },
        )

    @route("archive/{secret}/{name}", "GET")
    async def download_archive(self, request: IRequest, secret: str, name: str):
        instance = instance_of(request)
        entry = self.secrets.get(instance.prefix, secret)
        if entry[0] != "archive":
            raise NotFound("the link is not valid, or expired")
        _, ids, archive_name = entry
        members: list[tuple[str, dict[str, Any]]] = []
        for doc_id in ids:
            doc = await self.vfs.get(instance, doc_id)
            if is_dir(doc):
                dirs, files = await self.vfs.subtree(instance, doc)
                base = doc["path"].rsplit("/", 1)[0]
                by_id = {d["_id"]: d for d in dirs}
                for f in files:
                    parent = by_id.get(f["dir_id"])
                    if parent is None:
                        continue
                    members.append(
                        (names.join(parent["path"], f["name"])[len(base) + 1 :], f)
                    )
            else:
                members.append((doc["name"], doc))
        request.setHeader(b"Content-Type", b"application/zip")
        request.setHeader(
            b"Content-Disposition",
            names.content_disposition("attachment", archive_name + ".zip").encode("ascii"),
        )
        store = self.vfs.store_of(instance)
        writer = _RequestWriter(request)
        with zipfile.ZipFile(writer, "w", compression=zipfile.ZIP_STORED) as archive:
            for arcname, doc in members:
                # Entry names are relative and never climb up (no "..", no "/").
                safe = "/".join(p for p in arcname.split("/") if p not in ("", ".", ".."))
                info = zipfile.ZipInfo(safe or "file")
                info.compress_type = zipfile.ZIP_STORED
                try:
                    source = store.open(doc.get("internal_vfs_id", ""))
                except (OSError, ValueError):
                    continue
                with source, archive.open(info, "w", force_zip64=True) as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                        if writer.closed:
                            return NOT_DONE_YET
                        if self.pause is not None and writer.pending():
                            await self.pause()
        return b""

    # -- thumbnails ---------------------------------------------------------------------------------
    @route("{file_id}/thumbnails/{secret}/{format}", "GET")
    async def thumbnail(self, request: IRequest, file_id: str, secret: str, format: str):
        instance = instance_of(request)
        entry = self.secrets.get(instance.prefix, secret)
        if entry != ("thumb", file_id) or format not in THUMB_FORMATS:
            raise NotFound("the link is not valid, or expired")
        doc = await self.vfs.get(instance, file_id)
        if self.thumbnails is None:
            raise NotFound("no thumbnail")
        path = await self.thumbnails.path(instance, doc, format)
        if path is None:
            raise NotFound("no thumbnail yet")
        fileobj = open(path, "rb")  # noqa: SIM115 - closed by the producer
        size = fileobj.seek(0, 2)
        request.setHeader(b"Content-Type", b"image/jpeg")
        request.setHeader(b"Content-Length", str(size).encode())
        if request.method == b"HEAD":
            fileobj.close()
            return b""
        ContentProducer(request, fileobj, 0, size).start()
        return NOT_DONE_YET


class _RequestWriter:
    """A write-only file object over a request, for ``zipfile`` (which
    then writes a streamed archive, data descriptors and all)."""

    def __init__(self, request: IRequest):
        self.request = request
        self.offset = 0
        self.closed = False
        self._since_pause = 0

    def write(self, data: bytes) -> int:
        if self.request.finished or getattr(self.request, "_disconnected", False):
            self.closed = True
            return len(data)
        self.request.write(bytes(data))
        self.offset += len(data)
        self._since_pause += len(data)
        return len(data)

    def pending(self) -> bool:
        if self._since_pause > 1024 * 1024:
            self._since_pause = 0
            return True
        return False

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False


def _version_object(version: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "io.cozy.files.versions",
        "id": version["_id"],
        "meta": {"rev": version.get("_rev", "")},
        "attributes": {
            k: v
            for k, v in version.items()
            if not k.startswith("_") and k != "internal_vfs_id"
        },
    }


__all__ = ["FilesService", "PermissionDenied", "Secrets"]


# -- the admin API's part (``cozyctl instances fsck``, ``cozyctl files …``) ----------------
class FilesAdmin:
    """What the admin routes of the files do (``cozyd.web.admin`` routes
    here): fsck, disk usage, and the import of a local tree."""

    def __init__(self, vfs: VFS):
        self.vfs = vfs

    async def fsck(self, request: IRequest, instance: Any) -> bytes:
        from cozyd.files.fsck import fsck

        def flag(name: str) -> bool:
            return bool(query_bool(request, name))

        index, files = flag("IndexIntegrity"), flag("FilesConsistency")
        if not index and not files:
            index = files = True
        found = await fsck(
            self.vfs,
            instance,
            index=index,
            files=files,
            check_md5=flag("CheckMD5"),
            repair=flag("Repair"),
            fail_fast=flag("FailFast"),
        )
        return json_response(request, {"domain": instance.domain, "mismatches": found})

    async def usage(self, request: IRequest, instance: Any) -> bytes:
        self.vfs.forget_usage(instance)
        usage = await self.vfs.usage(instance)
        body: dict[str, Any] = {
            "used": usage.used,
            "files": usage.files,
            "versions": usage.versions,
            "trash": usage.trash,
        }
        if instance.disk_quota:
            body["quota"] = instance.disk_quota
        return json_response(request, body)

    async def mkdir(self, request: IRequest, instance: Any) -> bytes:
        path = query_param(request, "Path") or ""
        doc = await self.vfs.mkdir_p(instance, path)
        return json_response(request, {"id": doc["_id"], "path": doc["path"]}, status=201)

    async def upload(self, request: IRequest, instance: Any) -> bytes:
        """A file at ``Path`` (its parent directories made), unless one is
        there already (409)."""
        path = query_param(request, "Path") or ""
        parts = names.split_path(path)
        if not parts:
            raise InvalidName("Path needs a file name", code="invalid_path")
        parent = await self.vfs.mkdir_p(instance, "/" + "/".join(parts[:-1]))
        size_text = query_param(request, "Size") or _header(request, b"content-length")
        upload = Upload(
            name=parts[-1],
            dir_id=parent["_id"],
            size=int(size_text) if size_text and size_text.isdigit() else None,
            content_type=query_param(request, "Type") or None,
        )
        doc = await self.vfs.create_file(instance, upload, body_stream(request).read_into)
        return json_response(request, {"id": doc["_id"], "size": doc["size"]}, status=201)


# -- /data/:doctype/:id/relationships/references (web/data routes here) -----------------
async def references_page(vfs: VFS, request: IRequest, doctype: str, doc_id: str) -> bytes:
    """The files referenced by a document, by page (by id)."""
    instance = instance_of(request)
    limit = min(query_int(request, "page[limit]", minimum=1) or 100, MAX_PAGE)
    cursor = query_param(request, "page[cursor]") or ""
    docs = await vfs.referencing(instance, doctype, doc_id)
    if query_param(request, "sort") == "datetime":
        docs.sort(
            key=lambda d: (
                (d.get("metadata") or {}).get("datetime") or d.get("created_at", ""),
                d["_id"],
            )
        )
        start = int(cursor) if cursor.isdigit() else 0
        page, more = docs[start : start + limit], len(docs) > start + limit
        next_cursor = str(start + limit) if more else None
    else:
        docs.sort(key=lambda d: d["_id"])
        rest = [d for d in docs if d["_id"] > cursor] if cursor else docs
        page, more = rest[:limit], len(rest) > limit
        next_cursor = page[-1]["_id"] if more and page else None
    body: dict[str, Any] = {
        "data": [{"type": FILES, "id": d["_id"]} for d in page],
        "meta": {"count": len(docs)},
    }
    if next_cursor:
        body["links"] = {
            "next": f"/data/{quote(doctype, safe='')}/{quote(doc_id, safe='')}"
            f"/relationships/references?page[cursor]={quote(next_cursor, safe='')}"
        }
    if query_param(request, "include") == "files":
        body["included"] = [file_object(d) for d in page]
    return jsonapi(request, body)


async def change_references(
    vfs: VFS, request: IRequest, doctype: str, doc_id: str, *, add: bool
) -> bytes:
    """Files named by the body (``data: [{type: io.cozy.files, id}]``) get
    (or lose) a reference to the document; 204."""
    body = read_json(request)
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and r.get("type") == FILES and isinstance(r.get("id"), str)
        for r in data
    ):
        raise BadRequest("a data array of {type: io.cozy.files, id} is expected")
    instance = instance_of(request)
    ref = {"type": doctype, "id": doc_id}
    for item in data:
        doc = await vfs.get(instance, item["id"])
        await access.authorize(vfs, instance, permissions_of(request), "PATCH", doc)
        if add:
            await vfs.add_references(instance, item["id"], [ref])
        else:
            await vfs.remove_references(instance, item["id"], [ref])
    request.setResponseCode(204)
    return b""
