"""Instance domains: normalising a Host header and validating new domains.

A domain is what a client puts in ``Host``: a host name, optionally with a
port (``alice.cozy.localhost:8080``). It is compared lower-cased, with IDNA
(``xn--``) labels decoded to Unicode, as cozy-stack does.
"""

from __future__ import annotations

import idna

from cozyd.errors import Unprocessable

MAX_DOMAIN_LENGTH = 253
FORBIDDEN_CHARACTERS = set(" /,;&?#@|='\"\\\t\r\n\0")


class InvalidDomain(Unprocessable):
    code = "illegal_domain"


def normalize_host(host: str) -> str:
    """Lower-case, trim and IDNA-decode a Host header value (no validation
    beyond what decoding needs; unknown hosts simply match no instance)."""
    host = host.strip().lower().rstrip(".")
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        name, port = host, ""
    name = name.rstrip(".")
    if "xn--" in name:
        try:
            name = idna.decode(name)
        except idna.IDNAError:
            pass
    return f"{name}:{port}" if port else name


def validate_domain(raw: str) -> str:
    """The normalised domain, or ``InvalidDomain`` naming the broken rule."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidDomain("the domain must not be empty")
    for char in raw.strip():
        if char in FORBIDDEN_CHARACTERS or ord(char) < 32 or ord(char) == 127:
            raise InvalidDomain(
                f"the domain must not contain {char!r} (spaces, control characters and "
                "any of / , ; & ? # @ | = ' \" \\ are not allowed)"
            )
    domain = normalize_host(raw)
    name, sep, port = domain.rpartition(":")
    if not sep:
        name, port = domain, ""
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidDomain("the port of the domain must be a number between 1 and 65535")
    if ":" in name:
        raise InvalidDomain("the domain must contain at most one ':' (before the port)")
    if name in ("", ".", "..") or name.startswith(".") or ".." in name:
        raise InvalidDomain(
            "the domain must be a host name: no leading dot, no empty label, not '.' "
            "or '..'"
        )
    if len(domain) > MAX_DOMAIN_LENGTH:
        raise InvalidDomain(f"the domain must be at most {MAX_DOMAIN_LENGTH} characters")
    if any(len(label) > 63 for label in name.split(".")):
        raise InvalidDomain("each label of the domain must be at most 63 characters")
    if name.startswith("-") or any(
        label.startswith("-") or label.endswith("-") for label in name.split(".")
    ):
        raise InvalidDomain("a label of the domain must not start or end with '-'")
    return domain


def split_app_host(host: str) -> tuple[str, str]:
    """A normalised host as (instance host, app slug), the apps of an instance
    being on its nested sub-domains: ``drive.alice.example.com`` →
    (``alice.example.com``, ``drive``); no dot → (host, ``""``). Whether the
    first part is an instance is for the registry to say."""
    slug, dot, rest = host.partition(".")
    return (rest, slug) if dot and slug and rest else (host, "")
