"""JWTs of an instance, as cozy-stack issues and checks them.

All tokens are HS512 JWTs signed with one of the instance's secrets,
chosen by the audience. They carry no ``exp``: a token expires
``validity(audience)`` seconds after its ``iat``. The issuer is the
instance's domain, so a token of one instance is refused by every other
(wrong key, and wrong issuer).
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs
import jwt

from cozyd.errors import BadRequest, ExpiredToken, InvalidToken
from cozyd.instance.model import Instance

APP = "app"
KONNECTOR = "konn"
CLI = "cli"
ACCESS = "access"
REFRESH = "refresh"
REGISTRATION = "registration"
SHARE = "share"

#: Names accepted by the admin API's ``Audience`` parameter.
AUDIENCE_NAMES = {
    "app": APP,
    "webapp": APP,
    "konn": KONNECTOR,
    "konnector": KONNECTOR,
    "cli": CLI,
    "access": ACCESS,
    "access-token": ACCESS,
    "refresh": REFRESH,
    "refresh-token": REFRESH,
}

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_ALGORITHM = "HS512"


def validity(audience: str, session_id: str = "") -> float | None:
    """Seconds a token of ``audience`` stays valid; None: no expiry."""
    if audience == APP:
        return DAY if session_id else 30 * MINUTE
    if audience in (KONNECTOR, CLI):
        return 30 * MINUTE
    if audience == ACCESS:
        return 7 * DAY
    return None


def key_for(instance: Instance, audience: str) -> bytes:
    if audience in (APP, KONNECTOR):
        return instance.session_secret
    if audience == CLI:
        return instance.cli_secret
    if audience in (ACCESS, REFRESH, REGISTRATION, SHARE):
        return instance.oauth_secret
    raise InvalidToken()


@attrs.frozen
class Claims:
    audience: str
    issuer: str
    issued_at: int
    subject: str = ""
    scope: str = ""
    session_id: str = ""
    stamp: str = ""


def issue(
    instance: Instance,
    audience: str,
    subject: str,
    *,
    issued_at: float,
    scope: str = "",
    session_id: str = "",
    stamp: str = "",
    token_id: str = "",
) -> str:
    """``token_id`` (the ``jti`` claim) makes two tokens of the same subject
    and second differ: share codes are looked up by their value."""
    if audience not in (APP, KONNECTOR, CLI, ACCESS, REFRESH, REGISTRATION, SHARE):
        raise BadRequest(f"unknown token audience {audience!r}")
    claims: dict[str, Any] = {
        "aud": [audience],
        "iss": instance.domain,
        "iat": int(issued_at),
        "sub": subject,
    }
    if scope:
        claims["scope"] = scope
    if session_id:
        claims["session_id"] = session_id
    if stamp:
        claims["stamp"] = stamp
    if token_id:
        claims["jti"] = token_id
    return jwt.encode(claims, key_for(instance, audience), algorithm=_ALGORITHM)


class VerifiedTokens:
    """Tokens already verified, with the key that verified them.

    Decoding a JWT costs far more than the request it authorises; a token
    seen again is accepted from here only if the instance would pick the
    very same key for it today (a rotated secret invalidates it) and its
    lifetime is re-checked on every use.
    """

    def __init__(self, size: int = 10_000):
        self._size = size
        self._entries: OrderedDict[str, tuple[bytes, Claims]] = OrderedDict()

    def get(self, instance: Instance, token: str) -> Claims | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        key, claims = entry
        if claims.issuer != instance.domain or not hmac.compare_digest(
            key, key_for(instance, claims.audience)
        ):
            return None
        self._entries.move_to_end(token)
        return claims

    def put(self, instance: Instance, token: str, claims: Claims) -> None:
        self._entries[token] = (key_for(instance, claims.audience), claims)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def check_lifetime(claims: Claims, now: float) -> None:
    lifetime = validity(claims.audience, claims.session_id)
    if lifetime is not None and now > claims.issued_at + lifetime:
        raise ExpiredToken()


def parse(
    instance: Instance,
    token: str,
    *,
    now: float,
    audiences: tuple[str, ...] | None = None,
    verified: VerifiedTokens | None = None,
) -> Claims:
    """Check a token of ``instance``; InvalidToken or ExpiredToken if not good.

    ``audiences`` restricts which audiences are acceptable here;
    ``verified`` remembers tokens already checked.
    """
    if verified is not None:
        known = verified.get(instance, token)
        if known is not None:
            if audiences is not None and known.audience not in audiences:
                raise InvalidToken()
            check_lifetime(known, now)
            return known
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidToken() from None
    if header.get("alg") != _ALGORITHM:
        raise InvalidToken()
    audience = _single_audience(unverified)
    if audiences is not None and audience not in audiences:
        raise InvalidToken()
    try:
        claims = jwt.decode(
            token,
            key_for(instance, audience),
            algorithms=[_ALGORITHM],
            options={"verify_aud": False, "verify_iat": False, "require": ["iat", "iss"]},
        )
    except jwt.PyJWTError:
        raise InvalidToken() from None
    issued_at = claims.get("iat")
    if not isinstance(issued_at, (int, float)) or claims.get("iss") != instance.domain:
        raise InvalidToken()
    result = Claims(
        audience=audience,
        issuer=claims["iss"],
        issued_at=int(issued_at),
        subject=_text(claims, "sub"),
        scope=_text(claims, "scope"),
        session_id=_text(claims, "session_id"),
        stamp=_text(claims, "stamp"),
    )
    check_lifetime(result, now)
    if verified is not None:
        verified.put(instance, token, result)
    return result


def _single_audience(claims: Mapping[str, Any]) -> str:
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) == 1:
        audience = audience[0]
    if not isinstance(audience, str):
        raise InvalidToken()
    return audience


def _text(claims: Mapping[str, Any], key: str) -> str:
    value = claims.get(key, "")
    if not isinstance(value, str):
        raise InvalidToken()
    return value
