"""``/jobs``: push and read jobs, manage triggers, fire webhooks.

Permissions follow cozy-stack: a rule on ``io.cozy.jobs`` (jobs) or
``io.cozy.triggers`` (triggers) for the route's verb, usually restricted
to some workers (``selector: "worker"``). Tokens that are not the CLI's
may not push jobs of reserved workers (403), of unknown ones (404), nor
ask for ``forward_logs`` (403). ``POST /jobs/webhooks/:id`` needs no
token: the trigger's id is the secret.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from cozyd.durations import parse_duration
from cozyd.errors import BadRequest, Forbidden, NotFound, PermissionDenied, Unprocessable
from cozyd.jobs import model
from cozyd.jobs.scheduler import Scheduler
from cozyd.jobs.system import JobSystem, UnknownWorker
from cozyd.jobs.triggers import InvalidTrigger
from cozyd.web.bodies import parse_json, read_body, read_json
from cozyd.web.common import JSONAPI, instance_of, json_response, jsonapi_errors
from cozyd.web.guard import Guard, permissions_of
from cozyd.web.params import query_text
from cozyd.web.routing import Service, route, token

#: Largest webhook payload.
MAX_WEBHOOK_BODY = 256 * 1024
#: Webhook calls per trigger and minute before answering 404, as cozy-stack.
WEBHOOK_RATE = 100

_BIG_UNITS = {"s": 1, "m": 60, "h": 3600, "D": 86400, "d": 86400, "W": 7 * 86400}


def big_duration(text: str) -> float:
    """``3W``, ``2M``, ``1Y``, ``36h``… → seconds (cozy-stack's bigduration)."""
    text = text.strip()
    if text and text[-1] in ("M", "Y") and text[:-1].isdigit():
        return int(text[:-1]) * (30 if text[-1] == "M" else 365) * 86400
    if text and text[-1] in ("D", "W", "d") and text[:-1].isdigit():
        return int(text[:-1]) * _BIG_UNITS[text[-1]]
    return parse_duration(text)


def _attributes(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if attributes is None and isinstance(body, dict) and "data" not in body:
        attributes = body
    if not isinstance(attributes, dict):
        raise BadRequest("the body must be a JSON:API document with data.attributes")
    return attributes


def _worker_field(worker: str):
    return lambda name: [worker] if name == "worker" else []


def _job_field(doc: dict[str, Any]):
    def field(name: str) -> list[str]:
        if name == "worker":
            return [str(doc.get("worker", ""))]
        if name == "state":
            return [str(doc.get("state", ""))]
        return []

    return field


class JobsService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        guard: Guard,
        jobs: JobSystem,
        scheduler: Scheduler,
        *,
        scheme: str = "http",
        limiter: Any = None,
    ):
        super().__init__()
        self.guard = guard
        self.jobs = jobs
        self.scheduler = scheduler
        self.scheme = scheme
        self.limiter = limiter

    # -- permissions ------------------------------------------------------------------
    def _allow(self, request: IRequest, verb: str, doctype: str, field, doc_id: str = ""):
        if not permissions_of(request).allows_document(verb, doctype, doc_id, field):
            raise PermissionDenied()

    def _is_cli(self, request: IRequest) -> bool:
        return permissions_of(request).type == "cli"

    def _check_reserved(self, request: IRequest, worker: str) -> None:
        if self._is_cli(request):
            return
        if not self.jobs.is_known(worker):
            raise NotFound(f"unknown worker {worker!r}")
        if model.is_reserved(worker):
            raise Forbidden(f"the {worker} worker is reserved to the stack")

    def _webhook_url(self, request: IRequest, trigger_id: str) -> str:
        host = instance_of(request).domain
        return f"{self.scheme}://{host}/jobs/webhooks/{trigger_id}"

    def _trigger(self, request, doc, state=None) -> dict[str, Any]:
        return model.trigger_jsonapi(
            doc, webhook_url=self._webhook_url(request, doc["_id"]), state=state
        )

    # -- jobs -------------------------------------------------------------------------
    @route("queue/{worker}", "GET", auth=token())
    async def get_queue(self, request: IRequest, worker: str):
        self._allow(request, "GET", model.JOBS, _worker_field(worker))
        docs = await self.jobs.queued(instance_of(request), worker)
        return json_response(
            request,
            {"data": [model.job_jsonapi(d) for d in docs], "meta": {"count": len(docs)}},
            content_type=JSONAPI,
        )

    @route("queue/{worker}", "POST", auth=token())
    async def push_job(self, request: IRequest, worker: str):
        attributes = _attributes(read_json(request, empty={}))
        options = attributes.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("options must be an object")
        max_exec = options.get("max_exec_count") or 0
        timeout = options.get("timeout") or 0
        if not isinstance(max_exec, int) or not isinstance(timeout, (int, float)):
            raise BadRequest("options.max_exec_count and options.timeout are numbers")
        if max_exec < 0 or timeout < 0:
            raise BadRequest("options cannot be negative")
        manual = attributes.get("manual") is True
        forward_logs = attributes.get("forward_logs") is True
        self._allow(request, "POST", model.JOBS, _worker_field(worker))
        if not self._is_cli(request) and forward_logs:
            raise Forbidden("forward_logs is for the CLI")
        self._check_reserved(request, worker)
        doc = await self.jobs.push(
            instance_of(request),
            worker,
            attributes.get("arguments"),
            manual=manual,
            max_exec_count=max_exec or None,
            timeout=float(timeout) or None,
            forward_logs=forward_logs,
        )
        return json_response(
            request, {"data": model.job_jsonapi(doc)}, status=202, content_type=JSONAPI
        )

    @route("purge", "DELETE", auth=token(model.JOBS))
    async def purge(self, request: IRequest):
        text = query_text(request, "duration") or "2M"
        try:
            keep = big_duration(text)
        except ValueError:
            raise BadRequest(f"invalid duration {text!r}") from None
        workers = [w for w in (query_text(request, "workers") or "").split(",") if w]
        deleted = await self.jobs.purge(instance_of(request), keep, workers or None)
        return json_response(request, {"deleted": deleted})

    @route("{job_id}", "GET", auth=token())
    async def get_job(self, request: IRequest, job_id: str):
        doc = await self.jobs.get(instance_of(request), job_id)
        self._allow(request, "GET", model.JOBS, _job_field(doc), job_id)
        return json_response(
            request, {"data": model.job_jsonapi(doc)}, content_type=JSONAPI
        )

    @route("{job_id}", "PATCH", auth=token())
    async def patch_job(self, request: IRequest, job_id: str):
        instance = instance_of(request)
        doc = await self.jobs.get(instance, job_id)
        self._allow(request, "PATCH", model.JOBS, _job_field(doc), job_id)
        if doc.get("worker") != model.CLIENT_WORKER:
            raise Forbidden("only the jobs of the client worker are completed this way")
        attributes = _attributes(read_json(request))
        state = attributes.get("state")
        if state not in (model.DONE, model.ERRORED):
            raise Unprocessable(
                "State must be done or errored",
                source={"pointer": "/data/attributes/State"},
            )
        error = attributes.get("error") or ""
        if not isinstance(error, str):
            raise BadRequest("error must be a string")
        doc = await self.jobs.complete(instance, job_id, state, error)
        return json_response(
            request, {"data": model.job_jsonapi(doc)}, content_type=JSONAPI
        )

    # -- triggers ---------------------------------------------------------------------
    @route("triggers", "POST", auth=token())
    async def create_trigger(self, request: IRequest):
        attributes = _attributes(read_json(request))
        kind = attributes.get("type")
        worker = attributes.get("worker") or ""
        arguments = attributes.get("arguments") or ""
        debounce = attributes.get("debounce") or ""
        if not isinstance(kind, str) or not isinstance(worker, str):
            raise BadRequest("type and worker are strings")
        if not isinstance(arguments, str) or not isinstance(debounce, str):
            raise BadRequest("arguments and debounce are strings")
        message = attributes.get("message")
        if message is None:
            message = attributes.get("worker_arguments")
        options = attributes.get("options")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("options must be an object")
        if kind == "@client":
            worker = model.CLIENT_WORKER
        self._allow(request, "POST", model.TRIGGERS, _worker_field(worker))
        self._check_reserved(request, worker)
        permissions = permissions_of(request)
        created_by = permissions.subject if permissions.type in ("app", "konnector") else ""
        try:
            doc = await self.scheduler.add(
                instance_of(request),
                {
                    "type": kind,
                    "worker": worker,
                    "arguments": arguments,
                    "debounce": debounce,
                    "message": message,
                    "options": options,
                },
                created_by=created_by,
            )
        except UnknownWorker as exc:
            raise NotFound(exc.detail) from None
        return json_response(
            request, {"data": self._trigger(request, doc)}, status=201, content_type=JSONAPI
        )

    @route("triggers", "GET", auth=token())
    async def list_triggers(self, request: IRequest):
        workers = [w for w in (query_text(request, "Worker") or "").split(",") if w]
        types = [t for t in (query_text(request, "Type") or "").split(",") if t]
        permissions = permissions_of(request)
        if not permissions.allows_collection("GET", model.TRIGGERS):
            if len(workers) != 1:
                raise PermissionDenied()
            self._allow(request, "GET", model.TRIGGERS, _worker_field(workers[0]))
        instance = instance_of(request)
        found = []
        for doc in await self.scheduler.all(instance):
            if workers and doc.get("worker") not in workers:
                continue
            if types and doc.get("type") not in types:
                continue
            state = await self.scheduler.state(instance, doc["_id"])
            found.append(self._trigger(request, doc, state))
        return json_response(
            request, {"data": found, "meta": {"count": len(found)}}, content_type=JSONAPI
        )

    async def _load_trigger(self, request: IRequest, trigger_id: str, verb: str):
        doc = await self.scheduler.get(instance_of(request), trigger_id)
        self._allow(
            request, verb, model.TRIGGERS, _worker_field(str(doc.get("worker"))), trigger_id
        )
        return doc

    @route("triggers/{trigger_id}", "GET", auth=token())
    async def get_trigger(self, request: IRequest, trigger_id: str):
        doc = await self._load_trigger(request, trigger_id, "GET")
        state = await self.scheduler.state(instance_of(request), trigger_id)
        return json_response(
            request, {"data": self._trigger(request, doc, state)}, content_type=JSONAPI
        )

    @route("triggers/{trigger_id}/state", "GET", auth=token())
    async def trigger_state(self, request: IRequest, trigger_id: str):
        await self._load_trigger(request, trigger_id, "GET")
        state = await self.scheduler.state(instance_of(request), trigger_id)
        body = {
            "data": {
                "type": model.TRIGGERS_STATE,
                "id": trigger_id,
                "attributes": state,
                "links": {"self": f"/jobs/triggers/{trigger_id}/state"},
            }
        }
        return json_response(request, body, content_type=JSONAPI)

    @route("triggers/{trigger_id}/jobs", "GET", auth=token())
    async def trigger_jobs(self, request: IRequest, trigger_id: str):
        text = query_text(request, "Limit")
        limit = 0
        if text:
            try:
                limit = int(text)
            except ValueError:
                raise BadRequest(f"invalid Limit {text!r}") from None
        await self._load_trigger(request, trigger_id, "GET")
        docs = await self.jobs.jobs_of_trigger(instance_of(request), trigger_id, limit)
        return json_response(
            request, {"data": [model.job_jsonapi(d) for d in docs]}, content_type=JSONAPI
        )

    @route("triggers/{trigger_id}", "PATCH", auth=token())
    async def patch_trigger(self, request: IRequest, trigger_id: str):
        await self._load_trigger(request, trigger_id, "PATCH")
        attributes = _attributes(read_json(request))
        arguments = attributes.get("arguments") or ""
        has_message = attributes.get("message") not in (None, {}, [], "")
        if not isinstance(arguments, str):
            raise BadRequest("arguments must be a string")
        if not arguments and not has_message:
            raise BadRequest("Only arguments and message can be patched")
        doc = await self.scheduler.patch(
            instance_of(request),
            trigger_id,
            arguments=arguments or None,
            message=attributes.get("message"),
            has_message=has_message,
        )
        return json_response(
            request, {"data": self._trigger(request, doc)}, content_type=JSONAPI
        )

    @route("triggers/{trigger_id}/launch", "POST", auth=token())
    async def launch_trigger(self, request: IRequest, trigger_id: str):
        await self._load_trigger(request, trigger_id, "POST")
        doc = await self.scheduler.launch(instance_of(request), trigger_id)
        return json_response(
            request, {"data": model.job_jsonapi(doc)}, status=201, content_type=JSONAPI
        )

    @route("triggers/{trigger_id}", "DELETE", auth=token())
    async def delete_trigger(self, request: IRequest, trigger_id: str):
        await self._load_trigger(request, trigger_id, "DELETE")
        await self.scheduler.delete(instance_of(request), trigger_id)
        request.setResponseCode(204)
        return b""

    # -- webhooks ---------------------------------------------------------------------
    @route("webhooks/{trigger_id}", "POST")
    async def fire_webhook(self, request: IRequest, trigger_id: str):
        instance = instance_of(request)
        if self.limiter is not None:
            key = f"webhook:{instance.prefix}:{trigger_id}"
            if self.limiter.count(key) >= WEBHOOK_RATE:
                raise NotFound("Not found")
            self.limiter.hit(key, limit=WEBHOOK_RATE, period=60.0)
        data = read_body(request, MAX_WEBHOOK_BODY)
        payload = None
        if data.strip():
            try:
                payload = parse_json(data)
            except ValueError as exc:
                raise BadRequest(f"the payload is not JSON: {exc}") from None
        manual = query_text(request, "Manual") == "true"
        try:
            await self.scheduler.fire_webhook(instance, trigger_id, payload, manual=manual)
        except InvalidTrigger as exc:
            raise Unprocessable(exc.detail) from None
        request.setResponseCode(204)
        return b""
