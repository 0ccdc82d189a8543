"""``$regex`` on RE2: matching time linear in the text, whatever the pattern."""

from __future__ import annotations

import functools
import re
from typing import Any

import re2

from cozyd.storage.mango.common import _json, mango_error

# Regular expressions run on RE2, whose matching time is linear in the
# text: a pattern such as "(a+)+$" cannot stall the server. RE2 has no
# backreferences nor lookarounds; patterns that need them are refused.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=256)
def _compiled_regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _check_regex(pattern: str) -> None:
    try:
        _compiled_regex(pattern)
    except re2.error as e:
        reason = f"Bad argument for operator $regex: {_json(pattern)}"
        detail = e.args[0] if e.args else b""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if detail:
            reason += f" ({detail}"
            if _python_regex_compiles(pattern):
                reason += "; backreferences and lookarounds are not supported"
            reason += ")"
        raise mango_error("bad_arg", reason) from None


def _python_regex_compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    return True
