"""Session cookies, session documents, user agents and rate limits."""

import pytest

from cozyd.auth import sessions as S
from cozyd.auth.limits import RateLimiter, Verdict
from cozyd.documents import Documents
from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.storage.sqlite import EmbeddedStore
from cozyd.testing import sync


@pytest.fixture
def instance():
    return Instance.new("alice.cozy.test:8080")


def test_cookie_round_trip(instance):
    value = S.encode_cookie(instance, "0123456789abcdef0123456789abcdef")
    assert S.decode_cookie(instance, value) == "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),
        lambda v: "f" + v[1:] if not v.startswith("f") else "e" + v[1:],
        lambda v: v.split(".")[0],
        lambda v: "",
        lambda v: v + "x" * 300,
        lambda v: "../x." + v.split(".")[1],
    ],
)
def test_forged_cookies_are_refused(instance, tamper):
    value = S.encode_cookie(instance, "0123456789abcdef0123456789abcdef")
    assert S.decode_cookie(instance, tamper(value)) is None


def test_rotating_the_secret_voids_cookies(instance):
    value = S.encode_cookie(instance, "abc")
    other = Instance.new("alice.cozy.test:8080")  # new secrets
    assert S.decode_cookie(other, value) is None
    bob = Instance.new("bob.cozy.test")
    bob.session_secret = instance.session_secret
    assert S.decode_cookie(bob, value) is None  # bound to the domain too


def test_cookie_domain_covers_the_apps(instance):
    assert S.cookie_domain(instance) == ".alice.cozy.test"
    assert S.cookie_domain(Instance.new("café.cozy.test")) == ".xn--caf-dma.cozy.test"
    assert S.cookie_name(instance) == "cozysessid"


@pytest.mark.parametrize(
    "agent,expected",
    [
        (
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/120.0.0.0 Safari/537.36"
            ),
            ("Linux x86_64", "Chrome"),
        ),
        (
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "HeadlessChrome/120.0.0.0 Safari/537.36"
            ),
            ("Linux x86_64", "Headless Chrome"),
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
            ("Windows 10", "Firefox"),
        ),
        (
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
            ),
            ("iOS 17.1", "Safari"),
        ),
        (
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
                "Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91"
            ),
            ("Mac OS X 10.15.7", "Edge"),
        ),
        (
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/120.0.0.0 Mobile Safari/537.36"
            ),
            ("Android 14", "Chrome"),
        ),
        ("io.cozy.drive.mobile-1.2 CozyDrive", ("", "CozyDrive")),
        ("", ("", "")),
    ],
)
def test_user_agents(agent, expected):
    assert S.parse_user_agent(agent) == expected


@pytest.fixture
def store(clock):
    store = EmbeddedStore(None, reactor=clock)
    sync(store.start())
    return store


def test_session_lifetime(store, clock, instance):
    sessions = S.SessionStore(Documents(store), seconds=clock.seconds)
    session = sync(sessions.create(instance, S.Duration.NORMAL))  # creates the db
    assert session.cookie_max_age() is None
    rev = session.rev
    clock.advance(3600)
    assert sync(sessions.get(instance, session.id)).rev == rev  # last_seen not rewritten
    clock.advance(S.DAY)
    seen = sync(sessions.get(instance, session.id))
    assert seen.rev != rev and seen.last_seen == clock.seconds()
    clock.advance(S.MAX_AGE - 1)
    assert sync(sessions.get(instance, session.id)) is not None
    clock.advance(S.MAX_AGE + 1)
    assert sync(sessions.get(instance, session.id)) is None
    assert sync(sessions.all(instance)) == []


def test_durations_and_listing(store, clock, instance):
    sessions = S.SessionStore(Documents(store), seconds=clock.seconds)
    long = sync(sessions.create(instance, S.Duration.LONG))
    short = sync(sessions.create(instance, S.Duration.SHORT))
    assert long.cookie_max_age() == 10 * 365 * S.DAY
    assert short.cookie_max_age() == 300
    listed = {s.id: s for s in sync(sessions.all(instance))}
    assert listed[long.id].long_run and listed[short.id].short_run
    assert sync(sessions.delete_others(instance, long.id)) == 1
    assert [s.id for s in sync(sessions.all(instance))] == [long.id]


def test_login_history(store, clock, instance):
    sessions = S.SessionStore(Documents(store), seconds=clock.seconds)
    sync(
        sessions.record_login(
            instance,
            "sid",
            ip="192.0.2.1",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        )
    )
    rows = sync(
        store.all_docs(db_name(instance.prefix, S.LOGINS_DOCTYPE), include_docs=True)
    )["rows"]
    [doc] = [row["doc"] for row in rows]
    assert doc["ip"] == "192.0.2.1" and doc["session_id"] == "sid"
    assert (doc["os"], doc["browser"]) == ("Linux x86_64", "Firefox")
    assert doc["client_registration"] is False
    assert doc["created_at"].endswith("Z")


def test_rate_limiter_windows(clock):
    limiter = RateLimiter(seconds=clock.seconds)
    verdicts = [limiter.hit("k", limit=3, period=60) for _ in range(5)]
    assert verdicts == [Verdict.OK] * 3 + [Verdict.REACHED, Verdict.EXCEEDED]
    assert limiter.count("k") == 5
    clock.advance(60)
    assert limiter.count("k") == 0
    assert limiter.hit("k", limit=3, period=60) is Verdict.OK
    limiter.reset("k")
    assert limiter.count("k") == 0
