"""cozyctl apps / konnectors: requests sent to the admin API and what is
printed (cozy-stack's formats)."""

from __future__ import annotations

import json

import pytest

from cozyd.cli.apps import is_more_recent
from tests.support.cli import DOMAIN, quoted


def app(slug="notes", version="1.0.0", **attributes):
    return {
        "data": {
            "type": "io.cozy.apps",
            "id": f"io.cozy.apps/{slug}",
            "attributes": {
                "slug": slug,
                "version": version,
                "state": "ready",
                "source": f"registry://{slug}/stable",
                **attributes,
            },
        }
    }


def test_install_sends_the_source_and_prints_the_version(admin, cli):
    admin.reply("POST", f"{quoted()}/apps/notes", 200, app())
    r = cli("apps", "install", "notes", "--domain", DOMAIN, "--ask-permissions")
    assert r.code == 0, r.err
    assert r.out == f"notes (1.0.0) has been installed on {DOMAIN}\n"
    assert admin.last.params == {"Source": "registry://notes/stable", "Deactivated": "true"}


def test_konnectors_install_with_parameters(admin, cli):
    admin.reply("POST", f"{quoted()}/konnectors/trainline", 200, app("trainline"))
    r = cli(
        "konnectors",
        "install",
        "trainline",
        "file:///srv/k",
        "--domain",
        DOMAIN,
        "--parameters",
        '{"a": 1}',
    )
    assert r.code == 0, r.err
    assert admin.last.params == {"Source": "file:///srv/k", "Parameters": '{"a": 1}'}


@pytest.mark.parametrize(
    "before, after, line",
    [
        ("1.0.0", "1.1.0", "notes has been upgraded to 1.1.0"),
        ("1.1.0", "1.0.0", "notes has been downgraded to 1.0.0"),
        ("1.0.0", "1.0.0", "notes is already up-to-date at 1.0.0"),
    ],
)
def test_update_says_which_way_it_went(admin, cli, before, after, line):
    path = f"{quoted()}/apps/notes"
    admin.reply("GET", path, 200, app(version=before))
    admin.reply("PUT", path, 200, app(version=after))
    r = cli("apps", "update", "notes", "--safe", "--domain", DOMAIN)
    assert r.code == 0, r.err
    assert r.out == line + "\n"
    assert admin.last.params == {"PermissionsAcked": "false"}


def test_ls_show_uninstall_and_errors(admin, cli):
    listing = {
        "data": [
            app("drive", "3.1.0")["data"],
            app("home", "1.10.2", state="installed", source="file:///x")["data"],
        ]
    }
    admin.reply("GET", f"{quoted()}/apps", 200, listing)
    r = cli("apps", "ls", "--domain", DOMAIN)
    assert r.out == (
        "drive  registry://drive/stable  3.1.0   ready\n"
        "home   file:///x                1.10.2  installed\n"
    )
    admin.reply("GET", f"{quoted()}/apps/drive", 200, app("drive"))
    shown = cli("apps", "show", "drive", "--domain", DOMAIN)
    assert json.loads(shown.out)["slug"] == "drive" and shown.out.startswith('{\n  "')
    admin.reply("DELETE", f"{quoted()}/apps/drive", 200, app("drive"))
    assert cli("apps", "uninstall", "drive", "--domain", DOMAIN).out == (
        "drive has been uninstalled\n"
    )
    admin.error("POST", f"{quoted()}/apps/nope", 404, "Application is not installed")
    failed = cli("apps", "install", "nope", "--domain", DOMAIN)
    assert failed.code == 1 and "Error: Application is not installed" in failed.err


def test_versions_compare_as_semver():
    assert is_more_recent("1.0.0", "1.0.1")
    assert is_more_recent("1.0.0-beta.1", "1.0.0")
    assert is_more_recent("1.0.0-beta.1", "1.0.0-beta.2")
    assert not is_more_recent("1.10.0", "1.9.0")
    assert is_more_recent("garbage", "1.0.0")
