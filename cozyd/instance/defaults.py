"""What a new instance starts with: databases, Mango indexes, directories.

Names and fields follow cozy-stack (model/instance/lifecycle and
couchdb/indexes), so its client apps find the indexes they rely on.
"""

from __future__ import annotations

from typing import Any

#: Databases created with every instance.
DOCTYPES = (
    "io.cozy.apps",
    "io.cozy.contacts",
    "io.cozy.files",
    "io.cozy.files.versions",
    "io.cozy.jobs",
    "io.cozy.konnectors",
    "io.cozy.notifications",
    "io.cozy.oauth.clients",
    "io.cozy.permissions",
    "io.cozy.sessions.logins",
    "io.cozy.settings",
    "io.cozy.shared",
    "io.cozy.sharings",
    "io.cozy.triggers",
    "com.bitwarden.ciphers",
)

_CLIENT_KINDS = {"client_kind": {"$in": ["browser", "desktop", "mobile"]},
                 "pending": {"$exists": False}}

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

ROOT_DIR_ID = "io.cozy.files.root-dir"
TRASH_DIR_ID = "io.cozy.files.trash-dir"
TRASH_DIR_NAME = ".cozy_trash"

#: Localized names of the default tree (en is the fallback).
DIRECTORY_NAMES = {
    "en": {"administrative": "Administrative", "photos": "Photos",
           "photos_uploaded": "Uploaded from Cozy Photos",
           "photos_backup": "Backed up from my mobile"},
    "fr": {"administrative": "Administratif", "photos": "Photos",
           "photos_uploaded": "Envoyées depuis Cozy Photos",
           "photos_backup": "Sauvegardées depuis mon mobile"},
}

#: The default tree: (key of the name, key of the parent or None for root,
#: app the directory is referenced by).
DEFAULT_TREE = (
    ("administrative", None, "administrative"),
    ("photos", None, "photos"),
    ("photos_uploaded", "photos", "photos/upload"),
    ("photos_backup", "photos", "photos/backup"),
)

SUPPORTED_LOCALES = tuple(DIRECTORY_NAMES)


def directory_names(locale: str) -> dict[str, str]:
    return DIRECTORY_NAMES.get(locale, DIRECTORY_NAMES["en"])
