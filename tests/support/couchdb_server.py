"""A real CouchDB-compatible server for the tests (a pytest plugin).

The session fixture ``couchdb_url`` yields a server URL with admin
credentials in it (``http://admin:pw@127.0.0.1:PORT/``):

* ``COZYD_TEST_COUCHDB_URL`` set: that server (a real Apache CouchDB 3.x
  with admin credentials), used as it is;
* otherwise pouchdb-server (``POUCHDB_SERVER_VERSION``), installed with npm
  into ``<repo>/.cache/node`` the first time and started on a free loopback
  port for the session. A missing node/npm or a failed install or start is
  a test *error*, never a silent skip.

The CouchDB engine targets Apache CouchDB 3.x only and does not make up
for pouchdb-server's differences. Tests marked ``realcouchdb`` need what
only Apache CouchDB does: they are skipped for the CouchDB engine when
``COZYD_TEST_COUCHDB_URL`` is unset, and always run for the embedded
engine.

``start_pouchdb_server(workdir)`` does the same outside pytest (integration
tests and benchmarks that spawn the daemon against it)::

    url, stop = start_pouchdb_server(Path("/tmp/x"))
    try: ...
    finally: stop()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

POUCHDB_SERVER_VERSION = "4.2.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_PREFIX = REPO_ROOT / ".cache" / "node"
ENV_URL = "COZYD_TEST_COUCHDB_URL"
ADMIN_NAME = "admin"
#: The values of the parameters that choose a storage engine.
ENGINE_PARAMS = ("embedded", "couchdb")

_INSTALL_TIMEOUT = 600.0
_START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 5


class CouchDBServerError(RuntimeError):
    """The test CouchDB server could not be installed or started."""


def real_couchdb_url() -> str | None:
    """The real Apache CouchDB the tests were pointed at, if any."""
    return os.environ.get(ENV_URL) or None


# -- install -------------------------------------------------------------------
def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise CouchDBServerError(
            f"`{tool}` was not found on PATH. The CouchDB engine tests run "
            f"against pouchdb-server, which needs Node.js and npm (Debian: "
            f"`apt-get install nodejs npm`), or set {ENV_URL} to a CouchDB "
            "URL with admin credentials."
        )
    return path


def _installed_bin(prefix: Path) -> Path | None:
    package = prefix / "node_modules" / "pouchdb-server"
    script = package / "bin" / "pouchdb-server"
    try:
        meta = json.loads((package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != POUCHDB_SERVER_VERSION or not script.is_file():
        return None
    return script


def install_pouchdb_server(prefix: Path = NODE_PREFIX) -> Path:
    """Install pouchdb-server into ``prefix`` unless it is there already;
    return the path of its start script. Safe to call from several
    processes at once (a lock file serialises the installs)."""
    script = _installed_bin(prefix)
    if script is not None:
        return script
    npm = _require("npm")
    _require("node")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        script = _installed_bin(prefix)  # another process may have done it
        if script is not None:
            return script
        command = [
            npm,
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(prefix),
            f"pouchdb-server@{POUCHDB_SERVER_VERSION}",
        ]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CouchDBServerError(
                f"`{' '.join(command)}` did not finish within {_INSTALL_TIMEOUT:g}s"
            ) from None
        script = _installed_bin(prefix)
        if done.returncode != 0 or script is None:
            tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
            raise CouchDBServerError(
                f"installing pouchdb-server {POUCHDB_SERVER_VERSION} failed "
                f"(`{' '.join(command)}` exited {done.returncode}):\n" + "\n".join(tail)
            )
        return script


# -- start -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(
    method: str,
    url: str,
    *,
    body: object = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Server:
    def __init__(self, process: subprocess.Popen, log_file) -> None:
        self.process = process
        self.log_file = log_file

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log_file.close()


def _spawn(
    node: str, script: Path, workdir: Path, port: int, log_path: Path, server_uuid: str
) -> _Server:
    # A fresh configuration each time: no admin yet (so ours can be made),
    # quiet logs from the start, and a uuid of our own, by which we know
    # that whoever answers on the port is this very process.
    config = {"couchdb": {"uuid": server_uuid}, "log": {"level": "error"}}
    (workdir / "config.json").write_text(json.dumps(config))
    log_file = open(log_path, "ab")  # noqa: SIM115 (closed by _Server.stop)
    command = [
        node,
        "--unhandled-rejections=warn",
        str(script),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--config",
        str(workdir / "config.json"),
        "--no-color",
    ]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return _Server(process, log_file)


def _wait_ready(server: _Server, base: str, server_uuid: str, deadline: float) -> bool:
    """True once our server answers; False if it exited (port taken: it
    exits with status 0 then, while someone else may answer on the port)."""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            status, body = _http("GET", base, timeout=2.0)
        except OSError:
            time.sleep(0.05)
            continue
        if status == 200 and isinstance(body, dict) and body.get("uuid") == server_uuid:
            return server.process.poll() is None
        time.sleep(0.1)
    raise CouchDBServerError(
        f"pouchdb-server did not answer on {base} within {_START_TIMEOUT:g}s"
    )


def start_pouchdb_server(
    workdir: Path,
    *,
    admin: str = ADMIN_NAME,
    password: str | None = None,
    prefix: Path = NODE_PREFIX,
) -> tuple[str, Callable[[], None]]:
    """Start pouchdb-server with its data in ``workdir``.

    Returns ``(url, stop)``: the URL carries the admin credentials; ``stop()``
    kills the server (it is also called at interpreter exit) and may be
    called more than once.
    """
    node = _require("node")
    script = install_pouchdb_server(prefix)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(16)
    log_path = workdir / "pouchdb-server.log"
    started = time.monotonic()
    for _attempt in range(_PORT_ATTEMPTS):
        port = _free_port()
        base = f"http://127.0.0.1:{port}/"
        server_uuid = secrets.token_hex(16)
        server = _spawn(node, script, workdir, port, log_path, server_uuid)
        try:
            ready = _wait_ready(
                server, base, server_uuid, time.monotonic() + _START_TIMEOUT
            )
        except BaseException:
            server.stop()
            raise
        if ready:
            break
        code = server.process.returncode
        server.stop()
        if code != 0:
            raise CouchDBServerError(
                f"pouchdb-server exited with status {code}:\n{_tail(log_path)}"
            )
        # Status 0: the port was taken meanwhile; try another one.
    else:
        raise CouchDBServerError(
            f"pouchdb-server did not stay up after {_PORT_ATTEMPTS} ports:\n"
            f"{_tail(log_path)}"
        )

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            server.stop()

    atexit.register(stop)
    try:
        status, body = _http("PUT", f"{base}_config/admins/{admin}", body=password)
        if status != 200:
            raise CouchDBServerError(f"creating the admin failed: {status} {body}")
        status, body = _http(
            "PUT", f"{base}_config/log/level", body="error", auth=(admin, password)
        )
        if status != 200:
            raise CouchDBServerError(f"setting the log level failed: {status} {body}")
        status, body = _http("GET", f"{base}_all_dbs", auth=(admin, password))
        if status != 200:
            raise CouchDBServerError(f"the admin cannot log in: {status} {body}")
        if server.process.poll() is not None:
            raise CouchDBServerError(
                f"pouchdb-server exited during set-up:\n{_tail(log_path)}"
            )
    except BaseException:
        stop()
        raise
    elapsed = time.monotonic() - started
    print(f"pouchdb-server ready on 127.0.0.1:{port} in {elapsed:.1f}s")
    return f"http://{admin}:{password}@127.0.0.1:{port}/", stop


# -- pytest ------------------------------------------------------------------
@pytest.fixture(scope="session")
def couchdb_url(tmp_path_factory):
    """URL (with admin credentials) of the CouchDB server for this session."""
    url = real_couchdb_url()
    if url:
        yield url
        return
    problem = None
    try:
        url, stop = start_pouchdb_server(tmp_path_factory.mktemp("pouchdb-server"))
    except CouchDBServerError as e:
        problem = str(e)
    if problem is not None:  # an error, never a skip: the suite must not go quiet
        pytest.fail(f"cannot start the test CouchDB server: {problem}", pytrace=False)
    try:
        yield url
    finally:
        stop()


def pytest_collection_modifyitems(config, items):
    """Skip ``realcouchdb`` tests on the CouchDB engine without a real CouchDB."""
    if real_couchdb_url():
        return
    skip = pytest.mark.skip(
        reason=f"needs a real Apache CouchDB: set {ENV_URL} (pouchdb-server differs here)"
    )
    for item in items:
        if item.get_closest_marker("realcouchdb") is None:
            continue
        # Parametrized by engine (``engine``, or a daemon fixture such as
        # ``data_daemon`` with "embedded"/"couchdb" params): skip the
        # CouchDB one; not parametrized: skip if it uses the server.
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        engines = [value for value in params if value in ENGINE_PARAMS]
        if "couchdb" in engines or (
            not engines and "couchdb_url" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(skip)
