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
from cozyd.listeners import ListenerService, ServingSite, StartError
from cozyd.metrics import Metrics, instrument_store
from cozyd.permissions.resolver import PermissionResolver
from cozyd.pools import WorkerPools, daemon_pools
from cozyd.realtime.hub import EventHub
from cozyd.storage.interface import DocumentStore
from cozyd.web.admin import AdminService
from cozyd.web.apphosts import AppHosts
from cozyd.web.auth import AuthService, HomeApp, HomePage, WebSessions
from cozyd.web.data import DataService
from cozyd.web.debug import DebugService
from cozyd.web.guard import Guard
from cozyd.web.oauth import ClientsSettingsService, OAuthService
from cozyd.web.pages import Pages
from cozyd.web.permissions import PermissionsService
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
        SessionStore(documents, seconds=seconds), secure=scheme == "https"
    )
    guard = Guard(resolver, seconds=seconds, session_id_of=web_sessions.session_id_of)
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
    services = {
        "jobs": jobs_service,
        "permissions": PermissionsService(guard).resource(),
        "data": DataService(
            documents,
            guard,
            max_body_size=config.get("server", "max_body_size"),
            pause=pause,
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
        ),
        **oauth_services(
            clients,
            access_codes,
            guard,
            pages=pages,
            session_of=web_sessions.session_id_of,
            seconds=seconds,
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
    public = AppHosts(
        registry, public, {HOME_SLUG: home}, pages=pages, scheme=scheme
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
        jobs=jobs,
        scheduler=scheduler,
    )


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
) -> dict[str, Any]:
    """The OAuth2 routes: registration, consent, tokens, clients settings."""
    oauth = OAuthService(
        clients,
        codes,
        TokenEndpoint(clients, codes, seconds=seconds),
        pages=pages,
        session_of=session_of,
        seconds=seconds,
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
            reactor=reactor,
        )
        await self.stack.instances.setup()
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
        self, config: Config, reactor, *, log_observer: Any = None, stderr: Any = None
    ):
        super().__init__()
        self._config = config
        self._reactor = reactor
        self._log_observer = log_observer
        self._stderr = stderr if stderr is not None else sys.stderr
        self.storage = StorageService(config, reactor)
        self.storage.setServiceParent(self)
        self.jobs = JobsService(self.storage)
        self.jobs.setServiceParent(self)
        # (realtime goes here, between storage and listeners)
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
