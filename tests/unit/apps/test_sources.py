"""Sources and their extraction: hostile archives and folders are refused
whole and nothing lands outside the staging folder."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.apps.manifest import InvalidManifest, InvalidSlug, check_slug, parse_manifest
from cozyd.apps.sources import (
    BadArchive,
    Limits,
    ManifestNotReachable,
    UnsupportedSource,
    copy_folder,
    extract_tarball,
    parse_source,
)
from cozyd.web.appserver import render_template
from tests.support.apps import app_files, manifest, tarball, write_folder

NAME = "manifest.webapp"


def write(tmp_path, data: bytes) -> str:
    path = tmp_path / "app.tar.gz"
    path.write_bytes(data)
    return str(path)


def extract(tmp_path, data: bytes, limits: Limits | None = None) -> str:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_tarball(write(tmp_path, data), str(dest), NAME, limits or Limits())
    return str(dest)


def entry(name: str, kind=tarfile.REGTYPE, data: bytes = b"x", link: str = ""):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


FILES = app_files(manifest())


def test_a_tarball_with_a_prefix_is_extracted_below_it(tmp_path):
    dest = extract(tmp_path, tarball(FILES, prefix="build/"))
    assert sorted(os.listdir(dest)) == sorted(
        [
            "manifest.webapp",
            "icon.svg",
            "index.html",
            "app.0123456789abcdef.js",
            "style.css",
            "public",
        ]
    )


@pytest.mark.parametrize(
    "hostile, message",
    [
        (entry("../evil"), "climbs out"),
        (entry("a/../../evil"), "climbs out"),
        (entry("/etc/evil"), "absolute path"),
        (entry("dev", tarfile.CHRTYPE), "device"),
        (entry("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (entry("out", tarfile.SYMTYPE, link="../../outside"), "links outside"),
        (entry("abs", tarfile.SYMTYPE, link="/etc/passwd"), "links outside"),
        (entry("hard", tarfile.LNKTYPE, link="index.html"), "hard link"),
    ],
)
def test_hostile_entries_refuse_the_whole_archive(tmp_path, hostile, message):
    with pytest.raises(BadArchive, match=message):
        extract(tmp_path, tarball(FILES, extra=hostile))
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert os.listdir(tmp_path / "dest") == []


def test_links_inside_are_kept_and_links_through_links_are_caught(tmp_path):
    def links(tar):
        entry("alias.html", tarfile.SYMTYPE, link="index.html")(tar)
        entry("sub", tarfile.SYMTYPE, link=".")(tar)
        entry("sub/up", tarfile.SYMTYPE, link="..")(tar)

    with pytest.raises(BadArchive, match="links outside"):
        extract(tmp_path, tarball(FILES, extra=links))
    fine = tmp_path / "fine"
    fine.mkdir()
    dest = extract(
        fine, tarball(FILES, extra=entry("alias.html", tarfile.SYMTYPE, link="index.html"))
    )
    assert os.readlink(os.path.join(dest, "alias.html")) == "index.html"


def test_size_and_count_limits(tmp_path):
    big = {**FILES, "big.bin": b"0" * 10_000}
    with pytest.raises(BadArchive, match="expands past"):
        extract(tmp_path, tarball(big), Limits(max_size=5_000))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(BadArchive, match="more than 3 entries"):
        extract(other, tarball(FILES), Limits(max_files=3))


def test_garbage_and_archives_without_manifest(tmp_path):
    with pytest.raises(BadArchive, match="not a tar archive"):
        extract(tmp_path, b"this is not an archive at all" * 10)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ManifestNotReachable):
        extract(other, tarball({"index.html": b"x"}))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = tarball({**FILES, "big.bin": os.urandom(50_000)})
    with pytest.raises(BadArchive):
        extract(truncated, data[: len(data) // 2])


def test_folders_refuse_links_out_and_devices(tmp_path):
    source = write_folder(str(tmp_path / "src"), FILES)
    dest = tmp_path / "dest"
    checksum = copy_folder(source, str(dest), NAME, Limits())
    assert len(checksum) == 64 and (dest / "index.html").is_file()
    os.symlink("/etc/passwd", os.path.join(source, "passwd"))
    with pytest.raises(BadArchive, match="links outside"):
        copy_folder(source, str(tmp_path / "dest2"), NAME, Limits())
    os.unlink(os.path.join(source, "passwd"))
    os.mkfifo(os.path.join(source, "fifo"))
    with pytest.raises(BadArchive, match="FIFO"):
        copy_folder(source, str(tmp_path / "dest3"), NAME, Limits())


@pytest.mark.parametrize(
    "text, scheme",
    [
        ("file:///srv/app", "file"),
        ("https://example.org/app.tar.gz#" + "a" * 64, "https"),
        ("http://example.org/app.tar.gz", "http"),
        ("registry://drive", "registry"),
        ("registry://drive/beta", "registry"),
        ("registry://drive/1.2.3", "registry"),
        ("registry://drive/dev/1.2.3-dev.abc", "registry"),
    ],
)
def test_good_sources(text, scheme):
    assert parse_source(text).scheme == scheme


def test_registry_sources_name_channel_and_version():
    assert parse_source("registry://drive/1.2.3").version == "1.2.3"
    assert parse_source("registry://drive/beta").channel == "beta"
    assert parse_source("registry://drive/stable/latest").version == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://example.org/x",
        "git://github.com/cozy/drive.git",
        "file://host/srv/app",
        "file:relative",
        "https:///nohost",
        "https://example.org/app.tar.gz#notasha",
        "registry://Bad_Slug",
        "registry://drive/nightly",
        "registry://drive/a/b/c",
        "x" * 5000,
    ],
)
def test_bad_sources_are_422(text):
    with pytest.raises(UnsupportedSource):
        parse_source(text)


@given(st.text(max_size=80))
def test_any_text_is_a_source_or_a_422(text):
    try:
        parse_source(text)
    except UnsupportedSource:
        pass


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"[1, 2]", "JSON object"),
        (b"{}", "'version' is missing"),
        (b'{"version": "../1"}', "version"),
        (b'{"version": "1", "name": 3}', "'name' must be a string"),
        (b'{"version": "1", "routes": {"x": {}}}', "must start with /"),
        (b'{"version": "1", "routes": {"/": {"folder": "../up"}}}', "leaves the app"),
        (b'{"version": "1", "permissions": {"a": {"type": "io.cozy.*"}}}', "permissions"),
        (b'{"version": "1", "permissions": {"a": {"verbs": ["GET"]}}}', "permissions"),
        (b'{"version": "1", "type": "konnector"}', "konnector"),
        (b'{"version": "1", "x": NaN}', "not valid JSON"),
        (b"{" * 100 + b"}" * 100, "JSON"),
        (b'{"version": "1", "pad": "' + b"x" * 600_000 + b'"}', "larger than"),
    ],
)
def test_bad_manifests_say_what_is_wrong(data, reason):
    with pytest.raises(InvalidManifest, match=reason):
        parse_manifest(data, "webapp")


@pytest.mark.parametrize("slug", ["", "A", "a_b", "a/b", "a.b", "x" * 65, None, 3])
def test_slugs(slug):
    with pytest.raises(InvalidSlug):
        check_slug(slug)
    assert check_slug("my-app-2") == "my-app-2"


def test_the_template_escapes_for_the_place_of_each_value():
    template = (
        b'<p title="{{.AppName}}">{{ .AppName }}</p>'
        b"<script>var name = {{.AppName}};</script>"
        b"{{.CozyBar}} {{.Unknown}} {{if .Token}}x{{end}}"
    )
    rendered = render_template(
        template, {"AppName": '</script><b a="x">', "CozyBar": "<link rel=x>"}
    ).decode()
    assert '<p title="&lt;/script&gt;&lt;b a=&quot;x&quot;&gt;">' in rendered
    assert 'var name = "\\u003c/script\\u003e\\u003cb a=\\"x\\"\\u003e";' in rendered
    assert "<link rel=x> {{.Unknown}} {{if .Token}}x{{end}}" in rendered
