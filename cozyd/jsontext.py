"""The JSON encoders and decoder of the request path, each made once.

``json.dumps(value, separators=...)`` and ``json.loads(text, parse_constant=...)``
build a new encoder or decoder (and its scanner) on every call; these are
built at import and shared (they keep no state between calls).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: Compact JSON text, non-ASCII kept as it is (answers, logs).
compact: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode

#: The same, refusing NaN and the infinities (``ValueError``): stored bodies.
strict: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode

#: The same with sorted keys (revision ids).
canonical: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True
).encode


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: A decoder of JSON text that refuses NaN and the infinities (``ValueError``).
decode_strict: Callable[[str], Any] = json.JSONDecoder(
    parse_constant=_refuse_constant
).decode
