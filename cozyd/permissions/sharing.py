"""Share by link: permission documents of type ``share``, their codes and
shortcodes, and the tokens of audience ``share`` they hand out.

A share is an ``io.cozy.permissions`` document, as cozy-stack stores it::

    {"type": "share", "source_id": "io.cozy.apps/drive",
     "permissions": {"files": {"type": "io.cozy.files", "verbs": ["GET"],
                               "values": ["<dir id>"]}},
     "codes": {"bob": "<JWT, aud share, sub bob>"},
     "shortcodes": {"bob": "<12 alphanumerics, or 6 digits>"},
     "expires_at": "2027-01-01T00:00:00Z", "password": "<scrypt hash>",
     "cozyMetadata": {...}}

Its rules are a subset of its creator's (an app, a konnector, an OAuth
client or a CLI token). A code is a JWT signed with the instance's OAuth
secret; it never expires by itself, the document's ``expires_at`` does.
A shortcode stands for its code anywhere a token is accepted.

Finding the document of a code or shortcode: cozy-stack asks CouchDB views
(``byToken``, ``by-short-code``); the storage interface has Mango only,
which cannot look inside a map's values. So each code and shortcode gets a
``_local`` document in the permissions database (``_local/sharecode-<sha256
of the code>`` → the permission id): invisible to ``_all_docs``,
``_changes`` and ``_find``, never replicated, no event. It is only a hint:
a token is accepted only if the document it points to exists, is a share,
still lists that very code and has not expired. A signed code with no hint
(a document imported or replicated from elsewhere) is looked for among the
share documents once, and its hint written then.

Revocation (``DELETE``) deletes the document: its codes stop working at
once on this node (the caches here are told), within the cache's few
seconds on the others.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import re
import secrets
import string
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cozyd import adminpass
from cozyd.auth import tokens
from cozyd.documents import Documents
from cozyd.documents import rules as doc_rules
from cozyd.errors import (
    BadRequest,
    Conflict,
    EchoError,
    ExpiredToken,
    InvalidToken,
    NotFound,
    PermissionDenied,
    Unprocessable,
)
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import PERMISSIONS_DOCTYPE, PermissionResolver
from cozyd.permissions.rules import (
    InvalidPermission,
    PermissionSet,
    Rule,
    type_covers,
)
from cozyd.storage.interface import (
    DatabaseNotFound,
    DocConflict,
    DocNotFound,
    new_doc_id,
)

SHARE = "share"
FILES = "io.cozy.files"
#: Who may create shares (cozy-stack's ``CheckSetPermissions``)...
CREATORS = frozenset({"app", "konnector", "oauth", "cli"})
#: ... and who may change or revoke them (``CanUpdateShareByLink``).
UPDATERS = CREATORS  # who made a share may change or revoke it

#: A shortcode where a token is expected: 6 digits or 12 word characters,
#: and a final "." tolerated (links pasted at the end of a sentence).
SHORTCODE_RE = re.compile(r"^(?:[0-9]{6}|[A-Za-z0-9_]{12})\.?$")
SHORTCODE_LENGTH = 12
_ALPHANUMERICS = string.ascii_letters + string.digits

MAX_CODES = 100
MAX_CODE_NAME = 256
MAX_PASSWORD = 1024
#: Share documents looked through at most when a signed code has no hint.
MAX_SCAN = 10_000
DEFAULT_PAGE = 30
MAX_PAGE = 100
TINY_MAX_TTL = 3600.0
DOCTYPE_VERSION = "1"

_HINT_CODE = "_local/sharecode-"
_HINT_SHORT = "_local/shortcode-"
_PASSWORD_COOKIE = "pass"


# -- errors, as cozy-stack words them ---------------------------------------------
def not_subset() -> PermissionDenied:
    return PermissionDenied("Attempt to create a larger permission set")


def only_apps() -> PermissionDenied:
    return PermissionDenied("Only apps can create sharing permissions")


def not_parent() -> PermissionDenied:
    return PermissionDenied("Permissions can be updated only by its parent")


def code_or_set() -> EchoError:
    return EchoError(
        "The patch doc should have property 'codes' or 'permissions', not both",
        status=400,
        code="bad_request",
    )


def invalid_attribute(name: str, detail: str) -> Unprocessable:
    return Unprocessable(
        detail, code="invalid_attribute", source={"pointer": f"/data/attributes/{name}"}
    )


# -- time -------------------------------------------------------------------------
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)
_BIG_UNITS = {"Y": 365 * 86400.0, "M": 30 * 86400.0, "W": 7 * 86400.0, "D": 86400.0}
_BIG_PART = re.compile(r"(\d+)([YMWD])")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch; ValueError if ``text`` is not RFC 3339."""
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an RFC 3339 date")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone in ("Z", "z"):
        tz = datetime.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        tz = datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))
    when = datetime.datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
    )
    return when.timestamp() + (float("0." + fraction) if fraction else 0.0)


def format_rfc3339(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_ttl(text: str) -> float:
    """A bigduration (``1Y2M3W4D5h6m7s``: years of 365 days, months of 30,
    weeks, days, then a Go duration), in seconds; ValueError otherwise."""
    text = text.strip()
    position, total = 0, 0.0
    for match in _BIG_PART.finditer(text):
        if match.start() != position:
            break
        total += int(match.group(1)) * _BIG_UNITS[match.group(2)]
        position = match.end()
    for match in _GO_PART.finditer(text, position):
        if match.start() != position:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    return total


def expiry_of(doc: Mapping[str, Any]) -> float | None:
    """When the share expires (None: never; -inf: unreadable, so expired,
    as cozy-stack treats an ``expires_at`` it cannot parse)."""
    value = doc.get("expires_at")
    if value is None:
        return None
    if isinstance(value, str) and value:
        try:
            return parse_rfc3339(value)
        except ValueError:
            return float("-inf")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # the old documents' Unix seconds
    return float("-inf")


def is_expired(doc: Mapping[str, Any], now: float) -> bool:
    expiry = expiry_of(doc)
    return expiry is not None and expiry < now


# -- subsets ------------------------------------------------------------------------
def rule_in_subset(parent: PermissionSet, rule: Rule) -> bool:
    """Does ``parent`` allow everything ``rule`` allows? A parent rule with
    values covers only rules naming some of those values with the same
    selector (never a whole-type rule, which cozy-stack lets through)."""
    if parent.is_maximal:
        return True
    for _, candidate in parent.rules:
        if not type_covers(candidate.type, rule.type) and candidate.type != rule.type:
            continue
        if not rule.verbs <= candidate.verbs:
            continue
        if not candidate.values and not candidate.selector:
            return True
        if candidate.selector != rule.selector or not rule.values:
            continue
        if set(rule.values) <= set(candidate.values):
            return True
    return False


def is_subset(child: PermissionSet, parent: PermissionSet) -> bool:
    if child.is_maximal:
        return False
    if parent.is_maximal:
        return True
    return all(rule_in_subset(parent, rule) for _, rule in child.rules)


def check_shareable(rule: Rule) -> None:
    """Reserved doctypes cannot be shared (files excepted, as cozy-stack)."""
    if type_covers(rule.type, FILES):
        return
    doc_rules.check_writable(rule.type)


# -- documents ----------------------------------------------------------------------
def set_of(doc: Mapping[str, Any], *, subject: str = "") -> PermissionSet:
    return PermissionSet.from_json(
        doc.get("permissions"),
        type=str(doc.get("type") or SHARE),
        source_id=str(doc.get("source_id") or ""),
        id=str(doc.get("_id") or ""),
        subject=subject,
    )


def public_attributes(doc: Mapping[str, Any], *, with_codes: bool) -> dict[str, Any]:
    """What the API shows of a permission document: never the password's
    hash (``true`` instead), codes only to those who may hand them out."""
    attributes = {k: v for k, v in doc.items() if not k.startswith("_")}
    if not with_codes:
        attributes.pop("codes", None)
        attributes.pop("shortcodes", None)
    if attributes.get("password"):
        attributes["password"] = True
    else:
        attributes.pop("password", None)
    return attributes


def jsonapi_object(doc: Mapping[str, Any], *, with_codes: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "type": PERMISSIONS_DOCTYPE,
        "id": doc.get("_id", ""),
        "attributes": public_attributes(doc, with_codes=with_codes),
        "meta": {"rev": doc["_rev"]} if doc.get("_rev") else {},
        "links": {"self": f"/permissions/{doc.get('_id', '')}"},
    }
    source = str(doc.get("source_id") or "")
    if source.startswith("io.cozy.sharings/"):
        result["links"]["related"] = "/sharings/" + source.partition("/")[2]
    return result


def _hint_id(prefix: str, code: str) -> str:
    return prefix + hashlib.sha256(code.encode("utf-8")).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _code_names(names: Any) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    result: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise BadRequest("code names must be strings")
        name = name.strip()
        if not name:
            continue
        if len(name) > MAX_CODE_NAME or any(ord(c) < 32 for c in name):
            raise BadRequest(
                f"a code name has at most {MAX_CODE_NAME} characters, none of control"
            )
        if name not in result:
            result.append(name)
    if len(result) > MAX_CODES:
        raise BadRequest(f"a share holds at most {MAX_CODES} codes")
    return result


class ShareLinks:
    """Create, read, change, revoke and resolve shares by link."""

    def __init__(
        self,
        documents: Documents,
        resolver: PermissionResolver,
        *,
        seconds: Callable[[], float],
        run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]],
        ttl: float = 5.0,
        scrypt_n: int = adminpass.SCRYPT_N,
        on_change: Callable[[Instance, str], None] | None = None,
    ):
        self._documents = documents
        self._resolver = resolver
        self._seconds = seconds
        self._run_hashing = run_hashing
        self._ttl = ttl
        self._scrypt_n = scrypt_n
        self._on_change = on_change
        self._cache: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    # -- cache ------------------------------------------------------------------
    def _cached(self, key: tuple[str, str]) -> tuple[bool, Any]:
        entry = self._cache.get(key)
        if entry is not None and entry[0] > self._seconds():
            return True, entry[1]
        return False, None

    def _remember(self, key: tuple[str, str], value: Any) -> None:
        self._cache[key] = (self._seconds() + self._ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > 50_000:
            self._cache.popitem(last=False)

    def forget(self, instance: Instance, perm_id: str) -> None:
        """A share changed on this node: its next use reads it again."""
        self._cache.pop((instance.prefix, "doc:" + perm_id), None)
        if self._on_change is not None:
            self._on_change(instance, perm_id)

    # -- reading ----------------------------------------------------------------
    async def read(self, instance: Instance, perm_id: str) -> dict[str, Any] | None:
        try:
            return await self._documents.get(instance, PERMISSIONS_DOCTYPE, perm_id)
        except (DocNotFound, DatabaseNotFound):
            return None

    async def _read_cached(self, instance: Instance, perm_id: str) -> dict[str, Any] | None:
        key = (instance.prefix, "doc:" + perm_id)
        hit, value = self._cached(key)
        if hit:
            return value
        value = await self.read(instance, perm_id)
        self._remember(key, value)
        return value

    async def get(
        self, instance: Instance, perm_id: str, *, include_expired: bool = False
    ) -> dict[str, Any]:
        doc = await self.read(instance, perm_id) if perm_id[:1] not in ("", "_") else None
        if doc is None:
            raise NotFound("missing")
        if not include_expired and is_expired(doc, self._seconds()):
            raise ExpiredToken()
        return doc

    # -- who may ----------------------------------------------------------------
    async def sources_of(self, instance: Instance, caller: PermissionSet) -> set[str]:
        """The source ids whose shares ``caller`` holds: its own, and for an
        OAuth client linked to an app (``registry://<slug>``), the app's."""
        sources = {caller.source_id} if caller.source_id else set()
        if caller.type == "oauth" and caller.source_id:
            linked = await self._linked_app(instance, caller.source_id)
            if linked:
                sources.add(linked)
        return sources

    async def _linked_app(self, instance: Instance, client_id: str) -> str:
        client = await self._resolver.client(instance, client_id)
        software = str((client or {}).get("software_id") or "")
        if software.startswith("registry://"):
            slug = software[len("registry://") :].strip("/")
            if slug:
                return f"io.cozy.apps/{slug}"
        return ""

    async def may_update(
        self, instance: Instance, caller: PermissionSet, doc: Mapping[str, Any]
    ) -> bool:
        if doc.get("type") != SHARE or caller.type not in UPDATERS:
            return False
        if doc.get("source_id") and doc.get("source_id") in await self.sources_of(
            instance, caller
        ):
            return True
        try:
            return is_subset(set_of(doc), caller)
        except InvalidPermission:
            return False

    async def may_read(
        self, instance: Instance, caller: PermissionSet, doc: Mapping[str, Any]
    ) -> bool:
        if caller.id and caller.id == doc.get("_id"):
            return True
        if caller.type == SHARE:
            return False  # a share's holder sees its own share, nothing else
        if (doc.get("source_id") or "") == caller.source_id:
            return True
        return caller.is_maximal

    # -- creating -----------------------------------------------------------------
    async def create(
        self,
        instance: Instance,
        caller: PermissionSet,
        attributes: Mapping[str, Any],
        *,
        names: Any = None,
        ttl: str | None = None,
        tiny: bool = False,
    ) -> dict[str, Any]:
        """A new share of (part of) ``caller``'s permissions, with a code
        and a shortcode per name; the stored document (with its password's
        hash: the web layer hides it)."""
        if caller.type not in CREATORS:
            raise only_apps()
        names = _code_names(names)
        requested = self._requested_set(attributes.get("permissions"), required=True)
        if not is_subset(requested, caller):
            raise not_subset()
        for _, rule in requested.rules:
            check_shareable(rule)
        now = self._seconds()
        expires_at: str | None = None
        if ttl:
            try:
                duration = parse_ttl(ttl)
            except ValueError as e:
                raise BadRequest(f"the ttl parameter is not a duration: {e}") from None
            expires_at = format_rfc3339(now + duration)
            tiny = tiny and duration <= TINY_MAX_TTL
        else:
            tiny = False
            expires_at = self._expiry_attribute(attributes.get("expires_at"))
        password = attributes.get("password")
        if password is not None and not isinstance(password, str):
            raise invalid_attribute("password", "the password must be a string")
        metadata = attributes.get("cozyMetadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise invalid_attribute("cozyMetadata", "cozyMetadata must be an object")

        source_id = caller.source_id
        if caller.type == "oauth" and caller.source_id:
            source_id = await self._linked_app(instance, caller.source_id) or source_id
        doc: dict[str, Any] = {
            "_id": new_doc_id(),
            "type": SHARE,
            "source_id": source_id,
            "permissions": requested.permissions_json(),
        }
        if expires_at is not None:
            doc["expires_at"] = expires_at
        if password:
            if len(password) > MAX_PASSWORD:
                raise invalid_attribute("password", "the password is too long")
            doc["password"] = await self._hash(password)
        doc["cozyMetadata"] = self._metadata(metadata, caller, now)
        codes, shortcodes = await self._new_codes(instance, doc["_id"], names, tiny, now)
        if codes:
            doc["codes"] = codes
            doc["shortcodes"] = shortcodes
        result = await self._documents.put(
            instance, PERMISSIONS_DOCTYPE, doc, create_db=True
        )
        doc["_rev"] = result["rev"]
        return doc

    def _requested_set(self, permissions: Any, *, required: bool) -> PermissionSet:
        if permissions is None or permissions == {}:
            if required:
                raise invalid_attribute("permissions", "a share needs permissions")
            return PermissionSet(type=SHARE, rules=())
        if not isinstance(permissions, dict):
            raise invalid_attribute(
                "permissions", "permissions must be an object of title: rule"
            )
        return PermissionSet.from_json(permissions, type=SHARE)

    def _expiry_attribute(self, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise invalid_attribute("expires_at", "expires_at must be an RFC 3339 date")
        try:
            return format_rfc3339(parse_rfc3339(value))
        except (ValueError, OverflowError, OSError) as e:
            raise invalid_attribute("expires_at", str(e)) from None

    def _metadata(
        self, given: dict[str, Any] | None, caller: PermissionSet, now: float
    ) -> dict[str, Any]:
        when = format_rfc3339(now)
        slug = caller.subject if caller.type in ("app", "konnector", "oauth") else ""
        metadata = copy.deepcopy(given) if given else {}
        metadata.setdefault("doctypeVersion", DOCTYPE_VERSION)
        metadata.setdefault("metadataVersion", 1)
        metadata.setdefault("createdAt", when)
        metadata.setdefault("updatedAt", when)
        if slug:
            metadata.setdefault("createdByApp", slug)
            metadata.setdefault("updatedByApps", [{"slug": slug, "date": when}])
        return metadata

    async def _hash(self, password: str) -> str:
        n = self._scrypt_n
        return await self._run_hashing(lambda: adminpass.hash_passphrase(password, n=n))

    async def _new_codes(
        self, instance: Instance, perm_id: str, names: list[str], tiny: bool, now: float
    ) -> tuple[dict[str, str], dict[str, str]]:
        """A code and a shortcode per name, their hints written first (a
        hint without its document points nowhere, and is refused)."""
        codes: dict[str, str] = {}
        shortcodes: dict[str, str] = {}
        for name in names:
            code = tokens.issue(
                instance,
                tokens.SHARE,
                name,
                issued_at=now,
                token_id=secrets.token_hex(8),
            )
            await self._put_hint(instance, _hint_id(_HINT_CODE, code), perm_id)
            for _ in range(20):
                short = (
                    f"{secrets.randbelow(10**6):06d}"
                    if tiny
                    else "".join(
                        secrets.choice(_ALPHANUMERICS) for _ in range(SHORTCODE_LENGTH)
                    )
                )
                if await self._shortcode_free(instance, short):
                    break
            else:
                raise BadRequest("no free shortcode was found; try again")
            await self._put_hint(instance, _hint_id(_HINT_SHORT, short), perm_id)
            codes[name] = code
            shortcodes[name] = short
        return codes, shortcodes

    async def _shortcode_free(self, instance: Instance, short: str) -> bool:
        perm_id = await self._hint(instance, _hint_id(_HINT_SHORT, short))
        if perm_id is None:
            return True
        doc = await self.read(instance, perm_id)
        return doc is None or short not in (doc.get("shortcodes") or {}).values()

    async def _put_hint(self, instance: Instance, hint_id: str, perm_id: str) -> None:
        db = self._documents.db(instance, PERMISSIONS_DOCTYPE)
        store = self._documents.store
        for _ in range(5):
            try:
                current = await store.get_local(db, hint_id)
            except DocNotFound:
                current = None
            except DatabaseNotFound:
                await store.ensure_db(db)
                current = None
            doc: dict[str, Any] = {"_id": hint_id, "permission_id": perm_id}
            if current is not None:
                doc["_rev"] = current["_rev"]
            try:
                await self._documents.put_local(instance, PERMISSIONS_DOCTYPE, doc)
                return
            except DocConflict:
                continue

    async def _hint(self, instance: Instance, hint_id: str) -> str | None:
        db = self._documents.db(instance, PERMISSIONS_DOCTYPE)
        try:
            doc = await self._documents.store.get_local(db, hint_id)
        except (DocNotFound, DatabaseNotFound):
            return None
        value = doc.get("permission_id")
        return value if isinstance(value, str) else None

    async def _drop_hints(self, instance: Instance, doc: Mapping[str, Any]) -> None:
        db = self._documents.db(instance, PERMISSIONS_DOCTYPE)
        store = self._documents.store
        hints = [_hint_id(_HINT_CODE, c) for c in (doc.get("codes") or {}).values()]
        hints += [_hint_id(_HINT_SHORT, c) for c in (doc.get("shortcodes") or {}).values()]
        for hint_id in hints:
            try:
                current = await store.get_local(db, hint_id)
                if current.get("permission_id") == doc.get("_id"):
                    await store.delete_local(db, hint_id, current.get("_rev"))
            except (DocNotFound, DatabaseNotFound, DocConflict):
                continue

    # -- changing -----------------------------------------------------------------
    async def patch(
        self,
        instance: Instance,
        caller: PermissionSet,
        perm_id: str,
        attributes: Mapping[str, Any],
    ) -> dict[str, Any]:
        """cozy-stack's ``PATCH /permissions/:id``: rules added (within the
        caller's rights) or removed (``"title": {}``), codes kept or
        dropped (a new name gets a fresh code), password and expiry set or
        cleared (``""``)."""
        if caller.type not in CREATORS:
            raise not_parent()
        permissions = attributes.get("permissions")
        if permissions is not None and not isinstance(permissions, dict):
            raise invalid_attribute(
                "permissions", "permissions must be an object of title: rule"
            )
        codes = attributes.get("codes")
        if codes is not None and not isinstance(codes, dict):
            raise invalid_attribute("codes", "codes must be an object of name: code")
        patch_set = bool(permissions)
        patch_codes = bool(codes)
        password = attributes.get("password")
        expires_at = attributes.get("expires_at")
        if patch_codes == patch_set and (
            patch_set or (password is None and expires_at is None)
        ):
            raise code_or_set()
        if password is not None and not isinstance(password, str):
            raise invalid_attribute("password", "the password must be a string")
        if password and len(password) > MAX_PASSWORD:
            raise invalid_attribute("password", "the password is too long")
        new_expiry = self._expiry_attribute(expires_at) if expires_at is not None else None
        metadata = attributes.get("cozyMetadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise invalid_attribute("cozyMetadata", "cozyMetadata must be an object")

        current = await self.get(instance, perm_id, include_expired=True)
        if current.get("type") != SHARE:
            raise not_parent()  # apps' own documents change at install, not here
        allowed = await self.may_update(instance, caller, current)
        additions: list[tuple[str, Rule]] = []
        removals: list[str] = []
        if patch_set:
            for title, rule in permissions.items():
                if isinstance(rule, dict) and not rule.get("type"):
                    removals.append(str(title))
                    continue
                parsed = Rule.from_json(rule)
                if parsed.type != "*" and not parsed.type.endswith(".*"):
                    doc_rules.check_doctype_name(parsed.type)
                if not rule_in_subset(caller, parsed):
                    raise not_subset()
                check_shareable(parsed)
                additions.append((str(title), parsed))
            if removals and not allowed:
                raise not_parent()
        elif not allowed:
            raise not_parent()
        hashed = await self._hash(password) if password else None
        now = self._seconds()
        old_codes = dict(current.get("codes") or {})
        fresh: dict[str, str] = {}
        fresh_short: dict[str, str] = {}
        if patch_codes:
            names = _code_names(list(codes))
            for name in names:
                given = codes[name]
                if name in old_codes and (
                    not isinstance(given, str) or not _same(given, old_codes[name])
                ):
                    raise invalid_attribute(
                        "codes", f"the code of {name!r} is not this share's"
                    )
            new_names = [name for name in names if name not in old_codes]
            fresh, fresh_short = await self._new_codes(
                instance, perm_id, new_names, False, now
            )

        def change(doc: dict[str, Any]) -> None:
            if password is not None:
                if hashed:
                    doc["password"] = hashed
                else:
                    doc.pop("password", None)
            if expires_at is not None:
                if new_expiry is None:
                    doc.pop("expires_at", None)
                else:
                    doc["expires_at"] = new_expiry
            if patch_codes:
                kept = {n: c for n, c in (doc.get("codes") or {}).items() if n in codes}
                shorts = {
                    n: c for n, c in (doc.get("shortcodes") or {}).items() if n in kept
                }
                kept.update(fresh)
                shorts.update(fresh_short)
                doc["codes"] = kept
                doc["shortcodes"] = shorts
            if patch_set:
                rules = dict(doc.get("permissions") or {})
                for title in removals:
                    rules.pop(title, None)
                for title, rule in additions:
                    rules[title] = rule.to_json()
                doc["permissions"] = rules
            meta = (
                copy.deepcopy(metadata) if metadata else dict(doc.get("cozyMetadata") or {})
            )
            meta["updatedAt"] = format_rfc3339(now)
            slug = caller.subject if caller.type in ("app", "konnector", "oauth") else ""
            if slug and not metadata:
                apps = [a for a in meta.get("updatedByApps") or [] if isinstance(a, dict)]
                apps = [a for a in apps if a.get("slug") != slug]
                apps.append({"slug": slug, "date": meta["updatedAt"]})
                meta["updatedByApps"] = apps
            doc["cozyMetadata"] = meta

        updated = await self._update(instance, perm_id, change)
        dropped = {
            "_id": perm_id,
            "codes": {
                n: c for n, c in old_codes.items() if n not in updated.get("codes", {})
            },
            "shortcodes": {
                n: c
                for n, c in (current.get("shortcodes") or {}).items()
                if n not in (updated.get("shortcodes") or {})
            },
        }
        await self._drop_hints(instance, dropped)
        self.forget(instance, perm_id)
        return updated

    async def _update(
        self, instance: Instance, perm_id: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Read, change, write; read again on a conflict. A share deleted
        meanwhile stays deleted (404), never written back."""
        for _ in range(5):
            current = await self.read(instance, perm_id)
            if current is None or current.get("type") != SHARE:
                raise NotFound("missing")
            doc = copy.deepcopy(current)
            change(doc)
            try:
                result = await self._documents.put(instance, PERMISSIONS_DOCTYPE, doc)
            except DocConflict:
                continue
            doc["_rev"] = result["rev"]
            return doc
        raise Conflict(f"{perm_id} is being changed concurrently; try again")

    async def revoke(self, instance: Instance, caller: PermissionSet, perm_id: str) -> None:
        doc = await self.get(instance, perm_id, include_expired=True)
        if not await self.may_update(instance, caller, doc):
            raise not_parent()
        await self._documents.delete(
            instance, PERMISSIONS_DOCTYPE, perm_id, doc["_rev"], doc=doc
        )
        self.forget(instance, perm_id)
        await self._drop_hints(instance, doc)

    # -- listing ------------------------------------------------------------------
    async def shared_by_link(
        self,
        instance: Instance,
        doctype: str,
        *,
        limit: int = DEFAULT_PAGE,
        after: str | None = None,
        skip: int = 0,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Shares with a rule on ``doctype``, by id; and the id the next
        page starts after (None: no more)."""
        limit = max(1, min(limit, MAX_PAGE))
        found: list[dict[str, Any]] = []
        start = after
        skipped = 0
        while True:
            try:
                page = await self._documents.all_docs(
                    instance,
                    PERMISSIONS_DOCTYPE,
                    include_docs=True,
                    start_key=start,
                    limit=200 + (1 if start is not None else 0),
                )
            except DatabaseNotFound:
                return [], None
            rows = page["rows"]
            if start is not None and rows and rows[0]["id"] == start:
                rows = rows[1:]
            for row in rows:
                doc = row.get("doc") or {}
                if doc.get("type") != SHARE or not _has_rule_on(doc, doctype):
                    continue
                if skipped < skip:
                    skipped += 1
                    continue
                if len(found) == limit:
                    return found, found[-1]["_id"]
                found.append(doc)
            if len(rows) < 200:
                return found, None
            start = rows[-1]["id"]

    async def verbs_on(
        self, instance: Instance, refs: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """For each ``(doctype, id)`` some share names by id, the verbs the
        shares give on it (cozy-stack's ``byDoc`` view: every share, by
        value; selector rules count for their own field only)."""
        wanted = set(refs)
        verbs: dict[tuple[str, str], set[str]] = {}
        start: str | None = None
        seen = 0
        while wanted and seen < MAX_SCAN:
            try:
                page = await self._documents.all_docs(
                    instance,
                    PERMISSIONS_DOCTYPE,
                    include_docs=True,
                    start_key=start,
                    limit=201 if start is not None else 200,
                )
            except DatabaseNotFound:
                break
            rows = page["rows"]
            if start is not None and rows and rows[0]["id"] == start:
                rows = rows[1:]
            for row in rows:
                doc = row.get("doc") or {}
                if doc.get("type") != SHARE:
                    continue
                try:
                    rules = set_of(doc).rules
                except InvalidPermission:
                    continue
                for _, rule in rules:
                    if rule.selector:
                        continue
                    for value in rule.values:
                        key = (rule.type, value)
                        if key in wanted:
                            verbs.setdefault(key, set()).update(rule.verbs)
            seen += len(rows)
            if len(rows) < 200:
                break
            start = rows[-1]["id"]
        order = ("GET", "POST", "PUT", "PATCH", "DELETE")
        result = []
        for key in dict.fromkeys(refs):
            if key in verbs:
                result.append(
                    {
                        "id": key[1],
                        "type": key[0],
                        "verbs": [v for v in order if v in verbs[key]],
                    }
                )
        return result

    # -- resolving tokens -----------------------------------------------------------
    async def token_for_shortcode(self, instance: Instance, shortcode: str) -> str:
        """The code a shortcode stands for (403 when none)."""
        short = shortcode[:-1] if shortcode.endswith(".") else shortcode
        key = (instance.prefix, "short:" + hashlib.sha256(short.encode()).hexdigest())
        hit, perm_id = self._cached(key)
        if not hit:
            perm_id = await self._hint(instance, _hint_id(_HINT_SHORT, short))
            self._remember(key, perm_id)
        doc = await self._read_cached(instance, perm_id) if perm_id else None
        if doc is not None and doc.get("type") == SHARE:
            codes = doc.get("codes") or {}
            for name, value in (doc.get("shortcodes") or {}).items():
                if isinstance(value, str) and _same(value, short) and name in codes:
                    return str(codes[name])
        raise PermissionDenied("no permission doc for this shortcode")

    async def permissions_for(
        self,
        instance: Instance,
        token: str,
        claims: tokens.Claims,
        cookie: Callable[[str], str | None],
    ) -> PermissionSet:
        """The set a share code grants: the share must exist, list that code,
        not have expired, and (password-protected) the request must carry
        the cookie the password gave."""
        doc = await self._doc_of_code(instance, token)
        if doc is None:
            raise PermissionDenied("no permission doc for this token")
        if is_expired(doc, self._seconds()):
            raise ExpiredToken()
        if doc.get("password") and not self.password_cookie_ok(
            instance, doc["_id"], cookie(password_cookie_name(doc["_id"]))
        ):
            raise InvalidToken()
        try:
            return set_of(doc, subject=claims.subject)
        except InvalidPermission:
            raise InvalidToken() from None

    async def _doc_of_code(self, instance: Instance, token: str) -> dict[str, Any] | None:
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        key = (instance.prefix, "code:" + digest)
        hit, perm_id = self._cached(key)
        if not hit:
            perm_id = await self._hint(instance, _HINT_CODE + digest)
            if perm_id is not None and not _lists(
                await self._read_cached(instance, perm_id), token
            ):
                perm_id = None  # a stale hint: the share went, or moved
            if perm_id is None:
                perm_id = await self._scan_for_code(instance, token)
            self._remember(key, perm_id)
        if not perm_id:
            return None
        doc = await self._read_cached(instance, perm_id)
        return doc if _lists(doc, token) else None

    async def _scan_for_code(self, instance: Instance, token: str) -> str | None:
        """A signed code without its hint (a share imported from elsewhere):
        looked for once among the shares, and its hint written."""
        start: str | None = None
        seen = 0
        while seen < MAX_SCAN:
            try:
                page = await self._documents.all_docs(
                    instance,
                    PERMISSIONS_DOCTYPE,
                    include_docs=True,
                    start_key=start,
                    limit=201 if start is not None else 200,
                )
            except DatabaseNotFound:
                return None
            rows = page["rows"]
            if start is not None and rows and rows[0]["id"] == start:
                rows = rows[1:]
            for row in rows:
                doc = row.get("doc") or {}
                if _lists(doc, token):
                    await self._put_hint(instance, _hint_id(_HINT_CODE, token), doc["_id"])
                    return doc["_id"]
            seen += len(rows)
            if len(rows) < 200:
                return None
            start = rows[-1]["id"]
        return None

    # -- passwords ------------------------------------------------------------------
    async def check_password(self, instance: Instance, perm_id: str, password: str) -> str:
        """``"none"`` (no password), ``"ok"``, or Forbidden; NotFound (also
        for an expired share)."""
        doc = await self.read(instance, perm_id) if perm_id[:1] not in ("", "_") else None
        if doc is None or doc.get("type") != SHARE or is_expired(doc, self._seconds()):
            raise NotFound("the share does not exist")
        stored = doc.get("password")
        if not isinstance(stored, str) or not stored:
            return "none"
        if len(password) > MAX_PASSWORD:
            raise PermissionDenied("Invalid password")

        def verify() -> bool:
            try:
                return adminpass.verify_passphrase(password, stored)
            except ValueError:
                return False

        if not await self._run_hashing(verify):
            raise PermissionDenied("Invalid password")
        return "ok"

    def password_cookie(self, instance: Instance, perm_id: str) -> str:
        mac = _cookie_mac(instance, perm_id)
        return f"{perm_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode('ascii')}"

    def password_cookie_ok(
        self, instance: Instance, perm_id: str, value: str | None
    ) -> bool:
        if not value or len(value) > 512:
            return False
        given_id, dot, mac_text = value.rpartition(".")
        if not dot or given_id != perm_id:
            return False
        try:
            given = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(given, _cookie_mac(instance, perm_id))


def password_cookie_name(perm_id: str) -> str:
    return _PASSWORD_COOKIE + perm_id


def _cookie_mac(instance: Instance, perm_id: str) -> bytes:
    message = f"{_PASSWORD_COOKIE}{perm_id}|{instance.domain}|{perm_id}".encode()
    return hmac.new(instance.session_secret, message, hashlib.sha256).digest()


def _lists(doc: Mapping[str, Any] | None, token: str) -> bool:
    """Is ``doc`` a share that still hands out ``token``?"""
    if doc is None or doc.get("type") != SHARE:
        return False
    return any(
        isinstance(value, str) and _same(value, token)
        for value in (doc.get("codes") or {}).values()
    )


def _has_rule_on(doc: Mapping[str, Any], doctype: str) -> bool:
    rules = doc.get("permissions")
    if not isinstance(rules, dict):
        return False
    return any(isinstance(r, dict) and r.get("type") == doctype for r in rules.values())
