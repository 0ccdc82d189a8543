"""Job and trigger documents, as cozy-stack stores and shows them.

A job is a document of ``io.cozy.jobs``::

    {"_id", "domain", "prefix", "worker", "trigger_id"?, "message",
     "event", "payload"?, "manual_execution"?, "debounced"?,
     "options"?: {"max_exec_count", "timeout" (nanoseconds, a Go duration)},
     "state": queued|running|done|errored, "queued_at", "started_at",
     "finished_at", "error"?, "forward_logs"?}

Times are RFC 3339 in UTC; one never set is Go's zero time
(``0001-01-01T00:00:00Z``), as cozy-stack writes it. A trigger is a
document of ``io.cozy.triggers``: ``domain``, ``prefix``, ``type``,
``worker``, ``arguments``, ``debounce``, ``options``, ``message``,
``cozyMetadata``.
"""

from __future__ import annotations

import datetime
from typing import Any

JOBS = "io.cozy.jobs"
TRIGGERS = "io.cozy.triggers"
TRIGGERS_STATE = "io.cozy.triggers.state"

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
ERRORED = "errored"
STATES = (QUEUED, RUNNING, DONE, ERRORED)

ZERO_TIME = "0001-01-01T00:00:00Z"
NANOSECONDS = 1_000_000_000

#: Workers only the stack may push (cozy-stack's list).
RESERVED_WORKERS = frozenset(
    {
        "trash-files",
        "clean-old-trashed",
        "clean-clients",
        "notes-save",
        "thumbnail",
        "thumbnailck",
        "sms",
        "migrations",
    }
)
RESERVED_PREFIXES = ("share-", "rag-")

#: The virtual worker of ``@client`` triggers: its jobs run in a client.
CLIENT_WORKER = "client"


def is_reserved(worker: str) -> bool:
    return worker in RESERVED_WORKERS or worker.startswith(RESERVED_PREFIXES)


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch, as Go marshals a UTC time (nanoseconds
    trimmed of trailing zeros)."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += ("." + f"{moment.microsecond:06d}").rstrip("0")
    return text + "Z"


def parse_time(text: Any) -> float | None:
    """An RFC 3339 time as seconds since the epoch; None for the zero time
    or anything unreadable."""
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    value = text.strip()
    if value.endswith("Z") or value.endswith("z"):
        value = value[:-1] + "+00:00"
    # Python reads 6 digits of fraction at most.
    if "." in value:
        head, _, rest = value.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        value = f"{head}.{(digits + '000000')[:6]}{rest}"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def job_options(max_exec_count: int | None, timeout: float | None) -> dict[str, Any] | None:
    """The ``options`` of a job document (timeout in nanoseconds)."""
    if not max_exec_count and not timeout:
        return None
    return {
        "max_exec_count": int(max_exec_count or 0),
        "timeout": round((timeout or 0) * NANOSECONDS),
    }


def options_timeout(options: Any) -> float | None:
    """Seconds from a document's ``options.timeout`` (nanoseconds)."""
    if isinstance(options, dict):
        value = options.get("timeout")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / NANOSECONDS
    return None


def options_max_exec_count(options: Any) -> int | None:
    if isinstance(options, dict):
        value = options.get("max_exec_count")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def new_job(
    instance: Any,
    worker: str,
    message: Any,
    *,
    queued_at: float,
    job_id: str,
    trigger_id: str | None = None,
    manual: bool = False,
    event: Any = None,
    payload: Any = None,
    options: dict[str, Any] | None = None,
    forward_logs: bool = False,
    debounced: bool = False,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": job_id,
        "domain": instance.domain,
        "prefix": instance.prefix,
        "worker": worker,
        "message": message,
        "event": event,
        "state": QUEUED,
        "queued_at": rfc3339(queued_at),
        "started_at": ZERO_TIME,
        "finished_at": ZERO_TIME,
    }
    if trigger_id:
        doc["trigger_id"] = trigger_id
    if payload is not None:
        doc["payload"] = payload
    if manual:
        doc["manual_execution"] = True
    if debounced:
        doc["debounced"] = True
    if options:
        doc["options"] = options
    if forward_logs:
        doc["forward_logs"] = True
    return doc


def attributes(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("_id", "_rev")}


def job_jsonapi(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": JOBS,
        "id": doc["_id"],
        "attributes": attributes(doc),
        "meta": {"rev": doc.get("_rev")},
        "links": {"self": f"/jobs/{doc.get('worker')}/{doc['_id']}"},
    }


def trigger_state(trigger_id: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The state of a trigger from its jobs (most recent first), as
    cozy-stack computes it: the last job's status, the last success, the
    last failure (with its error) and the last manual run."""
    state: dict[str, Any] = {"trigger_id": trigger_id, "status": DONE}
    for job in reversed(jobs):  # oldest first, so that the newest wins
        started = job.get("started_at") or ZERO_TIME
        state["status"] = job.get("state")
        state["last_execution"] = started
        state["last_executed_job_id"] = job["_id"]
        if job.get("manual_execution"):
            state["last_manual_execution"] = started
            state["last_manual_job_id"] = job["_id"]
        if job.get("state") == ERRORED:
            state["last_failure"] = started
            state["last_failed_job_id"] = job["_id"]
            state["last_error"] = job.get("error", "")
        elif job.get("state") == DONE:
            state["last_success"] = started
            state["last_successful_job_id"] = job["_id"]
    return state


def trigger_jsonapi(
    doc: dict[str, Any], *, webhook_url: str | None = None, state: dict | None = None
) -> dict[str, Any]:
    attrs = attributes(doc)
    if state is not None:
        attrs["current_state"] = state
    links = {"self": f"/jobs/triggers/{doc['_id']}"}
    if doc.get("type") == "@webhook" and webhook_url:
        links["webhook"] = webhook_url
    return {
        "type": TRIGGERS,
        "id": doc["_id"],
        "attributes": attrs,
        "meta": {"rev": doc.get("_rev")},
        "links": links,
    }
