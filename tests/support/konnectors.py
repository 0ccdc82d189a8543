"""Konnectors in tests: install one by writing its folder and documents
directly (the layout of ``cozyd.apps.layout``), and run the real worker.

``install`` writes ``<data_dir>/apps/<domain>/konnector/<slug>/<version>/``,
the manifest document ``io.cozy.konnectors/<slug>`` and the konnector's
permission document, as installing it would.

``run_worker`` runs ``KonnectorWorker`` (or ``ServiceWorker``) with a
``JobContext`` in a child Python process (this module's ``main``) on the
real reactor, against the storage of a spawned daemon (its config file):
the konnector it starts talks to that daemon over HTTP. It returns what
the run did as a dict (``error``, ``retry``, ``events``, ``seconds``).

Test konnectors are Node programs; ``KONNECTOR_LIB`` is a small client
they ``require('./cozy')``: it reads ``COZY_URL`` and ``COZY_CREDENTIALS``
as real konnectors do (the test domains do not resolve, so it connects to
the loopback address, with the instance's host name).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from cozyd.apps import layout

PERMISSIONS_DOCTYPE = "io.cozy.permissions"

KONNECTOR_LIB = r"""
'use strict'
const http = require('http')
const url = new URL(process.env.COZY_URL)
const token = process.env.COZY_CREDENTIALS
function request (method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const req = http.request({
      host: '127.0.0.1', port: url.port, method, path,
      headers: Object.assign({
        Host: url.host, Authorization: 'Bearer ' + token,
        Accept: 'application/json', 'Content-Type': 'application/json'
      }, data ? {'Content-Length': data.length} : {})
    }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        let json = null
        try { json = JSON.parse(text) } catch (e) {}
        resolve({status: res.statusCode, json, text})
      })
    })
    req.on('error', reject)
    if (data) req.write(data)
    req.end()
  })
}
function log (type, message, extra) {
  process.stdout.write(JSON.stringify(Object.assign({type, message}, extra || {})) + '\n')
}
module.exports = {request, log, fields: JSON.parse(process.env.COZY_FIELDS || '{}')}
"""


def install(
    documents: Any,
    instance: Any,
    data_dir: str,
    slug: str,
    files: dict[str, str],
    *,
    version: str = "1.0.0",
    permissions: dict[str, Any] | None = None,
    state: str = "ready",
    **manifest: Any,
):
    """Write the konnector's code and documents (a coroutine)."""
    return _install(
        documents,
        instance,
        data_dir,
        layout.KONNECTOR,
        slug,
        files,
        version=version,
        permissions=permissions,
        state=state,
        manifest=manifest,
    )


def write_code(
    data_dir: str, domain: str, kind: str, slug: str, version: str, files: dict[str, str]
) -> str:
    folder = layout.version_dir(data_dir, domain, kind, slug, version)
    for name, content in {"cozy.js": KONNECTOR_LIB, **files}.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    return folder


async def _install(
    documents,
    instance,
    data_dir,
    kind,
    slug,
    files,
    *,
    version,
    permissions,
    state,
    manifest,
):
    write_code(data_dir, instance.domain, kind, slug, version, files)
    doctype = layout.DOCTYPES[kind]
    doc_id = layout.doc_id(kind, slug)
    perms = permissions or {}

    def change(doc: dict[str, Any]) -> None:
        for key in [k for k in doc if not k.startswith("_")]:
            del doc[key]  # a new manifest replaces the old one
        doc.update(
            {
                "slug": slug,
                "state": state,
                "version": version,
                "name": slug.title(),
                "permissions": perms,
                **manifest,
            }
        )

    await documents.update(instance, doctype, doc_id, change)
    source = doc_id
    ptype = "konnector" if kind == layout.KONNECTOR else "app"
    found = await documents.find(
        instance, PERMISSIONS_DOCTYPE, {"selector": {"source_id": source, "type": ptype}}
    )
    doc = found["docs"][0] if found["docs"] else {}
    doc.update({"type": ptype, "source_id": source, "permissions": perms})
    await documents.create(instance, PERMISSIONS_DOCTYPE, doc)


def run_worker(config_path: str, spec: dict[str, Any], *, timeout: float = 120) -> dict:
    """Run the worker of ``spec`` in a child process; what it reports."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.konnectors", config_path],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"worker harness failed ({done.returncode}):\n{done.stderr}")
    return json.loads(lines[-1])


# -- the child process ---------------------------------------------------------------


async def _child(reactor, config_path: str, spec: dict[str, Any]) -> dict[str, Any]:
    from cozyd.config import load_config
    from cozyd.jobs.workers import JobContext, WorkerError
    from cozyd.konnectors import worker as konnector_worker
    from cozyd.service import build_stack, build_store, thread_runner

    config = load_config(config_path, env={})
    overrides = spec.get("config") or {}
    if overrides:
        values = dict(config.values)
        for key, value in overrides.items():
            section, name = key.split(".")
            values[(section, name)] = value
        config = type(config)(config.source, values, config.admin_passphrase_hash)
    store = build_store(config, reactor)
    await store.start()
    try:
        stack = build_stack(config, store=store, run_blocking=thread_runner(reactor))
        instance = await stack.instances.get(spec["domain"])
        documents = stack.documents
        for install_spec in spec.get("install", ()):
            kind = install_spec.pop("kind", layout.KONNECTOR)
            await _install(
                documents,
                instance,
                config.data_dir,
                kind,
                install_spec.pop("slug"),
                install_spec.pop("files"),
                version=install_spec.pop("version", "1.0.0"),
                permissions=install_spec.pop("permissions", None),
                state=install_spec.pop("state", "ready"),
                manifest=install_spec,
            )
        for doctype, doc in spec.get("docs", ()):
            await documents.put(instance, doctype, doc, create_db=True)
        workers = konnector_worker.build_workers(config, reactor)
        events: list[dict[str, Any]] = []
        documents.hub.subscribe(instance, "io.cozy.jobs.events", events.append)
        result: dict[str, Any] = {"error": None, "retry": None}
        for _ in range(spec.get("runs", 1)):
            context = JobContext(
                instance=instance,
                job_id=spec.get("job_id", "job-1"),
                worker=spec.get("worker", "konnector"),
                message=spec["message"],
                documents=documents,
                manual=spec.get("manual", False),
                trigger_id=spec.get("trigger_id"),
                timeout=spec.get("timeout", 60.0),
            )
            for name, value in spec.get("context", {}).items():
                setattr(context, name, value)
            started = time.monotonic()
            run = workers[context.worker].run(context)
            from twisted.internet import defer

            d = defer.Deferred.fromCoroutine(run)
            if spec.get("cancel_after") is not None:
                reactor.callLater(spec["cancel_after"], d.cancel)
            try:
                await d
                result = {"error": None, "retry": None}
            except WorkerError as exc:
                result = {"error": exc.code, "retry": exc.retry, "message": str(exc)}
            except defer.CancelledError:
                result = {"error": "cancelled", "retry": None}
            result["seconds"] = time.monotonic() - started
        result["events"] = [e["doc"] for e in events]
        from cozyd.storage.interface import DatabaseNotFound, DocNotFound

        result["docs"] = {}
        for doctype, doc_id in spec.get("check_docs", ()):
            try:
                await documents.get(instance, doctype, doc_id)
                result["docs"][doc_id] = True
            except (DocNotFound, DatabaseNotFound):
                result["docs"][doc_id] = False
        return result
    finally:
        await store.close()


async def _process_child(reactor, spec: dict[str, Any]) -> dict[str, Any]:
    """One ``run_process`` of ``spec["argv"]`` (``cancel_after``: cancel it)."""
    import attrs
    from twisted.internet import defer

    from cozyd.konnectors import process

    messages: list[dict[str, Any]] = []
    started = time.monotonic()
    d = defer.Deferred.fromCoroutine(
        process.run_process(
            reactor,
            spec["argv"],
            env=spec.get("env", {}),
            cwd=spec.get("cwd", "/"),
            time_limit=spec.get("time_limit", 20),
            kill_grace=spec.get("kill_grace", 1.0),
            on_message=lambda m: messages.append(attrs.asdict(m)),
        )
    )
    if spec.get("cancel_after") is not None:
        reactor.callLater(spec["cancel_after"], d.cancel)
    try:
        outcome = await d
        result = attrs.asdict(outcome)
        result["stderr"] = outcome.stderr.decode("utf-8", "replace")
        result["process_error"] = outcome.process_error
    except defer.CancelledError:
        result = {"cancelled": True}
    result["seconds"] = time.monotonic() - started
    result["messages"] = messages
    return result


def run_process_child(spec: dict[str, Any], *, timeout: float = 60) -> dict[str, Any]:
    """``run_process`` in a child Python process on the real reactor."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.konnectors", "--process"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"process harness failed ({done.returncode}):\n{done.stderr}")
    return json.loads(lines[-1])


def main() -> None:
    from twisted.internet import defer, task

    config_path = sys.argv[1]
    spec = json.loads(sys.stdin.read())

    def go(reactor):
        async def body():
            if config_path == "--process":
                result = await _process_child(reactor, spec)
            else:
                result = await _child(reactor, config_path, spec)
            print(json.dumps(result, default=repr), flush=True)

        return defer.Deferred.fromCoroutine(body())

    task.react(go)


if __name__ == "__main__":
    main()
