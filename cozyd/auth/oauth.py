"""The OAuth2 authorization-code flow: access codes, PKCE and the grants.

An access code is what ``POST /auth/authorize`` hands to the client through
the user's browser. It is random, single-use and good for five minutes. It
lives in ``io.cozy.oauth.access_codes`` (so it survives a restart and works
across nodes) under the SHA-256 of the code, so the database never holds a
usable code. Using a code deletes its document with the revision read: of
two concurrent exchanges only one can win.

The token endpoint then trades a code (``authorization_code`` grant) or a
refresh token (``refresh_token`` grant) for tokens, after checking the
client's secret in constant time, and the PKCE verifier when the code was
issued with a challenge (only ``S256``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from cozyd.auth import tokens
from cozyd.auth.clients import OAuthClients, iso_time, linked_app_slug, secrets_equal
from cozyd.documents import DatabaseNotFound, DocConflict, DocNotFound, Documents
from cozyd.errors import CozyError
from cozyd.instance.model import Instance

ACCESS_CODES_DOCTYPE = "io.cozy.oauth.access_codes"
ACCESS_CODE_VALIDITY = 5 * 60.0
ACCESS_CODE_BYTES = 24
PKCE_METHOD = "S256"
#: Expired codes removed (at most) each time a code is created.
PURGE_BATCH = 20


class TokenRequestError(CozyError):
    """An error of the token endpoint: 400 ``{"error": message}``."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message, status=status)

    def body(self) -> dict[str, str]:
        return {"error": self.detail}


def code_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636, S256)."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_matches(verifier: str, challenge: str) -> bool:
    if not verifier:
        return False
    return hmac.compare_digest(
        code_challenge(verifier).encode("ascii"), challenge.encode("ascii", "replace")
    )


def _code_key(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8", "replace")).hexdigest()


@attrs.frozen
class AccessCode:
    client_id: str
    scope: str
    issued_at: float
    challenge: str = ""


class AccessCodes:
    def __init__(
        self,
        documents: Documents,
        *,
        seconds: Callable[[], float] = time.time,
        validity: float = ACCESS_CODE_VALIDITY,
    ):
        self._documents = documents
        self._seconds = seconds
        self._validity = validity

    async def create(
        self, instance: Instance, client_id: str, scope: str, challenge: str = ""
    ) -> str:
        code = secrets.token_urlsafe(ACCESS_CODE_BYTES)
        now = self._seconds()
        doc: dict[str, Any] = {
            "_id": _code_key(code),
            "client_id": client_id,
            "issued_at": int(now),
            "scope": scope,
        }
        if challenge:
            doc["code_challenge"] = challenge
        documents = self._documents
        try:
            await documents.put(instance, ACCESS_CODES_DOCTYPE, doc)
        except DatabaseNotFound:
            await documents.ensure_db(instance, ACCESS_CODES_DOCTYPE)
            await documents.create_index(
                instance,
                ACCESS_CODES_DOCTYPE,
                ["issued_at"],
                ddoc="by-issued-at",
                name="by-issued-at",
            )
            await documents.put(instance, ACCESS_CODES_DOCTYPE, doc)
        await self._purge_expired(instance, now)
        return code

    async def consume(self, instance: Instance, code: str) -> AccessCode | None:
        """The code's grant, once: None if unknown, used or expired."""
        if not code or len(code) > 512:
            return None
        try:
            doc = await self._documents.get(instance, ACCESS_CODES_DOCTYPE, _code_key(code))
        except (DocNotFound, DatabaseNotFound):
            return None
        try:
            await self._documents.delete(
                instance, ACCESS_CODES_DOCTYPE, doc["_id"], doc["_rev"], doc=doc
            )
        except (DocConflict, DocNotFound):
            return None  # another request used it first
        issued_at = doc.get("issued_at")
        if (
            not isinstance(issued_at, (int, float))
            or self._seconds() > issued_at + self._validity
        ):
            return None
        return AccessCode(
            client_id=str(doc.get("client_id", "")),
            scope=str(doc.get("scope", "")),
            issued_at=issued_at,
            challenge=str(doc.get("code_challenge", "")),
        )

    async def _purge_expired(self, instance: Instance, now: float) -> None:
        """Drop a few codes nobody exchanged, so the database stays small."""
        try:
            result = await self._documents.find(
                instance,
                ACCESS_CODES_DOCTYPE,
                {
                    "selector": {"issued_at": {"$lt": int(now - self._validity)}},
                    "fields": ["_id", "_rev"],
                    "limit": PURGE_BATCH,
                },
            )
            for doc in result["docs"]:
                try:
                    await self._documents.delete(
                        instance, ACCESS_CODES_DOCTYPE, doc["_id"], doc["_rev"], doc=doc
                    )
                except (DocConflict, DocNotFound):
                    pass
        except CozyError:
            pass  # housekeeping only


@attrs.frozen
class TokenResponse:
    access_token: str
    scope: str
    refresh_token: str = ""

    def json(self) -> dict[str, str]:
        body = {
            "token_type": "bearer",
            "scope": self.scope,
            "access_token": self.access_token,
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return body


class TokenEndpoint:
    """``POST /auth/access_token``: checks the client, then the grant."""

    def __init__(
        self,
        clients: OAuthClients,
        codes: AccessCodes,
        *,
        seconds: Callable[[], float] = time.time,
    ):
        self._clients = clients
        self._codes = codes
        self._seconds = seconds

    async def exchange(self, instance: Instance, form: Mapping[str, str]) -> TokenResponse:
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
        if not grant:
            raise TokenRequestError("the grant_type parameter is mandatory")
        if not client_id:
            raise TokenRequestError("the client_id parameter is mandatory")
        if not secret:
            raise TokenRequestError("the client_secret parameter is mandatory")
        client = await self._clients.get(instance, client_id)
        if client is None:
            raise TokenRequestError("the client must be registered")
        if not secrets_equal(secret, str(client.get("client_secret", ""))):
            raise TokenRequestError("invalid client_secret")
        client_id = client["_id"]
        now = self._seconds()
        refresh = ""
        if grant == "authorization_code":
            code = form.get("code", "")
            if not code:
                raise TokenRequestError("the code parameter is mandatory")
            grant_of_code = await self._codes.consume(instance, code)
            if grant_of_code is None or not secrets_equal(
                grant_of_code.client_id, client_id
            ):
                raise TokenRequestError("invalid code")
            if grant_of_code.challenge and not pkce_matches(
                form.get("code_verifier", ""), grant_of_code.challenge
            ):
                raise TokenRequestError("invalid code_verifier")
            scope = grant_of_code.scope
            refresh = tokens.issue(
                instance, tokens.REFRESH, client_id, issued_at=now, scope=scope
            )
        elif grant == "refresh_token":
            try:
                claims = tokens.parse(
                    instance,
                    form.get("refresh_token", ""),
                    now=now,
                    audiences=(tokens.REFRESH,),
                )
            except CozyError:
                raise TokenRequestError("invalid refresh token") from None
            if not secrets_equal(claims.subject, client_id):
                raise TokenRequestError("invalid refresh token")
            # Linked apps (software_id registry://<slug>) get their webapp's.
            linked = linked_app_slug(str(client.get("software_id") or ""))
            scope = f"@io.cozy.apps/{linked}" if linked else claims.scope
        else:
            raise TokenRequestError("invalid grant type")
        access = tokens.issue(
            instance, tokens.ACCESS, client_id, issued_at=now, scope=scope
        )
        await self._clients.mark_used(instance, client, last_refreshed_at=iso_time(now))
        return TokenResponse(access_token=access, scope=scope, refresh_token=refresh)
