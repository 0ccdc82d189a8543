"""Apps and konnectors against the real daemon: cozyctl, a registry server
(http, test-only setting) and https tarballs (a test CA), on both engines."""

from __future__ import annotations

import http.client
import json
import os

import pytest

from tests.support.apps import Registry, app_files, manifest, sha256, tarball, write_folder
from tests.support.daemon import http as get
from tests.support.tls import make_ca

pytestmark = pytest.mark.integration

MORE = {
    "notes": {"type": "io.cozy.notes", "verbs": ["ALL"]},
    "contacts": {"type": "io.cozy.contacts", "verbs": ["GET"]},
}


@pytest.fixture
def registry():
    server = Registry()
    yield server
    server.stop()


@pytest.fixture
def tls_server(tmp_path):
    ca = make_ca(str(tmp_path / "pki"))
    issued = ca.issue(str(tmp_path / "pki"), "server", ("127.0.0.1", "localhost"))
    server = Registry(tls=(issued.cert, issued.key))
    yield server, ca.cert
    server.stop()


@pytest.fixture(params=["embedded", "couchdb"])
def engine(request):
    return request.param


def start(make_daemon, engine, registries="", ca=None):
    env = {"SSL_CERT_FILE": ca} if ca else {}
    return make_daemon(
        couchdb=engine == "couchdb",
        env=env,
        apps={"registries": registries, "allow_http_sources": "true"},
    )


def ok(result):
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def test_apps_from_a_registry_with_cozyctl(make_daemon, engine, registry):
    registry.publish("notes", "1.0.0", tarball(app_files(manifest()), prefix="notes/"))
    daemon = start(make_daemon, engine, registries=registry.url)
    domain = f"alice.localhost:{daemon.ports['public']}"
    ok(daemon.cozyctl("instances", "add", domain, "--apps", "notes"))
    listed = ok(daemon.cozyctl("apps", "ls", "--domain", domain))
    assert listed == "notes  registry://notes/stable  1.0.0  ready\n"
    shown = json.loads(ok(daemon.cozyctl("apps", "show", "notes", "--domain", domain)))
    assert shown["slug"] == "notes" and shown["version"] == "1.0.0"
    assert shown["permissions"]["notes"]["type"] == "io.cozy.notes"
    code = os.path.join(daemon.data_dir, "apps", domain, "webapp", "notes", "1.0.0")
    assert os.path.isfile(os.path.join(code, "index.html"))

    # A new version asking for more: --safe waits for the owner.
    v2 = tarball(app_files(manifest(version="2.0.0", permissions=MORE)))
    registry.publish("notes", "2.0.0", v2)
    safe = ok(daemon.cozyctl("apps", "update", "notes", "--safe", "--domain", domain))
    assert safe == "notes is already up-to-date at 1.0.0\n"
    shown = json.loads(ok(daemon.cozyctl("apps", "show", "notes", "--domain", domain)))
    assert shown["available_version"] == "2.0.0"
    upgraded = ok(daemon.cozyctl("apps", "update", "notes", "--domain", domain))
    assert upgraded == "notes has been upgraded to 2.0.0\n"
    again = ok(daemon.cozyctl("apps", "update", "notes", "--domain", domain))
    assert again == "notes is already up-to-date at 2.0.0\n"
    down = ok(
        daemon.cozyctl(
            "apps", "update", "notes", "registry://notes/1.0.0", "--domain", domain
        )
    )
    assert down == "notes has been downgraded to 1.0.0\n"

    # Garbage from the registry, or nothing: clear errors, nothing installed.
    registry.garbage["/registry/broken/stable/latest"] = b"<html>oops</html>"
    broken = daemon.cozyctl("apps", "install", "broken", "--domain", domain)
    assert broken.returncode == 1 and "not a version" in broken.stderr
    missing = daemon.cozyctl("apps", "install", "nothing", "--domain", domain)
    assert missing.returncode == 1 and "not reachable" in missing.stderr
    bad_sum = registry.publish("liar", "1.0.0", tarball(app_files(manifest("liar"))))
    bad_sum["sha256"] = "0" * 64
    liar = daemon.cozyctl("apps", "install", "liar", "--domain", domain)
    assert liar.returncode == 1 and "checksum" in liar.stderr
    assert ok(daemon.cozyctl("apps", "ls", "--domain", domain)).count("\n") == 1

    assert ok(daemon.cozyctl("apps", "uninstall", "notes", "--domain", domain)) == (
        "notes has been uninstalled\n"
    )
    assert ok(daemon.cozyctl("apps", "ls", "--domain", domain)) == ""
    assert not os.path.exists(os.path.dirname(code))


def test_konnectors_from_https_tarballs(make_daemon, engine, tls_server, tmp_path):
    server, ca = tls_server
    files = app_files(manifest("trainline", type="konnector", routes=None), "konnector")
    data = tarball(files)
    url = server.blob("trainline.tar.gz", data)
    daemon = start(make_daemon, engine, ca=ca)
    domain = f"alice.localhost:{daemon.ports['public']}"
    ok(daemon.cozyctl("instances", "add", domain))
    wrong = daemon.cozyctl(
        "konnectors", "install", "trainline", f"{url}#{'1' * 64}", "--domain", domain
    )
    assert wrong.returncode == 1 and "checksum" in wrong.stderr
    installed = ok(
        daemon.cozyctl(
            "konnectors",
            "install",
            "trainline",
            f"{url}#{sha256(data)}",
            "--domain",
            domain,
            "--parameters",
            '{"region": "fr"}',
        )
    )
    assert installed == f"trainline (1.0.0) has been installed on {domain}\n"
    shown = json.loads(
        ok(daemon.cozyctl("konnectors", "show", "trainline", "--domain", domain))
    )
    assert shown["parameters"] == {"region": "fr"} and shown["state"] == "ready"
    code = os.path.join(daemon.data_dir, "apps", domain, "konnector", "trainline", "1.0.0")
    assert os.path.isfile(os.path.join(code, "index.js"))
    listed = ok(daemon.cozyctl("konnectors", "ls", "--domain", domain))
    assert listed.split() == ["trainline", f"{url}#{sha256(data)}", "1.0.0", "ready"]
    # A folder, with a link out of it: refused, nothing written.
    hostile = write_folder(str(tmp_path / "hostile"), files)
    os.symlink("/etc/passwd", os.path.join(hostile, "passwd"))
    refused = daemon.cozyctl(
        "konnectors", "install", "hostile", f"file://{hostile}", "--domain", domain
    )
    assert refused.returncode == 1 and "links outside" in refused.stderr
    assert not os.path.exists(
        os.path.join(daemon.data_dir, "apps", domain, "konnector", "hostile")
    )
    assert ok(
        daemon.cozyctl("konnectors", "uninstall", "trainline", "--domain", domain)
    ) == ("trainline has been uninstalled\n")


def test_an_installed_app_is_served_on_its_host(make_daemon, tmp_path):
    daemon = start(make_daemon, "embedded")
    domain = f"alice.localhost:{daemon.ports['public']}"
    ok(daemon.cozyctl("instances", "add", domain, "--passphrase", "a long passphrase 1"))
    ok(daemon.cozyctl("instances", "modify", domain, "--onboarding-finished"))
    source = write_folder(str(tmp_path / "notes"), app_files(manifest()))
    ok(daemon.cozyctl("apps", "install", "notes", f"file://{source}", "--domain", domain))
    connection = http.client.HTTPConnection("127.0.0.1", daemon.ports["public"], timeout=30)
    connection.request("GET", "/", headers={"Host": f"notes.{domain}"})
    reply = connection.getresponse()
    assert reply.status == 302
    assert reply.getheader("location").startswith(f"http://{domain}/auth/login?redirect=")
    connection.close()
    asset = get(
        "GET",
        daemon.public_url + "/public/index.html",
        headers={"Host": f"notes.{domain}"},
    )
    assert asset.status == 200 and b"public notes" in asset.body
