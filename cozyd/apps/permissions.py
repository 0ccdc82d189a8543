"""The permission document of an installed app, made from its manifest.

One ``io.cozy.permissions`` document per app: ``type`` ``app`` (web apps)
or ``konnector``, ``source_id`` ``io.cozy.apps/<slug>`` (or
``io.cozy.konnectors/<slug>``) and the manifest's ``permissions``. App and
konnector tokens carry only the slug: the permission resolver reads this
document, so a token gets exactly these rules. OAuth clients whose
``software_id`` is ``registry://<slug>`` get the scope
``@io.cozy.apps/<slug>``, which the resolver reads from the same document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cozyd.apps.layout import DOCTYPES, KONNECTOR, WEBAPP
from cozyd.documents import DatabaseNotFound, Documents
from cozyd.instance.model import Instance
from cozyd.permissions.rules import InvalidPermission, PermissionSet

PERMISSIONS_DOCTYPE = "io.cozy.permissions"
TYPES = {WEBAPP: "app", KONNECTOR: "konnector"}


def source_id(kind: str, slug: str) -> str:
    return f"{DOCTYPES[kind]}/{slug}"


def rule_set(permissions: Any) -> frozenset:
    """The rules of a manifest's permissions, titles and descriptions
    aside: two manifests asking the same things compare equal."""
    try:
        parsed = PermissionSet.from_json(permissions, type="app")
    except InvalidPermission:
        return frozenset()
    return frozenset(
        (rule.type, rule.verbs, tuple(sorted(rule.values)), rule.selector)
        for _, rule in parsed.rules
    )


def adds_permissions(old: Any, new: Any) -> bool:
    """Whether ``new`` asks for anything ``old`` did not (cozy-stack asks
    the owner again when the rules differ)."""
    return rule_set(old) != rule_set(new)


class AppPermissions:
    def __init__(
        self,
        documents: Documents,
        *,
        forget: Callable[[Instance, str], None] = lambda instance, source: None,
        now: Callable[[], str],
    ):
        self._documents = documents
        self._forget = forget
        self._now = now

    async def find(self, instance: Instance, kind: str, slug: str) -> dict[str, Any] | None:
        try:
            result = await self._documents.find(
                instance,
                PERMISSIONS_DOCTYPE,
                {
                    "selector": {"source_id": source_id(kind, slug), "type": TYPES[kind]},
                    "use_index": "_design/by-source-and-type",
                    "limit": 1,
                },
            )
        except DatabaseNotFound:
            return None
        docs = result.get("docs") or []
        return docs[0] if docs else None

    async def write(
        self,
        instance: Instance,
        kind: str,
        slug: str,
        permissions: Mapping[str, Any] | None,
        version: str,
    ) -> dict[str, Any]:
        """Create or replace the app's permission document."""
        source = source_id(kind, slug)
        existing = await self.find(instance, kind, slug)
        now = self._now()
        doc: dict[str, Any] = dict(existing or {})
        doc.update(
            {
                "type": TYPES[kind],
                "source_id": source,
                "permissions": dict(permissions or {}),
            }
        )
        meta = dict(doc.get("cozyMetadata") or {})
        meta.setdefault("doctypeVersion", "1")
        meta.setdefault("metadataVersion", 1)
        meta.setdefault("createdAt", now)
        meta["updatedAt"] = now
        meta["createdByApp"] = slug
        meta["createdByAppVersion"] = version
        doc["cozyMetadata"] = meta
        if existing is None:
            result = await self._documents.create(
                instance, PERMISSIONS_DOCTYPE, doc, create_db=True
            )
        else:
            result = await self._documents.put(instance, PERMISSIONS_DOCTYPE, doc)
        doc["_id"], doc["_rev"] = result["id"], result["rev"]
        self._forget(instance, source)
        return doc

    async def delete(self, instance: Instance, kind: str, slug: str) -> None:
        existing = await self.find(instance, kind, slug)
        if existing is not None:
            await self._documents.delete(
                instance,
                PERMISSIONS_DOCTYPE,
                existing["_id"],
                existing["_rev"],
                doc=existing,
            )
        self._forget(instance, source_id(kind, slug))
