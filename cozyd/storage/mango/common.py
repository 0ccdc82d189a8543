"""What the Mango modules share: the document type and CouchDB-named errors."""

from __future__ import annotations

import json
from typing import Any

from cozyd.storage.interface import InvalidRequest

Doc = dict[str, Any]


def mango_error(code: str, reason: str) -> InvalidRequest:
    """A 400 error named as CouchDB's Mango names it."""
    return InvalidRequest(reason, code=code)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
