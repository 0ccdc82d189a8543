"""``cozyctl triggers ls|launch|rm``: the triggers of an instance, through
the admin API (``/instances/<domain>/triggers…``), as ``cozy-stack
triggers`` prints them."""

from __future__ import annotations

import argparse

from cozyd.cli.client import Context, instance_path
from cozyd.cli.jobs import job_object
from cozyd.cli.output import CLIError, dumps_indented, dumps_line, out


def _domain(args: argparse.Namespace) -> str:
    if not args.domain:
        raise CLIError("a domain is required (--domain)")
    return args.domain


def cmd_ls(args: argparse.Namespace, ctx: Context) -> int:
    triggers = ctx.admin.json("GET", instance_path(_domain(args), "triggers"))["data"]
    if args.json:
        for trigger in triggers:
            out(dumps_line({"id": trigger["id"], **trigger["attributes"]}))
        return 0
    rows = [
        (
            t["id"],
            str(t["attributes"].get("worker", "")),
            str(t["attributes"].get("type", "")),
            str(t["attributes"].get("arguments", "")),
            str(t["attributes"].get("debounce", "")),
        )
        for t in triggers
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out("  ".join([*cells, row[-1]]).rstrip())
    return 0


def cmd_launch(args: argparse.Namespace, ctx: Context) -> int:
    path = instance_path(_domain(args), "triggers", args.trigger_id, "launch")
    job = ctx.admin.json("POST", path)["data"]
    out(dumps_indented(job_object(job)))
    return 0


def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
    ctx.admin.request("DELETE", instance_path(_domain(args), "triggers", args.trigger_id))
    return 0


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    noun = nouns.add_parser(
        "triggers",
        aliases=["trigger"],
        parents=[common],
        allow_abbrev=False,
        help="interact with the triggers",
        description="List, launch and remove the triggers of an instance.",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)

    def command(name, handler, help, aliases=()):
        p = commands.add_parser(
            name,
            aliases=list(aliases),
            parents=[common],
            allow_abbrev=False,
            help=help,
            description=help,
        )
        p.add_argument("--domain", default="", help="the domain of the instance")
        p.set_defaults(handler=handler)
        return p

    p = command("ls", cmd_ls, "list the triggers", aliases=["list"])
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("launch", cmd_launch, "create a job from a trigger")
    p.add_argument("trigger_id", metavar="triggerId")
    p = command("rm", cmd_rm, "remove a trigger", aliases=["delete"])
    p.add_argument("trigger_id", metavar="triggerId")
