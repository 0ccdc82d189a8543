"""The services of a web app's manifest become triggers of the ``service``
worker at install, are replaced at update and removed at uninstall
(through the apps routes and /jobs/triggers on the in-memory stack)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from cozyd.konnectors.worker import build_workers
from tests.support.apps import app_files, manifest, write_folder
from tests.support.auth import BASE, Browser, admin_token, create_instance, onboard

NOTIFY = {
    "type": "node",
    "file": "/services/notify.js",
    "trigger": "@event io.cozy.notes:CREATED",
}


@pytest.fixture
def owner(stack):
    # The daemon registers the sandbox workers at start; the in-memory
    # stack is told the same way.
    for worker in build_workers(stack.config, None).values():
        stack.jobs.register(worker)
    browser = Browser(stack.public)
    assert onboard(browser, create_instance(Browser(stack.admin))).status == 200
    return browser


@pytest.fixture
def cli(stack, owner):
    token = admin_token(
        Browser(stack.admin), Audience="cli", Scope="io.cozy.apps io.cozy.triggers"
    )
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"}


def source(tmp_path, name, **fields):
    files = app_files(manifest(**fields))
    files["services/notify.js"] = b"console.log('notified')\n"
    return "file://" + write_folder(str(tmp_path / name), files)


def send(owner, cli, method, slug, src=None, **params):
    query = urlencode({"Source": src, **params} if src else params)
    reply = owner.request(method, f"{BASE}/apps/{slug}?{query}", headers=cli)
    return reply


def triggers(owner, cli):
    reply = owner.request("GET", f"{BASE}/jobs/triggers", headers=cli)
    assert reply.status == 200, reply.body
    return [t for t in reply.json()["data"] if t["attributes"]["worker"] == "service"]


def app(owner, cli, slug="notes"):
    reply = owner.request("GET", f"{BASE}/apps/{slug}", headers=cli)
    assert reply.status == 200, reply.body
    return reply.json()["data"]["attributes"]


def test_services_triggers_follow_install_update_uninstall(owner, cli, tmp_path):
    services = {"notify": NOTIFY, "by-hand": {"type": "node", "file": "/services/x.js"}}
    reply = send(owner, cli, "POST", "notes", source(tmp_path, "v1", services=services))
    assert reply.status == 202, reply.body
    assert app(owner, cli)["state"] == "ready"
    [trigger] = triggers(owner, cli)  # the service with no trigger gets none
    attributes = trigger["attributes"]
    assert attributes["type"] == "@event"
    assert attributes["arguments"] == "io.cozy.notes:CREATED"
    assert attributes["message"] == {"slug": "notes", "name": "notify"}
    assert app(owner, cli)["services"]["notify"]["trigger_id"] == trigger["id"]
    assert "trigger_id" not in app(owner, cli)["services"]["by-hand"]

    # An update replaces the triggers by those of the new manifest.
    cron = {**NOTIFY, "trigger": "@cron 0 0 0 * * *"}
    src = source(tmp_path, "v2", version="2.0.0", services={"notify": cron})
    reply = send(owner, cli, "PUT", "notes", src)
    assert reply.status == 202, reply.body
    assert app(owner, cli)["version"] == "2.0.0"
    [updated] = triggers(owner, cli)
    assert updated["id"] != trigger["id"]
    assert updated["attributes"]["type"] == "@cron"
    assert updated["attributes"]["arguments"] == "0 0 0 * * *"
    assert app(owner, cli)["services"]["notify"]["trigger_id"] == updated["id"]

    reply = send(owner, cli, "DELETE", "notes")
    assert reply.status == 200, reply.body
    assert triggers(owner, cli) == []


def test_a_bad_service_trigger_refuses_the_install(owner, cli, tmp_path):
    bad = {**NOTIFY, "trigger": "@every never"}
    services = {"good": NOTIFY, "bad": bad}
    reply = send(owner, cli, "POST", "notes", source(tmp_path, "bad", services=services))
    if reply.status == 202:  # the install goes on after the answer: it fails
        assert owner.request("GET", f"{BASE}/apps/notes", headers=cli).status == 404
    else:
        assert reply.status == 400, reply.body
    assert triggers(owner, cli) == []  # not even the good one


def test_a_failed_update_keeps_the_old_triggers(owner, cli, tmp_path):
    reply = send(
        owner, cli, "POST", "notes", source(tmp_path, "v1", services={"notify": NOTIFY})
    )
    assert reply.status == 202, reply.body
    [trigger] = triggers(owner, cli)
    bad = {**NOTIFY, "trigger": "@nonsense"}
    src = source(tmp_path, "v2", version="2.0.0", services={"a": NOTIFY, "b": bad})
    send(owner, cli, "PUT", "notes", src)
    assert app(owner, cli)["version"] == "1.0.0"
    assert [t["id"] for t in triggers(owner, cli)] == [trigger["id"]]
    assert app(owner, cli)["services"]["notify"]["trigger_id"] == trigger["id"]
