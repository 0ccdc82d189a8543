"""Jobs and triggers through the real daemon, on both storage engines:
``cozyctl jobs run``, ``/jobs`` over HTTP with a CLI token, triggers that
fire on time, ``cozyctl triggers ls|launch|rm``, a restart that fires a
one-shot trigger that came due meanwhile (once), and a mail sent by the
``sendmail`` worker to a real SMTP server."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import time

import pytest
from aiosmtpd.controller import Controller

pytestmark = pytest.mark.integration

DOMAIN = "alice.cozy.localhost"
SCOPE = "io.cozy.jobs io.cozy.triggers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    def __init__(self):
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.port = port
    yield inbox
    controller.stop()


@pytest.fixture(params=["embedded", "couchdb"])
def jobs_daemon(request, make_daemon, smtp_server):
    daemon = make_daemon(
        couchdb=request.param == "couchdb",
        mail={"host": "127.0.0.1", "port": str(smtp_server.port), "tls": "none"},
    )
    added = daemon.cozyctl("instances", "add", DOMAIN, "--email", "alice@example.org")
    assert added.returncode == 0, added.stderr
    made = daemon.cozyctl("instances", "token-cli", DOMAIN, *SCOPE.split())
    assert made.returncode == 0, made.stderr
    daemon.token = made.stdout.strip()
    daemon.inbox = smtp_server
    return daemon


def call(daemon, method, path, body=None, status=None):
    headers = {
        "Authorization": f"Bearer {daemon.token}",
        "Accept": "application/vnd.api+json",
    }
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/vnd.api+json"
    response = daemon.public(method, "/jobs" + path, DOMAIN, headers=headers, data=data)
    if status is not None:
        assert response.status == status, (method, path, response.status, response.body)
    return response.json() if response.body else None


def wait_for(predicate, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_jobs_run_and_http(jobs_daemon):
    run = jobs_daemon.cozyctl(
        "jobs", "run", "log", "--domain", DOMAIN, "--json", '{"a": 1}'
    )
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["attributes"]["state"] == "done"
    assert job["attributes"]["message"] == {"a": 1}
    shown = call(jobs_daemon, "GET", f"/{job['id']}", status=200)
    assert shown["data"]["attributes"]["state"] == "done"

    pushed = call(
        jobs_daemon,
        "POST",
        "/queue/log",
        {"data": {"attributes": {"arguments": {"b": 2}}}},
        status=202,
    )["data"]
    wait_for(
        lambda: (
            call(jobs_daemon, "GET", f"/{pushed['id']}")["data"]["attributes"]["state"]
            == "done"
        ),
        what="the pushed job",
    )
    bad = jobs_daemon.cozyctl("jobs", "run", "nope", "--domain", DOMAIN, "--json", "{}")
    assert bad.returncode == 1 and "unknown worker" in bad.stderr
    purged = jobs_daemon.cozyctl("jobs", "purge-old-jobs", DOMAIN, "--duration", "1D")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"deleted": 0}


def test_triggers_fire_and_cozyctl(jobs_daemon):
    made = call(
        jobs_daemon,
        "POST",
        "/triggers",
        {
            "data": {
                "attributes": {
                    "type": "@every",
                    "arguments": "1s",
                    "worker": "log",
                    "message": {"tick": True},
                }
            }
        },
        status=201,
    )["data"]

    def jobs_of_trigger():
        return call(jobs_daemon, "GET", f"/triggers/{made['id']}/jobs")["data"]

    wait_for(lambda: len(jobs_of_trigger()) >= 2, what="two runs of the @every trigger")
    listed = jobs_daemon.cozyctl("triggers", "ls", "--domain", DOMAIN)
    assert listed.returncode == 0, listed.stderr
    assert made["id"] in listed.stdout and "@every" in listed.stdout
    launched = jobs_daemon.cozyctl("triggers", "launch", "--domain", DOMAIN, made["id"])
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["attributes"]["manual_execution"] is True
    removed = jobs_daemon.cozyctl("triggers", "rm", "--domain", DOMAIN, made["id"])
    assert removed.returncode == 0, removed.stderr
    call(jobs_daemon, "GET", f"/triggers/{made['id']}", status=404)
    again = jobs_daemon.cozyctl("triggers", "rm", "--domain", DOMAIN, made["id"])
    assert again.returncode == 1


def test_a_one_shot_due_while_down_fires_once_at_start(jobs_daemon):
    made = call(
        jobs_daemon,
        "POST",
        "/triggers",
        {"data": {"attributes": {"type": "@in", "arguments": "3s", "worker": "log"}}},
        status=201,
    )["data"]
    every = call(
        jobs_daemon,
        "POST",
        "/triggers",
        {"data": {"attributes": {"type": "@every", "arguments": "1h", "worker": "log"}}},
        status=201,
    )["data"]
    jobs_daemon.stop()
    time.sleep(3.5)
    jobs_daemon.start()
    wait_for(
        lambda: call(jobs_daemon, "GET", f"/triggers/{made['id']}").get("errors"),
        what="the @in trigger to fire and vanish",
    )
    jobs_daemon.stop()
    jobs_daemon.start()
    time.sleep(1)
    found = jobs_daemon.public(
        "GET",
        "/data/io.cozy.jobs/_all_docs?include_docs=true",
        DOMAIN,
        headers={"Authorization": f"Bearer {jobs_daemon.token}"},
    )
    assert found.status == 200, found.body
    fired = [
        r for r in found.json()["rows"] if r.get("doc", {}).get("trigger_id") == made["id"]
    ]
    assert len(fired) == 1  # fired once, not at each start
    # The periodic trigger made no job for the time it was down.
    assert (
        call(jobs_daemon, "GET", f"/triggers/{every['id']}/jobs", status=200)["data"] == []
    )


def test_sendmail_worker_sends_through_smtp(jobs_daemon):
    body = {
        "data": {
            "attributes": {
                "arguments": {
                    "mode": "noreply",
                    "subject": "Hello from cozyd",
                    "parts": [{"type": "text/plain", "body": "It works."}],
                    "attachments": [{"filename": "a.txt", "content": "aGVsbG8="}],
                }
            }
        }
    }
    job = call(jobs_daemon, "POST", "/queue/sendmail", body, status=202)["data"]
    wait_for(lambda: jobs_daemon.inbox.received, what="the mail")
    envelope = jobs_daemon.inbox.received[0]
    assert envelope.rcpt_tos == ["alice@example.org"]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["Subject"] == "Hello from cozyd"
    assert [a.get_content() for a in message.iter_attachments()] == ["hello"]
    wait_for(
        lambda: (
            call(jobs_daemon, "GET", f"/{job['id']}")["data"]["attributes"]["state"]
            == "done"
        ),
        what="the sendmail job",
    )
