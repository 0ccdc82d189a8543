"""Builds the object graph and runs it as a Twisted service.

``build_stack`` wires storage, instances and the web apps; it is used both
by the daemon (``CozydService``) and by the in-memory test stack
(``cozyd.testing``).

The daemon is an ``OrderedMultiService`` of children started one after
the other, each once the previous one is ready, and stopped in reverse:

1. ``StorageService``: the data directory, the storage engine, the stack;
2. ``JobsService``: the job system and the scheduler (realtime later);
3. ``listeners``: the public and admin ``ListenerService`` (started in
   order, stopped together: both stop accepting at once, then their
   requests in flight get ``[server] shutdown_grace`` seconds).

A failed start prints one line naming the cause on stderr (and in the
log) and ends the process with status 1. SIGHUP re-reads the admin
passphrase file and reopens the log file.
"""

from __future__ import annotations

import gc
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.error import ReactorNotRunning
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from cozyd.adminpass import PassphraseChecker
from cozyd.apps.http import downloader
from cozyd.apps.installer import Installer, ServiceTriggers
from cozyd.apps.layout import KONNECTOR, WEBAPP
from cozyd.apps.sources import Fetcher, Limits
from cozyd.auth.clients import OAuthClients
from cozyd.auth.limits import RateLimiter
from cozyd.auth.login import LOGIN_FAILED, LoginFailures, Passphrases
from cozyd.auth.oauth import AccessCodes, TokenEndpoint
from cozyd.auth.sessions import SessionStore
from cozyd.auth.urls import HOME_SLUG, InstanceURLs
from cozyd.config import Config
from cozyd.documents import Documents
from cozyd.instance.lifecycle import InstanceManager, ModifyOptions
from cozyd.instance.registry import InstanceRegistry
from cozyd.konnectors.accounts import Vault
from cozyd.konnectors.worker import build_workers
from cozyd.listeners import ListenerService, ServingSite, StartError
from cozyd.metrics import Metrics, instrument_store
from cozyd.permissions.resolver import PermissionResolver
from cozyd.permissions.sharing import ShareLinks
from cozyd.pools import WorkerPools, daemon_pools
from cozyd.realtime.fanout import Fanout
from cozyd.realtime.hub import EventHub
from cozyd.realtime.node import RealtimeNode, RealtimeParts
from cozyd.realtime.websocket import Limits as RealtimeLimits
from cozyd.realtime.websocket import RealtimeFactory
from cozyd.storage.interface import DocumentStore
from cozyd.web.admin import AdminService
from cozyd.web.apphosts import AppHosts
from cozyd.web.apps import AppsService
from cozyd.web.appserver import AppServer
from cozyd.web.auth import AuthService, HomeApp, HomePage, WebSessions
from cozyd.web.data import DataService
from cozyd.web.debug import DebugService
from cozyd.web.guard import Guard
from cozyd.web.oauth import ClientsSettingsService, OAuthService
from cozyd.web.pages import Pages
from cozyd.web.permissions import PermissionsService, ShareLinkPasswordService
from cozyd.web.realtime import RealtimeService
from cozyd.web.root import PublicRoot
from cozyd.web.settings import SettingsService
from cozyd.web.status import StatusService

log = Logger()


@attrs.define
class Stack:
    config: Config
    store: DocumentStore
    instances: InstanceManager
    registry: InstanceRegistry
    public: Any  # IResource
    admin: Any  # IResource
    #: Every document write is published here (realtime, @event triggers).
    hub: EventHub = attrs.field(factory=EventHub)
    #: The one path of every document write (it publishes on ``hub``).
    documents: Documents | None = None
    metrics: Metrics | None = None
    #: Re-reads the admin passphrase file (SIGHUP).
    passphrase_checker: PassphraseChecker | None = None
    #: The konnector and service workers by name (``cozyd.konnectors``), for
    #: the job system to register; built by the daemon (they need a reactor).
    workers: dict[str, Any] = attrs.field(factory=dict)
    #: The websockets of /realtime/ and the fan-out of events to them.
    realtime: RealtimeParts | None = None
    #: Installs web apps and konnectors (cozyd.apps.installer).
    apps: Any = None
    #: The virtual file system (``/files``), and its thumbnails.
    vfs: Any = None
    thumbnails: Any = None
    #: The job system and the scheduler of triggers (started by JobsService).
    jobs: Any = None
    scheduler: Any = None


def thread_runner(reactor) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
    def run_blocking(function):
        return deferToThreadPool(reactor, reactor.getThreadPool(), function)

    return run_blocking


def build_store(config: Config, reactor, pools: WorkerPools | None = None) -> DocumentStore:
    if config.get("storage", "engine") == "couchdb":
        from cozyd.storage.couchdb import CouchDBStore

        return CouchDBStore(
            config.get("couchdb", "url"),
            reactor=reactor,
            timeout=config.get("couchdb", "timeout"),
            ca_file=config.get("couchdb", "ca_file") or None,
        )
    from cozyd.storage.sqlite import EmbeddedStore

    if pools is None:
        pools = daemon_pools(reactor)
    return EmbeddedStore(
        config.db_dir,
        reactor=reactor,
        pool=pools.storage,
        idle_timeout=config.get("storage", "idle_timeout"),
        max_open=config.get("storage", "max_open_files"),
    )


def node_id(data_dir: str) -> str:
    """This node's identity, kept across restarts in the data directory."""
    path = os.path.join(data_dir, "node-id")
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        value = secrets.token_hex(8)
        with open(path, "w", encoding="ascii") as f:
            f.write(value + "\n")
        return value


def next_turn(reactor) -> Callable[[], Awaitable[Any]]:
    """A pause until the reactor's next turn (between pieces of long work)."""

    def pause():
        return task.deferLater(reactor, 0, lambda: None)

    return pause


def build_stack(
    config: Config,
    *,
    store: DocumentStore,
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
    run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
    seconds: Callable[[], float] = time.time,
    node: str = "",
    pause: Callable[[], Awaitable[Any]] | None = None,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
    metrics: Metrics | None = None,
    download: Any = None,
    reactor: Any = None,
) -> Stack:
    """``run_hashing`` runs password hashing (the daemon's bounded pool;
    ``run_blocking`` when not given). ``pause()`` lets long answers give the
    reactor a turn between their pieces (None in memory: nothing else to let
    run); ``sleep(seconds)`` waits (the test routes' slow answer)."""
    run_hashing = run_hashing or run_blocking
    hub = EventHub()
    documents = Documents(store, hub)
    registry_box: list[InstanceRegistry] = []
    instances = InstanceManager(
        documents,
        config.fs_root,
        run_blocking=run_blocking,
        run_hashing=run_hashing,
        kdf_iterations=config.get("instances", "kdf_iterations"),
        on_change=lambda domain: registry_box[0].invalidate(domain),
        node_id=node,
        seconds=seconds,
    )
    registry = InstanceRegistry(
        instances.find_by_host, seconds=seconds, ttl=config.get("instances", "cache_ttl")
    )
    registry_box.append(registry)
    status = StatusService(store, config.fs_root)
    resolver = PermissionResolver(
        store, seconds=seconds, ttl=config.get("instances", "cache_ttl")
    )
    clients = OAuthClients(documents, on_change=resolver.forget_client, seconds=seconds)
    access_codes = AccessCodes(documents, seconds=seconds)
    scheme = config.get("server", "scheme")
    pages = Pages(secure=scheme == "https", scheme=scheme)
    web_sessions = WebSessions(
        SessionStore(documents, seconds=seconds),
        secure=scheme == "https",
        flat=config.get("apps", "subdomains") == "flat",
    )
    # Shares by link (/permissions, share codes and shortcodes as tokens).
    shares = ShareLinks(
        documents,
        resolver,
        seconds=seconds,
        run_hashing=run_hashing,
        ttl=config.get("instances", "cache_ttl"),
    )
    guard = Guard(
        resolver,
        seconds=seconds,
        session_id_of=web_sessions.session_id_of,
        shares=shares,
    )
    vault = credentials_vault(config)
    realtime = realtime_parts(config, hub, reactor)
    apps_installer = build_installer(
        config, documents, resolver, clients, run_blocking, seconds, download
    )
    vfs, thumbnails, files_service = files_services(
        config,
        documents,
        instances,
        guard,
        run_blocking=run_blocking,
        seconds=seconds,
        pause=pause,
    )
    jobs, scheduler, jobs_service = job_services(
        config,
        documents,
        instances,
        hub,
        guard,
        reactor=reactor,
        seconds=seconds,
        node=node,
    )
    apps_installer.triggers = service_triggers(scheduler)
    if jobs is not None and vfs is not None:  # trash-files, thumbnail
        from cozyd.files.workers import files_workers

        for worker in files_workers(vfs, thumbnails):
            jobs.register(worker)
    services = {
        "jobs": jobs_service,
        "realtime": RealtimeService(guard, realtime.fanout, realtime.factory).resource(),
        "files": files_service,
        "permissions": PermissionsService(guard, shares).resource(),
        "auth/share-by-link": ShareLinkPasswordService(
            shares, RateLimiter(seconds=seconds), secure=scheme == "https"
        ).resource(),
        "data": DataService(
            documents,
            guard,
            max_body_size=config.get("server", "max_body_size"),
            pause=pause,
            files=vfs,
            vault=vault,
        ).resource(),
        **owner_services(
            config,
            documents,
            instances,
            registry,
            guard,
            pages=pages,
            sessions=web_sessions,
            run_hashing=run_hashing,
            seconds=seconds,
            vfs=vfs,
        ),
        **apps_services(config, apps_installer, guard, web_sessions),
        **oauth_services(
            clients,
            access_codes,
            guard,
            pages=pages,
            session_of=web_sessions.session_id_of,
            seconds=seconds,
            link_app=lambda instance, slug: ensure_webapp(apps_installer, instance, slug),
        ),
    }
    unscoped = (
        {"_debug": DebugService(pause, sleep=sleep)}
        if config.get("server", "test_routes")
        else {}
    )
    if metrics is None:
        metrics = Metrics(services=[*services, *unscoped, "status", "version"])
    metrics.services = frozenset(
        {name.split("/", 1)[0] for name in services}
        | set(unscoped)
        | {"status", "version"}
        | metrics.services
    )
    metrics.watch_cache(lambda: len(getattr(registry, "_cache", ())))
    public = PublicRoot(
        registry,
        status,
        services=services,
        seconds=seconds,
        unscoped=unscoped,
        max_body_size=config.get("server", "max_body_size"),
    ).resource()
    # <slug>.<domain>: the instance's apps (only the built-in home for now).
    home = HomeApp(
        pages=pages, sessions=web_sessions, urls=InstanceURLs(store, scheme=scheme)
    ).resource()
    app_server = AppServer(
        apps_installer,
        sessions=web_sessions,
        pages=pages,
        settings_of=InstanceURLs(store, scheme=scheme).settings_document,
        seconds=seconds,
        scheme=scheme,
        subdomains=config.get("apps", "subdomains"),
    )
    public = AppHosts(
        registry,
        public,
        {HOME_SLUG: home},
        pages=pages,
        scheme=scheme,
        installed=app_server,
        subdomains=config.get("apps", "subdomains"),
    ).resource()
    # scrypt in the hashing pool (off the reactor); wrong guesses rate-limited.
    checker = PassphraseChecker(
        config.admin_passphrase_hash,
        run_hashing=run_hashing,
        path=config.get("admin", "secret_filename") or None,
    )
    admin = AdminService(
        instances,
        checker.check,
        clients=clients,
        seconds=seconds,
        metrics=metrics,
        apps=apps_installer,
        vfs=vfs,
        jobs=jobs,
        scheduler=scheduler,
    ).resource()
    return Stack(
        config,
        store,
        instances,
        registry,
        public,
        admin,
        hub,
        documents,
        metrics=metrics,
        passphrase_checker=checker,
        realtime=realtime,
        apps=apps_installer,
        vfs=vfs,
        thumbnails=thumbnails,
        jobs=jobs,
        scheduler=scheduler,
    )


def credentials_vault(config: Config) -> Vault | None:
    """The accounts' credentials keys, when ``cozyctl config gen-keys`` made
    them (None: credentials are stored as given, as cozy-stack does)."""
    vault = Vault.from_config(config)
    if not vault.can_encrypt:
        return None
    return vault


def realtime_parts(config: Config, hub: EventHub, clock: Any) -> RealtimeParts:
    """The fan-out of ``hub``'s events to the websockets, and their limits."""
    schedule = (lambda f: clock.callLater(0, f)) if clock is not None else None
    fanout = Fanout(hub, schedule=schedule)
    limits = RealtimeLimits(
        **{
            field: config.get("realtime", field)
            for field in attrs.fields_dict(RealtimeLimits)
        }
    )
    return RealtimeParts(hub, fanout, RealtimeFactory(fanout, limits=limits, clock=clock))


def build_installer(config, documents, resolver, clients, run_blocking, seconds, download):
    """The installer of web apps and konnectors (``[apps]`` settings)."""
    size = config.get("apps", "max_app_size")
    fetcher = Fetcher(
        download=download,
        run_blocking=run_blocking,
        registries=config.get("apps", "registries"),
        allow_http=config.get("apps", "allow_http_sources"),
        limits=Limits(max_size=size, max_download=size),
    )

    async def linked_client(instance, software_id):
        return await clients.find_by_software_id(instance, software_id)

    return Installer(
        documents,
        config.data_dir,
        fetcher,
        run_blocking=run_blocking,
        seconds=seconds,
        forget_permissions=resolver.forget_source,
        linked_client=linked_client,
    )


def service_triggers(scheduler) -> ServiceTriggers:
    """The installer's way to the scheduler, for the apps' services."""
    from cozyd.jobs.scheduler import TriggerNotFound

    async def create(instance, request, slug):
        return (await scheduler.add(instance, request, created_by=slug))["_id"]

    async def delete(instance, trigger_id):
        try:
            await scheduler.delete(instance, trigger_id)
        except TriggerNotFound:
            pass

    return ServiceTriggers(create, delete)


async def ensure_webapp(installer, instance, slug: str) -> None:
    """The webapp of a linked OAuth client, installed from the registry
    when it is not there yet (as cozy-stack does at the consent)."""
    if await installer.find(instance, WEBAPP, slug) is None:
        await installer.install(instance, WEBAPP, slug, f"registry://{slug}/stable")


def apps_services(config: Config, installer, guard: Guard, sessions) -> dict[str, Any]:
    """``/apps`` and ``/konnectors``."""
    options = {
        "sessions": sessions,
        "scheme": config.get("server", "scheme"),
        "subdomains": config.get("apps", "subdomains"),
    }
    return {
        "apps": AppsService(WEBAPP, installer, guard, **options).resource(),
        "konnectors": AppsService(KONNECTOR, installer, guard, **options).resource(),
    }


def files_services(
    config: Config,
    documents: Documents,
    instances: InstanceManager,
    guard: Guard,
    *,
    run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
    seconds: Callable[[], float],
    pause: Callable[[], Awaitable[Any]] | None,
) -> tuple[Any, Any, Any]:
    """The VFS, its thumbnails, and ``/files``."""
    from cozyd.files.thumbs import Thumbnails
    from cozyd.files.vfs import VFS
    from cozyd.web.files import FilesService

    def run(function, *args):
        return run_blocking(lambda: function(*args))

    vfs = VFS(
        documents,
        instances.files_dir,
        run_blocking=run,
        seconds=seconds,
        versions_max=config.get("fs", "versions_max_number"),
        versions_min_delay=config.get("fs", "versions_min_delay"),
        max_file_size=config.get("fs", "max_file_size"),
    )
    thumbnails = None
    if config.get("fs", "thumbnails"):
        thumbnails = Thumbnails(
            vfs, run_blocking=run, max_pixels=config.get("fs", "thumbnail_max_pixels")
        )
        vfs.on_uploaded = thumbnails.after_upload
        from cozyd.files.thumbs import image_metadata

        max_pixels = config.get("fs", "thumbnail_max_pixels")
        vfs.image_metadata = lambda path: image_metadata(path, max_pixels)
    service = FilesService(
        vfs,
        guard,
        seconds=seconds,
        scheme=config.get("server", "scheme"),
        pause=pause,
        thumbnails=thumbnails,
    )
    return vfs, thumbnails, service.resource()


class InstanceLookup:
    """What the job system needs of the instances: one by domain (None
    when gone) and all of them."""

    def __init__(self, instances: InstanceManager):
        self._instances = instances

    async def get(self, domain: str) -> Any:
        from cozyd.errors import NotFound

        try:
            instance = await self._instances.get(domain)
        except NotFound:
            return None
        return None if instance.deleting else instance

    __call__ = get

    async def list_all(self) -> list[Any]:
        return [i for i in await self._instances.list() if not i.deleting]


def job_services(
    config: Config,
    documents: Documents,
    instances: InstanceManager,
    hub: EventHub,
    guard: Guard,
    *,
    reactor: Any,
    seconds: Callable[[], float],
    node: str,
) -> tuple[Any, Any, Any]:
    """The job system (with the stack's workers), the scheduler and /jobs."""
    from cozyd.jobs.builtin import stack_workers
    from cozyd.jobs.redis import make_backend
    from cozyd.jobs.scheduler import Scheduler
    from cozyd.jobs.system import JobSystem
    from cozyd.mail.smtp import Mailer, MailSettings
    from cozyd.mail.worker import SendmailWorker
    from cozyd.web.jobs import JobsService

    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    lookup = InstanceLookup(instances)
    backend = make_backend(
        config.get("jobs", "url"), seconds=seconds, node=node, reactor=reactor
    )
    jobs = JobSystem(
        documents,
        lookup,
        reactor=reactor,
        seconds=seconds,
        backend=backend,
        concurrency=config.get("jobs", "concurrency"),
    )
    mailer = Mailer(MailSettings.from_config(config), reactor=reactor)
    for worker in stack_workers(seconds=seconds):
        jobs.register(worker)
    jobs.register(SendmailWorker(mailer))
    scheduler = Scheduler(jobs, lookup, hub=hub, reactor=reactor, seconds=seconds)
    from cozyd.konnectors.worker import should_queue

    scheduler.before_queue("konnector", should_queue)
    service = JobsService(
        guard,
        jobs,
        scheduler,
        scheme=config.get("server", "scheme"),
        limiter=RateLimiter(seconds=seconds),
    ).resource()
    return jobs, scheduler, service


def owner_services(
    config: Config,
    documents: Documents,
    instances: InstanceManager,
    registry: InstanceRegistry,
    guard: Guard,
    *,
    pages: Pages,
    sessions: WebSessions,
    run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]],
    seconds: Callable[[], float],
    vfs: Any = None,
) -> dict[str, Any]:
    """The owner's routes: ``/`` (home), ``/auth`` (login, logout,
    onboarding form) and ``/settings`` (passphrase, instance, sessions)."""
    urls = InstanceURLs(documents.store, scheme=config.get("server", "scheme"))
    passphrases = Passphrases(
        documents,
        run_blocking=run_hashing,
        kdf_iterations=config.get("instances", "kdf_iterations"),
        update_instance=instances.update,
    )

    async def block(domain: str) -> None:
        await instances.modify(
            domain, ModifyOptions(blocked=True, blocking_reason=LOGIN_FAILED)
        )

    failures = LoginFailures(
        RateLimiter(seconds=seconds),
        block=block,
        per_hour=config.get("auth", "login_failures_per_hour"),
    )
    auth = AuthService(
        guard,
        pages=pages,
        sessions=sessions,
        passphrases=passphrases,
        failures=failures,
        urls=urls,
    )
    settings = SettingsService(
        guard,
        documents=documents,
        instances=instances,
        pages=pages,
        sessions=sessions,
        passphrases=passphrases,
        urls=urls,
        vfs=vfs,
    )
    return {
        "": HomePage(pages=pages, sessions=sessions, urls=urls).resource(),
        "auth": auth.resource(),
        "settings": settings.resource(),
    }


def oauth_services(
    clients: OAuthClients,
    codes: AccessCodes,
    guard: Guard,
    *,
    pages: Pages,
    session_of: Any,
    seconds: Callable[[], float],
    link_app: Any = None,
) -> dict[str, Any]:
    """The OAuth2 routes: registration, consent, tokens, clients settings."""
    oauth = OAuthService(
        clients,
        codes,
        TokenEndpoint(clients, codes, seconds=seconds),
        pages=pages,
        session_of=session_of,
        seconds=seconds,
        link_app=link_app,
    ).resource()
    clients_settings = ClientsSettingsService(clients, guard).resource()
    return {
        "auth/register": oauth,
        "auth/authorize": oauth,
        "auth/access_token": oauth,
        "settings/clients": clients_settings,
    }


def access_log_line(timestamp: str, request) -> str:
    """One access-log line without the query string: query strings can
    carry secrets (tokens, passphrases, register tokens). (The daemon's
    sites log structured events instead: ``cozyd.listeners.ServingSite``.)"""
    path = request.uri.split(b"?", 1)[0].decode("utf-8", "replace")
    method = request.method.decode("ascii", "replace")
    return f'"{method} {path}" {request.code} {request.sentLength or "-"}'


async def recover_files(stack: Stack) -> None:
    """What a crash left in the instances' folders (unfinished uploads,
    contents no metadata references): cleaned before serving."""
    if stack.vfs is None:
        return
    for instance in await stack.instances.list():
        try:
            found = await stack.vfs.recover(instance)
        except Exception:
            log.failure("recovering the files of {domain}", domain=instance.domain)
            continue
        if any(found.values()):
            log.info(
                "files of {domain}: {tmp} unfinished uploads and {deleted} "
                "unreferenced contents removed",
                domain=instance.domain,
                **found,
            )


class OrderedMultiService(MultiService):
    """Children started one after the other (each once the previous one's
    ``startService`` Deferred fired) and stopped in reverse order, one
    after the other too, or all at once with ``stop_together``."""

    stop_together = False

    def startService(self) -> defer.Deferred:
        Service.startService(self)
        return defer.Deferred.fromCoroutine(self._start_children())

    async def _start_children(self) -> None:
        for child in self:
            await defer.maybeDeferred(child.startService)

    def stopService(self) -> defer.Deferred:
        Service.stopService(self)
        children = [child for child in reversed(list(self)) if child.running]
        if self.stop_together:
            return defer.DeferredList(
                [defer.maybeDeferred(c.stopService) for c in children], consumeErrors=True
            )
        return defer.Deferred.fromCoroutine(self._stop_children(children))

    async def _stop_children(self, children) -> None:
        for child in children:
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {child}", child=child)


class StorageService(Service):
    """The data directory, the storage engine and the stack built on it."""

    name = "storage"

    def __init__(self, config: Config, reactor):
        self._config = config
        self._reactor = reactor
        self.stack: Stack | None = None
        self.metrics = Metrics()
        self.pools: WorkerPools = daemon_pools(reactor)

    def startService(self) -> defer.Deferred:
        super().startService()
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        config = self._config
        reactor = self._reactor
        try:
            os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
            node = node_id(config.data_dir)
            probe = os.path.join(config.data_dir, f".write-test-{os.getpid()}")
            with open(probe, "w", encoding="ascii"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise StartError(
                f"the data directory {config.data_dir} is not usable: {exc.strerror or exc}"
            ) from None
        self.pools.start()
        try:
            store = instrument_store(build_store(config, reactor, self.pools), self.metrics)
            await store.start()
        except Exception as exc:
            raise StartError(
                f"the {config.get('storage', 'engine')} storage cannot "
                f"start: {' '.join(str(exc).split()) or type(exc).__name__}"
            ) from None
        self.metrics.watch_pool("default", reactor.getThreadPool())
        for pool in self.pools.all():
            self.metrics.watch_pool(pool.name, pool)
        self.stack = build_stack(
            config,
            store=store,
            run_blocking=thread_runner(reactor),
            run_hashing=self.pools.hashing.run,
            node=node,
            pause=next_turn(reactor),
            sleep=lambda s: task.deferLater(reactor, s, lambda: None),
            metrics=self.metrics,
            download=downloader(reactor, timeout=config.get("apps", "fetch_timeout")),
            reactor=reactor,
        )
        await self.stack.instances.setup()
        await recover_files(self.stack)
        self.stack.workers.update(build_workers(config, reactor))
        if self.stack.jobs is not None:  # konnectors and apps' services run as jobs
            for worker in self.stack.workers.values():
                self.stack.jobs.register(worker)
        # Said at start too (the first konnector job fails with it anyway).
        probe = defer.Deferred.fromCoroutine(
            self.stack.workers["konnector"].check_sandbox()
        )
        probe.addErrback(lambda f: log.warn("{why}", why=f.getErrorMessage()))
        log.info("storage ready: {engine} engine", engine=store.engine)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.stack is not None:
            await self.stack.store.close()
        self.pools.stop()


class JobsService(Service):
    """The job system and the scheduler of the stack (started once the
    storage is ready, stopped before it: running jobs get a grace period)."""

    name = "jobs"

    def __init__(self, storage: StorageService):
        self._storage = storage

    def startService(self) -> defer.Deferred:
        super().startService()
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        stack = self._storage.stack
        if stack is None or stack.jobs is None:
            return
        try:
            await defer.maybeDeferred(stack.jobs.startService)
        except Exception as exc:
            raise StartError(
                f"the job system cannot start: {' '.join(str(exc).split()) or type(exc).__name__}"
            ) from None
        await defer.maybeDeferred(stack.scheduler.startService)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        stack = self._storage.stack
        if stack is None or stack.jobs is None:
            return
        if stack.scheduler.running:
            await defer.maybeDeferred(stack.scheduler.stopService)
        if stack.jobs.running:
            await defer.maybeDeferred(stack.jobs.stopService)


class CozydService(OrderedMultiService):
    """The daemon: storage, then the listeners (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        reactor,
        *,
        log_observer: Any = None,
        stderr: Any = None,
        freeze_gc: bool = False,
    ):
        """``freeze_gc``: once started, move every object made so far out of
        the garbage collector's sight (``gc.freeze``), as long-running
        servers do; the daemon's (a process that starts once), never a
        test's."""
        super().__init__()
        self._freeze_gc = freeze_gc
        self._config = config
        self._reactor = reactor
        self._log_observer = log_observer
        self._stderr = stderr if stderr is not None else sys.stderr
        self.storage = StorageService(config, reactor)
        self.storage.setServiceParent(self)
        # Between storage and the listeners: the jobs, then the realtime node.
        self.jobs = JobsService(self.storage)
        self.jobs.setServiceParent(self)
        RealtimeNode(
            lambda: self.stack.realtime if self.stack is not None else None,
            url=config.get("realtime", "url"),
            reactor=reactor,
        ).setServiceParent(self)
        self.listeners = OrderedMultiService()
        self.listeners.stop_together = True
        self.listeners.setName("listeners")
        grace = config.get("server", "shutdown_grace")
        ListenerService(
            "public API",
            config.get("server", "listen"),
            lambda: self._site("public", self.stack.public),
            reactor,
            grace=grace,
        ).setServiceParent(self.listeners)
        ListenerService(
            "admin API",
            config.get("admin", "listen"),
            lambda: self._site("admin", self.stack.admin),
            reactor,
            grace=grace,
            loopback_only=not config.get("admin", "allow_remote"),
        ).setServiceParent(self.listeners)
        self.listeners.setServiceParent(self)

    @property
    def stack(self) -> Stack | None:
        return self.storage.stack

    def setServiceParent(self, parent) -> None:
        # twistd's application: its log observer is cozyd's ([log] format).
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self._log_observer)
        super().setServiceParent(parent)

    def _site(self, listener: str, resource) -> ServingSite:
        # Bodies over the limit are refused before they are read.
        site = ServingSite(
            resource,
            listener=listener,
            metrics=self.storage.metrics,
            max_body_size=self._config.get("server", "max_body_size"),
            header_timeout=self._config.get("server", "header_timeout"),
        )
        site.displayTracebacks = False
        return site

    def startService(self) -> defer.Deferred:
        d = super().startService()
        d.addCallbacks(self._started, self._failed)
        return d

    def _started(self, _) -> None:
        self._install_sighup()
        if self._freeze_gc:
            # The modules, the configuration and the stack live as long as
            # the process: a full collection need not go through them
            # again each time (it would, hundreds of thousands of objects,
            # in the middle of a fan-out or a request).
            gc.freeze()

    def _failed(self, failure) -> None:
        if failure.check(StartError):
            reason = str(failure.value)
        else:
            log.failure("cozyd could not start", failure)
            reason = " ".join(str(failure.value).split()) or failure.type.__name__
        line = f"cozyd cannot start: {reason}"
        log.error("{line}", line=line)
        try:
            self._stderr.write(line + "\n")
            self._stderr.flush()
        except (OSError, ValueError):
            pass
        self._exit_code = 1

        def exit_now() -> None:
            # twistd would exit 0 after the reactor stops: systemd's
            # Restart=on-failure must see the failure.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            destination = getattr(self._log_observer, "destination", None)
            if destination is not None:
                destination.flush()
            os._exit(1)

        self._reactor.addSystemEventTrigger("after", "shutdown", exit_now)

        def stop() -> None:
            try:
                self._reactor.stop()
            except ReactorNotRunning:
                pass  # stopping already (a signal came during the start)

        if self._reactor.running:
            stop()
        else:
            self._reactor.callWhenRunning(stop)

    # -- SIGHUP ---------------------------------------------------------------
    def _install_sighup(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            return
        try:
            signal.signal(
                signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload)
            )
        except ValueError:  # not the main thread (tests)
            pass

    def reload(self) -> None:
        """SIGHUP: re-read the admin passphrase, reopen the log file."""
        if self._log_observer is not None:
            self._log_observer.reopen()
        log.info("SIGHUP: reopened the log, re-reading the admin passphrase")
        stack = self.stack
        if stack is not None and stack.passphrase_checker is not None:
            stack.passphrase_checker.reload()

    def stopService(self) -> defer.Deferred:
        d = super().stopService()
        d.addBoth(lambda _: log.info("cozyd stopped"))
        return d
