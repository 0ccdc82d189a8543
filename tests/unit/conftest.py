"""Fixtures of the fast tests: the daemon's graph in memory on a fake clock."""

import pytest
from twisted.internet.task import Clock

from cozyd.testing import memory_stack


@pytest.fixture
def clock():
    """A fake clock at a realistic date (tokens and caches read it)."""
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def stack(tmp_path, clock):
    return memory_stack(str(tmp_path), clock=clock)


@pytest.fixture
def oauth_stack(stack):
    """The stack, by the name the OAuth tests give it."""
    return stack
