"""cozyctl reads the admin passphrase from a file when the environment has
none: ``COZY_ADMIN_PASSPHRASE_FILE``, else the file the Debian package
writes for root (``/etc/cozyd/admin-passphrase``) when it is readable."""

from __future__ import annotations

import os

import pytest

from cozyd import adminpass
from cozyd.cli import client as client_module


@pytest.fixture
def no_env_no_terminal(monkeypatch, tmp_path):
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE", raising=False)
    monkeypatch.delenv("COZY_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE_FILE", raising=False)
    monkeypatch.setattr(client_module, "has_terminal", lambda: False)
    # The default path, in a place the test owns.
    default = tmp_path / "etc-cozyd" / "admin-passphrase"
    default.parent.mkdir()
    monkeypatch.setattr(client_module, "DEFAULT_PASSPHRASE_FILE", str(default))
    return default


def _count(admin):
    admin.reply("GET", "/instances/count", 200, {"count": 2})


def test_the_default_file_is_read_when_there(admin, cli, no_env_no_terminal):
    _count(admin)
    no_env_no_terminal.write_text("from-the-package\n")
    r = cli("instances", "count")
    assert (r.code, r.out) == (0, "2 instances\n"), r.err
    assert admin.last.password == "from-the-package"


def test_without_the_default_file_it_is_the_usual_error(admin, cli, no_env_no_terminal):
    r = cli("instances", "count")
    assert r.code == 1
    assert "COZY_ADMIN_PASSPHRASE" in r.err and str(no_env_no_terminal) in r.err
    assert admin.requests == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_default_file_is_skipped(admin, cli, no_env_no_terminal):
    no_env_no_terminal.write_text("root-only\n")
    no_env_no_terminal.chmod(0)
    r = cli("instances", "count")
    assert r.code == 1 and "no admin passphrase" in r.err
    assert admin.requests == []


def test_the_env_variable_names_the_file_and_wins(
    admin, cli, no_env_no_terminal, monkeypatch, tmp_path
):
    _count(admin)
    no_env_no_terminal.write_text("default\n")
    named = tmp_path / "mine"
    named.write_text("named-one\nsecond line ignored\n")
    monkeypatch.setenv("COZY_ADMIN_PASSPHRASE_FILE", str(named))
    assert cli("instances", "count").code == 0
    assert admin.last.password == "named-one"


def test_the_passphrase_in_the_env_beats_any_file(
    admin, cli, no_env_no_terminal, monkeypatch
):
    _count(admin)
    no_env_no_terminal.write_text("default\n")
    monkeypatch.setenv("COZY_ADMIN_PASSPHRASE", "from-env")
    assert cli("instances", "count").code == 0
    assert admin.last.password == "from-env"


def test_an_empty_variable_turns_the_lookup_off(
    admin, cli, no_env_no_terminal, monkeypatch
):
    no_env_no_terminal.write_text("default\n")
    monkeypatch.setenv("COZY_ADMIN_PASSPHRASE_FILE", "")
    r = cli("instances", "count")
    assert r.code == 1 and "no admin passphrase" in r.err
    assert admin.requests == []


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("hash", "holds the hashed admin passphrase"),
    ],
)
def test_a_bad_named_file_is_a_clear_error(
    admin, cli, no_env_no_terminal, monkeypatch, tmp_path, content, message
):
    named = tmp_path / "named"
    if content == "hash":
        named.write_text(adminpass.hash_passphrase("x", n=2) + "\n")
    elif content is not None:
        named.write_text(content)
    monkeypatch.setenv("COZY_ADMIN_PASSPHRASE_FILE", str(named))
    r = cli("instances", "count")
    assert r.code == 1
    assert r.err.startswith("Error: ") and message in r.err, r.err
    assert "Traceback" not in r.err
    assert admin.requests == []


def test_a_default_path_that_cannot_be_read_is_skipped(admin, cli, no_env_no_terminal):
    no_env_no_terminal.mkdir()  # open() fails on it, whoever runs the test
    r = cli("instances", "count")
    assert r.code == 1 and "no admin passphrase" in r.err
    assert "Traceback" not in r.err
    assert admin.requests == []
