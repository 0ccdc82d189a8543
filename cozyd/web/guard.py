"""Who is calling, and may they: the one place routes check permissions.

``Guard.permissions(request)`` finds the caller's token (``Authorization:
Bearer``, the password of Basic auth, or ``?bearer_token=``), verifies it
against the request's instance and resolves its permission set (cached on
the request). A ``?registerToken=`` of an instance still onboarding grants
the tiny "register" set, as cozy-stack does.

Routes declare what they need in their declaration
(``cozyd.web.routing``)::

    @route("{doctype}/_find", "POST", auth=token(param("doctype"), verb="GET"))
    async def find(self, request, doctype): ...

``token`` checks the verb (by default the request method's) on the whole
doctype (collection routes). Routes about one document use ``token(...,
collection=False)`` and then call ``authorize_document(request, doctype,
doc_id, doc)`` once they have read the document. The permission set is
kept in the request's ``RequestState``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest

from cozyd.auth import tokens
from cozyd.errors import CozyError, InvalidToken, NoToken, PermissionDenied
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import PermissionResolver
from cozyd.permissions.rules import PermissionSet, Rule, document_field, verb_of
from cozyd.permissions.sharing import SHORTCODE_RE, ShareLinks
from cozyd.web.routing import state_of


def request_token(request: IRequest) -> str | None:
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    if header.startswith("Bearer "):
        return header[7:].strip() or None
    if header.startswith("Basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    values = request.args.get(b"bearer_token")
    return values[-1].decode("latin-1") if values else None


def request_cookie(request: IRequest, name: str) -> str | None:
    value = request.getCookie(name.encode("ascii", "replace"))
    return value.decode("latin-1") if value else None


def register_token_matches(request: IRequest, instance: Instance) -> bool:
    values = request.args.get(b"registerToken")
    if not values or not instance.register_token:
        return False
    try:
        given = bytes.fromhex(values[-1].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given, instance.register_token)


def holds_cli_token(request: IRequest, instance: Instance, now: float) -> bool:
    """Whether the request carries a valid CLI token of ``instance`` (the
    operator's tools, which some checks let through)."""
    token = request_token(request)
    if not token:
        return False
    try:
        tokens.parse(instance, token, now=now, audiences=(tokens.CLI,))
    except CozyError:
        return False
    return True


REGISTER_SET = PermissionSet(
    type="register",
    rules=(
        (
            "register",
            Rule(
                type="io.cozy.settings",
                verbs=frozenset({"GET"}),
                values=("io.cozy.settings.instance",),
            ),
        ),
    ),
)


class Guard:
    def __init__(
        self,
        resolver: PermissionResolver,
        *,
        seconds: Callable[[], float],
        session_id_of: Callable[[IRequest, Instance], Any] | None = None,
        shares: ShareLinks | None = None,
    ):
        self._resolver = resolver
        #: Shares by link: share codes, shortcodes (None: not accepted).
        self.shares = shares
        self._seconds = seconds
        self._verified = tokens.VerifiedTokens()
        self._session_id_of = session_id_of

    async def permissions(self, request: IRequest) -> PermissionSet:
        state = state_of(request)
        if state.permissions is not None:
            return state.permissions
        instance = state.instance
        token = request_token(request)
        if token is None:
            if register_token_matches(request, instance):
                result = REGISTER_SET
            else:
                raise NoToken()
        else:
            audiences: tuple[str, ...] = (
                tokens.APP,
                tokens.KONNECTOR,
                tokens.CLI,
                tokens.ACCESS,
            )
            if self.shares is not None:
                audiences += (tokens.SHARE,)
                if SHORTCODE_RE.match(token):
                    token = await self.shares.token_for_shortcode(instance, token)
            claims = tokens.parse(
                instance,
                token,
                now=self._seconds(),
                audiences=audiences,
                verified=self._verified,
            )
            if claims.session_id:
                session_id = None
                if self._session_id_of is not None:
                    session_id = await self._session_id_of(request, instance)
                if session_id != claims.session_id:
                    raise InvalidToken()
            if claims.audience == tokens.SHARE and self.shares is not None:
                result = await self.shares.permissions_for(
                    instance, token, claims, lambda name: request_cookie(request, name)
                )
            else:
                result = await self._resolver.for_claims(instance, claims)
        state.permissions = result
        return result


def permissions_of(request: IRequest) -> PermissionSet:
    """The set the route's token policy resolved for this request."""
    permissions = state_of(request).permissions
    if permissions is None:
        raise RuntimeError("no permissions were checked for this request")
    return permissions


def authorize_document(
    request: IRequest,
    doctype: str,
    doc_id: str,
    doc: dict[str, Any] | None = None,
    *,
    verb: str | None = None,
) -> None:
    wanted = verb or verb_of(request.method.decode("ascii"))
    field = document_field(doc) if doc is not None else None
    if not permissions_of(request).allows_document(wanted, doctype, doc_id, field):
        raise PermissionDenied()
