"""Checks that an instance's metadata and disk agree, and repairs on request.

Two steps, as cozy-stack's ``instances fsck``:

- *index integrity* (the documents alone): the root and the trash exist;
  every entry's parent exists and is a directory; a directory's ``path``
  is its parent's path and its name; no two entries of a directory share
  a name; no directory is its own ancestor;
- *files consistency* (documents against the disk): every file's and
  version's content exists with the recorded size (and MD5, with
  ``check_md5``); every content on disk belongs to a file or a version;
  no unfinished upload or pending marker is left.

Each mismatch is ``{"type", "id", "path", "detail"}``. ``repair=True``
fixes what can be fixed without guessing: paths recomputed, orphans moved
to the root, duplicate names renamed, sizes and MD5s taken from the disk,
unreferenced contents and leftovers deleted, documents whose content is
lost deleted.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from cozyd.files import names
from cozyd.files.vfs import (
    DIRECTORY,
    FILES,
    ROOT_DIR_ID,
    TRASH_DIR_ID,
    VERSIONS,
    VFS,
    is_dir,
    size_of,
)

PAGE = 1000


async def _all(vfs: VFS, instance: Any, doctype: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    start = None
    while True:
        options: dict[str, Any] = {"include_docs": True, "limit": PAGE + 1}
        if start is not None:
            options["start_key"] = start
        result = await vfs.documents.all_docs(instance, doctype, **options)
        rows = result.get("rows", [])
        page = rows[:PAGE]
        docs.extend(
            row["doc"]
            for row in page
            if row.get("doc") and not row["id"].startswith("_design/")
        )
        if len(rows) <= PAGE:
            return docs
        start = rows[PAGE]["id"]


async def fsck(
    vfs: VFS,
    instance: Any,
    *,
    index: bool = True,
    files: bool = True,
    check_md5: bool = False,
    repair: bool = False,
    fail_fast: bool = False,
) -> list[dict[str, Any]]:
    async def step() -> list[dict[str, Any]]:
        return await _fsck(vfs, instance, index, files, check_md5, repair, fail_fast)

    # Under the instance's lock: no tree change runs meanwhile.
    return await vfs._locked(instance, step)


async def _fsck(vfs, instance, index, files, check_md5, repair, fail_fast):
    found: list[dict[str, Any]] = []
    docs = [
        d for d in await _all(vfs, instance, FILES) if d.get("type") in ("file", DIRECTORY)
    ]
    by_id = {d["_id"]: d for d in docs}
    store = vfs.store_of(instance)

    def report(kind: str, doc: dict[str, Any] | None, detail: str, path: str = "") -> bool:
        found.append(
            {
                "type": kind,
                "id": (doc or {}).get("_id", ""),
                "path": path or (doc or {}).get("path", ""),
                "detail": detail,
            }
        )
        return fail_fast

    def path_of(doc: dict[str, Any]) -> str:
        if is_dir(doc):
            return doc.get("path", "")
        parent = by_id.get(doc.get("dir_id", ""))
        return names.join((parent or {}).get("path", "/") or "/", doc.get("name", ""))

    if index:
        for special in (ROOT_DIR_ID, TRASH_DIR_ID):
            if special not in by_id and report(
                "index_missing_root", {"_id": special}, f"{special} is missing"
            ):
                return found
        seen_names: dict[tuple[str, str], str] = {}
        for doc in sorted(docs, key=lambda d: (d.get("created_at", ""), d["_id"])):
            doc_id = doc["_id"]
            if doc_id == ROOT_DIR_ID:
                continue
            parent = by_id.get(doc.get("dir_id", ""))
            if parent is None or not is_dir(parent):
                if report(
                    "index_orphan_tree",
                    doc,
                    "its parent directory is missing",
                    path_of(doc),
                ):
                    return found
                if repair:
                    fixed = copy.deepcopy(doc)
                    fixed["dir_id"] = ROOT_DIR_ID
                    fixed["name"] = f"{doc.get('name', 'orphan')} (orphan {doc_id[:8]})"
                    if is_dir(fixed):
                        fixed["path"] = "/" + fixed["name"]
                    await _put(vfs, instance, fixed, by_id)
                continue
            key = (doc["dir_id"], doc.get("name", ""))
            if key in seen_names:
                if report(
                    "index_conflict", doc, f"same name as {seen_names[key]}", path_of(doc)
                ):
                    return found
                if repair:
                    fixed = copy.deepcopy(doc)
                    fixed["name"] = (
                        names.conflict_name(doc.get("name", ""), 2) + f" {doc_id[:6]}"
                    )
                    if is_dir(fixed):
                        fixed["path"] = names.join(parent.get("path", "/"), fixed["name"])
                    await _put(vfs, instance, fixed, by_id)
            else:
                seen_names[key] = doc_id
        # Paths of directories, and cycles, walking up from each one.
        for doc in docs:
            if not is_dir(doc) or doc["_id"] == ROOT_DIR_ID:
                continue
            chain, current = {doc["_id"]}, doc
            cycle = False
            while current.get("_id") != ROOT_DIR_ID:
                parent_id = current.get("dir_id", "")
                if parent_id in chain:
                    cycle = True
                    break
                chain.add(parent_id)
                current = by_id.get(parent_id) or {"_id": ROOT_DIR_ID}
            if cycle:
                if report("index_cycle", doc, "the directory is its own ancestor"):
                    return found
                continue
            parent = by_id.get(doc.get("dir_id", ""))
            if parent is None:
                continue
            expected = names.join(parent.get("path") or "/", doc.get("name", ""))
            if doc.get("path") != expected and report(
                "index_bad_fullpath",
                doc,
                f"path {doc.get('path')!r} instead of {expected!r}",
                expected,
            ):
                return found
        if repair and any(m["type"] == "index_bad_fullpath" for m in found):
            await _fix_paths(vfs, instance, by_id)

    if files:
        versions = await _all(vfs, instance, VERSIONS)
        referenced: set[str] = set()
        for doc in docs:
            if is_dir(doc):
                continue
            key = doc.get("internal_vfs_id")
            if not key:
                if report("file_missing", doc, "no content key", path_of(doc)):
                    return found
                continue
            referenced.add(key)
            if await _check_content(
                vfs,
                store,
                doc,
                key,
                check_md5,
                report,
                path_of(doc),
                repair,
                instance,
                by_id,
            ):
                return found
        for version in versions:
            key = version.get("internal_vfs_id")
            if key:
                referenced.add(key)
                stat = await vfs._run(store.stat, key)
                if stat is None:
                    if report(
                        "version_missing", version, "the content of the version is missing"
                    ):
                        return found
                    if repair:
                        await vfs.documents.delete(
                            instance, VERSIONS, version["_id"], version["_rev"]
                        )
        for key, path in await vfs._run(lambda: list(store.entries())):
            if key not in referenced:
                if report("orphan_content", None, f"content {key} belongs to no file"):
                    return found
                if repair:
                    await vfs._run(store.remove_entry, path)
        for key, owner in await vfs._run(store.pending):
            if report("pending_content", {"_id": owner}, f"content {key} is pending"):
                return found
        leftovers = await vfs._run(_tmp_names, store)
        for name in leftovers:
            if report("unfinished_upload", None, f"temporary file {name}"):
                return found
        if repair and leftovers:
            await vfs._run(store.clean_tmp)
        vfs.forget_usage(instance)
    return found


#: A temporary file younger than this is an upload in progress, not a leftover.
UPLOAD_GRACE = 3600.0


def _tmp_names(store) -> list[str]:
    import os
    import time

    try:
        entries = sorted(os.listdir(store.tmp))
    except FileNotFoundError:
        return []
    old = []
    for name in entries:
        try:
            if time.time() - os.stat(os.path.join(store.tmp, name)).st_mtime > UPLOAD_GRACE:
                old.append(name)
        except FileNotFoundError:
            continue
    return old


async def _check_content(
    vfs, store, doc, key, check_md5, report, path, repair, instance, by_id
) -> bool:
    stat = await vfs._run(store.stat, key)
    if stat is None:
        if report("file_missing", doc, "the content is missing on disk", path):
            return True
        if repair:
            await vfs.documents.delete(instance, FILES, doc["_id"], doc["_rev"], doc=doc)
            by_id.pop(doc["_id"], None)
        return False
    fixed = None
    if stat.st_size != size_of(doc):
        if report(
            "size_mismatch",
            doc,
            f"{size_of(doc)} bytes recorded, {stat.st_size} on disk",
            path,
        ):
            return True
        fixed = copy.deepcopy(doc)
        fixed["size"] = str(stat.st_size)
    if check_md5 or fixed is not None:
        digest = base64.b64encode(await vfs._run(store.md5, key)).decode("ascii")
        if digest != doc.get("md5sum"):
            if fixed is None and report("content_mismatch", doc, "the MD5 differs", path):
                return True
            fixed = fixed or copy.deepcopy(doc)
            fixed["md5sum"] = digest
    if repair and fixed is not None:
        await _put(vfs, instance, fixed, by_id)
    return False


async def _put(vfs, instance, doc, by_id) -> None:
    result = await vfs.documents.put(instance, FILES, doc)
    doc["_rev"] = result["rev"]
    by_id[doc["_id"]] = doc


async def _fix_paths(vfs, instance, by_id) -> None:
    """Recompute every directory's path from the root down."""
    children: dict[str, list[dict[str, Any]]] = {}
    for doc in by_id.values():
        if is_dir(doc) and doc["_id"] != ROOT_DIR_ID:
            children.setdefault(doc.get("dir_id", ""), []).append(doc)
    queue = [(ROOT_DIR_ID, "/")]
    seen = set()
    while queue:
        parent_id, parent_path = queue.pop()
        if parent_id in seen:
            continue
        seen.add(parent_id)
        for child in children.get(parent_id, []):
            expected = names.join(parent_path, child.get("name", ""))
            if child.get("path") != expected:
                fixed = copy.deepcopy(child)
                fixed["path"] = expected
                await _put(vfs, instance, fixed, by_id)
            queue.append((child["_id"], expected))
