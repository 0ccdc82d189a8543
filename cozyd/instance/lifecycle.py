"""Creating, changing and destroying instances.

Creation claims the domain first (the instance document, whose id is a hash
of the domain, is written with ``state: creating``), then builds the
databases, indexes, settings and directory tree, and finally marks the
instance ready. A creation that died half-way (kill -9) leaves a claim in
the ``creating`` state that no running creation owns: a new ``add`` of the
same domain, or a ``destroy``, clears the leftovers and carries on.

A claim says which node made it. This node knows which creations it is
running, so its own claims that it is not running are abandoned (the
process that made them died). Another node's claim is only taken over once
``creation_lease`` seconds have passed, as that node may still be working.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from cozyd import faults
from cozyd import passphrase as passphrases
from cozyd.documents import GLOBAL, DocConflict, DocNotFound, Documents, new_doc_id
from cozyd.errors import BadRequest, Conflict, NotFound, Unprocessable
from cozyd.instance import defaults
from cozyd.instance.domain import validate_domain
from cozyd.instance.model import CREATING, READY, Instance, instance_id
from cozyd.storage.names import INSTANCES_DB, domain_hash

ALIASES_DB = "global/domain_aliases"
#: The doctypes of the global databases (``GLOBAL`` owns them).
INSTANCES_DOCTYPE = "instances"
ALIASES_DOCTYPE = "domain_aliases"
SETTINGS_DOCTYPE = "io.cozy.settings"
SETTINGS_ID = "io.cozy.settings.instance"
_LOCALE_RE = re.compile(r"^[a-z]{2}(?:[-_][A-Za-z]{2})?$")
#: ``--settings`` keys that cozy-stack moves onto the instance itself.
_INSTANCE_SETTING_KEYS = {
    "context",
    "locale",
    "uuid",
    "tos",
    "tos_latest",
    "onboarding_finished",
}
_MAX_RETRIES = 5

T = TypeVar("T")
log = Logger()


class InstanceExists(Conflict):
    code = "instance_exists"


class InstanceBeingDeleted(Conflict):
    code = "instance_being_deleted"


@attrs.frozen
class CreateOptions:
    domain: str
    locale: str = "en"
    email: str = ""
    public_name: str = ""
    phone: str = ""
    timezone: str = ""
    context: str = ""
    settings: dict[str, str] = attrs.field(factory=dict)
    passphrase: str = ""
    kdf_iterations: int = 0
    disk_quota: int = 0
    domain_aliases: tuple[str, ...] = ()
    uuid: str = ""
    tos: str = ""
    apps: tuple[str, ...] = ()


@attrs.frozen
class ModifyOptions:
    """Only the fields that are not None change."""

    locale: str | None = None
    email: str | None = None
    public_name: str | None = None
    phone: str | None = None
    timezone: str | None = None
    context: str | None = None
    settings: dict[str, str] | None = None
    disk_quota: int | None = None
    domain_aliases: tuple[str, ...] | None = None
    uuid: str | None = None
    tos: str | None = None
    tos_latest: str | None = None
    onboarding_finished: bool | None = None
    blocked: bool | None = None
    blocking_reason: str | None = None
    deleting: bool | None = None


def parse_settings(text: str) -> dict[str, str]:
    """``"k:v,k2:v2"`` → dict; a pair without ``:`` is a 400."""
    settings: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            raise BadRequest(f"invalid setting {pair!r}: expected key:value")
        settings[key.strip()] = value.strip()
    return settings


def _validate_locale(locale: str) -> str:
    if not _LOCALE_RE.match(locale):
        raise Unprocessable(
            f"invalid locale {locale!r}: expected a code such as en or fr",
            code="invalid_locale",
        )
    return locale


class InstanceManager:
    """The instance lifecycle, over a document store and a files root."""

    def __init__(
        self,
        documents: Documents,
        fs_root: str,
        *,
        run_blocking: Callable[[Callable[[], T]], Awaitable[T]],
        run_hashing: Callable[[Callable[[], T]], Awaitable[T]] | None = None,
        now: Callable[[], datetime.datetime] | None = None,
        kdf_iterations: int = passphrases.DEFAULT_KDF_ITERATIONS,
        on_change: Callable[[str], None] | None = None,
        node_id: str = "",
        seconds: Callable[[], float] = time.time,
        creation_lease: float = 600.0,
    ):
        self._documents = documents  # every write: validated and published
        self._store = documents.store  # reads
        self._fs_root = fs_root
        self._run_blocking = run_blocking
        # Passphrase hashing: the daemon's small bounded pool.
        self._run_hashing = run_hashing or run_blocking
        self._now = now or (lambda: datetime.datetime.now(datetime.UTC))
        self._kdf_iterations = kdf_iterations
        self._on_change = on_change or (lambda domain: None)
        self._creating: set[str] = set()
        self._node_id = node_id or secrets.token_hex(8)
        self._seconds = seconds
        self._creation_lease = creation_lease

    async def setup(self) -> None:
        await self._run_blocking(
            lambda: os.makedirs(self._fs_root, mode=0o700, exist_ok=True)
        )
        await self._documents.ensure_db(GLOBAL, INSTANCES_DOCTYPE)
        await self._documents.ensure_db(GLOBAL, ALIASES_DOCTYPE)

    def files_dir(self, instance: Instance) -> str:
        return os.path.join(self._fs_root, instance.domain)

    # -- reading ------------------------------------------------------------
    async def _load(self, domain: str) -> Instance:
        """The stored instance of ``domain`` in any state, or NotFound."""
        try:
            doc = await self._store.get_doc(INSTANCES_DB, instance_id(domain))
        except DocNotFound:
            raise NotFound(
                f"instance not found: {domain}", code="instance_not_found"
            ) from None
        return Instance.from_doc(doc)

    async def get(self, raw_domain: str) -> Instance:
        """A ready instance, by domain (an alias is not enough here)."""
        instance = await self._load(_normalize(raw_domain))
        if instance.state != READY:
            raise NotFound(
                f"instance not found: {instance.domain}", code="instance_not_found"
            )
        return instance

    async def find_by_host(self, host: str) -> Instance | None:
        """The ready instance served at ``host`` (its domain or an alias)."""
        for doc_id in (instance_id(host), None):
            if doc_id is None:
                doc_id = await self._alias_owner(host)
                if doc_id is None:
                    return None
            try:
                doc = await self._store.get_doc(INSTANCES_DB, doc_id)
            except DocNotFound:
                continue
            instance = Instance.from_doc(doc)
            if instance.state == READY and host in instance.all_domains:
                return instance
        return None

    async def _alias_owner(self, host: str) -> str | None:
        try:
            doc = await self._store.get_doc(ALIASES_DB, domain_hash(host))
        except DocNotFound:
            return None
        return instance_id(doc["domain"]) if doc.get("alias") == host else None

    async def list(self) -> list[Instance]:
        result = await self._store.all_docs(INSTANCES_DB, include_docs=True)
        instances = [
            Instance.from_doc(row["doc"])
            for row in result["rows"]
            if not row["id"].startswith("_design/")
        ]
        return sorted((i for i in instances if i.state == READY), key=lambda i: i.domain)

    # -- creation -------------------------------------------------------------
    async def create(self, options: CreateOptions) -> Instance:
        domain = validate_domain(options.domain)
        if options.apps:
            raise BadRequest(
                "apps are not installable yet: create the instance without --apps "
                f"(asked for: {', '.join(options.apps)})",
                code="apps_not_installable",
            )
        locale = _validate_locale(options.locale or "en")
        aliases = tuple(dict.fromkeys(validate_domain(a) for a in options.domain_aliases))
        if domain in aliases:
            raise Unprocessable("a domain cannot be its own alias", code="illegal_domain")
        iterations = options.kdf_iterations or self._kdf_iterations
        if options.passphrase and not (
            passphrases.MIN_KDF_ITERATIONS <= iterations <= passphrases.MAX_KDF_ITERATIONS
        ):
            raise Unprocessable(
                "KdfIterations must be between 50000 and 5000000",
                code="invalid_kdf_iterations",
            )
        if domain in self._creating:
            raise InstanceExists(f"instance {domain} is being created")
        self._creating.add(domain)
        try:
            await self._check_free(domain, aliases)
            instance = await self._claim(domain, options, locale, aliases)
            try:
                await self._build(instance, options, iterations)
            except BaseException:
                log.failure(
                    "creation of instance {domain} failed; rolling back", domain=domain
                )
                await self._remove_everything(instance)
                raise
        finally:
            self._creating.discard(domain)
        log.info("instance {domain} created", domain=domain)
        self._on_change(domain)
        return instance

    async def _check_free(self, domain: str, aliases: tuple[str, ...]) -> None:
        if await self._alias_owner(domain) is not None:
            raise InstanceExists(f"{domain} is already an alias of another instance")
        for alias in aliases:
            if (
                await self._alias_owner(alias) is not None
                or await self.find_by_host(alias) is not None
            ):
                raise InstanceExists(f"the alias {alias} is already used")

    async def _claim(
        self, domain: str, options: CreateOptions, locale: str, aliases: tuple[str, ...]
    ) -> Instance:
        settings = dict(options.settings)
        moved = {k: settings.pop(k) for k in list(settings) if k in _INSTANCE_SETTING_KEYS}
        instance = Instance.new(
            domain,
            locale=moved.get("locale") or locale,
            context=options.context or moved.get("context", ""),
            uuid=options.uuid or moved.get("uuid", ""),
            tos=_tos_version(options.tos or moved.get("tos", "")),
            tos_latest=_tos_version(moved.get("tos_latest", "")),
            disk_quota=options.disk_quota,
            domain_aliases=list(aliases),
            state=CREATING,
            creation_node=self._node_id,
            creation_started=self._seconds(),
        )
        for attempt in range(2):
            try:
                result = await self._documents.put(
                    GLOBAL, INSTANCES_DOCTYPE, instance.to_doc()
                )
                instance.rev = result["rev"]
                return instance
            except DocConflict:
                existing = await self._load(domain)
                if existing.state != CREATING or attempt:
                    raise InstanceExists(f"instance {domain} already exists") from None
                if not self._abandoned(existing):
                    raise InstanceExists(f"instance {domain} is being created") from None
                # A creation that died half-way: nobody here owns it any more.
                log.warn(
                    "repairing the interrupted creation of instance {domain}", domain=domain
                )
                await self._remove_everything(existing)
        raise InstanceExists(f"instance {domain} already exists")

    def _abandoned(self, claim: Instance) -> bool:
        if claim.creation_node == self._node_id:
            return True  # ours, and not in self._creating: its process died
        return self._seconds() - claim.creation_started >= self._creation_lease

    async def _build(
        self, instance: Instance, options: CreateOptions, iterations: int
    ) -> None:
        faults.checkpoint("create.claimed")
        # Independent steps run concurrently: on CouchDB each is a round trip.
        await _all(
            self._documents.ensure_db(instance, doctype) for doctype in defaults.DOCTYPES
        )
        faults.checkpoint("create.databases")
        await _all(
            self._documents.create_index(
                instance,
                doctype,
                fields,
                ddoc=name,
                name=name,
                partial_filter_selector=partial,
            )
            for doctype, indexes in defaults.INDEXES.items()
            for name, fields, partial in indexes
        )
        await self._write_settings(instance, options)
        await self._write_tree(instance)
        faults.checkpoint("create.tree")
        for alias in instance.domain_aliases:
            await self._claim_alias(alias, instance.domain)
        if options.passphrase:
            await self._register_passphrase(instance, options.passphrase, iterations)
        instance.state = READY
        instance.creation_node, instance.creation_started = "", 0.0
        result = await self._documents.put(GLOBAL, INSTANCES_DOCTYPE, instance.to_doc())
        instance.rev = result["rev"]

    async def _write_settings(self, instance: Instance, options: CreateOptions) -> None:
        settings = {
            k: v for k, v in options.settings.items() if k not in _INSTANCE_SETTING_KEYS
        }
        for key, value in (
            ("email", options.email),
            ("public_name", options.public_name),
            ("phone", options.phone),
            ("tz", options.timezone),
        ):
            if value:
                settings[key] = value
        await self._documents.put(
            instance, SETTINGS_DOCTYPE, {"_id": SETTINGS_ID, **settings}
        )
        name = options.public_name or options.email.partition("@")[0]
        myself: dict[str, Any] = {
            "_id": new_doc_id(),
            "me": True,
            "fullname": name,
            "displayName": name,
            "cozy": [{"url": f"https://{instance.domain}/", "primary": True}],
        }
        if options.email:
            myself["email"] = [{"address": options.email, "primary": True}]
        await self._documents.put(instance, "io.cozy.contacts", myself)

    async def _write_tree(self, instance: Instance) -> None:
        now = self._now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        created_on = f"https://{instance.domain}/"
        names = defaults.directory_names(instance.locale)

        def directory(
            doc_id: str, name: str, parent: str, path: str, referenced_by: str | None = None
        ) -> dict[str, Any]:
            doc: dict[str, Any] = {
                "_id": doc_id,
                "type": "directory",
                "name": name,
                "dir_id": parent,
                "path": path,
                "created_at": now,
                "updated_at": now,
                "tags": [],
                "cozyMetadata": {
                    "doctypeVersion": "1",
                    "metadataVersion": 1,
                    "createdAt": now,
                    "createdOn": created_on,
                    "updatedAt": now,
                },
            }
            if referenced_by:
                doc["referenced_by"] = [{"type": "io.cozy.apps", "id": referenced_by}]
            return doc

        docs = [
            directory(defaults.ROOT_DIR_ID, "", "", "/"),
            directory(
                defaults.TRASH_DIR_ID,
                defaults.TRASH_DIR_NAME,
                defaults.ROOT_DIR_ID,
                "/" + defaults.TRASH_DIR_NAME,
            ),
        ]
        ids = {None: defaults.ROOT_DIR_ID}
        paths = {None: ""}
        for key, parent, app in defaults.DEFAULT_TREE:
            path = f"{paths[parent]}/{names[key]}"
            doc_id = domain_hash(f"{instance.domain}{path}")
            docs.append(directory(doc_id, names[key], ids[parent], path, app))
            ids[key], paths[key] = doc_id, path
        results = await self._documents.bulk(instance, "io.cozy.files", docs)
        failed = [r for r in results if "error" in r]
        if failed:
            raise Conflict(f"cannot write the directory tree: {failed[0]['reason']}")
        root = self.files_dir(instance)
        await self._run_blocking(
            lambda: os.makedirs(os.path.join(root, defaults.TRASH_DIR_NAME), exist_ok=True)
        )

    async def _register_passphrase(
        self, instance: Instance, passphrase: str, iterations: int
    ) -> None:
        def hash_it() -> bytes:
            client_hash = passphrases.client_side_hash(
                passphrase, instance.domain, iterations
            )
            return passphrases.server_hash(client_hash)

        instance.passphrase_hash = await self._run_hashing(hash_it)
        instance.register_token = None
        instance.onboarding_finished = True
        instance.password_defined = True
        await self._documents.put(
            instance,
            SETTINGS_DOCTYPE,
            {
                "_id": "io.cozy.settings.bitwarden",
                "passphrase_kdf": 0,
                "passphrase_kdf_iterations": iterations,
            },
        )

    async def _claim_alias(self, alias: str, domain: str) -> None:
        try:
            await self._documents.put(
                GLOBAL,
                ALIASES_DOCTYPE,
                {"_id": domain_hash(alias), "alias": alias, "domain": domain},
            )
        except DocConflict:
            raise InstanceExists(f"the alias {alias} is already used") from None

    async def _release_alias(self, alias: str, domain: str) -> None:
        try:
            doc = await self._store.get_doc(ALIASES_DB, domain_hash(alias))
        except DocNotFound:
            return
        if doc.get("domain") == domain:
            try:
                await self._documents.delete(
                    GLOBAL, ALIASES_DOCTYPE, doc["_id"], doc["_rev"], doc=doc
                )
            except (DocConflict, DocNotFound):
                pass

    # -- modification ---------------------------------------------------------
    async def modify(self, raw_domain: str, changes: ModifyOptions) -> Instance:
        async def apply(instance: Instance) -> None:
            if changes.deleting is not None:
                # Only the flag: this is how an operator unlocks a failed destroy.
                instance.deleting = changes.deleting
            else:
                await self._apply(instance, changes)

        return await self.update(raw_domain, apply)

    async def update(
        self, raw_domain: str, change: Callable[[Instance], Awaitable[None] | None]
    ) -> Instance:
        """Apply ``change`` to the stored ready instance and save it, retrying
        when another writer came first; the registry hears of it."""
        domain = _normalize(raw_domain)
        for _ in range(_MAX_RETRIES):
            instance = await self._load(domain)
            if instance.state != READY:
                raise NotFound(f"instance not found: {domain}", code="instance_not_found")
            pending = change(instance)
            if pending is not None:
                await pending
            try:
                result = await self._documents.put(
                    GLOBAL, INSTANCES_DOCTYPE, instance.to_doc()
                )
            except DocConflict:
                continue
            instance.rev = result["rev"]
            self._on_change(domain)
            return instance
        raise Conflict(f"instance {domain} is being changed concurrently; try again")

    async def _apply(self, instance: Instance, changes: ModifyOptions) -> None:
        if changes.locale is not None:
            instance.locale = _validate_locale(changes.locale)
        for field in ("context", "uuid", "tos_latest", "onboarding_finished"):
            value = getattr(changes, field)
            if value is not None:
                setattr(instance, field, value)
        if changes.tos is not None:
            instance.tos = _tos_version(changes.tos)
        if changes.disk_quota is not None:
            if changes.disk_quota < 0:
                raise Unprocessable("DiskQuota must not be negative")
            instance.disk_quota = changes.disk_quota
        if changes.blocked is not None:
            instance.blocked = changes.blocked
            if not changes.blocked:
                instance.blocking_reason = ""
        if changes.blocking_reason is not None:
            instance.blocking_reason = changes.blocking_reason
            if changes.blocked is None and changes.blocking_reason:
                instance.blocked = True
        if changes.domain_aliases is not None:
            await self._change_aliases(instance, changes.domain_aliases)
        settings = dict(changes.settings or {})
        for key, value in (
            ("email", changes.email),
            ("public_name", changes.public_name),
            ("phone", changes.phone),
            ("tz", changes.timezone),
        ):
            if value is not None:
                settings[key] = value
        if settings:
            await self._update_settings(instance, settings)

    async def _change_aliases(self, instance: Instance, raw: tuple[str, ...]) -> None:
        wanted = list(dict.fromkeys(validate_domain(a) for a in raw))
        if instance.domain in wanted:
            raise Unprocessable("a domain cannot be its own alias", code="illegal_domain")
        added = [a for a in wanted if a not in instance.domain_aliases]
        for alias in added:
            if await self.find_by_host(alias) is not None:
                raise InstanceExists(f"the alias {alias} is already used")
        claimed: list[str] = []
        try:
            for alias in added:
                await self._claim_alias(alias, instance.domain)
                claimed.append(alias)
        except BaseException:
            for alias in claimed:
                await self._release_alias(alias, instance.domain)
            raise
        for alias in instance.domain_aliases:
            if alias not in wanted:
                await self._release_alias(alias, instance.domain)
        instance.domain_aliases = wanted

    async def _update_settings(self, instance: Instance, settings: dict[str, str]) -> None:
        def change(doc: dict[str, Any]) -> None:
            for key, value in settings.items():
                if value == "":
                    doc.pop(key, None)
                else:
                    doc[key] = value

        await self._documents.update(instance, SETTINGS_DOCTYPE, SETTINGS_ID, change)

    # -- destruction ------------------------------------------------------------
    async def destroy(self, raw_domain: str) -> None:
        domain = _normalize(raw_domain)
        if domain in self._creating:
            raise Conflict(f"instance {domain} is being created; try again later")
        instance = await self._load(domain)
        if instance.state == CREATING and not self._abandoned(instance):
            raise Conflict(f"instance {domain} is being created; try again later")
        if instance.deleting:
            raise InstanceBeingDeleted(
                f"instance {domain} is already being deleted. If an earlier deletion "
                f"failed, run `cozyctl instances modify --deleting=false {domain}` "
                "and destroy it again"
            )
        instance.deleting = True
        try:
            result = await self._documents.put(GLOBAL, INSTANCES_DOCTYPE, instance.to_doc())
        except DocConflict:
            raise Conflict(f"instance {domain} changed meanwhile; try again") from None
        instance.rev = result["rev"]
        self._on_change(domain)
        await self._remove_everything(instance)
        log.info("instance {domain} destroyed", domain=domain)

    async def _remove_everything(self, instance: Instance) -> None:
        """Delete the databases, files, aliases and finally the document."""
        await self._documents.delete_all(instance)
        root = self.files_dir(instance)
        await self._run_blocking(
            lambda: (
                shutil.rmtree(root, ignore_errors=False) if os.path.isdir(root) else None
            )
        )
        for alias in instance.domain_aliases:
            await self._release_alias(alias, instance.domain)
        try:
            current = await self._store.get_doc(INSTANCES_DB, instance.id)
            await self._documents.delete(
                GLOBAL, INSTANCES_DOCTYPE, instance.id, current["_rev"], doc=current
            )
        except DocNotFound:
            pass
        self._on_change(instance.domain)


async def _all(coroutines) -> list:
    """Await coroutines concurrently; the first failure is raised once all
    have settled (nothing is left running behind the caller's back)."""
    deferreds = [defer.Deferred.fromCoroutine(c) for c in coroutines]
    results = await defer.DeferredList(deferreds, consumeErrors=True)
    for ok, value in results:
        if not ok:
            value.raiseException()
    return [value for _, value in results]


def _normalize(raw_domain: str) -> str:
    try:
        return validate_domain(raw_domain)
    except Unprocessable:
        raise NotFound(
            f"instance not found: {raw_domain}", code="instance_not_found"
        ) from None


def _tos_version(tos: str) -> str:
    # cozy-stack turns an 8-digit date into a version "1.0.0-<date>".
    return f"1.0.0-{tos}" if len(tos) == 8 and tos.isdigit() else tos
