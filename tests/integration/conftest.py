import base64
import json
import urllib.request
from urllib.parse import quote, urlsplit

import pytest

from tests.support.couchdb_server import real_couchdb_url, start_pouchdb_server
from tests.support.daemon import Daemon


def wipe_cozyd_databases(url: str) -> None:
    """Delete what earlier tests left on a shared real CouchDB test server
    (only the databases cozyd names: global/…, secrets/…, cozy…)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}/"
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def call(method, path):
        request = urllib.request.Request(base + path, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    for name in call("GET", "_all_dbs"):
        if name.startswith(("global", "secrets", "cozy")):
            call("DELETE", quote(name, safe=""))


@pytest.fixture
def fresh_couchdb(tmp_path_factory):
    """A CouchDB server with no cozyd database: a new pouchdb-server for
    each test, or the real CouchDB of COZYD_TEST_COUCHDB_URL wiped first."""
    servers = []

    def get():
        url = real_couchdb_url()
        if url:
            wipe_cozyd_databases(url)
            return url
        url, stop = start_pouchdb_server(tmp_path_factory.mktemp("pouchdb"))
        servers.append(stop)
        return url

    yield get
    for stop in servers:
        stop()


@pytest.fixture
def make_daemon(tmp_path, fresh_couchdb):
    """Start daemons (embedded engine unless ``couchdb=True``); all are
    stopped at the end of the test, whatever happens."""
    started = []

    def make(name="cozyd", *, couchdb=False, start=True, **kwargs):
        url = fresh_couchdb() if couchdb else None
        daemon = Daemon(str(tmp_path / name), couchdb_url=url, **kwargs)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(params=["embedded", "couchdb"])
def daemon(request, make_daemon):
    return make_daemon(couchdb=request.param == "couchdb")


@pytest.fixture(params=["embedded", "couchdb"])
def engine_name(request):
    return request.param


@pytest.fixture
def couchdb_url_if_any(daemon):
    """The CouchDB URL (with credentials, no path) the daemon uses, if any."""
    return daemon.couchdb_url
