"""Access codes and PKCE (the domain side of the authorization-code flow)."""

import hashlib

import pytest

from cozyd.auth.oauth import ACCESS_CODES_DOCTYPE, AccessCodes, code_challenge, pkce_matches
from cozyd.documents import Documents
from cozyd.instance.model import Instance
from cozyd.storage.names import db_name
from cozyd.storage.sqlite import EmbeddedStore
from cozyd.testing import sync


@pytest.fixture
def store(clock):
    store = EmbeddedStore(None, reactor=clock)
    sync(store.start())
    return store


@pytest.fixture
def codes(store, clock):
    return AccessCodes(Documents(store), seconds=clock.seconds)


INSTANCE = Instance.new("alice.cozy.test")


def test_rfc7636_example():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_matches(verifier, code_challenge(verifier))
    assert not pkce_matches("", code_challenge(""))
    assert not pkce_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN")


def test_codes_are_stored_hashed_and_used_once(codes, store):
    code = sync(codes.create(INSTANCE, "client1", "io.cozy.files", "challenge"))
    assert len(code) >= 32
    db = db_name(INSTANCE.prefix, ACCESS_CODES_DOCTYPE)
    ids = [
        row["id"]
        for row in sync(store.all_docs(db))["rows"]
        if not row["id"].startswith("_design/")
    ]
    assert ids == [hashlib.sha256(code.encode()).hexdigest()]  # never the code itself
    grant = sync(codes.consume(INSTANCE, code))
    assert (grant.client_id, grant.scope, grant.challenge) == (
        "client1",
        "io.cozy.files",
        "challenge",
    )
    assert sync(codes.consume(INSTANCE, code)) is None
    assert sync(codes.consume(INSTANCE, "")) is None
    assert sync(codes.consume(Instance.new("bob.cozy.test"), code)) is None


def test_codes_expire(codes, clock):
    code = sync(codes.create(INSTANCE, "client1", "io.cozy.files"))
    clock.advance(300)
    later = sync(codes.create(INSTANCE, "client1", "io.cozy.files"))
    clock.advance(1)
    assert sync(codes.consume(INSTANCE, code)) is None
    assert sync(codes.consume(INSTANCE, later)) is not None


def test_stale_codes_are_purged(codes, store, clock):
    for _ in range(3):
        sync(codes.create(INSTANCE, "client1", "io.cozy.files"))
    clock.advance(301)
    fresh = sync(codes.create(INSTANCE, "client1", "io.cozy.files"))
    db = db_name(INSTANCE.prefix, ACCESS_CODES_DOCTYPE)
    ids = [
        row["id"]
        for row in sync(store.all_docs(db))["rows"]
        if not row["id"].startswith("_design/")
    ]
    assert ids == [hashlib.sha256(fresh.encode()).hexdigest()]
