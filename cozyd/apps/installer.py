"""Installing, updating and uninstalling web apps and konnectors (one
installer for both, as cozy-stack's).

An install: the slug is checked and claimed (the document is written in
state ``installing``, so a second install of the slug gets 409), the code
is fetched into a staging folder next to its final place and checked, the
manifest is read; then the folder is renamed to
``<data_dir>/apps/<domain>/<kind>/<slug>/<version>/`` (``cozyd.apps.layout``),
the permission document written from the manifest, and the document put
in state ``ready`` (``installed`` when asked to stay deactivated). Any
failure removes the claim and the staging folder: nothing half-installed
remains.

An update fetches the new code the same way while the current version
goes on being served (state ``upgrading``, with the old ``version``). If
the new manifest asks for other permissions and the owner did not
acknowledge them (``PermissionsAcked``), the code is not switched: the
document records ``available_version`` and the app stays as it was, as
cozy-stack does. A failed update puts the document back as it was: the
previous version is still the one served.

The ``services`` of a web app's manifest run as jobs: each service with a
``trigger`` gets a trigger of worker ``service`` and message ``{"slug",
"name"}`` (as cozy-stack's ``Service.CreateTrigger``), its id kept in the
service as ``trigger_id``. They are created at install, replaced at update
(the new ones first, the old ones removed once the update is done) and
removed at uninstall. The installer reaches the scheduler only through the
``triggers`` given to it (``ServiceTriggers``: two callbacks), so this
package does not import the job system.

``on_state(doc)`` is told of each state the document goes through (the
``text/event-stream`` answer of the routes, and the 202 of the others).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import uuid4

from twisted.logger import Logger

from cozyd.apps import layout
from cozyd.apps.manifest import (
    ERRORED,
    INSTALLED,
    INSTALLING,
    READY,
    UPGRADING,
    app_document,
    check_slug,
    parse_manifest,
)
from cozyd.apps.permissions import AppPermissions, adds_permissions
from cozyd.apps.sources import Fetcher, parse_source
from cozyd.documents import DatabaseNotFound, DocConflict, DocNotFound, Documents
from cozyd.errors import BadRequest, Conflict, CozyError, NotFound
from cozyd.instance.model import Instance

log = Logger()

OnState = Callable[[dict[str, Any]], Any]
RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]
#: An operation that died (the daemon stopped) leaves its state behind;
#: past this many seconds another one may go on.
STALE_AFTER = 15 * 60


class ServiceTriggers:
    """How the installer creates and removes the triggers of app services:
    ``create(instance, request, slug)`` returns the new trigger's id
    (``request`` as for ``POST /jobs/triggers``), ``delete(instance, id)``
    removes one (a missing one is not an error)."""

    def __init__(
        self,
        create: Callable[[Instance, dict[str, Any], str], Awaitable[str]],
        delete: Callable[[Instance, str], Awaitable[None]],
    ):
        self.create = create
        self.delete = delete


def service_trigger_request(
    slug: str, name: str, service: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The trigger of a service (None for a service with no trigger)."""
    text = str(service.get("trigger") or "").strip()
    if not text:
        return None
    kind, _, arguments = text.partition(" ")
    request: dict[str, Any] = {
        "type": kind,
        "arguments": arguments.strip(),
        "worker": "service",
        "message": {"slug": slug, "name": name},
    }
    if service.get("debounce"):
        request["debounce"] = service["debounce"]
    return request


class AlreadyInstalled(Conflict):
    code = "already_installed"

    def __init__(self) -> None:
        super().__init__("Application with same slug already exists")


class NotInstalled(NotFound):
    code = "not_installed"

    def __init__(self) -> None:
        super().__init__("Application is not installed")


class BadState(Conflict):
    code = "bad_state"

    def __init__(self) -> None:
        super().__init__("Application is not in valid state to perform this operation")


class LinkedAppExists(BadRequest):
    code = "linked_app_exists"

    def __init__(self) -> None:
        super().__init__("A linked OAuth client exists for this app")


def iso_time(seconds: float) -> str:
    whole = int(seconds)
    micros = round((seconds - whole) * 1_000_000) % 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def _parse_iso(text: Any) -> float:
    try:
        base = str(text)[:19]
        return float(time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    except (ValueError, OverflowError):
        return 0.0


class Installer:
    def __init__(
        self,
        documents: Documents,
        data_dir: str,
        fetcher: Fetcher,
        *,
        run_blocking: RunBlocking,
        seconds: Callable[[], float],
        forget_permissions: Callable[[Instance, str], None] = lambda i, s: None,
        linked_client: Callable[[Instance, str], Awaitable[Any]] | None = None,
        triggers: ServiceTriggers | None = None,
    ):
        self._documents = documents
        self._data_dir = data_dir
        self.fetcher = fetcher
        self._run_blocking = run_blocking
        self._seconds = seconds
        self.permissions = AppPermissions(
            documents, forget=forget_permissions, now=lambda: iso_time(seconds())
        )
        self._linked_client = linked_client
        self._busy: set[tuple[str, str, str]] = set()
        #: Set by the stack once its scheduler exists (cozyd.service).
        self.triggers = triggers

    # -- reads -------------------------------------------------------------------
    async def get(self, instance: Instance, kind: str, slug: str) -> dict[str, Any]:
        check_slug(slug)
        try:
            return await self._documents.get(
                instance, layout.DOCTYPES[kind], layout.doc_id(kind, slug)
            )
        except (DocNotFound, DatabaseNotFound):
            raise NotInstalled() from None

    async def find(self, instance: Instance, kind: str, slug: str) -> dict[str, Any] | None:
        try:
            return await self.get(instance, kind, slug)
        except NotInstalled:
            return None

    async def list(
        self, instance: Instance, kind: str, *, limit: int = 100, start_key: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of installed apps in id order, and the next page's first id."""
        doctype = layout.DOCTYPES[kind]
        options: dict[str, Any] = {"include_docs": True, "limit": limit + 1}
        options["start_key"] = start_key or f"{doctype}/"
        options["end_key"] = f"{doctype}/\ufff0"
        try:
            result = await self._documents.all_docs(instance, doctype, **options)
        except DatabaseNotFound:
            return [], ""
        docs = [row["doc"] for row in result["rows"] if row.get("doc")]
        docs = [d for d in docs if not d["_id"].startswith("_design/")]
        if len(docs) > limit:
            return docs[:limit], docs[limit]["_id"]
        return docs, ""

    def code_dir(self, instance: Instance, kind: str, doc: Mapping[str, Any]) -> str:
        return layout.version_dir(
            self._data_dir, instance.domain, kind, doc["slug"], doc["version"]
        )

    # -- install -----------------------------------------------------------------
    async def install(
        self,
        instance: Instance,
        kind: str,
        slug: str,
        source_url: str,
        *,
        deactivated: bool = False,
        parameters: Mapping[str, Any] | None = None,
        on_state: OnState | None = None,
    ) -> dict[str, Any]:
        check_slug(slug)
        source = parse_source(source_url)
        key = (instance.prefix, kind, slug)
        if key in self._busy:
            raise AlreadyInstalled()
        self._busy.add(key)
        try:
            return await self._install(
                instance, kind, slug, source, deactivated, parameters, on_state
            )
        finally:
            self._busy.discard(key)

    async def _install(
        self, instance, kind, slug, source, deactivated, parameters, on_state
    ):
        doctype = layout.DOCTYPES[kind]
        existing = await self.find(instance, kind, slug)
        if existing is not None:
            if not self._stale(existing, (INSTALLING,)):
                raise AlreadyInstalled()
            await self._drop(instance, kind, existing)  # a claim left by a dead process
        now = iso_time(self._seconds())
        claim = {
            "_id": layout.doc_id(kind, slug),
            "slug": slug,
            "state": INSTALLING,
            "source": source.url,
            "created_at": now,
            "updated_at": now,
        }
        try:
            result = await self._documents.put(instance, doctype, claim, create_db=True)
        except DocConflict:
            raise AlreadyInstalled() from None
        claim["_rev"] = result["rev"]
        staging = self._staging(instance, kind, slug)
        doc: dict[str, Any] | None = None
        try:
            await self._run_blocking(lambda: os.makedirs(staging, mode=0o755))
            fetched = await self.fetcher.fetch(source, kind, staging)
            manifest = parse_manifest(fetched.manifest, kind)
            if (
                parameters is not None
                and kind == layout.KONNECTOR
                and source.scheme != "registry"
            ):
                manifest["parameters"] = dict(parameters)
            doc = app_document(
                kind,
                slug,
                manifest,
                state=INSTALLING,
                source=source.url,
                checksum=fetched.checksum,
                now=iso_time(self._seconds()),
                created_at=now,
                version=fetched.version,
            )
            doc["_rev"] = claim["_rev"]
            self._tell(on_state, doc)
            await self._run_blocking(
                lambda: self._put_in_place(staging, self.code_dir(instance, kind, doc))
            )
            await self.permissions.write(
                instance, kind, slug, doc.get("permissions"), doc["version"]
            )
            await self._create_triggers(instance, kind, doc)
            doc["state"] = INSTALLED if deactivated else READY
            doc["updated_at"] = iso_time(self._seconds())
            result = await self._documents.put(instance, doctype, doc)
            doc["_rev"] = result["rev"]
        except BaseException as exc:
            if not isinstance(exc, CozyError):
                log.failure(
                    "installing {slug} on {domain}", slug=slug, domain=instance.domain
                )
            await self._run_blocking(lambda: _remove(staging))
            await self._delete_triggers(instance, doc_services(doc))
            await self._undo_install(instance, kind, slug)
            raise
        log.info(
            "{kind} {slug} {version} installed on {domain}",
            kind=kind,
            slug=slug,
            version=doc["version"],
            domain=instance.domain,
        )
        self._tell(on_state, doc)
        return doc

    async def _undo_install(self, instance: Instance, kind: str, slug: str) -> None:
        try:
            await self.permissions.delete(instance, kind, slug)
            current = await self.find(instance, kind, slug)
            if current is not None:
                await self._documents.delete(
                    instance,
                    layout.DOCTYPES[kind],
                    current["_id"],
                    current["_rev"],
                    doc=current,
                )
            await self._run_blocking(
                lambda: _remove(
                    layout.slug_dir(self._data_dir, instance.domain, kind, slug)
                )
            )
        except Exception:
            log.failure("cleaning up the failed install of {slug}", slug=slug)

    # -- update ------------------------------------------------------------------
    async def update(
        self,
        instance: Instance,
        kind: str,
        slug: str,
        source_url: str | None = None,
        *,
        permissions_acked: bool,
        parameters: Mapping[str, Any] | None = None,
        on_state: OnState | None = None,
    ) -> dict[str, Any]:
        check_slug(slug)
        key = (instance.prefix, kind, slug)
        if key in self._busy:
            raise BadState()
        self._busy.add(key)
        try:
            return await self._update(
                instance, kind, slug, source_url, permissions_acked, parameters, on_state
            )
        finally:
            self._busy.discard(key)

    async def _update(self, instance, kind, slug, source_url, acked, parameters, on_state):
        doctype = layout.DOCTYPES[kind]
        old = await self.get(instance, kind, slug)
        if old.get("state") not in (READY, INSTALLED) and not self._stale(old, ()):
            raise BadState()
        source = parse_source(source_url or old.get("source") or "")
        staging = self._staging(instance, kind, slug)
        try:
            await self._run_blocking(lambda: os.makedirs(staging, mode=0o755))
            fetched = await self.fetcher.fetch(source, kind, staging)
            manifest = parse_manifest(fetched.manifest, kind)
        except BaseException:
            await self._run_blocking(lambda: _remove(staging))
            raise
        if (
            parameters is not None
            and kind == layout.KONNECTOR
            and source.scheme != "registry"
        ):
            manifest["parameters"] = dict(parameters)
        new = app_document(
            kind,
            slug,
            manifest,
            state=UPGRADING,
            source=source.url,
            checksum=fetched.checksum,
            now=iso_time(self._seconds()),
            created_at=old.get("created_at"),
            version=fetched.version,
        )
        same_code = new["version"] == old.get("version") and new["checksum"] == old.get(
            "checksum"
        )
        if same_code or (source.scheme != "file" and new["version"] == old.get("version")):
            # Up to date: only the source may change.
            await self._run_blocking(lambda: _remove(staging))
            return await self._set(
                instance, kind, slug, on_state, source=source.url, available_version=None
            )
        if adds_permissions(old.get("permissions"), new.get("permissions")) and not acked:
            await self._run_blocking(lambda: _remove(staging))
            return await self._set(
                instance,
                kind,
                slug,
                on_state,
                source=source.url,
                available_version=new["version"],
            )
        end_state = old.get("state") if old.get("state") in (READY, INSTALLED) else READY
        upgrading = await self._set(instance, kind, slug, None, state=UPGRADING)
        self._tell(on_state, {**upgrading, **{k: v for k, v in new.items() if k != "_rev"}})
        old_dir = self.code_dir(instance, kind, old) if old.get("version") else None
        new_dir = self.code_dir(instance, kind, new)
        try:
            if new_dir == old_dir:
                # Same version, other code (a file:// folder changed): the
                # old folder is swapped out only once the new one is whole.
                await self._run_blocking(lambda: _swap(staging, new_dir))
            else:
                await self._run_blocking(lambda: self._put_in_place(staging, new_dir))
            await self.permissions.write(
                instance, kind, slug, new.get("permissions"), new["version"]
            )
            await self._create_triggers(instance, kind, new)
            new["state"] = end_state
            new["updated_at"] = iso_time(self._seconds())
            new["_rev"] = upgrading["_rev"]
            new.pop("available_version", None)
            result = await self._documents.put(instance, doctype, new)
            new["_rev"] = result["rev"]
        except BaseException as exc:
            if not isinstance(exc, CozyError):
                log.failure(
                    "updating {slug} on {domain}", slug=slug, domain=instance.domain
                )
            await self._run_blocking(lambda: _remove(staging))
            if new_dir != old_dir:
                await self._run_blocking(lambda: _remove(new_dir))
            await self._delete_triggers(instance, doc_services(new))
            await self._restore(instance, kind, old)
            raise
        await self._delete_triggers(instance, doc_services(old))
        if old_dir and old_dir != new_dir:
            await self._run_blocking(lambda: _remove(old_dir))
        log.info(
            "{kind} {slug} updated to {version} on {domain}",
            kind=kind,
            slug=slug,
            version=new["version"],
            domain=instance.domain,
        )
        self._tell(on_state, new)
        return new

    async def _set(self, instance, kind, slug, on_state, **changes) -> dict[str, Any]:
        now = iso_time(self._seconds())

        def change(doc: dict[str, Any]) -> None:
            for name, value in changes.items():
                if value is None:
                    doc.pop(name, None)
                else:
                    doc[name] = value
            doc["updated_at"] = now

        doc = await self._documents.update(
            instance, layout.DOCTYPES[kind], layout.doc_id(kind, slug), change
        )
        self._tell(on_state, doc)
        return doc

    async def _restore(self, instance: Instance, kind: str, old: Mapping[str, Any]) -> None:
        """The document as it was before a failed update."""
        try:

            def back(doc: dict[str, Any]) -> None:
                rev = doc.get("_rev")
                doc.clear()
                doc.update(old)
                doc["_rev"] = rev

            await self._documents.update(instance, layout.DOCTYPES[kind], old["_id"], back)
            await self.permissions.write(
                instance, kind, old["slug"], old.get("permissions"), old.get("version", "")
            )
        except Exception:
            log.failure("restoring {slug} after a failed update", slug=old.get("slug"))

    # -- uninstall ---------------------------------------------------------------
    async def uninstall(self, instance: Instance, kind: str, slug: str) -> dict[str, Any]:
        check_slug(slug)
        key = (instance.prefix, kind, slug)
        if key in self._busy:
            raise BadState()
        doc = await self.get(instance, kind, slug)
        if doc.get("state") in (INSTALLING, UPGRADING) and not self._stale(doc, ()):
            raise BadState()
        linked = kind == layout.WEBAPP and self._linked_client is not None
        if linked and await self._linked_client(instance, f"registry://{slug}"):
            raise LinkedAppExists()
        self._busy.add(key)
        try:
            await self._drop(instance, kind, doc)
        finally:
            self._busy.discard(key)
        log.info(
            "{kind} {slug} uninstalled from {domain}",
            kind=kind,
            slug=slug,
            domain=instance.domain,
        )
        return doc

    async def _drop(self, instance: Instance, kind: str, doc: Mapping[str, Any]) -> None:
        await self._delete_triggers(instance, doc_services(doc))
        await self.permissions.delete(instance, kind, doc["slug"])
        await self._documents.delete(
            instance, layout.DOCTYPES[kind], doc["_id"], doc["_rev"], doc=dict(doc)
        )
        await self._run_blocking(
            lambda: _remove(
                layout.slug_dir(self._data_dir, instance.domain, kind, doc["slug"])
            )
        )

    async def remove_instance(self, instance: Instance) -> None:
        """Every app's code of an instance being destroyed."""
        root = os.path.join(layout.apps_root(self._data_dir), instance.domain)
        await self._run_blocking(lambda: _remove(root))

    # -- services ----------------------------------------------------------------
    async def _create_triggers(
        self, instance: Instance, kind: str, doc: dict[str, Any]
    ) -> None:
        """The triggers of the services of ``doc`` (a web app), their ids
        written in ``doc["services"]``; on a failure, none is left."""
        services = doc.get("services")
        if kind != layout.WEBAPP or self.triggers is None or not services:
            return
        fresh = {name: dict(service) for name, service in services.items()}
        doc["services"] = fresh
        for name, service in fresh.items():
            service.pop("trigger_id", None)
            request = service_trigger_request(doc["slug"], name, service)
            if request is None:
                continue
            try:
                service["trigger_id"] = await self.triggers.create(
                    instance, request, doc["slug"]
                )
            except CozyError as exc:
                await self._delete_triggers(instance, fresh)
                raise BadRequest(
                    f"the trigger of the service {name!r} is refused: {exc.detail}"
                ) from None
            except BaseException:
                await self._delete_triggers(instance, fresh)
                raise

    async def _delete_triggers(
        self, instance: Instance, services: Mapping[str, Any]
    ) -> None:
        if self.triggers is None:
            return
        for service in services.values():
            trigger_id = service.get("trigger_id") if isinstance(service, dict) else None
            if not trigger_id:
                continue
            try:
                await self.triggers.delete(instance, trigger_id)
            except Exception:
                log.failure("removing the trigger {id} of a service", id=trigger_id)

    # -- helpers -----------------------------------------------------------------
    def _stale(self, doc: Mapping[str, Any], states: tuple[str, ...]) -> bool:
        if states and doc.get("state") not in states:
            return False
        if doc.get("state") == ERRORED:
            return True
        return self._seconds() - _parse_iso(doc.get("updated_at")) > STALE_AFTER

    def _staging(self, instance: Instance, kind: str, slug: str) -> str:
        folder = layout.slug_dir(self._data_dir, instance.domain, kind, slug)
        return os.path.join(folder, f".staging-{uuid4().hex}")

    @staticmethod
    def _put_in_place(staging: str, final: str) -> None:
        if os.path.lexists(final):
            _swap(staging, final)
            return
        os.makedirs(os.path.dirname(final), mode=0o755, exist_ok=True)
        os.rename(staging, final)

    @staticmethod
    def _tell(on_state: OnState | None, doc: Mapping[str, Any]) -> None:
        if on_state is not None:
            try:
                on_state(dict(doc))
            except Exception:
                log.failure("telling an installer's listener")


def doc_services(doc: Mapping[str, Any] | None) -> dict[str, Any]:
    services = doc.get("services") if isinstance(doc, Mapping) else None
    return services if isinstance(services, dict) else {}


def _swap(staging: str, final: str) -> None:
    old = f"{final}.old-{uuid4().hex}"
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
    download = path.rstrip("/") + ".download"
    if os.path.lexists(download):
        os.unlink(download)
