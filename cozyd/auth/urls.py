"""URLs of an instance: its pages, its apps' sub-domains, and where to send
the owner after a login or the onboarding — and the check of ``redirect``
parameters, which may only point at the instance or one of its apps.

Apps live on nested sub-domains (``drive.alice.example.com``), the default
mode of cozy-stack. The scheme comes from the ``[server] scheme`` setting
(``https`` behind a TLS front end).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from cozyd.errors import EchoError
from cozyd.instance.model import Instance
from cozyd.storage.interface import DatabaseNotFound, DocNotFound, DocumentStore
from cozyd.storage.names import db_name

HOME_SLUG = "home"
SETTINGS_DOCTYPE = "io.cozy.settings"
INSTANCE_SETTINGS_ID = "io.cozy.settings.instance"
APPS_DOCTYPE = "io.cozy.apps"


_UNSAFE = re.compile(r"[\\\s\x00-\x1f\x7f]")


class BadURL(EchoError):
    status = 400
    code = "bad_url"


def has_domain(instance: Instance, host: str) -> bool:
    return host == instance.domain or host in instance.domain_aliases


def split_app_host(host: str) -> tuple[str, str]:
    """``drive.alice.example.com`` → (``alice.example.com``, ``drive``)."""
    slug, dot, rest = host.partition(".")
    return (rest, slug) if dot else (host, "")


class InstanceURLs:
    def __init__(self, store: DocumentStore, *, scheme: str = "https"):
        self._store = store
        self.scheme = scheme

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    def page(self, instance: Instance, path: str, query: Any = None) -> str:
        """``<scheme>://<domain><path>?<query>`` (query: dict or pairs)."""
        encoded = urlencode(query) if query else ""
        return urlunsplit((self.scheme, instance.domain, path, encoded, ""))

    def subdomain(
        self, instance: Instance, slug: str, path: str = "/", fragment: str = ""
    ) -> str:
        return urlunsplit((self.scheme, f"{slug}.{instance.domain}", path, "", fragment))

    def app_route(self, instance: Instance, redirect: str) -> str:
        """``drive/#/folder`` → ``<scheme>://drive.<domain>/#/folder``."""
        before, hash_sign, fragment = redirect.partition("#")
        slug, slash, path = before.partition("/")
        if slash:
            path = path if path.startswith("/") or not path else "/" + path
        else:
            path = "/"
        return self.subdomain(instance, slug, path, fragment if hash_sign else "")

    async def settings_document(self, instance: Instance) -> dict[str, Any]:
        try:
            return await self._store.get_doc(
                db_name(instance.prefix, SETTINGS_DOCTYPE), INSTANCE_SETTINGS_ID
            )
        except (DocNotFound, DatabaseNotFound):
            return {}

    async def default_redirection(self, instance: Instance) -> str:
        """Where a logged-in owner goes by default: the setting
        ``default_redirection`` (``slug/path#fragment``), else the home app."""
        value = (await self.settings_document(instance)).get("default_redirection")
        if isinstance(value, str) and value and not value.startswith("http"):
            return self.app_route(instance, value)
        return self.subdomain(instance, HOME_SLUG)

    def onboarded_redirection(self, instance: Instance) -> str:
        return self.subdomain(instance, HOME_SLUG)

    async def app_installed(self, instance: Instance, slug: str) -> bool:
        if not slug:
            return False
        try:
            await self._store.get_doc(
                db_name(instance.prefix, APPS_DOCTYPE), f"{APPS_DOCTYPE}/{slug}"
            )
        except (DocNotFound, DatabaseNotFound):
            return False
        return True

    async def app_redirection(self, instance: Instance, redirect: str) -> str | None:
        """The URL of ``slug/path#fragment`` if that app is installed."""
        slug = redirect.partition("#")[0].partition("/")[0]
        if not await self.app_installed(instance, slug):
            return None
        return self.app_route(instance, redirect)

    async def check_redirect(
        self, instance: Instance, redirect: str | None, default: str | None
    ) -> str | None:
        """A ``redirect`` parameter made safe, or BadURL (400).

        It may be a full http(s) URL on the instance (its fragment is then
        replaced, so that an authorization code cannot leak through it) or
        on one of its app sub-domains, or an installed app's
        ``slug/path#fragment``. Empty: ``default``.
        """
        if not redirect:
            if default is None:
                return None
            redirect = default
        if _UNSAFE.search(redirect):
            # Browsers read a backslash as a slash and drop tabs and line
            # breaks: such a URL may not go where it seems to.
            raise BadURL("bad url: could not parse")
        try:
            parts = urlsplit(redirect)
        except ValueError:
            parts = None
        if parts is None or not parts.scheme:
            app_url = await self.app_redirection(instance, redirect)
            if app_url is None:
                raise BadURL("bad url: could not parse")
            parts = urlsplit(app_url)
        if parts.scheme not in ("http", "https"):
            raise BadURL("bad url: bad scheme")
        host = parts.netloc.rpartition("@")[2].lower()
        if not has_domain(instance, host):
            instance_host, slug = split_app_host(host)
            if not slug or not has_domain(instance, instance_host):
                raise BadURL("bad url: should be subdomain")
            return urlunsplit(parts)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, "="))

    @staticmethod
    def is_authorize_page(instance: Instance, url: str) -> bool:
        """A redirection to the OAuth consent page (not for the login
        scope): the session opened for it is a short one."""
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2].lower()
        if not has_domain(instance, host) or parts.path != "/auth/authorize":
            return False
        return "login" not in parse_qs(parts.query).get("scope", [])
