"""The daemon as an operator runs it: twistd, signals, bad configs."""

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.support.daemon import BIN, REPO, Daemon, http

pytestmark = pytest.mark.integration


def test_help_documents_every_option():
    result = subprocess.run(
        [os.path.join(BIN, "twistd"), "cozyd", "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0
    for option in (
        "--config",
        "--host",
        "--port",
        "--admin-host",
        "--admin-port",
        "--couchdb-url",
        "--fs-url",
        "--data-dir",
    ):
        assert option in result.stdout


def test_starts_logs_ports_serves_and_stops_on_sigterm(make_daemon):
    daemon = make_daemon()
    lines = [line for line in daemon.output.splitlines() if "listening on" in line]
    assert len(lines) == 2
    assert http("GET", daemon.public_url + "/version").json()["version"]
    assert (
        http("GET", daemon.public_url + "/status", host="x.test").json()["status"] == "OK"
    )
    # twistd shuts down, then re-raises the signal so the exit status says
    # what stopped it (systemd counts SIGTERM as a clean stop).
    assert daemon.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "cozyd stopped" in daemon.output
    assert "Main loop terminated" in daemon.output
    assert "Traceback" not in daemon.output


def test_python_m_twisted_runs_it_too(make_daemon):
    daemon = make_daemon(start=False)
    daemon.command = lambda: [
        sys.executable,
        "-m",
        "twisted",
        "--log-format=text",
        "cozyd",
        "-c",
        daemon.config_path,
        "--port",
        "0",
        "--admin-port",
        "0",
    ]
    daemon.start()
    assert http("GET", daemon.public_url + "/version").status == 200


def test_bad_config_lists_every_problem_and_refuses_to_start(tmp_path):
    daemon = Daemon(
        str(tmp_path), server={"port": "http", "color": "red"}, storage={"engine": "oracle"}
    )
    result = subprocess.run(
        [*daemon.command()[:-4], "--admin-port", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "cozyd cannot start" in output
    for problem in (
        "[server] port",
        "[server] color: unknown key",
        "[storage] engine: must be one of embedded, couchdb",
        "option --admin-port: [admin] port",
    ):
        assert problem in output
    assert "Traceback" not in output


def test_environment_overrides_the_file_and_flags_override_both(make_daemon):
    daemon = make_daemon(
        start=False, server={"host": "192.0.2.1"}, env={"COZYD_SERVER_HOST": "127.0.0.1"}
    )
    daemon.start()
    assert re.search(r"public API listening on http://127\.0\.0\.1:\d+/", daemon.output)


def test_shipped_config_is_valid():
    from cozyd.config import load_config

    path = os.path.join(REPO, "etc", "cozyd.conf")
    secret = os.path.join(REPO, "etc", "cozy-admin-passphrase")
    created = not os.path.exists(secret)
    if created:
        from cozyd import adminpass

        adminpass.write_hash_file(secret, adminpass.hash_passphrase("x", n=1024))
    try:
        config = load_config(path, env={})
    finally:
        if created:
            os.unlink(secret)
    assert config.get("server", "port") == 8080
    assert config.get("admin", "port") == 6060
    assert config.get("storage", "engine") == "embedded"
    assert config.data_dir == os.path.join(REPO, "var")
