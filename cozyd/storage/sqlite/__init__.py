"""The embedded storage engine: CouchDB semantics on SQLite.

One SQLite file per prefix (``<directory>/<prefix>.sqlite``) holds all the
databases of that prefix, so an instance's data stays apart from the
others' and destroying or exporting it is a matter of one file. Each file:

- ``dbs``: one row per logical database (its incarnation token, update
  sequence and document counts);
- ``docs``: one row per document: its revision tree (JSON, see
  ``revisions.py``), its winning revision and that revision's body;
- ``leaf_revs``: the bodies of the other leaves (conflicting branches and
  deleted leaves); bodies of inner revisions are not kept, as after a
  CouchDB compaction;
- ``local_docs``: ``_local`` documents (no history, no sequence);
- ``mango_sql_indexes``: the SQLite expression indexes created for the
  Mango indexes of each database (see ``_MangoIndexes``).

Connections are opened on demand, at most ``max_open`` at a time (least
recently used closed first), and closed after ``idle_timeout`` seconds
without use: an idle instance holds no open file. All blocking SQLite work
runs in the storage pool (or synchronously without one, for fast tests), one
job at a time per file: a file's jobs wait in its queue, on the reactor
thread, before they reach the pool. Writes use group commit: the writes
found queued one after another on a file (concurrent requests of one
instance) run in one transaction, each in its savepoint (a write that fails
is undone alone; a conflict is answered as alone), committed once in WAL
mode with ``synchronous=FULL``: one fsync for the group, and each caller is
answered only once its group is durable, so an acknowledged write survives a
crash. A write (a whole ``bulk_docs`` batch included) is never split across
groups.

The modules: ``files`` (schema, connections, the per-file queue),
``documents`` (ids, edits, revision trees and bodies of one database),
``views`` (``_all_docs``, ``_changes``), ``find`` (Mango indexes and
``_find``) and ``store`` (``EmbeddedStore``, which runs them).

Document ids are ordered by code point, which is what CouchDB's
``_all_docs`` does (raw collation of ids).
"""

from cozyd.storage.sqlite.files import SCHEMA_VERSION
from cozyd.storage.sqlite.store import EmbeddedStore

__all__ = ["SCHEMA_VERSION", "EmbeddedStore"]
