"""Routes for cozyd's own tests, served only with ``[server] test_routes``.

``POST /_debug/sha256`` hashes a streamed body (any size up to 4 GiB) and
answers ``{"sha256": hex, "size": n}``: the integration tests send it a
gigabyte to check that streamed bodies keep the daemon's memory flat.
With ``?slow=true`` each chunk waits for a turn of the reactor before the
next one, so that the connection has to stop reading from the client
(back-pressure).

``GET /_debug/sleep?seconds=S`` answers ``{"slept": S}`` after S seconds
(at most 60): the lifecycle tests stop the daemon during a slow request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web.iweb import IRequest

from cozyd.errors import BadRequest
from cozyd.web.bodies import body_stream
from cozyd.web.common import json_response, jsonapi_errors
from cozyd.web.params import parse_bool, query_param
from cozyd.web.routing import Service, route, streamed

MAX_HASHED_BODY = 4 * 1024**3


class DebugService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        pause: Callable[[], Awaitable[Any]] | None = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
    ):
        super().__init__()
        self._pause = pause
        self._sleep = sleep

    @route("_debug/sleep", "GET")
    async def sleep(self, request: IRequest) -> bytes:
        try:
            seconds = float(query_param(request, "seconds") or "1")
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 60:
            raise BadRequest("seconds must be a number between 0 and 60")
        if self._sleep is not None:
            await self._sleep(seconds)
        return json_response(request, {"slept": seconds})

    @route("_debug/sha256", "POST", body=streamed(MAX_HASHED_BODY))
    async def sha256(self, request: IRequest) -> bytes:
        digest = hashlib.sha256()
        slow = parse_bool(query_param(request, "slow")) is True and self._pause is not None
        pause = self._pause

        async def slowly(chunk: bytes) -> None:
            digest.update(chunk)
            assert pause is not None
            await pause()

        size = await body_stream(request).read_into(slowly if slow else digest.update)
        return json_response(request, {"sha256": digest.hexdigest(), "size": size})
