"""Helpers of the admin client: durations, sizes, error messages."""

from __future__ import annotations

import argparse
import json

import pytest

from cozyd.cli.client import (
    Context,
    error_message,
    go_duration,
    instance_path,
    parse_duration,
)
from cozyd.cli.instances import parse_bool, parse_bytes
from cozyd.cli.output import format_bytes


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("15", 15),
        ("15s", 15),
        ("2m", 120),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        (" 3 ", 3),
        ("0", 0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "15x", "1h 30m", "-1s", "soon"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_go_duration():
    assert go_duration("90") == "90s"
    assert go_duration("1h30m") == "1h30m"


@pytest.mark.parametrize(
    "text,size",
    [
        ("3GB", 3_000_000_000),
        ("3 gb", 3_000_000_000),
        ("1GiB", 1 << 30),
        ("500MB", 500_000_000),
        ("500M", 500_000_000),
        ("1Ki", 1024),
        ("42", 42),
        ("42B", 42),
        ("1,000", 1000),
        ("0", 0),
        ("1.5TB", 1_500_000_000_000),
    ],
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "3XB", "1..2GB", "3 G B"])
def test_parse_bytes_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes(text)


@pytest.mark.parametrize(
    "size,text",
    [
        (0, "0 B"),
        (9, "9 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1 << 30, "1.1 GB"),
        (3_000_000_000, "3.0 GB"),
        (500_000_000, "500 MB"),
        (12_340_000, "12 MB"),
    ],
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text


def test_parse_bool():
    assert parse_bool("true") and parse_bool("1") and parse_bool("T")
    assert not parse_bool("false") and not parse_bool("0")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("yes")


def test_instance_path_encodes_the_domain():
    assert instance_path("a.b:8080") == "/instances/a.b%3A8080"
    assert instance_path("a.b", "prefix") == "/instances/a.b/prefix"


@pytest.mark.parametrize(
    "status,body,message",
    [
        (
            409,
            {"errors": [{"status": "409", "title": "Conflict", "detail": "exists"}]},
            "exists",
        ),
        (404, {"errors": [{"status": "404", "title": "Not Found"}]}, "Not Found"),
        (400, {"error": "bad_request", "reason": "nope"}, "bad_request: nope"),
        (500, "<html>oops</html>", "the admin API answered 500 Internal Server Error"),
        (400, "Unknown audience x", "Unknown audience x"),
    ],
)
def test_error_message(status, body, message):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    reason = {
        409: "Conflict",
        404: "Not Found",
        400: "Bad Request",
        500: "Internal Server Error",
    }[status]
    assert error_message(status, reason, raw) == message


def test_context_precedence():
    env = {
        "COZY_ADMIN_HOST": "h",
        "COZY_ADMIN_PORT": "7070",
        "COZY_ADMIN_TIMEOUT": "2m",
    }
    ctx = Context.from_args(argparse.Namespace(admin_port="6061"), env)
    assert (ctx.admin_host, ctx.admin_port, ctx.timeout) == ("h", 6061, 120)
    ctx = Context.from_args(argparse.Namespace(), {})
    assert (ctx.admin_host, ctx.admin_port, ctx.host, ctx.port, ctx.timeout) == (
        "localhost",
        6060,
        "localhost",
        8080,
        15,
    )
    assert (
        Context.from_args(argparse.Namespace(), {"COZY_ADMIN_TIMEOUT": "0"}).timeout is None
    )
