"""cozyctl instances …: requests sent to the admin API and what is printed."""

from __future__ import annotations

import base64
import io
import json
import sys

import pytest

from tests.support.cli import DOMAIN, PASSPHRASE, instance_data, quoted

TOKEN = bytes(range(16))
TOKEN_B64 = base64.b64encode(TOKEN).decode()


# --- add -----------------------------------------------------------------------


def test_add_sends_query_and_prints_only_the_token_on_stdout(admin, cli):
    admin.reply(
        "POST", "/instances", 201, {"data": instance_data(register_token=TOKEN_B64)}
    )
    r = cli(
        "instances",
        "add",
        DOMAIN,
        "--email",
        "alice@example.net",
        "--public-name",
        "Alice",
        "--settings",
        "context:test,offer:premium",
        "--tz",
        "Europe/Paris",
        "--context-name",
        "test",
        "--phone",
        "+33 6",
        "--uuid",
        "u-1",
        "--tos",
        "1.0",
        "--domain-aliases",
        "a.example,b.example",
        "--disk-quota",
        "3GB",
        "--passphrase",
        "cozy",
    )
    assert r.code == 0, r.err
    seen = admin.last
    assert (seen.method, seen.path) == ("POST", "/instances")
    assert seen.password == PASSPHRASE
    assert seen.params == {
        "Domain": DOMAIN,
        "Locale": "en",
        "Email": "alice@example.net",
        "PublicName": "Alice",
        "Phone": "+33 6",
        "Timezone": "Europe/Paris",
        "ContextName": "test",
        "Settings": "context:test,offer:premium",
        "UUID": "u-1",
        "TOSSigned": "1.0",
        "DiskQuota": "3000000000",
        "DomainAliases": "a.example,b.example",
        "Passphrase": "cozy",
    }
    assert r.out == TOKEN.hex() + "\n"
    assert f"Instance created with success for domain {DOMAIN}" in r.err
    assert (
        f"Define your password by visiting http://{DOMAIN}/?registerToken={TOKEN.hex()}"
        in r.err
    )


def test_add_without_register_token_prints_nothing_on_stdout(admin, cli):
    admin.reply("POST", "/instances", 201, {"data": instance_data()})
    r = cli("instance", "create", DOMAIN, "--locale", "fr")
    assert r.code == 0
    assert r.out == ""
    assert admin.last.params == {"Domain": DOMAIN, "Locale": "fr"}
    assert "registerToken" not in r.err


def test_add_repeated_list_flags_are_joined(admin, cli):
    admin.reply("POST", "/instances", 201, {"data": instance_data()})
    assert (
        cli(
            "instances",
            "add",
            DOMAIN,
            "--domain-aliases",
            "a.x",
            "--domain-aliases",
            "b.x,c.x",
        ).code
        == 0
    )
    assert admin.last.params["DomainAliases"] == "a.x,b.x,c.x"


@pytest.mark.parametrize(
    "size,expected",
    [
        ("500MB", "500000000"),
        ("1GiB", "1073741824"),
        ("1048576", "1048576"),
        ("1.5 GB", "1500000000"),
        ("2k", "2000"),
    ],
)
def test_add_disk_quota_is_humanized(admin, cli, size, expected):
    admin.reply("POST", "/instances", 201, {"data": instance_data()})
    assert cli("instances", "add", DOMAIN, "--disk-quota", size).code == 0
    assert admin.last.params["DiskQuota"] == expected


def test_add_invalid_disk_quota_is_a_usage_error(admin, cli):
    r = cli("instances", "add", DOMAIN, "--disk-quota", "3XB")
    assert r.code == 2
    assert "invalid size" in r.err
    assert admin.requests == []


def test_add_passes_apps_through_and_reports_the_refusal(admin, cli):
    admin.error("POST", "/instances", 400, "apps are not installable yet")
    r = cli("instances", "add", DOMAIN, "--apps", "drive,photos")
    assert r.code == 1
    assert admin.last.params["Apps"] == "drive,photos"
    assert f"Failed to create instance for domain {DOMAIN}" in r.err
    assert "Error: apps are not installable yet" in r.err
    assert r.out == ""


def test_add_conflict(admin, cli):
    admin.error("POST", "/instances", 409, "Instance already exists")
    r = cli("instances", "add", DOMAIN)
    assert r.code == 1
    assert r.err.splitlines()[-2:] == [
        f"Failed to create instance for domain {DOMAIN}",
        "Error: Instance already exists",
    ]
    assert "Traceback" not in r.err


def test_add_and_destroy_can_be_disabled(admin, cli, monkeypatch):
    monkeypatch.setenv("COZY_DISABLE_INSTANCES_ADD_RM", "managed by the cloudery")
    r = cli("instances", "add", DOMAIN)
    assert (r.code, r.err) == (
        1,
        "Error: Sorry, instances add is disabled: managed by the cloudery\n",
    )
    r = cli("instances", "destroy", "--force", DOMAIN)
    assert r.code == 1
    assert "Sorry, instances destroy is disabled: managed by the cloudery" in r.err
    assert admin.requests == []


def test_add_unknown_flag_is_a_usage_error(admin, cli):
    r = cli("instances", "add", DOMAIN, "--no-such-flag")
    assert r.code == 2
    assert "unrecognized arguments: --no-such-flag" in r.err
    assert admin.requests == []


def test_add_rejects_an_invalid_domain(admin, cli):
    r = cli("instances", "add", "bad/domain")
    assert r.code == 1
    assert r.err.splitlines()[-1].startswith(
        "Error: Invalid domain 'bad/domain': the domain must not contain '/'"
    )
    assert admin.requests == []


def test_add_uses_a_long_timeout(admin, cli, monkeypatch):
    # COZY_ADMIN_TIMEOUT is short, but instance creation may take minutes.
    monkeypatch.setenv("COZY_ADMIN_TIMEOUT", "100ms")
    admin.reply("POST", "/instances", 201, {"data": instance_data()}, delay=0.4)
    assert cli("instances", "add", DOMAIN).code == 0


# --- ls / count / show -------------------------------------------------------------


def _list(admin):
    admin.reply(
        "GET",
        "/instances",
        200,
        {
            "data": [
                instance_data(onboarding_finished=True, disk_quota="3000000000"),
                instance_data(
                    "bob.cozy.localhost:8080",
                    locale="fr",
                    register_token=TOKEN_B64,
                    indexes_version=30,
                    prefix="cozybob",
                ),
                instance_data("zoe.cozy.localhost:8080", prefix=""),
            ],
            "meta": {"count": 3},
        },
    )


def test_ls_default_columns(admin, cli):
    _list(admin)
    r = cli("instances", "ls")
    assert r.code == 0
    assert (admin.last.method, admin.last.path) == ("GET", "/instances")
    assert r.out.splitlines() == [
        f"{DOMAIN}\ten\t3.0 GB\tonboarded\tv31\tcozy0123456789abcdef0123456789abcd",
        "bob.cozy.localhost:8080\tfr\tunlimited\tonboarding\tv30\tcozybob",
        "zoe.cozy.localhost:8080\ten\tunlimited\tpending\tv31\t",
    ]
    assert r.err == ""


def test_ls_json_one_object_per_line(admin, cli):
    _list(admin)
    r = cli("instances", "list", "--json")
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert [d["domain"] for d in lines] == [
        DOMAIN,
        "bob.cozy.localhost:8080",
        "zoe.cozy.localhost:8080",
    ]
    assert lines[0]["disk_quota"] == "3000000000"


def test_ls_fields(admin, cli):
    _list(admin)
    r = cli("instances", "ls", "--fields", "domain,locale", "--fields", "db_prefix")
    assert r.out.splitlines()[1:] == [
        "bob.cozy.localhost:8080\tfr\tcozybob",
        "zoe.cozy.localhost:8080\ten\tzoe-cozy-localhost-8080",
    ]
    r = cli("instances", "ls", "--json", "--fields", "domain,nope")
    assert json.loads(r.out.splitlines()[0]) == {"domain": DOMAIN, "nope": None}


def test_ls_available_fields_needs_no_server(admin, cli):
    r = cli("instances", "ls", "--available-fields")
    assert r.code == 0
    fields = r.out.split()
    assert {"domain", "locale", "prefix", "disk_quota", "db_prefix"} <= set(fields)
    assert admin.requests == []


@pytest.mark.parametrize(
    "count,text", [(0, "0 instances"), (1, "1 instance"), (259, "259 instances")]
)
def test_count(admin, cli, count, text):
    admin.reply("GET", "/instances/count", 200, {"count": count})
    r = cli("instances", "count")
    assert (r.code, r.out) == (0, text + "\n")


def test_show_prints_indented_instance(admin, cli):
    admin.reply("GET", quoted(), 200, {"data": instance_data(locale="fr")})
    r = cli("instances", "show", DOMAIN)
    assert r.code == 0
    assert admin.last.path == "/instances/alice.cozy.localhost%3A8080"
    doc = json.loads(r.out)
    assert doc == {
        "id": "0dc76ad9b1cf3a979b916b3155001830",
        "meta": {"rev": "1-abc"},
        "attributes": instance_data(locale="fr")["attributes"],
    }
    assert r.out.startswith('{\n  "id"')


def test_show_unknown_domain(admin, cli):
    admin.error("GET", quoted("nobody.test"), 404, "Instance not found")
    r = cli("instances", "show", "nobody.test")
    assert (r.code, r.out, r.err) == (1, "", "Error: Instance not found\n")


def test_show_db_prefix(admin, cli):
    admin.reply("GET", quoted(), 200, {"data": instance_data()})
    assert (
        cli("instances", "show-db-prefix", DOMAIN).out
        == "cozy0123456789abcdef0123456789abcd\n"
    )
    admin.reply("GET", quoted(), 200, {"data": instance_data(prefix="", couch_cluster=2)})
    assert (
        cli("instances", "show-db-prefix", DOMAIN).out
        == "alice-cozy-localhost-8080\ncouch_cluster: 2\n"
    )


# --- modify / set-disk-quota ---------------------------------------------------------


def test_modify_sends_only_given_flags(admin, cli):
    admin.reply("PATCH", quoted(), 200, {"data": instance_data(locale="fr")})
    r = cli(
        "instances",
        "modify",
        DOMAIN,
        "--locale",
        "fr",
        "--email",
        "a@b.c",
        "--tos-latest",
        "2.0",
        "--disk-quota",
        "1GiB",
    )
    assert r.code == 0
    assert admin.last.method == "PATCH"
    assert admin.last.params == {
        "Locale": "fr",
        "Email": "a@b.c",
        "TOSLatest": "2.0",
        "DiskQuota": "1073741824",
    }
    assert json.loads(r.out)["attributes"]["locale"] == "fr"


@pytest.mark.parametrize(
    "argv,params",
    [
        (["--blocked"], {"Blocked": "true"}),
        (["--blocked=false"], {"Blocked": "false"}),
        (
            ["--blocked", "--blocking-reason", "PAYMENT_FAILED"],
            {"Blocked": "true", "BlockingReason": "PAYMENT_FAILED"},
        ),
        (
            ["--blocking-reason", "maintenance window"],
            {"BlockingReason": "maintenance window"},
        ),
        (["--deleting=false"], {"Deleting": "false"}),
        (["--deleting"], {"Deleting": "true"}),
        (["--onboarding-finished"], {"OnboardingFinished": "true"}),
        (["--onboarding-finished=0"], {"OnboardingFinished": "false"}),
        ([], {}),
    ],
)
def test_modify_booleans_only_when_given(admin, cli, argv, params):
    admin.reply("PATCH", quoted(), 200, {"data": instance_data()})
    # the bare flag before the domain must not swallow it
    r = cli("instances", "modify", *argv, DOMAIN)
    assert r.code == 0, r.err
    assert admin.last.params == params


def test_modify_bad_boolean_is_a_usage_error(admin, cli):
    r = cli("instances", "modify", DOMAIN, "--blocked=maybe")
    assert r.code == 2
    assert admin.requests == []


def test_modify_error(admin, cli):
    admin.error("PATCH", quoted(), 404, "Instance not found")
    r = cli("instances", "modify", DOMAIN, "--locale", "fr")
    assert r.code == 1
    assert r.err.splitlines()[-1] == "Error: Instance not found"


@pytest.mark.parametrize("size,sent", [("3GB", "3000000000"), ("0", "0")])
def test_set_disk_quota(admin, cli, size, sent):
    admin.reply("PATCH", quoted(), 200, {"data": instance_data()})
    r = cli("instances", "set-disk-quota", DOMAIN, size)
    assert (r.code, r.out) == (0, "")
    assert admin.last.params == {"DiskQuota": sent}


def test_set_disk_quota_invalid(admin, cli):
    r = cli("instances", "set-disk-quota", DOMAIN, "lots")
    assert r.code == 2
    assert admin.requests == []


# --- destroy -------------------------------------------------------------------------


def test_destroy_force(admin, cli):
    admin.reply("DELETE", quoted(), 204)
    r = cli("instances", "destroy", "--force", DOMAIN)
    assert r.code == 0
    assert (admin.last.method, admin.last.path) == ("DELETE", quoted())
    assert admin.last.password == PASSPHRASE
    assert r.out == ""
    assert f"Instance for domain {DOMAIN} has been destroyed with success" in r.err


@pytest.mark.parametrize("alias", ["rm", "delete", "remove"])
def test_destroy_confirmation_from_a_pipe(admin, cli, monkeypatch, alias):
    admin.reply("DELETE", quoted(), 204)
    monkeypatch.setattr(sys, "stdin", io.StringIO(DOMAIN + "\n"))
    r = cli("instances", alias, DOMAIN)
    assert r.code == 0
    assert r.err.startswith(
        f"Are you sure you want to remove instance for domain {DOMAIN}?\n"
        "All data associated with this domain will be permanently lost.\n"
        "Type again the domain to confirm: "
    )
    assert len(admin.requests) == 1


@pytest.mark.parametrize("answer", ["", "bob.cozy.localhost:8080\n", "\n"])
def test_destroy_aborted(admin, cli, monkeypatch, answer):
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    r = cli("instances", "destroy", DOMAIN)
    assert r.code == 1
    assert r.err.splitlines()[-1] == "Error: Aborted"
    assert admin.requests == []


def test_destroy_already_deleting(admin, cli):
    detail = (
        "Instance is already being deleted: use `cozyctl instances modify "
        f"--deleting=false {DOMAIN}` to retry"
    )
    admin.error("DELETE", quoted(), 409, detail)
    r = cli("instances", "destroy", "--force", DOMAIN)
    assert r.code == 1
    assert r.err.splitlines()[-1] == f"Error: {detail}"


# --- tokens and OAuth clients ---------------------------------------------------


def test_token_app(admin, cli):
    admin.reply("POST", "/instances/token", text="eyJ.app.token")
    r = cli("instances", "token-app", DOMAIN, "drive", "--expire", "1h")
    assert (r.code, r.out) == (0, "eyJ.app.token\n")
    assert admin.last.params == {
        "Domain": DOMAIN,
        "Audience": "app",
        "Subject": "drive",
        "Scope": "",
        "Expire": "1h",
    }


def test_token_konnector(admin, cli):
    admin.reply("POST", "/instances/token", text="eyJ.konn\n")
    r = cli("instances", "token-konnector", DOMAIN, "pajemploi")
    assert r.out == "eyJ.konn\n"
    assert admin.last.params["Audience"] == "konn"
    assert admin.last.params["Subject"] == "pajemploi"


def test_token_cli_joins_scopes_with_spaces(admin, cli):
    admin.reply("POST", "/instances/token", text="eyJ.cli")
    r = cli("instances", "token-cli", DOMAIN, "io.cozy.files", "io.cozy.jobs:POST")
    assert r.out == "eyJ.cli\n"
    assert admin.last.params == {
        "Domain": DOMAIN,
        "Audience": "cli",
        "Subject": "",
        "Scope": "io.cozy.files io.cozy.jobs:POST",
    }


def test_token_oauth(admin, cli):
    admin.reply("POST", "/instances/token", text="eyJ.access")
    r = cli(
        "instances",
        "token-oauth",
        DOMAIN,
        "client123",
        "io.cozy.files,io.cozy.apps",
        "--expire",
        "90",
    )
    assert r.out == "eyJ.access\n"
    assert "Warning: the delimiter for the scopes is a space!" in r.err
    assert admin.last.params == {
        "Domain": DOMAIN,
        "Audience": "access-token",
        "Subject": "client123",
        "Scope": "io.cozy.files,io.cozy.apps",
        "Expire": "90s",
    }


def test_token_bad_expire_is_a_usage_error(admin, cli):
    r = cli("instances", "token-app", DOMAIN, "drive", "--expire", "soon")
    assert r.code == 2
    assert admin.requests == []


def test_token_error_is_reported(admin, cli):
    admin.reply("POST", "/instances/token", 400, text="Unknown audience foo")
    r = cli("instances", "token-cli", DOMAIN, "io.cozy.files")
    assert (r.code, r.out, r.err) == (1, "", "Error: Unknown audience foo\n")


def test_client_oauth(admin, cli):
    client = {"client_id": "cid", "client_secret": "sec", "client_name": "test"}
    admin.reply("POST", "/instances/oauth_client", 200, client)
    r = cli(
        "instances",
        "client-oauth",
        DOMAIN,
        "http://localhost",
        "test-sharing",
        "github.com/cozy/cozy-stack/tests/system",
    )
    assert (r.code, r.out) == (0, "cid\n")
    assert admin.last.params == {
        "Domain": DOMAIN,
        "RedirectURI": "http://localhost",
        "ClientName": "test-sharing",
        "SoftwareID": "github.com/cozy/cozy-stack/tests/system",
        "AllowLoginScope": "false",
    }
    r = cli(
        "instances",
        "client-oauth",
        "--json",
        "--allow-login-scope",
        "--onboarding-app",
        "drive",
        DOMAIN,
        "http://localhost",
        "n",
        "s",
    )
    assert json.loads(r.out) == client
    assert admin.last.params["AllowLoginScope"] == "true"
    assert admin.last.params["OnboardingApp"] == "drive"


def test_find_oauth_client(admin, cli):
    admin.reply("GET", "/instances/oauth_client", 200, {"client_id": "cid"})
    r = cli("instances", "find-oauth-client", DOMAIN, "sid")
    assert json.loads(r.out) == {"client_id": "cid"}
    assert admin.last.params == {"domain": DOMAIN, "software_id": "sid"}
