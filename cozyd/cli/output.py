"""What cozyctl prints, and where.

The contract: stdout carries only what a script may parse (a token, a JSON
document, a listing); every message, prompt and error goes to stderr. The
streams are looked up on each call so that tests capturing ``sys.stdout``
and ``sys.stderr`` see everything.
"""

from __future__ import annotations

import json
import sys
from typing import Any


class CLIError(Exception):
    """An expected failure: ``main`` prints ``Error: <message>`` and exits 1.

    ``context`` lines (e.g. ``Failed to create instance for domain d``) are
    printed to stderr before the error line.
    """

    def __init__(self, message: str, *, context: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.context = context

    def with_context(self, *lines: str) -> CLIError:
        return CLIError(self.message, context=(*lines, *self.context))


def out(text: str = "") -> None:
    """One line of script-readable output on stdout."""
    sys.stdout.write(text + "\n")


def info(text: str = "", *, end: str = "\n") -> None:
    """A message for the human, on stderr."""
    sys.stderr.write(text + end)
    sys.stderr.flush()


def dumps_indented(obj: Any, indent: int | str = 2) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False)


def dumps_line(obj: Any) -> str:
    """Compact JSON on one line, as Go's json.Encoder writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def format_bytes(size: int) -> str:
    """A size in SI units, as go-humanize's ``Bytes`` writes it ("3.0 GB")."""
    if size < 10:
        return f"{size} B"
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    exp = 0
    value = float(size)
    while value >= 1000 and exp < len(units) - 1:
        value /= 1000
        exp += 1
    value = int(value * 10 + 0.5) / 10
    return f"{value:.0f} {units[exp]}" if value >= 10 else f"{value:.1f} {units[exp]}"
