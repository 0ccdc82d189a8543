"""The real service graph in memory, for fast tests.

``memory_stack`` builds exactly what the daemon builds (``build_stack``) on
an in-memory embedded store whose calls complete synchronously, and
``MemoryClient`` sends HTTP requests to its resources through
``treq.testing.StubTreq``: no sockets, threads or sleeps.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from cozyd import adminpass
from cozyd.config import load_config
from cozyd.service import Stack, build_stack

TEST_ADMIN_PASSPHRASE = "correct horse battery staple"
#: Cheap scrypt and PBKDF2 for tests; production defaults stay slow on purpose.
TEST_SCRYPT_N = 1024
TEST_KDF_ITERATIONS = 50_000


def write_config(
    directory: str, *, passphrase: str = TEST_ADMIN_PASSPHRASE, **sections: dict[str, Any]
) -> str:
    """Write ``cozyd.conf`` and the admin passphrase hash into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    values: dict[str, dict[str, Any]] = {
        "storage": {"data_dir": os.path.join(directory, "data")},
        "instances": {"kdf_iterations": TEST_KDF_ITERATIONS},
    }
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    lines = []
    for section, keys in values.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
    path = os.path.join(directory, "cozyd.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    adminpass.write_hash_file(
        os.path.join(directory, "cozy-admin-passphrase"),
        adminpass.hash_passphrase(passphrase, n=TEST_SCRYPT_N),
    )
    return path


async def run_now(function):
    return function()


def result_of(d: defer.Deferred, *, flush: Callable[[], None] | None = None) -> Any:
    """The result of a Deferred that must have fired (after ``flush()``,
    which lets in-memory I/O run); its failure is raised."""
    results: list = []
    d.addBoth(results.append)
    if flush is not None:
        flush()
    if not results:
        raise AssertionError("waited on something that never came")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def sync(coroutine: Coroutine) -> Any:
    """The result of a coroutine that must complete without the reactor."""
    return result_of(defer.Deferred.fromCoroutine(coroutine))


def memory_stack(
    directory: str, *, clock: Clock | None = None, **sections: dict[str, Any]
) -> Stack:
    """The daemon's graph in memory; ``clock`` drives its time (token
    expiry, caches), starting at a realistic date."""
    from cozyd.storage.sqlite import EmbeddedStore

    config = load_config(write_config(directory, **sections), env={})
    if clock is None:
        clock = Clock()
        clock.advance(1_800_000_000)
    store = EmbeddedStore(None, reactor=clock)
    sync(store.start())
    stack = build_stack(
        config,
        store=store,
        run_blocking=run_now,
        seconds=clock.seconds,
        reactor=clock,
    )
    sync(stack.instances.setup())
    return stack


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class MemoryClient:
    """Synchronous HTTP against a resource, through StubTreq."""

    def __init__(self, resource):
        self._stub = StubTreq(resource)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        data: bytes | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        d = self._stub.request(method, url, headers=all_headers, params=params, data=data)
        response = self._wait(d)
        body = self._wait(response.content())
        flat = {
            k.decode().lower(): v[-1].decode()
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, flat, body)

    def _wait(self, d: defer.Deferred) -> Any:
        return result_of(d, flush=self._stub.flush)
