"""The OAuth client model: metadata checks, secrets, names, rate limit."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cozyd.auth import tokens
from cozyd.auth.clients import (
    OAuthClients,
    RegistrationError,
    RegistrationRateLimited,
    linked_app_slug,
    public_view,
    secrets_equal,
)
from cozyd.documents import Documents
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import PermissionResolver
from cozyd.storage.names import db_name
from cozyd.storage.sqlite import EmbeddedStore
from cozyd.testing import sync

REDIRECT = "https://client.example.org/cb"


@pytest.fixture
def store(clock):
    store = EmbeddedStore(None, reactor=clock)
    sync(store.start())
    return store


@pytest.fixture
def instance(store):
    instance = Instance.new("alice.cozy.test:8080", domain_aliases=["alias.cozy.test"])
    sync(store.ensure_db(db_name(instance.prefix, "io.cozy.oauth.clients")))
    return instance


@pytest.fixture
def clients(store, clock):
    resolver = PermissionResolver(store, seconds=clock.seconds)
    return OAuthClients(
        Documents(store),
        on_change=resolver.forget_client,
        seconds=clock.seconds,
        registrations_per_hour=3,
    )


def metadata(**fields):
    return {
        "redirect_uris": [REDIRECT],
        "client_name": "Client",
        "software_id": "sw",
        **fields,
    }


def test_register_stores_a_pending_client(clients, store, instance):
    client = sync(
        clients.register(
            instance, metadata(software_id="registry://drive", software_version="1.2")
        )
    )
    stored = sync(clients.get(instance, client["client_id"]))
    assert stored["pending"] is True
    assert stored["cozyMetadata"]["createdByApp"] == "drive"
    assert stored["cozyMetadata"]["createdByAppVersion"] == "1.2"
    assert stored["cozyMetadata"]["createdAt"] == "2027-01-15T08:00:00Z"
    claims = tokens.parse(
        instance,
        client["registration_access_token"],
        now=1_800_000_000,
        audiences=(tokens.REGISTRATION,),
    )
    assert claims.subject == client["client_id"]
    assert clients.check_registration_token(
        instance, stored, client["registration_access_token"]
    )
    assert not clients.check_registration_token(instance, stored, None)
    other = Instance.new("bob.cozy.test")
    assert not clients.check_registration_token(
        other, stored, client["registration_access_token"]
    )


def test_secrets_and_ids_are_random(clients, instance):
    first = sync(clients.register(instance, metadata()))
    second = sync(clients.register(instance, metadata()))
    assert first["client_id"] != second["client_id"]
    assert first["client_secret"] != second["client_secret"]
    assert len(first["client_secret"]) == 32  # 24 bytes, URL-safe base64


@pytest.mark.parametrize(
    "uri",
    [
        "http://alice.cozy.test:8080/cb",
        "https://ALIAS.cozy.test/cb",
        "https://x.org/a#b",
        "http://me@alice.cozy.test:8080/cb",
        "https://x.org/a#",
        "data:text/html,hi",
        "vbscript:x",
        "relative/path",
        "https://x.org/\nfoo",
        "https://x.org:99999/",
        "",
    ],
)
def test_refused_redirect_uris(clients, instance, uri):
    with pytest.raises(RegistrationError) as caught:
        sync(clients.register(instance, metadata(redirect_uris=[uri])))
    assert caught.value.error == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:8000/callback",
        "https://alice.cozy.test/cb",  # another port
        "cozy://oauth",
        "com.example.app:/oauth2redirect",
        "urn:ietf:wg:oauth:2.0:oob",
    ],
)
def test_accepted_redirect_uris(clients, instance, uri):
    assert sync(clients.register(instance, metadata(redirect_uris=[uri])))


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "redirect_uris",
                "client_name",
                "software_id",
                "client_kind",
                "logo_uri",
                "flagship",
                "notification_platform",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(),
            st.lists(st.text(max_size=30), max_size=3),
        ),
    )
)
def test_any_metadata_is_either_accepted_or_refused_cleanly(body):
    from cozyd.auth.clients import _declared_metadata

    instance = Instance.new("alice.cozy.test")
    try:
        result = _declared_metadata(instance, body)
    except RegistrationError as error:
        assert error.status == 400 and error.error
        return
    assert result["client_name"] and result["software_id"] and result["redirect_uris"]
    assert "flagship" not in result


def test_rate_limit_window(clients, instance, clock):
    for _ in range(3):
        clients.check_rate(instance)
    with pytest.raises(RegistrationRateLimited) as caught:
        clients.check_rate(instance)
    assert caught.value.status == 404
    clients.check_rate(Instance.new("bob.cozy.test"))
    clock.advance(3600)
    clients.check_rate(instance)


def test_update_keeps_what_the_server_manages(clients, store, instance):
    client = sync(clients.register(instance, metadata(), allow_login_scope=True))
    stored = sync(clients.get(instance, client["client_id"]))
    stored["flagship"] = True
    stored["_rev"] = sync(
        store.put_doc(db_name(instance.prefix, "io.cozy.oauth.clients"), stored)
    )["rev"]
    updated = sync(
        clients.update(
            instance,
            stored,
            {
                "client_id": client["client_id"],
                "redirect_uris": [REDIRECT],
                "client_name": "Renamed",
                "software_id": "sw",
                "flagship": False,
                "allow_login_scope": False,
                "pending": False,
            },
        )
    )
    assert updated["flagship"] is True and updated["allow_login_scope"] is True
    assert updated["pending"] is True and updated["client_name"] == "Renamed"
    assert updated["client_secret"] == client["client_secret"]


def test_mark_used_and_delete(clients, instance):
    client = sync(clients.register(instance, metadata()))
    stored = sync(clients.get(instance, client["client_id"]))
    used = sync(clients.mark_used(instance, stored))
    assert "pending" not in used
    assert sync(clients.mark_used(instance, used)) is used  # nothing to write
    sync(clients.delete(instance, stored))  # an old revision: still deleted
    assert sync(clients.get(instance, client["client_id"])) is None
    sync(clients.delete(instance, stored))  # idempotent


def test_list_pages(clients, instance):
    ids = sorted(
        sync(clients.register(instance, metadata()))["client_id"] for _ in range(5)
    )
    page, cursor = sync(clients.list(instance, limit=2))
    seen = [c["_id"] for c in page]
    while cursor:
        page, cursor = sync(clients.list(instance, limit=2, cursor=cursor))
        seen += [c["_id"] for c in page]
    assert seen == ids


def test_helpers():
    assert linked_app_slug("registry://drive/stable") == "drive"
    assert linked_app_slug("github.com/x") == ""
    assert secrets_equal("a", "a") and not secrets_equal("a", "b")
    assert not secrets_equal("", "")
    view = public_view({"_id": "x", "_rev": "1-a", "client_secret": "s"}, secret=False)
    assert view == {"client_id": "x", "client_secret_expires_at": 0}
