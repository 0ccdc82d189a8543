"""Shared fixtures and settings. The Twisted reactor is driven by
pytest-twisted.

Hypothesis profiles: ``fast`` (the default: a few examples per property,
so the whole suite stays quick) and ``thorough`` (many examples, for CI
nights or after touching a parser), chosen with ``COZYD_HYPOTHESIS=thorough``.
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.support.couchdb_server",
    "tests.support.redis_server",
    "tests.support.stores",
]

settings.register_profile(
    "fast", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough",
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("COZYD_HYPOTHESIS", "fast"))
