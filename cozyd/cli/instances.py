"""``cozyctl instances …`` (alias ``instance``): the admin API's /instances.

Mirrors ``cozy-stack instances`` (reference/cozy-stack-docs/cli/). Flags
that become query parameters are declared once in tables (``ADD_PARAMS``,
``MODIFY_PARAMS``); each command is a small function ``(args, ctx) -> int``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cozyd import passphrase as passphrases
from cozyd.cli.client import (
    LONG_TIMEOUT,
    Context,
    error_message,
    go_duration,
    instance_path,
)
from cozyd.cli.output import (
    CLIError,
    dumps_indented,
    dumps_line,
    format_bytes,
    info,
    out,
)
from cozyd.instance.domain import InvalidDomain, validate_domain

Handler = Callable[[argparse.Namespace, Context], int]

# Boolean flags that, as with cobra, take an optional ``=value`` and are sent
# only when given: ``--blocked`` means true, ``--blocked=false`` unblocks.
# main() rewrites a bare ``--blocked`` into ``--blocked=true`` before parsing.
BOOL_VALUE_FLAGS = frozenset(
    {"--blocked", "--deleting", "--onboarding-finished", "--magic_link"}
)

# Attribute names of an instance in the admin API (for ``ls --fields``),
# secrets excluded; keep in step with cozyd.instance.model.Instance.
# ``db_prefix`` is computed by cozyctl, as cozy-stack does.
AVAILABLE_FIELDS = (
    "domain",
    "domain_aliases",
    "prefix",
    "locale",
    "context",
    "uuid",
    "tos",
    "tos_latest",
    "disk_quota",
    "blocked",
    "blocking_reason",
    "deleting",
    "onboarding_finished",
    "password_defined",
    "indexes_version",
    "register_token",
    "db_prefix",
)

_ONBOARDING_PARTS = ("secret", "app", "permissions", "state")


# --- value parsers ---------------------------------------------------------

_SIZE_MULTIPLIERS = {"": 1, "b": 1}
for _i, _u in enumerate("kmgtpe", start=1):
    _SIZE_MULTIPLIERS.update(
        {_u: 1000**_i, f"{_u}b": 1000**_i, f"{_u}i": 1024**_i, f"{_u}ib": 1024**_i}
    )
_SIZE = re.compile(r"([\d,]*\.?\d*)\s*([A-Za-z]*)")


def parse_bytes(text: str) -> int:
    """A humanized size (``3GB``, ``500 MB``, ``1GiB``, ``1.5G``, ``1024``)
    in bytes, as go-humanize's ``ParseBytes`` reads it."""
    m = _SIZE.fullmatch(text.strip())
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_MULTIPLIERS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (examples: 3GB, 500MB, 1GiB, 1048576)"
        )
    try:
        number = float(m.group(1).replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    return int(number * _SIZE_MULTIPLIERS[unit])


def parse_bool(text: str) -> bool:
    """A boolean as Go's ``strconv.ParseBool`` reads it."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def duration_arg(text: str) -> str:
    try:
        return go_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_domain(domain: str) -> str:
    """The domain as the server will see it; the same rules as the server,
    so a bad domain is refused before anything is sent."""
    try:
        return validate_domain(domain)
    except InvalidDomain as exc:
        raise CLIError(f"Invalid domain {domain!r}: {exc.detail}") from None


# --- flags that become query parameters --------------------------------------


@dataclass(frozen=True)
class Param:
    """A command-line flag sent as the query parameter ``name``.

    kind: ``str``; ``list`` (comma-separated, repeatable, sent joined);
    ``bytes`` (humanized size); ``bool`` (a BOOL_VALUE_FLAGS flag, sent
    only when given); ``cluster`` (an int where -1 means "default", not sent).
    """

    flag: str
    name: str
    help: str
    kind: str = "str"
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.kind == "list":
            parser.add_argument(
                self.flag,
                dest=self.dest,
                action="append",
                metavar="A,B",
                help=self.help,
            )
        elif self.kind == "bytes":
            parser.add_argument(
                self.flag,
                dest=self.dest,
                type=parse_bytes,
                metavar="SIZE",
                help=self.help,
            )
        elif self.kind == "bool":
            assert self.flag in BOOL_VALUE_FLAGS
            parser.add_argument(
                self.flag,
                dest=self.dest,
                type=parse_bool,
                metavar="BOOL",
                help=f"{self.help} (or {self.flag}=false)",
            )
        elif self.kind == "cluster":
            parser.add_argument(
                self.flag,
                dest=self.dest,
                type=int,
                default=-1,
                metavar="N",
                help=f"{self.help} (-1 means the default)",
            )
        else:
            parser.add_argument(
                self.flag,
                dest=self.dest,
                default=self.default,
                metavar="VALUE",
                help=self.help,
            )

    def query_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.kind == "list":
            return ",".join(p.strip() for v in value for p in v.split(",") if p.strip())
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "cluster":
            return None if value == -1 else str(value)
        if self.kind == "str" and value == "":
            return None
        return str(value)


def build_query(args: argparse.Namespace, params: Sequence[Param]) -> list[tuple[str, str]]:
    query = []
    for param in params:
        value = param.query_value(getattr(args, param.dest, None))
        if value is not None:
            query.append((param.name, value))
    return query


_COMMON_PARAMS = (
    Param("--email", "Email", "email of the owner"),
    Param("--public-name", "PublicName", "public name of the owner"),
    Param("--phone", "Phone", "phone number of the owner"),
    Param("--tz", "Timezone", "timezone of the owner (e.g. Europe/Paris)"),
    Param("--context-name", "ContextName", "context name of the instance"),
    Param("--settings", "Settings", "settings as k:v,k:v (e.g. context:foo,offer:premium)"),
    Param("--uuid", "UUID", "UUID of the instance"),
    Param("--oidc_id", "OIDCID", "identifier for authentication from OIDC"),
    Param("--franceconnect_id", "FranceConnectID", "identifier for FranceConnect"),
    Param("--old-domain", "OldDomain", "old domain of the instance"),
    Param("--tos", "TOSSigned", "version of the terms of service signed"),
    Param(
        "--disk-quota",
        "DiskQuota",
        "quota of the files, e.g. 3GB, 500MB, 1GiB",
        kind="bytes",
    ),
    Param(
        "--domain-aliases",
        "DomainAliases",
        "alias domains, comma-separated",
        kind="list",
    ),
    Param("--sponsorships", "Sponsorships", "sponsorships, comma-separated", kind="list"),
    Param("--magic_link", "MagicLink", "enable authentication by magic links", kind="bool"),
)

ADD_PARAMS = (
    Param("--locale", "Locale", "locale of the new instance (default: en)", default="en"),
    *_COMMON_PARAMS,
    Param("--passphrase", "Passphrase", "register the instance with this passphrase"),
    Param("--apps", "Apps", "apps to install, comma-separated", kind="list"),
    Param(
        "--couch-cluster",
        "CouchCluster",
        "CouchDB cluster of the instance",
        kind="cluster",
    ),
    Param("--swift-layout", "SwiftLayout", "Swift layout of the instance", kind="cluster"),
)

MODIFY_PARAMS = (
    Param("--locale", "Locale", "new locale"),
    *_COMMON_PARAMS,
    Param("--tos-latest", "TOSLatest", "latest version of the terms of service"),
    Param("--blocked", "Blocked", "block the instance", kind="bool"),
    Param(
        "--blocking-reason",
        "BlockingReason",
        "why it is blocked: LOGIN_FAILED, PAYMENT_FAILED, UNKNOWN, IMPORTING, "
        "MOVING or any text",
    ),
    Param("--deleting", "Deleting", "set the deleting flag", kind="bool"),
    Param(
        "--onboarding-finished",
        "OnboardingFinished",
        "mark the onboarding finished",
        kind="bool",
    ),
)


# --- helpers ------------------------------------------------------------------


def _data(doc: Any) -> Any:
    if not isinstance(doc, dict) or "data" not in doc:
        raise CLIError('unexpected answer from the admin API (no "data")')
    return doc["data"]


def _attributes(data: Any) -> dict[str, Any]:
    attrs = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attrs, dict):
        raise CLIError("unexpected answer from the admin API (no instance attributes)")
    return attrs


def _instance_document(data: dict[str, Any]) -> dict[str, Any]:
    """The instance as cozy-stack's CLI prints it: id, meta.rev, attributes."""
    meta = data.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    return {
        "id": data.get("id", ""),
        "meta": {"rev": meta.get("rev", "")},
        "attributes": _attributes(data),
    }


def _get_instance(ctx: Context, domain: str) -> dict[str, Any]:
    return _data(ctx.admin.json("GET", instance_path(check_domain(domain))))


def _disabled(action: str, ctx: Context) -> None:
    reason = ctx.env.get("COZY_DISABLE_INSTANCES_ADD_RM")
    if reason:
        raise CLIError(f"Sorry, instances {action} is disabled: {reason}")


def db_prefix(attrs: dict[str, Any]) -> str:
    """The prefix of the instance's databases; cozy-stack falls back on the
    escaped domain for old instances without one."""
    if attrs.get("prefix"):
        return str(attrs["prefix"])
    return str(attrs.get("domain", "")).replace(".", "-").replace(":", "-").lower()


def _disk_quota(attrs: dict[str, Any]) -> int:
    try:
        return int(attrs.get("disk_quota") or 0)
    except (TypeError, ValueError):
        return 0


def _onboarding_state(attrs: dict[str, Any]) -> str:
    if attrs.get("onboarding_finished"):
        return "onboarded"
    return "onboarding" if attrs.get("register_token") else "pending"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return dumps_line(value)
    return str(value)


# --- commands -----------------------------------------------------------------


def cmd_add(args: argparse.Namespace, ctx: Context) -> int:
    _disabled("add", ctx)
    domain = check_domain(args.domain)
    if args.dev:
        info("The --dev flag has been deprecated")
    query = [("Domain", domain), *build_query(args, ADD_PARAMS)]
    if args.trace:
        query.append(("Trace", "true"))
    info(f'Creating instance for domain "{domain}": please wait...')
    try:
        data = _data(ctx.admin.json("POST", "/instances", query, min_timeout=LONG_TIMEOUT))
    except CLIError as exc:
        raise exc.with_context(f"Failed to create instance for domain {domain}") from None
    attrs = _attributes(data)
    created = attrs.get("domain") or domain
    info(f"Instance created with success for domain {created}")
    token = attrs.get("register_token")
    if token:
        try:
            hex_token = base64.b64decode(token, validate=True).hex()
        except (binascii.Error, ValueError, TypeError):
            raise CLIError(f"the register_token of {created} is not base64") from None
        out(hex_token)
        info(
            f"Define your password by visiting http://{created}/?registerToken={hex_token}"
        )
    return 0


def cmd_ls(args: argparse.Namespace, ctx: Context) -> int:
    if args.available_fields:
        for name in AVAILABLE_FIELDS:
            out(name)
        return 0
    fields = [f.strip() for v in (args.fields or ()) for f in v.split(",") if f.strip()]
    items = _data(ctx.admin.json("GET", "/instances"))
    if not isinstance(items, list):
        raise CLIError('unexpected answer from the admin API ("data" is not a list)')
    for item in items:
        attrs = dict(_attributes(item))
        if "db_prefix" in fields:
            attrs["db_prefix"] = db_prefix(attrs)
        if args.json:
            out(dumps_line({f: attrs.get(f) for f in fields} if fields else attrs))
        elif fields:
            out("\t".join(_cell(attrs.get(f)) for f in fields))
        else:
            quota = _disk_quota(attrs)
            out(
                "\t".join(
                    [
                        str(attrs.get("domain", "")),
                        str(attrs.get("locale", "")),
                        format_bytes(quota) if quota > 0 else "unlimited",
                        _onboarding_state(attrs),
                        f"v{attrs.get('indexes_version') or 0}",
                        str(attrs.get("prefix", "")),
                    ]
                )
            )
    return 0


def cmd_count(args: argparse.Namespace, ctx: Context) -> int:
    doc = ctx.admin.json("GET", "/instances/count")
    count = doc.get("count") if isinstance(doc, dict) else None
    if not isinstance(count, int):
        raise CLIError('unexpected answer from the admin API (no "count")')
    out(f"{count} instance" if count == 1 else f"{count} instances")
    return 0


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    out(dumps_indented(_instance_document(_get_instance(ctx, args.domain))))
    return 0


def cmd_show_db_prefix(args: argparse.Namespace, ctx: Context) -> int:
    attrs = _attributes(_get_instance(ctx, args.domain))
    out(db_prefix(attrs))
    if attrs.get("couch_cluster"):
        out(f"couch_cluster: {attrs['couch_cluster']}")
    return 0


def _patch(ctx: Context, domain: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    path = instance_path(check_domain(domain))
    return _data(ctx.admin.json("PATCH", path, query))


def cmd_modify(args: argparse.Namespace, ctx: Context) -> int:
    try:
        data = _patch(ctx, args.domain, build_query(args, MODIFY_PARAMS))
    except CLIError as exc:
        raise exc.with_context(
            f"Failed to modify instance for domain {args.domain}"
        ) from None
    out(dumps_indented(_instance_document(data)))
    return 0


def cmd_set_disk_quota(args: argparse.Namespace, ctx: Context) -> int:
    # DiskQuota=0 removes the quota. (cozy-stack's own CLI sends -1 for that,
    # as its PATCH reads 0 as "unchanged"; cozyctl sends DiskQuota only when
    # asked to, so 0 is unambiguous.)
    _patch(ctx, args.domain, [("DiskQuota", str(args.disk_quota))])
    return 0


def cmd_fsck(args: argparse.Namespace, ctx: Context) -> int:
    """Mismatches between the files' metadata and the disk, one per line;
    exit status 1 when there are some (repaired or not)."""
    query = [
        (name, "true")
        for name, on in (
            ("IndexIntegrity", args.index_integrity),
            ("FilesConsistency", args.files_consistency),
            ("FailFast", args.fail_fast),
            ("Repair", args.repair),
            ("CheckMD5", args.check_md5),
        )
        if on
    ]
    path = instance_path(check_domain(args.domain), "fsck")
    result = ctx.admin.json("GET", path, query, min_timeout=600)
    for mismatch in result["mismatches"]:
        if args.json:
            out(json.dumps(mismatch))
        else:
            out(
                f"{mismatch['type']}: {mismatch['path'] or mismatch['id']} ({mismatch['detail']})"
            )
    if not result["mismatches"] and not args.json:
        info("no mismatch")
    return 1 if result["mismatches"] else 0


def _public_request(
    ctx: Context, domain: str, method: str, path: str, token: str, body: Any = None
) -> tuple[int, bytes]:
    """A request to the public server (``--host``/``--port``) for the
    instance ``domain`` (its Host header), with a token."""
    host = f"[{ctx.host}]" if ":" in ctx.host else ctx.host
    request = urllib.request.Request(
        f"http://{host}:{ctx.port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode("utf-8"),
        headers={
            "Host": domain,
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.api+json, application/json",
            "Content-Type": "application/json",
            "User-Agent": "cozyctl",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=ctx.timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CLIError(
            f"could not reach the server at {host}:{ctx.port}: {reason} (see --host/--port)"
        ) from None


def cmd_set_passphrase(args: argparse.Namespace, ctx: Context) -> int:
    """As ``cozy-stack instances set-passphrase``, but the passphrase is
    hashed here the way a browser does, so it never travels in clear."""
    domain = check_domain(args.domain)
    token = (
        ctx.admin.request(
            "POST",
            "/instances/token",
            [("Domain", domain), ("Audience", "cli"), ("Scope", "io.cozy.settings")],
        )
        .text()
        .strip()
    )
    status, body = _public_request(ctx, domain, "GET", "/settings/passphrase", token)
    iterations = 0
    if status == 200:
        try:
            iterations = int(json.loads(body)["data"]["attributes"]["iterations"] or 0)
        except (ValueError, KeyError, TypeError):
            iterations = 0
    elif status != 404:
        raise CLIError(
            f"the server answered {status} to GET /settings/passphrase: "
            f"{body.decode('utf-8', 'replace')[:200]}"
        )
    iterations = iterations or passphrases.DEFAULT_KDF_ITERATIONS
    hashed = passphrases.client_side_hash(args.new_passphrase, domain, iterations)
    status, body = _public_request(
        ctx,
        domain,
        "PUT",
        "/settings/passphrase",
        token,
        {"new_passphrase": hashed, "iterations": iterations, "force": True},
    )
    if status != 204:
        detail = (
            error_message(status, "", body)
            if status != 401
            else "the server refused the CLI token (401)"
        )
        raise CLIError(f"Failed to change the passphrase of {domain}: {detail}")
    out(f"Passphrase has been changed for instance {domain}")
    return 0


def _confirm(action: str, domain: str) -> None:
    info(
        f"Are you sure you want to {action} instance for domain {domain}?\n"
        "All data associated with this domain will be permanently lost.\n"
        "Type again the domain to confirm: ",
        end="",
    )
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not (sys.stdin is not None and sys.stdin.isatty()):
        info()
    if not line or line.strip().lower() != domain.lower():
        raise CLIError("Aborted")


def cmd_destroy(args: argparse.Namespace, ctx: Context) -> int:
    _disabled("destroy", ctx)
    domain = check_domain(args.domain)
    if not args.force:
        _confirm("remove", domain)
    try:
        ctx.admin.request("DELETE", instance_path(domain), min_timeout=LONG_TIMEOUT)
    except CLIError as exc:
        raise exc.with_context(
            f"An error occurred while destroying instance for domain {domain}"
        ) from None
    info(f"Instance for domain {domain} has been destroyed with success")
    return 0


def _token(
    ctx: Context,
    domain: str,
    audience: str,
    subject: str = "",
    scopes: Sequence[str] = (),
    expire: str | None = None,
) -> int:
    query = [
        ("Domain", check_domain(domain)),
        ("Audience", audience),
        ("Subject", subject),
        ("Scope", " ".join(scopes)),
    ]
    if expire:
        query.append(("Expire", expire))
    out(ctx.admin.request("POST", "/instances/token", query).text().strip())
    return 0


def _warn_comma_scopes(scopes: Sequence[str]) -> None:
    if any("," in s for s in scopes):
        info("Warning: the delimiter for the scopes is a space!")


def cmd_token_app(args: argparse.Namespace, ctx: Context) -> int:
    return _token(ctx, args.domain, "app", args.slug, expire=args.expire)


def cmd_token_konnector(args: argparse.Namespace, ctx: Context) -> int:
    return _token(ctx, args.domain, "konn", args.slug)


def cmd_token_cli(args: argparse.Namespace, ctx: Context) -> int:
    return _token(ctx, args.domain, "cli", scopes=args.scopes)


def cmd_token_oauth(args: argparse.Namespace, ctx: Context) -> int:
    if not args.client_id:
        raise CLIError("Missing clientID")
    _warn_comma_scopes(args.scopes)
    return _token(
        ctx, args.domain, "access-token", args.client_id, args.scopes, args.expire
    )


def cmd_refresh_token_oauth(args: argparse.Namespace, ctx: Context) -> int:
    if not args.client_id:
        raise CLIError("Missing clientID")
    _warn_comma_scopes(args.scopes)
    return _token(ctx, args.domain, "refresh-token", args.client_id, args.scopes)


def cmd_client_oauth(args: argparse.Namespace, ctx: Context) -> int:
    query = [
        ("Domain", check_domain(args.domain)),
        ("RedirectURI", args.redirect_uri),
        ("ClientName", args.client_name),
        ("SoftwareID", args.software_id),
        ("AllowLoginScope", "true" if args.allow_login_scope else "false"),
    ]
    for part in _ONBOARDING_PARTS:
        value = getattr(args, f"onboarding_{part}")
        if value:
            query.append((f"Onboarding{part.capitalize()}", value))
    client = ctx.admin.json("POST", "/instances/oauth_client", query)
    if args.json:
        out(dumps_indented(client, indent="\t"))
    elif isinstance(client, dict) and client.get("client_id"):
        out(str(client["client_id"]))
    else:
        raise CLIError("unexpected answer from the admin API (no client_id)")
    return 0


def cmd_find_oauth_client(args: argparse.Namespace, ctx: Context) -> int:
    query = [("domain", check_domain(args.domain)), ("software_id", args.software_id)]
    out(dumps_indented(ctx.admin.json("GET", "/instances/oauth_client", query)))
    return 0


# --- the parser ---------------------------------------------------------------


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``instances`` noun and its commands to cozyctl's parser."""
    noun = nouns.add_parser(
        "instances",
        aliases=["instance"],
        parents=[common],
        allow_abbrev=False,
        help="manage the instances of the server",
        description="Manage instances: a domain owned by one user, with its "
        "own files and databases.",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)

    def command(
        name: str, handler: Handler, help: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        p = commands.add_parser(
            name,
            aliases=list(aliases),
            parents=[common],
            allow_abbrev=False,
            help=help,
            description=help,
        )
        p.set_defaults(handler=handler)
        return p

    p = command("add", cmd_add, "create an instance", aliases=["create"])
    p.add_argument("domain")
    for param in ADD_PARAMS:
        param.add_to(p)
    p.add_argument("--trace", action="store_true", help="show where time is spent")
    p.add_argument("--dev", action="store_true", help="deprecated, ignored")

    p = command("ls", cmd_ls, "list the instances", aliases=["list"])
    p.add_argument(
        "--json", action="store_true", help="one JSON object (the attributes) per line"
    )
    p.add_argument(
        "--fields",
        action="append",
        metavar="A,B",
        help="fields shown for each instance (see --available-fields)",
    )
    p.add_argument(
        "--available-fields",
        action="store_true",
        help="list the fields usable with --fields",
    )

    command("count", cmd_count, "count the instances")

    p = command("show", cmd_show, "show an instance as JSON")
    p.add_argument("domain")

    p = command("show-db-prefix", cmd_show_db_prefix, "show the database prefix")
    p.add_argument("domain")

    p = command("modify", cmd_modify, "modify the properties of an instance")
    p.add_argument("domain")
    for param in MODIFY_PARAMS:
        param.add_to(p)

    p = command(
        "set-disk-quota",
        cmd_set_disk_quota,
        "change the disk quota of an instance (0 removes it)",
    )
    p.add_argument("domain")
    p.add_argument("disk_quota", type=parse_bytes, metavar="disk-quota")

    p = command("fsck", cmd_fsck, "check (and repair) the files of an instance")
    p.add_argument("domain")
    p.add_argument("--index-integrity", action="store_true", help="check the index only")
    p.add_argument(
        "--files-consistency",
        action="store_true",
        help="check metadata against the disk only",
    )
    p.add_argument("--fail-fast", action="store_true", help="stop at the first mismatch")
    p.add_argument("--json", action="store_true", help="one JSON object per mismatch")
    p.add_argument("--repair", action="store_true", help="repair what can be repaired")
    p.add_argument("--check-md5", action="store_true", help="also compare every MD5")

    p = command(
        "set-passphrase",
        cmd_set_passphrase,
        "change the passphrase of an instance (talks to the public server: "
        "see --host/--port)",
    )
    p.add_argument("domain")
    p.add_argument("new_passphrase", metavar="new-passphrase")

    p = command(
        "destroy",
        cmd_destroy,
        "remove an instance and all its data",
        aliases=["rm", "delete", "remove"],
    )
    p.add_argument("domain")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")

    p = command("token-app", cmd_token_app, "generate an application token")
    p.add_argument("domain")
    p.add_argument("slug")
    p.add_argument(
        "--expire",
        type=duration_arg,
        metavar="DURATION",
        help="make the token expire in this time (e.g. 1h)",
    )

    p = command("token-konnector", cmd_token_konnector, "generate a konnector token")
    p.add_argument("domain")
    p.add_argument("slug")

    p = command("token-cli", cmd_token_cli, "generate a CLI token")
    p.add_argument("domain")
    p.add_argument("scopes", nargs="+", metavar="scope")

    for name, handler, help in (
        ("token-oauth", cmd_token_oauth, "generate an OAuth access token"),
        (
            "refresh-token-oauth",
            cmd_refresh_token_oauth,
            "generate an OAuth refresh token",
        ),
    ):
        p = command(name, handler, help)
        p.add_argument("domain")
        p.add_argument("client_id", metavar="client-id")
        p.add_argument("scopes", nargs="+", metavar="scope")
        if name == "token-oauth":
            p.add_argument(
                "--expire",
                type=duration_arg,
                metavar="DURATION",
                help="make the token expire in this time (e.g. 1h)",
            )

    p = command(
        "client-oauth",
        cmd_client_oauth,
        "register an OAuth client and print its client_id",
    )
    for name in ("domain", "redirect_uri", "client_name", "software_id"):
        p.add_argument(name)
    p.add_argument("--json", action="store_true", help="print the whole client as JSON")
    p.add_argument("--allow-login-scope", action="store_true", help="allow login scope")
    for part in _ONBOARDING_PARTS:
        p.add_argument(f"--onboarding-{part}", metavar="VALUE")

    p = command(
        "find-oauth-client",
        cmd_find_oauth_client,
        "find an OAuth client from its software_id",
    )
    p.add_argument("domain")
    p.add_argument("software_id")
