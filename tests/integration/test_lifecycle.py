"""The daemon's lifecycle: draining on SIGTERM, failed starts, listeners,
SIGHUP (passphrase and log file), access log and JSON logs."""

from __future__ import annotations

import http.client as http_client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from cozyd import adminpass
from cozyd.testing import TEST_ADMIN_PASSPHRASE, TEST_SCRYPT_N
from tests.support.daemon import Daemon, http

pytestmark = pytest.mark.integration


def _get_in_thread(url: str, results: list, **kwargs) -> threading.Thread:
    def run():
        started = time.monotonic()
        try:
            results.append((http("GET", url, **kwargs), time.monotonic() - started))
        except Exception as exc:
            results.append((exc, time.monotonic() - started))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- SIGTERM ------------------------------------------------------------------
def test_sigterm_lets_a_slow_request_finish_and_refuses_new_connections(make_daemon):
    daemon = make_daemon(server={"test_routes": "true", "shutdown_grace": "10"})
    port = daemon.ports["public"]
    results: list = []
    thread = _get_in_thread(daemon.public_url + "/_debug/sleep?seconds=2", results)
    time.sleep(0.7)  # the request is in flight
    daemon.process.send_signal(signal.SIGTERM)
    _wait_for(lambda: "request(s) in flight" in daemon.output, 5)
    assert _refused(port)  # stopped accepting while the request runs
    thread.join(15)
    response, took = results[0]
    assert not isinstance(response, Exception), response
    assert response.status == 200
    assert response.json() == {"slept": 2.0}
    assert took >= 2.0
    assert daemon.wait_exit(30) in (0, -signal.SIGTERM)
    output = daemon.output
    # Storage is closed once the request is answered, not before.
    assert output.index('"GET /_debug/sleep" 200') < output.index("cozyd stopped")
    assert "Traceback" not in output


def test_requests_past_the_grace_period_are_cut(make_daemon):
    daemon = make_daemon(server={"test_routes": "true", "shutdown_grace": "0.5"})
    results: list = []
    thread = _get_in_thread(daemon.public_url + "/_debug/sleep?seconds=20", results)
    time.sleep(0.7)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait_exit(15) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    thread.join(5)
    assert isinstance(results[0][0], Exception)  # the connection was aborted
    assert "aborted after the 0.5s grace" in daemon.output


def test_idle_keep_alive_connections_are_closed_at_once(make_daemon):
    daemon = make_daemon(server={"test_routes": "true"})
    connection = http_client.HTTPConnection("127.0.0.1", daemon.ports["public"], timeout=10)
    connection.request("GET", "/version")
    assert connection.getresponse().read()
    results: list = []
    thread = _get_in_thread(daemon.public_url + "/_debug/sleep?seconds=3", results)
    time.sleep(0.7)
    daemon.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    connection.sock.settimeout(5)
    assert connection.sock.recv(1) == b""  # closed by the server, not kept
    assert time.monotonic() - started < 2  # while the slow request still runs
    thread.join(15)
    assert results[0][0].status == 200
    connection.close()


# -- failed starts --------------------------------------------------------------
def _run(daemon: Daemon, *args: str, command: list[str] | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COZY")}
    result = subprocess.run(
        command or [*daemon.command(), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=daemon.workdir,
        env=env,
    )
    return result.returncode, result.stdout + result.stderr, result.stderr


def _assert_refused(code: int, output: str, stderr: str, cause: str) -> None:
    assert code == 1, output
    lines = [line for line in stderr.splitlines() if "cozyd cannot start" in line]
    assert len(lines) == 1, stderr
    assert cause in lines[0], lines[0]
    assert "Traceback" not in output


def test_port_in_use(tmp_path):
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        daemon = Daemon(str(tmp_path))
        command = daemon.command()
        command[command.index("--port") + 1] = str(busy.getsockname()[1])
        code, output, stderr = _run(daemon, command=command)
        _assert_refused(code, output, stderr, "public API: cannot listen on")
        assert "Address already in use" in stderr
    finally:
        busy.close()


def test_unusable_data_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    daemon = Daemon(str(tmp_path / "d"), storage={"data_dir": str(blocker / "data")})
    code, output, stderr = _run(daemon)
    _assert_refused(
        code,
        output,
        stderr,
        f"the data directory {blocker / 'data'} is not usable: Not a directory",
    )


def test_unreadable_data_directory(tmp_path):
    # Not a directory we can write to: a file stands where it should be.
    data = tmp_path / "data"
    data.write_text("")
    daemon = Daemon(str(tmp_path / "d"), storage={"data_dir": str(data)})
    code, output, stderr = _run(daemon)
    _assert_refused(code, output, stderr, f"the data directory {data} is not usable")


def test_unreachable_couchdb(tmp_path):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    daemon = Daemon(
        str(tmp_path), couchdb_url=f"http://127.0.0.1:{port}/", couchdb={"timeout": "5"}
    )
    code, output, stderr = _run(daemon)
    _assert_refused(
        code,
        output,
        stderr,
        "the couchdb storage cannot start: CouchDB at "
        f"http://127.0.0.1:{port}/ unreachable",
    )


def test_unreadable_passphrase_file(tmp_path):
    os.makedirs(tmp_path / "secret-dir")
    daemon = Daemon(str(tmp_path), admin={"secret_filename": "secret-dir"})
    code, output, stderr = _run(daemon)
    _assert_refused(code, output, stderr, "[admin] secret_filename: cannot read")
    assert "Is a directory" in stderr
    assert "Usage:" not in output  # one line, not twistd's whole help


def test_bad_tls_key(tmp_path):
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    (tmp_path / "bad.crt").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    daemon = Daemon(str(tmp_path))
    command = daemon.twistd(
        "--admin-port",
        "0",
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={tmp_path}/bad.key:"
        f"certKey={tmp_path}/bad.crt",
    )
    code, output, stderr = _run(daemon, command=command)
    _assert_refused(code, output, stderr, "public API: cannot use 'ssl:0:")


# -- listeners ----------------------------------------------------------------
class _UnixHTTPConnection(http_client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def test_unix_socket_listener(make_daemon, tmp_path):
    path = str(tmp_path / "public.sock")
    daemon = make_daemon(start=False)
    daemon.command = lambda: daemon.twistd(
        "--listen",
        f"unix:{path}",
        "--admin-listen",
        "tcp:0:interface=127.0.0.1",
    )
    daemon.start(wait=False)
    _wait_for(lambda: f"public API listening on unix:{path}" in daemon.output, 30)
    connection = _UnixHTTPConnection(path)
    connection.request("GET", "/version")
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["version"]


def test_admin_on_every_address_is_refused(tmp_path):
    daemon = Daemon(str(tmp_path))
    command = daemon.twistd(
        "--port",
        "0",
        "--admin-listen",
        "tcp:0",
    )
    code, output, stderr = _run(daemon, command=command)
    _assert_refused(
        code, output, stderr, "[admin] listen: 'tcp:0' listens on every address"
    )


def test_admin_remote_allowed_explicitly(make_daemon):
    daemon = make_daemon(start=False, admin={"allow_remote": "true", "listen": "tcp:0"})
    daemon.command = lambda: daemon.twistd(
        "--port",
        "0",
    )
    daemon.start()
    assert "admin API listening on http://0.0.0.0:" in daemon.output
    assert daemon.cozyctl("instances", "ls").returncode == 0


# -- SIGHUP ---------------------------------------------------------------------
def _write_passphrase(daemon: Daemon, passphrase: str) -> None:
    adminpass.write_hash_file(
        os.path.join(daemon.workdir, "cozy-admin-passphrase"),
        adminpass.hash_passphrase(passphrase, n=TEST_SCRYPT_N),
    )


def test_new_admin_passphrase_works_at_once(make_daemon):
    daemon = make_daemon()
    assert daemon.cozyctl("instances", "ls").returncode == 0
    _write_passphrase(daemon, "a brand new passphrase")
    assert (
        daemon.cozyctl("instances", "ls", passphrase="a brand new passphrase").returncode
        == 0
    )
    old = daemon.cozyctl("instances", "ls")
    assert old.returncode != 0
    # SIGHUP re-reads it too (same content: nothing changes).
    daemon.process.send_signal(signal.SIGHUP)
    _wait_for(lambda: "SIGHUP" in daemon.output)
    assert (
        daemon.cozyctl("instances", "ls", passphrase="a brand new passphrase").returncode
        == 0
    )
    assert (
        daemon.cozyctl("instances", "ls", passphrase=TEST_ADMIN_PASSPHRASE).returncode != 0
    )


def test_sighup_reopens_the_log_file(tmp_path):
    daemon = Daemon(str(tmp_path))
    logfile = tmp_path / "cozyd.log.file"
    command = daemon.twistd(
        "--port", "0", "--admin-port", "0", twistd_flags=(f"--logfile={logfile}",)
    )
    process = subprocess.Popen(
        command, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(
            lambda: logfile.exists() and "public API listening" in logfile.read_text(), 30
        )
        port = int(
            logfile.read_text()
            .split("public API listening on http://127.0.0.1:")[1]
            .split("/")[0]
        )
        os.rename(logfile, str(logfile) + ".1")  # what logrotate does
        process.send_signal(signal.SIGHUP)
        _wait_for(logfile.exists)
        assert http("GET", f"http://127.0.0.1:{port}/version").status == 200
        _wait_for(lambda: '"GET /version" 200' in logfile.read_text())
        assert "SIGHUP" in logfile.read_text()
        assert "/version" not in (tmp_path / "cozyd.log.file.1").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


# -- logs -----------------------------------------------------------------------
def test_access_log_line(make_daemon):
    daemon = make_daemon()
    assert (
        http(
            "GET", daemon.public_url + "/status?secret=hunter2", host="alice.cozy.test"
        ).status
        == 200
    )
    _wait_for(lambda: '"GET /status"' in daemon.output)
    line = next(line for line in daemon.output.splitlines() if '"GET /status"' in line)
    assert "alice.cozy.test" in line
    assert " 200 " in line
    assert line.rstrip().endswith("ms")
    assert "hunter2" not in daemon.output


def test_json_log_format(make_daemon):
    daemon = make_daemon(log={"format": "json"})
    assert (
        http(
            "GET", daemon.public_url + "/status?token=hunter2", host="bob.cozy.test"
        ).status
        == 200
    )
    _wait_for(lambda: "GET /status" in daemon.output)
    daemon.stop()
    records = [json.loads(line) for line in daemon.output.splitlines() if line.strip()]
    assert all(
        {"time", "level", "namespace", "message", "fields"} <= set(r) for r in records
    )
    access = next(r for r in records if r["namespace"] == "cozyd.access")
    assert access["fields"]["host"] == "bob.cozy.test"
    assert access["fields"]["method"] == "GET"
    assert access["fields"]["path"] == "/status"
    assert access["fields"]["status"] == 200
    assert access["fields"]["bytes"] > 0
    assert access["fields"]["duration"] >= 0
    assert access["level"] == "info"
    assert any("listening on" in r["message"] for r in records)
    assert "hunter2" not in daemon.output


def test_systemd_socket_activation(tmp_path):
    # What systemd does: bind the socket, pass it as fd 3 with LISTEN_FDS=1
    # and LISTEN_PID set to the daemon's own pid (bash's $$ survives exec).
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    daemon = Daemon(str(tmp_path))
    twistd = daemon.twistd(
        "--listen",
        "systemd:domain=INET:index=0",
        "--admin-port",
        "0",
    )
    fd = sock.fileno()
    script = (
        f"exec 3<&{fd} {fd}<&-; "
        'export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=cozyd-public; exec "$@"'
    )
    process = subprocess.Popen(
        ["bash", "-c", script, "bash", *twistd],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        pass_fds=(fd,),
    )
    try:
        _wait_for(lambda: _port_answers(port) or process.poll() is not None, 30)
        assert process.poll() is None, process.communicate()[0]
        assert http("GET", f"http://127.0.0.1:{port}/version").status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
        sock.close()
    assert f"public API listening on http://127.0.0.1:{port}/" in output, output


def _port_answers(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/version", timeout=1).status == 200
    except OSError:
        return False
