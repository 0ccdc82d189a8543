"""Fixtures of the fast tests: the daemon's graph in memory on a fake clock.

A fast test that leaves delayed calls on its ``clock`` fails: a timer left
running is a service that was not stopped, or a call that outlives its
request. Stop what you start (the ``stack`` fixture closes its store).
"""

import pytest
from twisted.internet.task import Clock

from cozyd.testing import memory_stack, sync


@pytest.fixture
def clock():
    """A fake clock at a realistic date (tokens and caches read it)."""
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture(autouse=True)
def no_delayed_calls_left(request):
    """Fail a test that leaves delayed calls on its clock (checked after
    every other fixture of the test is torn down)."""
    if "clock" not in request.fixturenames:
        yield
        return
    clock = request.getfixturevalue("clock")
    yield
    left = [call for call in clock.getDelayedCalls() if call.active()]
    if left:
        pytest.fail(
            f"the test left {len(left)} delayed call(s) on its clock: "
            + "; ".join(str(call) for call in left[:5]),
            pytrace=False,
        )


@pytest.fixture
def stack(tmp_path, clock):
    stack = memory_stack(str(tmp_path), clock=clock)
    yield stack
    sync(stack.store.close())


@pytest.fixture
def oauth_stack(stack):
    """The stack, by the name the OAuth tests give it."""
    return stack
