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

from klein import Klein
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
    error_response,
    install_error_handlers,
    instance_of,
    json_response,
)
from cozyd.web.guard import Guard, register_token_matches
from cozyd.web.pages import Pages

log = Logger()

_SESSION = "cozy_session"
_NO_SESSION = object()
MAX_AGE_CORS = "43200"
WRONG_PASSPHRASE = N_("This password is not the right one. Please try again.")


def wants_json(request: IRequest) -> bool:
    """cozy-stack answers JSON when ``Accept`` is exactly application/json."""
    return (request.getHeader(b"accept") or b"").strip() == b"application/json"


def wants_html(request: IRequest) -> bool:
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    return "text/html" in accept and "application/json" not in accept


def form_value(request: IRequest, name: str) -> str:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return ""
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        return ""


def parse_go_bool(text: str) -> bool:
    return text in ("1", "t", "T", "true", "TRUE", "True")


def client_ip(request: IRequest) -> str:
    forwarded = (request.getHeader(b"x-forwarded-for") or b"").decode("latin-1")
    if forwarded.strip():
        return forwarded.split(",", 1)[0].strip()
    address = request.getClientAddress()
    return getattr(address, "host", "") or ""


class WebSessions:
    """The owner's browser session: read from, and written to, the cookie."""

    def __init__(self, sessions: SessionStore, *, secure: bool):
        self.store = sessions
        self._secure = secure

    async def current(self, request: IRequest) -> Session | None:
        """The request's live session (cached on the request)."""
        cached = getattr(request, _SESSION, None)
        if cached is not None:
            return None if cached is _NO_SESSION else cached
        instance = instance_of(request)
        session = None
        raw = request.getCookie(cookie_name(instance).encode("ascii"))
        if raw:
            session_id = decode_cookie(instance, raw.decode("latin-1"))
            if session_id is not None:
                session = await self.store.get(instance, session_id)
        setattr(request, _SESSION, _NO_SESSION if session is None else session)
        return session

    async def session_id_of(self, request: IRequest, instance: Instance) -> str | None:
        """For the Guard: app tokens bound to a session need that session."""
        session = await self.current(request)
        return session.id if session is not None else None

    async def logged_in(self, request: IRequest) -> bool:
        return await self.current(request) is not None

    async def open(self, request: IRequest, instance: Instance, duration: Duration, *,
                   method: str = "password", client_registration: bool = False) -> Session:
        """A new session, its cookie, and an entry in the login history."""
        session = await self.store.create(instance, duration)
        self.set_cookie(request, instance, session)
        setattr(request, _SESSION, session)
        user_agent = (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace")
        try:
            await self.store.record_login(instance, session.id, ip=client_ip(request),
                                          user_agent=user_agent, method=method,
                                          client_registration=client_registration)
        except CozyError:
            log.failure("could not record a login on {domain}", domain=instance.domain)
        return session

    def set_cookie(self, request: IRequest, instance: Instance, session: Session) -> None:
        max_age = session.cookie_max_age()
        request.addCookie(cookie_name(instance), encode_cookie(instance, session.id),
                          path="/", domain=cookie_domain(instance),
                          max_age=None if max_age is None else str(max_age),
                          secure=self._secure, httpOnly=True, sameSite="lax")

    def clear_cookie(self, request: IRequest, instance: Instance) -> None:
        request.addCookie(cookie_name(instance), "", path="/",
                          domain=cookie_domain(instance), max_age="0",
                          expires="Thu, 01 Jan 1970 00:00:00 GMT",
                          secure=self._secure, httpOnly=True, sameSite="lax")

    async def close(self, request: IRequest, instance: Instance) -> bool:
        """Log out: delete the current session and its cookie."""
        session = await self.current(request)
        if session is None:
            return False
        await self.store.delete(instance, session)
        self.clear_cookie(request, instance)
        setattr(request, _SESSION, _NO_SESSION)
        return True


def install_page_error_handlers(app: Klein) -> None:
    """Errors as the generic error page for browsers, else as usual. The
    service must have a ``pages`` attribute."""
    @app.handle_errors(CozyError)
    def page_error(service: Any, request: IRequest, failure: Any) -> bytes:
        error = failure.value
        if wants_html(request) and getattr(request, "cozy_instance", None) is not None:
            return service.pages.render(request, "error.html", status=error.status,
                                        error_message=error.detail)
        return error_response(request, error)


def _cors(request: IRequest) -> None:
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")


class AuthService:
    app = Klein()
    install_page_error_handlers(app)
    install_error_handlers(app)

    def __init__(self, guard: Guard, *, pages: Pages, sessions: WebSessions,
                 passphrases: Passphrases, failures: LoginFailures, urls: InstanceURLs):
        self.guard = guard
        self.pages = pages
        self.sessions = sessions
        self.passphrases = passphrases
        self.failures = failures
        self.urls = urls

    def resource(self):
        return self.app.resource()

    # -- login --------------------------------------------------------------
    async def _render_login(self, request: IRequest, instance: Instance, *,
                            status: int = 200, error: str = "",
                            redirect: str | None = None) -> bytes:
        settings = await self.urls.settings_document(instance)
        parameters = await self.passphrases.parameters(instance)
        return self.pages.render(
            request, "login.html", status=status, error=error,
            redirect=redirect or "", salt=parameters["salt"],
            iterations=parameters["iterations"],
            public_name=settings.get("public_name") or "")

    @app.route("/login", methods=["GET", "HEAD"])
    async def login_form(self, request: IRequest):
        instance = instance_of(request)
        self.pages.csrf_token(request)
        if not instance.onboarding_finished:
            return self.pages.render(request, "need_onboarding.html")
        redirect = await self.urls.check_redirect(instance, form_value(request, "redirect"),
                                                  None)
        if await self.sessions.logged_in(request):
            target = redirect or await self.urls.default_redirection(instance)
            return self.pages.redirect(request, target)
        return await self._render_login(request, instance, redirect=redirect)

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest):
        instance = instance_of(request)
        self.pages.check_csrf(request)
        if not instance.onboarding_finished:
            return self.pages.render(request, "need_onboarding.html")
        redirect = await self.urls.check_redirect(
            instance, form_value(request, "redirect"),
            await self.urls.default_redirection(instance))
        assert redirect is not None
        passphrase = form_value(request, "passphrase")
        long_run = parse_go_bool(form_value(request, "long-run-session"))
        if not await self.sessions.logged_in(request):
            if not await self.passphrases.check(instance, passphrase):
                await self.failures.failed(instance)
                message = self.pages.translate(request, WRONG_PASSPHRASE)
                if wants_json(request):
                    return json_response(request, {"error": message}, status=401)
                return await self._render_login(request, instance, status=401,
                                                error=message, redirect=redirect)
            duration = Duration.LONG if long_run else Duration.NORMAL
            to_consent = self.urls.is_authorize_page(instance, redirect)
            if to_consent:
                duration = Duration.SHORT
            await self.sessions.open(request, instance, duration,
                                     client_registration=to_consent)
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

    @app.route("/login", methods=["DELETE"])
    async def logout(self, request: IRequest):
        _cors(request)
        instance = instance_of(request)
        if not await self._is_webapp(request):
            return json_response(request, {
                "error": "The user can logout only from client-side apps"}, status=401)
        await self.sessions.close(request, instance)
        request.setResponseCode(204)
        return b""

    @app.route("/login/others", methods=["DELETE"])
    async def logout_others(self, request: IRequest):
        _cors(request)
        instance = instance_of(request)
        if not await self._is_webapp(request):
            return json_response(request, {
                "error": "The user can logout only from client-side apps"}, status=401)
        session = await self.sessions.current(request)
        if session is None:
            return json_response(request, {"error": "Could not retrieve session"},
                                 status=401)
        await self.sessions.store.delete_others(instance, session.id)
        request.setResponseCode(204)
        return b""

    @app.route("/login", methods=["OPTIONS"])
    @app.route("/login/others", methods=["OPTIONS"])
    def logout_preflight(self, request: IRequest):
        origin = request.getHeader(b"origin") or b""
        for header in (b"Origin", b"Access-Control-Request-Method",
                       b"Access-Control-Request-Headers"):
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
    @app.route("/logout", methods=["GET", "HEAD"])
    async def logout_page(self, request: IRequest):
        instance = instance_of(request)
        if not await self.sessions.logged_in(request):
            return self.pages.login_redirect(request, instance)
        self.pages.csrf_token(request)
        return self.pages.render(request, "logout.html",
                                 cancel_url=await self.urls.default_redirection(instance))

    @app.route("/logout", methods=["POST"])
    async def logout_confirmed(self, request: IRequest):
        instance = instance_of(request)
        self.pages.check_csrf(request)
        await self.sessions.close(request, instance)
        return self.pages.login_redirect(request, instance)

    # -- onboarding ----------------------------------------------------------------
    @app.route("/passphrase", methods=["GET", "HEAD"])
    async def passphrase_form(self, request: IRequest):
        instance = instance_of(request)
        if instance.onboarding_finished:
            return self.pages.redirect(request,
                                       await self.urls.default_redirection(instance))
        if not register_token_matches(request, instance):
            return self.pages.render(request, "need_onboarding.html")
        self.pages.csrf_token(request)
        parameters = await self.passphrases.parameters(instance)
        return self.pages.render(
            request, "passphrase_choose.html", salt=parameters["salt"],
            iterations=self.passphrases.default_iterations,
            register_token=form_value(request, "registerToken"),
            redirection=form_value(request, "redirection"))


class HomePage:
    """``GET /`` of an instance."""

    app = Klein()
    install_page_error_handlers(app)
    install_error_handlers(app)

    def __init__(self, *, pages: Pages, sessions: WebSessions, urls: InstanceURLs):
        self.pages = pages
        self.sessions = sessions
        self.urls = urls

    def resource(self):
        return self.app.resource()

    @app.route("/", methods=["GET", "HEAD"])
    async def home(self, request: IRequest):
        instance = instance_of(request)
        if instance.register_token and not instance.onboarding_finished:
            if not register_token_matches(request, instance):
                return self.pages.render(request, "need_onboarding.html")
            query = [(key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
                     for key, values in request.args.items() for value in values]
            return self.pages.redirect(
                request, self.urls.page(instance, "/auth/passphrase", query))
        if await self.sessions.logged_in(request):
            return self.pages.redirect(request,
                                       await self.urls.default_redirection(instance))
        query = [(name, form_value(request, name))
                 for name in ("jwt", "email_verified_code") if form_value(request, name)]
        return self.pages.redirect(request, self.urls.page(instance, "/auth/login", query))


class HomeApp:
    """The built-in ``home`` app, served at ``home.<domain>`` by
    ``cozyd.web.apphosts`` until the apps service serves the installed one:
    the instance's name (its public name, else its domain), links to the
    owner's settings and sessions (pages of the settings app, as the home
    app links to them) and to log out. For the owner only: without a session,
    302 to the login page, which comes back here (as cozy-stack's apps)."""

    app = Klein()
    install_page_error_handlers(app)
    install_error_handlers(app)

    def __init__(self, *, pages: Pages, sessions: WebSessions, urls: InstanceURLs):
        self.pages = pages
        self.sessions = sessions
        self.urls = urls

    def resource(self):
        return self.app.resource()

    @app.route("/", methods=["GET", "HEAD"])
    async def home(self, request: IRequest):
        instance = instance_of(request)
        if not await self.sessions.logged_in(request):
            here = self.urls.subdomain(instance, HOME_SLUG, "/")
            query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
            params = [("redirect", f"{here}?{query}" if query else here)]
            if form_value(request, "jwt"):
                params.append(("jwt", form_value(request, "jwt")))
            return self.pages.redirect(
                request, self.urls.page(instance, "/auth/login", params), status=302)
        settings = await self.urls.settings_document(instance)
        name = settings.get("public_name")
        return self.pages.render(
            request, "home.html",
            name=name if isinstance(name, str) and name.strip() else instance.domain,
            settings_url=self.urls.subdomain(instance, "settings", "/", "/profile"),
            sessions_url=self.urls.subdomain(instance, "settings", "/", "/sessions"),
            logout_url=self.urls.page(instance, "/auth/logout"))
