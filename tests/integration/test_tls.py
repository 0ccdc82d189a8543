"""TLS: the public API on an ssl: endpoint, and an https:// CouchDB whose
certificate and host name are verified (refused without the CA file)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import time
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.daemon import Daemon
from tests.support.tls import TLSProxy, make_ca

pytestmark = pytest.mark.integration


def _command(daemon: Daemon, *args: str) -> list[str]:
    return daemon.twistd(
        "--admin-port",
        "0",
        *args,
    )


def test_https_public_api_end_to_end(make_daemon, tmp_path):
    ca = make_ca(str(tmp_path / "pki"))
    server = ca.issue(str(tmp_path / "pki"), "server", ("localhost", "127.0.0.1"))
    daemon = make_daemon(start=False)
    daemon.command = lambda: _command(
        daemon,
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={server.key}:certKey={server.cert}",
    )
    daemon.start()
    assert re.search(r"public API listening on https://127\.0\.0\.1:\d+/", daemon.output)
    port = daemon.ports["public"]
    trusted = ssl.create_default_context(cafile=ca.cert)
    with urllib.request.urlopen(
        f"https://localhost:{port}/version", context=trusted, timeout=10
    ) as response:
        assert response.status == 200
        assert json.loads(response.read())["version"]
    # A client that does not trust the test CA refuses the server.
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(
            f"https://localhost:{port}/version",
            context=ssl.create_default_context(),
            timeout=10,
        )
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    # Plain HTTP on the TLS port gets nothing useful.
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5).read()


@pytest.fixture
def couchdb_behind_tls(fresh_couchdb, tmp_path):
    """(url with https://localhost:<proxy>, CA file, a proxy whose
    certificate names another host) in front of the test CouchDB."""
    url = fresh_couchdb()
    parts = urlsplit(url)
    ca = make_ca(str(tmp_path / "pki"))
    good = TLSProxy(
        ca.issue(str(tmp_path / "pki"), "couchdb", ("localhost",)),
        (parts.hostname, parts.port),
    )
    wrong = TLSProxy(
        ca.issue(str(tmp_path / "pki"), "other", ("other.test",)),
        (parts.hostname, parts.port),
    )
    credentials = f"{parts.username}:{parts.password}@" if parts.username else ""

    def https(port: int) -> str:
        return urlunsplit(("https", f"{credentials}localhost:{port}", "/", "", ""))

    yield https(good.port), ca.cert, https(wrong.port)
    good.stop()
    wrong.stop()


def _start(tmp_path, name: str, url: str, ca_file: str | None) -> Daemon:
    couchdb = {"timeout": "10", **({"ca_file": ca_file} if ca_file else {})}
    daemon = Daemon(str(tmp_path / name), couchdb_url=url, couchdb=couchdb)
    return daemon


def test_https_couchdb_is_verified(couchdb_behind_tls, tmp_path):
    url, ca_file, wrong_host_url = couchdb_behind_tls
    # Trusted through the CA file: it starts and stores instances.
    daemon = _start(tmp_path, "trusted", url, ca_file)
    daemon.start()
    try:
        assert "storage ready: couchdb engine" in daemon.output
        added = daemon.cozyctl("instances", "add", "alice.cozy.test")
        assert added.returncode == 0, added.stderr
        assert daemon.cozyctl("instances", "show", "alice.cozy.test").returncode == 0
    finally:
        daemon.stop()
    # Without the CA file the certificate is not trusted: no start.
    # With it, a certificate naming another host is refused too.
    for name, target, ca, why in (
        ("untrusted", url, None, "certificate verify failed"),
        ("wrong-host", wrong_host_url, ca_file, "DNSMismatch"),
    ):
        daemon = _start(tmp_path, name, target, ca)
        started = time.monotonic()
        result = subprocess.run(
            daemon.command(), capture_output=True, text=True, timeout=90, cwd=daemon.workdir
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "cozyd cannot start: the couchdb storage cannot start" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert time.monotonic() - started < 60
        assert why in result.stderr


def test_unreadable_ca_file_refuses_to_start(tmp_path):
    daemon = Daemon(
        str(tmp_path),
        couchdb_url="https://localhost:1/",
        couchdb={"ca_file": str(tmp_path / "missing.pem")},
    )
    result = subprocess.run(
        daemon.command(), capture_output=True, text=True, timeout=90, cwd=daemon.workdir
    )
    assert result.returncode == 1
    assert "cozyd cannot start: the couchdb storage cannot start" in result.stderr
    assert "missing.pem" in result.stderr
