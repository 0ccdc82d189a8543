"""Fixtures giving every test that takes ``store`` both storage engines."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor

ENGINES = ["embedded", "couchdb"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def prefix():
    """A prefix of its own for each test: the CouchDB server is shared."""
    return "cozytest" + uuid.uuid4().hex[:16]


async def open_store(engine, tmp_path, request):
    if engine == "embedded":
        from cozyd.storage.sqlite import EmbeddedStore

        store = EmbeddedStore(
            str(tmp_path / "db"), reactor=reactor, threadpool=reactor.getThreadPool()
        )
    else:
        from cozyd.storage.couchdb import CouchDBStore

        store = CouchDBStore(request.getfixturevalue("couchdb_url"), reactor=reactor)
    await store.start()
    return store


@pytest_twisted.async_yield_fixture
async def store(engine, tmp_path, request):
    store = await open_store(engine, tmp_path, request)
    try:
        yield store
    finally:
        await store.close()
