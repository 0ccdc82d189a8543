"""Shared fixtures. The Twisted reactor is driven by pytest-twisted."""

pytest_plugins = ["tests.support.couchdb_server", "tests.support.stores"]
