"""Unit checks of the JSON log format, the store timing and the admin
passphrase file watch (the daemon tests cover them end to end)."""

import io
import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatTime
from twisted.python.failure import Failure

from cozyd import adminpass
from cozyd.logs import CozydLogObserver, LogDestination, event_as_json
from cozyd.metrics import Metrics, instrument_store
from cozyd.testing import TEST_SCRYPT_N, result_of


def test_json_event_has_the_documented_keys_and_no_bookkeeping():
    event = {
        "log_format": "{who} did {what}",
        "who": "alice",
        "what": object(),
        "log_level": LogLevel.warn,
        "log_namespace": "cozyd.x",
        "log_time": 0.0,
        "log_logger": object(),
        "log_source": None,
    }
    record = json.loads(event_as_json(event))
    assert set(record) == {"time", "level", "namespace", "message", "fields"}
    assert record["level"] == "warn"
    assert record["namespace"] == "cozyd.x"
    assert record["message"].startswith("alice did <object")
    assert record["fields"]["who"] == "alice"
    assert not any(k.startswith("log_") for k in record["fields"])
    assert record["time"].startswith("1970-01-01T00:00:00")
    failure = Failure(ZeroDivisionError("division by zero"))
    record = json.loads(event_as_json({**event, "log_failure": failure}))
    assert record["level"] == "error"
    assert "ZeroDivisionError" in record["traceback"]


class _Store:
    engine = "fake"

    async def get_doc(self, db, doc_id):
        return {"_id": doc_id}

    def not_async(self):
        return 1


def test_store_calls_are_timed_by_engine_and_operation():
    from twisted.internet import defer

    metrics = Metrics()
    store = instrument_store(_Store(), metrics)
    assert result_of(defer.Deferred.fromCoroutine(store.get_doc("db", "x"))) == {"_id": "x"}
    text = metrics.exposition().decode()
    assert (
        'cozyd_storage_call_duration_seconds_count{engine="fake",operation="get_doc"} 1.0'
        in text
    )
    assert store.not_async() == 1


def test_passphrase_file_is_re_read_when_it_changes(tmp_path):
    path = str(tmp_path / "secret")
    adminpass.write_hash_file(path, adminpass.hash_passphrase("old", n=TEST_SCRYPT_N))
    checker = adminpass.PassphraseChecker(adminpass.read_hash_file(path), path=path)

    def check(passphrase):
        return result_of(defer.Deferred.fromCoroutine(checker.check(passphrase)))

    assert check("old")
    adminpass.write_hash_file(path, adminpass.hash_passphrase("new", n=TEST_SCRYPT_N))
    assert check("new")
    assert not check("old")  # the cached good answer is forgotten too
    # A broken file keeps the last good hash.
    with open(path, "w") as f:
        f.write("garbage\n")
    os.utime(path, ns=(1, 1))
    assert check("new")
    assert not checker.reload()


class _Stream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushed = ""
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)

    def flush(self):
        self.flushed = self.getvalue()


class _ClockWithTriggers(Clock):
    def __init__(self):
        super().__init__()
        self.triggers = []

    def addSystemEventTrigger(self, phase, event, function):
        self.triggers.append((phase, event, function))


def _event(namespace, text, when=1_000_000.5):
    return {
        "log_format": text,
        "log_level": LogLevel.info,
        "log_namespace": namespace,
        "log_time": when,
        "log_system": "-",
    }


def test_access_lines_wait_a_moment_other_events_flush_at_once():
    stream, clock = _Stream(), _ClockWithTriggers()
    observer = CozydLogObserver(LogDestination(stream=stream), reactor=clock)
    observer(_event("cozyd.access", "GET /a"))
    observer(_event("cozyd.access", "GET /b"))
    assert stream.getvalue() == "" and stream.flushed == ""  # held, in one write later
    clock.advance(observer.flush_delay)
    assert "GET /a" in stream.flushed and "GET /b" in stream.flushed
    assert stream.writes == 1  # both lines in one write (a syscall on stdout)
    assert not clock.getDelayedCalls()
    observer(_event("cozyd.access", "GET /c"))
    observer(_event("cozyd.web", "something went wrong"))
    assert "GET /c" in stream.flushed and "went wrong" in stream.flushed
    assert not clock.getDelayedCalls()  # the flush took the pending one
    observer(_event("cozyd.access", "GET /d"))
    [(phase, event, flush)] = clock.triggers
    assert (phase, event) == ("after", "shutdown")
    flush()
    assert "GET /d" in stream.flushed


def test_text_lines_keep_twistds_time_prefix():
    stream = _Stream()
    observer = CozydLogObserver(LogDestination(stream=stream), reactor=_ClockWithTriggers())
    observer(_event("cozyd.web", "one", when=0.2))
    observer(_event("cozyd.web", "two", when=0.9))
    observer(_event("cozyd.web", "three", when=61.0))
    lines = stream.flushed.splitlines()
    assert lines[0].startswith(formatTime(0.0)) and lines[0].endswith("one")
    assert lines[1].startswith(formatTime(0.0)) and lines[1].endswith("two")
    assert lines[2].startswith(formatTime(61.0)) and lines[2].endswith("three")
    assert formatTime(0.0) != formatTime(61.0)


def _access_event(monkeypatch, uri: bytes, host: bytes) -> dict:
    from twisted.web.test.requesthelper import DummyRequest

    from cozyd import listeners

    events: list[dict] = []
    monkeypatch.setattr(listeners.access_log, "observer", events.append)
    site = listeners.ServingSite(None, listener="public", max_body_size=1)
    request = DummyRequest([b""])
    request.uri, request.method, request.code = uri, b"PUT", 201
    request.requestHeaders.setRawHeaders(b"host", [host])
    request.sentLength = 42
    site.log(request)
    [event] = events
    return event


def test_the_access_line_made_by_the_site_is_the_line_of_its_event(monkeypatch):
    from twisted.logger import formatEventAsClassicLogText

    from cozyd.logs import ClassicText

    for uri, host in (
        (b"/data/io.cozy.x/1?token=secret", b"alice.cozy.test"),
        (b'/files/a"b\x01\xc3\xa9?x=1', b'bad"host'),
    ):
        event = _access_event(monkeypatch, uri, host)
        generic = {k: v for k, v in event.items() if k != "cozyd_line"}
        text = ClassicText()
        assert text(event) == formatEventAsClassicLogText(generic, text.format_time)
        assert "secret" not in text(event) and "x=1" not in text(event)
        record = json.loads(event_as_json(event))
        assert record["message"] == json.loads(event_as_json(generic))["message"]
        assert "cozyd_line" not in record["fields"]
        assert record["fields"]["status"] == 201 and record["fields"]["bytes"] == 42
