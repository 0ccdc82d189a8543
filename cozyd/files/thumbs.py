"""Thumbnails of images, made with Pillow in the background after an
upload (in the blocking pool, off the reactor), and served by secret.

Formats as cozy-stack's: ``tiny`` (96×96, cropped), ``small`` (640×480),
``medium`` (1280×720), ``large`` (1920×1080), JPEG. A thumbnail is stored
next to the content it was made of (``thumbs/<key>-<format>.jpg``), so a
new content never shows an old thumbnail. (The jobs system may later run
``make`` as a ``thumbnail`` worker.)
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

FORMATS = {
    "tiny": (96, 96, True),
    "small": (640, 480, False),
    "medium": (1280, 720, False),
    "large": (1920, 1080, False),
}
IMAGE_MIMES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)


class Thumbnails:
    def __init__(
        self,
        vfs: Any,
        *,
        run_blocking: Callable[..., Awaitable[Any]],
        max_pixels: int = 50_000_000,
    ):
        self.vfs = vfs
        self._run = run_blocking
        self.max_pixels = max_pixels
        #: Thumbnails being made (tests wait on them).
        self.pending: set[defer.Deferred] = set()

    def wanted(self, doc: dict[str, Any]) -> bool:
        return doc.get("mime") in IMAGE_MIMES and bool(doc.get("internal_vfs_id"))

    def after_upload(self, instance: Any, doc: dict[str, Any]) -> None:
        if not self.wanted(doc):
            return
        d = defer.ensureDeferred(self.make(instance, doc))
        self.pending.add(d)

        def done(result):
            self.pending.discard(d)
            if isinstance(result, Failure):
                log.failure("thumbnails of {id}", result, id=doc.get("_id"))
            return None

        d.addBoth(done)

    async def make(self, instance: Any, doc: dict[str, Any]) -> None:
        store = self.vfs.store_of(instance)
        key = doc["internal_vfs_id"]
        await self._run(_make_all, store, key, self.max_pixels)

    async def path(self, instance: Any, doc: dict[str, Any], format: str) -> str | None:
        key = doc.get("internal_vfs_id")
        if not key or format not in FORMATS:
            return None
        store = self.vfs.store_of(instance)
        path = store.thumb_path(key, format)
        try:
            store._check_folder(store.thumbs, "thumbs")
        except OSError:
            return None
        return path if os.path.isfile(path) and not os.path.islink(path) else None


def _make_all(store, key: str, max_pixels: int) -> None:
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with store.open(key) as source:
            image = Image.open(source)
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return  # not an image Pillow reads, or too large: no thumbnail
    image = ImageOps.exif_transpose(image).convert("RGB")
    store.ensure()
    for format, (width, height, crop) in FORMATS.items():
        if crop:
            thumb = ImageOps.fit(image, (width, height))
        else:
            thumb = image.copy()
            thumb.thumbnail((width, height))
        target = store.thumb_path(key, format)
        tmp = target + ".part"
        thumb.save(tmp, "JPEG", quality=82)
        os.replace(tmp, target)


def image_metadata(path: str, max_pixels: int = 50_000_000) -> dict[str, Any]:
    """What cozy-stack records of an image: ``width``, ``height``, and
    ``datetime`` (EXIF DateTimeOriginal, as RFC 3339) when it has one.
    Blocks (the VFS runs it in its pool); nothing for what is no image."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as image:
            found: dict[str, Any] = {"width": image.width, "height": image.height}
            exif = image.getexif()
            raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    except (OSError, ValueError, Image.DecompressionBombError):
        return {}
    if isinstance(raw, str):
        import datetime

        try:
            moment = datetime.datetime.strptime(raw.strip(), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            moment = None
        if moment is not None:
            found["datetime"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return found
