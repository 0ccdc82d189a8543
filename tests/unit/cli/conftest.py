"""The cli tests' fixtures ``admin`` and ``cli`` (see tests/support/cli.py)."""

from tests.support.cli import admin_fixture, cli_fixture

__all__ = ["admin_fixture", "cli_fixture"]
