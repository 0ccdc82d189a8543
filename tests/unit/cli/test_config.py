"""cozyctl config passwd."""

from __future__ import annotations

import os
import stat

import pytest

from cozyd import adminpass
from cozyd.cli import config as config_module
from cozyd.cli.main import main


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE", raising=False)
    monkeypatch.delenv("COZY_ADMIN_PASSWORD", raising=False)
    # a cheap scrypt cost: the file format is the same
    real_hash = adminpass.hash_passphrase
    monkeypatch.setattr(
        adminpass, "hash_passphrase", lambda p, *, n=1024: real_hash(p, n=n)
    )
    return monkeypatch


def _answers(monkeypatch, *answers):
    prompts = []
    answers_iter = iter(answers)

    def fake_getpass(prompt, stream=None):
        prompts.append(prompt)
        return next(answers_iter)

    monkeypatch.setattr(config_module, "has_terminal", lambda: True)
    monkeypatch.setattr(config_module.getpass, "getpass", fake_getpass)
    return prompts


def test_passwd_from_env_to_file(env, tmp_path, capsys):
    env.setenv("COZY_ADMIN_PASSPHRASE", "hunter2")
    target = tmp_path / "cozy-admin-passphrase"
    assert main(["config", "passwd", str(target)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert f"Hashed passphrase written in {target}" in err
    assert "hunter2" not in out + err
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    line = target.read_text().strip()
    assert line.startswith("scrypt$")
    assert adminpass.verify_passphrase("hunter2", line)


def test_passwd_to_stdout(env, capsys):
    env.setenv("COZY_ADMIN_PASSPHRASE", "hunter2")
    assert main(["config", "passwd"]) == 0
    out, err = capsys.readouterr()
    assert adminpass.verify_passphrase("hunter2", out.strip())
    assert out.count("\n") == 1
    assert err == ""


def test_passwd_into_a_directory(env, tmp_path, capsys):
    env.setenv("COZY_ADMIN_PASSPHRASE", "hunter2")
    assert main(["config", "pass", str(tmp_path)]) == 0
    assert (tmp_path / "cozy-admin-passphrase").exists()


def test_passwd_prompts(env, tmp_path, capsys):
    prompts = _answers(env, "typed", "typed")
    target = tmp_path / "f"
    assert main(["config", "passwd", str(target)]) == 0
    assert prompts == ["Passphrase: ", "Confirmation: "]
    assert adminpass.verify_passphrase("typed", target.read_text())


@pytest.mark.parametrize(
    "answers,message",
    [
        (("one", "two"), "Error: Passphrase mismatch"),
        (("", ""), "Error: Empty passphrase is forbidden"),
    ],
)
def test_passwd_bad_answers(env, tmp_path, capsys, answers, message):
    _answers(env, *answers)
    target = tmp_path / "f"
    assert main(["config", "passwd", str(target)]) == 1
    assert message in capsys.readouterr().err
    assert not target.exists()


def test_passwd_without_terminal(env, tmp_path, capsys):
    env.setattr(config_module, "has_terminal", lambda: False)
    assert main(["config", "passwd"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "COZY_ADMIN_PASSPHRASE" in err


def test_passwd_unwritable(env, tmp_path, capsys):
    env.setenv("COZY_ADMIN_PASSPHRASE", "hunter2")
    assert main(["config", "passwd", str(tmp_path / "missing" / "f")]) == 1
    assert "could not write" in capsys.readouterr().err
