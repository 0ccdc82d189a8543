"""The content store: commits, markers, recovery, planted links."""

from __future__ import annotations

import os

import pytest

from cozyd.files.store import ContentStore, PlantedLink


def write(store: ContentStore, data: bytes):
    temp = store.start()
    temp.write(data)
    temp.finish()
    return temp


def test_commit_moves_the_content_in_and_marks_it(tmp_path):
    store = ContentStore(str(tmp_path))
    temp = write(store, b"hello")
    assert os.listdir(store.tmp) == [temp.key + ".part"]
    key = store.commit(temp, "doc1")
    assert os.listdir(store.tmp) == []
    assert store.pending() == [(key, "doc1")]
    with store.open(key) as f:
        assert f.read() == b"hello"
    store.unmark(key)
    assert store.pending() == []
    assert list(store.keys()) == [key]


def test_abort_and_clean_tmp(tmp_path):
    store = ContentStore(str(tmp_path))
    temp = store.start()
    temp.write(b"partial")
    temp.abort()
    assert os.listdir(store.tmp) == []
    store.start().write(b"left by a crash")
    assert store.clean_tmp() == 1 and os.listdir(store.tmp) == []


def test_a_planted_symlink_is_never_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    store = ContentStore(str(tmp_path / "instance"))
    key = store.commit(write(store, b"mine"), "doc")
    path = store.path_of(key)
    os.unlink(path)
    os.symlink(secret, path)
    with pytest.raises(OSError):
        store.open(key)
    # A planted folder too.
    os.unlink(path)
    folder = os.path.dirname(path)
    os.rmdir(folder)
    os.symlink(tmp_path, folder)
    with pytest.raises(PlantedLink):
        store.open(key)
    os.unlink(folder)
    os.rename(store.tmp, store.tmp + ".old")
    os.symlink(tmp_path, store.tmp)
    with pytest.raises(PlantedLink):
        store.start()


def test_keys_are_checked(tmp_path):
    store = ContentStore(str(tmp_path))
    for bad in ("../x", "a" * 31, "g" * 32, ""):
        with pytest.raises(ValueError):
            store.path_of(bad)
