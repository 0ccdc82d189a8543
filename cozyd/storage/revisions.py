"""Revision trees as CouchDB keeps them: pure functions, no I/O.

A revision id is ``"<generation>-<hash>"``. Every document keeps the tree of
its revisions: normally a single line, branching when replication
(``new_edits=False``) brings edits made elsewhere from a common ancestor.
The tree here is flat: each known revision points to its parent (``None``
for a root, which is also what a revision becomes when its ancestors are
stemmed away), and the set of revisions that are tombstones.

CouchDB's rules implemented here:

- the *winner* among the leaves: a non-deleted leaf beats a deleted one,
  then the highest generation, then the greatest hash, compared as CouchDB
  does (32-hex hashes as the bytes they encode, other hashes as UTF-8);
- ``_conflicts`` are the other non-deleted leaves and ``_deleted_conflicts``
  the other deleted ones, both in that same order;
- merging a revision path keeps every branch (no conflict check: that is
  the caller's business for interactive edits);
- stemming keeps the last ``revs_limit`` revisions of every branch.

Engines keep document bodies for leaves only (non-leaf bodies count as
compacted away), so a revision's availability follows from the tree alone.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cozyd import jsontext
from cozyd.storage.interface import InvalidRequest

DEFAULT_REVS_LIMIT = 1000

_REV_RE = re.compile(r"([0-9]+)-(.+)", re.DOTALL)
_HEX32_RE = re.compile(r"[0-9a-fA-F]{32}")


class InvalidRevision(InvalidRequest):
    """A revision id or a ``_revisions`` history that cannot be parsed."""

    def __init__(self, reason: str = "Invalid rev format"):
        super().__init__(reason)


# -- revision ids --------------------------------------------------------------
def parse_rev(rev: Any) -> tuple[int, str]:
    """``"3-abc"`` → ``(3, "abc")``; ``InvalidRevision`` otherwise."""
    if not isinstance(rev, str):
        raise InvalidRevision()
    match = _REV_RE.fullmatch(rev)
    if match is None:
        raise InvalidRevision()
    return int(match.group(1)), match.group(2)


def format_rev(generation: int, rev_hash: str) -> str:
    return f"{generation}-{rev_hash}"


def generation(rev: str) -> int:
    return parse_rev(rev)[0]


def _hash_sort_key(rev_hash: str) -> bytes:
    # CouchDB stores 32-hex hashes as the 16 bytes they encode and any other
    # hash as it is, and compares those binaries.
    if _HEX32_RE.fullmatch(rev_hash):
        return bytes.fromhex(rev_hash)
    return rev_hash.encode("utf-8")


def rev_sort_key(rev: str) -> tuple[int, bytes]:
    """Order of revisions of the same document (generation, then hash)."""
    gen, rev_hash = parse_rev(rev)
    return gen, _hash_sort_key(rev_hash)


def new_rev(parent: str | None, body: Mapping[str, Any], deleted: bool) -> str:
    """The id of a new revision, deterministic as CouchDB's is: the same
    edit (same parent, same content, same deletion flag) made on two
    servers gets the same id. ``body`` holds no ``_`` fields."""
    canonical = jsontext.canonical([deleted, parent, body])
    digest = hashlib.md5(canonical.encode("utf-8")).hexdigest()
    return format_rev(generation(parent) + 1 if parent else 1, digest)


def revision_path(rev: Any, revisions: Any = None) -> list[str]:
    """The path a replicated revision brings, newest first.

    From ``_revisions`` (``{"start": N, "ids": [hash, parent hash, …]}``)
    when given, which then wins over ``_rev`` as in CouchDB; else the single
    revision ``rev``, whose ancestors stay unknown.
    """
    if revisions is None:
        parse_rev(rev)
        return [rev]
    if not isinstance(revisions, Mapping):
        raise InvalidRevision("_revisions must be an object.")
    start = revisions.get("start")
    ids = revisions.get("ids")
    if not isinstance(start, int) or isinstance(start, bool):
        raise InvalidRevision("_revisions.start isn't an integer.")
    if not isinstance(ids, list) or not ids:
        raise InvalidRevision("_revisions.ids isn't a non-empty array.")
    if len(ids) > start:
        raise InvalidRevision("_revisions.ids is longer than _revisions.start.")
    path = []
    for offset, rev_hash in enumerate(ids):
        if not isinstance(rev_hash, str) or not rev_hash:
            raise InvalidRevision("RevId isn't a string")
        path.append(format_rev(start - offset, rev_hash))
    return path


# -- the tree ------------------------------------------------------------------
class MergeOutcome(enum.Enum):
    NEW_LEAF = "new_leaf"  # the path's newest revision was added
    ANCESTRY = "ancestry"  # already known, but its ancestry grew
    EXISTS = "exists"  # nothing new


@dataclass
class RevTree:
    """The revisions of one document (see the module docstring)."""

    parents: dict[str, str | None] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # What the queries below work out, kept: a tree is not changed once it
    # was asked (``merge_path`` changes its own copy, and works out its
    # copy's from the tree's).
    # A document edited a thousand times has a thousand revisions, and an
    # edit asks for its leaves half a dozen times.
    _inner: set[str] | None = field(default=None, init=False, repr=False, compare=False)
    _leaves: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    # -- serialisation: {"p": {rev: parent}, "d": [deleted revs]}
    def to_json(self) -> dict[str, Any]:
        return {"p": self.parents, "d": sorted(self.deleted)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RevTree:
        return cls(dict(data["p"]), set(data["d"]))

    def copy(self) -> RevTree:
        return RevTree(dict(self.parents), set(self.deleted))

    # -- queries
    def __contains__(self, rev: object) -> bool:
        return rev in self.parents

    def __bool__(self) -> bool:
        return bool(self.parents)

    def is_leaf(self, rev: str) -> bool:
        return rev in self.parents and rev not in self._inner_revs()

    def _inner_revs(self) -> set[str]:
        if self._inner is None:
            self._inner = {p for p in self.parents.values() if p is not None}
        return self._inner

    def leaves(self) -> list[str]:
        """All leaves, the winner first then in decreasing priority."""
        if self._leaves is None:
            inner = self._inner_revs()
            leaves = [rev for rev in self.parents if rev not in inner]
            leaves.sort(key=self._leaf_priority, reverse=True)
            self._leaves = leaves
        return list(self._leaves)

    def _leaf_priority(self, rev: str) -> tuple[bool, int, bytes]:
        return (rev not in self.deleted, *rev_sort_key(rev))

    def winner(self) -> str:
        return self.leaves()[0]

    def is_deleted(self, rev: str) -> bool:
        return rev in self.deleted

    def conflicts(self) -> list[str]:
        """Non-deleted leaves that lost against the winner."""
        return [rev for rev in self.leaves()[1:] if rev not in self.deleted]

    def deleted_conflicts(self) -> list[str]:
        """Deleted leaves that lost against the winner."""
        return [rev for rev in self.leaves()[1:] if rev in self.deleted]

    def history(self, rev: str) -> list[str]:
        """``rev`` and its known ancestors, newest first."""
        path = []
        current: str | None = rev
        while current is not None:
            path.append(current)
            current = self.parents[current]
        return path

    def revisions(self, rev: str) -> dict[str, Any]:
        """``_revisions`` of ``rev``: ``{"start", "ids"}``."""
        path = self.history(rev)
        return {"start": generation(rev), "ids": [parse_rev(r)[1] for r in path]}

    def revs_info(self, rev: str) -> list[dict[str, str]]:
        """``_revs_info`` along the history of ``rev``. Bodies are kept for
        leaves only, so inner revisions are reported ``missing`` as in a
        compacted CouchDB database."""
        info = []
        for r in self.history(rev):
            if not self.is_leaf(r):
                status = "missing"
            elif r in self.deleted:
                status = "deleted"
            else:
                status = "available"
            info.append({"rev": r, "status": status})
        return info

    def descendant_leaves(self, rev: str) -> list[str]:
        """The leaves whose history contains ``rev``, by priority."""
        return [leaf for leaf in self.leaves() if rev in self.history(leaf)]


def merge_path(
    tree: RevTree, path: list[str], deleted: bool
) -> tuple[RevTree, MergeOutcome]:
    """Merge a revision path (newest first, consecutive generations) into a
    copy of ``tree``; ``deleted`` tells whether the newest one is a
    tombstone. Existing revisions keep their state."""
    _check_consecutive(path)
    merged = tree.copy()
    leaf_is_new = path[0] not in merged
    added: list[tuple[str, str | None]] = []
    for child, parent in zip(path, [*path[1:], None], strict=True):
        if child not in merged.parents:
            merged.parents[child] = parent
            added.append((child, parent))
        elif merged.parents[child] is None and parent is not None:
            # A root that lost its ancestors to stemming learns them again.
            merged.parents[child] = parent
            added.append((child, parent))
        else:
            break  # the rest of the path is already known
    if leaf_is_new and deleted:
        merged.deleted.add(path[0])
    if tree._inner is not None:
        # Revisions are only added and roots only learn parents: the inner
        # ones only grow, and the leaves are the old ones and the new
        # revisions, less those that became inner.
        inner = tree._inner | {p for _, p in added if p is not None}
        merged._inner = inner
        if tree._leaves is not None:
            # (A root that learned its parent was a leaf already: once.)
            candidates = dict.fromkeys((*tree._leaves, *(c for c, _ in added)))
            leaves = [r for r in candidates if r not in inner]
            leaves.sort(key=merged._leaf_priority, reverse=True)
            merged._leaves = leaves
    if leaf_is_new:
        return merged, MergeOutcome.NEW_LEAF
    return merged, MergeOutcome.ANCESTRY if added else MergeOutcome.EXISTS


def _check_consecutive(path: list[str]) -> None:
    if not path:
        raise InvalidRevision("empty revision path")
    generations = [generation(rev) for rev in path]
    expected = list(range(generations[0], generations[0] - len(path), -1))
    if generations != expected or generations[-1] < 1:
        raise InvalidRevision("revision path is not a line of generations")


def add_child(tree: RevTree, parent: str | None, rev: str, deleted: bool) -> RevTree:
    """A copy of ``tree`` where ``rev`` extends ``parent`` (an interactive
    edit; the caller has checked that ``parent`` is a leaf)."""
    path = [rev] if parent is None else [rev, parent]
    merged, _ = merge_path(tree, path, deleted)
    return merged


def stem(tree: RevTree, revs_limit: int = DEFAULT_REVS_LIMIT) -> RevTree:
    """Keep the last ``revs_limit`` revisions of every branch."""
    if revs_limit < 1:
        raise ValueError("revs_limit must be at least 1")
    if len(tree.parents) <= revs_limit:
        return tree  # no branch can be longer than the whole tree
    keep: set[str] = set()
    for leaf in tree.leaves():
        keep.update(tree.history(leaf)[:revs_limit])
    if len(keep) == len(tree.parents):
        return tree
    parents = {
        rev: (parent if parent in keep else None)
        for rev, parent in tree.parents.items()
        if rev in keep
    }
    stemmed = RevTree(parents, tree.deleted & keep)
    stemmed._leaves = tree.leaves()  # stemming keeps every leaf
    return stemmed


def missing_revs(tree: RevTree | None, revs: Iterable[str]) -> tuple[list[str], list[str]]:
    """``_revs_diff`` for one document: the revisions not in ``tree`` and
    the leaves that may be their ancestors (leaves of a lower generation
    than one of the missing revisions), as CouchDB answers them: for a
    known document, missing revisions come sorted (CouchDB sorts them to
    walk its tree), else as given."""
    wanted = list(dict.fromkeys(revs))
    for rev in wanted:
        parse_rev(rev)
    if tree is None:
        return wanted, []
    missing = sorted((rev for rev in wanted if rev not in tree), key=rev_sort_key)
    if not missing:
        return [], []
    highest = max(generation(rev) for rev in missing)
    # CouchDB folds over the leaves by priority and prepends: lowest first.
    ancestors = [leaf for leaf in reversed(tree.leaves()) if generation(leaf) < highest]
    return missing, ancestors
