"""What a new instance starts with: databases, Mango indexes, directories.

Names and fields follow cozy-stack (model/instance/lifecycle and
couchdb/indexes), so its client apps find the indexes they rely on.
"""

from __future__ import annotations

from cozyd.documents.indexes import INDEXES  # noqa: F401 - every instance gets them

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

ROOT_DIR_ID = "io.cozy.files.root-dir"
TRASH_DIR_ID = "io.cozy.files.trash-dir"
TRASH_DIR_NAME = ".cozy_trash"

#: Localized names of the default tree (en is the fallback).
DIRECTORY_NAMES = {
    "en": {
        "administrative": "Administrative",
        "photos": "Photos",
        "photos_uploaded": "Uploaded from Cozy Photos",
        "photos_backup": "Backed up from my mobile",
    },
    "fr": {
        "administrative": "Administratif",
        "photos": "Photos",
        "photos_uploaded": "Envoyées depuis Cozy Photos",
        "photos_backup": "Sauvegardées depuis mon mobile",
    },
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
