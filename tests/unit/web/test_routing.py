"""The one route declaration (``cozyd.web.routing``): matching on the raw
path, policies, error styles, the request state, and ``shield``; then the
parameter parsers every service shares, through HTTP where it matters
(integers past 64 bits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from cozyd.errors import BadRequest, CozyError
from cozyd.testing import MemoryClient, result_of
from cozyd.web.common import json_response, jsonapi_errors
from cozyd.web.params import INT64_MAX, INT64_MIN, parse_bool, parse_int
from cozyd.web.routing import (
    BUFFERED,
    NO_BODY,
    MethodNotAllowed,
    RequestState,
    RouteNotFound,
    Router,
    Service,
    json_body,
    route,
    shield,
    split_raw_path,
    state_of,
    streamed,
)
from tests.support.data import BASE, Data, cli_token, new_instance


def couchish(service, request, error):
    return json_response(request, {"error": type(error).__name__}, status=418)


class Toy(Service):
    errors = jsonapi_errors

    @route("things", "GET")
    def list_things(self, request):
        return json_response(request, {"things": []})

    @route("things/{name}", "GET", "PUT")
    async def one(self, request, name):
        return json_response(
            request, {"name": name, "route": state_of(request).route.handler.__name__}
        )

    @route("things/_count", "POST", errors=couchish)
    async def count(self, request):
        raise BadRequest("no count")

    @route("boom", "GET")
    async def boom(self, request):
        raise ZeroDivisionError("oops")

    @route("big", "POST", body=json_body(10), mine="yes")
    async def big(self, request):
        return json_response(request, {"mine": state_of(request).route.option("mine")})


@pytest.fixture
def toy():
    return MemoryClient(Toy())


def test_routes_match_the_raw_path(toy):
    assert toy.request("GET", "http://x/things").json() == {"things": []}
    assert toy.request("GET", "http://x/things/").json() == {"things": []}
    # An escaped slash stays in its segment; escapes are undone per segment.
    one = toy.request("GET", "http://x/things/a%2Fb%20c").json()
    assert one == {"name": "a/b c", "route": "one"}
    assert toy.request("PUT", "http://x/things/z").json()["name"] == "z"
    # HEAD comes with GET.
    head = toy.request("HEAD", "http://x/things/z")
    assert head.status == 200 and head.body == b""


def test_fixed_names_win_and_other_methods_get_405(toy):
    # things/_count is POST only: GET on it is not things/{name}.
    response = toy.request("GET", "http://x/things/_count")
    assert response.status == 405
    assert response.json()["errors"][0]["code"] == "method_not_allowed"
    missing = toy.request("GET", "http://x/nothing/here")
    assert (
        missing.status == 404 and missing.json()["errors"][0]["detail"] == "no such route"
    )
    bad = toy.request("GET", "http://x/things/%FF")
    assert bad.status == 400


def test_a_route_may_have_its_own_error_style_and_options(toy):
    assert toy.request("POST", "http://x/things/_count").status == 418
    assert toy.request("POST", "http://x/things/_count").json() == {"error": "BadRequest"}
    assert toy.request("POST", "http://x/big", data=b"{}").json() == {"mine": "yes"}


def test_unexpected_errors_are_500s_with_a_json_body(toy):
    response = toy.request("GET", "http://x/boom")
    assert response.status == 500
    assert response.json()["errors"][0]["detail"].startswith("an unexpected error")
    assert "oops" not in response.body.decode()


def test_body_policies_by_default():
    routes = {r.handler.__name__: r for r in Toy.router.routes}
    assert routes["list_things"].body == NO_BODY
    assert routes["one"].body == BUFFERED  # PUT
    assert routes["big"].body.max_size == 10
    assert streamed(5).kind == "stream"


def test_the_router_alone():
    router = Toy.router
    assert router.match("GET", ["things", "x"])[1] == {"name": "x"}
    with pytest.raises(MethodNotAllowed):
        router.match("DELETE", ["things", "x"])
    with pytest.raises(RouteNotFound):
        router.match("GET", ["things", "x", "y"])
    assert router.find("DELETE", ["things"]) is None
    assert Router([]).find("GET", []) is None
    assert split_raw_path(b"/data/io.cozy.x/a%2Fb/", 1) == ["io.cozy.x", "a/b"]
    with pytest.raises(UnicodeDecodeError):
        split_raw_path(b"/%C3")


def test_one_state_per_request():
    request = Request(DummyChannel())
    state = state_of(request)
    assert isinstance(state, RequestState) and state_of(request) is state
    assert not state.session_known
    state.session = None
    assert state.session_known


def test_the_root_puts_the_instance_in_the_state(stack, admin, public):
    new_instance(admin)
    seen = {}

    class Peek(Service):
        errors = jsonapi_errors

        @route("peek", "GET")
        def peek(self, request):
            seen["instance"] = state_of(request).instance
            return b"ok"

    stack.public._site._services["peek"] = Peek()
    assert public.request("GET", "http://alice.cozy.test/peek/peek").body == b"ok"
    assert seen["instance"].domain == "alice.cozy.test"


def test_shield_runs_to_the_end_when_cancelled():
    gate: defer.Deferred = defer.Deferred()
    steps = []

    async def two_steps():
        steps.append("one")
        await gate
        steps.append("two")
        return "done"

    async def handler():
        return await shield(two_steps())

    d = defer.Deferred.fromCoroutine(handler())
    d.cancel()
    with pytest.raises(defer.CancelledError):
        result_of(d)
    assert steps == ["one"]
    gate.callback(None)
    assert steps == ["one", "two"]


# =============================================================================
# Parameters
# =============================================================================
def test_go_booleans():
    for word in ("1", "t", "T", "TRUE", "true", "True"):
        assert parse_bool(word) is True
    for word in ("0", "f", "F", "FALSE", "false", "False"):
        assert parse_bool(word) is False
    for word in ("yes", "on", "", " true", "tRue", None):
        assert parse_bool(word) is None
    assert parse_bool("true", strict=True) is True
    assert parse_bool("1", strict=True) is None


@given(st.integers())
def test_integers_of_64_bits_only(value):
    parsed = parse_int(str(value))
    assert parsed == (value if INT64_MIN <= value <= INT64_MAX else None)


def test_integer_syntax():
    assert parse_int("+5") == 5 and parse_int("-0") == 0
    for text in ("", " 5", "5 ", "1e3", "0x10", "1_000", "٣", None, "9" * 400):
        assert parse_int(text) is None


BIG = "9" * 30


@pytest.mark.parametrize(
    "path, status",
    [
        (f"/io.cozy.notes/_all_docs?limit={BIG}", 400),
        (f"/io.cozy.notes/_all_docs?skip={BIG}", 400),
        (f"/io.cozy.notes/_design_docs?limit={BIG}", 400),
        (f"/io.cozy.notes/_changes?limit={BIG}", 400),
        (f"/io.cozy.notes/_changes?since={BIG}", 400),
        (f"/io.cozy.notes/_changes?since={BIG}-abc", 400),
        (f"/io.cozy.notes/_changes?seq_interval={BIG}", 400),
        # cozy-stack's fallbacks: the default page.
        (f"/io.cozy.notes/_normal_docs?limit={BIG}&skip={BIG}", 200),
    ],
)
def test_integers_past_64_bits_in_data(admin, public, path, status):
    new_instance(admin)
    data = Data(public, cli_token(admin))
    data.create("io.cozy.notes", {"a": 1})
    response = data.get(path)
    assert response.status == status, response.body
    assert (
        "error" in response.json() if status == 400 else len(response.json()["rows"]) == 1
    )


def test_integers_past_64_bits_in_admin(admin):
    from tests.unit.web.conftest import ADMIN, AUTH

    for params in ({"page[limit]": BIG}, {"page[skip]": BIG}):
        response = admin.request("GET", ADMIN + "/instances", auth=AUTH, params=params)
        assert response.status == 400
        assert "64 bits" in response.json()["errors"][0]["detail"]


def test_query_parameters_take_the_first_value_and_must_be_utf8(admin, public):
    new_instance(admin)
    data = Data(public, cli_token(admin))
    created = data.create("io.cozy.notes", {"a": 1})
    one = data.get(f"/io.cozy.notes/{created['id']}?revs=true&revs=false")
    assert "_revisions" in one.json()
    bad = public.request(
        "GET",
        BASE + "/io.cozy.notes/_all_docs?limit=%FF",
        headers={"Authorization": f"Bearer {data.bearer}"},
    )
    assert bad.status == 400 and "UTF-8" in bad.json()["error"]


def test_errors_are_values_of_one_family():
    assert issubclass(RouteNotFound, CozyError) and issubclass(MethodNotAllowed, CozyError)
