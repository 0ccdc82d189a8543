"""Names, paths, Content-Disposition and ranges: what a client can send."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.files import names
from cozyd.files.names import InvalidName
from cozyd.web.files import parse_range


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "/", "a\x00", "a\nb", "a\rb", "x" * 256, "é" * 128]
)
def test_bad_names(name):
    with pytest.raises(InvalidName) as caught:
        names.check_name(name)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    "name", ["a", "...", ".hidden", "x" * 255, "é" * 127, "a b", "日本"]
)
def test_good_names(name):
    assert names.check_name(name) == name


@given(st.text(min_size=1, max_size=300))
def test_a_name_is_accepted_only_when_harmless(name):
    try:
        names.check_name(name)
    except InvalidName:
        return
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
    assert len(name.encode("utf-8")) <= 255


@pytest.mark.parametrize(
    "path", ["relative", "/a/../b", "/./a", "/a/\x00", "../etc/passwd", "/" + "a/" * 3000]
)
def test_bad_paths(path):
    with pytest.raises(InvalidName):
        names.split_path(path)


def test_paths_split():
    assert names.split_path("/") == []
    assert names.split_path("/a//b/") == ["a", "b"]


@given(st.text(min_size=1, max_size=100))
def test_content_disposition_carries_any_name(name):
    header = names.content_disposition("inline", name)
    assert header.isascii() and "\n" not in header and "\r" not in header
    match = re.search(r"filename\*=UTF-8''(\S+)$", header)
    if match:
        assert unquote(match.group(1)) == name
    else:
        assert header == f'inline; filename="{name}"'


def test_mime_and_class():
    assert names.mime_and_class("a.jpg", None) == ("image/jpeg", "image")
    assert names.mime_and_class("a.pdf", "application/octet-stream") == (
        "application/pdf",
        "pdf",
    )
    assert names.mime_and_class("noext", None) == ("application/octet-stream", "files")
    assert names.mime_and_class("x", "text/plain; charset=utf-8") == ("text/plain", "text")


def test_conflict_and_copy_names():
    assert names.conflict_name("a.txt", 2) == "a (2).txt"
    assert names.conflict_name(".bashrc", 3) == ".bashrc (3)"
    assert names.copy_name("a.txt") == "a (copy).txt"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=2-", (2, 9)),
        ("bytes=-3", (7, 9)),
        ("bytes=5-100", (5, 9)),
        ("bytes=10-", False),
        ("bytes=5-2", False),
        ("bytes=-0", False),
        ("bytes=-", False),
        ("items=1-2", False),
        ("bytes=0-1,3-4", None),
    ],
)
def test_ranges(header, expected):
    assert parse_range(header, 10) == expected
