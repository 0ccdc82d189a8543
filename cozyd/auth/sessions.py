"""Login sessions of an instance's owner, and the history of logins.

A session is a document of the instance's ``io.cozy.sessions`` database
(created on first use). The browser holds it in the ``cozysessid`` cookie:
the session id and an HMAC-SHA256 of it keyed with the instance's
``session_secret``, so a passphrase change (which rotates the secret) voids
every cookie at once. A session lives while it is used: it expires 30 days
after it was last seen, and ``last_seen`` is written at most once a day.

Durations, as cozy-stack: a *normal* session ends with the browser (cookie
without Max-Age), a *long-run* one is kept 10 years by the browser, a
*short-run* one (opened to answer an OAuth consent) 5 minutes.

Each login also writes an ``io.cozy.sessions.logins`` entry (IP, user agent
and the OS and browser read from it), which the owner can review.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
import idna
from twisted.logger import Logger

from cozyd.documents import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    Documents,
    new_doc_id,
)
from cozyd.instance.model import Instance

SESSIONS_DOCTYPE = "io.cozy.sessions"
LOGINS_DOCTYPE = "io.cozy.sessions.logins"

COOKIE_NAME = "cozysessid"
DAY = 24 * 3600
#: A session not seen for this long is over.
MAX_AGE = 30 * DAY
#: ``last_seen`` is rewritten at most this often.
LAST_SEEN_PERIOD = DAY
LONG_RUN_COOKIE_AGE = 10 * 365 * DAY
SHORT_RUN_COOKIE_AGE = 5 * 60
MAX_CACHED_SESSIONS = 10_000
_MAX_COOKIE_LENGTH = 256
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

log = Logger()


class Duration(enum.Enum):
    SHORT = "short"
    NORMAL = "normal"
    LONG = "long"


def iso_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@attrs.define
class Session:
    id: str
    created_at: float
    last_seen: float
    long_run: bool = False
    short_run: bool = False
    rev: str | None = None
    #: Fields of the stored document this version does not know: kept.
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def duration(self) -> Duration:
        if self.long_run:
            return Duration.LONG
        if self.short_run:
            return Duration.SHORT
        return Duration.NORMAL

    def cookie_max_age(self) -> int | None:
        """Max-Age of the cookie; None: a browser-session cookie."""
        if self.long_run:
            return LONG_RUN_COOKIE_AGE
        if self.short_run:
            return SHORT_RUN_COOKIE_AGE
        return None

    def to_doc(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "_id": self.id,
                "created_at": iso_time(self.created_at),
                "last_seen": iso_time(self.last_seen),
                "long_run": self.long_run,
                "short_run": self.short_run,
            }
        )
        if self.rev:
            doc["_rev"] = self.rev
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Session:
        known = {"_id", "_rev", "created_at", "last_seen", "long_run", "short_run"}
        last_seen = parse_time(doc.get("last_seen")) or 0.0
        return cls(
            id=doc["_id"],
            rev=doc.get("_rev"),
            created_at=parse_time(doc.get("created_at")) or last_seen,
            last_seen=last_seen,
            long_run=bool(doc.get("long_run")),
            short_run=bool(doc.get("short_run")),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def attributes(self) -> dict[str, Any]:
        """The document as the API shows it (without ``_id``/``_rev``)."""
        doc = self.to_doc()
        doc.pop("_id", None)
        doc.pop("_rev", None)
        return doc


# -- the cookie ---------------------------------------------------------------


def cookie_name(instance: Instance, *, flat: bool = False) -> str:
    """``cozysessid`` with nested app sub-domains; with flat ones the
    cookie is on the parent domain, shared by its instances, so each has
    its own name, ``sess-<db prefix>`` (as cozy-stack's SessionCookieName)."""
    if flat:
        return f"sess-{instance.prefix}"
    return COOKIE_NAME


def cookie_domain(instance: Instance, *, flat: bool = False) -> str:
    """The cookie's Domain: the instance and all its app sub-domains
    (``.alice.example.com``), without port, in ASCII. With flat app
    sub-domains (``alice-notes.example.com``), the parent domain
    (``.example.com``), as cozy-stack's CookieDomain."""
    host = instance.domain.rsplit(":", 1)[0] if ":" in instance.domain else instance.domain
    try:
        host = idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        pass
    if flat and "." in host:
        host = host.split(".", 1)[1]
    return "." + host


def _mac(instance: Instance, session_id: str) -> bytes:
    message = f"{COOKIE_NAME}|{instance.domain}|{session_id}".encode()
    return hmac.new(instance.session_secret, message, hashlib.sha256).digest()


def encode_cookie(instance: Instance, session_id: str) -> str:
    mac = base64.urlsafe_b64encode(_mac(instance, session_id)).rstrip(b"=")
    return f"{session_id}.{mac.decode('ascii')}"


def decode_cookie(instance: Instance, value: str) -> str | None:
    """The session id in a cookie value, if its MAC is good."""
    if not value or len(value) > _MAX_COOKIE_LENGTH or not instance.session_secret:
        return None
    session_id, dot, mac_text = value.rpartition(".")
    if not dot or not _SESSION_ID.match(session_id):
        return None
    try:
        given = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(given, _mac(instance, session_id)):
        return None
    return session_id


# -- user agents --------------------------------------------------------------

_OS_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"Windows NT 10\.0"), lambda m: "Windows 10"),
    (re.compile(r"Windows NT 6\.3"), lambda m: "Windows 8.1"),
    (re.compile(r"Windows NT 6\.2"), lambda m: "Windows 8"),
    (re.compile(r"Windows NT 6\.1"), lambda m: "Windows 7"),
    (re.compile(r"Windows NT ([\d.]+)"), lambda m: f"Windows NT {m.group(1)}"),
    (re.compile(r"Windows"), lambda m: "Windows"),
    (re.compile(r"Android ([\d.]+)"), lambda m: f"Android {m.group(1)}"),
    (re.compile(r"Android"), lambda m: "Android"),
    (
        re.compile(r"CPU (?:iPhone )?OS ([\d_]+)"),
        lambda m: "iOS " + m.group(1).replace("_", "."),
    ),
    (
        re.compile(r"Mac OS X ([\d_.]+)"),
        lambda m: "Mac OS X " + m.group(1).replace("_", "."),
    ),
    (re.compile(r"Macintosh"), lambda m: "Mac OS X"),
    (re.compile(r"CrOS"), lambda m: "Chrome OS"),
    (re.compile(r"Linux (x86_64|i686|aarch64|armv\w+)"), lambda m: f"Linux {m.group(1)}"),
    (re.compile(r"Linux"), lambda m: "Linux"),
    (re.compile(r"FreeBSD"), lambda m: "FreeBSD"),
)

_BROWSER_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"CozyDrive"), "CozyDrive"),
    (re.compile(r"Edg(?:e|A|iOS)?/"), "Edge"),
    (re.compile(r"OPR/|Opera"), "Opera"),
    (re.compile(r"Firefox/|FxiOS/"), "Firefox"),
    (re.compile(r"HeadlessChrome/"), "Headless Chrome"),
    (re.compile(r"Chromium/"), "Chromium"),
    (re.compile(r"Chrome/|CriOS/"), "Chrome"),
    (re.compile(r"Safari/"), "Safari"),
    (re.compile(r"curl/"), "curl"),
)


def parse_user_agent(user_agent: str) -> tuple[str, str]:
    """``(os, browser)`` as shown in the login history ("" when unknown)."""
    os_name = next(
        (
            describe(m)
            for pattern, describe in _OS_RULES
            if (m := pattern.search(user_agent))
        ),
        "",
    )
    browser = next(
        (name for pattern, name in _BROWSER_RULES if pattern.search(user_agent)), ""
    )
    return os_name, browser


# -- storage ------------------------------------------------------------------


class SessionStore:
    """Sessions and login history of the instances, in their databases.

    A session read is remembered for ``ttl`` seconds (requests of an app
    come in bursts, each checking the session its token is bound to); this
    node forgets a session at once when it deletes it, other nodes within
    ``ttl``.
    """

    def __init__(
        self, documents: Documents, *, seconds: Callable[[], float], ttl: float = 5.0
    ):
        self._documents = documents
        self._seconds = seconds
        self._ttl = ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, Session]] = OrderedDict()

    def _remember(self, instance: Instance, session: Session) -> None:
        key = (instance.prefix, session.id)
        self._cache[key] = (self._seconds() + self._ttl, session)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_SESSIONS:
            self._cache.popitem(last=False)

    def _forget(self, instance: Instance, session_id: str) -> None:
        self._cache.pop((instance.prefix, session_id), None)

    async def _put(self, instance: Instance, doctype: str, doc: dict[str, Any]) -> dict:
        return await self._documents.put(instance, doctype, doc, create_db=True)

    async def create(self, instance: Instance, duration: Duration) -> Session:
        now = self._seconds()
        session = Session(
            id=new_doc_id(),
            created_at=now,
            last_seen=now,
            long_run=duration is Duration.LONG,
            short_run=duration is Duration.SHORT,
        )
        result = await self._put(instance, SESSIONS_DOCTYPE, session.to_doc())
        session.rev = result["rev"]
        self._remember(instance, session)
        return session

    async def get(self, instance: Instance, session_id: str) -> Session | None:
        """The live session, or None (an expired one is deleted on the way)."""
        cached = self._cache.get((instance.prefix, session_id))
        if cached is not None and cached[0] > self._seconds():
            return cached[1]
        try:
            session = Session.from_doc(
                await self._documents.get(instance, SESSIONS_DOCTYPE, session_id)
            )
        except (DocNotFound, DatabaseNotFound):
            return None
        now = self._seconds()
        if now > session.last_seen + MAX_AGE:
            await self.delete(instance, session)
            return None
        if now > session.last_seen + LAST_SEEN_PERIOD:
            session.last_seen = now
            try:
                session.rev = (
                    await self._documents.put(instance, SESSIONS_DOCTYPE, session.to_doc())
                )["rev"]
            except (DocConflict, DocNotFound):
                pass  # another request touched it meanwhile: good enough
        self._remember(instance, session)
        return session

    async def all(self, instance: Instance) -> list[Session]:
        """Live sessions (expired ones are deleted)."""
        try:
            result = await self._documents.all_docs(
                instance, SESSIONS_DOCTYPE, include_docs=True
            )
        except DatabaseNotFound:
            return []
        now = self._seconds()
        live = []
        for row in result["rows"]:
            if row["id"].startswith("_design/"):
                continue
            session = Session.from_doc(row["doc"])
            if now > session.last_seen + MAX_AGE:
                await self.delete(instance, session)
            else:
                live.append(session)
        return live

    async def delete(self, instance: Instance, session: Session) -> None:
        self._forget(instance, session.id)
        try:
            current = await self._documents.get(instance, SESSIONS_DOCTYPE, session.id)
            await self._documents.delete(
                instance, SESSIONS_DOCTYPE, session.id, current["_rev"], doc=current
            )
        except (DocNotFound, DatabaseNotFound, DocConflict):
            return
        log.info("session deleted on {domain}", domain=instance.domain)

    async def delete_others(self, instance: Instance, keep: str | None) -> int:
        """Delete every session but ``keep``; how many were deleted."""
        count = 0
        for session in await self.all(instance):
            if session.id != keep:
                await self.delete(instance, session)
                count += 1
        return count

    async def record_login(
        self,
        instance: Instance,
        session_id: str,
        *,
        ip: str,
        user_agent: str,
        client_registration: bool = False,
        method: str = "password",
    ) -> None:
        os_name, browser = parse_user_agent(user_agent)
        entry = {
            "_id": new_doc_id(),
            "session_id": session_id,
            "ip": ip,
            "user_agent": user_agent,
            "os": os_name,
            "browser": browser,
            "client_registration": client_registration,
            "created_at": iso_time(self._seconds()),
        }
        await self._put(instance, LOGINS_DOCTYPE, entry)
        log.info(
            "new login on {domain} from {ip} ({method})",
            domain=instance.domain,
            ip=ip,
            method=method,
        )
