"""cozyd as a user installs it: a built wheel in a fresh virtualenv.

The wheel is built from the checkout (``pip wheel --no-deps``), installed
into a new virtualenv without the checkout on its path: first the pinned
dependencies of ``requirements.lock`` (hash-checked, from pip's cache when
they are there), then the wheel itself with ``--no-index``. That venv's
``twistd -n cozyd`` must find the plugin, serve, and accept an instance
made with that venv's ``cozyctl``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.daemon import REPO, Daemon, http

pytestmark = pytest.mark.integration

DOMAIN = "alice.cozy.localhost:8080"
PLUGIN = "twisted/plugins/cozyd_plugin.py"


def run(*command: str | os.PathLike, timeout: float = 600.0, **kwargs):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("COZY")
    }
    done = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    assert done.returncode == 0, (
        f"{command} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        out,
        REPO,
    )
    [built] = out.glob("cozyd-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", root)
    pip = [root / "bin" / "python", "-m", "pip", "--quiet", "--disable-pip-version-check"]
    run(
        *pip,
        "install",
        "--require-hashes",
        "--no-deps",
        "-r",
        Path(REPO) / "requirements.lock",
    )
    run(*pip, "install", "--no-index", "--no-deps", wheel)
    run(*pip, "check")  # the lock holds every dependency the wheel declares
    return root


def test_the_wheel_holds_the_plugin_and_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PLUGIN in names
    assert "twisted/plugins/dropin.cache" not in names
    assert "twisted/__init__.py" not in names  # Twisted's own, not ours
    assert any(n.startswith("cozyd/web/templates/") for n in names)
    assert any(n.endswith("/LC_MESSAGES/cozyd.po") for n in names)
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_the_installed_wheel_runs_the_daemon_and_cozyctl(venv, tmp_path):
    python = venv / "bin" / "python"
    where = run(
        python,
        "-c",
        "import cozyd, twisted.plugins.cozyd_plugin as p; "
        "print(cozyd.__file__); print(p.__file__)",
        cwd=tmp_path,
    ).stdout.split()
    site = str(venv / "lib")
    assert all(path.startswith(site) for path in where), where  # not the checkout
    assert "cozyd" in run(venv / "bin" / "twistd", "--help", cwd=tmp_path).stdout

    daemon = Daemon(
        str(tmp_path / "cozyd"), bin_dir=str(venv / "bin"), env={"PYTHONPATH": ""}
    )
    daemon.start()
    try:
        added = daemon.cozyctl("instances", "add", DOMAIN, "--public-name", "Alice")
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip()
        assert len(token) == 32
        listing = daemon.cozyctl("instances", "ls")
        assert DOMAIN in listing.stdout, listing.stderr
        status = http("GET", daemon.public_url + "/version", host=DOMAIN)
        assert status.status == 200
    finally:
        daemon.stop()
