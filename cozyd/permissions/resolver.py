"""Which permissions a verified token grants, read from the instance's data.

CLI and OAuth tokens carry their scope; app and konnector tokens carry only
a slug, and their rules live in the app's ``io.cozy.permissions`` document
(written at install from the manifest). OAuth tokens are only good while
their client exists. Answers are cached for ``ttl`` seconds per instance;
``forget_client``/``forget_source`` drop an entry at once when this node changes it (revoking a
client, updating an app's permissions).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cozyd.auth import tokens
from cozyd.auth.clients import CLIENTS_DOCTYPE
from cozyd.errors import InvalidToken
from cozyd.instance.model import Instance
from cozyd.permissions.rules import InvalidPermission, PermissionSet
from cozyd.storage.interface import DatabaseNotFound, DocNotFound, DocumentStore
from cozyd.storage.names import db_name

PERMISSIONS_DOCTYPE = "io.cozy.permissions"
MAX_CACHED = 50_000


def app_source(slug: str) -> str:
    return f"io.cozy.apps/{slug}"


def konnector_source(slug: str) -> str:
    return f"io.cozy.konnectors/{slug}"


@functools.lru_cache(maxsize=4096)
def _from_scope(
    scope: str, type: str, source_id: str = "", subject: str = ""
) -> PermissionSet:
    # Sets are immutable, and the same few scopes come back on every request.
    try:
        return PermissionSet.from_scope(
            scope, type=type, source_id=source_id, subject=subject
        )
    except InvalidPermission:
        raise InvalidToken() from None  # a token whose scope makes no sense


class PermissionResolver:
    def __init__(
        self, store: DocumentStore, *, seconds: Callable[[], float], ttl: float = 5.0
    ):
        self._store = store
        self._seconds = seconds
        self._ttl = ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    async def for_claims(self, instance: Instance, claims: tokens.Claims) -> PermissionSet:
        audience = claims.audience
        if audience == tokens.CLI:
            return _from_scope(claims.scope, type="cli", subject=claims.subject or "CLI")
        if audience == tokens.ACCESS:
            client = await self.client(instance, claims.subject)
            if client is None:
                raise InvalidToken()  # revoked: the client is gone
            return await self._oauth_set(instance, claims, client)
        if audience in (tokens.APP, tokens.KONNECTOR):
            kind = "app" if audience == tokens.APP else "konnector"
            source = (app_source if kind == "app" else konnector_source)(claims.subject)
            stored = await self.stored_set(instance, kind, source)
            if stored is None:
                raise InvalidToken()
            return stored
        raise InvalidToken()

    async def _oauth_set(
        self, instance: Instance, claims: tokens.Claims, client: dict[str, Any]
    ) -> PermissionSet:
        scope = claims.scope
        if scope.startswith("@io.cozy.apps/"):
            stored = await self.stored_set(instance, "app", app_source(scope[14:]))
            if stored is None:
                raise InvalidToken()
            return PermissionSet(
                type="oauth",
                rules=stored.rules,
                source_id=claims.subject,
                subject=claims.subject,
            )
        if scope == "*" and not client.get("flagship"):
            raise InvalidToken()  # the maximal set is for certified flagship apps
        return _from_scope(
            scope, type="oauth", source_id=claims.subject, subject=claims.subject
        )

    # -- cached reads ---------------------------------------------------------
    def _cached(self, key: tuple[str, str]) -> tuple[bool, Any]:
        entry = self._cache.get(key)
        if entry is not None and entry[0] > self._seconds():
            return True, entry[1]
        return False, None

    def _remember(self, key: tuple[str, str], value: Any) -> None:
        self._cache[key] = (self._seconds() + self._ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    def forget_client(self, instance: Instance, client_id: str) -> None:
        self._cache.pop((instance.prefix, "client:" + client_id), None)

    def forget_source(self, instance: Instance, source_id: str) -> None:
        self._cache.pop((instance.prefix, source_id), None)

    async def client(self, instance: Instance, client_id: str) -> dict[str, Any] | None:
        key = (instance.prefix, "client:" + client_id)
        hit, value = self._cached(key)
        if hit:
            return value
        try:
            value = await self._store.get_doc(
                db_name(instance.prefix, CLIENTS_DOCTYPE), client_id
            )
        except (DocNotFound, DatabaseNotFound):
            value = None
        self._remember(key, value)
        return value

    async def stored_set(
        self, instance: Instance, kind: str, source_id: str
    ) -> PermissionSet | None:
        key = (instance.prefix, source_id)
        hit, value = self._cached(key)
        if hit:
            return value
        value = None
        try:
            result = await self._store.find(
                db_name(instance.prefix, PERMISSIONS_DOCTYPE),
                {
                    "selector": {"source_id": source_id, "type": kind},
                    "use_index": "_design/by-source-and-type",
                    "limit": 1,
                },
            )
        except DatabaseNotFound:
            result = {"docs": []}
        if result["docs"]:
            doc = result["docs"][0]
            value = PermissionSet.from_json(
                doc.get("permissions"),
                type=kind,
                source_id=source_id,
                id=doc["_id"],
                subject=source_id.partition("/")[2],
            )
        self._remember(key, value)
        return value
