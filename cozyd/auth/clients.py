"""OAuth clients of an instance (``io.cozy.oauth.clients``)."""

from __future__ import annotations

from typing import Any

from cozyd.errors import BadRequest
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import CLIENTS_DOCTYPE, PermissionResolver
from cozyd.storage.interface import DatabaseNotFound, DocConflict, DocNotFound, DocumentStore
from cozyd.storage.names import db_name


class OAuthClients:
    def __init__(self, store: DocumentStore, resolver: PermissionResolver):
        self._store = store
        self._resolver = resolver

    def _db(self, instance: Instance) -> str:
        return db_name(instance.prefix, CLIENTS_DOCTYPE)

    async def get(self, instance: Instance, client_id: str) -> dict[str, Any] | None:
        if not client_id or client_id.startswith("_"):
            return None
        try:
            return await self._store.get_doc(self._db(instance), client_id)
        except (DocNotFound, DatabaseNotFound):
            return None

    async def confirm_exists(self, instance: Instance, client_id: str) -> dict[str, Any]:
        """The client, no longer pending (a token was issued for it)."""
        client = await self.get(instance, client_id)
        if client is None:
            raise BadRequest(f"no OAuth client {client_id!r} on this instance",
                             code="unknown_client")
        if client.get("pending"):
            client = {k: v for k, v in client.items() if k != "pending"}
            try:
                result = await self._store.put_doc(self._db(instance), client)
                client["_rev"] = result["rev"]
            except DocConflict:
                pass
            self._resolver.forget_client(instance, client_id)
        return client
