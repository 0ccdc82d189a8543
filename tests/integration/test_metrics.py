"""GET /metrics on the admin API: Prometheus text, behind the passphrase."""

from __future__ import annotations

import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cozyd.testing import TEST_ADMIN_PASSPHRASE
from tests.support.daemon import http

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _scrape(daemon, passphrase=TEST_ADMIN_PASSPHRASE):
    headers = {}
    if passphrase is not None:
        token = base64.b64encode(f"admin:{passphrase}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return http("GET", daemon.admin_url + "/metrics", headers=headers)


def test_metrics_are_scraped_through_the_admin_api(daemon):
    assert daemon.cozyctl("instances", "add", "alice.cozy.test").returncode == 0
    for _ in range(3):
        assert (
            http("GET", daemon.public_url + "/status", host="alice.cozy.test").status == 200
        )
    assert http(
        "GET", daemon.public_url + "/data/io.cozy.nothing/x", host="alice.cozy.test"
    ).status in (401, 403)
    assert _scrape(daemon, passphrase=None).status == 401
    assert _scrape(daemon, passphrase="wrong").status == 401
    response = _scrape(daemon)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.body.decode())
    status_ok = (
        "cozyd_http_requests_total",
        (("listener", "public"), ("service", "status"), ("status", "200")),
    )
    assert samples[status_ok] == 3
    assert any(
        name == "cozyd_http_requests_total" and dict(labels)["service"] == "data"
        for name, labels in samples
    )
    assert (
        samples[
            (
                "cozyd_http_request_duration_seconds_count",
                (("listener", "public"), ("service", "status")),
            )
        ]
        == 3
    )
    assert any(
        name == "cozyd_http_requests_total" and dict(labels)["listener"] == "admin"
        for name, labels in samples
    )
    engine = "couchdb" if daemon.couchdb_url else "embedded"
    storage = [
        v
        for (name, labels), v in samples.items()
        if name == "cozyd_storage_call_duration_seconds_count"
        and dict(labels)["engine"] == engine
    ]
    assert storage and sum(storage) > 0
    assert samples[("cozyd_instances_cached", ())] >= 1
    assert ("cozyd_threadpool_queue_depth", (("pool", "default"),)) in samples
    # Hosts and paths of clients do not become labels.
    assert http("GET", daemon.public_url + "/no-such-thing-123", host="x.test").status
    text = _scrape(daemon).body.decode()
    assert "no-such-thing-123" not in text
