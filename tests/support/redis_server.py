"""A real Redis server for the tests (Debian's redis-server).

``start_redis(workdir)`` starts one on a free loopback port, with no
persistence, and returns ``(url, stop)``; the ``redis_url`` fixture gives
each test its own server (``redis://127.0.0.1:PORT/0``), stopped after it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.system_tools import ensure_command

_START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path, port: int | None = None) -> tuple[str, Callable[[], None]]:
    """(``port``: that one, e.g. to start again a server that was stopped.)"""
    binary = ensure_command("redis-server", "redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_path = workdir / "redis.log"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    deadline = time.monotonic() + _START_TIMEOUT
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop()
            log = log_path.read_text() if log_path.exists() else ""
            raise RuntimeError(f"redis-server did not start on {port}:\n{log[-2000:]}")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", stop


@pytest.fixture
def redis_url(tmp_path_factory):
    url, stop = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop()
