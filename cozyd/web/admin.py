"""The admin API (loopback port 6060 by default), used by ``cozyctl``.

Every route is behind HTTP Basic auth whose password is the admin
passphrase (any user name), as cozy-stack does. Parameters come in the
query string, as cozy-stack's admin API takes them.

The passphrase check (scrypt, tens of milliseconds) runs off the reactor
(``check_passphrase`` may return an awaitable: the hashing pool), and wrong
passphrases are rate-limited: past ``max_failures`` in ``failure_period``
seconds, requests are answered 429 without hashing anything until the
window ends.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cozyd.apps.layout import KONNECTOR, WEBAPP
from cozyd.auth import tokens
from cozyd.auth.clients import RegistrationError
from cozyd.auth.limits import RateLimiter
from cozyd.durations import parse_duration
from cozyd.errors import BadRequest, CozyError, NotFound, Unauthorized, Unprocessable
from cozyd.instance.lifecycle import (
    CreateOptions,
    InstanceManager,
    ModifyOptions,
    parse_settings,
)
from cozyd.web.common import (
    JSONAPI,
    json_response,
    jsonapi_errors,
    query_bool,
    query_int,
    query_list,
    query_text,
)
from cozyd.web.routing import (
    ADMIN,
    NO_BODY,
    Service,
    maybe_await,
    route,
    shield,
    streamed,
)

log = Logger()

#: Wrong admin passphrases accepted in a window before requests get 429.
MAX_FAILURES = 10
FAILURE_PERIOD = 60.0


async def install_default_apps(installer: Any, instance: Any, slugs) -> None:
    """``instances add --apps a,b``: each from the registry's stable
    channel; one that fails is logged and the others go on, as cozy-stack."""
    for slug in slugs:
        try:
            await installer.install(instance, WEBAPP, slug, f"registry://{slug}/stable")
        except CozyError as error:
            log.warn(
                "instance {domain}: {slug} not installed: {reason}",
                domain=instance.domain,
                slug=slug,
                reason=error.detail,
            )
        except Exception:
            log.failure(
                "instance {domain}: installing {slug}", domain=instance.domain, slug=slug
            )


class TooManyFailures(CozyError):
    status = 429
    code = "too_many_requests"


class AdminService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        instances: InstanceManager,
        check_passphrase: Callable[[str], bool | Awaitable[bool]],
        *,
        clients: Any,
        seconds: Callable[[], float],
        max_failures: int = MAX_FAILURES,
        failure_period: float = FAILURE_PERIOD,
        metrics: Any = None,
        apps: Any = None,
        vfs: Any = None,
        jobs: Any = None,
        scheduler: Any = None,
    ):
        super().__init__()
        self._metrics = metrics
        self._apps = apps
        self._vfs = vfs
        self._jobs = jobs
        self._scheduler = scheduler
        self._instances = instances
        self._check_passphrase = check_passphrase
        self._clients = clients
        self._seconds = seconds
        self._failures = RateLimiter(seconds=seconds)
        self._max_failures = max_failures
        self._failure_period = failure_period

    async def no_route(self, request: IRequest, error: CozyError):
        await self.authenticate(request)  # nothing is told before the passphrase
        raise error

    async def authenticate(self, request: IRequest) -> None:
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        password = None
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
                password = decoded.partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                password = None
        if self._failures.count("admin") >= self._max_failures:
            request.setHeader(b"Retry-After", b"%d" % int(self._failure_period))
            raise TooManyFailures("too many wrong admin passphrases; try again later")
        if not password or not await maybe_await(self._check_passphrase(password)):
            if password:
                self._failures.hit(
                    "admin", limit=self._max_failures, period=self._failure_period
                )
            request.setHeader(b"WWW-Authenticate", b'Basic realm="cozyd admin"')
            raise Unauthorized("the admin passphrase is required (HTTP Basic auth)")

    # -- instances ----------------------------------------------------------
    @route("instances", "POST", auth=ADMIN)
    async def create_instance(self, request: IRequest):
        domain = query_text(request, "Domain")
        if not domain:
            raise Unprocessable("the Domain parameter is required", code="illegal_domain")
        options = CreateOptions(
            domain=domain,
            locale=query_text(request, "Locale") or "en",
            email=query_text(request, "Email") or "",
            public_name=query_text(request, "PublicName") or "",
            phone=query_text(request, "Phone") or "",
            timezone=query_text(request, "Timezone") or "",
            context=query_text(request, "ContextName") or "",
            settings=parse_settings(query_text(request, "Settings") or ""),
            passphrase=query_text(request, "Passphrase") or "",
            kdf_iterations=query_int(request, "KdfIterations", minimum=0) or 0,
            disk_quota=query_int(request, "DiskQuota", minimum=0) or 0,
            domain_aliases=query_list(request, "DomainAliases") or (),
            uuid=query_text(request, "UUID") or "",
            tos=query_text(request, "TOSSigned") or "",
        )
        # All the steps of a creation, even if the client hangs up.
        instance = await shield(self._instances.create(options))
        apps = query_list(request, "Apps") or ()
        if apps and self._apps is not None:
            await shield(install_default_apps(self._apps, instance, apps))
        return json_response(
            request, {"data": instance.jsonapi()}, status=201, content_type=JSONAPI
        )

    @route("instances", "GET", auth=ADMIN)
    async def list_instances(self, request: IRequest):
        instances = await self._instances.list()
        skip = query_int(request, "page[skip]", minimum=0) or 0
        limit = query_int(request, "page[limit]", minimum=1)
        page = instances[skip : skip + limit] if limit else instances[skip:]
        body: dict = {
            "data": [i.jsonapi() for i in page],
            "meta": {"count": len(instances)},
        }
        if limit and skip + limit < len(instances):
            body["links"] = {
                "next": f"/instances?page[limit]={limit}&page[skip]={skip + limit}"
            }
        return json_response(request, body, content_type=JSONAPI)

    @route("instances/count", "GET", auth=ADMIN)
    async def count_instances(self, request: IRequest):
        return json_response(request, {"count": len(await self._instances.list())})

    @route("instances/{domain}", "GET", auth=ADMIN)
    async def show_instance(self, request: IRequest, domain: str):
        instance = await self._instances.get(domain)
        return json_response(request, {"data": instance.jsonapi()}, content_type=JSONAPI)

    @route("instances/{domain}", "PATCH", auth=ADMIN)
    async def modify_instance(self, request: IRequest, domain: str):
        settings = query_text(request, "Settings")
        changes = ModifyOptions(
            locale=query_text(request, "Locale"),
            email=query_text(request, "Email"),
            public_name=query_text(request, "PublicName"),
            phone=query_text(request, "Phone"),
            timezone=query_text(request, "Timezone"),
            context=query_text(request, "ContextName"),
            settings=parse_settings(settings) if settings is not None else None,
            disk_quota=query_int(request, "DiskQuota", minimum=0),
            domain_aliases=query_list(request, "DomainAliases"),
            uuid=query_text(request, "UUID"),
            tos=query_text(request, "TOSSigned"),
            tos_latest=query_text(request, "TOSLatest"),
            onboarding_finished=query_bool(request, "OnboardingFinished"),
            blocked=query_bool(request, "Blocked"),
            blocking_reason=query_text(request, "BlockingReason"),
            deleting=query_bool(request, "Deleting"),
        )
        instance = await self._instances.modify(domain, changes)
        return json_response(request, {"data": instance.jsonapi()}, content_type=JSONAPI)

    @route("instances/{domain}", "DELETE", auth=ADMIN)
    async def destroy_instance(self, request: IRequest, domain: str):
        instance = None
        if self._apps is not None:
            try:
                instance = await self._instances.get(domain)
            except CozyError:
                instance = None  # half-created: destroy repairs it, no app yet
        await self._instances.destroy(domain)
        if instance is not None:
            await self._apps.remove_instance(instance)  # its apps' code
        request.setResponseCode(204)
        return b""

    @route("instances/token", "POST", auth=ADMIN)
    async def issue_token(self, request: IRequest):
        instance = await self._instances.get(query_text(request, "Domain") or "")
        name = query_text(request, "Audience") or ""
        audience = tokens.AUDIENCE_NAMES.get(name)
        if audience is None:
            raise BadRequest(f"unknown audience {name!r}")
        subject = query_text(request, "Subject") or ""
        scope = query_text(request, "Scope") or ""
        now = self._seconds()
        issued_at = now
        expire = query_text(request, "Expire")
        if expire:
            try:
                wanted = parse_duration(expire)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            lifetime = tokens.validity(audience)
            # A zero duration ("0s") means the default lifetime, as cozy-stack.
            if lifetime is not None and wanted:
                # cozy-stack shifts iat so that the token lives ``Expire``.
                issued_at = now + wanted - lifetime
        if audience in (tokens.ACCESS, tokens.REFRESH):
            await self._clients.confirm_exists(instance, subject)
        elif audience == tokens.CLI and not scope:
            raise BadRequest("a CLI token needs a scope")
        if audience == tokens.CLI:
            subject = subject or "CLI"
        token = tokens.issue(instance, audience, subject, issued_at=issued_at, scope=scope)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return token.encode("ascii")

    # -- OAuth clients ------------------------------------------------------
    @route("instances/oauth_client", "POST", auth=ADMIN)
    async def create_oauth_client(self, request: IRequest):
        instance = await self._instances.get(query_text(request, "Domain") or "")
        allow_login_scope = query_bool(request, "AllowLoginScope") or False
        metadata = {
            "redirect_uris": [query_text(request, "RedirectURI") or ""],
            "client_name": query_text(request, "ClientName") or "",
            "software_id": query_text(request, "SoftwareID") or "",
        }
        try:
            client = await self._clients.register(
                instance, metadata, pending=False, allow_login_scope=allow_login_scope
            )
        except RegistrationError as error:
            # cozy-stack answers the bare description, as text.
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return (error.description or error.error).encode("utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, client)

    @route("instances/oauth_client", "GET", auth=ADMIN)
    async def find_oauth_client(self, request: IRequest):
        instance = await self._instances.get(query_text(request, "domain") or "")
        software_id = query_text(request, "software_id") or ""
        client = await self._clients.find_by_software_id(instance, software_id)
        if client is None:
            raise NotFound(
                f"no OAuth client with software_id {software_id!r}", code="client_not_found"
            )
        return json_response(request, {**client, "client_id": client["_id"]})

    # -- apps and konnectors (cozyctl apps|konnectors) ---------------------------
    async def _app_instance(self, domain: str):
        if self._apps is None:
            raise NotFound("apps are not installable here")
        return await self._instances.get(domain)

    def _app_answer(self, request: IRequest, kind: str, doc: dict, domain: str):
        from cozyd.web.apps import app_jsonapi

        data = app_jsonapi(kind, doc, scheme="http", domain=domain, subdomains="nested")
        body = {"data": data}
        return json_response(request, body, content_type=JSONAPI)

    async def _list_apps(self, request: IRequest, domain: str, kind: str):
        instance = await self._app_instance(domain)
        docs, _ = await self._apps.list(instance, kind, limit=10_000)
        from cozyd.web.apps import app_jsonapi

        body = {
            "data": [
                app_jsonapi(
                    kind, d, scheme="http", domain=instance.domain, subdomains="nested"
                )
                for d in docs
            ],
            "meta": {"count": len(docs)},
        }
        return json_response(request, body, content_type=JSONAPI)

    async def _one_app(self, request: IRequest, domain: str, kind: str, slug: str):
        from cozyd.web.apps import parse_parameters

        instance = await self._app_instance(domain)
        method = request.method
        if method in (b"GET", b"HEAD"):
            doc = await self._apps.get(instance, kind, slug)
        elif method == b"POST":
            source = query_text(request, "Source") or f"registry://{slug}/stable"
            doc = await shield(
                self._apps.install(
                    instance,
                    kind,
                    slug,
                    source,
                    deactivated=query_bool(request, "Deactivated") is True,
                    parameters=parse_parameters(query_text(request, "Parameters")),
                )
            )
        elif method == b"PUT":
            acked = query_bool(request, "PermissionsAcked")
            doc = await shield(
                self._apps.update(
                    instance,
                    kind,
                    slug,
                    query_text(request, "Source") or None,
                    permissions_acked=True if acked is None else acked,
                    parameters=parse_parameters(query_text(request, "Parameters")),
                )
            )
        else:
            doc = await shield(self._apps.uninstall(instance, kind, slug))
        return self._app_answer(request, kind, doc, instance.domain)

    @route("instances/{domain}/apps", "GET", auth=ADMIN)
    async def list_webapps(self, request: IRequest, domain: str):
        return await self._list_apps(request, domain, WEBAPP)

    @route("instances/{domain}/konnectors", "GET", auth=ADMIN)
    async def list_konnectors(self, request: IRequest, domain: str):
        return await self._list_apps(request, domain, KONNECTOR)

    @route("instances/{domain}/apps/{slug}", "GET", auth=ADMIN)
    async def show_webapp(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, WEBAPP, slug)

    @route("instances/{domain}/apps/{slug}", "POST", auth=ADMIN, body=NO_BODY)
    async def install_webapp(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, WEBAPP, slug)

    @route("instances/{domain}/apps/{slug}", "PUT", auth=ADMIN, body=NO_BODY)
    async def update_webapp(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, WEBAPP, slug)

    @route("instances/{domain}/apps/{slug}", "DELETE", auth=ADMIN)
    async def uninstall_webapp(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, WEBAPP, slug)

    @route("instances/{domain}/konnectors/{slug}", "GET", auth=ADMIN)
    async def show_konnector(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, KONNECTOR, slug)

    @route("instances/{domain}/konnectors/{slug}", "POST", auth=ADMIN, body=NO_BODY)
    async def install_konnector(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, KONNECTOR, slug)

    @route("instances/{domain}/konnectors/{slug}", "PUT", auth=ADMIN, body=NO_BODY)
    async def update_konnector(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, KONNECTOR, slug)

    @route("instances/{domain}/konnectors/{slug}", "DELETE", auth=ADMIN)
    async def uninstall_konnector(self, request: IRequest, domain: str, slug: str):
        return await self._one_app(request, domain, KONNECTOR, slug)

    # -- files (cozyd.web.files.FilesAdmin does the work) -----------------------
    def _files_admin(self):
        if self._vfs is None:
            raise NotFound("no file system here")
        from cozyd.web.files import FilesAdmin

        return FilesAdmin(self._vfs)

    @route("instances/{domain}/fsck", "GET", auth=ADMIN)
    async def fsck(self, request: IRequest, domain: str):
        return await self._files_admin().fsck(request, await self._instances.get(domain))

    @route("instances/{domain}/disk-usage", "GET", auth=ADMIN)
    async def disk_usage(self, request: IRequest, domain: str):
        return await self._files_admin().usage(request, await self._instances.get(domain))

    @route("instances/{domain}/files/dir", "POST", auth=ADMIN)
    async def files_mkdir(self, request: IRequest, domain: str):
        return await self._files_admin().mkdir(request, await self._instances.get(domain))

    @route("instances/{domain}/files/file", "POST", auth=ADMIN, body=streamed(2**50))
    async def files_upload(self, request: IRequest, domain: str):
        return await self._files_admin().upload(request, await self._instances.get(domain))

    # -- jobs and triggers (cozyctl jobs, cozyctl triggers) -----------------
    def _job_system(self) -> Any:
        if self._jobs is None or self._scheduler is None:
            raise NotFound("this server runs no job system")
        return self._jobs

    @route("instances/{domain}/jobs/queue/{worker}", "POST", auth=ADMIN)
    async def push_job(self, request: IRequest, domain: str, worker: str):
        from cozyd.jobs.model import job_jsonapi

        instance = await self._instances.get(domain)
        text = query_text(request, "Arguments") or "{}"
        try:
            arguments = json.loads(text)
        except ValueError:
            raise BadRequest("Arguments must be JSON") from None
        doc = await self._job_system().push(
            instance, worker, arguments, manual=query_bool(request, "Manual") or False
        )
        return json_response(
            request, {"data": job_jsonapi(doc)}, status=202, content_type=JSONAPI
        )

    @route("instances/{domain}/jobs/purge", "DELETE", auth=ADMIN)
    async def purge_jobs(self, request: IRequest, domain: str):
        from cozyd.web.jobs import big_duration

        instance = await self._instances.get(domain)
        text = query_text(request, "duration") or "2M"
        try:
            keep = big_duration(text)
        except ValueError:
            raise BadRequest(f"invalid duration {text!r}") from None
        workers = [w for w in (query_text(request, "workers") or "").split(",") if w]
        deleted = await self._job_system().purge(instance, keep, workers or None)
        return json_response(request, {"deleted": deleted})

    @route("instances/{domain}/jobs/{job_id}", "GET", auth=ADMIN)
    async def show_job(self, request: IRequest, domain: str, job_id: str):
        from cozyd.jobs.model import job_jsonapi

        instance = await self._instances.get(domain)
        doc = await self._job_system().get(instance, job_id)
        return json_response(request, {"data": job_jsonapi(doc)}, content_type=JSONAPI)

    @route("instances/{domain}/triggers", "GET", auth=ADMIN)
    async def list_triggers(self, request: IRequest, domain: str):
        from cozyd.jobs.model import trigger_jsonapi

        instance = await self._instances.get(domain)
        self._job_system()
        data = []
        for doc in await self._scheduler.all(instance):
            state = await self._scheduler.state(instance, doc["_id"])
            data.append(trigger_jsonapi(doc, state=state))
        return json_response(request, {"data": data}, content_type=JSONAPI)

    @route("instances/{domain}/triggers/{trigger_id}/launch", "POST", auth=ADMIN)
    async def launch_trigger(self, request: IRequest, domain: str, trigger_id: str):
        from cozyd.jobs.model import job_jsonapi

        instance = await self._instances.get(domain)
        self._job_system()
        doc = await self._scheduler.launch(instance, trigger_id)
        return json_response(
            request, {"data": job_jsonapi(doc)}, status=201, content_type=JSONAPI
        )

    @route("instances/{domain}/triggers/{trigger_id}", "DELETE", auth=ADMIN)
    async def delete_trigger(self, request: IRequest, domain: str, trigger_id: str):
        instance = await self._instances.get(domain)
        self._job_system()
        await self._scheduler.delete(instance, trigger_id)
        request.setResponseCode(204)
        return b""

    # -- metrics ------------------------------------------------------------
    @route("metrics", "GET", auth=ADMIN)
    async def metrics(self, request: IRequest):
        """Prometheus text format (``cozyd.metrics``)."""
        if self._metrics is None:
            raise NotFound("no metrics are kept here")
        from cozyd.metrics import CONTENT_TYPE

        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self._metrics.exposition()
