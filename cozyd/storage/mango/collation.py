"""CouchDB's collation of JSON values, and byte keys that sort as it does."""

from __future__ import annotations

import functools
import math
import struct
import unicodedata
from typing import Any

# =============================================================================
# 1. Collation
# =============================================================================
# ICU's root collation puts ASCII punctuation and symbols in this order,
# before digits and letters.
_ASCII_SYMBOL_ORDER = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"
_SYMBOL_RANK = {char: rank for rank, char in enumerate(_ASCII_SYMBOL_ORDER, 1)}

# Groups of primary weights, in collation order. As in ICU, unassigned code
# points sort after every letter and U+FFFF last of all: "\ufff0" and
# "\uffff" are the usual high ends of string ranges.
(
    _GROUP_SPACE,
    _GROUP_ASCII_SYMBOL,
    _GROUP_SYMBOL,
    _GROUP_DIGIT,
    _GROUP_LETTER,
    _GROUP_UNASSIGNED,
    _GROUP_LAST,
) = range(1, 8)

# Type tags of collation keys, in collation order. 0 ends a list or object.
(
    _TAG_END,
    _TAG_NULL,
    _TAG_FALSE,
    _TAG_TRUE,
    _TAG_NUMBER,
    _TAG_STRING,
    _TAG_ARRAY,
    _TAG_OBJECT,
) = range(8)
_MEMBER = b"\x01"  # starts each member of an object (0 ends the object)


def collation_key(value: Any) -> bytes:
    """Bytes whose order is CouchDB's collation of JSON values."""
    out = bytearray()
    _append_key(out, value)
    return bytes(out)


def _append_key(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(_TAG_NULL)
    elif value is False:
        out.append(_TAG_FALSE)
    elif value is True:
        out.append(_TAG_TRUE)
    elif isinstance(value, (int, float)):
        out.append(_TAG_NUMBER)
        out += _number_key(value)
    elif isinstance(value, str):
        out.append(_TAG_STRING)
        out += string_key(value)
    elif isinstance(value, list):
        out.append(_TAG_ARRAY)
        for item in value:
            _append_key(out, item)
        out.append(_TAG_END)
    elif isinstance(value, dict):
        out.append(_TAG_OBJECT)
        for name, item in value.items():
            out += _MEMBER
            out += string_key(name)
            _append_key(out, item)
        out.append(_TAG_END)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _as_float(number: float) -> float:
    try:
        result = float(number)
    except OverflowError:
        result = math.inf if number > 0 else -math.inf
    return 0.0 if result == 0 else result  # -0.0 and 0.0 are the same number


def _number_key(number: float) -> bytes:
    # IEEE 754 bits, flipped so that unsigned byte order is numeric order.
    bits = struct.unpack(">Q", struct.pack(">d", _as_float(number)))[0]
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | (1 << 63)
    return bits.to_bytes(8, "big")


def string_key(text: str) -> bytes:
    """The sort key of a string: four levels, each ended by zeros.

    Primary weights (4 bytes each) compare base characters: whitespace,
    then symbols, then digits, then letters, case and accents ignored.
    Secondary weights (2 bytes) compare accents, tertiary weights (1 byte)
    compare case, and the last level (3 bytes a code point) breaks any
    remaining tie, so that equal keys mean equal strings.
    """
    if len(text) <= 64:
        return _short_string_key(text)
    return _compute_string_key(text)


@functools.lru_cache(maxsize=16384)
def _short_string_key(text: str) -> bytes:
    return _compute_string_key(text)


def _compute_string_key(text: str) -> bytes:
    primary = bytearray()
    secondary = bytearray()
    tertiary = bytearray()
    for char in unicodedata.normalize("NFD", text):
        weights = _char_weights(char)
        if weights is None:
            continue  # ignorable
        primaries, accent, case = weights
        if not primaries:  # a combining mark: an accent on the previous char
            secondary += accent.to_bytes(2, "big")
            continue
        for weight in primaries:
            primary += weight.to_bytes(4, "big")
            secondary += b"\x00\x01"
            tertiary.append(case)
    identical = b"".join((ord(char) + 1).to_bytes(3, "big") for char in text)
    return (
        bytes(primary)
        + b"\x00" * 4
        + bytes(secondary)
        + b"\x00" * 2
        + bytes(tertiary)
        + b"\x00"
        + identical
        + b"\x00" * 3
    )


@functools.lru_cache(maxsize=4096)
def _char_weights(char: str) -> tuple[tuple[int, ...], int, int] | None:
    """``(primary weights, accent weight, case weight)`` of one character
    of an NFD string, or None for a character collation ignores."""
    category = unicodedata.category(char)
    if category.startswith("M"):
        return (), min(0xFFFF, 0x100 + ord(char)), 0
    if category in ("Cc", "Cf") and not char.isspace():
        return None
    case = 2 if char.isupper() or category == "Lt" else 1
    # Case folding expands some letters (ß → ss): one weight per letter.
    return tuple(_primary_weight(c) for c in char.casefold()), 0, case


def _primary_weight(char: str) -> int:
    if char == "\uffff":
        return _GROUP_LAST << 24
    if char.isspace():
        return _GROUP_SPACE << 24 | ord(char)
    if char in _SYMBOL_RANK:
        return _GROUP_ASCII_SYMBOL << 24 | _SYMBOL_RANK[char]
    category = unicodedata.category(char)
    if category == "Nd":
        return _GROUP_DIGIT << 24 | unicodedata.digit(char)
    if category.startswith("N"):
        return _GROUP_DIGIT << 24 | (16 + ord(char))
    if category in ("Cn", "Co", "Cs"):
        return _GROUP_UNASSIGNED << 24 | ord(char)
    if category.startswith(("P", "S", "Z", "C")):
        return _GROUP_SYMBOL << 24 | ord(char)
    return _GROUP_LETTER << 24 | ord(char)


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 as CouchDB collates ``a`` and ``b``."""
    if _is_number(a) and _is_number(b):
        fa, fb = _as_float(a), _as_float(b)
        return (fa > fb) - (fa < fb)
    if isinstance(a, str) and isinstance(b, str):
        ka, kb = string_key(a), string_key(b)
    else:
        ka, kb = collation_key(a), collation_key(b)
    return (ka > kb) - (ka < kb)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_type(value: Any) -> str:
    """Mango's ``$type`` name of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _same_term(a: Any, b: Any) -> bool:
    """Exact equality of JSON terms as Erlang's ``=:=`` sees them: 1 and 1.0
    differ, true and 1 differ, and so do objects with their members in a
    different order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(
            _same_term(x, y) for x, y in zip(a, b, strict=False)
        )
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            ka == kb and _same_term(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=False)
        )
    return a == b
