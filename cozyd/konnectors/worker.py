"""The ``konnector`` and ``service`` workers (``cozyd.jobs.workers.Worker``).

As cozy-stack's ``worker/exec`` (docs/konnectors-workflow.md, section 6 of
the inventory): a job's run

1. reads the konnector's manifest document (``io.cozy.konnectors/<slug>``;
   missing → error, not retried), checks the account of the message exists
   (unless ``account_deleted``) and that the konnector is ``ready``
   (``installed`` is upgraded to ``ready``);
2. copies the code (``cozyd.apps.layout``) into a fresh work folder
   ``konnector-<slug>…`` (README.md, package.json, .travis.yml, LICENSE
   skipped; an ``app.tar`` extracted), readable by the sandbox's uid;
3. mints a konnector token (audience ``konn``, subject the slug; 30 min)
   and builds exactly the reference environment;
4. runs it in the sandbox (``cozyd.konnectors.sandbox``) through the
   ``ProcessProtocol`` of ``cozyd.konnectors.process``, publishing each
   JSON line on the hub as a ``CREATED`` of ``io.cozy.jobs.events``;
5. fails the job with the last ``critical`` message, else the last
   ``error``, else the process error (``exit status N``), else succeeds;
   ``LOGIN_FAILED…`` / ``USER_ACTION_NEEDED…`` and ``no_retry`` are not
   retried; the time limit gives ``context deadline exceeded``;
6. on success of an ``account_deleted`` run, removes the soft-deleted copy.

The trigger's ``current_state`` is the job system's (computed from the
jobs' errors these runs raise); ``should_queue`` is the reference's
``BeforeHook`` for it to call.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import utils
from twisted.logger import Logger

from cozyd.apps import layout
from cozyd.auth import tokens
from cozyd.instance.model import Instance
from cozyd.jobs.workers import JobContext, WorkerError
from cozyd.konnectors import process, sandbox
from cozyd.realtime.hub import CREATED
from cozyd.storage.interface import DatabaseNotFound, DocNotFound

log = Logger()

KONNECTORS_DOCTYPE = "io.cozy.konnectors"
APPS_DOCTYPE = "io.cozy.apps"
ACCOUNTS_DOCTYPE = "io.cozy.accounts"
SOFT_DELETED_ACCOUNTS = "io.cozy.accounts.soft_deleted"
JOB_EVENTS_DOCTYPE = "io.cozy.jobs.events"
LOGIN_FAILED = "LOGIN_FAILED"
USER_ACTION_NEEDED = "USER_ACTION_NEEDED"
USER_ACTION_NEEDED_CGU = "USER_ACTION_NEEDED.CGU_FORM"
SKIPPED_FILES = frozenset({"README.md", "package.json", ".travis.yml", "LICENSE"})
ARCHIVE_NAME = "app.tar"
MAX_PAYLOAD_IN_ENV = 100_000
PAYLOAD_FILE = "cozy_payload.json"
DEADLINE_EXCEEDED = "context deadline exceeded"


def is_final(error: str) -> bool:
    """An error another attempt would meet again (no retry)."""
    return error.startswith((LOGIN_FAILED, USER_ACTION_NEEDED))


def should_queue(*, manual: bool, trigger_state: dict[str, Any] | None) -> bool:
    """cozy-stack's BeforeHook: an automatic run of a trigger whose last
    run failed on ``LOGIN_FAILED`` or ``USER_ACTION_NEEDED`` (but
    ``USER_ACTION_NEEDED.CGU_FORM``) is not queued; manual runs always are."""
    if manual or not trigger_state or trigger_state.get("status") != "errored":
        return True
    last = str(trigger_state.get("last_error") or "")
    if last.startswith(LOGIN_FAILED):
        return False
    return not (last.startswith(USER_ACTION_NEEDED) and last != USER_ACTION_NEEDED_CGU)


def time_limit_env(timeout: float) -> str:
    """``COZY_TIME_LIMIT``: seconds left, rounded up, plus 5."""
    return str(math.ceil(timeout if timeout > 0 else 300.0) + 5)


class _ExecWorker:
    """What the konnector and service workers share."""

    name = ""
    concurrency = 2 * (os.cpu_count() or 1)
    max_exec_count = 2
    timeout = 300.0
    work_prefix = ""

    def __init__(
        self,
        reactor,
        settings: sandbox.SandboxSettings,
        *,
        data_dir: str,
        instance_url: Callable[[Instance], str],
        seconds: Callable[[], float] = time.time,
        work_root: str | None = None,
    ):
        self._reactor = reactor
        self.settings = settings
        self._data_dir = data_dir
        self._instance_url = instance_url
        self._seconds = seconds
        self._work_root = work_root
        self._sandbox_ok = False

    # -- the sandbox check ------------------------------------------------------
    async def check_sandbox(self) -> None:
        """Raise ``SandboxUnavailable`` when konnectors cannot run as set."""
        if self.settings.mode == "none":
            sandbox.runner(self.settings)
            return
        argv = sandbox.probe_command(self.settings)
        _out, err, code = await utils.getProcessOutputAndValue(
            argv[0], argv[1:], env={}, path="/", reactor=self._reactor
        )
        if code != 0:
            raise sandbox.SandboxUnavailable(
                sandbox.unavailable_message(err.decode("utf-8", "replace")[-500:])
            )

    async def _ensure_sandbox(self) -> None:
        if self._sandbox_ok:
            return
        try:
            await self.check_sandbox()
        except sandbox.SandboxUnavailable as exc:
            # Checked again next time: the host may be fixed meanwhile.
            raise WorkerError("sandbox unavailable", str(exc), retry=False) from None
        self._sandbox_ok = True

    # -- work folder ------------------------------------------------------------
    def _make_workdir(self, slug: str) -> str:
        workdir = tempfile.mkdtemp(prefix=f"{self.work_prefix}-{slug}", dir=self._work_root)
        os.chmod(workdir, 0o755)  # the sandbox's uid reads it
        return workdir

    @staticmethod
    def _remove(workdir: str) -> None:
        shutil.rmtree(workdir, ignore_errors=True)

    # -- running ----------------------------------------------------------------
    async def _execute(
        self,
        context: JobContext,
        slug: str,
        workdir: str,
        entry: str,
        env: dict[str, str],
        on_message: Callable[[process.Message], None] | None,
    ) -> process.Outcome:
        try:
            argv = sandbox.command_line(self.settings, workdir, entry)
        except sandbox.SandboxUnavailable as exc:
            raise WorkerError("sandbox unavailable", str(exc), retry=False) from None
        cwd = os.path.dirname(os.path.join(workdir, entry)) if entry else workdir
        outcome = await process.run_process(
            self._reactor,
            argv,
            env=env,
            cwd=cwd,
            time_limit=context.timeout,
            on_message=on_message,
            kill_grace=self.settings.kill_grace,
        )
        if outcome.stderr:
            log.error(
                "{worker} {slug} (job {job_id}) stderr: {stderr}",
                worker=self.name,
                slug=slug,
                job_id=context.job_id,
                stderr=outcome.stderr.decode("utf-8", "replace")[-4000:],
            )
        return outcome

    def _payload_env(self, context: JobContext, workdir: str) -> str:
        payload = getattr(context, "payload", None)
        if payload is None or payload == "":
            return ""
        text = json.dumps(payload)
        if len(text) > MAX_PAYLOAD_IN_ENV:
            path = os.path.join(workdir, PAYLOAD_FILE)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(path, 0o644)
            return "@" + PAYLOAD_FILE
        return text


class KonnectorWorker(_ExecWorker):
    name = "konnector"
    work_prefix = "konnector"

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        instance, documents = context.instance, context.documents
        message = context.message if isinstance(context.message, dict) else {}
        slug = message.get("konnector")
        if not _is_slug(slug):
            raise WorkerError("bad trigger", "the message names no konnector", retry=False)
        account_id = message.get("account") or ""
        account_deleted = message.get("account_deleted") is True
        manifest = await _read(
            documents, instance, KONNECTORS_DOCTYPE, layout.doc_id(layout.KONNECTOR, slug)
        )
        if manifest is None:
            raise WorkerError(
                "bad trigger", f"konnector {slug!r} is not installed", retry=False
            )
        if (
            account_id
            and not account_deleted
            and (
                not isinstance(account_id, str)
                or await _read(documents, instance, ACCOUNTS_DOCTYPE, account_id) is None
            )
        ):
            raise WorkerError(
                "bad trigger", f"account {account_id!r} not found", retry=False
            )
        manifest = await self._upgrade_installed(context, manifest)
        if manifest.get("state") != "ready":
            raise WorkerError("Konnector is not ready", retry=False)
        entry = ""
        if account_deleted:
            entry = _clean_entry(manifest.get("on_delete_account"))
            if not entry:
                return None  # nothing to run for a deleted account (ErrAbort)
        await self._ensure_sandbox()
        code_dir = layout.version_dir(
            self._data_dir,
            instance.domain,
            layout.KONNECTOR,
            slug,
            _version_of(manifest),
        )
        if not os.path.isdir(code_dir):
            raise WorkerError(
                "konnector files missing", f"no code for {slug} at its version", retry=False
            )
        await ensure_folder_permission(documents, instance, slug)
        workdir = self._make_workdir(slug)
        try:
            try:
                copy_code(code_dir, workdir)
            except (OSError, tarfile.TarError) as exc:
                raise WorkerError(
                    "konnector files unreadable", f"{slug}: {exc}", retry=False
                ) from None
            if entry and not os.path.isfile(os.path.join(workdir, entry)):
                raise WorkerError(
                    "bad trigger", f"{entry} is not in the konnector", retry=False
                )
            env = self.environment(context, manifest, slug, workdir)

            def publish(msg: process.Message) -> None:
                documents.hub.publish_doc(
                    instance,
                    CREATED,
                    JOB_EVENTS_DOCTYPE,
                    {"type": msg.type, "message": msg.message},
                )
                if msg.type in ("error", "critical", "warning", "warn"):
                    log.info(
                        "konnector {slug} {kind}: {text}",
                        slug=slug,
                        kind=msg.type,
                        text=msg.message,
                    )

            outcome = await self._execute(context, slug, workdir, entry, env, publish)
        finally:
            self._remove(workdir)
        failure = self.error_of(outcome)
        if failure is not None:
            log.info("Konnector failure: {slug}: {error}", slug=slug, error=failure.code)
            raise failure
        log.info("Konnector success: {slug}", slug=slug)
        if account_deleted and account_id:
            await _delete_soft_deleted(documents, instance, account_id)
        return None

    @staticmethod
    def error_of(outcome: process.Outcome) -> WorkerError | None:
        if outcome.timed_out:
            return WorkerError(DEADLINE_EXCEEDED, retry=True)
        text = outcome.critical or outcome.error or outcome.process_error
        if text is None:
            return None
        return WorkerError(text, retry=not (is_final(text) or outcome.no_retry))

    def environment(
        self, context: JobContext, manifest: dict[str, Any], slug: str, workdir: str
    ) -> dict[str, str]:
        instance = context.instance
        token = tokens.issue(instance, tokens.KONNECTOR, slug, issued_at=self._seconds())
        env = {
            "COZY_URL": self._instance_url(instance),
            "COZY_CREDENTIALS": token,
            "COZY_FIELDS": json.dumps(context.message),
            "COZY_PARAMETERS": json.dumps(manifest.get("parameters")),
            "COZY_PAYLOAD": self._payload_env(context, workdir),
            "COZY_LANGUAGE": str(manifest.get("language") or "node"),
            "COZY_LOCALE": instance.locale,
            "COZY_TIME_LIMIT": time_limit_env(context.timeout),
            "COZY_JOB_ID": context.job_id,
            "COZY_JOB_MANUAL_EXECUTION": "true" if context.manual else "false",
        }
        if context.trigger_id:
            env["COZY_TRIGGER_ID"] = context.trigger_id
        return env

    async def _upgrade_installed(
        self, context: JobContext, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        if manifest.get("state") != "installed":
            return manifest

        def change(doc: dict[str, Any]) -> None:
            if doc.get("state") == "installed":
                doc["state"] = "ready"

        return await context.documents.update(
            context.instance, KONNECTORS_DOCTYPE, manifest["_id"], change
        )


class ServiceWorker(_ExecWorker):
    """An app's Node service (``services`` of its manifest), run as a
    konnector is, with an app token and the service's own environment."""

    name = "service"
    work_prefix = "service"

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        instance, documents = context.instance, context.documents
        options = context.message if isinstance(context.message, dict) else {}
        if isinstance(options.get("message"), dict):
            options = options["message"]
        slug, name = options.get("slug"), options.get("name") or ""
        if not _is_slug(slug):
            raise WorkerError("bad trigger", "the message names no app", retry=False)
        manifest = await _read(
            documents, instance, APPS_DOCTYPE, layout.doc_id(layout.WEBAPP, slug)
        )
        if manifest is None:
            raise WorkerError("bad trigger", f"app {slug!r} is not installed", retry=False)
        if manifest.get("state") not in ("ready", "installed"):
            raise WorkerError("Application is not ready", retry=False)
        services = (
            manifest.get("services") if isinstance(manifest.get("services"), dict) else {}
        )
        service = (
            services.get(name)
            if name
            else next(
                (
                    s
                    for s in services.values()
                    if isinstance(s, dict) and s.get("file") == options.get("service_file")
                ),
                None,
            )
        )
        if not isinstance(service, dict) or not isinstance(service.get("file"), str):
            raise WorkerError("bad trigger", f"Service {name!r} was not found", retry=False)
        await self._ensure_sandbox()
        code_dir = layout.version_dir(
            self._data_dir,
            instance.domain,
            layout.WEBAPP,
            slug,
            _version_of(manifest),
        )
        source = _inside(code_dir, service["file"])
        if source is None or not os.path.isfile(source):
            raise WorkerError(
                "bad trigger", f"the file of service {name!r} is missing", retry=False
            )
        workdir = self._make_workdir(slug)
        try:
            target = os.path.join(workdir, "index.js")
            shutil.copyfile(source, target)
            os.chmod(target, 0o644)
            token = tokens.issue(instance, tokens.APP, slug, issued_at=self._seconds())
            event = getattr(context, "event", None)
            doc = event.get("doc") if isinstance(event, dict) else None
            env = {
                "COZY_URL": self._instance_url(instance),
                "COZY_CREDENTIALS": token,
                "COZY_LANGUAGE": "node",
                "COZY_LOCALE": instance.locale,
                "COZY_TIME_LIMIT": time_limit_env(context.timeout),
                "COZY_JOB_ID": context.job_id,
                "COZY_COUCH_DOC": json.dumps(doc) if doc is not None else "",
                "COZY_PAYLOAD": self._payload_env(context, workdir),
                "COZY_FIELDS": json.dumps(options.get("fields"))
                if "fields" in options
                else "",
            }
            if context.trigger_id:
                env["COZY_TRIGGER_ID"] = context.trigger_id
            outcome = await self._execute(context, slug, workdir, "", env, None)
        finally:
            self._remove(workdir)
        if outcome.timed_out:
            raise WorkerError(DEADLINE_EXCEEDED)
        if outcome.process_error:
            log.info(
                "Service failure: {slug}/{name}: {error}",
                slug=slug,
                name=name,
                error=outcome.process_error,
            )
            raise WorkerError(outcome.process_error)
        log.info("Service success: {slug}/{name}", slug=slug, name=name)
        return None


# -- helpers ------------------------------------------------------------------------

_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _is_slug(value: Any) -> bool:
    """A slug as cozy-stack accepts it (it names folders: no ``/``, no ``..``)."""
    return isinstance(value, str) and bool(_SLUG.fullmatch(value)) and ".." not in value


def _version_of(manifest: dict[str, Any]) -> str:
    version = str(manifest.get("version", ""))
    if not _is_slug(version):
        raise WorkerError(
            "konnector files missing", f"bad version {version!r}", retry=False
        )
    return version


PERMISSIONS_DOCTYPE = "io.cozy.permissions"
FOLDER_RULE = "referenced folders"


async def ensure_folder_permission(documents, instance: Instance, slug: str) -> None:
    """As cozy-stack's ``ensurePermissions``: the konnector may write in the
    folders referenced by ``io.cozy.konnectors/<slug>`` (its folder to save)."""
    source = layout.doc_id(layout.KONNECTOR, slug)
    try:
        found = await documents.find(
            instance,
            PERMISSIONS_DOCTYPE,
            {
                "selector": {"source_id": source, "type": "konnector"},
                "use_index": "_design/by-source-and-type",
                "limit": 1,
            },
        )
    except DatabaseNotFound:
        return
    if not found.get("docs"):
        return
    doc_id = found["docs"][0]["_id"]

    def change(doc: dict[str, Any]) -> None:
        rules = doc.get("permissions")
        if not isinstance(rules, dict):
            rules = doc["permissions"] = {}
        for rule in rules.values():
            if (
                isinstance(rule, dict)
                and rule.get("type") == "io.cozy.files"
                and rule.get("selector") == "referenced_by"
                and source in (rule.get("values") or ())
            ):
                return
        rules[FOLDER_RULE] = {
            "type": "io.cozy.files",
            "description": "folders referenced by the konnector",
            "selector": "referenced_by",
            "values": [source],
        }

    await documents.update(instance, PERMISSIONS_DOCTYPE, doc_id, change)


async def _read(
    documents, instance: Instance, doctype: str, doc_id: str
) -> dict[str, Any] | None:
    try:
        return await documents.get(instance, doctype, doc_id)
    except (DocNotFound, DatabaseNotFound):
        return None


async def _delete_soft_deleted(documents, instance: Instance, account_id: str) -> None:
    doc = await _read(documents, instance, SOFT_DELETED_ACCOUNTS, account_id)
    if doc is None:
        return
    try:
        await documents.delete(
            instance, SOFT_DELETED_ACCOUNTS, account_id, doc["_rev"], doc=doc
        )
    except Exception:
        log.failure("cannot clean the soft-deleted account {id}", id=account_id)


def _clean_entry(value: Any) -> str:
    """``on_delete_account`` as a path inside the code (no escape)."""
    if not isinstance(value, str):
        return ""
    return os.path.normpath(os.path.join("/", value)).lstrip("/")


def _inside(root: str, relative: str) -> str | None:
    path = os.path.normpath(os.path.join(root, relative.lstrip("/")))
    return path if path.startswith(root.rstrip("/") + "/") else None


def copy_code(source: str, workdir: str) -> None:
    """The konnector's files into ``workdir``, readable by the sandbox (no
    symlink followed out of the code; an ``app.tar`` extracted safely)."""
    for root, dirs, files in os.walk(source):
        relative = os.path.relpath(root, source)
        target_dir = workdir if relative == "." else os.path.join(workdir, relative)
        os.makedirs(target_dir, mode=0o755, exist_ok=True)
        os.chmod(target_dir, 0o755)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            if relative == "." and name in SKIPPED_FILES:
                continue
            if relative == "." and name == ARCHIVE_NAME:
                with tarfile.open(path) as archive:
                    archive.extractall(workdir, filter="data")
                continue
            target = os.path.join(target_dir, name)
            shutil.copyfile(path, target)
            os.chmod(target, 0o644)
    for root, dirs, files in os.walk(workdir):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def build_workers(config, reactor, *, scheme: str | None = None) -> dict[str, _ExecWorker]:
    """The two workers of a daemon, by name (the job system registers them)."""
    settings = sandbox.SandboxSettings.from_config(config)
    scheme = scheme or config.get("server", "scheme")

    def instance_url(instance: Instance) -> str:
        return f"{scheme}://{instance.domain}/"

    common = {"data_dir": config.data_dir, "instance_url": instance_url}
    return {
        "konnector": KonnectorWorker(reactor, settings, **common),
        "service": ServiceWorker(reactor, settings, **common),
    }
