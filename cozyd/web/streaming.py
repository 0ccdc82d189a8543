"""Large JSON answers written in pieces, not serialised in one go.

``json.dumps`` of a 12 MB ``_all_docs`` holds the reactor (and the GIL:
a thread would not help) for the whole encoding. ``json_rows_response``
writes such an answer as it encodes it: the object's other members, then
its list of rows ``ROWS_PER_WRITE`` at a time, giving the reactor a turn
between pieces (``pause``) so that other requests go on meanwhile. Small
answers are encoded at once, as ``json_response`` does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from cozyd.web.common import JSON, json_response

#: Rows above which an answer is written in pieces.
STREAM_ABOVE = 1000
ROWS_PER_WRITE = 500

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


async def json_rows_response(
    request: IRequest,
    body: dict[str, Any],
    key: str = "rows",
    *,
    pause: Callable[[], Awaitable[Any]] | None = None,
    status: int = 200,
    content_type: str = JSON,
) -> Any:
    """``body`` as JSON, its ``key`` list written in pieces when long."""
    rows = body.get(key)
    if not isinstance(rows, list) or len(rows) <= STREAM_ABOVE:
        return json_response(request, body, status=status, content_type=content_type)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    head = {name: value for name, value in body.items() if name != key}
    opening = _encode(head)[:-1] + "," if head else "{"
    request.write(f"{opening}{_encode(key)}:[".encode())
    for start in range(0, len(rows), ROWS_PER_WRITE):
        if request.finished or getattr(request, "_disconnected", False):
            return NOT_DONE_YET
        piece = ",".join(_encode(row) for row in rows[start : start + ROWS_PER_WRITE])
        request.write((("," if start else "") + piece).encode("utf-8"))
        if pause is not None:
            await pause()
    return b"]}"
