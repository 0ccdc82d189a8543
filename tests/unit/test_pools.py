"""The daemon's worker pools (``cozyd.pools``): real threads, real reactor."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from cozyd.pools import InlinePool, PoolBusy, WorkerPool, daemon_pools, inline_pools


@pytest.fixture
def pool():
    pool = WorkerPool(reactor, "test", threads=1, max_pending=2)
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_pool_runs_jobs_in_its_own_named_threads(pool):
    def where() -> tuple[str, int]:
        return threading.current_thread().name, threading.get_ident()

    name, ident = await pool.run(where)
    assert "cozyd-test" in name
    assert ident != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        await pool.run(lambda: 1 / 0)
    assert pool.pending == 0


@pytest_twisted.ensureDeferred
async def test_a_bounded_pool_refuses_jobs_past_its_bound(pool):
    release = threading.Event()
    running = [pool.run(release.wait, 10), pool.run(release.wait, 10)]
    assert pool.pending == 2
    with pytest.raises(PoolBusy) as caught:
        pool.run(lambda: "too many")
    assert caught.value.status == 503
    release.set()
    assert await running[0] and await running[1]
    assert pool.pending == 0
    assert await pool.run(lambda: "room again") == "room again"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")
@pytest_twisted.ensureDeferred
async def test_hashing_threads_run_at_a_lower_priority():
    pools = daemon_pools(reactor, storage_threads=1, hashing_threads=1)
    pools.start()
    try:

        def niceness() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        mine = niceness()
        assert await pools.hashing.run(niceness) > mine
        assert await pools.storage.run(niceness) == mine
    finally:
        pools.stop()


@pytest_twisted.ensureDeferred
async def test_a_stopped_pool_ends_its_threads():
    pool = WorkerPool(reactor, "stopping", threads=2)
    pool.start()
    await pool.run(lambda: None)
    assert any("cozyd-stopping" in t.name for t in threading.enumerate())
    pool.stop()
    assert not any("cozyd-stopping" in t.name for t in threading.enumerate())


def test_inline_pools_run_at_once_in_the_calling_thread():
    pools = inline_pools()
    assert isinstance(pools.hashing, InlinePool)
    results: list = []
    d = pools.storage.run(threading.get_ident)
    assert isinstance(d, Deferred)
    d.addCallback(results.append)
    assert results == [threading.get_ident()]
