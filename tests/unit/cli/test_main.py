"""cozyctl's plumbing: global flags, env, auth, errors and exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cozyd.cli import client as client_module
from cozyd.cli.main import expand_bool_flags, main
from tests.support.cli import PASSPHRASE


def _count(admin):
    admin.reply("GET", "/instances/count", 200, {"count": 2})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["before", "middle", "after"])
def test_global_flags_anywhere(admin, cli, monkeypatch, where):
    _count(admin)
    monkeypatch.setenv("COZY_ADMIN_PORT", "1")  # the flag must win over the env
    flags = ["--admin-host", "127.0.0.1", "--admin-port", str(admin.port)]
    argv = {
        "before": [*flags, "instances", "count"],
        "middle": ["instances", *flags, "count"],
        "after": ["instances", "count", *flags],
    }[where]
    r = cli(*argv)
    assert (r.code, r.out) == (0, "2 instances\n")


def test_env_gives_host_and_port(admin, cli):
    _count(admin)  # the cli fixture sets COZY_ADMIN_HOST/PORT
    assert cli("instances", "count").code == 0


def test_basic_auth_from_env_and_never_printed(admin, cli, monkeypatch):
    _count(admin)
    assert cli("instances", "count").code == 0
    assert admin.last.authorization.startswith("Basic ")
    assert admin.last.password == PASSPHRASE
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE")
    monkeypatch.setenv("COZY_ADMIN_PASSWORD", "other")
    assert cli("instances", "count").code == 0
    assert admin.last.password == "other"


def test_password_prompt_on_a_terminal(admin, cli, monkeypatch):
    _count(admin)
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE")
    prompts = []

    def fake_getpass(prompt, stream=None):
        prompts.append((prompt, stream))
        return "typed"

    monkeypatch.setattr(client_module, "has_terminal", lambda: True)
    monkeypatch.setattr(client_module.getpass, "getpass", fake_getpass)
    r = cli("instances", "count")
    assert r.code == 0
    assert prompts == [("Password: ", sys.stderr)]
    assert admin.last.password == "typed"


def test_no_terminal_and_no_env_is_a_clear_error(admin, cli, monkeypatch):
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE")
    monkeypatch.setattr(client_module, "has_terminal", lambda: False)
    r = cli("instances", "count")
    assert r.code == 1
    assert "COZY_ADMIN_PASSPHRASE" in r.err
    assert r.err.startswith("Error: ")
    assert admin.requests == []


def test_commands_without_server_need_no_passphrase(admin, cli, monkeypatch):
    monkeypatch.delenv("COZY_ADMIN_PASSPHRASE")
    monkeypatch.setattr(client_module, "has_terminal", lambda: False)
    assert cli("instances", "ls", "--available-fields").code == 0


def test_unauthorized(admin, cli):
    admin.reply("GET", "/instances/count", 401, text="Unauthorized")
    r = cli("instances", "count")
    assert r.code == 1
    assert "refused the passphrase" in r.err


def test_connection_refused_names_host_and_port(cli):
    port = _free_port()
    r = cli("--admin-port", str(port), "instances", "count")
    assert r.code == 1
    assert f"127.0.0.1:{port}" in r.err
    assert "connection refused" in r.err
    assert "Traceback" not in r.err


def test_timeout(admin, cli, monkeypatch):
    monkeypatch.setenv("COZY_ADMIN_TIMEOUT", "150ms")
    admin.reply("GET", "/instances/count", 200, {"count": 1}, delay=0.6)
    r = cli("instances", "count")
    assert r.code == 1
    assert "did not answer within 0.15s" in r.err


def test_bad_timeout_env(admin, cli, monkeypatch):
    monkeypatch.setenv("COZY_ADMIN_TIMEOUT", "forever")
    r = cli("instances", "count")
    assert r.code == 1
    assert r.err.startswith("Error: COZY_ADMIN_TIMEOUT")


def test_bad_port(cli):
    r = cli("--admin-port", "http", "instances", "count")
    assert (r.code, r.err) == (1, "Error: invalid admin port: 'http'\n")


def test_server_error_without_json(admin, cli):
    admin.reply("GET", "/instances/count", 500, text="")
    r = cli("instances", "count")
    assert r.code == 1
    assert r.err == "Error: the admin API answered 500 Internal Server Error\n"


def test_non_json_answer(admin, cli):
    admin.reply("GET", "/instances/count", 200, text="hello")
    r = cli("instances", "count")
    assert r.code == 1
    assert "not JSON" in r.err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["instances"],
        ["nope"],
        ["instances", "nope"],
        ["instances", "show"],
        ["--bogus", "instances", "ls"],
        ["instances", "--adm", "1", "count"],
    ],
)
def test_usage_errors_exit_2(admin, cli, argv):
    r = cli(*argv)
    assert r.code == 2
    assert r.out == ""
    assert "usage:" in r.err
    assert admin.requests == []


def test_help_exits_0(cli):
    r = cli("instances", "add", "--help")
    assert r.code == 0
    assert "--disk-quota" in r.out


def test_expand_bool_flags():
    assert expand_bool_flags(
        ["instances", "modify", "--blocked", "d", "--", "--blocked"]
    ) == ["instances", "modify", "--blocked=true", "d", "--", "--blocked"]
    assert expand_bool_flags(["--deleting=false"]) == ["--deleting=false"]


def test_python_dash_m(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COZY_")}
    repo = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cozyd.cli",
            "instances",
            "count",
            "--admin-port",
            str(_free_port()),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**env, "COZY_ADMIN_PASSPHRASE": "x"},
        cwd=repo,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stdout == ""
    assert "connection refused" in res.stderr


def test_main_returns_int_for_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("cozyctl ")
