"""Where an app's code comes from, and how it is brought into a folder.

Sources, by the scheme of their URL (cozy-stack's):

- ``file:///dir`` (a folder holding the manifest) or ``file:///app.tar.gz``;
- ``https://host/app.tar.gz#<sha256>``: a tarball, checked against the
  sha256 of the fragment when there is one (``http://`` only when the
  operator allows it: ``[apps] allow_http_sources``, for tests);
- ``registry://<slug>[/<channel>][/<version>]``: the version asked of the
  configured registries in turn (``[apps] registries``), whose answer names
  the tarball and its sha256 (registry.md's querying API).

Everything is written into a fresh staging folder; nothing lands outside
it. Archives and folders are refused whole when an entry is an absolute
path, climbs out with ``..``, is a device or a FIFO, or is a link that
points outside; and when they expand past the size or file-count limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs

from cozyd.apps.manifest import MANIFEST_NAMES, MAX_MANIFEST_SIZE, check_slug
from cozyd.errors import BadRequest, CozyError, NotFound, Unprocessable

#: A registry's answer (one version) larger than this is garbage.
MAX_REGISTRY_ANSWER = 2 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_VERSION_LIKE = re.compile(r"^\d")
COPY_CHUNK = 1 << 16


class UnsupportedSource(Unprocessable):
    code = "invalid_source"

    def __init__(self, detail: str = "Invalid or not supported source scheme"):
        super().__init__(detail)
        self.source = {"parameter": "Source"}


class ManifestNotReachable(NotFound):
    code = "manifest_not_reachable"

    def __init__(self, detail: str = ""):
        super().__init__(
            "Application manifest is not reachable" + (f": {detail}" if detail else "")
        )


class SourceNotReachable(BadRequest):
    code = "source_not_reachable"

    def __init__(self, detail: str = ""):
        super().__init__(
            "Application source is not reachable" + (f": {detail}" if detail else "")
        )


class BadChecksum(BadRequest):
    code = "bad_checksum"

    def __init__(self) -> None:
        super().__init__("Application checksum does not match")


class BadArchive(BadRequest):
    """An archive or folder refused: what is wrong is in the detail."""

    code = "bad_archive"


@attrs.frozen
class Limits:
    #: Bytes of code an app may expand to (files' sizes added up).
    max_size: int = 200 * 1024 * 1024
    #: Entries (files, folders, links) an app may hold.
    max_files: int = 20_000
    #: Bytes of a downloaded archive.
    max_download: int = 200 * 1024 * 1024


@attrs.frozen
class Source:
    scheme: str
    url: str
    #: file: the local path; http(s): the URL without fragment.
    location: str = ""
    #: http(s): the sha256 of the fragment, lower case ("" when none).
    sha256: str = ""
    #: registry: the slug, channel and version asked for.
    slug: str = ""
    channel: str = "stable"
    version: str = ""


def parse_source(text: str) -> Source:
    """A source URL, checked; ``UnsupportedSource`` (422) otherwise."""
    if not isinstance(text, str) or not text or len(text) > 4096:
        raise UnsupportedSource()
    try:
        parts = urlsplit(text)
    except ValueError:
        raise UnsupportedSource() from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedSource("a file:// source names a local path (file:///dir)")
        path = unquote(parts.path)
        if not path.startswith("/") or "\x00" in path:
            raise UnsupportedSource("a file:// source needs an absolute path")
        return Source("file", text, location=os.path.normpath(path))
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise UnsupportedSource("the source URL has no host")
        sha = parts.fragment
        if sha and not _SHA256.fullmatch(sha):
            raise UnsupportedSource("the fragment of the source URL must be a sha256 (hex)")
        location = text.split("#", 1)[0]
        return Source(scheme, text, location=location, sha256=sha.lower())
    if scheme == "registry":
        slug = parts.netloc
        try:
            check_slug(slug)
        except CozyError:
            raise UnsupportedSource("registry://<slug>[/<channel>][/<version>]") from None
        pieces = [p for p in parts.path.split("/") if p]
        channel, version = "stable", ""
        if len(pieces) == 1:
            if _VERSION_LIKE.match(pieces[0]):
                version = pieces[0]
            else:
                channel = pieces[0]
        elif len(pieces) == 2:
            channel, version = pieces
        elif len(pieces) > 2:
            raise UnsupportedSource("registry://<slug>[/<channel>][/<version>]")
        if version == "latest":
            version = ""
        if channel not in ("stable", "beta", "dev"):
            raise UnsupportedSource(f"unknown registry channel {channel!r}")
        return Source("registry", text, slug=slug, channel=channel, version=version)
    raise UnsupportedSource()


# -- extraction (blocking: run off the reactor) ---------------------------------
def _clean_name(name: str) -> str:
    """An archive entry's path, relative and inside; BadArchive otherwise."""
    if "\x00" in name or "\\" in name:
        raise BadArchive(f"the archive entry {name!r} has a forbidden character")
    if name.startswith("/"):
        raise BadArchive(f"the archive entry {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadArchive(f"the archive entry {name!r} climbs out of the app folder")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _link_stays_inside(name: str, target: str) -> bool:
    if not target or target.startswith("/") or "\x00" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return joined != ".." and not joined.startswith("../")


def _find_prefix(names: Sequence[str], manifest_name: str) -> str | None:
    """The folder of the archive holding the manifest ("" at the top)."""
    candidates = [n for n in names if posixpath.basename(n) == manifest_name]
    if not candidates:
        return None
    best = min(candidates, key=lambda n: (n.count("/"), n))
    folder = posixpath.dirname(best)
    return folder + "/" if folder else ""


def extract_tarball(
    archive: str, dest: str, manifest_name: str, limits: Limits, prefix: str | None = None
) -> bytes:
    """Extract the app in ``archive`` (tar, gzipped or not) into ``dest``
    (an empty folder); the manifest's bytes."""
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        raise BadArchive("the source is not a tar archive (plain or gzipped)") from None
    with tar:
        members: list[tuple[str, tarfile.TarInfo]] = []
        total = 0
        try:
            for member in tar:
                if len(members) >= limits.max_files:
                    raise BadArchive(
                        f"the archive holds more than {limits.max_files} entries"
                    )
                if member.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                    continue
                name = _clean_name(member.name)
                if member.ischr() or member.isblk() or member.isfifo():
                    raise BadArchive(
                        f"the archive entry {member.name!r} is a device or FIFO"
                    )
                if member.islnk():
                    raise BadArchive(f"the archive entry {member.name!r} is a hard link")
                if member.issym() and not _link_stays_inside(name, member.linkname):
                    raise BadArchive(
                        f"the archive entry {member.name!r} links outside the app folder"
                    )
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise BadArchive(f"the archive entry {member.name!r} has an odd type")
                if member.isfile():
                    total += member.size
                    if total > limits.max_size:
                        raise BadArchive(
                            f"the archive expands past the limit of {limits.max_size} bytes"
                        )
                if name:
                    members.append((name, member))
        except (tarfile.TarError, EOFError, zlib.error, OSError):
            raise BadArchive("the archive is truncated or corrupt") from None
        if prefix is None:
            prefix = _find_prefix([n for n, m in members if m.isfile()], manifest_name)
            if prefix is None:
                raise ManifestNotReachable(f"no {manifest_name} in the archive")
        else:
            prefix = _clean_name(prefix)
            prefix = prefix + "/" if prefix else ""
        links = []
        for name, member in members:
            if prefix:
                if not name.startswith(prefix):
                    continue
                name = name[len(prefix) :]
                if not name:
                    continue
            target = os.path.join(dest, *name.split("/"))
            if member.isdir():
                os.makedirs(target, mode=0o755, exist_ok=True)
                continue
            if member.issym():
                links.append((name, target, member.linkname))
                continue
            parent = os.path.dirname(target)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if not _inside(dest, parent) or os.path.lexists(target):
                raise BadArchive(f"the archive entry {member.name!r} is written twice")
            source = tar.extractfile(member)
            if source is None:
                raise BadArchive(f"the archive entry {member.name!r} cannot be read")
            try:
                with source, open(target, "xb") as out:
                    shutil.copyfileobj(source, out, COPY_CHUNK)
            except (tarfile.TarError, EOFError, zlib.error):
                raise BadArchive("the archive is truncated or corrupt") from None
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
        for name, target, link in links:
            parent = os.path.dirname(target)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            if not _inside(dest, parent) or os.path.lexists(target):
                raise BadArchive(f"the archive link {name!r} is not where it may be")
            os.symlink(link, target)
            if not _inside(dest, target):
                os.unlink(target)
                raise BadArchive(f"the archive entry {name!r} links outside the app folder")
    return read_manifest(dest, manifest_name)


def read_manifest(folder: str, manifest_name: str) -> bytes:
    path = os.path.join(folder, manifest_name)
    try:
        info = os.lstat(path)
    except OSError:
        raise ManifestNotReachable(f"no {manifest_name} in the source") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestNotReachable(f"{manifest_name} is not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_SIZE + 1)
    return data


def copy_folder(source: str, dest: str, manifest_name: str, limits: Limits) -> str:
    """Copy the app folder ``source`` into ``dest``; its checksum."""
    if not os.path.isdir(source):
        raise ManifestNotReachable(f"{source} is not a folder")
    root = os.path.realpath(source)
    digest = hashlib.sha256()
    total = count = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        relative = os.path.relpath(folder, root)
        out_folder = dest if relative == "." else os.path.join(dest, relative)
        os.makedirs(out_folder, mode=0o755, exist_ok=True)
        for name in [*dirs, *sorted(files)]:
            count += 1
            if count > limits.max_files:
                raise BadArchive(f"the folder holds more than {limits.max_files} entries")
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                if not _inside(root, path):
                    raise BadArchive(f"{rel} links outside the app folder")
                link = os.readlink(path)
                if os.path.isabs(link):
                    link = os.path.relpath(os.path.realpath(path), os.path.dirname(path))
                if name in dirs:
                    dirs.remove(name)
                os.symlink(link, os.path.join(out_folder, name))
                digest.update(f"L{rel}\0{link}\0".encode())
            elif stat.S_ISDIR(info.st_mode):
                continue
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > limits.max_size:
                    raise BadArchive(
                        f"the folder holds more than the limit of {limits.max_size} bytes"
                    )
                digest.update(f"F{rel}\0".encode())
                target = os.path.join(out_folder, name)
                with open(path, "rb") as src, open(target, "xb") as out:
                    while chunk := src.read(COPY_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                os.chmod(target, 0o755 if info.st_mode & 0o111 else 0o644)
            else:
                raise BadArchive(f"{rel} is a device, a socket or a FIFO")
    if not os.path.isfile(os.path.join(dest, manifest_name)):
        raise ManifestNotReachable(f"no {manifest_name} in {source}")
    return digest.hexdigest()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- fetching --------------------------------------------------------------------
#: ``download(url, sink, max_size) -> (status, content type)``: the body
#: given to ``sink`` chunk by chunk, refused past ``max_size``.
Download = Callable[[str, Callable[[bytes], None], int], Awaitable[tuple[int, str]]]
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


class TooLarge(Exception):
    pass


@attrs.frozen
class Fetched:
    manifest: bytes
    checksum: str
    #: The version the registry gives (it wins over the manifest's).
    version: str | None = None


class Fetcher:
    def __init__(
        self,
        *,
        download: Download | None,
        run_blocking: RunBlocking,
        registries: Sequence[str] = (),
        allow_http: bool = False,
        limits: Limits | None = None,
    ):
        self._download = download
        self._run_blocking = run_blocking
        self._registries = tuple(r.rstrip("/") for r in registries if r)
        self._allow_http = allow_http
        self.limits = limits or Limits()

    async def fetch(self, source: Source, kind: str, staging: str) -> Fetched:
        """Bring the app's code of ``source`` into ``staging`` (empty)."""
        name = MANIFEST_NAMES[kind]
        if source.scheme == "file":
            return await self._run_blocking(
                lambda: self._file(source.location, staging, name)
            )
        if source.scheme in ("http", "https"):
            if source.scheme == "http" and not self._allow_http:
                raise UnsupportedSource(
                    "http:// sources are refused (use https://, or [apps] allow_http_sources)"
                )
            return await self._tarball(source.location, source.sha256, staging, name)
        if source.scheme == "registry":
            return await self._registry(source, staging, name)
        raise UnsupportedSource()

    def _file(self, path: str, staging: str, name: str) -> Fetched:
        if os.path.isdir(path):
            checksum = copy_folder(path, staging, name, self.limits)
            return Fetched(read_manifest(staging, name), checksum)
        if not os.path.isfile(path):
            raise ManifestNotReachable(f"{path} does not exist")
        if os.path.getsize(path) > self.limits.max_download:
            raise BadArchive(f"the archive is larger than {self.limits.max_download} bytes")
        manifest = extract_tarball(path, staging, name, self.limits)
        return Fetched(manifest, sha256_of(path))

    async def _get(
        self, url: str, sink: Callable[[bytes], None], max_size: int
    ) -> tuple[int, str]:
        if self._download is None:
            raise SourceNotReachable("downloads are not available here")
        try:
            return await self._download(url, sink, max_size)
        except TooLarge:
            raise BadArchive(f"the download is larger than {max_size} bytes") from None
        except CozyError:
            raise
        except Exception as exc:  # connection refused, TLS, timeout, DNS...
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise SourceNotReachable(reason) from None

    async def _tarball(
        self, url: str, sha256: str, staging: str, name: str, prefix: str | None = None
    ) -> Fetched:
        archive = staging.rstrip("/") + ".download"
        digest = hashlib.sha256()
        try:
            with open(archive, "wb") as out:

                def sink(chunk: bytes) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                status, _ = await self._get(url, sink, self.limits.max_download)
            if status == 404:
                raise ManifestNotReachable(f"{url} answered 404")
            if status != 200:
                raise SourceNotReachable(f"{url} answered {status}")
            checksum = digest.hexdigest()
            if sha256 and checksum != sha256:
                raise BadChecksum()
            manifest = await self._run_blocking(
                lambda: extract_tarball(archive, staging, name, self.limits, prefix)
            )
            return Fetched(manifest, checksum)
        finally:
            try:
                os.unlink(archive)
            except OSError:
                pass

    async def registry_version(self, source: Source) -> dict[str, Any]:
        """The registry's version object for ``source`` (the first registry
        that knows it); ``ManifestNotReachable`` when none does."""
        if not self._registries:
            raise ManifestNotReachable("no apps registry is configured ([apps] registries)")
        if source.version:
            path = (
                f"/registry/{quote(source.slug, safe='')}/{quote(source.version, safe='')}"
            )
        else:
            path = f"/registry/{quote(source.slug, safe='')}/{source.channel}/latest"
        for base in self._registries:
            body = bytearray()
            status, _ = await self._get(base + path, body.extend, MAX_REGISTRY_ANSWER)
            if status == 404:
                continue
            if status != 200:
                raise ManifestNotReachable(f"the registry answered {status}")
            return _check_version(bytes(body), source.slug)
        raise ManifestNotReachable(f"no registry knows {source.slug}")

    async def _registry(self, source: Source, staging: str, name: str) -> Fetched:
        version = await self.registry_version(source)
        url = version["url"]
        if not url.startswith("https://") and not (
            self._allow_http and url.startswith("http://")
        ):
            raise SourceNotReachable("the registry names a tarball that is not https://")
        fetched = await self._tarball(
            url, version["sha256"].lower(), staging, name, version.get("tar_prefix") or None
        )
        return Fetched(fetched.manifest, fetched.checksum, version["version"])


def _check_version(body: bytes, slug: str) -> dict[str, Any]:
    garbage = ManifestNotReachable("the registry answered something that is not a version")
    try:
        version = json.loads(body)
    except ValueError:
        raise garbage from None
    if not isinstance(version, dict):
        raise garbage
    for field in ("url", "sha256", "version"):
        if not isinstance(version.get(field), str) or not version[field]:
            raise garbage
    if not _SHA256.fullmatch(version["sha256"]):
        raise garbage
    if "tar_prefix" in version and not isinstance(version["tar_prefix"], (str, type(None))):
        raise garbage
    if version.get("slug") not in (None, slug):
        raise garbage
    return version
