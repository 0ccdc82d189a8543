"""``cozyctl apps …`` (alias ``app``, ``webapps``): install, update,
uninstall, list and show an instance's web apps, as ``cozy-stack apps``
(reference/cozy-stack-docs/cli/cozy-stack_apps_*.md), through the admin
API (``/instances/<domain>/apps/<slug>``). ``cozyd.cli.konnectors`` uses
the same commands for konnectors.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from cozyd.cli.client import LONG_TIMEOUT, Context, instance_path
from cozyd.cli.output import CLIError, dumps_indented, info, out

DEFAULT_DOMAIN = "cozy.localhost:8080"
_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?")


def version_key(text: str) -> tuple | None:
    """A version as semver orders it (a pre-release before its release)."""
    m = _VERSION.match(text or "")
    if m is None:
        return None
    numbers = tuple(int(g or 0) for g in m.groups()[:3])
    pre = m.group(4)
    if pre is None:
        return (*numbers, 1, ())
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*numbers, 0, parts)


def is_more_recent(old: str, new: str) -> bool:
    """cozy-stack's ``IsMoreRecent(a, b)``: b greater than a."""
    a, b = version_key(old), version_key(new)
    if a is None:
        return True
    if b is None:
        return False
    return b > a


class Kind:
    def __init__(self, noun: str, path: str, what: str):
        self.noun = noun
        self.path = path
        self.what = what
        self.a_what = ("an " if what[0] in "aeiou" else "a ") + what


WEBAPPS = Kind("apps", "apps", "application")
KONNECTORS = Kind("konnectors", "konnectors", "konnector")


def _domain(args: argparse.Namespace, ctx: Context) -> str:
    domain = getattr(args, "domain", None) or ctx.env.get("COZY_DOMAIN") or DEFAULT_DOMAIN
    return domain


def _path(kind: Kind, domain: str, slug: str | None = None) -> str:
    return instance_path(domain, kind.path, *([slug] if slug else []))


def _attributes(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
        raise CLIError("the admin API answered something that is not an app")
    return data["attributes"]


def _domains(ctx: Context) -> list[str]:
    answer = ctx.admin.json("GET", "/instances")
    return [i["attributes"]["domain"] for i in answer.get("data", [])]


def _for_all(ctx: Context, action: Callable[[str], None]) -> int:
    failed = False
    for domain in _domains(ctx):
        try:
            action(domain)
        except CLIError as exc:
            info(f"{domain}: {exc.message}")
            failed = True
    if failed:
        raise CLIError("At least one error occurred while executing this command")
    return 0


def _parameters(args: argparse.Namespace) -> list[tuple[str, str]]:
    text = getattr(args, "parameters", None)
    return [("Parameters", text)] if text else []


def cmd_install(kind: Kind) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        slug = args.slug
        source = args.source or f"registry://{slug}/stable"
        query = [("Source", source), *_parameters(args)]
        if getattr(args, "ask_permissions", False):
            query.append(("Deactivated", "true"))

        def install(domain: str) -> dict[str, Any]:
            return _attributes(
                ctx.admin.json(
                    "POST", _path(kind, domain, slug), query, min_timeout=LONG_TIMEOUT
                )
            )

        if args.all_domains:

            def each(domain: str) -> None:
                try:
                    install(domain)
                except CLIError as exc:
                    if "already exists" in exc.message:
                        return
                    raise
                out(f"Application installed successfully on {domain}")

            return _for_all(ctx, each)
        domain = _domain(args, ctx)
        attributes = install(domain)
        out(f"{slug} ({attributes.get('version', '')}) has been installed on {domain}")
        return 0

    return run


def cmd_update(kind: Kind) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        slug = args.slug
        query = [("PermissionsAcked", "false" if args.safe else "true"), *_parameters(args)]
        if args.source:
            query.append(("Source", args.source))

        def update(domain: str) -> dict[str, Any]:
            return _attributes(
                ctx.admin.json(
                    "PUT", _path(kind, domain, slug), query, min_timeout=LONG_TIMEOUT
                )
            )

        if args.all_domains:

            def each(domain: str) -> None:
                try:
                    update(domain)
                except CLIError as exc:
                    if "is not installed" in exc.message:
                        return
                    raise
                out(f"Application updated successfully on {domain}")

            return _for_all(ctx, each)
        domain = _domain(args, ctx)
        before = _attributes(ctx.admin.json("GET", _path(kind, domain, slug)))
        after = update(domain)
        old, new = before.get("version", ""), after.get("version", "")
        if is_more_recent(old, new):
            out(f"{slug} has been upgraded to {new}")
        elif is_more_recent(new, old):
            out(f"{slug} has been downgraded to {new}")
        else:
            out(f"{slug} is already up-to-date at {new}")
        return 0

    return run


def cmd_uninstall(kind: Kind) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        domain = _domain(args, ctx)
        attributes = _attributes(
            ctx.admin.json(
                "DELETE", _path(kind, domain, args.slug), min_timeout=LONG_TIMEOUT
            )
        )
        out(f"{attributes.get('slug', args.slug)} has been uninstalled")
        return 0

    return run


def cmd_ls(kind: Kind) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        answer = ctx.admin.json("GET", _path(kind, _domain(args, ctx)))
        rows = [
            [str(a.get(f, "")) for f in ("slug", "source", "version", "state")]
            for a in (d.get("attributes", {}) for d in answer.get("data", []))
        ]
        # As Go's tabwriter (minwidth 0, padding 2, no trailing cell padding).
        widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
        for row in rows:
            cells = [row[i].ljust(widths[i] + 2) for i in range(3)]
            out("".join(cells) + row[3])
        return 0

    return run


def cmd_show(kind: Kind) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        attributes = _attributes(
            ctx.admin.json("GET", _path(kind, _domain(args, ctx), args.slug))
        )
        out(dumps_indented(attributes))
        return 0

    return run


def register_commands(
    kind: Kind,
    commands: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    *,
    konnector: bool = False,
) -> None:
    shared = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    shared.add_argument(
        "--domain",
        help=f"the domain of the instance (env COZY_DOMAIN, default {DEFAULT_DOMAIN})",
    )
    shared.add_argument(
        "--all-domains",
        dest="all_domains",
        action="store_true",
        default=False,
        help="work on all domains iteratively",
    )
    if konnector:
        shared.add_argument(
            "--parameters", help="override the parameters of the installed konnector"
        )
    parents = [common, shared]

    def add(name: str, help_text: str, handler, *, aliases=(), slug=True, source=False):
        p = commands.add_parser(
            name, aliases=list(aliases), parents=parents, allow_abbrev=False, help=help_text
        )
        if slug:
            p.add_argument("slug")
        if source:
            p.add_argument("source", nargs="?", metavar="sourceurl")
        p.set_defaults(handler=handler, all_domains=False)
        return p

    install = add(
        "install",
        f"install {kind.a_what}",
        cmd_install(kind),
        aliases=("add",),
        source=True,
    )
    if not konnector:
        install.add_argument(
            "--ask-permissions",
            dest="ask_permissions",
            action="store_true",
            help="specify that the application should not be activated after installation",
        )
    update = add(
        "update",
        f"update the {kind.what}",
        cmd_update(kind),
        aliases=("upgrade",),
        source=True,
    )
    update.add_argument(
        "--safe", action="store_true", help="do not upgrade if there are blocking changes"
    )
    add("uninstall", f"uninstall the {kind.what}", cmd_uninstall(kind), aliases=("rm",))
    add("ls", f"list the installed {kind.what}s", cmd_ls(kind), slug=False)
    add("show", f"show the {kind.what}'s manifest", cmd_show(kind))


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    noun = nouns.add_parser(
        "apps",
        aliases=["app", "webapps"],
        parents=[common],
        allow_abbrev=False,
        help="interact with the applications",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)
    register_commands(WEBAPPS, commands, common)
