"""``/auth``: the login and logout pages and the onboarding form, and ``/``.

- ``GET /`` sends the owner where they belong: the onboarding form (with a
  good ``registerToken``), the "not activated" page, their home when
  logged in, else the login page.
- ``GET|POST /auth/login``: the login form; a good passphrase opens a
  session (the ``cozysessid`` cookie) and redirects (303, or 200
  ``{"redirect"}`` for ``Accept: application/json``). Failed logins are
  counted: too many block the instance (``LOGIN_FAILED``).
- ``DELETE /auth/login`` and ``/auth/login/others``: logout, for web apps
  (app tokens), as cozy-stack.
- ``GET|POST /auth/logout``: a confirmation page for people (a cozyd
  addition: cozy-stack leaves the logout button to its apps).
- ``GET /auth/passphrase?registerToken=…``: the onboarding form, which posts
  to ``/settings/passphrase``.
- ``GET https://home.<domain>/``: the built-in home page (``HomeApp``),
  until the apps service serves the installed home app there.

The OAuth routes under ``/auth`` (register, authorize, access_token…)
belong to another service; ``WebSessions`` here is what it uses to know
whether the owner is logged in.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.auth.login import LoginFailures, Passphrases
from cozyd.auth.sessions import (
    Duration,
    Session,
    SessionStore,
    cookie_domain,
    cookie_name,
    decode_cookie,
    encode_cookie,
)
from cozyd.auth.urls import HOME_SLUG, InstanceURLs
from cozyd.errors import CozyError
from cozyd.i18n import N_
from cozyd.instance.model import Instance
from cozyd.web.common import (
    current_instance,
    error_response,
    instance_of,
    json_response,
    jsonapi_errors,
)
from cozyd.web.guard import Guard, register_token_matches
from cozyd.web.pages import Pages
from cozyd.web.params import form_value as form_value
from cozyd.web.params import parse_bool
from cozyd.web.routing import Service, route, shield, state_of

log = Logger()

MAX_AGE_CORS = "43200"
WRONG_PASSPHRASE = N_("This password is not the right one. Please try again.")


def wants_json(request: IRequest) -> bool:
    """cozy-stack answers JSON when ``Accept`` is exactly application/json."""
    return (request.getHeader(b"accept") or b"").strip() == b"application/json"


def wants_html(request: IRequest) -> bool:
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    return "text/html" in accept and "application/json" not in accept


def parse_go_bool(text: str) -> bool:
    return parse_bool(text) is True


def client_ip(request: IRequest) -> str:
    forwarded = (request.getHeader(b"x-forwarded-for") or b"").decode("latin-1")
    if forwarded.strip():
        return forwarded.split(",", 1)[0].strip()
    address = request.getClientAddress()
    return getattr(address, "host", "") or ""


class WebSessions:
    """The owner's browser session: read from, and written to, the cookie."""

    def __init__(self, sessions: SessionStore, *, secure: bool, flat: bool = False):
        self.store = sessions
        self._secure = secure
        #: Flat app sub-domains: the cookie is on the parent domain.
        self.flat = flat

    async def current(self, request: IRequest) -> Session | None:
        """The request's live session (kept in the request's state)."""
        state = state_of(request)
        if state.session_known:
            return state.session
        instance = state.instance
        session = None
        raw = request.getCookie(cookie_name(instance, flat=self.flat).encode("ascii"))
        if raw:
            session_id = decode_cookie(instance, raw.decode("latin-1"))
            if session_id is not None:
                session = await self.store.get(instance, session_id)
        state.session = session
        return session

    async def session_id_of(self, request: IRequest, instance: Instance) -> str | None:
        """For the Guard: app tokens bound to a session need that session."""
        session = await self.current(request)
        return session.id if session is not None else None

    async def logged_in(self, request: IRequest) -> bool:
        return await self.current(request) is not None

    async def open(
        self,
        request: IRequest,
        instance: Instance,
        duration: Duration,
        *,
        method: str = "password",
        client_registration: bool = False,
    ) -> Session:
        """A new session, its cookie, and an entry in the login history (all
        of it, even if the client hangs up meanwhile)."""
        user_agent = (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace")
        ip = client_ip(request)

        async def steps() -> Session:
            session = await self.store.create(instance, duration)
            self.set_cookie(request, instance, session)
            state_of(request).session = session
            try:
                await self.store.record_login(
                    instance,
                    session.id,
                    ip=ip,
                    user_agent=user_agent,
                    method=method,
                    client_registration=client_registration,
                )
            except CozyError:
                log.failure("could not record a login on {domain}", domain=instance.domain)
            return session

        return await shield(steps())

    def set_cookie(self, request: IRequest, instance: Instance, session: Session) -> None:
        # As cozy-stack's Session.ToCookie, written as Go writes an
        # http.Cookie: Path, Domain (no leading dot), Max-Age (none for a
        # browser-session cookie), HttpOnly, Secure (https), SameSite=Lax.
        max_age = session.cookie_max_age()
        parts = [
            f"{cookie_name(instance, flat=self.flat)}={encode_cookie(instance, session.id)}",
            "Path=/",
            f"Domain={cookie_domain(instance, flat=self.flat).lstrip('.')}",
        ]
        if max_age:
            parts.append(f"Max-Age={max_age}")
        parts.append("HttpOnly")
        if self._secure:
            parts.append("Secure")
        parts.append("SameSite=Lax")
        request.cookies.append("; ".join(parts).encode("utf-8"))

    def clear_cookie(self, request: IRequest, instance: Instance) -> None:
        # As cozy-stack's Session.Delete: MaxAge -1, which Go writes Max-Age=0.
        request.cookies.append(
            (
                f"{cookie_name(instance, flat=self.flat)}=; Path=/; "
                f"Domain={cookie_domain(instance, flat=self.flat).lstrip('.')}; "
                "Max-Age=0"
            ).encode()
        )

    async def close(self, request: IRequest, instance: Instance) -> bool:
        """Log out: delete the current session and its cookie."""
        session = await self.current(request)
        if session is None:
            return False
        await self.store.delete(instance, session)
        self.clear_cookie(request, instance)
        state_of(request).session = None
        return True


def page_errors(service: Any, request: IRequest, error: BaseException) -> bytes:
    """The error style of page services: the generic error page for
    browsers, else JSON:API. The service must have a ``pages`` attribute."""
    if isinstance(error, CozyError):
        if wants_html(request) and current_instance(request) is not None:
            return service.pages.render(
                request, "error.html", status=error.status, error_message=error.detail
            )
        return error_response(request, error)
    return jsonapi_errors(service, request, error)


def _cors(request: IRequest) -> None:
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")


class AuthService(Service):
    errors = page_errors

    def __init__(
        self,
        guard: Guard,
        *,
        pages: Pages,
        sessions: WebSessions,
        passphrases: Passphrases,
        failures: LoginFailures,
        urls: InstanceURLs,
    ):
        super().__init__()
        self.guard = guard
        self.pages = pages
        self.sessions = sessions
        self.passphrases = passphrases
        self.failures = failures
        self.urls = urls

    # -- login --------------------------------------------------------------
    async def _render_login(
        self,
        request: IRequest,
        instance: Instance,
        *,
        status: int = 200,
        error: str = "",
        redirect: str | None = None,
    ) -> bytes:
        settings = await self.urls.settings_document(instance)
        parameters = await self.passphrases.parameters(instance)
        return self.pages.render(
            request,
            "login.html",
            status=status,
            error=error,
            redirect=redirect or "",
            salt=parameters["salt"],
            iterations=parameters["iterations"],
            public_name=settings.get("public_name") or "",
        )

    @route("login", "GET")
    async def login_form(self, request: IRequest):
        instance = instance_of(request)
        self.pages.csrf_token(request)
        if not instance.onboarding_finished:
            return self.pages.render(request, "need_onboarding.html")
        redirect = await self.urls.check_redirect(
            instance, form_value(request, "redirect"), None
        )
        if await self.sessions.logged_in(request):
            target = redirect or await self.urls.default_redirection(instance)
            return self.pages.redirect(request, target)
        return await self._render_login(request, instance, redirect=redirect)

    @route("login", "POST")
    async def login(self, request: IRequest):
        instance = instance_of(request)
        self.pages.check_csrf(request)
        if not instance.onboarding_finished:
            return self.pages.render(request, "need_onboarding.html")
        redirect = await self.urls.check_redirect(
            instance,
            form_value(request, "redirect"),
            await self.urls.default_redirection(instance),
        )
        assert redirect is not None
        passphrase = form_value(request, "passphrase")
        long_run = parse_go_bool(form_value(request, "long-run-session"))
        if not await self.sessions.logged_in(request):
            if not await self.passphrases.check(instance, passphrase):
                await self.failures.failed(instance)
                message = self.pages.translate(request, WRONG_PASSPHRASE)
                if wants_json(request):
                    return json_response(request, {"error": message}, status=401)
                return await self._render_login(
                    request, instance, status=401, error=message, redirect=redirect
                )
            duration = Duration.LONG if long_run else Duration.NORMAL
            to_consent = self.urls.is_authorize_page(instance, redirect)
            if to_consent:
                duration = Duration.SHORT
            await self.sessions.open(
                request, instance, duration, client_registration=to_consent
            )
        if wants_json(request):
            return json_response(request, {"redirect": redirect})
        return self.pages.redirect(request, redirect)

    # -- logout by apps ---------------------------------------------------------
    async def _is_webapp(self, request: IRequest) -> bool:
        try:
            permissions = await self.guard.permissions(request)
        except CozyError:
            return False
        return permissions.type == "app"

    @route("login", "DELETE")
    async def logout(self, request: IRequest):
        _cors(request)
        instance = instance_of(request)
        if not await self._is_webapp(request):
            return json_response(
                request,
                {"error": "The user can logout only from client-side apps"},
                status=401,
            )
        await self.sessions.close(request, instance)
        request.setResponseCode(204)
        return b""

    @route("login/others", "DELETE")
    async def logout_others(self, request: IRequest):
        _cors(request)
        instance = instance_of(request)
        if not await self._is_webapp(request):
            return json_response(
                request,
                {"error": "The user can logout only from client-side apps"},
                status=401,
            )
        session = await self.sessions.current(request)
        if session is None:
            return json_response(
                request, {"error": "Could not retrieve session"}, status=401
            )
        await self.sessions.store.delete_others(instance, session.id)
        request.setResponseCode(204)
        return b""

    @route("login", "OPTIONS")
    @route("login/others", "OPTIONS")
    def logout_preflight(self, request: IRequest):
        origin = request.getHeader(b"origin") or b""
        for header in (
            b"Origin",
            b"Access-Control-Request-Method",
            b"Access-Control-Request-Headers",
        ):
            request.responseHeaders.addRawHeader(b"Vary", header)
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Methods", b"DELETE")
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Access-Control-Max-Age", MAX_AGE_CORS.encode("ascii"))
        wanted = request.getHeader(b"access-control-request-headers")
        if wanted:
            request.setHeader(b"Access-Control-Allow-Headers", wanted)
        request.setResponseCode(204)
        return b""

    # -- logout by people --------------------------------------------------------
    @route("logout", "GET")
    async def logout_page(self, request: IRequest):
        instance = instance_of(request)
        if not await self.sessions.logged_in(request):
            return self.pages.login_redirect(request, instance)
        self.pages.csrf_token(request)
        return self.pages.render(
            request, "logout.html", cancel_url=await self.urls.default_redirection(instance)
        )

    @route("logout", "POST")
    async def logout_confirmed(self, request: IRequest):
        instance = instance_of(request)
        self.pages.check_csrf(request)
        await self.sessions.close(request, instance)
        return self.pages.login_redirect(request, instance)

    # -- onboarding ----------------------------------------------------------------
    @route("passphrase", "GET")
    async def passphrase_form(self, request: IRequest):
        instance = instance_of(request)
        if instance.onboarding_finished:
            return self.pages.redirect(
                request, await self.urls.default_redirection(instance)
            )
        if not register_token_matches(request, instance):
            return self.pages.render(request, "need_onboarding.html")
        self.pages.csrf_token(request)
        parameters = await self.passphrases.parameters(instance)
        return self.pages.render(
            request,
            "passphrase_choose.html",
            salt=parameters["salt"],
            iterations=self.passphrases.default_iterations,
            register_token=form_value(request, "registerToken"),
            redirection=form_value(request, "redirection"),
        )


class HomePage(Service):
    """``GET /`` of an instance."""

    errors = page_errors

    def __init__(self, *, pages: Pages, sessions: WebSessions, urls: InstanceURLs):
        super().__init__()
        self.pages = pages
        self.sessions = sessions
        self.urls = urls

    @route("", "GET")
    async def home(self, request: IRequest):
        instance = instance_of(request)
        if instance.register_token and not instance.onboarding_finished:
            if not register_token_matches(request, instance):
                return self.pages.render(request, "need_onboarding.html")
            query = [
                (key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
                for key, values in request.args.items()
                for value in values
            ]
            return self.pages.redirect(
                request, self.urls.page(instance, "/auth/passphrase", query)
            )
        if await self.sessions.logged_in(request):
            return self.pages.redirect(
                request, await self.urls.default_redirection(instance)
            )
        query = [
            (name, form_value(request, name))
            for name in ("jwt", "email_verified_code")
            if form_value(request, name)
        ]
        return self.pages.redirect(request, self.urls.page(instance, "/auth/login", query))


class HomeApp(Service):
    """The built-in ``home`` app, served at ``home.<domain>`` by
    ``cozyd.web.apphosts`` until the apps service serves the installed one:
    the instance's name (its public name, else its domain), links to the
    owner's settings and sessions (pages of the settings app, as the home
    app links to them) and to log out. For the owner only: without a session,
    302 to the login page, which comes back here (as cozy-stack's apps)."""

    errors = page_errors

    def __init__(self, *, pages: Pages, sessions: WebSessions, urls: InstanceURLs):
        super().__init__()
        self.pages = pages
        self.sessions = sessions
        self.urls = urls

    @route("", "GET")
    async def home(self, request: IRequest):
        instance = instance_of(request)
        if not await self.sessions.logged_in(request):
            here = self.urls.subdomain(instance, HOME_SLUG, "/")
            query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
            params = [("redirect", f"{here}?{query}" if query else here)]
            if form_value(request, "jwt"):
                params.append(("jwt", form_value(request, "jwt")))
            return self.pages.redirect(
                request, self.urls.page(instance, "/auth/login", params), status=302
            )
        settings = await self.urls.settings_document(instance)
        name = settings.get("public_name")
        return self.pages.render(
            request,
            "home.html",
            name=name if isinstance(name, str) and name.strip() else instance.domain,
            settings_url=self.urls.subdomain(instance, "settings", "/", "/profile"),
            sessions_url=self.urls.subdomain(instance, "settings", "/", "/sessions"),
            logout_url=self.urls.page(instance, "/auth/logout"),
        )
