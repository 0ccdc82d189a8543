"""Debian tools the tests need (redis-server, bubblewrap, ...).

``ensure_command("redis-server", "redis-server")`` returns the command's
path, installing its Debian package first when it is missing and the tests
run as root with apt-get (the test set-up installs what it needs, as CI
starts from a clean clone). Without a way to install it, the test fails
with what to install: never a silent skip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

_LOCK = Path("/tmp/cozyd-tests-apt.lock")


def ensure_command(command: str, package: str) -> str:
    found = shutil.which(command)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(f"{command} is missing: install the Debian package {package}")
    with open(_LOCK, "w") as lock:  # one install at a time (xdist, helpers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shutil.which(command):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", package]):
                done = subprocess.run(args, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    pytest.fail(f"cannot install {package}: {done.stderr[-2000:]}")
    found = shutil.which(command)
    if not found:
        pytest.fail(f"{package} is installed but {command} is not on PATH")
    return found
