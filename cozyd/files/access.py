"""Who may touch which file: the one check of every ``/files`` route.

A permission set allows an entry of the tree when one of its rules on
``io.cozy.files`` has the verb and either no ``values`` (the whole
doctype), or the entry's id in ``values``, or the id of one of its
directories: a rule on a directory covers its whole subtree, as the
reference's permissions.md says (``selector`` rules are matched on the
entry itself). Share tokens (a permission document of type ``share``)
go through this same function: nothing else decides.
"""

from __future__ import annotations

from typing import Any

from cozyd.errors import PermissionDenied
from cozyd.permissions.rules import PermissionSet, document_field

FILES = "io.cozy.files"


def covers_everything(permissions: PermissionSet, verb: str) -> bool:
    return permissions.allows_collection(verb, FILES)


async def allowed(
    vfs: Any, instance: Any, permissions: PermissionSet, verb: str, doc: dict[str, Any]
) -> bool:
    if permissions.allows_collection(verb, FILES):
        return True
    doc_id = doc.get("_id", "")
    if permissions.allows_document(verb, FILES, doc_id, document_field(doc)):
        return True
    for ancestor in await vfs.ancestors(instance, doc):
        if permissions.allows_document(verb, FILES, ancestor, None):
            return True
    return False


async def authorize(
    vfs: Any, instance: Any, permissions: PermissionSet, verb: str, doc: dict[str, Any]
) -> None:
    """``PermissionDenied`` (403) unless ``permissions`` allow ``verb`` on
    ``doc`` (an entry of ``instance``'s tree, or a directory to create in)."""
    if not await allowed(vfs, instance, permissions, verb, doc):
        raise PermissionDenied()
