"""Every service is a Klein app (``cozyd.web.routing.Service``): raw path
segments through Klein's werkzeug map, trailing slashes, 404 and 405 in each
service's own style, and the public root reaching each app."""

from __future__ import annotations

import io

import pytest
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from werkzeug.routing import MapAdapter

from cozyd.web import routing
from cozyd.web.common import json_response, jsonapi_errors
from cozyd.web.routing import Service, route, state_of
from cozyd.web.site import CozySite
from tests.support.data import DOMAIN, Data, cli_token, new_instance
from tests.unit.web.conftest import ADMIN, AUTH

ODD_ID = "a%2Fb%25c"  # the id "a/b%c", escaped


class Echo(Service):
    errors = jsonapi_errors

    @route("ids/{name}", "GET", "PUT")
    def one(self, request, name):
        return json_response(request, {"name": name})

    @route("ids/_fixed", "POST")
    def fixed(self, request):
        return json_response(request, {"fixed": True})


@pytest.fixture
def echo(stack, admin, public):
    new_instance(admin)
    stack.public._site._services["echo"] = Echo()
    return public


def test_escaped_slashes_and_percents_reach_data_handlers(admin, public):
    new_instance(admin)
    data = Data(public, cli_token(admin))
    put = data.put(f"/io.cozy.notes/{ODD_ID}", {"a": 1})
    assert put.status == 200, put.body
    assert put.json()["id"] == "a/b%c"
    got = data.get(f"/io.cozy.notes/{ODD_ID}")
    assert got.status == 200 and got.json()["_id"] == "a/b%c"
    # The same document with a trailing slash, not a redirect.
    assert data.get(f"/io.cozy.notes/{ODD_ID}/").json()["_id"] == "a/b%c"
    # Unescaped, the slash splits the id: another path, no such route.
    assert data.get("/io.cozy.notes/a/b%25c").status == 404


def test_escaped_segments_on_another_service(echo):
    base = f"http://{DOMAIN}/echo/ids"
    assert echo.request("GET", f"{base}/{ODD_ID}").json() == {"name": "a/b%c"}
    assert echo.request("PUT", f"{base}/%C3%A9t%C3%A9/").json() == {"name": "été"}
    assert echo.request("GET", f"{base}/x/").json() == {"name": "x"}
    # A fixed name wins over the parameter, whatever the method.
    assert echo.request("POST", f"{base}/_fixed").json() == {"fixed": True}
    refused = echo.request("GET", f"{base}/_fixed")
    assert refused.status == 405
    assert refused.json()["errors"][0]["code"] == "method_not_allowed"
    assert echo.request("GET", f"{base}/%FF").status == 400


def test_404_and_405_in_each_style(admin, public):
    new_instance(admin)
    data = Data(public, cli_token(admin))
    # /data: cozy-stack's echo errors.
    assert data.request("PATCH", "/io.cozy.notes/x").json() == {
        "error": "code=405, message=Method Not Allowed"
    }
    assert data.request("DELETE", "/io.cozy.notes/_all_docs").status == 405
    assert data.get("/io.cozy.notes/x/y/z").json() == {
        "error": "code=404, message=Not Found"
    }
    bad = data.get("/io.cozy.notes/%FF")
    assert bad.status == 400 and "UTF-8" in bad.json()["error"]
    # JSON:API elsewhere.
    missing = public.request("GET", f"http://{DOMAIN}/settings/nothing/here")
    assert missing.status == 404
    assert missing.json()["errors"][0]["detail"] == "no such route"
    wrong = public.request("DELETE", f"http://{DOMAIN}/settings/passphrase")
    assert wrong.status == 405
    assert wrong.json()["errors"][0]["code"] == "method_not_allowed"
    # The admin API tells nothing before its passphrase.
    assert admin.request("GET", ADMIN + "/nothing").status == 401
    unknown = admin.request("GET", ADMIN + "/nothing", auth=AUTH)
    assert unknown.status == 404 and unknown.headers["content-type"].endswith("json")
    assert admin.request("PATCH", ADMIN + "/instances", auth=AUTH).status == 405


def test_every_service_is_a_klein_app_the_root_reaches(stack, admin, public, monkeypatch):
    new_instance(admin)
    services = {*stack.public._site._services.values(), stack.admin}
    for service in services:
        assert isinstance(type(service).app, Klein), service
        assert isinstance(service.klein, KleinResource)
        assert service.app.url_map is type(service).app.url_map
        assert service.app.url_map.converters["seg"] is routing.RawSegment
    subclasses = set()
    pending = [Service]
    while pending:
        for sub in pending.pop().__subclasses__():
            subclasses.add(sub)
            pending.append(sub)
    assert all(isinstance(sub.__dict__["app"], Klein) for sub in subclasses)
    token = cli_token(admin)
    rendered = []
    execute = Klein.execute_endpoint

    def spy(self, endpoint, request, *args, **kwargs):
        rendered.append(self._instance)
        return execute(self, endpoint, request, *args, **kwargs)

    monkeypatch.setattr(Klein, "execute_endpoint", spy)
    for path in (
        "/data/io.cozy.notes/_all_docs",
        "/permissions/self",
        "/version",
        "/settings/instance",
    ):
        response = public.request(
            "GET", f"http://{DOMAIN}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status in (200, 403, 404), (path, response.body)
    names = [type(service).__name__ for service in rendered]
    assert names == [
        "DataService",
        "PermissionsService",
        "StatusService",
        "SettingsService",
    ]


def test_nothing_renders_a_werkzeug_page(echo):
    for method, path in (
        ("GET", "/echo/nothing"),
        ("DELETE", "/echo/ids/x"),
        ("GET", "/echo/ids/x/y"),
    ):
        response = echo.request(method, f"http://{DOMAIN}{path}")
        assert response.status in (404, 405)
        assert b"<" not in response.body and "errors" in response.json()


def _connected(stack):
    """A connection to the public site, on a transport kept in memory."""
    site = CozySite(stack.public, max_body_size=1 << 20)
    site.logFile = io.StringIO()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_escapes_through_the_site(stack, admin):
    """Through the HTTP site on a transport: escaped UTF-8 and an escaped
    slash reach the handler, with the request's state and a length."""
    new_instance(admin)
    stack.public._site._services["echo"] = Echo()
    protocol, transport = _connected(stack)
    seen = []
    serve = Service.serve

    def spy(self, request, found, params):
        seen.append(state_of(request).instance.domain)
        return serve(self, request, found, params)

    Service.serve = spy
    try:
        for raw, name in ((b"%C3%A9", "é"), (ODD_ID.encode(), "a/b%c")):
            transport.clear()
            protocol.dataReceived(
                b"GET /echo/ids/"
                + raw
                + b" HTTP/1.1\r\nHost: "
                + DOMAIN.encode()
                + b"\r\n\r\n"
            )
            head, _, body = transport.value().partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), transport.value()
            assert b"Content-Length" in head
            assert body.decode() == f'{{"name":"{name}"}}'
    finally:
        Service.serve = serve
    assert seen == [DOMAIN, DOMAIN]


def test_a_host_that_is_not_utf8_gets_a_json_400(stack):
    protocol, transport = _connected(stack)
    protocol.dataReceived(b"GET /version HTTP/1.1\r\nHost: \xff.test\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), transport.value()
    assert b"not UTF-8" in body and b"errors" in body


def test_a_subclass_has_its_own_app_and_routes():
    class More(Echo):
        @route("ids/_more", "GET")
        def more(self, request):
            return json_response(request, {"more": True})

    assert More.app is not Echo.app
    from cozyd.testing import MemoryClient

    base, more = MemoryClient(Echo()), MemoryClient(More())
    assert more.request("GET", "http://x/ids/_more").json() == {"more": True}
    # The base knows nothing of the subclass's fixed name.
    assert base.request("GET", "http://x/ids/_more").json() == {"name": "_more"}
    assert more.request("GET", "http://x/ids/_fixed").status == 405


def test_a_request_is_matched_once(stack, admin, monkeypatch):
    """The site matches a request with a body for its body policy; the
    service takes that match instead of matching again. A request without
    a body is matched once, by the service; a path with no route is left
    to Klein's own rendering (its error handlers answer)."""
    new_instance(admin)
    token = cli_token(admin)
    protocol, transport = _connected(stack)
    matches = []
    match = MapAdapter.match

    def spy(self, *args, **kwargs):
        matches.append(self.path_info)
        return match(self, *args, **kwargs)

    monkeypatch.setattr(MapAdapter, "match", spy)

    def send(method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
        transport.clear()
        matches.clear()
        protocol.dataReceived(
            f"{method} {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head, _, answer = transport.value().partition(b"\r\n\r\n")
        return head.split(b"\r\n", 1)[0], answer

    status, body = send("PUT", "/data/io.cozy.notes/one", b'{"a": 1}')
    assert status == b"HTTP/1.1 200 OK", body
    assert len(matches) == 1, matches
    status, body = send("POST", "/data/io.cozy.notes/", b'{"b": 2}')
    assert status == b"HTTP/1.1 201 Created", body
    assert len(matches) == 1, matches
    status, body = send("GET", "/data/io.cozy.notes/one")
    assert status == b"HTTP/1.1 200 OK" and b'"a":1' in body, body
    assert len(matches) == 1, matches
    status, body = send("GET", "/data/io.cozy.notes/one/two/three")
    assert status == b"HTTP/1.1 404 Not Found", body
    assert len(matches) == 2, matches  # the router's, then Klein's own
