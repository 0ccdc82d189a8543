import pytest

from tests.support.daemon import Daemon


@pytest.fixture
def make_daemon(tmp_path, request):
    """Start daemons (embedded engine unless ``couchdb=True``); all are
    stopped at the end of the test, whatever happens."""
    started = []

    def make(name="cozyd", *, couchdb=False, start=True, **kwargs):
        url = request.getfixturevalue("couchdb_url") if couchdb else None
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
