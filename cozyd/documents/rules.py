"""The rules every document write obeys, whoever makes it.

- Reserved doctypes (cozy-stack's ``model/permission/doctype.go``): nobody
  reads or writes the *unreadable* ones through ``/data``, and nobody writes
  the *read-only* ones there; only the stack itself does, through the
  privileged path of ``Documents``.
- The design documents of the stack's own indexes and views cannot be
  deleted by a client.
- A document id is a string a storage engine can store: valid Unicode (no
  lone surrogate, which JSON can carry and UTF-8 cannot).

The refusals are ``DocumentRefused`` errors; the web layer renders them in
its own style (under ``/data``, as cozy-stack's echo errors).
"""

from __future__ import annotations

import re
from typing import Any

from cozyd.documents.indexes import INDEXES, STACK_VIEWS
from cozyd.errors import Forbidden
from cozyd.storage.interface import InvalidRequest

# Nobody reads or writes these through /data...
UNREADABLE_DOCTYPES = frozenset(
    {
        # global databases
        "instances",
        "io.cozy.instances",
        "io.cozy.account_types",
        "io.cozy.konnectors.maintenance",
        "io.cozy.remote.secrets",
        # only the stack manipulates them
        "io.cozy.sessions",
        "io.cozy.permissions",
        "io.cozy.intents",
        "io.cozy.oauth.clients",
        "io.cozy.oauth.access_codes",
        "io.cozy.files.archives",
        "io.cozy.sharings",
        "io.cozy.shared",
        "io.cozy.accounts.soft_deleted",
        # synthetic doctypes (API only)
        "io.cozy.certified.carbon_copy",
        "io.cozy.certified.electronic_safe",
        "io.cozy.files.sizes",
        "io.cozy.triggers.state",
        "io.cozy.sharings.answer",
        "io.cozy.sharings.moved",
        "io.cozy.support",
        "com.bitwarden.profiles",
        "io.cozy.office.url",
        "io.cozy.notes.url",
        "io.cozy.apps.open",
        # synthetic doctypes (realtime events only)
        "io.cozy.auth.confirmations",
        "io.cozy.jobs.events",
        "io.cozy.sharings.initial_sync",
        "io.cozy.notes.events",
        "io.cozy.notes.telepointers",
        "io.cozy.files.thumbnails",
        "io.cozy.apps.logs",
    }
)
# ... and only the stack writes these.
READ_ONLY_DOCTYPES = frozenset(
    {
        "io.cozy.jobs",
        "io.cozy.triggers",
        "io.cozy.apps",
        "io.cozy.konnectors",
        "io.cozy.files",
        "io.cozy.files.versions",
        "io.cozy.notifications",
        "io.cozy.remote.requests",
        "io.cozy.sessions.logins",
        "io.cozy.notes.steps",
        "io.cozy.notes.images",
        "com.bitwarden.contacts",
    }
)

DESIGN_PREFIX = "_design/"
LOCAL_PREFIX = "_local/"

_VALID_DOCTYPE = re.compile(r"[a-z0-9._]+")


class DocumentRefused(Forbidden):
    """A write (or read) the rules forbid, whatever the route."""


class InvalidDoctype(DocumentRefused):
    def __init__(self, doctype: str):
        super().__init__(f"{doctype} is not a valid doctype name")


class ReservedDoctype(DocumentRefused):
    def __init__(self, doctype: str, what: str):
        super().__init__(f"reserved doctype {doctype} {what}")


class ProtectedDesignDoc(DocumentRefused):
    def __init__(self) -> None:
        super().__init__("This design doc cannot be deleted")


class InvalidDocId(InvalidRequest):
    """An id no engine can store (answered as CouchDB's ``bad_request``)."""


def check_doctype_name(doctype: str) -> None:
    if (
        not _VALID_DOCTYPE.fullmatch(doctype)
        or doctype.startswith(".")
        or doctype.endswith(".")
        or ".." in doctype
    ):
        raise InvalidDoctype(doctype)


def check_readable(doctype: str) -> None:
    """May a client read ``doctype`` (and write its design and _local docs)?"""
    check_doctype_name(doctype)
    if doctype in UNREADABLE_DOCTYPES:
        raise ReservedDoctype(doctype, "unreadable")


def check_writable(doctype: str) -> None:
    """May a client write documents of ``doctype``?"""
    check_doctype_name(doctype)
    if doctype in UNREADABLE_DOCTYPES or doctype in READ_ONLY_DOCTYPES:
        raise ReservedDoctype(doctype, "unwritable")


def is_design_or_local(doc_id: Any) -> bool:
    return isinstance(doc_id, str) and (
        doc_id.startswith(DESIGN_PREFIX) or doc_id.startswith(LOCAL_PREFIX)
    )


def check_client_write(doctype: str, doc_id: Any) -> None:
    """A client's write of ``doc_id``: design and _local documents need a
    readable doctype (they hold indexes and replication checkpoints, not
    data); every other document a writable one."""
    if is_design_or_local(doc_id):
        check_readable(doctype)
    else:
        check_writable(doctype)


def protected_design_docs(doctype: str) -> frozenset[str]:
    """Design documents of the stack's own indexes and views on ``doctype``."""
    names = {name for name, _fields, _partial in INDEXES.get(doctype, ())}
    names.update(STACK_VIEWS.get(doctype, ()))
    return frozenset(names)


def check_design_delete(doctype: str, doc_id: str) -> None:
    if doc_id.startswith(DESIGN_PREFIX) and doc_id[
        len(DESIGN_PREFIX) :
    ] in protected_design_docs(doctype):
        raise ProtectedDesignDoc()


def check_id(doc_id: Any) -> None:
    """An id must be storable: a string without lone surrogates."""
    if isinstance(doc_id, str):
        try:
            doc_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidDocId(
                "Document id must be valid UTF-8 (it holds a lone surrogate)"
            ) from None


def check_id_values(values: Any) -> None:
    """Ids a read names (``keys``, ``_bulk_get``, ``_revs_diff``): the same
    rule, so that a lookup of an id no engine can hold is a 400 too."""
    for value in values:
        check_id(value)


def check_ids(docs: Any) -> None:
    """Every id of a batch (before anything of it is written)."""
    if isinstance(docs, list):
        for doc in docs:
            if isinstance(doc, dict):
                check_id(doc.get("_id"))
