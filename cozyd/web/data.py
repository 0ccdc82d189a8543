"""``/data``: the CouchDB-like document API of an instance (cozy-stack's
``web/data``), over whichever storage engine the daemon runs.

Documents live in one database per (instance, doctype). Routes, statuses
and bodies follow cozy-stack, including its error shapes, which depend on
where the error comes from there:

- errors of its CouchDB helper functions: ``{"ok": false, "status": "404",
  "error": "not_found", "reason": "missing"}``;
- errors of the routes it proxies to CouchDB untouched (``_all_docs``,
  ``_bulk_get``, ``_revs_diff``, ``_local``, design documents, database
  creation, ``?revs=true`` reads): CouchDB's own ``{"error", "reason"}``;
- its own checks: ``{"error": "Bad Request(400): <detail>"}`` (JSON:API
  errors) or ``{"error": "code=403, message=<detail>"}`` (echo errors, e.g.
  reserved doctypes);
- token errors of the route guard keep their echo rendering (plain text,
  or ``{"error"}`` for JSON clients).

Paths are matched on the raw URL so that a document id may hold an
escaped slash (``/data/io.cozy.x/with%2Fslash``): routes are declared with
``cozyd.web.routing`` like every service's, through this module's
``route`` (which adds the reserved-doctype ``access`` check and the
``proxy`` error shape) and ``collection`` / ``document`` (the token
policy).

Every write goes through the document layer (``cozyd.documents``), which
refuses reserved doctypes, stores, and publishes the events realtime and
``@event`` triggers see. Where cozyd differs from cozy-stack on purpose, a
comment says so (permissions on ``?revs=true`` reads, design-document copies).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.documents import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    DocumentRefused,
    Documents,
    NoIndex,
    ProtectedDesignDoc,
    RawReads,
    StorageError,
    check_id_values,
    check_readable,
    check_writable,
    db_name,
    protected_design_docs,
)
from cozyd.errors import CozyError, EchoError
from cozyd.web.bodies import LoneSurrogate
from cozyd.web.common import (
    JSON,
    error_response,
    instance_of,
    json_response,
    parse_json,
    read_body,
    unexpected_error,
)
from cozyd.web.guard import Guard, authorize_document, permissions_of
from cozyd.web.params import parse_bool, parse_int, query_param
from cozyd.web.routing import (
    MethodNotAllowed,
    Service,
    TokenAuth,
    param,
    state_of,
    token,
)
from cozyd.web.routing import route as declare_route
from cozyd.web.streaming import json_rows_response

log = Logger()

#: Mango pages: what cozy-stack uses when no (or too large a) limit is asked.
DEFAULT_FIND_LIMIT = 100
MAX_FIND_LIMIT = 1000
#: The doctype whose GET permission lists the doctypes (``_all_doctypes``).
DOCTYPES_DOCTYPE = "io.cozy.doctypes"

# The reserved doctypes and protected design documents: cozyd.documents.rules.

#: The only query parameters ``_changes`` accepts (``filter`` on POST only).
CHANGES_PARAMS = frozenset(
    {
        "feed",
        "style",
        "since",
        "limit",
        "timeout",
        "include_docs",
        "heartbeat",
        "_nonce",
        "seq_interval",
        "descending",
    }
)
CHANGES_FILTERS = ("_doc_ids", "_selector", "_design")

_GO_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
}


# =============================================================================
# Errors, in the shapes cozy-stack answers under /data
# =============================================================================
class DataError(CozyError):
    """An error answered with a body fixed in advance."""

    def __init__(self, status: int, body: Any):
        super().__init__(str(body), status=status)
        self.body = body


def echo_error(status: int, message: str) -> DataError:
    """What cozy-stack's echo.HTTPError looks like once rendered here."""
    return DataError(status, {"error": f"code={status}, message={message}"})


def jsonapi_error(status: int, detail: str) -> DataError:
    """What cozy-stack's jsonapi.Errorf looks like once rendered here."""
    title = _GO_STATUS_TEXT.get(status, "Error")
    return DataError(status, {"error": f"{title}({status}): {detail}"})


def couch_error(status: int, error: str, reason: str) -> StorageError:
    return StorageError(reason, status=status, code=error)


def wrong_doctype() -> StorageError:
    """A missing database read as a document's: cozy-stack's wording."""
    return couch_error(404, "not_found", "wrong_doctype")


# =============================================================================
# Routing on the raw path
# =============================================================================
@attrs.frozen
class DataAccess:
    """The auth policy of /data routes: the token first (401/400), then the
    reserved doctypes of ``access`` ("readable" / "writable"), then the
    token's rule on the doctype (``permission``, if any)."""

    permission: TokenAuth | None
    access: str | None
    authenticated: bool = True

    async def check(
        self, service: Any, request: IRequest, params: Mapping[str, str]
    ) -> None:
        if self.authenticated:
            await service.guard.permissions(request)
        doctype = params.get("doctype")
        if doctype is not None:
            if self.access == "readable":
                check_readable(doctype)
            elif self.access == "writable":
                check_writable(doctype)
        if self.permission is not None:
            await self.permission.check(service, request, params)


def route(
    pattern: str,
    *methods: str,
    access: str | None = None,
    proxy: bool = False,
    auth: bool = True,
):
    """A /data route: ``access`` refuses reserved doctypes before the
    handler, ``proxy`` answers storage errors as CouchDB's own bodies
    (cozy-stack proxies), ``auth`` needs a valid token (everything but
    the welcome)."""

    def register(handler):
        policy = DataAccess(getattr(handler, "__data_permission__", None), access, auth)
        return declare_route(pattern, *methods, auth=policy, proxy=proxy)(handler)

    return register


_doctype_of = param("doctype")


def collection(verb: str | None = None, *, doctype: str | None = None):
    """The verb (by default the request's) on the whole doctype of the URL
    (or on ``doctype``)."""

    def mark(handler):
        handler.__data_permission__ = token(doctype or _doctype_of, verb=verb)
        return handler

    return mark


def document():
    """A valid token; the handler checks the document itself."""

    def mark(handler):
        handler.__data_permission__ = None
        return handler

    return mark


# =============================================================================
# Small parsers
# =============================================================================
_param = query_param


def _is_true(request: IRequest, name: str) -> bool:
    return parse_bool(_param(request, name), strict=True) is True


def _go_int(text: str | None) -> int | None:
    """``strconv.Atoi``: a 64-bit integer, or None when the text is not one."""
    return parse_int(text)


def _couch_bool(request: IRequest, name: str) -> bool | None:
    text = _param(request, name)
    value = parse_bool(text, strict=True)
    if value is None and text is not None:
        raise couch_error(400, "query_parse_error", f'Invalid boolean parameter: "{text}"')
    return value


def _couch_count(request: IRequest, name: str) -> int | None:
    text = _param(request, name)
    if text is None:
        return None
    value = parse_int(text)
    if value is None:
        raise couch_error(400, "query_parse_error", f'Invalid value for integer: "{text}"')
    if value < 0:
        raise couch_error(
            400, "query_parse_error", f'Invalid value for positive integer: "{text}"'
        )
    return value


def _couch_json(request: IRequest, name: str) -> Any:
    text = _param(request, name)
    if text is None:
        return None
    try:
        return parse_json(text.encode("utf-8"))
    except LoneSurrogate as e:
        raise couch_error(400, "bad_request", str(e)) from None
    except ValueError:
        raise couch_error(400, "bad_request", "invalid UTF-8 JSON") from None


_SEQ_NUMBER = re.compile(r"[0-9]+")


def _since(request: IRequest) -> str | None:
    """The ``since`` of ``_changes``; a sequence number past 64 bits is
    malformed (as a negative one is)."""
    since = _param(request, "since")
    if since is not None:
        number = _SEQ_NUMBER.match(since)
        if number is not None and parse_int(number.group(0)) is None:
            raise couch_error(
                400, "bad_request", "Malformed sequence supplied in 'since' parameter."
            )
    return since


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _with_type(doc: dict[str, Any], doctype: str) -> dict[str, Any]:
    return {**doc, "_type": doctype}


def _with_type_json(raw: bytes, doctype: str) -> bytes:
    """``_with_type`` on a JSON object's bytes: ``"_type"`` added as its
    last member (a later member wins, as in ``{**doc, "_type": …}``)."""
    end = raw.rstrip().rfind(b"}")
    if end <= 0 or not raw.lstrip().startswith(b"{"):
        raise StorageError("the stored document is not a JSON object")
    body = raw[:end].rstrip()
    separator = b"" if body.endswith(b"{") else b","
    return b"".join((body, separator, b'"_type":', json.dumps(doctype).encode(), b"}"))


def _json_bytes_response(request: IRequest, body: bytes, *, status: int = 200) -> bytes:
    """JSON already encoded (by the storage engine), sent as it is."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON.encode("ascii"))
    return body


def _project(doc: Any, fields: list[str]) -> Any:
    """cozy-stack's ``Fields`` filter of ``_all_docs``: only the named paths
    (parents kept as objects, arrays only when named whole)."""
    if not isinstance(doc, dict):
        return doc
    kept: dict[str, Any] = {}
    for name in fields:
        parts = name.split(".")
        source: Any = doc
        target = kept
        for i, part in enumerate(parts):
            if not isinstance(source, dict) or part not in source:
                break
            if i == len(parts) - 1:
                target[part] = source[part]
            else:
                source = source[part]
                if not isinstance(source, dict):
                    break
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    break
    return kept


def _execution_stats(stats: Any) -> dict[str, Any] | None:
    """As cozy-stack re-encodes them (zero values left out)."""
    if not isinstance(stats, dict):
        return None
    keys = (
        "total_keys_examined",
        "total_docs_examined",
        "total_quorum_docs_examined",
        "results_returned",
        "execution_time_ms",
    )
    return {key: stats[key] for key in keys if stats.get(key)}


# =============================================================================
# The service
# =============================================================================
class DataService(Service):
    """Its routes are declared with this module's ``route``; errors take
    the shapes of the module docstring (``_error``)."""

    def __init__(
        self,
        documents: Documents,
        guard: Guard,
        *,
        max_body_size: int,
        pause: Callable[[], Awaitable[Any]] | None = None,
    ):
        """``pause()`` gives the reactor a turn between the pieces of a large
        answer (``cozyd.web.streaming``)."""
        super().__init__()
        self.store = documents.store  # reads
        #: The store's reads as JSON bytes, passed through (None: decode, encode).
        self.raw = self.store if isinstance(self.store, RawReads) else None
        #: Writes: the clients' path (reserved doctypes refused; events published).
        self.documents = documents.checked
        self.guard = guard
        self.max_body_size = max_body_size
        self.pause = pause

    def errors(self, request: IRequest, error: BaseException) -> bytes:
        return self._error(request, error)

    async def no_route(self, request: IRequest, error: Exception):
        if isinstance(error, MethodNotAllowed):
            raise echo_error(405, "Method Not Allowed")
        raise echo_error(404, "Not Found")

    def bad_path(self) -> Exception:
        return jsonapi_error(400, "the path is not valid UTF-8")

    def _error(self, request: IRequest, error: BaseException) -> bytes:
        if isinstance(error, ProtectedDesignDoc):
            return json_response(request, {"error": error.detail}, status=error.status)
        if isinstance(error, DocumentRefused):  # cozy-stack's echo errors
            return json_response(
                request,
                {"error": f"code={error.status}, message={error.detail}"},
                status=error.status,
            )
        if isinstance(error, EchoError):
            return error_response(request, error)
        if isinstance(error, DataError):
            return json_response(request, error.body, status=error.status)
        if isinstance(error, StorageError):
            body: dict[str, Any] = {"error": error.code, "reason": error.detail}
            state = state_of(request)
            proxy = state.flags.get(
                "proxy", state.route is not None and state.route.option("proxy", False)
            )
            if not proxy:
                body = {"ok": False, "status": str(error.status), **body}
            return json_response(request, body, status=error.status)
        if isinstance(error, CozyError):
            title = _GO_STATUS_TEXT.get(error.status, error.title)
            return json_response(
                request,
                {"error": f"{title}({error.status}): {error.detail}"},
                status=error.status,
            )
        unexpected_error(request, error)
        return json_response(
            request,
            {"error": "an unexpected error occurred; it has been logged"},
            status=500,
        )

    # -- helpers -----------------------------------------------------------------
    def _db(self, request: IRequest, doctype: str) -> str:
        return db_name(instance_of(request).prefix, doctype)

    def _read_body(self, request: IRequest) -> bytes:
        return read_body(request, self.max_body_size)

    def _json_body(self, request: IRequest, bad: Callable[[str], Exception]) -> Any:
        """The JSON body; ``bad(reason)`` is raised when it is not JSON."""
        data = self._read_body(request)
        try:
            return parse_json(data)
        except LoneSurrogate as e:
            # Whatever the route, CouchDB's answer to what it cannot store.
            raise couch_error(400, "bad_request", str(e)) from None
        except ValueError as e:
            raise bad(str(e)) from None

    def _object_body(self, request: IRequest) -> dict[str, Any]:
        """A JSON object, or cozy-stack's 400 for what Go cannot decode."""
        body = self._json_body(request, lambda reason: jsonapi_error(400, reason))
        if not isinstance(body, dict):
            raise jsonapi_error(
                400,
                "json: cannot unmarshal "
                f"{_json_kind(body)} into Go value of type "
                "map[string]interface {}",
            )
        return body

    def _couch_body(self, request: IRequest) -> Any:
        """A body read by CouchDB itself (proxied routes)."""
        return self._json_body(
            request, lambda reason: couch_error(400, "bad_request", "invalid UTF-8 JSON")
        )

    # -- routes without a doctype -------------------------------------------------
    @route("", "GET", auth=False)
    async def welcome(self, request: IRequest) -> bytes:
        # Replicators ask the "server" root (the parent of the database URL).
        return json_response(request, {"message": "welcome to a cozy API"})

    @route("_all_doctypes", "GET")
    @collection("GET", doctype=DOCTYPES_DOCTYPE)
    async def all_doctypes(self, request: IRequest) -> bytes:
        prefix = instance_of(request).prefix
        doctypes = []
        for name in await self.store.list_dbs(prefix):
            doctype = name.partition("/")[2].replace("-", ".")
            try:
                check_readable(doctype)
            except DocumentRefused:
                continue
            doctypes.append(doctype)
        return json_response(request, doctypes)

    # -- databases -------------------------------------------------------------
    @route("{doctype}", "GET", access="readable")
    @collection("GET")
    async def db_status(self, request: IRequest, doctype: str) -> bytes:
        info = await self.store.db_info(self._db(request, doctype))
        return json_response(
            request,
            {
                "db_name": info.get("db_name"),
                "update_seq": info.get("update_seq"),
                "sizes": {"file": 0, "external": 0, "active": 0},
                "purge_seq": info.get("purge_seq", 0),
                "other": {"data_size": 0},
                "doc_del_count": info.get("doc_del_count", 0),
                "doc_count": info.get("doc_count", 0),
                "disk_size": 0,
                "disk_format_version": 0,
                "data_size": 0,
                "compact_running": False,
                "instance_start_time": "0",
            },
        )

    @route("{doctype}", "PUT", access="writable", proxy=True)
    @collection("POST")
    async def create_db(self, request: IRequest, doctype: str) -> bytes:
        await self.documents.create_db(instance_of(request), doctype)
        return json_response(request, {"ok": True}, status=201)

    @route("{doctype}", "DELETE", access="writable")
    @collection("DELETE")
    async def delete_db(self, request: IRequest, doctype: str) -> bytes:
        await self.documents.delete_db(instance_of(request), doctype)
        return json_response(request, {"ok": True, "deleted": True})

    # -- single documents ------------------------------------------------------
    @route("{doctype}", "POST", access="writable")
    @document()
    async def create_doc(self, request: IRequest, doctype: str) -> bytes:
        body = self._object_body(request)
        given_id = body.get("_id")
        authorize_document(
            request,
            doctype,
            given_id if isinstance(given_id, str) else "",
            body,
            verb="POST",
        )
        if _has_text(given_id):
            raise couch_error(400, "defined_id", "document _id should be empty")
        result = await self.documents.create(
            instance_of(request), doctype, body, create_db=True
        )
        stored = {**body, "_id": result["id"], "_rev": result["rev"]}
        return json_response(
            request,
            {
                "ok": True,
                "id": result["id"],
                "rev": result["rev"],
                "type": doctype,
                "data": _with_type(stored, doctype),
            },
            status=201,
        )

    @route("{doctype}/{docid}", "GET", access="readable")
    @document()
    async def get_doc(self, request: IRequest, doctype: str, docid: str) -> bytes:
        if _is_true(request, "revs"):
            return await self._get_doc_revs(request, doctype, docid)
        if docid.startswith("_"):
            raise couch_error(400, "bad_id", f"Unsuported couchdb operation {docid}")
        if self.raw is not None and permissions_of(request).allows_collection(
            "GET", doctype
        ):
            # Nothing to check in the document: CouchDB's bytes go out as they
            # came, with the "_type" member added.
            try:
                raw = await self.raw.get_doc_json(self._db(request, doctype), docid)
            except DatabaseNotFound:
                raise wrong_doctype() from None
            return _json_bytes_response(request, _with_type_json(raw, doctype))
        try:
            doc = await self.store.get_doc(self._db(request, doctype), docid)
        except DatabaseNotFound:
            # As cozy-stack: only those allowed to read anything of the
            # doctype learn that it has no database.
            authorize_document(request, doctype, "", {}, verb="GET")
            raise wrong_doctype() from None
        except DocNotFound:
            authorize_document(request, doctype, "", {}, verb="GET")
            raise
        authorize_document(request, doctype, docid, doc, verb="GET")
        return json_response(request, _with_type(doc, doctype))

    async def _get_doc_revs(self, request: IRequest, doctype: str, docid: str) -> bytes:
        """The replication read (``revs=true``, ``open_revs``, ``latest``…),
        answered as CouchDB does. cozy-stack proxies it without any
        permission check; cozyd checks each revision returned."""
        state_of(request).flags["proxy"] = True
        db = self._db(request, doctype)
        latest = _is_true(request, "latest")
        open_revs_text = _param(request, "open_revs")
        if open_revs_text is not None:
            if open_revs_text == "all":
                open_revs: Any = "all"
            else:
                open_revs = _couch_json(request, "open_revs")
                if not isinstance(open_revs, list):
                    raise couch_error(400, "bad_request", "Invalid open_revs")
            try:
                found = await self.store.get_open_revs(
                    db, docid, open_revs, revs=True, latest=latest
                )
            except (DocNotFound, DatabaseNotFound):
                authorize_document(request, doctype, docid, None, verb="GET")
                raise
            docs = [entry["ok"] for entry in found if isinstance(entry.get("ok"), dict)]
            for doc in docs or [None]:
                authorize_document(request, doctype, docid, doc, verb="GET")
            return json_response(request, found)
        try:
            doc = await self.store.get_doc(
                db,
                docid,
                rev=_param(request, "rev"),
                revs=True,
                latest=latest,
                conflicts=_is_true(request, "conflicts"),
                deleted_conflicts=_is_true(request, "deleted_conflicts"),
                revs_info=_is_true(request, "revs_info"),
            )
        except (DocNotFound, DatabaseNotFound):
            authorize_document(request, doctype, docid, None, verb="GET")
            raise
        authorize_document(request, doctype, docid, doc, verb="GET")
        return json_response(request, doc)

    @route("{doctype}/{docid}", "PUT", access="writable")
    @document()
    async def put_doc(self, request: IRequest, doctype: str, docid: str) -> bytes:
        body = self._object_body(request)
        body.pop("_type", None)  # cozy-stack drops it when decoding
        has_id, has_rev = _has_text(body.get("_id")), _has_text(body.get("_rev"))
        if has_id != has_rev:
            raise jsonapi_error(
                400,
                "You must either provide an _id and _rev in document "
                "(update) or neither (create with fixed id).",
            )
        if has_id and body["_id"] != docid:
            raise jsonapi_error(400, "document _id doesnt match url")
        db = self._db(request, doctype)
        if not has_id:
            doc = {**body, "_id": docid}
            authorize_document(request, doctype, docid, doc, verb="POST")
            if docid.startswith("_"):
                raise couch_error(400, "bad_id", f"Unsuported couchdb operation {docid}")
            try:
                result = await self.documents.put(
                    instance_of(request), doctype, doc, create_db=True
                )
            except DatabaseNotFound:
                raise wrong_doctype() from None
        else:
            if docid.startswith("_"):
                raise couch_error(400, "bad_id", f"Unsuported couchdb operation {docid}")
            # As cozy-stack: the stored document is read only when the
            # permissions depend on it (no extra round trip otherwise).
            if not permissions_of(request).allows_collection("PUT", doctype):
                try:
                    old = await self.store.get_doc(db, docid)
                except DatabaseNotFound:
                    raise wrong_doctype() from None
                authorize_document(request, doctype, docid, old, verb="PUT")
                authorize_document(request, doctype, docid, body, verb="PUT")
            doc = body
            try:
                result = await self.documents.put(instance_of(request), doctype, doc)
            except DatabaseNotFound:
                raise wrong_doctype() from None
            except DocConflict:
                # A missing document is a 404, not a conflict: read it only now.
                await self.store.get_doc(db, docid)
                raise
        stored = {**doc, "_id": result["id"], "_rev": result["rev"]}
        return json_response(
            request,
            {
                "ok": True,
                "id": result["id"],
                "rev": result["rev"],
                "type": doctype,
                "data": _with_type(stored, doctype),
            },
        )

    @route("{doctype}/{docid}", "DELETE", access="writable")
    @document()
    async def delete_doc(self, request: IRequest, doctype: str, docid: str) -> bytes:
        header = (request.getHeader(b"if-match") or b"").decode("latin-1")
        query = _param(request, "rev") or ""
        if header and query and header != query:
            raise jsonapi_error(400, "If-Match Header and rev query parameters mismatch")
        rev = header or query
        if not rev:
            raise jsonapi_error(400, "delete without revision")
        if docid.startswith("_"):
            raise couch_error(400, "bad_id", f"Unsuported couchdb operation {docid}")
        db = self._db(request, doctype)
        old = await self.store.get_doc(db, docid)
        authorize_document(request, doctype, docid, {**old, "_rev": rev}, verb="DELETE")
        result = await self.documents.delete(
            instance_of(request), doctype, docid, rev, doc=old
        )
        return json_response(
            request,
            {
                "ok": True,
                "id": docid,
                "rev": result["rev"],
                "type": doctype,
                "deleted": True,
            },
        )

    # -- listing -----------------------------------------------------------------
    @route("{doctype}/_all_docs", "GET", "POST", access="readable", proxy=True)
    @collection("GET")
    async def all_docs(self, request: IRequest, doctype: str) -> bytes:
        options = self._all_docs_options(request)
        fields_text = _param(request, "Fields") or ""
        design_docs = _param(request, "DesignDocs") or ""
        if request.method == b"POST":
            body = self._couch_body(request)
            if not isinstance(body, dict):
                raise couch_error(400, "bad_request", "Request body must be a JSON object")
            keys = body.get("keys")
            if "keys" in body and not isinstance(keys, list):
                raise couch_error(
                    400, "bad_request", "`keys` body member must be an array."
                )
            if keys is not None:
                options["keys"] = keys
        check_id_values(
            [*options.get("keys", ()), options.get("start_key"), options.get("end_key")]
        )
        if not fields_text and not design_docs:
            db = self._db(request, doctype)
            if self.raw is not None:
                return _json_bytes_response(
                    request, await self.raw.all_docs_json(db, **options)
                )
            result = await self.store.all_docs(db, **options)
            return await json_rows_response(request, result, pause=self.pause)
        # cozy-stack's filtered variant: documents always included, design
        # documents left out on request, documents cut down to the Fields.
        options["include_docs"] = True
        result = await self.store.all_docs(self._db(request, doctype), **options)
        fields = [name for name in fields_text.split(",") if name] if fields_text else []
        rows = []
        for row in result.get("rows", []):
            row_id = row.get("id")
            if (
                design_docs == "false"
                and isinstance(row_id, str)
                and row_id.startswith("_design")
            ):
                continue
            if fields:
                kept = {key: row[key] for key in ("id", "error") if key in row}
                if isinstance(row.get("value"), dict):
                    kept.update(row["value"])
                if "doc" in row:
                    kept["doc"] = _project(row["doc"], fields)
                row = kept
            rows.append(row)
        return await json_rows_response(
            request, {"rows": rows, "offset": 0, "total_rows": len(rows)}, pause=self.pause
        )

    def _all_docs_options(self, request: IRequest) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name in (
            "include_docs",
            "descending",
            "inclusive_end",
            "conflicts",
            "update_seq",
        ):
            value = _couch_bool(request, name)
            if value is not None:
                options[name] = value
        for name in ("limit", "skip"):
            value = _couch_count(request, name)
            if value is not None:
                options[name] = value
        for names, option in (
            (("startkey", "start_key"), "start_key"),
            (("endkey", "end_key"), "end_key"),
        ):
            for name in names:
                value = _couch_json(request, name)
                if value is not None:
                    options[option] = value
        key = _couch_json(request, "key")
        if key is not None:
            options["start_key"] = options["end_key"] = key
        keys = _couch_json(request, "keys")
        if keys is not None:
            if not isinstance(keys, list):
                raise couch_error(
                    400, "query_parse_error", "`keys` member must be an array."
                )
            options["keys"] = keys
        return options

    @route("{doctype}/_normal_docs", "GET", access="readable")
    @collection("GET")
    async def normal_docs(self, request: IRequest, doctype: str) -> bytes:
        skip = _go_int(_param(request, "skip"))
        skip = skip if skip is not None and skip >= 0 else 0
        limit = _go_int(_param(request, "limit"))
        if limit is None or limit < 0 or limit > MAX_FIND_LIMIT:
            limit = DEFAULT_FIND_LIMIT
        bookmark = _param(request, "bookmark") or ""
        stats = parse_bool(_param(request, "execution_stats")) is True
        query: dict[str, Any] = {
            "selector": {"_id": {"$gte": None}},
            "execution_stats": stats,
        }
        if limit:
            query["limit"] = limit
        if bookmark:
            query["bookmark"] = bookmark
        else:
            query["skip"] = skip
        db = self._db(request, doctype)
        found = await self.store.find(db, query)
        rows = found.get("docs", [])
        if not bookmark and len(rows) < limit:
            total = skip + len(rows)
        else:
            total = await self._count_normal_docs(db)
        next_bookmark = found.get("bookmark") or ""
        out: dict[str, Any] = {
            "total_rows": total,
            "rows": rows,
            "bookmark": "" if next_bookmark == "nil" else next_bookmark,
        }
        if (
            stats
            and (cleaned := _execution_stats(found.get("execution_stats"))) is not None
        ):
            out["execution_stats"] = cleaned
        return json_response(request, out)

    async def _design_rows(self, db: str) -> list[dict[str, Any]]:
        result = await self.store.all_docs(db, start_key="_design/", end_key="_design0")
        return [
            row
            for row in result.get("rows", [])
            if str(row.get("id", "")).startswith("_design/")
        ]

    async def _count_normal_docs(self, db: str) -> int:
        info = await self.store.db_info(db)
        return max(0, info.get("doc_count", 0) - len(await self._design_rows(db)))

    # -- Mango -------------------------------------------------------------------
    @route("{doctype}/_index", "POST", access="readable")
    @collection("GET")
    async def define_index(self, request: IRequest, doctype: str) -> bytes:
        body = self._object_body(request)
        index = body.get("index")
        if index is None:
            raise couch_error(400, "missing_required_key", "Missing required key: index")
        if not isinstance(index, dict):
            raise couch_error(400, "invalid_index", "Invalid index definition")
        if body.get("type", "json") != "json":
            raise couch_error(400, "invalid_index", "Only json indexes are supported")
        if "fields" not in index:
            raise couch_error(400, "missing_required_key", "Missing required key: fields")
        options: dict[str, Any] = {}
        for key in ("ddoc", "name"):
            if key in body:
                options[key] = body[key]
        if "partial_filter_selector" in index:
            options["partial_filter_selector"] = index["partial_filter_selector"]
        result = await self.documents.create_index(
            instance_of(request), doctype, index["fields"], create_db=True, **options
        )
        return json_response(
            request, {key: result[key] for key in ("result", "id", "name") if key in result}
        )

    @route("{doctype}/_find", "POST", access="readable")
    @collection("GET")
    async def find(self, request: IRequest, doctype: str) -> bytes:
        query = self._object_body(request)
        limit = query.get("limit")
        if (
            not isinstance(limit, (int, float))
            or isinstance(limit, bool)
            or limit > MAX_FIND_LIMIT
        ):
            limit = DEFAULT_FIND_LIMIT
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        query["limit"] = limit
        try:
            # Developers must not rely on full scans: cozy-stack's error.
            found = await self.store.find(
                self._db(request, doctype), query, require_index=True
            )
        except NoIndex:
            raise couch_error(
                400, "no_index", "no matching index found, create an index"
            ) from None
        warning = found.get("warning") or ""
        docs = found.get("docs", [])
        bookmark = found.get("bookmark") or ""
        out: dict[str, Any] = {
            "docs": docs,
            "limit": limit,
            "next": isinstance(limit, (int, float)) and len(docs) >= limit,
            "bookmark": "" if bookmark == "nil" else bookmark,
        }
        if (cleaned := _execution_stats(found.get("execution_stats"))) is not None:
            out["execution_stats"] = cleaned
        if warning:
            out["warning"] = warning
        return json_response(request, out)

    # -- design documents --------------------------------------------------------
    @route("{doctype}/_design_docs", "GET", access="readable", proxy=True)
    @collection("GET")
    async def design_docs(self, request: IRequest, doctype: str) -> bytes:
        include_docs = bool(_couch_bool(request, "include_docs"))
        descending = bool(_couch_bool(request, "descending"))
        limit = _couch_count(request, "limit")
        skip = _couch_count(request, "skip") or 0
        result = await self.store.all_docs(
            self._db(request, doctype),
            start_key="_design/",
            end_key="_design0",
            include_docs=include_docs,
        )
        rows = [
            row
            for row in result.get("rows", [])
            if str(row.get("id", "")).startswith("_design/")
        ]
        total = len(rows)
        if descending:
            rows.reverse()
        rows = rows[skip:]
        if limit is not None:
            rows = rows[:limit]
        return json_response(request, {"total_rows": total, "offset": skip, "rows": rows})

    @route("{doctype}/_design/{ddoc}", "GET", access="readable", proxy=True)
    @collection("GET")
    async def get_design_doc(self, request: IRequest, doctype: str, ddoc: str) -> bytes:
        doc = await self.store.get_doc(
            self._db(request, doctype),
            f"_design/{ddoc}",
            rev=_param(request, "rev"),
            revs=_is_true(request, "revs"),
            conflicts=_is_true(request, "conflicts"),
        )
        return json_response(request, doc)

    @route("{doctype}/_design/{ddoc}", "DELETE", access="readable", proxy=True)
    @collection("GET")
    async def delete_design_doc(self, request: IRequest, doctype: str, ddoc: str) -> bytes:
        rev = _param(request, "rev")
        if not rev:
            raise DataError(400, {"error": "You must pass a rev param"})
        if ddoc in protected_design_docs(doctype):
            raise DataError(403, {"error": "This design doc cannot be deleted"})
        result = await self.documents.delete(
            instance_of(request), doctype, f"_design/{ddoc}", rev
        )
        return json_response(
            request, {"ok": True, "id": result["id"], "rev": result["rev"]}
        )

    @route("{doctype}/_design/{ddoc}/copy", "POST", access="readable", proxy=True)
    @collection("GET")
    async def copy_design_doc(self, request: IRequest, doctype: str, ddoc: str) -> bytes:
        destination = (request.getHeader(b"destination") or b"").decode("utf-8", "replace")
        if not destination:
            raise DataError(400, "You must set a Destination header")
        target, _, query = destination.partition("?")
        target_rev = None
        for pair in query.split("&") if query else ():
            name, _, value = pair.partition("=")
            if name == "rev":
                target_rev = value
        # CouchDB's COPY may write any document; with only a read permission
        # on the doctype, cozyd lets it write design documents alone.
        if not target.startswith("_design/") or target == "_design/":
            raise couch_error(
                400,
                "bad_request",
                "the Destination must be a design document (_design/...)",
            )
        db = self._db(request, doctype)
        source = await self.store.get_doc(db, f"_design/{ddoc}", rev=_param(request, "rev"))
        copy = {key: value for key, value in source.items() if key not in ("_id", "_rev")}
        copy["_id"] = target
        if target_rev:
            copy["_rev"] = target_rev
        result = await self.documents.put(instance_of(request), doctype, copy)
        return json_response(
            request, {"ok": True, "id": result["id"], "rev": result["rev"]}, status=201
        )

    # -- changes -----------------------------------------------------------------
    @route("{doctype}/_changes", "GET", "POST", access="readable")
    @collection("GET")
    async def changes(self, request: IRequest, doctype: str) -> bytes:
        is_post = request.method == b"POST"
        for raw_name in request.args:
            name = raw_name.decode("utf-8", "replace")
            if name == "filter" and is_post:
                continue
            if name not in CHANGES_PARAMS:
                raise jsonapi_error(400, f"Unsupported query parameter '{name}'")
        feed = _param(request, "feed") or ""
        if feed not in ("", "normal"):
            raise jsonapi_error(400, f"Unsuported feed value '{feed}'")
        style = _param(request, "style") or "main_only"
        if style not in ("main_only", "all_docs"):
            raise jsonapi_error(400, f"Unsuported style value '{style}'")
        filter_name = _param(request, "filter") or ""
        if filter_name and filter_name not in CHANGES_FILTERS:
            raise jsonapi_error(400, f"Unsuported filter value '{filter_name}'")
        limit_text = _param(request, "limit") or ""
        limit = _go_int(limit_text) if limit_text else 0
        if limit is None:
            raise jsonapi_error(400, f"Invalid limit value '{limit_text}': not an integer")
        interval_text = _param(request, "seq_interval") or ""
        if interval_text and _go_int(interval_text) is None:
            raise jsonapi_error(
                400, f"Invalid seq_interval value '{interval_text}': not an integer"
            )
        options: dict[str, Any] = {
            "since": _since(request),
            "limit": limit or None,
            "descending": _is_true(request, "descending"),
            "include_docs": _is_true(request, "include_docs"),
            "style": style,
        }
        db = self._db(request, doctype)
        if not filter_name and self.raw is not None:
            return _json_bytes_response(request, await self.raw.changes_json(db, **options))
        if not filter_name:
            return await json_rows_response(
                request,
                await self.store.changes(db, **options),
                "results",
                pause=self.pause,
            )
        body = self._couch_body(request)
        if filter_name == "_doc_ids":
            doc_ids = body.get("doc_ids") if isinstance(body, dict) else None
            if not isinstance(doc_ids, list) or not all(
                isinstance(i, str) for i in doc_ids
            ):
                raise couch_error(
                    400,
                    "bad_request",
                    "`doc_ids` filter parameter is not a list of doc ids.",
                )
            return json_response(
                request, await self.store.changes(db, doc_ids=doc_ids, **options)
            )
        if filter_name == "_selector":
            raw = body.get("selector") if isinstance(body, dict) else None
            if not isinstance(raw, dict):
                raise couch_error(
                    400, "bad_request", "Selector must be specified in POST payload"
                )
            return json_response(
                request, await self.store.changes(db, selector=raw, **options)
            )
        # _design
        return json_response(
            request, await self.store.changes(db, design_only=True, **options)
        )

    # -- replication -----------------------------------------------------------
    @route("{doctype}/_ensure_full_commit", "POST", access="writable", proxy=True)
    @collection("GET")
    async def ensure_full_commit(self, request: IRequest, doctype: str) -> bytes:
        # Every acknowledged write is already durable.
        if not await self.store.db_exists(self._db(request, doctype)):
            raise DatabaseNotFound()
        return json_response(request, {"ok": True, "instance_start_time": "0"}, status=201)

    @route("{doctype}/_bulk_get", "POST", access="readable", proxy=True)
    @collection("GET")
    async def bulk_get(self, request: IRequest, doctype: str) -> bytes:
        body = self._couch_body(request)
        docs = body.get("docs") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            raise couch_error(400, "bad_request", "Missing JSON list of 'docs'.")
        check_id_values(doc.get("id") for doc in docs if isinstance(doc, dict))
        results = await self.store.bulk_get(
            self._db(request, doctype),
            docs,
            revs=_is_true(request, "revs"),
            latest=_is_true(request, "latest"),
        )
        return json_response(request, {"results": results})

    @route("{doctype}/_bulk_docs", "POST", access="writable", proxy=True)
    @collection("POST")
    async def bulk_docs(self, request: IRequest, doctype: str) -> bytes:
        body = self._json_body(
            request, lambda reason: echo_error(400, "request body is not valid JSON")
        )
        if not isinstance(body, dict) or not isinstance(body.get("docs"), list):
            raise couch_error(
                400, "bad_request", "POST body must include `docs` parameter."
            )
        new_edits = body.get("new_edits", True)
        if not isinstance(new_edits, bool):
            raise couch_error(
                400, "bad_request", "`new_edits` parameter must be a boolean."
            )
        docs = body["docs"]
        results = await self.documents.bulk(
            instance_of(request), doctype, docs, new_edits=new_edits, create_db=True
        )
        return json_response(request, results, status=201)

    @route("{doctype}/_revs_diff", "POST", access="readable", proxy=True)
    @collection("GET")
    async def revs_diff(self, request: IRequest, doctype: str) -> bytes:
        body = self._couch_body(request)
        if not isinstance(body, dict) or not all(
            isinstance(revs, list) and all(isinstance(r, str) for r in revs)
            for revs in body.values()
        ):
            raise couch_error(
                400, "bad_request", "Request body must be a JSON object of revision lists"
            )
        check_id_values(body)
        result = await self.store.revs_diff(self._db(request, doctype), body)
        return json_response(request, result)

    @route("{doctype}/_local/{docid}", "GET", access="readable", proxy=True)
    @collection("GET")
    async def get_local(self, request: IRequest, doctype: str, docid: str) -> bytes:
        doc = await self.store.get_local(self._db(request, doctype), f"_local/{docid}")
        return json_response(request, doc)

    @route("{doctype}/_local/{docid}", "PUT", access="readable", proxy=True)
    @collection("GET")
    async def put_local(self, request: IRequest, doctype: str, docid: str) -> bytes:
        body = self._couch_body(request)
        if not isinstance(body, dict):
            raise couch_error(400, "bad_request", "Document must be a JSON object")
        result = await self.documents.put_local(
            instance_of(request), doctype, {**body, "_id": f"_local/{docid}"}
        )
        return json_response(request, result, status=201)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return "number"
