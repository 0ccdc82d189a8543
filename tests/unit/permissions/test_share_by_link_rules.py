"""The pieces of share by link on their own: subsets, durations, dates,
shortcodes."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.errors import CozyError
from cozyd.permissions.rules import PermissionSet
from cozyd.permissions.sharing import (
    SHORTCODE_RE,
    check_shareable,
    expiry_of,
    format_rfc3339,
    is_expired,
    is_subset,
    parse_rfc3339,
    parse_ttl,
    public_attributes,
)


def perms(**rules) -> PermissionSet:
    return PermissionSet.from_json(rules, type="app")


@pytest.mark.parametrize(
    "parent, child, expected",
    [
        ({"a": {"type": "io.cozy.events"}}, {"r": {"type": "io.cozy.events"}}, True),
        (
            {"a": {"type": "io.cozy.events", "verbs": ["GET"]}},
            {"r": {"type": "io.cozy.events", "verbs": ["GET", "PUT"]}},
            False,
        ),
        (
            {"a": {"type": "io.cozy.events", "verbs": ["GET"], "values": ["x"]}},
            {"r": {"type": "io.cozy.events", "verbs": ["GET"]}},
            False,  # cozy-stack lets this through
        ),
        (
            {"a": {"type": "io.cozy.events", "values": ["x", "y"]}},
            {"r": {"type": "io.cozy.events", "values": ["y"]}},
            True,
        ),
        (
            {"a": {"type": "io.cozy.events", "values": ["x"]}},
            {"r": {"type": "io.cozy.events", "values": ["x"], "selector": "calendar"}},
            False,
        ),
        (
            {"a": {"type": "io.cozy.bank.*"}},
            {"r": {"type": "io.cozy.bank.accounts", "verbs": ["GET"]}},
            True,
        ),
        ({"a": {"type": "*"}}, {"r": {"type": "io.cozy.contacts"}}, True),
        ({"a": {"type": "*"}}, {"r": {"type": "*"}}, False),
        ({"a": {"type": "io.cozy.files"}}, {"r": {"type": "io.cozy.contacts"}}, False),
    ],
)
def test_subsets(parent, child, expected):
    assert is_subset(perms(**child), perms(**parent)) is expected


def test_reserved_doctypes_are_not_shareable():
    files, jobs = perms(f={"type": "io.cozy.files"}), perms(j={"type": "io.cozy.jobs"})
    check_shareable(files.rules[0][1])
    with pytest.raises(CozyError) as caught:
        check_shareable(jobs.rules[0][1])
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1D", 86400),
        ("1h", 3600),
        ("30m", 1800),
        ("1W2D3h", 9 * 86400 + 3 * 3600),
        ("1Y", 365 * 86400),
        ("2M", 60 * 86400),
        ("1h30m10s", 5410),
        ("1.5h", 5400),
    ],
)
def test_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "D", "1h1D", "-1h", "1 h", "1hx"])
def test_bad_ttl(text):
    with pytest.raises(ValueError):
        parse_ttl(text)


@given(
    st.lists(st.sampled_from("YMWD"), unique=True).map(
        lambda u: sorted(u, key="YMWD".index)
    ),
    st.lists(st.integers(0, 500), min_size=4, max_size=4),
    st.integers(0, 10**6),
)
def test_ttl_sums_its_parts(units, counts, extra):
    days = {"Y": 365, "M": 30, "W": 7, "D": 1}
    text = "".join(f"{n}{u}" for n, u in zip(counts, units, strict=False)) + f"{extra}s"
    expected = sum(n * days[u] * 86400 for n, u in zip(counts, units, strict=False))
    assert parse_ttl(text) == expected + extra


@given(st.datetimes(min_value=datetime.datetime(1971, 1, 1)))
def test_rfc3339_round_trip(when):
    seconds = when.replace(tzinfo=datetime.UTC).timestamp()
    text = format_rfc3339(seconds)
    assert text.endswith("Z")
    assert abs(parse_rfc3339(text) - seconds) < 1e-5


def test_rfc3339_offsets_and_bad_dates():
    assert parse_rfc3339("2027-01-15T09:00:00+01:00") == parse_rfc3339(
        "2027-01-15T08:00:00Z"
    )
    assert parse_rfc3339("2027-01-15T08:00:00.123456789Z") == pytest.approx(
        parse_rfc3339("2027-01-15T08:00:00Z") + 0.123456789
    )
    for bad in ("tomorrow", "2027-01-15", "2027-13-01T00:00:00Z", "2027-01-15T08:00:00"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_expiry_reads_what_documents_hold():
    assert expiry_of({}) is None
    assert is_expired({"expires_at": "2001-01-01T00:00:00Z"}, 1_800_000_000)
    assert not is_expired({"expires_at": "2099-01-01T00:00:00Z"}, 1_800_000_000)
    assert is_expired({"expires_at": 1_000}, 1_800_000_000)  # old Unix seconds
    assert is_expired({"expires_at": "garbage"}, 0)  # unreadable: expired
    assert is_expired({"expires_at": {"no": 1}}, 0)


def test_shortcodes_look_like_this():
    for good in ("abcdefGHIJ01", "123456", "abcdefGHIJ01.", "123456."):
        assert SHORTCODE_RE.match(good)
    for bad in ("abc", "12345", "1234567", "eyJ.eyJ.sig", "abcdefGHIJ0!", "abcdefGHIJ01.."):
        assert not SHORTCODE_RE.match(bad)


def test_public_attributes_hide_secrets():
    doc = {
        "_id": "x",
        "_rev": "1-a",
        "type": "share",
        "codes": {"bob": "c"},
        "shortcodes": {"bob": "s"},
        "password": "scrypt$hash",
    }
    assert public_attributes(doc, with_codes=False) == {"type": "share", "password": True}
    shown = public_attributes(doc, with_codes=True)
    assert shown["codes"] == {"bob": "c"} and shown["password"] is True
