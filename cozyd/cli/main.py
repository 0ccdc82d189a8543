"""``cozyctl``: the admin command line of cozyd, a thin client of its admin API.

``cozyctl <noun> <command> [args] [flags]``, as ``cozy-stack``. Each noun is
a module with ``register(nouns, common)`` adding its commands, each command
setting ``handler(args, ctx) -> exit code``. To add a noun (``apps``,
``konnectors``, ``jobs``, ``triggers``), write its module and list it in
``NOUNS``.

Exit codes: 0 success, 1 error (``Error: …`` on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cozyd import __version__
from cozyd.cli import apps, config, files, instances, jobs, konnectors, triggers
from cozyd.cli.client import DEFAULT_PASSPHRASE_FILE, Context
from cozyd.cli.output import CLIError, info

NOUNS = (instances, config, files, apps, konnectors, jobs, triggers)


def _common_flags() -> argparse.ArgumentParser:
    """Global flags, accepted before and after the noun and the command.

    Their default is SUPPRESS at every level so that a flag given early is
    not reset by a later parser; ``Context.from_args`` applies env and
    defaults.
    """
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("global options")
    group.add_argument(
        "--admin-host",
        metavar="HOST",
        help="admin server host (env COZY_ADMIN_HOST, default localhost)",
    )
    group.add_argument(
        "--admin-port",
        metavar="PORT",
        help="admin server port (env COZY_ADMIN_PORT, default 6060)",
    )
    group.add_argument(
        "--host",
        metavar="HOST",
        help="public server host (env COZY_HOST, default localhost)",
    )
    group.add_argument(
        "-p",
        "--port",
        metavar="PORT",
        help="public server port (env COZY_PORT, default 8080)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="cozyctl",
        parents=[common],
        allow_abbrev=False,
        description="Administer a cozyd server through its admin API.",
        epilog="The admin passphrase is read from COZY_ADMIN_PASSPHRASE, else "
        "from the file named by COZY_ADMIN_PASSPHRASE_FILE (default "
        f"{DEFAULT_PASSPHRASE_FILE}, written by the Debian package, when "
        "readable), else asked on the terminal. COZY_ADMIN_TIMEOUT sets the request "
        "timeout (e.g. 30s, 2m; default 15s).",
    )
    parser.add_argument("--version", action="version", version=f"cozyctl {__version__}")
    nouns = parser.add_subparsers(dest="noun", metavar="<noun>", required=True)
    for noun in NOUNS:
        noun.register(nouns, common)
    return parser


def _bool_value_flags() -> frozenset[str]:
    return frozenset().union(*(getattr(n, "BOOL_VALUE_FLAGS", ()) for n in NOUNS))


def expand_bool_flags(argv: Sequence[str]) -> list[str]:
    """``--blocked`` → ``--blocked=true`` for flags that also take
    ``=false``, so that argparse never takes the next word as their value."""
    flags = _bool_value_flags()
    result: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return result + list(argv[i:])
        result.append(f"{arg}=true" if arg in flags else arg)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(expand_bool_flags(args_list))
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        ctx = Context.from_args(args, os.environ)
        return args.handler(args, ctx)
    except CLIError as exc:
        for line in exc.context:
            info(line)
        info(f"Error: {exc.message}")
        return 1
    except KeyboardInterrupt:
        info()
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): nothing more to say.
        # Point stdout at /dev/null so the final flush does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
