"""``cozyctl config …``: local configuration helpers (no server needed)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from cozyd import adminpass
from cozyd.cli.client import Context, has_terminal
from cozyd.cli.output import CLIError, info, out

# The name the daemon looks for in its configuration directory.
ADMIN_PASSPHRASE_FILE = "cozy-admin-passphrase"
# The key pair of the accounts' credentials: <name>.enc and <name>.dec.
CREDENTIALS_KEY_FILE = "cozy-credentials"


def _ask_passphrase() -> str:
    if not has_terminal():
        raise CLIError("no passphrase: set COZY_ADMIN_PASSPHRASE or run from a terminal")
    try:
        first = getpass.getpass("Passphrase: ", stream=sys.stderr)
        second = getpass.getpass("Confirmation: ", stream=sys.stderr)
    except EOFError:
        raise CLIError("no passphrase given") from None
    if first != second:
        raise CLIError("Passphrase mismatch")
    if not first:
        raise CLIError("Empty passphrase is forbidden")
    return first


def cmd_passwd(args: argparse.Namespace, ctx: Context) -> int:
    path = None
    if args.file:
        path = os.path.abspath(os.path.expanduser(args.file))
        if os.path.isdir(path):
            path = os.path.join(path, ADMIN_PASSPHRASE_FILE)
        info(f"Hashed passphrase will be written in {path}")
    passphrase = ctx.env.get("COZY_ADMIN_PASSPHRASE") or _ask_passphrase()
    line = adminpass.hash_passphrase(passphrase)
    if path is None:
        out(line)
        return 0
    try:
        adminpass.write_hash_file(path, line)
    except OSError as exc:
        raise CLIError(f"could not write {path}: {exc.strerror or exc}") from None
    info(f"Hashed passphrase written in {path}")
    return 0


def cmd_gen_keys(args: argparse.Namespace, ctx: Context) -> int:
    from cozyd.konnectors.accounts import gen_keys

    path = os.path.abspath(os.path.expanduser(args.filepath))
    if os.path.isdir(path):
        path = os.path.join(path, CREDENTIALS_KEY_FILE)
    try:
        enc, dec = gen_keys(path)
    except FileExistsError as exc:
        raise CLIError(f"{exc} already exists: not overwritten") from None
    except OSError as exc:
        raise CLIError(f"could not write {path}: {exc.strerror or exc}") from None
    out(f"keyfiles written in:\n\t{enc}\n\t{dec}")
    return 0


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``config`` noun and its commands to cozyctl's parser."""
    noun = nouns.add_parser(
        "config",
        parents=[common],
        allow_abbrev=False,
        help="show and manage configuration elements",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)
    p = commands.add_parser(
        "passwd",
        aliases=["password", "passphrase", "pass"],
        parents=[common],
        allow_abbrev=False,
        help="hash the admin passphrase into a file",
        description="Hash the admin passphrase (COZY_ADMIN_PASSPHRASE, or asked) "
        "and write it to FILE (mode 0600), or print it if no FILE.",
    )
    p.add_argument("file", nargs="?", metavar="FILE")
    p.set_defaults(handler=cmd_passwd)
    p = commands.add_parser(
        "gen-keys",
        parents=[common],
        allow_abbrev=False,
        help="generate a key pair for the encryption of credentials",
        description="Generate the key pair of the accounts' credentials: "
        "FILEPATH.enc (encryptor) and FILEPATH.dec (decryptor), mode 0400. "
        "A directory: its cozy-credentials.enc/.dec, the names cozyd looks "
        "for next to its configuration file.",
    )
    p.add_argument("filepath", metavar="FILEPATH")
    p.set_defaults(handler=cmd_gen_keys)
