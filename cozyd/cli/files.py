"""``cozyctl files``: the usage of an instance's files, and the import of a
local tree (``usage``, ``import``), through the admin API; ``cozyctl
instances fsck`` lives with the instances (``cozyd.cli.instances``)."""

from __future__ import annotations

import argparse
import fnmatch
import http.client
import json
import os
import sys
import urllib.parse
from collections.abc import Sequence

from cozyd.cli.client import Context, instance_path
from cozyd.cli.output import CLIError, format_bytes, info, out

CHUNK = 1024 * 1024


def cmd_usage(args: argparse.Namespace, ctx: Context) -> int:
    usage = ctx.admin.json("GET", instance_path(args.domain, "disk-usage"))
    if getattr(args, "json", False):
        out(json.dumps(usage))
        return 0
    out(f"Usage: {usage['used']} ({format_bytes(usage['used'])})")
    out(f"  files: {usage['files']}, versions: {usage['versions']}")
    if args.trash:
        out(f"Including trash: {usage['trash']} ({format_bytes(usage['trash'])})")
    if usage.get("quota"):
        out(f"Quota: {usage['quota']} ({format_bytes(usage['quota'])})")
    return 0


class _Progress:
    """A progress bar on a terminal (stderr), nothing otherwise."""

    def __init__(self, total: int):
        self.total = max(total, 1)
        self.done = 0
        self.on = sys.stderr.isatty()

    def add(self, size: int, name: str) -> None:
        self.done += size
        if self.on:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] "
                f"{format_bytes(self.done)}/{format_bytes(self.total)} {name[-30:]:<30}"
            )
            sys.stderr.flush()

    def end(self) -> None:
        if self.on:
            sys.stderr.write("\n")


def _upload(ctx: Context, domain: str, path: str, local: str, size: int) -> None:
    admin = ctx.admin
    query = urllib.parse.urlencode({"Path": path, "Size": str(size)})
    connection = http.client.HTTPConnection(admin.host, admin.port, timeout=admin.timeout)
    try:
        connection.putrequest("POST", instance_path(domain, "files", "file") + "?" + query)
        connection.putheader("Authorization", admin._auth_header())
        connection.putheader("Content-Length", str(size))
        connection.putheader("User-Agent", "cozyctl")
        connection.endheaders()
        with open(local, "rb") as source:
            while chunk := source.read(CHUNK):
                connection.send(chunk)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise CLIError(f"could not upload {local}: {exc}") from None
    finally:
        connection.close()
    if response.status == 409:
        info(f"skipped {path}: it exists already")
        return
    if response.status != 201:
        try:
            detail = json.loads(body)["errors"][0]["detail"]
        except (ValueError, KeyError, IndexError, TypeError):
            detail = body.decode("utf-8", "replace")[:200]
        raise CLIError(f"could not upload {local} to {path}: {detail}")


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    source = os.path.abspath(args.from_)
    target = "/" + args.to.strip("/")
    if not os.path.exists(source):
        raise CLIError(f"{args.from_}: no such file or directory")
    plan: list[tuple[str, str, int]] = []  # (local, remote, size)
    dirs: list[str] = []
    if os.path.isfile(source):
        plan.append(
            (
                source,
                target.rstrip("/") + "/" + os.path.basename(source),
                os.path.getsize(source),
            )
        )
    else:
        for root, subdirs, names in os.walk(source):
            subdirs.sort()
            rel = os.path.relpath(root, source)
            remote_dir = (
                target
                if rel == "."
                else target.rstrip("/") + "/" + rel.replace(os.sep, "/")
            )
            dirs.append(remote_dir)
            for name in sorted(names):
                local = os.path.join(root, name)
                if os.path.islink(local) or not os.path.isfile(local):
                    continue
                if args.match and not fnmatch.fnmatch(name, args.match):
                    continue
                plan.append(
                    (local, remote_dir.rstrip("/") + "/" + name, os.path.getsize(local))
                )
    if args.dry_run:
        for local, remote, size in plan:
            out(f"{local} -> {remote} ({size} bytes)")
        return 0
    for remote_dir in dirs:
        if remote_dir != "/":
            ctx.admin.request(
                "POST", instance_path(args.domain, "files", "dir"), [("Path", remote_dir)]
            )
    progress = _Progress(sum(size for _, _, size in plan))
    for local, remote, size in plan:
        _upload(ctx, args.domain, remote, local, size)
        progress.add(size, remote)
    progress.end()
    info(f"imported {len(plan)} files ({format_bytes(progress.done)}) to {target}")
    return 0


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    noun = nouns.add_parser(
        "files",
        parents=[common],
        allow_abbrev=False,
        help="interact with the files of an instance",
        description="Interact with the cozy file system of an instance.",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(
            name, parents=[common], allow_abbrev=False, help=help, description=help
        )
        p.set_defaults(handler=handler)
        p.add_argument("--domain", required=True, help="the domain of the instance")
        return p

    p = command("usage", cmd_usage, "show the usage and quota of the files of an instance")
    p.add_argument(
        "--trash", action="store_true", help="include the trashed files total size"
    )
    p.add_argument("--json", action="store_true", help="the figures as JSON")

    p = command("import", cmd_import, "import a local file or directory into the cozy")
    p.add_argument("--from", dest="from_", required=True, help="local file or directory")
    p.add_argument("--to", default="/", help="directory to import to in the cozy")
    p.add_argument("--match", default="", help="pattern the imported files must match")
    p.add_argument("--dry-run", action="store_true", help="list, do not import")


__all__: Sequence[str] = ("register",)
