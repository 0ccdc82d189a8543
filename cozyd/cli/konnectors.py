"""``cozyctl konnectors …`` (alias ``konnector``): install, update,
uninstall, list and show an instance's konnectors, as ``cozy-stack
konnectors`` (reference/cozy-stack-docs/cli/cozy-stack_konnectors_*.md),
through the admin API (``/instances/<domain>/konnectors/<slug>``); the
same commands as ``cozyctl apps``, with ``--parameters``. ``run`` comes
with the jobs work (``cozyd/cli/konnectors_run.py``).
"""

from __future__ import annotations

import argparse

from cozyd.cli.apps import KONNECTORS, register_commands


def register(nouns: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    noun = nouns.add_parser(
        "konnectors",
        aliases=["konnector"],
        parents=[common],
        allow_abbrev=False,
        help="interact with the konnectors",
    )
    commands = noun.add_subparsers(dest="command", metavar="<command>", required=True)
    register_commands(KONNECTORS, commands, common, konnector=True)
    # konnectors_run.register_run(commands, common)  # `run`: the jobs work adds it here
