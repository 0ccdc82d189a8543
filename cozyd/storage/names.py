"""Database naming, as cozy-stack does it on CouchDB.

An instance's databases are ``<prefix>/<doctype>`` with the doctype
lower-cased and its dots replaced by dashes; the prefix is ``cozy`` plus the
first 32 hex chars of sha256(domain). Global databases use the ``global``
and ``secrets`` prefixes.
"""

from __future__ import annotations

import hashlib
import re

GLOBAL_PREFIX = "global"
INSTANCES_DB = "global/instances"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_DB_PART_RE = re.compile(r"^[a-z0-9][a-z0-9_$()+-]*$")


def domain_hash(domain: str) -> str:
    return hashlib.sha256(domain.encode("utf-8")).hexdigest()[:32]


def instance_prefix(domain: str) -> str:
    return "cozy" + domain_hash(domain)


def doctype_db_part(doctype: str) -> str:
    return doctype.lower().replace(".", "-")


def db_name(prefix: str, doctype: str) -> str:
    """Logical database name of ``doctype`` for an instance ``prefix``."""
    return f"{prefix}/{doctype_db_part(doctype)}"


def split_db_name(db: str) -> tuple[str, str]:
    """``"cozyab…/io-cozy-files"`` → ``("cozyab…", "io-cozy-files")``.

    Raises ValueError for a name that is not ``<prefix>/<part>``: engines
    call it on every database name they are given, so a bad name can never
    reach a file path or a URL.
    """
    prefix, sep, part = db.partition("/")
    if not sep or not _PREFIX_RE.match(prefix) or not _DB_PART_RE.match(part):
        raise ValueError(f"invalid database name {db!r}")
    return prefix, part
