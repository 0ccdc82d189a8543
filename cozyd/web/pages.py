"""HTML pages: Jinja2 templates in the owner's language, and CSRF protection.

Any service that shows a page uses one ``Pages`` object (built once in
``cozyd.service``)::

    pages.render(request, "login.html", status=401, error=...)  # -> bytes
    pages.error_page(request, 400, N_("Invalid scope"))         # the error page
    pages.translate(request, "Log in")    # a message in the request's language
    token = pages.csrf_token(request)   # put it in a csrf_token form field
    pages.check_csrf(request)           # first thing in a POST handler
    pages.login_redirect(request, instance, next_url)  # 303 to /auth/login

Templates are ``cozyd/web/templates/*.html``, Jinja2 with autoescaping on:

- a page ``{% extends "_layout.html" %}`` and fills ``{% block content %}``
  (also ``title`` and ``head``); ``_``-prefixed files are not pages;
- every word a person reads goes through ``{{ _("English text") }}`` or
  ``{{ _("Welcome, %(name)s!", name=public_name) }}`` (``cozyd.i18n``:
  gettext catalogs, English message ids); never pre-translate in Python what
  a template can say itself;
- every ``<style>`` and ``<script>`` carries ``nonce="{{ csp_nonce }}"`` (the
  Content-Security-Policy allows nothing else); pages load no external asset;
- ``None`` renders as nothing; missing values render as nothing too.

``render`` adds ``lang``, ``csp_nonce``, ``csrf_token`` (when the page asked
for one) and ``domain`` (the instance) to the context. The language is the
instance's locale when cozyd has a catalog for it, else the browser's
``Accept-Language``, else English.

CSRF: a random token in the ``_csrf`` cookie (HttpOnly, SameSite=Strict,
one hour, as cozy-stack) must come back in the ``csrf_token`` field of
every form POST; missing → 400, different → 403 ``invalid csrf token``.
"""

from __future__ import annotations

import functools
import hmac
import os
import re
import secrets
from typing import Any
from urllib.parse import urlencode

import jinja2
from twisted.web.iweb import IRequest

from cozyd import i18n
from cozyd.errors import EchoError
from cozyd.i18n import LANGUAGES, accept_language
from cozyd.instance.model import Instance
from cozyd.web.common import current_instance, instance_of
from cozyd.web.routing import state_of

TEMPLATES_DIR = os.path.join(os.path.dirname(__file__), "templates")

CSRF_COOKIE = "_csrf"
CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 3600
_CSRF_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
#: Largest form body read for a page's POST.
MAX_FORM_BODY = 64 * 1024

__all__ = ["LANGUAGES", "Pages", "accept_language", "language_of", "render_template"]


class CSRFMissing(EchoError):
    status = 400
    code = "csrf_missing"

    def __init__(self, detail: str = "missing csrf token in the form parameter"):
        super().__init__(detail)


class CSRFInvalid(EchoError):
    status = 403
    code = "invalid_csrf_token"

    def __init__(self, detail: str = "invalid csrf token"):
        super().__init__(detail)


def language_of(request: IRequest, instance: Instance | None) -> str:
    """The instance's locale when pages exist in it, else the browser's."""
    if instance is not None:
        language = i18n.language_of_locale(instance.locale)
        if language is not None:
            return language
    header = (request.getHeader(b"accept-language") or b"").decode("latin-1")
    return accept_language(header) or i18n.DEFAULT_LANGUAGE


@functools.cache
def environment() -> jinja2.Environment:
    return i18n.template_environment(TEMPLATES_DIR)


def render_template(name: str, context: dict[str, Any], language: str) -> str:
    return i18n.render(environment(), name, language, **context)


# -- the helper services use -------------------------------------------------------------


def _form_value(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        return None


class Pages:
    def __init__(self, *, secure: bool = False, scheme: str | None = None):
        """``secure``: cookies get the Secure flag (public URL in https)."""
        self.secure = secure
        self.scheme = scheme or ("https" if secure else "http")

    # -- rendering --------------------------------------------------------
    def render(
        self, request: IRequest, template: str, *, status: int = 200, **context: Any
    ) -> bytes:
        instance = current_instance(request)
        language = self.language(request)
        nonce = secrets.token_urlsafe(16)
        values: dict[str, Any] = {"lang": language, "csp_nonce": nonce}
        if instance is not None:
            values["domain"] = instance.domain
        token = state_of(request).csrf
        if token is not None:
            values["csrf_token"] = token
        values.update(context)
        body = render_template(template, values, language)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        request.setHeader(b"X-Frame-Options", b"DENY")
        # Inline style and scripts only, each carrying this response's nonce.
        request.setHeader(
            b"Content-Security-Policy",
            (
                f"default-src 'none'; style-src 'nonce-{nonce}'; "
                f"script-src 'nonce-{nonce}'; img-src data:; connect-src 'self'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ).encode("ascii"),
        )
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return body.encode("utf-8")

    def error_page(
        self,
        request: IRequest,
        status: int,
        message: str,
        *,
        title: str | None = None,
        values: dict[str, Any] | None = None,
        **context: Any,
    ) -> bytes:
        """The generic error page. ``message`` and ``title`` are message ids
        (``N_("…")``) translated here, ``values`` filling their placeholders;
        no title: "Something went wrong". ``context``: more of the page
        (``link_url`` and ``link_label`` for a button)."""
        words = self.words(request)
        return self.render(
            request,
            "error.html",
            status=status,
            error_title=words.gettext(title, **(values or {})) if title else None,
            error_message=words.gettext(message, **(values or {})),
            **context,
        )

    def language(self, request: IRequest) -> str:
        return language_of(request, current_instance(request))

    def words(self, request: IRequest) -> i18n.Words:
        """The request's words (``words.gettext``…)."""
        return i18n.words(self.language(request))

    def translate(self, request: IRequest, message: str, **values: Any) -> str:
        """``message`` in the request's language, placeholders filled."""
        return self.words(request).gettext(message, **values)

    # -- CSRF ------------------------------------------------------------------
    def csrf_token(self, request: IRequest) -> str:
        """The token to put in the page's forms (also sets the cookie)."""
        token = state_of(request).csrf
        if token is None:
            raw = (request.getCookie(CSRF_COOKIE.encode("ascii")) or b"").decode("latin-1")
            token = raw if _CSRF_RE.match(raw) else secrets.token_urlsafe(32)
            state_of(request).csrf = token
            request.addCookie(
                CSRF_COOKIE,
                token,
                path="/",
                max_age=str(CSRF_MAX_AGE),
                secure=self.secure,
                httpOnly=True,
                sameSite="strict",
            )
            request.setHeader(b"Vary", b"Cookie")
        return token

    def check_csrf(self, request: IRequest) -> None:
        """The form's ``csrf_token`` must match the cookie."""
        given = _form_value(request, CSRF_FIELD)
        if not given:
            raise CSRFMissing()
        expected = (request.getCookie(CSRF_COOKIE.encode("ascii")) or b"").decode("latin-1")
        if not expected or not hmac.compare_digest(
            given.encode("utf-8"), expected.encode("utf-8")
        ):
            raise CSRFInvalid()
        state_of(request).csrf = expected

    # -- navigation -------------------------------------------------------------
    def page_url(self, instance: Instance, path: str, query: Any = None) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"{self.scheme}://{instance.domain}{path}{suffix}"

    def redirect(self, request: IRequest, location: str, status: int = 303) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Cache-Control", b"no-store")
        return b""

    def login_redirect(
        self,
        request: IRequest,
        instance: Instance | None = None,
        next_url: str | None = None,
    ) -> bytes:
        """303 to the login page, which comes back to ``next_url`` once the
        owner is logged in."""
        instance = instance or instance_of(request)
        query = {"redirect": next_url} if next_url else None
        return self.redirect(request, self.page_url(instance, "/auth/login", query))
