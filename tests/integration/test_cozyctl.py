"""`cozyctl instances …` against the real daemon, on both engines."""

import base64
import json
import os
import re
import signal
import subprocess
import threading
from urllib.parse import urlsplit

import pytest

from cozyd.storage.names import instance_prefix
from cozyd.testing import TEST_ADMIN_PASSPHRASE
from tests.support.daemon import http

pytestmark = pytest.mark.integration
DOMAIN = "alice.cozy.localhost:8080"


def add(daemon, domain=DOMAIN, *args):
    return daemon.cozyctl("instances", "add", domain, *args)


def test_add_prints_the_register_token_alone(daemon):
    result = add(
        daemon,
        DOMAIN,
        "--locale",
        "fr",
        "--email",
        "alice@example.com",
        "--public-name",
        "Alice",
        "--tz",
        "Europe/Paris",
        "--disk-quota",
        "2GB",
        "--settings",
        "offer:premium",
        "--context-name",
        "test",
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", result.stdout)
    assert DOMAIN in result.stderr
    shown = daemon.cozyctl("instances", "show", DOMAIN)
    assert shown.returncode == 0, shown.stderr
    attributes = json.loads(shown.stdout)["attributes"]
    assert attributes["locale"] == "fr"
    assert attributes["context"] == "test"
    assert attributes["disk_quota"] == "2000000000"
    assert attributes["prefix"] == instance_prefix(DOMAIN)
    assert "session_secret" not in attributes


def test_ls_formats(daemon):
    for domain in ("b.cozy.test", "a.cozy.test:8080"):
        assert add(daemon, domain).returncode == 0
    listing = daemon.cozyctl("instances", "ls")
    lines = listing.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a.cozy.test:8080", "b.cozy.test"]
    assert "unlimited" in lines[0]
    as_json = [
        json.loads(line)
        for line in daemon.cozyctl("instances", "ls", "--json").stdout.splitlines()
    ]
    assert {i["domain"] for i in as_json} == {"a.cozy.test:8080", "b.cozy.test"}
    fields = daemon.cozyctl("instances", "ls", "--fields", "domain,locale").stdout
    assert fields.splitlines()[0].split("\t") == ["a.cozy.test:8080", "en"]
    assert daemon.cozyctl("instances", "count").stdout.strip() == "2 instances"


@pytest.mark.parametrize(
    "domain,rule",
    [
        ("bad domain", "must not contain ' '"),
        ("a/b", "must not contain '/'"),
        ("..", "host name"),
        ("a\tb", "must not contain"),
    ],
)
def test_add_refuses_invalid_domains(make_daemon, domain, rule):
    daemon = make_daemon()
    result = add(daemon, domain)
    assert result.returncode != 0
    assert rule in result.stderr
    assert result.stdout == ""
    assert daemon.cozyctl("instances", "count").stdout.strip() == "0 instances"


def test_add_existing_is_refused_and_missing_apps_do_not_stop_a_creation(daemon):
    assert add(daemon).returncode == 0
    again = add(daemon, DOMAIN.upper())
    assert again.returncode != 0 and "already exists" in again.stderr
    # No registry is configured: the apps cannot be found, the instance is made.
    apps = add(daemon, "bob.cozy.test", "--apps", "drive,photos")
    assert apps.returncode == 0, apps.stderr
    assert daemon.cozyctl("instances", "count").stdout.strip() == "2 instances"
    listed = daemon.cozyctl("apps", "ls", "--domain", "bob.cozy.test")
    assert listed.returncode == 0 and listed.stdout == ""


def test_modify_blocks_and_unblocks(daemon):
    add(daemon)
    result = daemon.cozyctl(
        "instances", "modify", DOMAIN, "--blocked", "--blocking-reason", "PAYMENT_FAILED"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["attributes"]["blocked"] is True
    response = daemon.public("GET", "/data/io.cozy.notes/", host=DOMAIN)
    assert response.status == 402
    assert response.json()["errors"][0]["code"] == "PAYMENT_FAILED"
    daemon.cozyctl("instances", "modify", DOMAIN, "--blocking-reason", "LOGIN_FAILED")
    response = daemon.public("GET", "/data/io.cozy.notes/", host=DOMAIN)
    assert (response.status, response.json()["errors"][0]["code"]) == (503, "LOGIN_FAILED")
    daemon.cozyctl("instances", "modify", DOMAIN, "--blocked=false")
    # Served again: the data service asks for a token.
    assert daemon.public("GET", "/data/io.cozy.notes/", host=DOMAIN).status == 401
    changed = daemon.cozyctl(
        "instances",
        "modify",
        DOMAIN,
        "--locale",
        "fr",
        "--email",
        "new@example.com",
        "--public-name",
        "Al",
        "--disk-quota",
        "1GB",
        "--domain-aliases",
        "alice.example.org",
    )
    attributes = json.loads(changed.stdout)["attributes"]
    assert attributes["locale"] == "fr" and attributes["disk_quota"] == "1000000000"
    assert attributes["domain_aliases"] == ["alice.example.org"]
    served = daemon.public("GET", "/nothing", host="alice.example.org")
    assert served.json()["errors"][0]["code"] == "not_found"


def test_destroy_asks_then_removes_everything(daemon, couchdb_url_if_any):
    add(daemon)
    prefix = instance_prefix(DOMAIN)
    aborted = daemon.cozyctl("instances", "destroy", DOMAIN, input="bob.cozy.test\n")
    assert aborted.returncode != 0 and "Aborted" in aborted.stderr
    assert "Type again the domain to confirm" in aborted.stderr
    assert daemon.cozyctl("instances", "count").stdout.strip() == "1 instance"
    done = daemon.cozyctl("instances", "destroy", DOMAIN, input=DOMAIN + "\n")
    assert done.returncode == 0, done.stderr
    assert "destroyed" in done.stderr
    assert (
        daemon.public("GET", "/x", host=DOMAIN).json()["errors"][0]["code"]
        == "instance_not_found"
    )
    assert not os.path.exists(os.path.join(daemon.data_dir, "files", DOMAIN))
    assert (
        not [f for f in os.listdir(os.path.join(daemon.data_dir, "db")) if prefix in f]
        if os.path.isdir(os.path.join(daemon.data_dir, "db"))
        else True
    )
    if daemon.couchdb_url:
        all_dbs = http(
            "GET",
            without_credentials(couchdb_url_if_any) + "_all_dbs",
            headers=basic_auth(couchdb_url_if_any),
        ).json()
        assert not [db for db in all_dbs if prefix in db]
    missing = daemon.cozyctl("instances", "destroy", "--force", DOMAIN)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_second_destroy_while_deleting_names_the_fix(daemon):
    add(daemon)
    daemon.cozyctl("instances", "modify", DOMAIN, "--deleting")
    refused = daemon.cozyctl("instances", "destroy", "--force", DOMAIN)
    assert refused.returncode != 0
    assert f"instances modify --deleting=false {DOMAIN}" in refused.stderr
    daemon.cozyctl("instances", "modify", DOMAIN, "--deleting=false")
    assert daemon.cozyctl("instances", "destroy", "--force", DOMAIN).returncode == 0


def test_concurrent_adds_exactly_one_succeeds(daemon):
    results = []

    def run():
        results.append(add(daemon, "race.cozy.test"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.returncode for r in results) == [0, 1, 1, 1]
    assert daemon.cozyctl("instances", "count").stdout.strip() == "1 instance"


@pytest.mark.parametrize("crash_at", ["create.databases", "create.tree"])
@pytest.mark.parametrize("repair", ["add", "destroy"])
def test_kill_9_during_creation_is_repaired(make_daemon, engine_name, crash_at, repair):
    daemon = make_daemon(couchdb=engine_name == "couchdb", start=False)
    daemon.start(extra_env={"COZYD_CRASH_AT": crash_at})
    result = add(daemon, "crash.cozy.test")
    assert result.returncode != 0
    assert daemon.wait_exit() == -signal.SIGKILL
    daemon.start()
    assert daemon.cozyctl("instances", "count").stdout.strip() == "0 instances"
    if repair == "destroy":
        fixed = daemon.cozyctl("instances", "destroy", "--force", "crash.cozy.test")
        assert fixed.returncode == 0, fixed.stderr
        assert not os.path.exists(os.path.join(daemon.data_dir, "files", "crash.cozy.test"))
    again = add(daemon, "crash.cozy.test")
    assert again.returncode == 0, again.stderr
    shown = json.loads(daemon.cozyctl("instances", "show", "crash.cozy.test").stdout)
    assert shown["attributes"]["domain"] == "crash.cozy.test"


def test_admin_passphrase_is_required_and_never_logged(make_daemon):
    daemon = make_daemon()
    wrong = daemon.cozyctl("instances", "ls", passphrase="not the passphrase")
    assert wrong.returncode != 0 and "passphrase" in wrong.stderr.lower()
    response = http("GET", daemon.admin_url + "/instances")
    assert response.status == 401
    owner_secret = "Owner-Secret-Passphrase-42"
    assert add(daemon, DOMAIN, "--passphrase", owner_secret).returncode == 0
    daemon.cozyctl("instances", "ls")
    daemon.stop()
    with open(daemon.log_path, encoding="utf-8") as f:
        log = f.read()
    assert "POST /instances" in log  # the access log is there…
    assert owner_secret not in log and TEST_ADMIN_PASSPHRASE not in log  # …not secrets
    assert "Passphrase=" not in log


def test_config_passwd_writes_a_hash_the_daemon_accepts(make_daemon, tmp_path):
    daemon = make_daemon(start=False)
    path = os.path.join(daemon.workdir, "cozy-admin-passphrase")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COZY_")}
    env["COZY_ADMIN_PASSPHRASE"] = "a brand new passphrase"
    written = subprocess.run(
        [
            os.path.join(os.path.dirname(daemon.command()[0]), "cozyctl"),
            "config",
            "passwd",
            path,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    with open(path) as f:
        assert f.read().startswith("scrypt$")
    daemon.start()
    assert (
        daemon.cozyctl("instances", "ls", passphrase="a brand new passphrase").returncode
        == 0
    )
    assert daemon.cozyctl("instances", "ls").returncode != 0


def without_credentials(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}/"


def basic_auth(url):
    parts = urlsplit(url)
    if not parts.username:
        return {}
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
