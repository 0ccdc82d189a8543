"""``cozyctl konnectors run``: the trigger it picks, its flags."""

from __future__ import annotations

import argparse

import pytest

from cozyd.cli.konnectors_run import pick_trigger, register_run
from cozyd.cli.output import CLIError


def trigger(id_, slug, account=""):
    return {
        "id": id_,
        "attributes": {
            "worker": "konnector",
            "message": {"konnector": slug, "account": account},
        },
    }


def test_pick_the_only_trigger_of_the_konnector():
    triggers = [trigger("t1", "other", "a"), trigger("t2", "demo", "b")]
    assert pick_trigger(triggers, "demo", "") == "t2"


def test_several_accounts_need_the_flag():
    triggers = [trigger("t1", "demo", "a"), trigger("t2", "demo", "b")]
    with pytest.raises(CLIError, match="use the --account-id flag"):
        pick_trigger(triggers, "demo", "")
    assert pick_trigger(triggers, "demo", "b") == "t2"
    with pytest.raises(CLIError, match="linked to account with id 'c'"):
        pick_trigger(triggers, "demo", "c")


def test_no_trigger():
    with pytest.raises(CLIError, match="not activated"):
        pick_trigger([trigger("t1", "other")], "demo", "")


def test_flags():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    register_run(commands, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["run", "demo", "--domain", "alice.test", "--account-id", "x"])
    assert (args.slug, args.domain, args.account_id) == ("demo", "alice.test", "x")
    assert args.handler.__name__ == "cmd_run"
