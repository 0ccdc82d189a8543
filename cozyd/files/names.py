"""File names and paths: what the reference accepts, and nothing that can
leave the instance's folder (contents are stored by key, never by name:
a name only ever reaches the disk as a Content-Disposition)."""

from __future__ import annotations

import mimetypes
import posixpath
from urllib.parse import quote

from cozyd.errors import CozyError

#: Longest name accepted, in UTF-8 bytes (what local file systems take).
MAX_NAME_BYTES = 255
#: Characters cozy-stack forbids in a name (vfs.ForbiddenFilenameChars).
FORBIDDEN_CHARS = "/\x00\n\r"
#: Longest path accepted (characters).
MAX_PATH_LENGTH = 4096


class InvalidName(CozyError):
    status = 422
    code = "invalid_file_name"


def check_name(name: object) -> str:
    """A valid file or directory name, else 422."""
    if not isinstance(name, str) or name == "":
        raise InvalidName("Missing name argument")
    if name in (".", ".."):
        raise InvalidName("Invalid filename: " + name)
    if any(c in name for c in FORBIDDEN_CHARS):
        raise InvalidName("Invalid filename: it contains a forbidden character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("Invalid filename: not valid Unicode") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidName(f"Invalid filename: longer than {MAX_NAME_BYTES} bytes")
    return name


def split_path(path: object) -> list[str]:
    """The names of an absolute path (``/a/b`` → ``["a", "b"]``), each
    checked; 422 for a relative path, ``..``, ``.`` or a bad name."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidName("Invalid path: it must be absolute", code="invalid_path")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidName("Invalid path: too long", code="invalid_path")
    parts = [part for part in path.split("/") if part != ""]
    for part in parts:
        check_name(part)
    return parts


def join(parent_path: str, name: str) -> str:
    return posixpath.join(parent_path or "/", name)


def conflict_name(name: str, n: int) -> str:
    """``photo.jpg`` → ``photo (2).jpg``: a free name after a clash."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def copy_name(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name} (copy)"
    return f"{stem} (copy).{ext}"


_CLASSES = {
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/x-tar": "zip",
    "application/x-7z-compressed": "zip",
    "application/vnd.ms-excel": "spreadsheet",
    "application/vnd.oasis.opendocument.spreadsheet": "spreadsheet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "spreadsheet",
    "application/vnd.ms-powerpoint": "slide",
    "application/vnd.oasis.opendocument.presentation": "slide",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "slide",
    "application/msword": "text",
    "application/vnd.oasis.opendocument.text": "text",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "text",
    "application/internet-shortcut": "shortcut",
    "application/x-url": "shortcut",
}

DEFAULT_MIME = "application/octet-stream"


def mime_and_class(name: str, content_type: str | None) -> tuple[str, str]:
    """The mime type (the client's, unless it says nothing useful; else the
    name's extension) and the class cozy-stack derives from it."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if not mime or mime == DEFAULT_MIME:
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if name.lower().endswith(".url"):
            guessed = "application/internet-shortcut"
        mime = guessed or DEFAULT_MIME
    if mime in _CLASSES:
        return mime, _CLASSES[mime]
    main = mime.split("/", 1)[0]
    if main in ("image", "audio", "video", "text"):
        return mime, main
    return mime, "files"


def content_disposition(disposition: str, name: str) -> str:
    """``inline; filename="x"`` for any name: an ASCII fallback in quotes,
    the exact name in ``filename*`` (RFC 6266) when it is not plain ASCII."""
    plain = all(32 <= ord(c) < 127 and c not in '"\\' for c in name)
    if plain:
        return f'{disposition}; filename="{name}"'
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    return (
        f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
    )
