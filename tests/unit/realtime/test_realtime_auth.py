"""The AUTH of a websocket goes through the stack's Guard, on the handshake
request: any token the stack accepts, and an app token bound to the owner's
session only with that session's cookie (sent with the handshake)."""

from __future__ import annotations

import pytest
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from cozyd.auth import tokens
from cozyd.instance.model import Instance
from cozyd.realtime.websocket import AuthenticationFailed
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import sync
from cozyd.web.routing import state_of
from tests.support.auth import DOMAIN, Browser, admin_token, create_instance, onboard


@pytest.fixture
def world(stack, clock):
    admin, owner = Browser(stack.admin), Browser(stack.public)
    assert onboard(owner, create_instance(admin)).status == 200
    instance = Instance.from_doc(
        sync(stack.store.get_doc(INSTANCES_DB, Instance.new(DOMAIN).id))
    )
    root = getattr(stack.public, "_site", stack.public)
    return stack, clock, admin, owner, instance, root._services["realtime"]


def handshake(instance, cookies=None) -> Request:
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"host", [DOMAIN.encode()])
    request.received_cookies = dict(cookies or {})
    state_of(request).instance = instance
    return request


def app_token(stack, clock, instance, session_id: str | None) -> str:
    sync(
        stack.store.put_doc(
            db_name(instance.prefix, "io.cozy.permissions"),
            {
                "_id": "perm-drive",
                "type": "app",
                "source_id": "io.cozy.apps/drive",
                "permissions": {"files": {"type": "io.cozy.files", "verbs": ["GET"]}},
            },
        )
    )
    return tokens.issue(
        instance, tokens.APP, "drive", issued_at=clock.seconds(), session_id=session_id
    )


def test_an_app_token_of_the_owner_needs_the_session_cookie(world):
    stack, clock, _admin, owner, instance, service = world
    cookie = owner.cookies["cozysessid"]
    token = app_token(stack, clock, instance, cookie.split(".")[0])
    access = sync(
        service._authenticate(handshake(instance, {b"cozysessid": cookie.encode()}), token)
    )
    assert access.may_subscribe("io.cozy.files", None)
    assert not access.may_subscribe("io.cozy.contacts", None)
    with pytest.raises(AuthenticationFailed):
        sync(service._authenticate(handshake(instance), token))  # no cookie
    with pytest.raises(AuthenticationFailed):
        sync(
            service._authenticate(
                handshake(instance, {b"cozysessid": b"forged.cookie"}), token
            )
        )


def test_cli_tokens_of_the_instance_only(world):
    _stack, _clock, admin, _owner, instance, service = world
    token = admin_token(admin, Audience="cli", Scope="io.cozy.events")
    request = handshake(instance)
    access = sync(service._authenticate(request, token))
    assert access.may_subscribe("io.cozy.events", None)
    assert request.getHeader(b"authorization") is None  # not left on the request
    other = Instance.new("bob.cozy.test")
    with pytest.raises(AuthenticationFailed):
        sync(service._authenticate(handshake(other), token))
    with pytest.raises(AuthenticationFailed):
        sync(service._authenticate(handshake(instance), token + "x"))
