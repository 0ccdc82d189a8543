"""``cozyctl jobs …``: push a job and follow it, purge old jobs.

Mirrors ``cozy-stack jobs run|purge-old-jobs`` through the admin API
(``/instances/<domain>/jobs/…``)::

    cozyctl jobs run log --domain alice.example --json '{"hello": "world"}'
    cozyctl jobs purge-old-jobs alice.example --duration 3W --workers log,sendmail
"""

from __future__ import annotations

import argparse
import json
import time

from cozyd.cli.client import Context, instance_path
from cozyd.cli.output import CLIError, dumps_indented, out

#: Seconds ``jobs run`` waits for the job to finish (COZY_JOB_WAIT to change).
DEFAULT_WAIT = 600.0
POLL = 0.2


def job_object(data: dict) -> dict:
    """A job as cozy-stack's client prints it: id, rev, attributes."""
    return {
        "id": data.get("id"),
        "rev": (data.get("meta") or {}).get("rev"),
        "attributes": data.get("attributes") or {},
    }


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    if not args.domain:
        raise CLIError("a domain is required (--domain)")
    if args.json is None:
        raise CLIError("The JSON argument is missing")
    try:
        json.loads(args.json)
    except ValueError as exc:
        raise CLIError(f"--json is not JSON: {exc}") from None
    pushed = ctx.admin.json(
        "POST",
        instance_path(args.domain, "jobs", "queue", args.worker),
        {"Arguments": args.json},
    )["data"]
    wait = float(ctx.env.get("COZY_JOB_WAIT") or DEFAULT_WAIT)
    deadline = time.monotonic() + wait
    job = pushed
    seen_state = None
    while True:
        state = job.get("attributes", {}).get("state")
        if args.logs and state != seen_state:
            stamp = f"[time:{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}]"
            out(f"[info]{stamp if args.logs_verbose else ''} job {job['id']} {state}")
            seen_state = state
        if state in ("done", "errored") or time.monotonic() > deadline:
            break
        time.sleep(POLL)
        job = ctx.admin.json("GET", instance_path(args.domain, "jobs", pushed["id"]))[
            "data"
        ]
    out(dumps_indented(job_object(job)))
    if job["attributes"].get("state") == "errored":
        raise CLIError(f"the job failed: {job['attributes'].get('error', '')}")
    return 0


def cmd_purge(args: argparse.Namespace, ctx: Context) -> int:
    query = {}
    if args.duration:
        query["duration"] = args.duration
    if args.workers:
        query["workers"] = ",".join(
            w for item in args.workers for w in item.split(",") if w
        )
    response = ctx.admin.request(
        "DELETE", instance_path(args.domain, "jobs", "purge"), query
    )
    out(response.text().strip())
    return 0


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    noun = nouns.add_parser(
        "jobs",
        aliases=["job"],
        parents=[common],
        allow_abbrev=False,
        help="launch and manage jobs and workers",
        description="Launch and manage jobs and workers.",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)
    p = commands.add_parser(
        "run",
        aliases=["launch", "push"],
        parents=[common],
        allow_abbrev=False,
        help="push a job and wait for its end",
        description="Push a job for <worker> and print it once done.",
    )
    p.add_argument("worker")
    p.add_argument("--domain", default="", help="the domain of the instance")
    p.add_argument("--json", default=None, help="the job arguments as raw JSON")
    p.add_argument("--logs", action="store_true", help="print the job's progress")
    p.add_argument("--logs-verbose", action="store_true", help="with times (with --logs)")
    p.set_defaults(handler=cmd_run)
    p = commands.add_parser(
        "purge-old-jobs",
        parents=[common],
        allow_abbrev=False,
        help="purge old jobs from an instance",
        description="Delete the jobs older than --duration (keeping the last "
        "ones of each worker and state).",
    )
    p.add_argument("domain")
    p.add_argument("--duration", default="", help="duration to look for (ie. 3D, 2M)")
    p.add_argument(
        "--workers",
        action="append",
        default=[],
        help="worker types to iterate over (all workers by default)",
    )
    p.set_defaults(handler=cmd_purge)
