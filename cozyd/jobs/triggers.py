"""Trigger types: what their ``arguments`` mean and when they fire.

``parse_trigger(doc)`` reads an ``io.cozy.triggers`` document into a
``Trigger`` (raising ``InvalidTrigger`` for arguments it cannot read,
``UnknownTrigger`` for a type it does not know). Time triggers answer
``next_time(after)``: the first moment strictly after ``after`` they fire
at (None: never again). ``@event`` triggers answer ``matches(event, old)``.

- ``@at <RFC 3339>`` and ``@in <duration>`` fire once (``@in`` counts from
  the trigger's creation, so a restart does not move it);
- ``@every <duration>`` fires at creation + k × interval;
- ``@cron <sec min hour dom month dow>`` (croniter, seconds first);
- ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` with their ranges
  (``before 5am``, ``after 10pm``, ``between 8am and 6pm``, ``on mon,wed``,
  ``on weekday``, ``on the 1-5``): a slot chosen at random inside the
  constraints, seeded by the trigger's id, so a trigger keeps its slot;
- ``@event doctype[:VERBS][:values][:selector] ...`` (``!=`` as the value:
  the selected field changed);
- ``@webhook`` and ``@client`` never fire by themselves.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping
from typing import Any

import attrs
from croniter import croniter

from cozyd.durations import parse_duration
from cozyd.errors import BadRequest, Unprocessable
from cozyd.jobs.model import parse_time

TIME_TYPES = frozenset(
    {"@at", "@in", "@every", "@cron", "@hourly", "@daily", "@weekly", "@monthly"}
)
ONE_SHOT = frozenset({"@at", "@in"})
TYPES = TIME_TYPES | {"@event", "@webhook", "@client"}
EVENT_VERBS = ("CREATED", "UPDATED", "DELETED")


class InvalidTrigger(BadRequest):
    code = "invalid_trigger"


class UnknownTrigger(Unprocessable):
    def __init__(self, detail: str = "Unknown type of trigger"):
        super().__init__(detail, source={"pointer": "/data/attributes/Type"})


def _duration(text: str, what: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise InvalidTrigger(f"invalid duration for {what}: {text!r}") from None
    return seconds


# -- periodic specs (cozy-stack's @hourly/@daily/@weekly/@monthly) ----------------
_DAYS = {
    "sun": 0,
    "sunday": 0,
    "mon": 1,
    "monday": 1,
    "tue": 2,
    "tuesday": 2,
    "wed": 3,
    "wednesday": 3,
    "thu": 4,
    "thursday": 4,
    "fri": 5,
    "friday": 5,
    "sat": 6,
    "saturday": 6,
}


def _hour(text: str) -> int:
    match = re.fullmatch(r"(\d{1,2})(am|pm)", text)
    if not match:
        raise InvalidTrigger(f"invalid hour {text!r}")
    hour = int(match.group(1))
    if not 1 <= hour <= 12:
        raise InvalidTrigger(f"invalid hour {text!r}")
    if match.group(2) == "am":
        return 0 if hour == 12 else hour
    return 12 if hour == 12 else hour + 12


def _days_of_week(field: str) -> list[int]:
    days: list[int] = []
    for part in field.split(","):
        if part == "weekday":
            days += [1, 2, 3, 4, 5]
        elif part == "weekend":
            days += [0, 6]
        elif "-" in part:
            first, _, last = part.partition("-")
            if first not in _DAYS or last not in _DAYS:
                raise InvalidTrigger(f"cannot read {part!r} as days")
            start, end = _DAYS[first], _DAYS[last]
            if start == end:
                raise InvalidTrigger("invalid range")
            if start > end:
                end += 7
            days += [d % 7 for d in range(start, end + 1)]
        elif part in _DAYS:
            days.append(_DAYS[part])
        else:
            raise InvalidTrigger(f"cannot read {part!r} as a day")
    return days


def _days_of_month(field: str) -> list[int]:
    days: list[int] = []

    def day(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 31:
            raise InvalidTrigger(f"invalid day {text!r}")
        return int(text)

    for part in field.split(","):
        if "-" in part:
            first, _, last = part.partition("-")
            start, end = day(first), day(last)
            if start >= end:
                raise InvalidTrigger("invalid range")
            days += list(range(start, end + 1))
        else:
            days.append(day(part))
    return days


def periodic_crontab(kind: str, arguments: str, seed: str) -> str:
    """A 6-field crontab within the constraints of ``arguments``, chosen
    at random with ``seed`` (the trigger's id) so that it is stable."""
    fields = arguments.split()
    days_of_month = list(range(1, 29))
    days_of_week = list(range(7))
    after, before = 0, 24
    while fields:
        word = fields[0]
        if word == "on":
            if len(fields) < 2:
                raise InvalidTrigger("expecting a day after 'on'")
            if fields[1] == "the":
                if kind != "@monthly" or len(fields) < 3:
                    raise InvalidTrigger("'on the' takes a day of the month (@monthly)")
                days_of_month = _days_of_month(fields[2])
                fields = fields[3:]
            else:
                if kind != "@weekly":
                    raise InvalidTrigger("'on' takes a day of the week (@weekly)")
                days_of_week = _days_of_week(fields[1])
                fields = fields[2:]
        elif word in ("before", "and"):
            if len(fields) < 2:
                raise InvalidTrigger(f"expecting an hour after {word!r}")
            before = _hour(fields[1]) or 24
            fields = fields[2:]
        elif word in ("after", "between"):
            if len(fields) < 2:
                raise InvalidTrigger(f"expecting an hour after {word!r}")
            after = _hour(fields[1])
            fields = fields[2:]
        else:
            raise InvalidTrigger(f"invalid field {word!r}")
    if after >= before:
        raise InvalidTrigger("invalid hours range")
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    second, minute = rng.randrange(60), rng.randrange(60)
    hour = after + rng.randrange(before - after)
    if kind == "@hourly":
        return f"{second} {minute} * * * *"
    if kind == "@monthly":
        return f"{second} {minute} {hour} {rng.choice(days_of_month)} * *"
    if kind == "@weekly":
        return f"{second} {minute} {hour} * * {rng.choice(days_of_week)}"
    return f"{second} {minute} {hour} * * *"


def cron_next(expression: str, after: float) -> float:
    return croniter(expression, after, second_at_beginning=True).get_next(float)


def check_cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 6:
        raise InvalidTrigger(f"a @cron trigger takes 6 fields, not {len(fields)}")
    try:
        croniter(expression, 0, second_at_beginning=True).get_next(float)
    except Exception as exc:  # croniter's errors are of several kinds
        raise InvalidTrigger(f"invalid @cron expression {expression!r}: {exc}") from None
    return " ".join(fields)


# -- @event rules -----------------------------------------------------------------
@attrs.frozen
class EventRule:
    doctype: str
    verbs: frozenset[str] = frozenset(EVENT_VERBS)
    values: tuple[str, ...] = ()
    selector: str = ""

    @classmethod
    def parse(cls, text: str) -> EventRule:
        parts = text.split(":")
        if not parts[0] or len(parts) > 4:
            raise InvalidTrigger(f"invalid @event rule {text!r}")
        verbs = frozenset(EVENT_VERBS)
        if len(parts) > 1 and parts[1] not in ("", "ALL"):
            verbs = frozenset(v.strip() for v in parts[1].split(","))
            if not verbs <= set(EVENT_VERBS):
                raise InvalidTrigger(f"invalid verbs in @event rule {text!r}")
        values = tuple(v for v in parts[2].split(",") if v) if len(parts) > 2 else ()
        selector = parts[3] if len(parts) > 3 else ""
        return cls(parts[0], verbs, values, selector)

    def matches(self, event: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
        if event.get("doctype") != self.doctype or event.get("verb") not in self.verbs:
            return False
        if not self.values:
            return True
        doc = event.get("doc") or {}
        if not self.selector:
            return doc.get("_id") in self.values
        if self.values == ("!=",):
            if event.get("verb") != "UPDATED":
                return True  # a creation or a deletion changes the value
            if old is None:
                return False
            return field_values(old, self.selector) != field_values(doc, self.selector)
        if any(v in self.values for v in field_values(doc, self.selector)):
            return True
        return old is not None and any(
            v in self.values for v in field_values(old, self.selector)
        )

    @property
    def needs_old_doc(self) -> bool:
        return bool(self.selector) and bool(self.values)


def field_values(doc: Mapping[str, Any], selector: str) -> list[str]:
    value: Any = doc
    for part in selector.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [item if isinstance(item, str) else str(item) for item in items]


# -- triggers ---------------------------------------------------------------------
@attrs.frozen
class Trigger:
    doc: dict[str, Any] = attrs.field(eq=False)
    id: str
    type: str
    worker: str
    #: When the trigger was created (seconds): the origin of @in and @every.
    created: float
    at: float | None = None
    interval: float | None = None
    cron: str | None = None
    rules: tuple[EventRule, ...] = ()
    debounce: float = 0.0

    @property
    def is_time(self) -> bool:
        return self.type in TIME_TYPES

    @property
    def one_shot(self) -> bool:
        return self.type in ONE_SHOT

    def next_time(self, after: float) -> float | None:
        """The first firing strictly after ``after`` (one-shot triggers:
        their time, whenever ``after`` is; None for non-time triggers)."""
        if self.at is not None:
            return self.at
        if self.interval is not None:
            steps = math.floor((after - self.created) / self.interval) + 1
            return self.created + max(steps, 1) * self.interval
        if self.cron is not None:
            return cron_next(self.cron, after)
        return None

    def matches(self, event: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
        return any(rule.matches(event, old) for rule in self.rules)


def created_at(doc: Mapping[str, Any]) -> float | None:
    metadata = doc.get("cozyMetadata")
    if isinstance(metadata, Mapping):
        return parse_time(metadata.get("createdAt"))
    return None


def parse_trigger(doc: dict[str, Any], *, now: float | None = None) -> Trigger:
    kind = doc.get("type")
    if kind not in TYPES:
        raise UnknownTrigger()
    arguments = doc.get("arguments") or ""
    if not isinstance(arguments, str):
        raise InvalidTrigger("arguments must be a string")
    arguments = arguments.strip()
    worker = doc.get("worker") or ""
    debounce_text = doc.get("debounce") or ""
    debounce = 0.0
    if debounce_text:
        try:
            debounce = parse_duration(debounce_text)
        except ValueError:
            raise Unprocessable(
                f"invalid debounce {debounce_text!r}",
                source={"pointer": "/data/attributes/debounce"},
            ) from None
    created = created_at(doc)
    if created is None:
        created = now if now is not None else 0.0
    fields: dict[str, Any] = {}
    if kind == "@at":
        at = parse_time(arguments)
        if at is None:
            raise InvalidTrigger(f"invalid date for @at: {arguments!r}")
        fields["at"] = at
    elif kind == "@in":
        fields["at"] = created + _duration(arguments, "@in")
    elif kind == "@every":
        interval = _duration(arguments, "@every")
        if interval <= 0:
            raise InvalidTrigger("@every takes a positive duration")
        fields["interval"] = interval
    elif kind == "@cron":
        fields["cron"] = check_cron(arguments)
    elif kind in ("@hourly", "@daily", "@weekly", "@monthly"):
        fields["cron"] = periodic_crontab(kind, arguments, str(doc.get("_id", "")))
    elif kind == "@event":
        if not arguments:
            raise InvalidTrigger("@event takes at least one doctype")
        fields["rules"] = tuple(EventRule.parse(part) for part in arguments.split())
    elif kind == "@client" and worker not in ("", "client"):
        raise InvalidTrigger("@client triggers are for the client worker")
    return Trigger(
        doc=doc,
        id=str(doc.get("_id", "")),
        type=kind,
        worker=worker,
        created=created,
        debounce=debounce,
        **fields,
    )
