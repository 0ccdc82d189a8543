"""Builds the object graph and runs it as a Twisted service.

``build_stack`` wires storage, instances and the web apps; it is used both
by the daemon (``CozydService``) and by the in-memory test stack
(``cozyd.testing``). Start order: storage, then the listeners; stop order is
the reverse.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, endpoints, task
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
from cozyd.permissions.resolver import PermissionResolver
from cozyd.pools import WorkerPools, daemon_pools
from cozyd.realtime.hub import EventHub
from cozyd.storage.interface import DocumentStore
from cozyd.web.admin import AdminService
from cozyd.web.apphosts import AppHosts
from cozyd.web.auth import AuthService, HomeApp, HomePage, WebSessions
from cozyd.web.data import DataService
from cozyd.web.guard import Guard
from cozyd.web.oauth import ClientsSettingsService, OAuthService
from cozyd.web.pages import Pages
from cozyd.web.permissions import PermissionsService
from cozyd.web.root import PublicRoot
from cozyd.web.settings import SettingsService
from cozyd.web.debug import DebugService
from cozyd.web.site import CozySite
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


def thread_runner(reactor) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
    def run_blocking(function):
        return deferToThreadPool(reactor, reactor.getThreadPool(), function)
    return run_blocking


def build_store(config: Config, reactor, pools: WorkerPools | None = None) -> DocumentStore:
    if config.get("storage", "engine") == "couchdb":
        from cozyd.storage.couchdb import CouchDBStore

        return CouchDBStore(config.get("couchdb", "url"), reactor=reactor,
                            timeout=config.get("couchdb", "timeout"))
    from cozyd.storage.sqlite import EmbeddedStore

    if pools is None:
        pools = daemon_pools(reactor)
    return EmbeddedStore(config.db_dir, reactor=reactor, pool=pools.storage,
                         idle_timeout=config.get("storage", "idle_timeout"),
                         max_open=config.get("storage", "max_open_files"))


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


def build_stack(config: Config, *, store: DocumentStore,
                run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
                run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
                seconds: Callable[[], float] = time.time, node: str = "",
                pause: Callable[[], Awaitable[Any]] | None = None) -> Stack:
    """``run_hashing`` runs password hashing (the daemon's bounded pool;
    ``run_blocking`` when not given). ``pause()`` lets long answers give the
    reactor a turn between their pieces (None in memory: nothing else to let
    run)."""
    run_hashing = run_hashing or run_blocking
    hub = EventHub()
    documents = Documents(store, hub)
    registry_box: list[InstanceRegistry] = []
    instances = InstanceManager(
        documents, config.fs_root, run_blocking=run_blocking, run_hashing=run_hashing,
        kdf_iterations=config.get("instances", "kdf_iterations"),
        on_change=lambda domain: registry_box[0].invalidate(domain),
        node_id=node, seconds=seconds)
    registry = InstanceRegistry(instances.find_by_host, seconds=seconds,
                                ttl=config.get("instances", "cache_ttl"))
    registry_box.append(registry)
    status = StatusService(store, config.fs_root)
    resolver = PermissionResolver(store, seconds=seconds,
                                  ttl=config.get("instances", "cache_ttl"))
    clients = OAuthClients(documents, on_change=resolver.forget_client, seconds=seconds)
    access_codes = AccessCodes(documents, seconds=seconds)
    scheme = config.get("server", "scheme")
    pages = Pages(secure=scheme == "https", scheme=scheme)
    web_sessions = WebSessions(SessionStore(documents, seconds=seconds),
                               secure=scheme == "https")
    guard = Guard(resolver, seconds=seconds, session_id_of=web_sessions.session_id_of)
    services = {
        "permissions": PermissionsService(guard).resource(),
        "data": DataService(documents, guard,
                            max_body_size=config.get("server", "max_body_size"),
                            pause=pause).resource(),
        **owner_services(config, documents, instances, registry, guard, pages=pages,
                         sessions=web_sessions, run_hashing=run_hashing,
                         seconds=seconds),
        **oauth_services(clients, access_codes, guard, pages=pages,
                         session_of=web_sessions.session_id_of, seconds=seconds),
    }
    unscoped = {"_debug": DebugService(pause)} if config.get("server", "test_routes") \
        else {}
    public = PublicRoot(registry, status, services=services, seconds=seconds,
                        unscoped=unscoped,
                        max_body_size=config.get("server", "max_body_size")).resource()
    # <slug>.<domain>: the instance's apps (only the built-in home for now).
    home = HomeApp(pages=pages, sessions=web_sessions,
                   urls=InstanceURLs(store, scheme=scheme)).resource()
    public = AppHosts(registry, public, {HOME_SLUG: home}, pages=pages,
                      scheme=scheme).resource()
    # scrypt in the hashing pool (off the reactor); wrong guesses rate-limited.
    checker = PassphraseChecker(config.admin_passphrase_hash, run_hashing=run_hashing)
    admin = AdminService(instances, checker.check, clients=clients,
                         seconds=seconds).resource()
    return Stack(config, store, instances, registry, public, admin, hub, documents)


def owner_services(config: Config, documents: Documents, instances: InstanceManager,
                   registry: InstanceRegistry, guard: Guard, *, pages: Pages,
                   sessions: WebSessions,
                   run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]],
                   seconds: Callable[[], float]) -> dict[str, Any]:
    """The owner's routes: ``/`` (home), ``/auth`` (login, logout,
    onboarding form) and ``/settings`` (passphrase, instance, sessions)."""
    urls = InstanceURLs(documents.store, scheme=config.get("server", "scheme"))
    passphrases = Passphrases(documents, run_blocking=run_hashing,
                              kdf_iterations=config.get("instances", "kdf_iterations"),
                              update_instance=instances.update)

    async def block(domain: str) -> None:
        await instances.modify(domain, ModifyOptions(blocked=True,
                                                     blocking_reason=LOGIN_FAILED))
    failures = LoginFailures(RateLimiter(seconds=seconds), block=block,
                             per_hour=config.get("auth", "login_failures_per_hour"))
    auth = AuthService(guard, pages=pages, sessions=sessions, passphrases=passphrases,
                       failures=failures, urls=urls)
    settings = SettingsService(guard, documents=documents, instances=instances, pages=pages,
                               sessions=sessions, passphrases=passphrases, urls=urls)
    return {"": HomePage(pages=pages, sessions=sessions, urls=urls).resource(),
            "auth": auth.resource(), "settings": settings.resource()}


def oauth_services(clients: OAuthClients, codes: AccessCodes, guard: Guard, *,
                   pages: Pages, session_of: Any,
                   seconds: Callable[[], float]) -> dict[str, Any]:
    """The OAuth2 routes: registration, consent, tokens, clients settings."""
    oauth = OAuthService(clients, codes, TokenEndpoint(clients, codes, seconds=seconds),
                         pages=pages, session_of=session_of, seconds=seconds).resource()
    clients_settings = ClientsSettingsService(clients, guard).resource()
    return {"auth/register": oauth, "auth/authorize": oauth, "auth/access_token": oauth,
            "settings/clients": clients_settings}


def access_log_line(timestamp: str, request) -> str:
    """One access-log line without the query string: query strings can
    carry secrets (tokens, passphrases, register tokens)."""
    path = request.uri.split(b"?", 1)[0].decode("utf-8", "replace")
    method = request.method.decode("ascii", "replace")
    return f'"{method} {path}" {request.code} {request.sentLength or "-"}'


class CozydService(Service):
    """Storage first, then the public and admin listeners."""

    def __init__(self, config: Config, reactor):
        self._config = config
        self._reactor = reactor
        self._ports: list = []
        self.stack: Stack | None = None
        self.pools: WorkerPools = daemon_pools(reactor)

    def startService(self) -> None:
        super().startService()
        d = defer.Deferred.fromCoroutine(self._start())

        def failed(failure):
            log.failure("cozyd could not start", failure)
            self._reactor.stop()
        d.addErrback(failed)

    async def _start(self) -> None:
        config = self._config
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        self.pools.start()
        store = build_store(config, self._reactor, self.pools)
        await store.start()
        self.stack = build_stack(config, store=store,
                                 run_blocking=thread_runner(self._reactor),
                                 run_hashing=self.pools.hashing.run,
                                 node=node_id(config.data_dir),
                                 pause=next_turn(self._reactor))
        await self.stack.instances.setup()
        log.info("storage ready: {engine} engine", engine=store.engine)
        await self._listen("public API", self.stack.public,
                           config.get("server", "host"), config.get("server", "port"))
        await self._listen("admin API", self.stack.admin,
                           config.get("admin", "host"), config.get("admin", "port"))

    async def _listen(self, name: str, resource, host: str, port: int) -> None:
        # Bodies over the limit are refused before they are read.
        site = CozySite(resource, logFormatter=access_log_line,
                        max_body_size=self._config.get("server", "max_body_size"),
                        header_timeout=self._config.get("server", "header_timeout"))
        site.displayTracebacks = False
        if ":" in host:
            endpoint = endpoints.TCP6ServerEndpoint(self._reactor, port, interface=host)
        else:
            endpoint = endpoints.TCP4ServerEndpoint(self._reactor, port, interface=host)
        listening = await endpoint.listen(site)
        self._ports.append(listening)
        address = listening.getHost()
        shown = f"[{address.host}]" if ":" in address.host else address.host
        log.info("{name} listening on http://{address}:{port}/", name=name,
                 address=shown, port=address.port)

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for port in self._ports:
            await port.stopListening()
        self._ports.clear()
        if self.stack is not None:
            await self.stack.store.close()
        self.pools.stop()
        log.info("cozyd stopped")
