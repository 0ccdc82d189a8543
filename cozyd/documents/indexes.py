"""The stack's own indexes and views on instance databases.

Names and fields follow cozy-stack (``pkg/couchdb/index.go``), so its client
apps find the indexes they rely on; their design documents are protected
from deletion through ``/data`` (see ``rules.protected_design_docs``).
"""

from __future__ import annotations

from typing import Any

_CLIENT_KINDS = {
    "client_kind": {"$in": ["browser", "desktop", "mobile"]},
    "pending": {"$exists": False},
}

#: doctype -> [(index name, fields, partial filter or None)]; the design
#: document is named after the index, as cozy-stack does.
INDEXES: dict[str, list[tuple[str, list[str], dict[str, Any] | None]]] = {
    "io.cozy.permissions": [("by-source-and-type", ["source_id", "type"], None)],
    "io.cozy.files": [
        ("dir-children", ["dir_id", "_id"], None),
        ("dir-by-path", ["path"], None),
        ("by-mime-updated-at", ["mime", "trashed", "updated_at"], None),
        ("with-conflicts", ["_conflicts"], None),
        ("by-sharing-status", ["metadata.sharing.status"], None),
        ("by-dir-id-updated-at", ["dir_id", "updated_at"], None),
    ],
    "io.cozy.jobs": [
        ("by-worker-and-state", ["worker", "state"], None),
        ("by-trigger-id", ["trigger_id", "queued_at"], None),
        ("by-queued-at", ["queued_at"], None),
    ],
    "io.cozy.triggers": [("by-worker-and-type", ["worker", "type"], None)],
    "io.cozy.oauth.clients": [
        ("by-client-name", ["client_name"], None),
        ("by-notification-platform", ["notification_platform"], None),
        ("connected-user-clients", ["client_kind", "client_name"], _CLIENT_KINDS),
    ],
    "io.cozy.sessions.logins": [("by-os-browser-ip", ["os", "browser", "ip"], None)],
    "io.cozy.notifications": [("by-source-id", ["source_id", "created_at"], None)],
    "io.cozy.contacts": [
        ("by-me", ["me"], None),
        ("by-groups", ["relationships.groups.data"], None),
    ],
    "com.bitwarden.ciphers": [
        ("by-folder-id", ["folder_id"], None),
        ("by-organization-id", ["organization_id"], None),
    ],
    "io.cozy.sharings": [("active", ["active"], None)],
}

#: Views cozy-stack defines on instance databases (pkg/couchdb/index.go):
#: their design documents cannot be deleted through /data either.
STACK_VIEWS: dict[str, tuple[str, ...]] = {
    "io.cozy.files": (
        "disk-usage",
        "not-synchronized-on",
        "referenced-by",
        "referenced-by-sorted-by-datetime",
        "by-parent-type-name",
    ),
    "io.cozy.files.versions": ("old-versions-disk-usage",),
    "io.cozy.permissions": ("byToken", "by-short-code", "byDoc", "permissions-by-doctype"),
    "io.cozy.shared": ("shared-docs-by-sharingid",),
    "io.cozy.sharings": ("sharings-by-doctype",),
    "io.cozy.contacts": ("contacts-by-email",),
}
