"""The Debian package, as a sysadmin gets it on a clean bookworm.

In a fresh bookworm root (``mmdebstrap``, cached in ``.cache/debian``), the
repository's files are built as the README says: ``apt-get build-dep ./``
then ``dpkg-buildpackage -us -uc -b``; lintian must report no error. A copy
with a bumped version is built too, for the upgrade.

Then, in another fresh root: the package installs (user, directories,
conffile, passphrase, unit, plugin cache, no warning); the daemon starts as
the unit starts it (its user and command line, read from the installed
unit) in a network namespace of its own, so the packaged loopback ports are
used as they are; ``cozyctl`` as root, with nothing set up, creates an
instance and a token; a document goes in and comes back through ``/data``.
The upgrade keeps the data, the secrets and a changed conffile; remove keeps
the data; purge removes the user, the secrets and the data.

Slow (a few minutes; more on a cold cache): marked ``package``. It needs
root, and skips only without it or when no bootstrap tool can be installed.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import debian

pytestmark = [pytest.mark.integration, pytest.mark.package]

DOMAIN = "alice.cozy.localhost:8080"
DOCTYPE = "io.cozy.notes"
VENV = "/opt/venvs/cozyd"
UNIT = "/lib/systemd/system/cozyd.service"
HASHED = "/etc/cozyd/cozy-admin-passphrase"
CLEAR = "/etc/cozyd/admin-passphrase"
CONF = "/etc/cozyd/cozyd.conf"
# Stopped by SIGTERM: 0, or killed by the signal re-raised (twistd does), which
# systemd counts as a clean stop.
CLEAN_EXIT = (0, -signal.SIGTERM)
HARDENING = (
    "NoNewPrivileges=true",
    "ProtectSystem=strict",
    "ProtectHome=true",
    "PrivateTmp=true",
    "ReadWritePaths=/var/lib/cozyd",
    "Restart=on-failure",
)


@pytest.fixture(scope="module")
def host():
    problem = debian.host_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def built(host, tmp_path_factory):
    """Both packages (the tree's version and a bumped one) and lintian's
    output on the first, built in a fresh bookworm root."""
    out = tmp_path_factory.mktemp("debs")
    files = debian.source_files()
    with debian.Chroot("build") as root:
        root.apt_get("update")
        trees = {"first": "/build/first/cozyd", "next": "/build/next/cozyd"}
        for tree in trees.values():
            debian.copy_tree(files, root.path(tree))
        upgrade_version = debian.bump_version(root.path(trees["next"]), "+test1")
        root.run(
            "sh",
            "-c",
            f"cd {trees['first']} && apt-get -y -o APT::Sandbox::User=root build-dep ./",
            timeout=1800,
        )
        root.apt_get("install", "--no-install-recommends", "lintian")
        debs = {
            name: debian.build(root, tree, fast_compression=name == "next")
            for name, tree in trees.items()
        }
        assert upgrade_version in debs["next"].name
        lintian = root.run(
            "lintian",
            "--no-tag-display-limit",
            "/" + str(debs["first"].relative_to(root.root)),
            check=False,
        )
        copies = {}
        for name, deb in debs.items():
            copies[name] = out / deb.name
            shutil.copy(deb, copies[name])
    return {**copies, "lintian": lintian}


def test_lintian_reports_no_error(built):
    lintian = built["lintian"]
    errors = [line for line in lintian.stdout.splitlines() if line.startswith("E:")]
    assert not errors, lintian.stdout[-6000:]
    assert lintian.returncode == 0, lintian.stdout[-3000:] + lintian.stderr[-3000:]


def test_the_package_is_named_for_the_version_and_architecture(built):
    first = (Path(debian.REPO) / "debian" / "changelog").read_text().split("\n", 1)[0]
    version = first.split("(", 1)[1].split(")", 1)[0]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert built["first"].name == f"cozyd_{version}_{arch}.deb"


WARNING = re.compile(
    r"^[WE]: |warning|traceback|\berror:|\bfailed\b", re.IGNORECASE | re.MULTILINE
)


def _no_warning(text: str) -> None:
    bad = [line for line in text.splitlines() if WARNING.search(line)]
    assert not bad, text[-4000:]


def _stat(root: debian.Chroot, path: str) -> tuple[str, str, str]:
    """owner, group, octal mode of a path in the root."""
    done = root.run("stat", "-c", "%U %G %a", path)
    owner, group, mode = done.stdout.split()
    return owner, group, mode


def _start_as_the_unit_does(root: debian.Chroot) -> debian.RunningDaemon:
    """User=, Group= and ExecStart= of the installed unit, as systemd runs
    them (the environment systemd gives a service: PATH, LANG, HOME...)."""
    unit = root.path(UNIT).read_text()
    keys = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("User", "Group", "ExecStart"):
            keys[key] = value
    assert keys["User"] == keys["Group"] == "cozyd", unit
    command = keys["ExecStart"].split()
    assert command[0] == f"{VENV}/bin/twistd", command
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/var/lib/cozyd",
        "USER": "cozyd",
        "LOGNAME": "cozyd",
        "SHELL": "/usr/sbin/nologin",
    }
    daemon = root.spawn_in_netns(
        ["sh", "-c", 'cd / && exec "$@"', "sh", *command], user="cozyd", env=env
    )
    daemon.wait_listening()
    return daemon


def _http(
    daemon: debian.RunningDaemon,
    method: str,
    path: str,
    *,
    port: int,
    token: str | None = None,
    body: dict | None = None,
) -> tuple[int, dict]:
    """A real HTTP request from inside the daemon's network namespace."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "method, url, host, token, body = json.loads(sys.argv[1])\n"
        "headers = {'Host': host, 'Accept': 'application/json'}\n"
        "if token: headers['Authorization'] = 'Bearer ' + token\n"
        "data = None\n"
        "if body is not None:\n"
        "    data = json.dumps(body).encode(); headers['Content-Type'] = 'application/json'\n"
        "req = urllib.request.Request(url, data=data, method=method, headers=headers)\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "try:\n"
        "    with opener.open(req, timeout=30) as r: status, raw = r.status, r.read()\n"
        "except urllib.error.HTTPError as e: status, raw = e.code, e.read()\n"
        "print(json.dumps([status, raw.decode('utf-8', 'replace')]))\n"
    )
    argument = json.dumps([method, f"http://127.0.0.1:{port}{path}", DOMAIN, token, body])
    done = subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{daemon.process.pid}/ns/net",
            sys.executable,
            "-c",
            script,
            argument,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status, text = json.loads(done.stdout)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"raw": text}


def _cozyctl(root: debian.Chroot, daemon: debian.RunningDaemon, *args: str) -> str:
    """``cozyctl`` as root in the root, with no passphrase in the environment."""
    done = root.run("/usr/bin/cozyctl", *args, netns_of=daemon, check=False, timeout=300)
    assert done.returncode == 0, f"cozyctl {args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_install_run_upgrade_remove_purge(built):
    with debian.Chroot("install") as root:
        root.run("mkdir", "-p", "/srv/debs")
        for name in ("first", "next"):
            shutil.copy(built[name], root.path(f"/srv/debs/{built[name].name}"))
        root.apt_get("update")

        # -- install -----------------------------------------------------------
        installed = root.apt_get("install", f"/srv/debs/{built['first'].name}")
        output = installed.stdout + installed.stderr
        box = output[output.index("admin passphrase (shown once)") :]
        passphrase = box.split()[5]
        _no_warning(output.replace("admin passphrase", ""))
        assert root.path(CLEAR).read_text() == passphrase + "\n"
        assert _stat(root, CLEAR) == ("root", "root", "600")
        assert root.path(HASHED).read_text().startswith("scrypt$")
        assert _stat(root, HASHED) == ("root", "cozyd", "640")
        assert _stat(root, "/etc/cozyd") == ("root", "cozyd", "750")
        assert _stat(root, "/var/lib/cozyd") == ("cozyd", "cozyd", "750")
        user = root.run("getent", "passwd", "cozyd").stdout.split(":")
        assert user[5] == "/var/lib/cozyd" and user[6].strip().endswith("nologin")
        conffiles = root.run("dpkg-query", "-W", "-f", "${Conffiles}", "cozyd").stdout
        assert CONF in conffiles
        conf = root.path(CONF).read_text()
        assert "data_dir = /var/lib/cozyd" in conf and "engine = embedded" in conf
        assert "host = 127.0.0.1" in conf
        unit = root.path(UNIT).read_text()
        for line in HARDENING:
            assert line in unit.splitlines(), line
        assert f"ExecStart={VENV}/bin/twistd --nodaemon --pidfile= cozyd -c {CONF}" in unit
        # Enabled for the next boot; no systemd in a chroot, so not started.
        assert root.path(
            "/etc/systemd/system/multi-user.target.wants/cozyd.service"
        ).is_symlink()
        link = root.run("readlink", "-f", "/usr/bin/cozyctl").stdout.strip()
        assert link == f"{VENV}/bin/cozyctl"
        caches = list(
            root.path(VENV).glob("lib/python3*/site-packages/twisted/plugins/dropin.cache")
        )
        assert len(caches) == 1

        # -- run as the unit does; cozyctl as root; a /data round trip -----------
        daemon = _start_as_the_unit_does(root)
        try:
            assert daemon.ports == {"public": 8080, "admin": 6060}
            _cozyctl(root, daemon, "instances", "add", DOMAIN, "--public-name", "Alice")
            assert DOMAIN in _cozyctl(root, daemon, "instances", "ls")
            token = _cozyctl(
                root, daemon, "instances", "token-cli", DOMAIN, DOCTYPE
            ).strip()
            status, made = _http(
                daemon,
                "POST",
                f"/data/{DOCTYPE}/",
                port=8080,
                token=token,
                body={"title": "packaged", "n": 1},
            )
            assert status == 201, made
            doc_id = made["id"]
            status, read = _http(
                daemon, "GET", f"/data/{DOCTYPE}/{doc_id}", port=8080, token=token
            )
            assert status == 200, read
            assert (read["title"], read["n"]) == ("packaged", 1)
        finally:
            code = daemon.stop()
        assert code in CLEAN_EXIT, f"exit status {code}:\n{daemon.output}"
        _no_warning(daemon.output)

        # -- upgrade: data, secrets and a changed conffile are kept ---------------
        hashed = root.path(HASHED).read_text()
        changed = conf.replace("port = 8080", "port = 8081") + "# changed by the admin\n"
        root.path(CONF).write_text(changed)
        upgraded = root.apt_get("install", f"/srv/debs/{built['next'].name}")
        output = upgraded.stdout + upgraded.stderr
        assert "admin passphrase (shown once)" not in output
        _no_warning(output)
        version = root.run("dpkg-query", "-W", "-f", "${Version}", "cozyd").stdout
        assert version.endswith("+test1")
        assert root.path(CONF).read_text() == changed
        assert root.path(HASHED).read_text() == hashed
        assert root.path(CLEAR).read_text() == passphrase + "\n"
        daemon = _start_as_the_unit_does(root)
        try:
            assert daemon.ports["public"] == 8081  # the kept conffile is used
            status, read = _http(
                daemon, "GET", f"/data/{DOCTYPE}/{doc_id}", port=8081, token=token
            )
            assert status == 200, read
            assert read["title"] == "packaged"
            assert DOMAIN in _cozyctl(root, daemon, "instances", "ls")
        finally:
            code = daemon.stop()
        assert code in CLEAN_EXIT, f"exit status {code}:\n{daemon.output}"

        # -- remove keeps the data, the configuration and the user ---------------
        prerm = root.path("/var/lib/dpkg/info/cozyd.prerm").read_text()
        assert "deb-systemd-invoke stop" in prerm  # stops the service where it runs
        removed = root.apt_get("remove", "cozyd")
        _no_warning(removed.stdout + removed.stderr)
        assert not root.path(VENV).exists()  # nothing left behind in the venv
        assert not root.path("/usr/bin/cozyctl").exists()
        assert any(root.path("/var/lib/cozyd").iterdir())
        assert root.path(CONF).read_text() == changed
        assert root.path(HASHED).exists() and root.path(CLEAR).exists()
        assert root.run("getent", "passwd", "cozyd", check=False).returncode == 0

        # -- purge removes the user, the secrets and the data ---------------------
        purged = root.apt_get("purge", "cozyd")
        _no_warning(purged.stdout + purged.stderr)
        for path in ("/var/lib/cozyd", "/etc/cozyd", "/opt/venvs/cozyd", UNIT):
            assert not root.path(path).exists(), path
        assert root.run("getent", "passwd", "cozyd", check=False).returncode != 0
        assert root.run("getent", "group", "cozyd", check=False).returncode != 0
        status = root.run("dpkg-query", "-W", "-f", "${Status}", "cozyd", check=False)
        assert "installed" not in status.stdout or "not-installed" in status.stdout
