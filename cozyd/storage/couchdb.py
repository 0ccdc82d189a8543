"""The CouchDB storage engine: ``DocumentStore`` over HTTP with treq.

Written for Apache CouchDB 3.x. Logical database names
``<prefix>/<part>`` are CouchDB database names as cozy-stack uses them, the
slash URL-escaped on the wire (``cozyab…%2Fio-cozy-files``). Sequences are
opaque strings.

CouchDB cannot be asked cheaply and portably for the databases of one
prefix (``_all_dbs`` ranges are not honoured by every CouchDB-compatible
server), so the engine keeps its own list: one document per prefix in the
``global/databases`` bookkeeping database, written *before* a database is
created and cleared *after* it is deleted. The list may therefore name a
database that no longer exists (a crash in between), never miss one:
``list_dbs`` checks existence and ``delete_prefix`` tolerates what is
already gone, so a half-done ``delete_prefix`` can simply be run again.

Credentials in the server URL are taken out of it and sent as an
``Authorization`` header; the URL the engine keeps, logs and puts into
error messages has none.

The engine targets Apache CouchDB 3.x only and passes its answers
through; other CouchDB-like servers (the tests' pouchdb-server) get no
special treatment: tests they cannot pass are marked ``realcouchdb``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.logger import Logger
from twisted.web import client as web_client
from twisted.web.http_headers import Headers

from cozyd.storage import mango, names
from cozyd.storage.http_client import URI, lean_client
from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    Doc,
    DocConflict,
    DocNotFound,
    InvalidRequest,
    NoIndex,
    StorageError,
    StorageUnavailable,
)

log = Logger()

#: Logical name of the bookkeeping database (one document per prefix).
REGISTRY_DB = "global/databases"

# How often a read-modify-write of a bookkeeping document is retried on a
# conflict with another writer (another node, usually) before giving up.
_REGISTRY_ATTEMPTS = 25

# Reasons CouchDB (and compatible servers) give for a 404 on a database.
_DB_MISSING_REASONS = frozenset({"Database does not exist.", "no_db_file"})

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    net_error.ConnectError,  # refused, DNS, TCP timeout, …
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.TimeoutError,
    defer.TimeoutError,
    web_client.ResponseFailed,
    web_client.ResponseNeverReceived,
    web_client.RequestTransmissionFailed,
    web_client.RequestNotSent,
    OSError,
)

_NO_BODY = object()


class InvalidDatabaseName(InvalidRequest, ValueError):
    """A database name that is not ``<prefix>/<part>`` (400, and a
    ValueError like ``names.split_db_name`` raises)."""

    code = "illegal_database_name"


def couchdb_db_path(db: str) -> str:
    """The URL path segment of logical database ``db``: the slash escaped,
    as cozy-stack does (``cozyab…/io-cozy-files`` → ``cozyab…%2Fio-cozy-files``).
    """
    _check_db(db)
    return quote(db, safe="")


def _check_db(db: str) -> tuple[str, str]:
    if not isinstance(db, str):
        raise InvalidDatabaseName(f"invalid database name {db!r}")
    try:
        return names.split_db_name(db)
    except ValueError as e:
        raise InvalidDatabaseName(str(e)) from None


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or "/" in prefix:
        raise InvalidDatabaseName(f"invalid database prefix {prefix!r}")
    _check_db(prefix + "/x")


def _doc_path(doc_id: Any) -> str:
    """URL path of a document id below the database, refusing ids that
    would reach a database endpoint (``_all_docs``…) instead."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidRequest("Document id must be a non-empty string.")
    for special in ("_design/", "_local/"):
        if doc_id.startswith(special):
            rest = doc_id[len(special) :]
            if not rest:
                raise InvalidRequest("Document id must not be empty.")
            return special + quote(rest, safe="")
    if doc_id.startswith("_"):
        raise InvalidRequest("Only reserved document ids may start with underscore.")
    return quote(doc_id, safe="")


def _local_path(doc_id: Any) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidRequest("Document id must be a non-empty string.")
    if not doc_id.startswith("_local/"):
        doc_id = "_local/" + doc_id
    return _doc_path(doc_id)


def _seq(value: Any) -> Any:
    # A ``since`` given as a number (0) goes out as its JSON text.
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _split_credentials(url: str) -> tuple[str, bytes | None]:
    """``http://u:p@host:5984/x`` → (``http://host:5984/x/``, auth header)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Never echo the URL: it may carry a password.
        raise ValueError("CouchDB URL must be http(s)://[user:password@]host[:port]/")
    auth = None
    if parts.username is not None:
        user = unquote(parts.username)
        password = unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        auth = f"Basic {token}".encode("ascii")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, netloc, path, "", "")), auth


def tls_policy(ca_file: str | None):
    """How an ``https://`` CouchDB is trusted: its certificate must chain to
    the CAs of ``ca_file`` (PEM, one or more certificates), or to the
    system's when None, and name the URL's host (service-identity)."""
    if not ca_file:
        return web_client.BrowserLikePolicyForHTTPS()
    from twisted.internet import ssl

    with open(ca_file, "rb") as f:
        pem = f.read()
    certificates = [
        ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + block)
        for block in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    if not certificates:
        raise ValueError(f"{ca_file} holds no PEM certificate")
    return web_client.BrowserLikePolicyForHTTPS(
        trustRoot=ssl.trustRootFromCertificates(certificates)
    )


class CouchDBStore:
    """``DocumentStore`` on an Apache CouchDB 3.x server."""

    engine = "couchdb"

    #: Connections kept open to the server, when the store makes its pool:
    #: as many as the concurrency the daemon is sized for (32 requests at
    #: once), so a burst never opens and closes connections.
    max_persistent_per_host = 32
    #: Seconds an idle connection is kept: under the 5 s after which
    #: Node-based servers close theirs, so a request never races the close.
    idle_connection_timeout = 4.0

    def __init__(
        self,
        url: str,
        *,
        reactor=None,
        timeout: float = 30.0,
        pool=None,
        http_client=None,
        ca_file: str | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._url, self._auth = _split_credentials(url)
        self._timeout = float(timeout)
        self._own_pool = False
        #: HTTP requests sent to the server since the store was made.
        self.requests_sent = 0
        if http_client is None:
            if pool is None:
                pool = web_client.HTTPConnectionPool(reactor, persistent=True)
                pool.maxPersistentPerHost = self.max_persistent_per_host
                pool.cachedConnectionTimeout = self.idle_connection_timeout
                pool.retryAutomatically = True
                self._own_pool = True
            # treq over Twisted's Agent and the tuned pool, without its
            # per-request cookie and URL work (``http_client``).
            agent = web_client.Agent(
                reactor,
                pool=pool,
                connectTimeout=self._timeout,
                contextFactory=tls_policy(ca_file),
            )
            http_client = lean_client(agent)
        self._pool = pool
        self._http = http_client  # treq (or an injected StubTreq in tests)
        self._registry_locks: dict[str, DeferredLock] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<CouchDBStore {self._url}>"

    @property
    def url(self) -> str:
        """The server URL, without credentials."""
        return self._url

    # -- HTTP --------------------------------------------------------------
    def _headers(self, has_body: bool) -> Headers:
        headers = Headers({b"Accept": [b"application/json"]})
        if has_body:
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
        if self._auth is not None:
            headers.setRawHeaders(b"Authorization", [self._auth])
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = _NO_BODY,
        raw: bool = False,
    ) -> tuple[int, Any]:
        """One HTTP call: ``(status, decoded JSON body or None)``; with
        ``raw``, ``(status, the body's bytes)`` when the status is below 400
        (error bodies are decoded, for the caller to map).

        Network failures and timeouts raise ``StorageUnavailable``; HTTP
        error statuses are returned for the caller to map.
        """
        if self._closed:
            raise StorageUnavailable("the CouchDB store is closed")
        url = self._url + path
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        d = Deferred.fromCoroutine(self._request_once(method, url, path, body, raw))
        # One timer for the whole exchange, body included (none per stage).
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise StorageUnavailable(
                f"CouchDB at {self._url} did not answer {method} "
                f"/{path} within {self._timeout:g}s"
            ) from None

    async def _send(self, method: str, url: str, data: bytes | None):
        """``(status, body bytes)`` of one exchange."""
        self.requests_sent += 1
        response = await self._http.request(
            method,
            # (made here, escaped: sent as it is, unless a configured host
            # is not ASCII, which treq then encodes)
            URI(url) if url.isascii() else url,
            headers=self._headers(data is not None),
            data=data,
            allow_redirects=False,
            reactor=self._reactor,
        )
        return response.code, await response.content()

    async def _request_once(
        self, method: str, url: str, path: str, body: Any, raw: bool = False
    ) -> tuple[int, Any]:
        data = None
        if body is not _NO_BODY:
            try:
                data = json.dumps(body, separators=(",", ":")).encode("ascii")
            except (TypeError, ValueError) as e:
                raise InvalidRequest(f"cannot encode the request as JSON: {e}") from None
        started = self._reactor.seconds()
        try:
            status, content = await self._send(method, url, data)
        except (CancelledError, net_error.ConnectingCancelledError, *_NETWORK_ERRORS) as e:
            if self._reactor.seconds() - started >= self._timeout:
                raise StorageUnavailable(
                    f"CouchDB at {self._url} did not answer {method} "
                    f"/{path} within {self._timeout:g}s"
                ) from None
            if _is_cancellation(e):
                raise CancelledError() from None  # our caller gave up
            log.warn(  # (twisted's Logger has no .warning)
                "CouchDB at {url} unreachable ({method} /{path}): {error}",
                url=self._url,
                method=method,
                path=path,
                error=_describe(e),
            )
            raise StorageUnavailable(
                f"CouchDB at {self._url} unreachable: {_describe(e)}"
            ) from None
        if raw and status < 400:
            return status, content
        if method == "HEAD" or not content:
            return status, None
        try:
            decoded = json.loads(content)
        except ValueError:
            if status < 400:
                raise StorageError(
                    f"CouchDB answered {method} /{path} with a body that is not JSON",
                    status=502,
                    code="bad_gateway",
                ) from None
            decoded = None
        return status, decoded

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = _NO_BODY,
        db_call: bool = False,
        raw: bool = False,
    ) -> Any:
        """``_request`` raising the interface's errors for error statuses."""
        status, decoded = await self._request(method, path, query=query, body=body, raw=raw)
        if status < 400:
            return decoded
        raise _error_for(status, decoded, db_call=db_call)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        welcome = await self._call("GET", "")
        if not (isinstance(welcome, dict) and "couchdb" in welcome):
            log.warn(  # (twisted's Logger has no .warning)
                "CouchDB storage: the server at {url} is not Apache CouchDB; "
                "only CouchDB 3.x is supported",
                url=self._url,
            )
        await self._ensure_registry()
        log.info("CouchDB storage at {url}", url=self._url)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_pool and self._pool is not None:
            await self._pool.closeCachedConnections()

    async def health(self) -> bool:
        try:
            status, body = await self._request("GET", "_up")
            if status == 200:
                return True
            if isinstance(body, dict) and body.get("status"):
                return False  # CouchDB in maintenance mode, or a node down
            # A server without /_up: does it answer at all?
            status, _ = await self._request("GET", "")
            return status == 200
        except StorageError:
            return False

    # -- databases ---------------------------------------------------------
    async def create_db(self, db: str) -> None:
        path = couchdb_db_path(db)
        await self._register(db)
        await self._call("PUT", path, db_call=True)

    async def ensure_db(self, db: str) -> None:
        if await self.db_exists(db):
            return
        try:
            await self.create_db(db)
        except DatabaseExists:
            pass

    async def delete_db(self, db: str) -> None:
        path = couchdb_db_path(db)
        await self._call("DELETE", path, db_call=True)
        await self._unregister(db)

    async def db_exists(self, db: str) -> bool:
        status, _ = await self._request("HEAD", couchdb_db_path(db))
        if status == 200:
            return True
        if status == 404:
            return False
        raise _error_for(status, None, db_call=True)

    async def db_info(self, db: str) -> Doc:
        info = await self._call("GET", couchdb_db_path(db), db_call=True)
        return {
            "db_name": db,
            "doc_count": info.get("doc_count", 0),
            "doc_del_count": info.get("doc_del_count", 0),
            "update_seq": info.get("update_seq"),
        }

    async def list_dbs(self, prefix: str) -> list[str]:
        _check_prefix(prefix)
        record = await self._registry_get(prefix)
        if record is None:
            return []
        candidates = [f"{prefix}/{part}" for part in record.get("dbs", [])]
        exists = await _gather([self.db_exists(db) for db in candidates])
        return sorted(db for db, ok in zip(candidates, exists, strict=True) if ok)

    async def delete_prefix(self, prefix: str) -> None:
        _check_prefix(prefix)
        for _attempt in range(_REGISTRY_ATTEMPTS):
            record = await self._registry_get(prefix)
            if record is None:
                return
            await _gather(
                [
                    self._delete_db_if_exists(f"{prefix}/{part}")
                    for part in record.get("dbs", [])
                ],
                width=4,
            )
            try:
                await self._call(
                    "DELETE", self._registry_path(prefix), query=[("rev", record["_rev"])]
                )
                return
            except DocNotFound:
                return
            except DocConflict:
                continue  # a database was added meanwhile: go round again
        raise StorageError(
            f"could not delete the databases of {prefix}: too many concurrent changes",
            status=409,
            code="conflict",
        )

    async def _delete_db_if_exists(self, db: str) -> None:
        path = couchdb_db_path(db)
        status, body = await self._request("DELETE", path)
        if status < 400 or status == 404:
            return
        raise _error_for(status, body, db_call=True)

    # -- the bookkeeping of each prefix's databases --------------------------
    @staticmethod
    def _registry_path(prefix: str) -> str:
        return couchdb_db_path(REGISTRY_DB) + "/" + _doc_path(prefix)

    async def _ensure_registry(self) -> None:
        status, body = await self._request("PUT", couchdb_db_path(REGISTRY_DB))
        if status < 400 or status == 412:
            return
        raise _error_for(status, body, db_call=True)

    async def _registry_get(self, prefix: str) -> Doc | None:
        status, body = await self._request("GET", self._registry_path(prefix))
        if status == 200:
            return body
        if status == 404 and not _is_db_missing(body):
            return None
        if status == 404:
            # Someone deleted the bookkeeping database: it held nothing then.
            await self._ensure_registry()
            return None
        raise _error_for(status, body)

    async def _update_registry(self, db: str, add: bool) -> None:
        prefix, part = _check_db(db)
        if db == REGISTRY_DB:
            return
        lock = self._registry_locks.setdefault(prefix, DeferredLock())
        await lock.acquire()
        try:
            await self._update_registry_locked(prefix, part, add)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._registry_locks.pop(prefix, None)

    async def _update_registry_locked(self, prefix: str, part: str, add: bool) -> None:
        path = self._registry_path(prefix)
        for _attempt in range(_REGISTRY_ATTEMPTS):
            record = await self._registry_get(prefix)
            if record is None:
                if not add:
                    return
                record = {"_id": prefix, "dbs": []}
            dbs = set(record.get("dbs", []))
            if (part in dbs) == add:
                return
            if add:
                dbs.add(part)
            else:
                dbs.discard(part)
            try:
                if dbs or "_rev" not in record:
                    record["dbs"] = sorted(dbs)
                    await self._call("PUT", path, body=record)
                else:
                    await self._call("DELETE", path, query=[("rev", record["_rev"])])
                return
            except DocConflict:
                continue
            except DocNotFound:
                continue
        raise StorageError(
            f"could not record the databases of {prefix}: too many concurrent changes",
            status=409,
            code="conflict",
        )

    async def _register(self, db: str) -> None:
        await self._update_registry(db, add=True)

    async def _unregister(self, db: str) -> None:
        await self._update_registry(db, add=False)

    # -- documents ---------------------------------------------------------
    async def get_doc(
        self,
        db: str,
        doc_id: str,
        *,
        rev: str | None = None,
        revs: bool = False,
        conflicts: bool = False,
        deleted_conflicts: bool = False,
        revs_info: bool = False,
        latest: bool = False,
    ) -> Doc:
        query: list[tuple[str, str]] = []
        if rev is not None:
            query.append(("rev", rev))
        for key, flag in (
            ("revs", revs),
            ("conflicts", conflicts),
            ("deleted_conflicts", deleted_conflicts),
            ("revs_info", revs_info),
            ("latest", latest),
        ):
            if flag:
                query.append((key, "true"))
        path = f"{couchdb_db_path(db)}/{_doc_path(doc_id)}"
        return await self._call("GET", path, query=query)

    async def get_doc_json(self, db: str, doc_id: str) -> bytes:
        """The current revision of a document as CouchDB's JSON bytes,
        for callers that pass it on unchanged (``RawReads``)."""
        path = f"{couchdb_db_path(db)}/{_doc_path(doc_id)}"
        return await self._call("GET", path, raw=True)

    async def get_open_revs(
        self,
        db: str,
        doc_id: str,
        open_revs: list[str] | str,
        *,
        revs: bool = False,
        latest: bool = False,
    ) -> list[Doc]:
        if open_revs == "all":
            value = "all"
        elif isinstance(open_revs, list):
            value = json.dumps(open_revs)
        else:
            raise InvalidRequest('open_revs must be "all" or a list of revisions')
        query = [("open_revs", value)]
        if revs:
            query.append(("revs", "true"))
        if latest:
            query.append(("latest", "true"))
        path = f"{couchdb_db_path(db)}/{_doc_path(doc_id)}"
        return await self._call("GET", path, query=query)

    async def put_doc(self, db: str, doc: Doc) -> Doc:
        if not isinstance(doc, dict):
            raise InvalidRequest("Document must be a JSON object")
        doc_id = doc.get("_id")
        if isinstance(doc_id, str) and doc_id.startswith("_local/"):
            return await self.put_local(db, doc)
        path = f"{couchdb_db_path(db)}/{_doc_path(doc_id)}"
        return _ok_result(await self._call("PUT", path, body=doc))

    async def delete_doc(self, db: str, doc_id: str, rev: str) -> Doc:
        path = f"{couchdb_db_path(db)}/{_doc_path(doc_id)}"
        if isinstance(doc_id, str) and doc_id.startswith("_local/"):
            return await self.delete_local(db, doc_id, rev)
        if not rev:
            # CouchDB refuses a delete without the current revision (409).
            raise DocConflict()
        return _ok_result(await self._call("DELETE", path, query=[("rev", rev)]))

    async def bulk_docs(
        self, db: str, docs: list[Doc], *, new_edits: bool = True
    ) -> list[Doc]:
        body: Doc = {"docs": docs}
        if not new_edits:
            body["new_edits"] = False
        result = await self._call(
            "POST", f"{couchdb_db_path(db)}/_bulk_docs", body=body, db_call=True
        )
        if not new_edits:
            # CouchDB lists only the documents it could not store.
            return [r for r in result if "error" in r]
        return result

    async def bulk_get(
        self, db: str, requests: list[Doc], *, revs: bool = False, latest: bool = False
    ) -> list[Doc]:
        path = f"{couchdb_db_path(db)}/_bulk_get"
        query = [("revs", "true")] if revs else []
        if latest:
            query.append(("latest", "true"))
        answer = await self._call(
            "POST", path, query=query, body={"docs": requests}, db_call=True
        )
        return answer.get("results", [])

    async def revs_diff(self, db: str, revs: dict[str, list[str]]) -> Doc:
        return await self._call(
            "POST", f"{couchdb_db_path(db)}/_revs_diff", body=revs, db_call=True
        )

    async def all_docs(
        self,
        db: str,
        *,
        keys: list[str] | None = None,
        start_key: str | None = None,
        end_key: str | None = None,
        inclusive_end: bool = True,
        descending: bool = False,
        limit: int | None = None,
        skip: int = 0,
        include_docs: bool = False,
        conflicts: bool = False,
        update_seq: bool = False,
        _raw: bool = False,
    ) -> Doc:
        for _name, value in (("limit", limit), ("skip", skip)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidRequest(
                    f'Invalid value for positive integer: "{value}"',
                    code="query_parse_error",
                )
        query: list[tuple[str, str]] = []
        if start_key is not None:
            query.append(("startkey", json.dumps(start_key)))
        if end_key is not None:
            query.append(("endkey", json.dumps(end_key)))
        if not inclusive_end:
            query.append(("inclusive_end", "false"))
        if descending:
            query.append(("descending", "true"))
        if limit is not None:
            query.append(("limit", str(int(limit))))
        if skip:
            query.append(("skip", str(int(skip))))
        if include_docs:
            query.append(("include_docs", "true"))
            if conflicts:
                query.append(("conflicts", "true"))
        if update_seq:
            query.append(("update_seq", "true"))
        path = f"{couchdb_db_path(db)}/_all_docs"
        if keys is not None:
            result = await self._call(
                "POST", path, query=query, body={"keys": keys}, db_call=True, raw=_raw
            )
        else:
            result = await self._call("GET", path, query=query, db_call=True, raw=_raw)
        if _raw:
            return result
        if not include_docs:
            for row in result.get("rows", []):
                row.pop("doc", None)
        return result

    async def changes(
        self,
        db: str,
        *,
        since: str | None = None,
        limit: int | None = None,
        descending: bool = False,
        include_docs: bool = False,
        style: str = "main_only",
        conflicts: bool = False,
        doc_ids: list[str] | None = None,
        selector: Doc | None = None,
        design_only: bool = False,
        _raw: bool = False,
    ) -> Doc:
        if style not in ("main_only", "all_docs"):
            raise InvalidRequest(f"invalid style {style!r}")
        if (doc_ids is not None) + (selector is not None) + bool(design_only) > 1:
            raise InvalidRequest("changes takes one filter at most")
        # Refused here as the embedded engine refuses it (CouchDB's own
        # words for a bad selector vary with its version).
        if selector is not None:
            mango.normalize(selector)
        query: list[tuple[str, str]] = []
        if since is not None:
            query.append(("since", _seq(since)))
        if limit is not None:
            query.append(("limit", str(int(limit))))
        if descending:
            query.append(("descending", "true"))
        if include_docs:
            query.append(("include_docs", "true"))
            if conflicts:
                query.append(("conflicts", "true"))
        if style != "main_only":
            query.append(("style", style))
        path = f"{couchdb_db_path(db)}/_changes"
        if doc_ids is not None:
            query.append(("filter", "_doc_ids"))
            result = await self._call(
                "POST", path, query=query, body={"doc_ids": doc_ids}, db_call=True
            )
        elif selector is not None:
            query.append(("filter", "_selector"))
            result = await self._call(
                "POST", path, query=query, body={"selector": selector}, db_call=True
            )
        elif design_only:
            query.append(("filter", "_design"))
            result = await self._call("GET", path, query=query, db_call=True)
        else:
            result = await self._call("GET", path, query=query, db_call=True, raw=_raw)
        return result

    async def all_docs_json(self, db: str, **options: Any) -> bytes:
        """``all_docs`` as CouchDB's JSON bytes (``RawReads``)."""
        return await self.all_docs(db, **options, _raw=True)

    async def changes_json(
        self,
        db: str,
        *,
        since: str | None = None,
        limit: int | None = None,
        descending: bool = False,
        include_docs: bool = False,
        style: str = "main_only",
    ) -> bytes:
        """``changes`` without a filter, as CouchDB's JSON bytes
        (``RawReads``): a large feed is neither decoded nor encoded again."""
        return await self.changes(
            db,
            since=since,
            limit=limit,
            descending=descending,
            include_docs=include_docs,
            style=style,
            _raw=True,
        )

    # -- _local documents --------------------------------------------------
    async def get_local(self, db: str, doc_id: str) -> Doc:
        path = f"{couchdb_db_path(db)}/{_local_path(doc_id)}"
        return await self._call("GET", path)

    async def put_local(self, db: str, doc: Doc) -> Doc:
        if not isinstance(doc, dict):
            raise InvalidRequest("Document must be a JSON object")
        path = f"{couchdb_db_path(db)}/{_local_path(doc.get('_id'))}"
        body = dict(doc)
        body.pop("_id", None)
        return _ok_result(await self._call("PUT", path, body=body))

    async def delete_local(self, db: str, doc_id: str, rev: str | None) -> Doc:
        path = f"{couchdb_db_path(db)}/{_local_path(doc_id)}"
        query = [("rev", rev)] if rev else None
        return _ok_result(await self._call("DELETE", path, query=query))

    # -- Mango ------------------------------------------------------------
    async def create_index(
        self,
        db: str,
        fields: list[Any],
        *,
        ddoc: str | None = None,
        name: str | None = None,
        partial_filter_selector: Doc | None = None,
    ) -> Doc:
        index: Doc = {"fields": fields}
        if partial_filter_selector is not None:
            index["partial_filter_selector"] = partial_filter_selector
        body: Doc = {"index": index, "type": "json"}
        if ddoc is not None:
            # CouchDB takes "x" and "_design/x" alike; not every server does.
            body["ddoc"] = ddoc.removeprefix("_design/")
        if name is not None:
            body["name"] = name
        result = await self._call(
            "POST", f"{couchdb_db_path(db)}/_index", body=body, db_call=True
        )
        return {key: result[key] for key in ("result", "id", "name") if key in result}

    async def list_indexes(self, db: str) -> Doc:
        return await self._call("GET", f"{couchdb_db_path(db)}/_index", db_call=True)

    async def find(self, db: str, query: Doc, *, require_index: bool = False) -> Doc:
        if not isinstance(query, dict):
            raise InvalidRequest("the query must be a JSON object")
        found = await self._call(
            "POST", f"{couchdb_db_path(db)}/_find", body=query, db_call=True
        )
        # CouchDB has no way to refuse a full scan up front: it says so.
        if require_index and _NO_INDEX_WARNING in (found.get("warning") or ""):
            raise NoIndex()
        return found


_NO_INDEX_WARNING = "No matching index found"


# -- helpers -------------------------------------------------------------------
def _describe(e: BaseException) -> str:
    if isinstance(
        e,
        (
            web_client.ResponseNeverReceived,
            web_client.ResponseFailed,
            web_client.RequestTransmissionFailed,
        ),
    ):
        inner = ", ".join(r.getErrorMessage() for r in e.reasons)
        return f"{type(e).__name__} ({inner})" if inner else type(e).__name__
    return f"{type(e).__name__}: {e}"


def _is_cancellation(e: BaseException) -> bool:
    if isinstance(e, (CancelledError, net_error.ConnectingCancelledError)):
        return True
    reasons = getattr(e, "reasons", None) or []
    return bool(reasons) and all(
        r.check(CancelledError, net_error.ConnectingCancelledError) for r in reasons
    )


def _is_db_missing(body: Any) -> bool:
    return isinstance(body, dict) and body.get("reason") in _DB_MISSING_REASONS


def _error_for(status: int, body: Any, *, db_call: bool = False) -> StorageError:
    """The interface's error for a CouchDB error answer."""
    error = reason = None
    if isinstance(body, dict):
        error = body.get("error")
        reason = body.get("reason")
    error = str(error) if error else None
    reason = str(reason) if reason else None
    if status == 404:
        if _is_db_missing(body) or (db_call and reason is None):
            return DatabaseNotFound()
        return DocNotFound(reason or "missing")
    if status == 409:
        return DocConflict(reason or "Document update conflict.")
    if status == 412 and error in (None, "file_exists"):
        return DatabaseExists(reason) if reason else DatabaseExists()
    if status == 400 or error == "doc_validation":
        # (doc_validation is a 400 in CouchDB; pouchdb-server says 500)
        return InvalidRequest(reason or "Bad request", code=error or "bad_request")
    if status == 503:
        return StorageUnavailable(
            reason or "CouchDB is unavailable", code=error or "service_unavailable"
        )
    detail = f"CouchDB answered {status} {error or 'error'}"
    if reason:
        detail += f": {reason}"
    return StorageError(detail, status=status, code=error or "unknown_error")


def _ok_result(result: Any) -> Doc:
    if isinstance(result, dict):
        return {"ok": True, "id": result.get("id"), "rev": result.get("rev")}
    raise StorageError("unexpected answer from CouchDB", status=502, code="bad_gateway")


async def _gather(coroutines: list[Any], *, width: int = 8) -> list[Any]:
    """Run coroutines, at most ``width`` at a time; results in order."""
    if not coroutines:
        return []
    semaphore = defer.DeferredSemaphore(width)
    deferreds = [semaphore.run(Deferred.fromCoroutine, c) for c in coroutines]
    try:
        return list(await defer.gatherResults(deferreds, consumeErrors=True))
    except defer.FirstError as e:
        e.subFailure.raiseException()
        raise  # unreachable
