"""Triggers of konnectors ask ``cozyd.konnectors.worker.should_queue``
before queueing: after a ``LOGIN_FAILED`` (or a ``USER_ACTION_NEEDED``
other than ``CGU_FORM``) an automatic firing queues nothing until a manual
run; other workers are not asked."""

from __future__ import annotations

import pytest

from cozyd.jobs.workers import WorkerError
from tests.unit.jobs.test_jobs_http import Recorder, World, create_trigger


@pytest.fixture
def world(stack, clock):
    w = World(stack, clock)
    yield w
    w.stop()


def fire(world, trigger):
    world.clock.advance(1)  # jobs of a trigger are ordered by queued_at
    reply = world.web.request("POST", trigger["links"]["webhook"], body={}, cookies=False)
    assert reply.status == 204, reply.body


def jobs_of(world, trigger):
    reply = world.call("GET", f"/jobs/triggers/{trigger['id']}/jobs", status=200)
    return reply["data"]


def webhook_of(world, worker):
    message = {"konnector": "dummy", "account": "acc"}
    return create_trigger(world, type="@webhook", worker=worker, message=message)["data"]


@pytest.mark.parametrize("error", ["LOGIN_FAILED", "USER_ACTION_NEEDED.OAUTH_OUTDATED"])
def test_a_failed_login_stops_automatic_runs_until_a_manual_one(world, error):
    konnector = Recorder(name="konnector", plan=[WorkerError(error, retry=False)])
    world.stack.jobs.register(konnector)
    trigger = webhook_of(world, "konnector")
    fire(world, trigger)
    assert len(konnector.runs) == 1
    assert jobs_of(world, trigger)[0]["attributes"]["error"] == error
    fire(world, trigger)  # the last run failed on its login: not queued
    assert len(konnector.runs) == 1 and len(jobs_of(world, trigger)) == 1
    world.clock.advance(1)
    world.call("POST", f"/jobs/triggers/{trigger['id']}/launch", status=201)
    assert len(konnector.runs) == 2 and konnector.runs[1].manual is True
    fire(world, trigger)  # the manual run succeeded: queued again
    assert len(konnector.runs) == 3 and len(jobs_of(world, trigger)) == 3


def test_other_errors_and_other_workers_still_queue(world):
    konnector = Recorder(
        name="konnector",
        plan=[
            WorkerError("VENDOR_DOWN", retry=False),
            WorkerError("USER_ACTION_NEEDED.CGU_FORM", retry=False),
        ],
    )
    world.stack.jobs.register(konnector)
    trigger = webhook_of(world, "konnector")
    for _ in range(3):
        fire(world, trigger)
    assert len(konnector.runs) == 3
    world.worker.plan = [WorkerError("LOGIN_FAILED", retry=False)]
    other = webhook_of(world, "rec")
    fire(world, other)
    fire(world, other)  # the hook is the konnectors' only
    assert len(world.worker.runs) == 2
