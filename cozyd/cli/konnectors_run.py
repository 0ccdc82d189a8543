"""``cozyctl konnectors run <slug> --domain D [--account-id ID]``.

As cozy-stack's: with a CLI token of the instance (``io.cozy.jobs`` for
the konnector worker, triggers, files, accounts), list the ``konnector``
triggers (``GET /jobs/triggers?Worker=konnector``), pick the one of the
konnector (the one of ``--account-id`` when given or when several
exist), launch it (``POST /jobs/triggers/:id/launch``) and print the job
as indented JSON. ``register_run(commands, common)`` adds the command to
the ``konnectors`` noun.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from cozyd.cli.client import Context, error_message
from cozyd.cli.instances import _public_request, check_domain
from cozyd.cli.output import CLIError, out

SCOPES = (
    "io.cozy.jobs:POST:konnector:worker",
    "io.cozy.triggers",
    "io.cozy.files",
    "io.cozy.accounts",
)


def cli_token(ctx: Context, domain: str) -> str:
    query = [
        ("Domain", domain),
        ("Audience", "cli"),
        ("Subject", ""),
        ("Scope", " ".join(SCOPES)),
    ]
    return ctx.admin.request("POST", "/instances/token", query).text().strip()


def _call(ctx: Context, domain: str, method: str, path: str, token: str) -> Any:
    status, body = _public_request(ctx, domain, method, path, token)
    if status >= 400:
        raise CLIError(error_message(status, "", body))
    try:
        return json.loads(body)
    except ValueError:
        raise CLIError(f"unexpected answer of {path}: not JSON") from None


def pick_trigger(triggers: list[dict[str, Any]], slug: str, account_id: str) -> str:
    """The id of the trigger to launch, as cozy-stack chooses it."""
    found: list[tuple[str, str]] = []
    for trigger in triggers:
        attributes = trigger.get("attributes") or {}
        message = attributes.get("message") or {}
        if isinstance(message, str):
            try:
                message = json.loads(message)
            except ValueError:
                message = {}
        if isinstance(message, dict) and message.get("konnector") == slug:
            found.append(
                (trigger.get("id") or attributes.get("_id", ""), message.get("account", ""))
            )
    if not found:
        raise CLIError(
            f"Could not find a konnector {slug!r}: "
            "it may be installed but it is not activated (no related trigger)"
        )
    if len(found) > 1 or account_id:
        if not account_id:
            raise CLIError(
                "Found multiple konnectors with different accounts: use the --account-id flag"
            )
        for trigger_id, account in found:
            if account == account_id:
                return trigger_id
        raise CLIError(f"Could not find konnector linked to account with id {account_id!r}")
    return found[0][0]


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    domain = getattr(args, "domain", None) or ctx.env.get("COZY_DOMAIN")
    if not domain:
        raise CLIError("missing --domain flag, or COZY_DOMAIN env variable")
    domain = check_domain(domain)
    token = cli_token(ctx, domain)
    listing = _call(ctx, domain, "GET", "/jobs/triggers?Worker=konnector", token)
    triggers = listing.get("data") if isinstance(listing, dict) else None
    trigger_id = pick_trigger(
        triggers if isinstance(triggers, list) else [], args.slug, args.account_id or ""
    )
    path = f"/jobs/triggers/{urllib.parse.quote(trigger_id, safe='')}/launch"
    job = _call(ctx, domain, "POST", path, token)
    out(json.dumps(job.get("data", job) if isinstance(job, dict) else job, indent=2))
    return 0


def register_run(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add ``run`` to the ``konnectors`` noun's commands."""
    p = commands.add_parser(
        "run",
        parents=[common],
        allow_abbrev=False,
        help="run a konnector",
        description="Run a konnector named with specified slug using the specified options.",
    )
    p.add_argument("slug")
    p.add_argument("--domain", default=None, help="the domain name of the instance")
    p.add_argument(
        "--account-id",
        dest="account_id",
        default=None,
        help="specify the account ID to use for running the konnector",
    )
    p.set_defaults(handler=cmd_run)
