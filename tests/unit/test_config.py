import os

import pytest

from cozyd.config import ConfigError, load_config
from cozyd.testing import write_config


def test_defaults_and_relative_paths(tmp_path):
    path = write_config(str(tmp_path))
    config = load_config(path, env={})
    assert config.get("server", "host") == "127.0.0.1"
    assert config.get("server", "port") == 8080
    assert config.get("admin", "port") == 6060
    assert config.get("storage", "engine") == "embedded"
    assert config.data_dir == os.path.join(str(tmp_path), "data")
    assert config.fs_root == os.path.join(str(tmp_path), "data", "files")
    assert config.admin_passphrase_hash.startswith("scrypt$")


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_config(
        str(tmp_path),
        server={"port": "99999", "colour": "blue"},
        storage={"engine": "mysql"},
        admin={"secret_filename": "nope"},
    )
    with open(path, "a") as f:
        f.write("[extras]\nx = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"COZYD_COUCHDB_TIMEOUT": "-1"})
    problems = "\n".join(info.value.problems)
    assert "[server] port: must be a port number" in problems
    assert "[server] colour: unknown key" in problems
    assert "[storage] engine: must be one of embedded, couchdb" in problems
    assert "[extras]: unknown section" in problems
    assert (
        "environment COZYD_COUCHDB_TIMEOUT: [couchdb] timeout: must be a positive"
        in problems
    )
    assert "cozyctl config passwd" in problems
    assert len(info.value.problems) == 6
    assert all(p.startswith((path, "environment")) for p in info.value.problems)


def test_flags_beat_environment_which_beats_file(tmp_path):
    path = write_config(str(tmp_path), server={"port": "1111"})
    assert load_config(path, env={}).get("server", "port") == 1111
    env = {"COZYD_SERVER_PORT": "2222"}
    assert load_config(path, env=env).get("server", "port") == 2222
    config = load_config(path, env=env, flags={"port": "3333"})
    assert config.get("server", "port") == 3333


def test_couchdb_url_flag_selects_the_couchdb_engine(tmp_path):
    path = write_config(str(tmp_path))
    config = load_config(path, env={}, flags={"couchdb-url": "http://127.0.0.1:5984/"})
    assert config.get("storage", "engine") == "couchdb"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, flags={"couchdb-url": "ftp://x"})
    assert "option --couchdb-url: [couchdb] url: must be an http" in info.value.problems[0]


def test_admin_api_stays_on_loopback(tmp_path):
    path = write_config(str(tmp_path), admin={"host": "0.0.0.0"})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "not a loopback address" in info.value.problems[0]
    path = write_config(str(tmp_path), admin={"host": "0.0.0.0", "allow_remote": "true"})
    assert load_config(path, env={}).get("admin", "host") == "0.0.0.0"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        path = write_config(str(tmp_path), admin={"host": host})
        assert load_config(path, env={}).get("admin", "host") == host


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "missing.conf"), env={})
    assert "cannot read the configuration file" in info.value.problems[0]
    bad = tmp_path / "bad.conf"
    bad.write_text("port = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad), env={})
    assert "section header" in info.value.problems[0]
    path = write_config(str(tmp_path))
    (tmp_path / "cozy-admin-passphrase").write_text("plain-text-password\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "not a scrypt" in info.value.problems[0]


def test_listeners_default_from_host_and_port(tmp_path):
    path = write_config(str(tmp_path), server={"host": "::1", "port": "8081"})
    config = load_config(path, env={})
    assert config.get("server", "listen") == "tcp6:port=8081:interface=\\:\\:1"
    assert config.get("admin", "listen") == "tcp:port=6060:interface=127.0.0.1"
    assert config.get("server", "shutdown_grace") == 10.0
    assert config.get("log", "format") == "text"
    assert config.get("couchdb", "ca_file") == ""


def test_listen_descriptions_and_shorthand_flags(tmp_path):
    path = write_config(
        str(tmp_path),
        server={"listen": "unix:/run/cozyd.sock"},
        couchdb={"ca_file": "ca.pem"},
    )
    config = load_config(path, env={})
    assert config.get("server", "listen") == "unix:/run/cozyd.sock"
    assert config.get("couchdb", "ca_file") == os.path.join(str(tmp_path), "ca.pem")
    # --port beats the file's listen; --listen beats --port.
    assert (
        load_config(path, env={}, flags={"port": "0"}).get("server", "listen")
        == "tcp:port=0:interface=127.0.0.1"
    )
    assert (
        load_config(
            path, env={}, flags={"port": "0", "listen": "systemd:domain=INET:index=0"}
        ).get("server", "listen")
        == "systemd:domain=INET:index=0"
    )


def test_bad_lifecycle_values_are_all_listed(tmp_path):
    path = write_config(
        str(tmp_path),
        server={"listen": "http:8080", "shutdown_grace": "-1"},
        log={"format": "xml"},
        admin={"listen": "ssl:6060"},
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = "\n".join(info.value.problems)
    assert (
        "[server] listen: must be a listener description starting with one of" in problems
    )
    assert "[server] shutdown_grace: must be a number of seconds" in problems
    assert "[log] format: must be one of text, json" in problems
    assert "[admin] listen: must name its key and certificate files" in problems
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:6060",
        "tcp:6060:interface=0.0.0.0",
        "ssl:6060:privateKey=k.pem:interface=192.0.2.1",
        "tcp6:6060:interface=\\:\\:",
    ],
)
def test_admin_listener_stays_on_loopback(tmp_path, listen):
    path = write_config(str(tmp_path), admin={"listen": listen})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert (
        "must stay on loopback unless [admin] allow_remote = true" in info.value.problems[0]
    )
    allowed = write_config(str(tmp_path), admin={"listen": listen, "allow_remote": "true"})
    assert load_config(allowed, env={}).get("admin", "listen") == listen
    for fine in (
        "tcp:6060:interface=127.0.0.1",
        "unix:/run/cozyd-admin.sock",
        "tcp6:6060:interface=\\:\\:1",
    ):
        ok = write_config(str(tmp_path), admin={"listen": fine})
        assert load_config(ok, env={}).get("admin", "listen") == fine
