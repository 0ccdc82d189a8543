"""HTML pages: templates, translations (en, fr) and CSRF protection.

Any service that shows a page uses one ``Pages`` object (built once in
``cozyd.service``)::

    pages.render(request, "login.html", status=401, error=...)  # -> bytes
    token = pages.csrf_token(request)   # put it in a csrf_token form field
    pages.check_csrf(request)           # first thing in a POST handler
    pages.login_redirect(request, instance, next_url)  # 303 to /auth/login

Templates (``cozyd/web/templates/*.html``) use a deliberately tiny syntax,
with everything escaped::

    {{ name }}                  a value of the context, HTML-escaped
    {% t "login.title" %}       a message of the page's language; {name}
                                placeholders are filled from the context
    {% if name %}…{% else %}…{% endif %}   (also ``if not name``)
    {% include "_head.html" %}  another template, same context

``render`` adds ``lang``, ``csp_nonce`` (put it on every ``<style>`` and
``<script>``: the Content-Security-Policy allows nothing else), ``csrf_token``
(when the page asked for one) and ``domain`` (the instance) to the context.
Pages carry no external asset: their style and scripts are inline.

CSRF: a random token in the ``_csrf`` cookie (HttpOnly, SameSite=Strict,
one hour, as cozy-stack) must come back in the ``csrf_token`` field of
every form POST; missing → 400, different → 403 ``invalid csrf token``.
"""

from __future__ import annotations

import functools
import hmac
import html
import json
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from twisted.web.iweb import IRequest

from cozyd.errors import EchoError
from cozyd.instance.model import Instance
from cozyd.web.common import current_instance, instance_of
from cozyd.web.routing import state_of

TEMPLATES_DIR = os.path.join(os.path.dirname(__file__), "templates")
LOCALES_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "locales")
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"

CSRF_COOKIE = "_csrf"
CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 3600
_CSRF_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
#: Largest form body read for a page's POST.
MAX_FORM_BODY = 64 * 1024


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


class TemplateError(Exception):
    pass


# -- translations -------------------------------------------------------------------

@functools.cache
def messages(language: str) -> Mapping[str, str]:
    with open(os.path.join(LOCALES_DIR, f"{language}.json"), encoding="utf-8") as f:
        return json.load(f)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def translate(language: str, key: str, context: Mapping[str, Any] | None = None) -> str:
    """The message ``key`` in ``language`` (English if missing), with its
    ``{name}`` placeholders filled from ``context`` (plain text)."""
    text = messages(language).get(key) or messages(DEFAULT_LANGUAGE).get(key) or key
    if context is None:
        return text
    return _PLACEHOLDER.sub(lambda m: str(context.get(m.group(1), m.group(0))), text)


def accept_language(header: str) -> str | None:
    """The best of LANGUAGES for an ``Accept-Language`` header."""
    best: tuple[float, str] | None = None
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        language = tag.strip().lower().split("-")[0]
        if language not in LANGUAGES:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, language)
    return best[1] if best else None


def language_of(request: IRequest, instance: Instance | None) -> str:
    """The instance's locale when pages exist in it, else the browser's."""
    if instance is not None:
        language = (instance.locale or "").lower().replace("_", "-").split("-")[0]
        if language in LANGUAGES:
            return language
    header = (request.getHeader(b"accept-language") or b"").decode("latin-1")
    return accept_language(header) or DEFAULT_LANGUAGE


# -- templates ------------------------------------------------------------------------

_TOKEN = re.compile(r"(\{\{.*?\}\}|\{%.*?%\})", re.DOTALL)


@functools.cache
def _compile(name: str) -> list[Any]:
    if "/" in name or name.startswith("."):
        raise TemplateError(f"bad template name {name!r}")
    with open(os.path.join(TEMPLATES_DIR, name), encoding="utf-8") as f:
        source = f.read()
    root: list[Any] = []
    stack: list[tuple[str, Any]] = [("root", root)]
    for piece in _TOKEN.split(source):
        if not piece:
            continue
        target = stack[-1][1] if stack[-1][0] != "if" else stack[-1][1]["current"]
        if piece.startswith("{{"):
            expr = piece[2:-2].strip()
            if not re.fullmatch(r"\w+", expr):
                raise TemplateError(f"{name}: bad expression {piece!r}")
            target.append(("var", expr))
        elif piece.startswith("{%"):
            words = piece[2:-2].strip().split(None, 1)
            tag, arg = words[0], (words[1] if len(words) > 1 else "")
            if tag == "t":
                target.append(("t", json.loads(arg)))
            elif tag == "include":
                target.append(("include", json.loads(arg)))
            elif tag == "if":
                negate = arg.startswith("not ")
                variable = arg[4:].strip() if negate else arg.strip()
                node = {"var": variable, "negate": negate, "then": [], "else": None}
                node["current"] = node["then"]
                target.append(("if", node))
                stack.append(("if", node))
            elif tag == "else" and stack[-1][0] == "if":
                node = stack[-1][1]
                node["else"] = []
                node["current"] = node["else"]
            elif tag == "endif" and stack[-1][0] == "if":
                stack.pop()
            else:
                raise TemplateError(f"{name}: unknown tag {piece!r}")
        else:
            target.append(("text", piece))
    if len(stack) != 1:
        raise TemplateError(f"{name}: unclosed if")
    return root


def _render_nodes(nodes: list[Any], context: Mapping[str, Any], language: str,
                  out: list[str]) -> None:
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "var":
            item = context.get(value)
            out.append("" if item is None else html.escape(str(item)))
        elif kind == "t":
            out.append(html.escape(translate(language, value, context)))
        elif kind == "include":
            _render_nodes(_compile(value), context, language, out)
        elif kind == "if":
            truth = bool(context.get(value["var"]))
            if value["negate"]:
                truth = not truth
            branch = value["then"] if truth else value["else"]
            if branch:
                _render_nodes(branch, context, language, out)


def render_template(name: str, context: Mapping[str, Any], language: str) -> str:
    out: list[str] = []
    _render_nodes(_compile(name), context, language, out)
    return "".join(out)


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
    def render(self, request: IRequest, template: str, *, status: int = 200,
               **context: Any) -> bytes:
        instance = current_instance(request)
        language = language_of(request, instance)
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
        request.setHeader(b"Content-Security-Policy", (
            f"default-src 'none'; style-src 'nonce-{nonce}'; "
            f"script-src 'nonce-{nonce}'; img-src data:; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'").encode("ascii"))
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return body.encode("utf-8")

    def error_page(self, request: IRequest, status: int, message_key: str, *,
                   title_key: str = "error.title", **context: Any) -> bytes:
        """The generic error page, with translated title and message."""
        return self.render(request, "error.html", status=status,
                           error_title=self.translate(request, title_key, **context),
                           error_message=self.translate(request, message_key, **context),
                           **context)

    def translate(self, request: IRequest, key: str, **context: Any) -> str:
        language = language_of(request, current_instance(request))
        return translate(language, key, context)

    # -- CSRF ------------------------------------------------------------------
    def csrf_token(self, request: IRequest) -> str:
        """The token to put in the page's forms (also sets the cookie)."""
        token = state_of(request).csrf
        if token is None:
            raw = (request.getCookie(CSRF_COOKIE.encode("ascii")) or b"").decode(
                "latin-1")
            token = raw if _CSRF_RE.match(raw) else secrets.token_urlsafe(32)
            state_of(request).csrf = token
            request.addCookie(CSRF_COOKIE, token, path="/", max_age=str(CSRF_MAX_AGE),
                              secure=self.secure, httpOnly=True, sameSite="strict")
            request.setHeader(b"Vary", b"Cookie")
        return token

    def check_csrf(self, request: IRequest) -> None:
        """The form's ``csrf_token`` must match the cookie."""
        given = _form_value(request, CSRF_FIELD)
        if not given:
            raise CSRFMissing()
        expected = (request.getCookie(CSRF_COOKIE.encode("ascii")) or b"").decode(
            "latin-1")
        if not expected or not hmac.compare_digest(given.encode("utf-8"),
                                                   expected.encode("utf-8")):
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

    def login_redirect(self, request: IRequest, instance: Instance | None = None,
                       next_url: str | None = None) -> bytes:
        """303 to the login page, which comes back to ``next_url`` once the
        owner is logged in."""
        instance = instance or instance_of(request)
        query = {"redirect": next_url} if next_url else None
        return self.redirect(request, self.page_url(instance, "/auth/login", query))
