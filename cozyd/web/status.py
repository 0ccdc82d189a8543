"""``GET /version`` and ``GET /status``: answered on any host."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

from twisted.web.iweb import IRequest

from cozyd import __version__
from cozyd.documents import DocumentStore
from cozyd.web.common import json_response, jsonapi_errors
from cozyd.web.routing import Service, route


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3f}ms"


class StatusService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        store: DocumentStore,
        fs_root: str,
        seconds: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self._store = store
        self._fs_root = fs_root
        self._seconds = seconds

    @route("version", "GET")
    def version(self, request: IRequest) -> bytes:
        return json_response(
            request,
            {
                "version": __version__,
                "build_mode": "production",
                "build_time": "",
                "runtime_version": f"python{platform.python_version()}",
            },
        )

    @route("status", "GET")
    async def status(self, request: IRequest) -> bytes:
        start = self._seconds()
        try:
            storage_ok = await self._store.health()
        except Exception:
            storage_ok = False
        storage_latency = self._seconds() - start
        start = self._seconds()
        fs_ok = os.path.isdir(self._fs_root) and os.access(self._fs_root, os.W_OK)
        fs_latency = self._seconds() - start
        ok = storage_ok and fs_ok
        # The "couchdb" key names the document store whatever its engine:
        # cozy-stack's clients read that key.
        return json_response(
            request,
            {
                "cache": "healthy",
                "couchdb": "healthy" if storage_ok else "unhealthy",
                "fs": "healthy" if fs_ok else "unhealthy",
                "status": "OK" if ok else "KO",
                "message": "OK" if ok else "a backend is not healthy",
                "latency": {
                    "couchdb": _duration(storage_latency),
                    "fs": _duration(fs_latency),
                },
            },
            status=200 if ok else 502,
        )
