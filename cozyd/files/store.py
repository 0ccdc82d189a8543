"""Contents on the local disk, under the instance's folder.

Contents are stored by *key* (a random hex string recorded in the file's
document as ``internal_vfs_id``), never by name or path: a rename or a
move touches metadata only, and no name a client sends ever becomes a path
on disk (no traversal, no planted symlink followed: keys are ours and
files are opened with ``O_NOFOLLOW``)::

    <files_dir>/.cozyd/tmp/<key>.part        an upload being received
    <files_dir>/.cozyd/contents/<k2>/<key>   a stored content
    <files_dir>/.cozyd/pending/<key>         "<doc id>": its fate depends on metadata
    <files_dir>/.cozyd/thumbs/<key>-<format>.jpg

An upload is written to ``tmp`` while its MD5 is computed, checked,
flushed to disk, then ``commit``ted: a *pending* marker names the key and
the document, and the temporary file is renamed into ``contents``. Once
the document is written (or the write failed), the marker is removed.
The key of a content that the new metadata no longer references (an
overwrite) gets a marker too before the document changes, and is removed
after. At start (``recover``), temporary files are deleted and each
marker is resolved against the documents: a key no document references is
deleted. A crash at any step therefore leaves either the old state or the
new one, never a partial file nor metadata without content.

Every method here blocks: the VFS runs them in its ``run_blocking`` pool.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator

STATE_DIR = ".cozyd"


class PlantedLink(OSError):
    """A symbolic link where the store keeps its own folders."""


def new_key() -> str:
    return secrets.token_hex(16)


def _valid_key(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)


class TempFile:
    """An upload being written: chunks in, MD5 and size computed."""

    def __init__(self, path: str, key: str):
        self.path = path
        self.key = key
        self.md5 = hashlib.md5()
        self.size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=0)

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.md5.update(data)
        self.size += len(data)

    def finish(self) -> None:
        """Flush to disk (the content survives a crash once committed)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ContentStore:
    """The contents of one instance (``root`` is its files folder)."""

    def __init__(self, root: str):
        self.root = root
        self.state = os.path.join(root, STATE_DIR)
        self.tmp = os.path.join(self.state, "tmp")
        self.contents = os.path.join(self.state, "contents")
        self.pending_dir = os.path.join(self.state, "pending")
        self.thumbs = os.path.join(self.state, "thumbs")

    def ensure(self) -> None:
        for path in (self.tmp, self.contents, self.pending_dir, self.thumbs):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def path_of(self, key: str) -> str:
        if not _valid_key(key):
            raise ValueError(f"invalid content key {key!r}")
        return os.path.join(self.contents, key[:2], key)

    def _check_folder(self, folder: str, *parts: str) -> None:
        """``folder`` must be ``<root>/.cozyd/<parts>`` with no symbolic link
        planted on the way (the root itself may be one: an operator's)."""
        expected = os.path.join(os.path.realpath(self.root), STATE_DIR, *parts)
        if os.path.realpath(folder) != expected:
            raise PlantedLink(f"{folder} is not where it should be")

    # -- writing ----------------------------------------------------------------
    def start(self) -> TempFile:
        self.ensure()
        self._check_folder(self.tmp, "tmp")
        key = new_key()
        return TempFile(os.path.join(self.tmp, key + ".part"), key)

    def mark(self, key: str, doc_id: str) -> None:
        """A pending marker: ``key``'s fate depends on ``doc_id``'s metadata."""
        self.ensure()
        path = os.path.join(self.pending_dir, key)
        with open(path, "w", encoding="utf-8") as f:
            f.write(doc_id)

    def commit(self, temp: TempFile, doc_id: str) -> str:
        """Mark the key, then move the temporary file into place."""
        self.mark(temp.key, doc_id)
        target = self.path_of(temp.key)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        self._check_folder(os.path.dirname(target), "contents", temp.key[:2])
        os.replace(temp.path, target)
        return temp.key

    def unmark(self, key: str) -> None:
        try:
            os.unlink(os.path.join(self.pending_dir, key))
        except FileNotFoundError:
            pass

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.path_of(key))
        except (FileNotFoundError, ValueError):
            pass
        for name in self._thumb_names(key):
            try:
                os.unlink(os.path.join(self.thumbs, name))
            except FileNotFoundError:
                pass

    def copy(self, key: str) -> str:
        """A new key holding the same bytes (a copied file)."""
        self.ensure()
        new = new_key()
        tmp = os.path.join(self.tmp, new + ".part")
        with open(self._open(key), "rb") as source, open(tmp, "xb") as dest:
            shutil.copyfileobj(source, dest, 1024 * 1024)
            dest.flush()
            os.fsync(dest.fileno())
        target = self.path_of(new)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        os.replace(tmp, target)
        return new

    # -- reading ----------------------------------------------------------------
    def _open(self, key: str) -> int:
        path = self.path_of(key)
        self._check_folder(os.path.dirname(path), "contents", key[:2])
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    def open(self, key: str):
        """The content as a binary file object (``O_NOFOLLOW``)."""
        return os.fdopen(self._open(key), "rb")

    def stat(self, key: str) -> os.stat_result | None:
        try:
            return os.stat(self.path_of(key), follow_symlinks=False)
        except (FileNotFoundError, ValueError):
            return None

    def md5(self, key: str) -> bytes:
        digest = hashlib.md5()
        with self.open(key) as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
        return digest.digest()

    def keys(self) -> Iterator[str]:
        for key, _path in self.entries():
            yield key

    def entries(self) -> Iterator[tuple[str, str]]:
        """``(name, path)`` of everything in the contents folder (a name in
        the wrong sub-folder or not a key is listed too: fsck reports it)."""
        if not os.path.isdir(self.contents):
            return
        for sub in sorted(os.listdir(self.contents)):
            folder = os.path.join(self.contents, sub)
            if os.path.islink(folder) or not os.path.isdir(folder):
                yield sub, folder
                continue
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                yield (
                    (name if _valid_key(name) and name[:2] == sub else f"{sub}/{name}"),
                    path,
                )

    def remove_entry(self, path: str) -> None:
        """Delete what ``entries`` listed (inside the contents folder only)."""
        real = os.path.abspath(path)
        if os.path.dirname(os.path.dirname(real)) != os.path.abspath(self.contents) and (
            os.path.dirname(real) != os.path.abspath(self.contents)
        ):
            raise ValueError(f"{path} is not in the contents folder")
        if os.path.islink(real) or os.path.isfile(real):
            os.unlink(real)
        elif os.path.isdir(real) and not os.listdir(real):
            os.rmdir(real)

    def pending(self) -> list[tuple[str, str]]:
        if not os.path.isdir(self.pending_dir):
            return []
        found = []
        for key in sorted(os.listdir(self.pending_dir)):
            try:
                with open(os.path.join(self.pending_dir, key), encoding="utf-8") as f:
                    found.append((key, f.read().strip()))
            except OSError:
                continue
        return found

    def clean_tmp(self) -> int:
        """Delete every temporary file (uploads that never finished)."""
        if not os.path.isdir(self.tmp):
            return 0
        removed = 0
        for name in os.listdir(self.tmp):
            try:
                os.unlink(os.path.join(self.tmp, name))
                removed += 1
            except (FileNotFoundError, IsADirectoryError):
                pass
        return removed

    # -- thumbnails -------------------------------------------------------------
    def thumb_path(self, key: str, format: str) -> str:
        if not _valid_key(key):
            raise ValueError(f"invalid content key {key!r}")
        return os.path.join(self.thumbs, f"{key}-{format}.jpg")

    def _thumb_names(self, key: str) -> list[str]:
        return [f"{key}-{f}.jpg" for f in ("tiny", "small", "medium", "large")]

    def remove_all(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
