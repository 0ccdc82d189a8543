"""npm packages the tests run in Node (real clients judging the server).

``install_node_packages`` installs pinned packages into a folder of
``<repo>/.cache`` the first time (``npm install --ignore-scripts``, as
``couchdb_server.py`` does for pouchdb-server, under a lock file so that
parallel test processes install once) and returns its ``node_modules``.
A missing node/npm or a failed install is an error, never a silent skip.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path

from tests.support.couchdb_server import REPO_ROOT, CouchDBServerError, _require

#: PouchDB as an offline client uses it: core, in-memory storage, HTTP
#: remote databases and replication.
POUCHDB_VERSION = "9.0.0"
POUCHDB_PACKAGES = {
    name: POUCHDB_VERSION
    for name in (
        "pouchdb-core",
        "pouchdb-adapter-memory",
        "pouchdb-adapter-http",
        "pouchdb-replication",
    )
}
CLIENTS_PREFIX = REPO_ROOT / ".cache" / "node-client"

_INSTALL_TIMEOUT = 600.0


class NodePackagesError(CouchDBServerError):
    """The Node packages could not be installed."""


def _installed(prefix: Path, packages: dict[str, str]) -> bool:
    for name, version in packages.items():
        try:
            meta = json.loads((prefix / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            return False
        if meta.get("version") != version:
            return False
    return True


def install_node_packages(
    packages: dict[str, str] = POUCHDB_PACKAGES, prefix: Path = CLIENTS_PREFIX
) -> Path:
    """Install ``packages`` (name -> exact version) into ``prefix`` unless
    they are there; return ``prefix/node_modules``."""
    modules = prefix / "node_modules"
    if _installed(prefix, packages):
        return modules
    npm = _require("npm")
    _require("node")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(prefix, packages):
            return modules
        command = [
            npm,
            "install",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(prefix),
            *(f"{name}@{version}" for name, version in sorted(packages.items())),
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
            raise NodePackagesError(
                f"`{' '.join(command)}` did not finish within {_INSTALL_TIMEOUT:g}s"
            ) from None
        if done.returncode != 0 or not _installed(prefix, packages):
            tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
            raise NodePackagesError(
                f"`{' '.join(command)}` exited {done.returncode}:\n" + "\n".join(tail)
            )
    return modules
