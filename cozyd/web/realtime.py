"""``/realtime``: the websocket of the reference, and ``POST /realtime/:doctype/:id``.

``GET /realtime/`` with an ``Upgrade: websocket`` is handed to autobahn
(``cozyd.realtime.websocket``): this module takes the connection over from
twisted.web as autobahn's ``WebSocketResource`` does, with the instance
the public root resolved from the Host and the way to check the AUTH token:
the ``Guard``, on the handshake request, with the token as its bearer (so
any token the stack accepts works, and an app token bound to the owner's
session needs the session cookie the browser sent with the handshake).
The connection leaves the HTTP site's books then (the site's drain on stop
waits for HTTP requests; the websockets are closed by the realtime service).

``POST /realtime/:doctype/:id`` publishes a document that is not stored:
subscribers get ``NOTIFIED`` with the body (and its ``_id``). It needs POST
on that document; an unreadable doctype is a 400; 204 otherwise.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from cozyd.documents import check_readable
from cozyd.errors import BadRequest, CozyError, ServiceUnavailable
from cozyd.permissions.rules import PermissionSet, document_field, type_covers
from cozyd.realtime.fanout import Fanout
from cozyd.realtime.websocket import (
    PERMISSION_TYPE,
    AuthenticationFailed,
    RealtimeFactory,
)
from cozyd.web.bodies import read_json
from cozyd.web.common import error_response, instance_of, jsonapi_errors
from cozyd.web.guard import Guard, authorize_document
from cozyd.web.routing import Service, json_body, route, state_of, token

log = Logger()

#: Largest body of ``POST /realtime/:doctype/:id``.
MAX_NOTIFY_BODY = 64 * 1024

PASSPHRASE_ID = "io.cozy.settings.passphrase"
INSTANCE_SETTINGS_ID = "io.cozy.settings.instance"


def _permission_target(doctype: str, doc_id: str | None) -> tuple[str, str | None]:
    """The doctype and id a subscription's permission is checked on (the
    reference's special cases of synthetic documents)."""
    if doctype == "io.cozy.settings" and doc_id == PASSPHRASE_ID:
        doc_id = INSTANCE_SETTINGS_ID
    return PERMISSION_TYPE.get(doctype, doctype), doc_id


class TokenAccess:
    """What a token's permission set lets a websocket read."""

    def __init__(self, permissions: PermissionSet):
        self.permissions = permissions

    def may_subscribe(self, doctype: str, doc_id: str | None) -> bool:
        ptype, pid = _permission_target(doctype, doc_id)
        permissions = self.permissions
        if permissions.allows_collection("GET", ptype):
            return True
        if pid is None:
            return False  # a whole doctype needs a rule without values
        if permissions.allows_document("GET", ptype, pid, None):
            return True  # its id is in the values of a rule
        # A rule with a selector may cover the document: each event is then
        # checked against it (``may_read``).
        return any(
            rule.selector and "GET" in rule.verbs and type_covers(rule.type, ptype)
            for _, rule in permissions.rules
        )

    def may_read(self, doctype: str, doc_id: str, doc: Any) -> bool:
        ptype, pid = _permission_target(doctype, doc_id)
        permissions = self.permissions
        if permissions.allows_collection("GET", ptype):
            return True
        field = document_field(doc) if isinstance(doc, dict) else None
        return permissions.allows_document("GET", ptype, pid or "", field)


class RealtimeService(Service):
    """``/realtime``: the websocket (``GET /realtime/``) and notifications."""

    errors = jsonapi_errors

    def __init__(self, guard: Guard, fanout: Fanout, factory: RealtimeFactory):
        super().__init__()
        self.guard = guard
        self.fanout = fanout
        self.factory = factory

    # -- the websocket ---------------------------------------------------------
    def render(self, request: IRequest):
        below = [s for s in request.postpath if s]
        if not below and request.method in (b"GET", b"HEAD"):
            return self.upgrade(request)
        return super().render(request)

    @route("", "GET")
    async def websocket(self, request: IRequest):
        # (Reached only by a request without Upgrade: see ``upgrade``.)
        raise BadRequest("this is a websocket endpoint: the Upgrade header is missing")

    def upgrade(self, request: IRequest):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket" or request.method != b"GET":
            return super().render(request)
        if self.factory.full:
            return error_response(
                request, ServiceUnavailable("too many realtime connections")
            )
        channel = request.channel
        transport = getattr(channel, "transport", None)
        if transport is None:  # HTTP/2, or an in-memory request
            request.setResponseCode(426)
            request.setHeader(b"Upgrade", b"websocket")
            return error_response(
                request, CozyError("websockets need HTTP/1.1", status=426, code="upgrade")
            )
        instance = instance_of(request)
        protocol = self.factory.connection(
            transport.getPeer(),
            instance=instance,
            domain=instance.domain,
            authenticate=lambda token: self._authenticate(request, token),
        )
        self._take_over(request, channel, transport, protocol)
        return NOT_DONE_YET

    def _take_over(self, request: IRequest, channel: Any, transport: Any, protocol: Any):
        """What autobahn's ``WebSocketResource.render`` does, plus leaving
        the site's books (its drain waits for HTTP requests only)."""
        site = getattr(channel, "site", None)
        channels = getattr(site, "channels", None)
        if channels is not None:
            for held in list(channels):
                if getattr(held, "_channel", held) is channel:
                    channels.discard(held)
        channel.transport = None
        # The HTTP channel was the transport's producer: it is done.
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        producer = getattr(transport, "_networkProducer", transport)
        resume = getattr(producer, "resumeProducing", None)
        if resume is not None:
            resume()
        # autobahn parses the handshake itself: give it the request again.
        data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
        for name, values in request.requestHeaders.getAllRawHeaders():
            data += name + b": " + b",".join(values) + b"\r\n"
        data += b"\r\n"
        protocol.dataReceived(data)

    async def _authenticate(self, request: IRequest, token: str) -> TokenAccess:
        """The AUTH token, checked as the bearer of the handshake request."""
        state = state_of(request)
        state.permissions = None
        request.requestHeaders.setRawHeaders(
            b"authorization", [b"Bearer " + token.encode("utf-8", "replace")]
        )
        try:
            permissions = await self.guard.permissions(request)
        except CozyError as exc:
            if exc.status >= 500:
                raise
            raise AuthenticationFailed(exc.code) from None
        finally:
            request.requestHeaders.removeHeader(b"authorization")
        return TokenAccess(permissions)

    # -- notifications -----------------------------------------------------------
    @route(
        "{doctype}/{doc_id}",
        "POST",
        auth=token(collection=False),
        body=json_body(MAX_NOTIFY_BODY),
    )
    async def notify(self, request: IRequest, doctype: str, doc_id: str):
        try:
            check_readable(doctype)
        except CozyError as exc:
            raise BadRequest(str(exc)) from None
        doc = read_json(request, MAX_NOTIFY_BODY)
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object")
        doc["_id"] = doc_id
        authorize_document(request, doctype, doc_id, doc, verb="POST")
        self.fanout.notify(instance_of(request), doctype, doc_id, doc)
        request.setResponseCode(204)
        return b""
