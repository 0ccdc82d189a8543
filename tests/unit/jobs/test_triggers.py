"""Trigger arguments: parsing, next firing times, @event rules."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.errors import CozyError
from cozyd.jobs.model import parse_time, rfc3339
from cozyd.jobs.triggers import EventRule, InvalidTrigger, parse_trigger, periodic_crontab

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a Friday


def trigger(kind, arguments="", **extra):
    doc = {"_id": "t1", "type": kind, "arguments": arguments, "worker": "log", **extra}
    doc.setdefault("cozyMetadata", {"createdAt": rfc3339(T0)})
    return parse_trigger(doc)


def test_every_counts_from_creation():
    t = trigger("@every", "1h30m")
    assert t.next_time(T0) == T0 + 5400
    assert t.next_time(T0 + 5400) == T0 + 10800
    assert t.next_time(T0 + 100_000) == T0 + 19 * 5400


def test_in_and_at_are_fixed():
    assert trigger("@in", "10m").next_time(T0 + 9999) == T0 + 600
    assert trigger("@at", "2027-01-15T08:00:01.5Z").next_time(T0) == T0 + 1.5
    assert trigger("@in", "10m").one_shot


def test_cron_has_seconds_first():
    t = trigger("@cron", "30 0 9 * * 1")  # mondays 09:00:30
    nxt = datetime.datetime.fromtimestamp(t.next_time(T0), tz=datetime.UTC)
    assert (nxt.weekday(), nxt.hour, nxt.minute, nxt.second) == (0, 9, 0, 30)


@pytest.mark.parametrize(
    ("kind", "arguments", "check"),
    [
        ("@daily", "before 5am", lambda f: int(f[2]) < 5 and f[3:] == ["*", "*", "*"]),
        ("@daily", "after 10pm", lambda f: int(f[2]) >= 22),
        ("@daily", "between 8am and 6pm", lambda f: 8 <= int(f[2]) < 18),
        ("@weekly", "on weekend", lambda f: f[5] in ("0", "6")),
        ("@weekly", "on wed-fri before 9am", lambda f: f[5] in "345" and int(f[2]) < 9),
        ("@monthly", "on the 1-5", lambda f: 1 <= int(f[3]) <= 5),
        ("@hourly", "", lambda f: f[2:] == ["*"] * 4),
    ],
)
def test_periodic_slots_respect_their_ranges(kind, arguments, check):
    for seed in ("a", "b", "c", "d"):
        fields = periodic_crontab(kind, arguments, seed).split()
        assert check(fields), fields
    assert periodic_crontab(kind, arguments, "x") == periodic_crontab(kind, arguments, "x")


@pytest.mark.parametrize(
    ("kind", "arguments"),
    [
        ("@at", "tomorrow"),
        ("@in", "10 minutes"),
        ("@every", "0s"),
        ("@cron", "* * * * *"),
        ("@cron", "99 * * * * *"),
        ("@daily", "on monday"),
        ("@weekly", "on funday"),
        ("@monthly", "on the 40"),
        ("@daily", "after 9pm before 8pm"),
        ("@event", ""),
        ("@event", "io.cozy.files:READ"),
    ],
)
def test_bad_arguments(kind, arguments):
    with pytest.raises(InvalidTrigger):
        trigger(kind, arguments)


def test_unknown_type_and_bad_debounce_are_422():
    with pytest.raises(CozyError) as error:
        trigger("@sometimes")
    assert error.value.status == 422
    with pytest.raises(CozyError) as error:
        trigger("@webhook", debounce="later")
    assert error.value.status == 422


def event(verb, doc, doctype="io.cozy.files"):
    return {"verb": verb, "doctype": doctype, "id": doc.get("_id"), "doc": doc}


def test_event_rules():
    rule = EventRule.parse("io.cozy.files:DELETED:image/jpg:mime")
    assert rule.matches(event("DELETED", {"_id": "a", "mime": "image/jpg"}), None)
    assert not rule.matches(event("DELETED", {"_id": "a", "mime": "text/plain"}), None)
    assert not rule.matches(event("CREATED", {"_id": "a", "mime": "image/jpg"}), None)
    assert rule.matches(
        event("DELETED", {"_id": "a", "mime": "x"}), {"_id": "a", "mime": "image/jpg"}
    )
    changed = EventRule.parse("io.cozy.bank.operations:UPDATED,CREATED:!=:category")
    op = "io.cozy.bank.operations"
    assert changed.matches(event("CREATED", {"category": "a"}, op), None)
    assert changed.matches(event("UPDATED", {"category": "b"}, op), {"category": "a"})
    assert not changed.matches(event("UPDATED", {"category": "a"}, op), {"category": "a"})
    assert not changed.matches(event("UPDATED", {"category": "a"}, op), None)
    ids = EventRule.parse("io.cozy.files:ALL:abc")
    assert ids.matches(event("UPDATED", {"_id": "abc"}), None)
    assert not ids.matches(event("UPDATED", {"_id": "abd"}), None)
    assert not EventRule.parse("io.cozy.files").matches(
        event("CREATED", {}, "io.cozy.x"), None
    )


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_times_round_trip(seconds):
    assert abs(parse_time(rfc3339(seconds)) - seconds) < 1e-5


@given(st.text(max_size=40))
def test_any_arguments_are_read_or_refused_cleanly(text):
    for kind in (
        "@at",
        "@in",
        "@every",
        "@cron",
        "@daily",
        "@weekly",
        "@monthly",
        "@event",
    ):
        try:
            t = trigger(kind, text)
        except CozyError as exc:
            assert exc.status in (400, 422)
        else:
            if t.is_time:
                assert t.next_time(T0) is not None
