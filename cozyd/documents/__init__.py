"""The document layer: every write of a document, whatever the route or the
worker, is validated, stored and published here (``layer.Documents``).

Layers above (``web``, ``auth``, ``permissions``, ``instance``, and later
files, jobs, apps) use this package instead of ``cozyd.storage``: it
re-exports what they need of it (the store interface, its errors, database
names), so that ``cozyd.web`` never imports ``cozyd.storage``.
"""

from cozyd.documents.layer import (
    GLOBAL,
    ClientDocuments,
    Documents,
    Owner,
    replicated_verb,
    write_verb,
)
from cozyd.documents.rules import (
    DocumentRefused,
    InvalidDocId,
    InvalidDoctype,
    ProtectedDesignDoc,
    ReservedDoctype,
    check_id,
    check_id_values,
    check_readable,
    check_writable,
    protected_design_docs,
)
from cozyd.storage.interface import (
    DatabaseExists,
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    DocumentStore,
    InvalidRequest,
    NoIndex,
    RawReads,
    StorageError,
    StorageUnavailable,
    new_doc_id,
)
from cozyd.storage.names import db_name

__all__ = [
    "GLOBAL",
    "ClientDocuments",
    "DatabaseExists",
    "DatabaseNotFound",
    "DocConflict",
    "DocNotFound",
    "DocumentRefused",
    "DocumentStore",
    "Documents",
    "InvalidDocId",
    "InvalidDoctype",
    "InvalidRequest",
    "NoIndex",
    "Owner",
    "ProtectedDesignDoc",
    "RawReads",
    "ReservedDoctype",
    "StorageError",
    "StorageUnavailable",
    "check_id",
    "check_id_values",
    "check_readable",
    "check_writable",
    "db_name",
    "new_doc_id",
    "protected_design_docs",
    "replicated_verb",
    "write_verb",
]
