"""OAuth clients of an instance (``io.cozy.oauth.clients``).

Clients register themselves (RFC 7591 dynamic registration, ``POST
/auth/register``) or are created by the operator (admin API, ``cozyctl
instances client-oauth``). A client declares its metadata (redirect URIs,
name, software id…); the server picks its id, its secret and a
registration access token (a JWT of audience ``registration`` that lets the
client read, update and delete its own registration). A client is
``pending`` until the first token or access code is issued for it.

Fields the server manages (``flagship``, ``pending``, secrets, grant and
response types…) are never taken from what a client sends.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cozyd.auth import tokens
from cozyd.auth.limits import RateLimiter
from cozyd.documents import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    Documents,
    db_name,
    new_doc_id,
)
from cozyd.errors import CozyError, EchoError, NotFound
from cozyd.instance.model import Instance

CLIENTS_DOCTYPE = "io.cozy.oauth.clients"
#: Random bytes in a client secret (as cozy-stack: 24, URL-safe base64).
CLIENT_SECRET_BYTES = 24
DOCTYPE_VERSION = "1"
#: The scope of clients that only log a user in (no permission at all).
LOGIN_SCOPE = "login"
#: Dynamic registrations (and updates) allowed per instance and window.
REGISTRATIONS_PER_HOUR = 50
REGISTRATION_WINDOW = 3600.0

GRANT_TYPES = ("authorization_code", "refresh_token")
RESPONSE_TYPES = ("code",)
NOTIFICATION_PLATFORMS = ("", "firebase", "apns", "huawei", "android", "ios")
#: Schemes a browser could run or render instead of leaving for the client.
UNSAFE_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "blob", "about"})
#: Apps a client may not claim to be (they hold powerful permissions).
FORBIDDEN_LINKED_SLUGS = frozenset({"store", "settings"})
MAX_FIELD_LENGTH = 2048
MAX_REDIRECT_URIS = 32

#: Metadata a client declares (all strings but redirect_uris).
DECLARED_FIELDS = (
    "client_name",
    "client_kind",
    "client_uri",
    "logo_uri",
    "policy_uri",
    "software_id",
    "software_version",
    "notification_platform",
    "notification_device_token",
)
#: Fields kept from the stored client when it updates its registration.
SERVER_FIELDS = (
    "pending",
    "allow_login_scope",
    "flagship",
    "certified_from_store",
    "created_at_onboarding",
    "synchronized_at",
    "last_refreshed_at",
    "client_os",
    "notifications",
    "onboarding_secret",
    "onboarding_app",
    "onboarding_permissions",
    "onboarding_state",
)


class RegistrationError(CozyError):
    """A Client Registration Error Response (RFC 7591 §3.2.2):
    ``{"error": …, "error_description": …}``."""

    status = 400

    def __init__(self, error: str, description: str = "", *, status: int = 400):
        super().__init__(description or error, status=status, code=error)
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class RegistrationRateLimited(EchoError):
    """Too many registrations on this instance: cozy-stack answers 404."""

    status = 404
    code = "not_found"

    def __init__(self) -> None:
        super().__init__("Not found")


class ClientNotFound(NotFound):
    code = "client_not_found"

    def __init__(self, detail: str = "Client not found"):
        super().__init__(detail)


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def secrets_equal(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (an empty one never matches)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def linked_app_slug(software_id: str) -> str:
    """``registry://drive/…`` → ``drive``: a mobile app sharing a webapp's
    permissions; empty for other software ids."""
    if not software_id.startswith("registry://"):
        return ""
    return software_id[len("registry://") :].partition("/")[0]


def public_view(doc: Mapping[str, Any], *, secret: bool = True) -> dict[str, Any]:
    """A stored client as the registration protocol shows it: ``client_id``
    instead of ``_id``, no ``_rev``."""
    view: dict[str, Any] = {"client_id": doc.get("client_id") or doc.get("_id", "")}
    for key, value in doc.items():
        if key in ("_id", "_rev", "client_id"):
            continue
        if key == "client_secret" and not secret:
            continue
        view[key] = value
    view.setdefault("client_secret_expires_at", 0)
    return view


def _check_redirect_uri(instance: Instance, uri: Any) -> str:
    if not isinstance(uri, str) or not uri or len(uri) > MAX_FIELD_LENGTH:
        raise RegistrationError("invalid_redirect_uri", f"{uri} is invalid")
    invalid = RegistrationError("invalid_redirect_uri", f"{uri} is invalid")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise invalid
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise invalid from None
    if not parts.scheme or parts.scheme.lower() in UNSAFE_SCHEMES:
        raise invalid
    if parts.fragment or "#" in uri:
        raise invalid
    # The instance itself is never a client: a code sent to one of its
    # pages could be read by any of its apps.
    host = parts.netloc.rpartition("@")[2].lower()
    if host and host in (d.lower() for d in instance.all_domains):
        raise invalid
    return uri


def _declared_metadata(instance: Instance, body: Any) -> dict[str, Any]:
    """Validated client-declared metadata, in the order clients expect."""
    if not isinstance(body, Mapping):
        raise RegistrationError(
            "invalid_client_metadata", "the registration must be a JSON object"
        )
    uris = body.get("redirect_uris")
    if uris is None or uris == []:
        raise RegistrationError("invalid_redirect_uri", "redirect_uris is mandatory")
    if not isinstance(uris, list) or len(uris) > MAX_REDIRECT_URIS:
        raise RegistrationError(
            "invalid_redirect_uri", "redirect_uris must be a list of URIs"
        )
    metadata: dict[str, Any] = {
        "redirect_uris": [_check_redirect_uri(instance, uri) for uri in uris]
    }
    for field in DECLARED_FIELDS:
        value = body.get(field)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
            raise RegistrationError("invalid_client_metadata", f"{field} must be a string")
        metadata[field] = value
    if not metadata.get("client_name"):
        raise RegistrationError("invalid_client_metadata", "client_name is mandatory")
    if not metadata.get("software_id"):
        raise RegistrationError("invalid_client_metadata", "software_id is mandatory")
    platform = metadata.get("notification_platform", "").lower()
    if platform not in NOTIFICATION_PLATFORMS:
        raise RegistrationError("invalid_client_metadata")
    if platform:
        metadata["notification_platform"] = platform
    if linked_app_slug(metadata["software_id"]) in FORBIDDEN_LINKED_SLUGS:
        raise RegistrationError(
            "unapproved_software_id", "Link with store/settings is forbidden"
        )
    return metadata


def _ordered(metadata: Mapping[str, Any], server: Mapping[str, Any]) -> dict[str, Any]:
    """The document, fields in the order cozy-stack writes them."""
    doc: dict[str, Any] = {}
    for key in (
        "_id",
        "_rev",
        "client_secret",
        "client_secret_expires_at",
        "allow_login_scope",
        "pending",
    ):
        if key in server:
            doc[key] = server[key]
    doc["redirect_uris"] = metadata["redirect_uris"]
    doc["grant_types"] = list(GRANT_TYPES)
    doc["response_types"] = list(RESPONSE_TYPES)
    for field in DECLARED_FIELDS:
        if field in metadata:
            doc[field] = metadata[field]
    for key, value in server.items():
        doc.setdefault(key, value)
    return doc


#: Told of a client's change (``on_change(instance, client_id)``), so that
#: caches of its permissions forget it.
ClientChanged = Callable[[Instance, str], None]


class OAuthClients:
    def __init__(
        self,
        documents: Documents,
        *,
        on_change: ClientChanged | None = None,
        seconds: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
        registrations_per_hour: int = REGISTRATIONS_PER_HOUR,
    ):
        self._documents = documents  # writes: validated and published
        self._store = documents.store  # reads
        self._changed: ClientChanged = on_change or (lambda instance, client_id: None)
        self._seconds = seconds
        self._limiter = limiter if limiter is not None else RateLimiter(seconds=seconds)
        self._registrations_per_hour = registrations_per_hour

    def _db(self, instance: Instance) -> str:
        return db_name(instance.prefix, CLIENTS_DOCTYPE)

    def check_rate(self, instance: Instance) -> None:
        """Count one registration (or update) of ``instance``'s clients."""
        verdict = self._limiter.hit(
            "oauth-client:" + instance.domain,
            limit=self._registrations_per_hour,
            period=REGISTRATION_WINDOW,
        )
        if verdict.limited:
            raise RegistrationRateLimited()

    # -- reading ----------------------------------------------------------------
    async def get(self, instance: Instance, client_id: str) -> dict[str, Any] | None:
        if not client_id or client_id.startswith("_"):
            return None
        try:
            return await self._store.get_doc(self._db(instance), client_id)
        except (DocNotFound, DatabaseNotFound):
            return None

    async def find(self, instance: Instance, client_id: str) -> dict[str, Any]:
        client = await self.get(instance, client_id)
        if client is None:
            raise ClientNotFound()
        return client

    async def find_by_software_id(
        self, instance: Instance, software_id: str
    ) -> dict[str, Any] | None:
        try:
            result = await self._store.find(
                self._db(instance), {"selector": {"software_id": software_id}, "limit": 1}
            )
        except DatabaseNotFound:
            return None
        return result["docs"][0] if result["docs"] else None

    async def list(
        self, instance: Instance, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of clients in id order, and the cursor of the next page."""
        found: list[dict[str, Any]] = []
        start = cursor
        while len(found) <= limit:
            try:
                page = await self._store.all_docs(
                    self._db(instance), start_key=start, include_docs=True, limit=limit + 2
                )
            except DatabaseNotFound:
                return [], None
            rows = page["rows"]
            for row in rows:
                if not row["id"].startswith("_design/") and row.get("doc"):
                    found.append(row["doc"])
            if len(rows) < limit + 2:
                break
            start = rows[-1]["id"] + "\x00"
        if len(found) > limit:
            return found[:limit], found[limit]["_id"]
        return found, None

    # -- registration -------------------------------------------------------------
    async def register(
        self,
        instance: Instance,
        body: Any,
        *,
        pending: bool = True,
        allow_login_scope: bool = False,
    ) -> dict[str, Any]:
        """Create a client from its declared metadata; returns its public view
        with its secret and registration access token."""
        metadata = _declared_metadata(instance, body)
        metadata["client_name"] = await self._unique_name(instance, metadata["client_name"])
        now = self._seconds()
        server: dict[str, Any] = {
            "_id": new_doc_id(),
            "client_secret": secrets.token_urlsafe(CLIENT_SECRET_BYTES),
            "client_secret_expires_at": 0,
        }
        if allow_login_scope:
            server["allow_login_scope"] = True
        if pending:
            server["pending"] = True
        server["cozyMetadata"] = self._metadata(metadata, now)
        doc = _ordered(metadata, server)
        result = await self._documents.put(instance, CLIENTS_DOCTYPE, doc, create_db=True)
        doc["_rev"] = result["rev"]
        view = public_view(doc)
        registration = self.registration_token(instance, doc["_id"])
        return _with_token(view, registration)

    def registration_token(self, instance: Instance, client_id: str) -> str:
        return tokens.issue(
            instance, tokens.REGISTRATION, client_id, issued_at=self._seconds()
        )

    def check_registration_token(
        self, instance: Instance, client: Mapping[str, Any], token: str | None
    ) -> bool:
        """Is ``token`` this client's registration access token?"""
        if not token:
            return False
        try:
            claims = tokens.parse(
                instance, token, now=self._seconds(), audiences=(tokens.REGISTRATION,)
            )
        except CozyError:
            return False
        return secrets_equal(claims.subject, str(client.get("_id", "")))

    async def update(
        self, instance: Instance, old: dict[str, Any], body: Any
    ) -> dict[str, Any]:
        """RFC 7592 update: the body repeats ``client_id`` and states all the
        declared metadata again. Sending the current secret rotates it."""
        if not isinstance(body, Mapping) or body.get("client_id") != old["_id"]:
            raise RegistrationError("invalid_client_id", "client_id is mandatory")
        metadata = _declared_metadata(instance, body)
        given = body.get("client_secret") or ""
        if not isinstance(given, str):
            raise RegistrationError("invalid_client_secret", "client_secret is invalid")
        secret = old.get("client_secret", "")
        if given:
            if not secrets_equal(given, secret):
                raise RegistrationError("invalid_client_secret", "client_secret is invalid")
            secret = secrets.token_urlsafe(CLIENT_SECRET_BYTES)
        if metadata["client_name"] != old.get("client_name"):
            metadata["client_name"] = await self._unique_name(
                instance, metadata["client_name"]
            )
        server: dict[str, Any] = {
            "_id": old["_id"],
            "_rev": old["_rev"],
            "client_secret": secret,
            "client_secret_expires_at": 0,
        }
        for key in SERVER_FIELDS:
            if key in old:
                server[key] = old[key]
        meta = dict(old.get("cozyMetadata") or self._metadata(metadata, self._seconds()))
        meta["updatedAt"] = iso_time(self._seconds())
        server["cozyMetadata"] = meta
        doc = _ordered(metadata, server)
        try:
            result = await self._documents.put(instance, CLIENTS_DOCTYPE, doc)
        except DocConflict:
            raise RegistrationError("conflict", status=409) from None
        doc["_rev"] = result["rev"]
        self._changed(instance, old["_id"])
        return public_view(doc)

    async def delete(self, instance: Instance, client: Mapping[str, Any]) -> None:
        """Remove the client; its tokens stop working at once on this node
        (other nodes see it when their cache entry expires)."""
        doc = dict(client)
        while True:
            try:
                await self._documents.delete(
                    instance, CLIENTS_DOCTYPE, doc["_id"], doc["_rev"], doc=doc
                )
                break
            except DocNotFound:
                break
            except DocConflict:
                fresh = await self.get(instance, doc["_id"])
                if fresh is None:
                    break
                doc = fresh
        self._changed(instance, doc["_id"])

    async def mark_used(
        self, instance: Instance, client: dict[str, Any], **changes: Any
    ) -> dict[str, Any]:
        """Clear ``pending`` (a token or code was issued) and apply
        ``changes`` (bookkeeping such as ``last_refreshed_at``); best effort
        on a concurrent update, as cozy-stack."""
        updated = {k: v for k, v in client.items() if k != "pending"}
        updated.update(changes)
        if updated == client:
            return client
        try:
            result = await self._documents.put(instance, CLIENTS_DOCTYPE, updated)
            updated["_rev"] = result["rev"]
        except DocConflict:
            return client
        if client.get("pending"):
            self._changed(instance, client["_id"])
        return updated

    async def confirm_exists(self, instance: Instance, client_id: str) -> dict[str, Any]:
        """The client, no longer pending (a token was issued for it)."""
        client = await self.get(instance, client_id)
        if client is None:
            raise NotFound(
                f"no OAuth client {client_id!r} on this instance", code="unknown_client"
            )
        return await self.mark_used(instance, client)

    # -- helpers ------------------------------------------------------------------
    def _metadata(self, metadata: Mapping[str, Any], now: float) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "doctypeVersion": DOCTYPE_VERSION,
            "metadataVersion": 1,
            "createdAt": iso_time(now),
            "updatedAt": iso_time(now),
        }
        slug = linked_app_slug(metadata.get("software_id", ""))
        if slug:
            meta["createdByApp"] = slug
            if metadata.get("software_version"):
                meta["createdByAppVersion"] = metadata["software_version"]
        return meta

    async def _unique_name(self, instance: Instance, name: str) -> str:
        """``name``, or ``name-N`` if another client already has that name
        (N one more than the highest suffix in use), as cozy-stack does."""
        try:
            result = await self._store.find(
                self._db(instance),
                {
                    "selector": {"client_name": {"$gte": name, "$lt": name + "\uffff"}},
                    "fields": ["client_name"],
                    "limit": 1000,
                },
            )
        except DatabaseNotFound:
            return name
        names = [d.get("client_name") for d in result["docs"]]
        if name not in names:
            return name
        highest = 1
        for other in names:
            if isinstance(other, str) and other.startswith(name + "-"):
                suffix = other[len(name) + 1 :]
                if suffix.isdigit():
                    highest = max(highest, int(suffix))
        return f"{name}-{highest + 1}"


def _with_token(view: dict[str, Any], registration: str) -> dict[str, Any]:
    """The view with ``registration_access_token`` after the secret fields,
    where the registration protocol puts it."""
    result: dict[str, Any] = {}
    for key, value in view.items():
        result[key] = value
        if key == "client_secret_expires_at":
            result["registration_access_token"] = registration
    result.setdefault("registration_access_token", registration)
    return result
