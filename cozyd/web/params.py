"""Query-string and form parameters: one reader, one boolean and one
integer parser, with the reference's (Go's) semantics.

- ``query_param(request, name)``: the **first** value, as Go's
  ``QueryParam`` / ``FormValue`` (form fields of a POST are in
  ``request.args`` too); ``BadRequest`` when it is not UTF-8.
- ``parse_bool(text)``: Go's ``strconv.ParseBool`` (``1 t T TRUE true
  True`` / ``0 f F FALSE false False``), None for anything else — the
  caller picks the fallback; ``strict=True`` accepts only ``true`` and
  ``false`` (CouchDB's and JSON's words).
- ``parse_int(text)``: Go's ``strconv.Atoi`` on a 64-bit machine: an
  optional sign and digits, within the signed 64-bit range; None for
  anything else (too large included) — the caller picks the fallback or
  the 400.
"""

from __future__ import annotations

import re

from twisted.web.iweb import IRequest

from cozyd.errors import BadRequest

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_INTEGER = re.compile(r"[+-]?[0-9]+")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def query_param(request: IRequest, name: str) -> str | None:
    """The first value of ``name`` in the query (or the form), or None."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"the {name} parameter is not valid UTF-8") from None


def parse_bool(text: str | None, *, strict: bool = False) -> bool | None:
    if text is None:
        return None
    if strict:
        return True if text == "true" else False if text == "false" else None
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def parse_int(
    text: str | None, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX
) -> int | None:
    if text is None or len(text) > 21 or not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    if not minimum <= value <= maximum:
        return None
    return value


# -- the readers services use, built on the three above ------------------------------


def query_text(request: IRequest, name: str) -> str | None:
    return query_param(request, name)


def query_bool(request: IRequest, name: str) -> bool | None:
    """A boolean parameter (Go's words); 400 for another word."""
    text = query_param(request, name)
    if text is None or text == "":
        return None
    value = parse_bool(text.strip())
    if value is None:
        raise BadRequest(f"the {name} parameter must be true or false")
    return value


def query_int(request: IRequest, name: str, *, minimum: int | None = None) -> int | None:
    """An integer parameter (64-bit); 400 for anything else."""
    text = query_param(request, name)
    if text is None or text == "":
        return None
    value = parse_int(text.strip())
    if value is None:
        raise BadRequest(f"the {name} parameter must be an integer (64 bits at most)")
    if minimum is not None and value < minimum:
        raise BadRequest(f"the {name} parameter must be at least {minimum}")
    return value


def query_list(request: IRequest, name: str) -> tuple[str, ...] | None:
    text = query_param(request, name)
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def form_value(request: IRequest, name: str) -> str:
    """A form field or query parameter, "" when absent."""
    return query_param(request, name) or ""
