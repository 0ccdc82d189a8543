"""Spawn the real daemon (``twistd -n cozyd``) and drive it like a user.

``Daemon`` writes a config into a work directory, starts the daemon on
free ports (port 0) and waits for its "listening" lines; ``cozyctl`` runs
the real command-line tool against it; ``http`` sends real HTTP requests.
Every test stops the daemons it started (the fixture does it even when a
test fails).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import attrs

from cozyd.testing import TEST_ADMIN_PASSPHRASE, write_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
LISTENING = re.compile(r"(public|admin) API listening on https?://([^/]+):(\d+)/")
START_TIMEOUT = 30.0


@attrs.frozen
class HTTPResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 30.0,
) -> HTTPResponse:
    request = urllib.request.Request(
        url, data=data, method=method, headers=dict(headers or {})
    )
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HTTPResponse(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return HTTPResponse(
            error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
        )


class Daemon:
    def __init__(
        self,
        workdir: str,
        *,
        couchdb_url: str | None = None,
        env: dict[str, str] | None = None,
        bin_dir: str = BIN,
        **sections: dict[str, Any],
    ):
        self.workdir = workdir
        self.bin_dir = bin_dir  # where twistd and cozyctl are (a virtualenv's bin)
        self.couchdb_url = couchdb_url
        self.extra_env = dict(env or {})
        self.config_path = write_config(workdir, **sections)
        self.log_path = os.path.join(workdir, "cozyd.log")
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.workdir, "data")

    def twistd(self, *flags: str, twistd_flags: tuple[str, ...] = ()) -> list[str]:
        """``twistd -n cozyd -c <config>`` with ``flags`` after it (and
        ``twistd_flags`` before ``cozyd``)."""
        return [
            os.path.join(self.bin_dir, "twistd"),
            "-n",
            "--pidfile=",
            *twistd_flags,
            "cozyd",
            "-c",
            self.config_path,
            *flags,
        ]

    def command(self) -> list[str]:
        command = self.twistd("--port", "0", "--admin-port", "0")
        if self.couchdb_url:
            command += ["--couchdb-url", self.couchdb_url]
        return command

    def start(self, *, wait: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **self.extra_env, **(extra_env or {})}
        env.pop("COZY_ADMIN_PASSPHRASE", None)
        self._lines = []
        self.ports = {}
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by _read)
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self.process, log), daemon=True
        )
        self._reader.start()
        if wait:
            self.wait_for_ports()

    def _read(self, process: subprocess.Popen, log) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)  # buffered: the file is complete once it exits
            self._lines.append(line)
            if len(self.ports) < 2:
                match = LISTENING.search(line)
                if match:
                    self.ports[match.group(1)] = int(match.group(3))
        log.close()

    def wait_for_ports(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.ports) < 2:
            if self.process.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(
                    f"cozyd exited with {self.process.returncode}:\n" + "".join(self._lines)
                )
            if time.monotonic() > deadline:
                raise RuntimeError("cozyd did not start in time:\n" + "".join(self._lines))
            time.sleep(0.05)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    # -- clients ------------------------------------------------------------
    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['public']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def public(self, method: str, path: str, host: str, **kwargs: Any) -> HTTPResponse:
        return http(method, self.public_url + path, host=host, **kwargs)

    def cozyctl(
        self,
        *args: str,
        input: str | None = None,
        passphrase: str | None = TEST_ADMIN_PASSPHRASE,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COZY_")}
        if passphrase is not None:
            env["COZY_ADMIN_PASSPHRASE"] = passphrase
        command = [
            os.path.join(self.bin_dir, "cozyctl"),
            "--admin-host",
            "127.0.0.1",
            "--admin-port",
            str(self.ports.get("admin", 6060)),
            *args,
        ]
        return subprocess.run(
            command,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
