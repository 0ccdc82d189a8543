"""/jobs through HTTP on the in-memory stack, with the job system and the
scheduler running on the test's fake clock."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from twisted.internet import defer

from cozyd.auth import tokens
from cozyd.documents import DocNotFound
from cozyd.instance.model import Instance
from cozyd.jobs.workers import JobContext, WorkerError
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import result_of, sync
from tests.support.auth import ADMIN, BASE, DOMAIN, Browser, admin_token, create_instance

SCOPE = "io.cozy.jobs io.cozy.triggers io.cozy.events"


@attrs.define
class Recorder:
    """A worker that records its runs; ``plan`` says what each run does."""

    name: str = "rec"
    concurrency: int = 1
    max_exec_count: int = 3
    timeout: float = 5.0
    runs: list[JobContext] = attrs.field(factory=list)
    plan: list[Any] = attrs.field(factory=list)

    async def run(self, context: JobContext):
        self.runs.append(context)
        step = self.plan.pop(0) if self.plan else None
        if isinstance(step, Exception):
            raise step
        if isinstance(step, defer.Deferred):
            return await step
        return {"ok": len(self.runs)}


class World:
    def __init__(self, stack, clock):
        self.stack = stack
        self.clock = clock
        self.admin = Browser(stack.admin)
        self.web = Browser(stack.public)
        create_instance(self.admin)
        self.token = admin_token(self.admin, Audience="cli", Scope=SCOPE)
        self.worker = Recorder()
        stack.jobs.register(self.worker)
        result_of(stack.jobs.startService())
        result_of(stack.scheduler.startService())

    def stop(self):
        result_of(self.stack.scheduler.stopService())
        result_of(self.stack.jobs.stopService())

    @property
    def instance(self) -> Instance:
        return Instance.from_doc(
            sync(self.stack.store.get_doc(INSTANCES_DB, Instance.new(DOMAIN).id))
        )

    def call(self, method, path, body=None, *, token=None, status=None):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        reply = self.web.request(
            method, BASE + path, body=body, headers=headers, cookies=False
        )
        if status is not None:
            assert reply.status == status, (method, path, reply.status, reply.body)
        if not reply.body or "json" not in (reply.header("content-type") or ""):
            return reply.body.decode() or None
        return reply.json()

    def job(self, job_id):
        return self.call("GET", f"/jobs/{job_id}", status=200)["data"]["attributes"]

    def app_token(self, slug: str, permissions: dict[str, Any]) -> str:
        instance = self.instance
        sync(
            self.stack.store.put_doc(
                db_name(instance.prefix, "io.cozy.permissions"),
                {
                    "_id": f"perm-{slug}",
                    "type": "app",
                    "source_id": f"io.cozy.apps/{slug}",
                    "permissions": permissions,
                },
            )
        )
        return tokens.issue(instance, tokens.APP, slug, issued_at=self.clock.seconds())


@pytest.fixture
def world(stack, clock):
    w = World(stack, clock)
    yield w
    w.stop()


def push(world, worker="rec", arguments=None, **attributes):
    body = {"data": {"attributes": {"arguments": arguments or {"n": 1}, **attributes}}}
    return world.call("POST", f"/jobs/queue/{worker}", body, status=202)["data"]


def test_push_runs_the_job_and_records_done(world):
    data = push(world, arguments={"hello": "world"}, manual=True)
    assert data["type"] == "io.cozy.jobs"
    assert data["attributes"]["state"] == "queued"
    assert data["attributes"]["manual_execution"] is True
    assert data["links"]["self"] == f"/jobs/rec/{data['id']}"
    attributes = world.job(data["id"])
    assert attributes["state"] == "done"
    assert attributes["result"] == {"ok": 1}
    assert attributes["started_at"] != "0001-01-01T00:00:00Z"
    assert attributes["finished_at"] != "0001-01-01T00:00:00Z"
    assert world.worker.runs[0].message == {"hello": "world"}
    assert world.worker.runs[0].manual is True


def test_retries_with_back_off_then_errored(world):
    world.worker.plan = [
        WorkerError("VENDOR_DOWN"),
        WorkerError("VENDOR_DOWN"),
        RuntimeError("x"),
    ]
    data = push(world)
    assert len(world.worker.runs) == 1
    world.clock.advance(0.05)
    assert len(world.worker.runs) == 1  # the first delay is ~60 ms
    world.clock.advance(0.02)
    assert len(world.worker.runs) == 2
    world.clock.advance(0.14)
    assert len(world.worker.runs) == 3
    attributes = world.job(data["id"])
    assert attributes["state"] == "errored"
    assert attributes["error"] == "x"


def test_options_lower_the_tries_and_no_retry_errors_stop(world):
    world.worker.plan = [WorkerError("LOGIN_FAILED", retry=False)]
    data = push(world)
    assert world.job(data["id"])["error"] == "LOGIN_FAILED"
    assert len(world.worker.runs) == 1
    world.worker.plan = [WorkerError("A"), WorkerError("B")]
    data = push(world, options={"max_exec_count": 1})
    world.clock.advance(1)
    assert world.job(data["id"])["error"] == "A"
    assert world.job(data["id"])["options"]["max_exec_count"] == 1


def test_timeout_cancels_the_run(world):
    hanging = defer.Deferred()
    world.worker.plan = [hanging, hanging]
    data = push(world, options={"timeout": 2, "max_exec_count": 1})
    assert world.job(data["id"])["options"]["timeout"] == 2_000_000_000  # nanoseconds
    world.clock.advance(1.9)
    assert world.job(data["id"])["state"] == "running"
    world.clock.advance(0.2)
    assert hanging.called  # cancelled
    assert world.job(data["id"])["state"] == "errored"
    assert world.job(data["id"])["error"] == "timeout"


def test_concurrency_of_a_worker(world):
    gates = [defer.Deferred() for _ in range(3)]
    world.worker.plan = list(gates)
    ids = [push(world)["id"] for _ in range(3)]
    assert len(world.worker.runs) == 1  # concurrency 1
    queued = world.call("GET", "/jobs/queue/rec", status=200)["data"]
    assert sorted(j["attributes"]["state"] for j in queued) == [
        "queued",
        "queued",
        "running",
    ]
    gates[0].callback(None)
    assert len(world.worker.runs) == 2
    gates[1].callback(None)
    gates[2].callback(None)
    assert [world.job(i)["state"] for i in ids] == ["done"] * 3
    assert world.call("GET", "/jobs/queue/rec", status=200)["data"] == []


def test_job_documents_are_published(world):
    seen = []
    world.stack.hub.subscribe(
        world.instance,
        "io.cozy.jobs",
        lambda e: seen.append((e["verb"], e["doc"]["state"])),
    )
    push(world)
    assert seen == [("CREATED", "queued"), ("UPDATED", "running"), ("UPDATED", "done")]


def test_unknown_reserved_and_forbidden(world):
    token = world.app_token(
        "mailer",
        {
            "jobs": {
                "type": "io.cozy.jobs",
                "verbs": ["POST", "GET"],
                "selector": "worker",
                "values": ["rec", "clean-clients", "nope"],
            }
        },
    )
    body = {"data": {"attributes": {"arguments": {}}}}
    world.call("POST", "/jobs/queue/rec", body, token=token, status=202)
    world.call("POST", "/jobs/queue/log", body, token=token, status=403)  # not its worker
    world.call(
        "POST", "/jobs/queue/clean-clients", body, token=token, status=403
    )  # reserved
    world.call("POST", "/jobs/queue/nope", body, token=token, status=404)
    forward = {"data": {"attributes": {"arguments": {}, "forward_logs": True}}}
    world.call("POST", "/jobs/queue/rec", forward, token=token, status=403)
    # The CLI may push reserved workers.
    world.call("POST", "/jobs/queue/clean-clients", body, status=202)
    world.call("POST", "/jobs/queue/nope", body, status=404)
    world.call("GET", "/jobs/nothing-here", status=404)
    world.call(
        "POST", "/jobs/queue/rec", {"data": {"attributes": {"options": 3}}}, status=400
    )
    reply = world.web.request(
        "POST",
        BASE + "/jobs/queue/rec",
        headers={
            "Authorization": f"Bearer {world.token}",
            "Content-Type": "application/json",
        },
        cookies=False,
    )
    assert reply.status == 202  # an empty body is an empty job


def create_trigger(world, status=201, **attributes):
    body = {"data": {"attributes": attributes}}
    return world.call("POST", "/jobs/triggers", body, status=status)


def test_every_trigger_fires_and_its_state(world):
    made = create_trigger(
        world, type="@every", arguments="10s", worker="rec", message={"m": 1}
    )["data"]
    assert made["attributes"]["type"] == "@every"
    assert made["attributes"]["cozyMetadata"]["doctypeVersion"] == "1"
    assert made["links"]["self"] == f"/jobs/triggers/{made['id']}"
    world.clock.advance(9.9)
    assert world.worker.runs == []
    world.clock.advance(0.2)
    assert len(world.worker.runs) == 1
    assert world.worker.runs[0].trigger_id == made["id"]
    assert world.worker.runs[0].message == {"m": 1}
    world.clock.advance(10)
    assert len(world.worker.runs) == 2
    jobs = world.call("GET", f"/jobs/triggers/{made['id']}/jobs?Limit=1", status=200)[
        "data"
    ]
    assert len(jobs) == 1
    state = world.call("GET", f"/jobs/triggers/{made['id']}/state", status=200)["data"]
    assert state["type"] == "io.cozy.triggers.state"
    assert state["attributes"]["status"] == "done"
    assert state["attributes"]["last_successful_job_id"] == jobs[0]["id"]
    shown = world.call("GET", f"/jobs/triggers/{made['id']}", status=200)["data"]
    assert shown["attributes"]["current_state"]["status"] == "done"
    world.call("DELETE", f"/jobs/triggers/{made['id']}", status=204)
    world.clock.advance(30)
    assert len(world.worker.runs) == 2
    world.call("GET", f"/jobs/triggers/{made['id']}", status=404)


def test_at_and_in_fire_once_and_vanish(world):
    at = create_trigger(world, type="@at", arguments="2027-01-16T08:00:00.5Z", worker="rec")
    inn = create_trigger(world, type="@in", arguments="5s", worker="rec")["data"]
    world.clock.advance(5)
    assert [r.trigger_id for r in world.worker.runs] == [inn["id"]]
    world.call("GET", f"/jobs/triggers/{inn['id']}", status=404)
    world.clock.advance(86400 - 5)
    assert len(world.worker.runs) == 1
    world.clock.advance(0.5)
    assert [r.trigger_id for r in world.worker.runs][-1] == at["data"]["id"]
    world.token = admin_token(world.admin, Audience="cli", Scope=SCOPE)
    world.call("GET", f"/jobs/triggers/{at['data']['id']}", status=404)


def test_bad_triggers(world):
    for args in (
        {"type": "@at", "arguments": "garbage"},
        {"type": "@in", "arguments": "garbage"},
        {"type": "@cron", "arguments": "1 2 3"},
        {"type": "@weekly", "arguments": "on the 3"},
        {"type": "@daily", "arguments": "between 6pm and 8am"},
    ):
        create_trigger(world, status=400, worker="rec", **args)
    reply = create_trigger(world, status=422, type="@never", arguments="", worker="rec")
    assert reply["errors"][0]["source"] == {"pointer": "/data/attributes/Type"}
    create_trigger(
        world, status=422, type="@every", arguments="1h", worker="rec", debounce="soon"
    )
    create_trigger(world, status=404, type="@every", arguments="1h", worker="nope")


def test_cron_and_periodic_triggers(world):
    cron = create_trigger(world, type="@cron", arguments="*/15 * * * * *", worker="rec")
    world.clock.advance(15)
    assert len(world.worker.runs) == 1
    create_trigger(world, type="@hourly", worker="rec")
    weekly = create_trigger(
        world, type="@weekly", arguments="on monday before 9am", worker="rec"
    )["data"]
    trigger = world.stack.scheduler._triggers[(world.instance.prefix, weekly["id"])][1]
    fields = trigger.cron.split()
    assert fields[5] == "1" and int(fields[2]) < 9
    # patch: only @cron triggers take new arguments
    world.call(
        "PATCH",
        f"/jobs/triggers/{weekly['id']}",
        {"data": {"attributes": {"arguments": "0 0 0 * * *"}}},
        status=422,
    )
    patched = world.call(
        "PATCH",
        f"/jobs/triggers/{cron['data']['id']}",
        {"data": {"attributes": {"arguments": "0 0 * * * *", "message": {"x": 2}}}},
        status=200,
    )
    assert patched["data"]["attributes"]["arguments"] == "0 0 * * * *"
    before = len(world.worker.runs)
    world.clock.advance(30)
    assert all(r.message != {"x": 2} for r in world.worker.runs[before:])


def test_listing_with_filters(world):
    create_trigger(world, type="@every", arguments="1h", worker="rec")
    create_trigger(world, type="@webhook", worker="log")
    create_trigger(world, type="@cron", arguments="0 0 0 * * *", worker="log")
    listed = world.call("GET", "/jobs/triggers?Worker=log", status=200)["data"]
    assert sorted(t["attributes"]["type"] for t in listed) == ["@cron", "@webhook"]
    listed = world.call(
        "GET", "/jobs/triggers?Worker=log,rec&Type=@every,@cron", status=200
    )
    assert sorted(t["attributes"]["type"] for t in listed["data"]) == ["@cron", "@every"]
    assert all("current_state" in t["attributes"] for t in listed["data"])
    token = world.app_token(
        "lister",
        {
            "t": {
                "type": "io.cozy.triggers",
                "verbs": ["GET"],
                "selector": "worker",
                "values": ["log"],
            }
        },
    )
    world.call("GET", "/jobs/triggers?Worker=log", token=token, status=200)
    world.call("GET", "/jobs/triggers", token=token, status=403)
    world.call("GET", "/jobs/triggers?Worker=rec", token=token, status=403)


def test_event_trigger_with_verbs_values_and_changes(world):
    made = create_trigger(
        world,
        type="@event",
        worker="rec",
        arguments="io.cozy.events:CREATED io.cozy.events:UPDATED:!=:summary",
    )
    assert made["data"]["attributes"]["arguments"].startswith("io.cozy.events")
    headers = {"Authorization": f"Bearer {world.token}"}

    def data(method, path, body):
        reply = world.web.request(
            method, BASE + "/data" + path, body=body, headers=headers, cookies=False
        )
        assert reply.status in (200, 201), reply.body
        return reply.json()

    created = data("POST", "/io.cozy.events/", {"summary": "a", "n": 1})
    assert len(world.worker.runs) == 1
    event = world.worker.runs[0].event
    assert event["verb"] == "CREATED" and event["doc"]["summary"] == "a"
    doc = {**created["data"], "n": 2}
    doc.pop("_type", None)
    updated = data("PUT", f"/io.cozy.events/{created['id']}", doc)
    assert len(world.worker.runs) == 1  # summary unchanged
    doc = {**doc, "_rev": updated["rev"], "summary": "b"}
    data("PUT", f"/io.cozy.events/{created['id']}", doc)
    assert len(world.worker.runs) == 2
    assert world.worker.runs[1].event["verb"] == "UPDATED"


def test_debounced_event_trigger(world):
    create_trigger(
        world, type="@event", worker="rec", arguments="io.cozy.events", debounce="10s"
    )
    headers = {"Authorization": f"Bearer {world.token}"}
    for n in range(3):
        world.web.request(
            "POST",
            BASE + "/data/io.cozy.events/",
            body={"n": n},
            headers=headers,
            cookies=False,
        )
    assert world.worker.runs == []
    world.clock.advance(10)
    assert len(world.worker.runs) == 1


def test_webhook_trigger(world):
    made = create_trigger(world, type="@webhook", worker="rec")["data"]
    url = made["links"]["webhook"]
    assert url == f"http://{DOMAIN}/jobs/webhooks/{made['id']}"
    reply = world.web.request("POST", url, body={"account_id": "0672e560"}, cookies=False)
    assert reply.status == 204, reply.body
    assert world.worker.runs[0].payload == {"account_id": "0672e560"}
    other = create_trigger(world, type="@every", arguments="1h", worker="rec")["data"]
    reply = world.web.request(
        "POST", BASE + f"/jobs/webhooks/{other['id']}", body={}, cookies=False
    )
    assert reply.status == 422
    assert (
        world.web.request("POST", BASE + "/jobs/webhooks/nope", cookies=False).status == 404
    )
    bad = world.web.request(
        "POST", url, headers={"Content-Type": "application/json"}, cookies=False
    )
    assert bad.status == 204  # no body: no payload
    debounced = create_trigger(world, type="@webhook", worker="rec", debounce="5s")["data"]
    for n in range(3):
        world.web.request(
            "POST", debounced["links"]["webhook"], body={"n": n}, cookies=False
        )
    before = len(world.worker.runs)
    world.clock.advance(5)
    assert world.worker.runs[before].payload == {"payloads": [{"n": 0}, {"n": 1}, {"n": 2}]}


def test_launch_and_client_jobs(world):
    made = create_trigger(world, type="@every", arguments="1h", worker="rec")["data"]
    job = world.call("POST", f"/jobs/triggers/{made['id']}/launch", status=201)["data"]
    assert job["attributes"]["manual_execution"] is True
    assert world.worker.runs[0].manual is True
    state = world.call("GET", f"/jobs/triggers/{made['id']}/state", status=200)["data"]
    assert state["attributes"]["last_manual_job_id"] == job["id"]

    client = create_trigger(world, type="@client", arguments="")["data"]
    assert client["attributes"]["worker"] == "client"
    job = world.call("POST", f"/jobs/triggers/{client['id']}/launch", status=201)["data"]
    assert job["attributes"]["state"] == "running"
    assert job["attributes"]["started_at"] != "0001-01-01T00:00:00Z"
    world.call(
        "PATCH",
        f"/jobs/{job['id']}",
        {"data": {"attributes": {"state": "later"}}},
        status=422,
    )
    done = world.call(
        "PATCH",
        f"/jobs/{job['id']}",
        {"data": {"attributes": {"state": "errored", "error": "LOGIN_FAILED"}}},
        status=200,
    )["data"]
    assert done["attributes"]["state"] == "errored"
    assert done["attributes"]["error"] == "LOGIN_FAILED"
    state = world.call("GET", f"/jobs/triggers/{client['id']}/state", status=200)["data"]
    assert state["attributes"]["last_error"] == "LOGIN_FAILED"
    other = push(world)
    world.call(
        "PATCH",
        f"/jobs/{other['id']}",
        {"data": {"attributes": {"state": "done"}}},
        status=403,
    )


def test_purge_keeps_recent_and_the_last_of_each_state(world):
    for _ in range(3):
        push(world)
    world.clock.advance(90 * 86400)
    world.token = admin_token(world.admin, Audience="cli", Scope=SCOPE)
    push(world)
    assert world.call("DELETE", "/jobs/purge?duration=1M", status=200) == {"deleted": 0}
    for _ in range(55):
        push(world)
    world.clock.advance(40 * 86400)
    world.token = admin_token(world.admin, Audience="cli", Scope=SCOPE)
    assert world.call("DELETE", "/jobs/purge?duration=1M&workers=rec", status=200) == {
        "deleted": 9
    }
    world.call("DELETE", "/jobs/purge?duration=soon", status=400)


def test_restart_fires_due_one_shots_once_and_never_twice(world):
    made = create_trigger(world, type="@in", arguments="60s", worker="rec")["data"]
    every = create_trigger(world, type="@every", arguments="100s", worker="rec")["data"]
    world.stop()
    world.clock.advance(250)  # down meanwhile: the @in came due, @every slots missed
    result_of(world.stack.jobs.startService())
    result_of(world.stack.scheduler.startService())
    world.clock.advance(0)
    assert [r.trigger_id for r in world.worker.runs] == [made["id"]]
    world.stop()
    result_of(world.stack.jobs.startService())
    result_of(world.stack.scheduler.startService())
    world.clock.advance(0)
    assert len(world.worker.runs) == 1
    world.clock.advance(50)  # the next @every slot: creation + 300 s
    assert [r.trigger_id for r in world.worker.runs] == [made["id"], every["id"]]


def test_jobs_queued_before_a_restart_run_after_it(world):
    world.stop()
    data = push(world)  # not running: it waits in the document
    assert world.worker.runs == []
    world.stack.jobs.backend._queues.clear()  # the memory queue is lost with the process
    result_of(world.stack.jobs.startService())
    result_of(world.stack.scheduler.startService())
    assert world.job(data["id"])["state"] == "done"


def test_log_and_clean_clients_workers(world):
    job = push(world, worker="log", arguments={"hello": 1})
    assert world.job(job["id"])["state"] == "done"
    reply = world.web.request(
        "POST",
        BASE + "/auth/register",
        body={
            "redirect_uris": ["https://app.example.org/cb"],
            "client_name": "C",
            "software_id": "x",
        },
        headers={"Accept": "application/json"},
        cookies=False,
    )
    client_id = reply.json()["client_id"]
    job = push(world, worker="clean-clients", arguments={})
    assert world.job(job["id"])["result"] == {"deleted": 0}  # too young
    world.clock.advance(3601)
    world.token = admin_token(world.admin, Audience="cli", Scope=SCOPE)
    job = push(world, worker="clean-clients", arguments={})
    assert world.job(job["id"])["result"] == {"deleted": 1}
    with pytest.raises(DocNotFound):
        sync(world.stack.documents.get(world.instance, "io.cozy.oauth.clients", client_id))


def test_one_instance_never_sees_another_s_jobs(world):
    job = push(world)
    create_instance(world.admin, "bob.cozy.test")
    bob = admin_token(world.admin, "bob.cozy.test", Audience="cli", Scope=SCOPE)
    reply = world.web.request(
        "GET",
        "http://bob.cozy.test" + f"/jobs/{job['id']}",
        headers={"Authorization": f"Bearer {bob}"},
        cookies=False,
    )
    assert reply.status == 404
    reply = world.web.request(
        "GET",
        "http://bob.cozy.test/jobs/queue/rec",
        headers={"Authorization": f"Bearer {world.token}"},
        cookies=False,
    )
    assert reply.status in (400, 401)  # alice's token is no token of bob's


def test_admin_routes(world):
    def admin(method, path, status, **params):
        from urllib.parse import urlencode

        from tests.support.auth import basic_auth

        reply = world.admin.request(
            method, f"{ADMIN}{path}?{urlencode(params)}", headers=basic_auth()
        )
        assert reply.status == status, reply.body
        return reply.json() if reply.body else None

    job = admin(
        "POST", f"/instances/{DOMAIN}/jobs/queue/rec", 202, Arguments=json.dumps({"a": 1})
    )["data"]
    assert (
        admin("GET", f"/instances/{DOMAIN}/jobs/{job['id']}", 200)["data"]["attributes"][
            "state"
        ]
        == "done"
    )
    admin("POST", f"/instances/{DOMAIN}/jobs/queue/rec", 400, Arguments="{nope")
    made = create_trigger(world, type="@every", arguments="1h", worker="rec")["data"]
    listed = admin("GET", f"/instances/{DOMAIN}/triggers", 200)["data"]
    assert [t["id"] for t in listed] == [made["id"]]
    launched = admin("POST", f"/instances/{DOMAIN}/triggers/{made['id']}/launch", 201)
    assert launched["data"]["attributes"]["trigger_id"] == made["id"]
    admin("DELETE", f"/instances/{DOMAIN}/triggers/{made['id']}", 204)
    admin("DELETE", f"/instances/{DOMAIN}/triggers/{made['id']}", 404)
    assert admin("DELETE", f"/instances/{DOMAIN}/jobs/purge", 200, duration="1D") == {
        "deleted": 0
    }
