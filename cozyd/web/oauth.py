"""OAuth2 on the public site: ``/auth/register``, ``/auth/authorize``,
``/auth/access_token`` (``OAuthService``) and ``/settings/clients``
(``ClientsSettingsService``).

Errors are rendered as cozy-stack renders them on these routes: the
registration protocol answers ``{"error", "error_description"}``, the token
endpoint ``{"error": message}``, the authorize pages an HTML error page.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.auth.clients import (
    LOGIN_SCOPE,
    OAuthClients,
    RegistrationError,
    linked_app_slug,
    public_view,
)
from cozyd.auth.oauth import PKCE_METHOD, AccessCodes, TokenEndpoint, TokenRequestError
from cozyd.errors import CozyError, EchoError
from cozyd.i18n import N_
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import CLIENTS_DOCTYPE
from cozyd.permissions.rules import InvalidPermission, PermissionSet
from cozyd.permissions.words import describe_rule, describe_scope
from cozyd.web.bodies import read_json
from cozyd.web.common import (
    JSONAPI,
    instance_of,
    json_response,
    jsonapi_errors,
    query_int,
    query_text,
)
from cozyd.web.guard import Guard, holds_cli_token
from cozyd.web.pages import Pages
from cozyd.web.routing import Service, json_body, route, token

log = Logger()

#: Largest JSON body accepted by the registration routes.
MAX_REGISTRATION_BODY = 64 * 1024

SessionOf = Callable[[IRequest, Instance], Awaitable[Any]]


class JSONError(CozyError):
    """Answered as ``{"error": detail}`` (cozy-stack's ``c.JSON`` errors)."""


class LoginScopeRefused(EchoError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("Not authorized to create client with given parameters")


class PageError(CozyError):
    """Answered as the HTML error page (localized message)."""

    def __init__(self, status: int, key: str):
        super().__init__(key, status=status)
        self.key = key


#: The messages of the authorize pages' errors (cozyd.i18n catalogs).
PAGE_ERRORS = {
    "no_state": N_("The state parameter is mandatory"),
    "no_client_id": N_("The client_id parameter is mandatory"),
    "no_redirect_uri": N_("The redirect_uri parameter is mandatory"),
    "no_scope": N_("The scope parameter is mandatory"),
    "no_client": N_("The client must be registered"),
    "bad_redirect_uri": N_("The redirect_uri parameter doesn't match the registered ones"),
    "bad_response_type": N_("Invalid response type"),
    "bad_scope": N_("Invalid scope"),
    "bad_challenge_method": N_("Invalid challenge code method"),
    "no_challenge": N_(
        "The code_challenge parameter must be given when code_challenge_method is present"
    ),
    "not_logged_in": N_("You must be authenticated"),
}


# -- request parameters ------------------------------------------------------------


@attrs.frozen
class AuthorizeParams:
    state: str
    client_id: str
    redirect_uri: str
    scope: str
    response_type: str
    challenge: str
    challenge_method: str

    @classmethod
    def from_request(cls, request: IRequest) -> AuthorizeParams:
        def arg(name: str) -> str:
            return query_text(request, name) or ""

        return cls(
            state=arg("state"),
            client_id=arg("client_id"),
            redirect_uri=arg("redirect_uri"),
            scope=arg("scope").strip(),
            response_type=arg("response_type"),
            challenge=arg("code_challenge"),
            challenge_method=arg("code_challenge_method"),
        )


def redirect_with(uri: str, **params: str) -> str:
    """``uri`` with ``params`` set in its query (sorted, as cozy-stack
    encodes it), its fragment dropped and an empty one added, so that a
    fragment the browser kept cannot leak into the client."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    encoded = urlencode(sorted(query.items()))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, encoded, "")) + "#"


def read_registration(request: IRequest) -> Any:
    """The JSON body of a registration request (small, shallow)."""
    return read_json(
        request,
        MAX_REGISTRATION_BODY,
        max_depth=8,
        bad=lambda reason: RegistrationError(
            "invalid_client_metadata", "the request body must be JSON"
        ),
    )


def _accepts_json(request: IRequest) -> None:
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    if accept != "*/*" and "application/json" not in accept:
        raise JSONError("bad_accept_header", status=400)


def _sends_json(request: IRequest) -> None:
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if not content_type.startswith("application/json"):
        raise JSONError("bad_content_type", status=400)


#: A CSP source expression we may add (scheme and host only, nothing odd).
_CSP_SOURCE = re.compile(r"^[a-z][a-z0-9+.-]*:(//[A-Za-z0-9.-]+(:[0-9]+)?)?$")


def allow_form_target(policy: str, redirect_uri: str) -> str:
    """``policy`` letting the consent form lead to ``redirect_uri``: Chromium
    applies ``form-action`` to the redirect that follows the POST. Only the
    client's origin (or custom scheme) is added, and only to a policy that
    restricts forms to 'self'."""
    parts = urlsplit(redirect_uri)
    scheme = parts.scheme.lower()
    target = f"{scheme}://{parts.netloc}" if scheme in ("http", "https") else f"{scheme}:"
    if "form-action 'self'" not in policy or not _CSP_SOURCE.fullmatch(target):
        return policy
    return policy.replace("form-action 'self'", f"form-action 'self' {target}", 1)


def _web_link(value: Any) -> str:
    """A client-declared URL, if it is safe to link to (http or https)."""
    if not isinstance(value, str):
        return ""
    try:
        scheme = urlsplit(value).scheme.lower()
    except ValueError:
        return ""
    return value if scheme in ("http", "https") else ""


def _bearer(request: IRequest) -> str | None:
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    return header[7:].strip() if header.startswith("Bearer ") else None


def _no_store(request: IRequest) -> None:
    # Answers carrying secrets or tokens must not be cached (RFC 6749 §5.1).
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Pragma", b"no-cache")


# -- /auth ------------------------------------------------------------------------------


def oauth_errors(service: OAuthService, request: IRequest, error: BaseException) -> bytes:
    """The shapes cozy-stack answers on the OAuth routes (module docstring)."""
    if isinstance(error, (RegistrationError, TokenRequestError)):
        return json_response(request, error.body(), status=error.status)
    if isinstance(error, JSONError):
        return json_response(request, {"error": error.detail}, status=error.status)
    if isinstance(error, PageError):
        return service._pages.error_page(request, error.status, PAGE_ERRORS[error.key])
    return jsonapi_errors(service, request, error)


#: Registration bodies are small: refused past this by the site already.
REGISTRATION_BODY = json_body(MAX_REGISTRATION_BODY)


class OAuthService(Service):
    """``/auth/register…``, ``/auth/authorize`` and ``/auth/access_token``."""

    errors = oauth_errors

    def __init__(
        self,
        clients: OAuthClients,
        codes: AccessCodes,
        tokens_endpoint: TokenEndpoint,
        *,
        pages: Pages,
        session_of: SessionOf | None,
        seconds: Callable[[], float],
        link_app: Callable[[Instance, str], Awaitable[Any]] | None = None,
    ):
        """``session_of(request, instance)`` gives the owner's session of the
        request (its cookie), or None when nobody is logged in;
        ``link_app(instance, slug)`` makes sure the webapp of a linked
        client (``software_id`` ``registry://<slug>``) is installed."""
        super().__init__()
        self._link_app = link_app
        self._clients = clients
        self._codes = codes
        self._token_endpoint = tokens_endpoint
        self._pages = pages
        self._session_of = session_of
        self._seconds = seconds

    # -- dynamic registration (RFC 7591 / 7592) -------------------------------------
    @route("register", "POST", body=REGISTRATION_BODY)
    async def register(self, request: IRequest):
        instance = instance_of(request)
        _accepts_json(request)
        _sends_json(request)
        self._clients.check_rate(instance)
        body = read_registration(request)
        allow_login = isinstance(body, dict) and body.get("allow_login_scope") is True
        if allow_login and not holds_cli_token(request, instance, self._seconds()):
            # Clients that only log users in are created by the operator.
            raise LoginScopeRefused()
        client = await self._clients.register(instance, body, allow_login_scope=allow_login)
        log.info(
            "OAuth client {client_id} registered on {domain}",
            client_id=client["client_id"],
            domain=instance.domain,
        )
        _no_store(request)
        return json_response(request, client, status=201)

    async def _client_with_token(self, request: IRequest, client_id: str) -> dict:
        instance = instance_of(request)
        client = await self._clients.get(instance, client_id)
        if client is None:
            raise JSONError("Client not found", status=404)
        if not self._clients.check_registration_token(instance, client, _bearer(request)):
            raise JSONError("invalid_token", status=401)
        return client

    @route("register/{client_id}", "GET")
    async def read_client(self, request: IRequest, client_id: str):
        _accepts_json(request)
        client = await self._client_with_token(request, client_id)
        _no_store(request)
        return json_response(request, public_view(client))

    @route("register/{client_id}", "PUT", body=REGISTRATION_BODY)
    async def update_client(self, request: IRequest, client_id: str):
        instance = instance_of(request)
        _accepts_json(request)
        _sends_json(request)
        self._clients.check_rate(instance)
        old = await self._client_with_token(request, client_id)
        body = read_registration(request)
        client = await self._clients.update(instance, old, body)
        _no_store(request)
        return json_response(request, client)

    @route("register/{client_id}", "DELETE")
    async def delete_client(self, request: IRequest, client_id: str):
        instance = instance_of(request)
        client = await self._clients.get(instance, client_id)
        if client is not None:
            if not self._clients.check_registration_token(
                instance, client, _bearer(request)
            ):
                raise JSONError("invalid_token", status=401)
            await self._clients.delete(instance, client)
            log.info(
                "OAuth client {client_id} unregistered from {domain}",
                client_id=client["_id"],
                domain=instance.domain,
            )
        request.setResponseCode(204)
        return b""

    # -- authorization ------------------------------------------------------------------
    async def _check_params(self, instance: Instance, params: AuthorizeParams) -> dict:
        """The client, once the parameters make sense (PageError if not)."""
        if not params.state:
            raise PageError(400, "no_state")
        if not params.client_id:
            raise PageError(400, "no_client_id")
        if not params.redirect_uri:
            raise PageError(400, "no_redirect_uri")
        if params.response_type != "code":
            raise PageError(400, "bad_response_type")
        if params.challenge and params.challenge_method != PKCE_METHOD:
            raise PageError(400, "bad_challenge_method")
        if params.challenge_method and not params.challenge:
            if params.challenge_method != PKCE_METHOD:
                raise PageError(400, "bad_challenge_method")
            raise PageError(400, "no_challenge")
        client = await self._clients.get(instance, params.client_id)
        if client is None:
            raise PageError(400, "no_client")
        if params.redirect_uri not in (client.get("redirect_uris") or []):
            raise PageError(400, "bad_redirect_uri")
        if params.scope == "*":
            # The maximal scope is for the certified flagship app, with PKCE.
            if not params.challenge:
                raise PageError(400, "no_challenge")
            if not client.get("flagship"):
                raise PageError(400, "bad_scope")
        if not params.scope:
            raise PageError(400, "no_scope")
        if params.scope == LOGIN_SCOPE and not client.get("allow_login_scope"):
            raise PageError(400, "no_scope")
        return client

    def _permissions(self, client: dict, params: AuthorizeParams) -> PermissionSet:
        try:
            return PermissionSet.from_scope(
                params.scope, type="oauth", source_id=client["_id"]
            )
        except InvalidPermission:
            raise PageError(400, "bad_scope") from None

    async def _logged_in(self, request: IRequest, instance: Instance) -> bool:
        if self._session_of is None:
            return False
        return bool(await self._session_of(request, instance))

    @route("authorize", "GET")
    async def authorize_form(self, request: IRequest):
        instance = instance_of(request)
        params = AuthorizeParams.from_request(request)
        client = await self._check_params(instance, params)
        if not await self._logged_in(request, instance):
            # Back here once logged in (request.uri is the path and query).
            here = f"{self._pages.scheme}://{instance.domain}" + request.uri.decode(
                "utf-8", "replace"
            )
            return self._pages.login_redirect(request, instance, here)
        if params.scope == LOGIN_SCOPE:
            # Login-only clients get a code without a consent screen.
            return await self._give_code(request, instance, client, params, scope="")
        permissions = self._permissions(client, params)
        return self._consent_page(request, instance, client, params, permissions)

    def _consent_page(
        self,
        request: IRequest,
        instance: Instance,
        client: dict,
        params: AuthorizeParams,
        permissions: PermissionSet,
    ) -> bytes:
        name = str(client.get("client_name") or client["_id"])
        scheme = urlsplit(params.redirect_uri).scheme.lower()
        deny = redirect_with(params.redirect_uri, error="access_denied", state=params.state)
        csrf = self._pages.csrf_token(request)
        body = self._pages.render(
            request,
            "authorize.html",
            client_name=name,
            client_uri=_web_link(client.get("client_uri")),
            policy_uri=_web_link(client.get("policy_uri")),
            permissions="\n".join(
                "• " + line
                for line in describe_scope(permissions, self._pages.language(request))
            ),
            deny_uri=deny if scheme in ("http", "https", "cozy") else "/",
            csrf_token=csrf,
            client_id=client["_id"],
            state=params.state,
            redirect_uri=params.redirect_uri,
            scope=params.scope,
            code_challenge=params.challenge,
            code_challenge_method=params.challenge_method,
        )
        policy = (
            request.responseHeaders.getRawHeaders(b"content-security-policy") or [b""]
        )[0].decode("latin-1")
        changed = allow_form_target(policy, params.redirect_uri)
        if changed != policy:
            request.setHeader(b"Content-Security-Policy", changed.encode("latin-1"))
        return body

    @route("authorize", "POST")
    async def authorize(self, request: IRequest):
        instance = instance_of(request)
        self._pages.check_csrf(request)
        params = AuthorizeParams.from_request(request)
        client = await self._check_params(instance, params)
        if not await self._logged_in(request, instance):
            # As cozy-stack's tests expect: a consent without a session is
            # forbidden.
            raise PageError(403, "not_logged_in")
        scope = "" if params.scope == LOGIN_SCOPE else params.scope
        linked = linked_app_slug(str(client.get("software_id") or ""))
        if linked and scope:
            # A mobile app linked to a webapp gets the webapp's permissions.
            if self._link_app is not None:
                await self._link_app(instance, linked)
            scope = f"@io.cozy.apps/{linked}"
        elif scope:
            self._permissions(client, params)
        return await self._give_code(request, instance, client, params, scope=scope)

    async def _give_code(
        self,
        request: IRequest,
        instance: Instance,
        client: dict,
        params: AuthorizeParams,
        *,
        scope: str,
    ):
        await self._clients.mark_used(instance, client)
        code = await self._codes.create(instance, client["_id"], scope, params.challenge)
        log.info(
            "OAuth access code created for client {client_id} on {domain}",
            client_id=client["_id"],
            domain=instance.domain,
        )
        location = redirect_with(
            params.redirect_uri, access_code=code, code=code, state=params.state
        )
        _no_store(request)
        if (request.getHeader(b"accept") or b"") == b"application/json":
            return json_response(request, {"deeplink": location})
        request.setResponseCode(302)
        request.setHeader(b"Location", location.encode("utf-8"))
        return b""

    # -- tokens -------------------------------------------------------------------------
    @route("access_token", "POST")
    async def access_token(self, request: IRequest):
        instance = instance_of(request)
        form = {
            name: query_text(request, name) or ""
            for name in (
                "grant_type",
                "client_id",
                "client_secret",
                "code",
                "code_verifier",
                "refresh_token",
            )
        }
        response = await self._token_endpoint.exchange(instance, form)
        _no_store(request)
        return json_response(request, response.json())


# -- /settings/clients -----------------------------------------------------------------


class ClientsSettingsService(Service):
    """``GET /settings/clients`` and ``DELETE /settings/clients/:id``."""

    errors = jsonapi_errors

    def __init__(self, clients: OAuthClients, guard: Guard):
        super().__init__()
        self._clients = clients
        self.guard = guard

    @route("clients", "GET", auth=token(CLIENTS_DOCTYPE))
    async def list_clients(self, request: IRequest):
        instance = instance_of(request)
        limit = query_int(request, "page[limit]", minimum=0)
        if limit is None or limit == 0 or limit > 1000:
            limit = 100
        clients, cursor = await self._clients.list(
            instance, limit=limit, cursor=query_text(request, "page[cursor]") or None
        )
        data = [
            {
                "type": CLIENTS_DOCTYPE,
                "id": client["_id"],
                "attributes": {
                    k: v
                    for k, v in client.items()
                    if k not in ("_id", "_rev", "client_id", "client_secret")
                },
                "meta": {"rev": client.get("_rev")},
                "links": {"self": f"/settings/clients/{client['_id']}"},
            }
            for client in clients
        ]
        links: dict[str, str] = {}
        if cursor:
            query = {"page[cursor]": cursor}
            if limit != 100:
                query["page[limit]"] = str(limit)
            links["next"] = "/settings/clients?" + urlencode(query)
        return json_response(
            request,
            {"data": data, "links": links, "meta": {"count": len(data)}},
            content_type=JSONAPI,
        )

    @route("clients/{client_id}", "DELETE", auth=token(CLIENTS_DOCTYPE))
    async def revoke_client(self, request: IRequest, client_id: str):
        instance = instance_of(request)
        client = await self._clients.find(instance, client_id)
        await self._clients.delete(instance, client)
        log.info(
            "OAuth client {client_id} revoked on {domain}",
            client_id=client_id,
            domain=instance.domain,
        )
        request.setResponseCode(204)
        return b""


__all__ = [
    "ClientsSettingsService",
    "OAuthService",
    "describe_rule",
    "describe_scope",
    "redirect_with",
]
