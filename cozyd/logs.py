"""The daemon's log: text (twistd's usual lines) or JSON, reopened on SIGHUP.

``twistd`` makes its own observer unless the application carries an
``ILogObserver`` component; ``CozydService.setServiceParent`` sets one
made here (``make_observer``), so that ``[log] format`` is obeyed and the
file given with ``twistd --logfile`` can be reopened after logrotate
moved it (``LogDestination.reopen``, called on SIGHUP). ``--syslog`` and
``--logger`` keep twistd's own observer.

The JSON format writes one object a line::

    {"time": "2026-12-01T21:49:49.123456+00:00", "level": "info",
     "namespace": "cozyd.access", "message": "...", "fields": {...}}

``fields`` holds the event's own keys (not twisted.logger's ``log_*``
bookkeeping); a failure adds ``"traceback"``. Nothing secret is logged by
cozyd: the access log has no query string, passphrases and tokens are
never put into events.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from cozyd import jsontext


class LogDestination:
    """Where log lines go: a stream (stdout), or a file that can be reopened.

    Lines wait in memory until ``flush``, which writes them in one call: a
    stream may write through on every call (``PYTHONUNBUFFERED``, or
    stdout on a terminal), a syscall a line otherwise."""

    def __init__(self, path: str | None = None, stream: IO[str] | None = None):
        self.path = path
        self._file: Any = None
        if path is not None:
            # No rotation of its own: logrotate moves the file, SIGHUP reopens it.
            self._file = LogFile.fromFullPath(path, rotateLength=None)
        self._stream = stream if stream is not None else sys.stdout
        self._lines: list[str] = []
        self._lock = threading.Lock()  # lines come from other threads too

    def write(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            target = self._file if self._file is not None else self._stream
            if lines:
                target.write("".join(lines))
            target.flush()

    def reopen(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.reopen()


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return repr(value)


def event_as_json(event: dict) -> str:
    """One JSON line for a twisted.logger event."""
    when = datetime.fromtimestamp(event.get("log_time", 0), tz=UTC)
    level = event.get("log_level")
    fields = {
        k: _json_safe(v)
        for k, v in event.items()
        if not k.startswith("log_")
        and k
        not in (
            "message",
            "format",
            "time",
            "system",
            "isError",
            "failure",
            "why",
            "cozyd_line",
        )
    }
    record: dict[str, Any] = {
        "time": when.isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": event.get("cozyd_line") or formatEvent(event),
        "fields": fields,
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["level"] = "critical" if record["level"] == "critical" else "error"
        record["traceback"] = failure.getTraceback()
    return jsontext.compact(record) + "\n"


class ClassicText:
    """twistd's classic text lines, with the time prefix made once a second
    (its format has seconds only; building it took a tenth of a request)."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._time = "-"

    def format_time(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._time = second, formatTime(when)
        return self._time

    def __call__(self, event: dict) -> str | None:
        line = event.get("cozyd_line")
        if line is not None and "log_system" not in event and "log_failure" not in event:
            # An access-log line, made by the site (``ServingSite.log``).
            level = event.get("log_level")
            return (
                f"{self.format_time(event.get('log_time'))} "
                f"[{event.get('log_namespace', '-')}#{level.name if level else '-'}]"
                f" {line}\n"
            )
        return formatEventAsClassicLogText(event, formatTime=self.format_time)


#: The namespace whose lines may wait a moment before they are flushed.
BUFFERED_NAMESPACE = "cozyd.access"


@implementer(ILogObserver)
class CozydLogObserver:
    """Formats every event as text or JSON into a ``LogDestination``.

    Access-log lines logged on the reactor's thread are flushed at most
    ``flush_delay`` seconds later, in one write with the lines that came
    meanwhile (a write per request cost as much as the rest of the access
    log); any other event flushes at once, with what waited before it, and
    so does the reactor's shutdown."""

    flush_delay = 0.2

    def __init__(self, destination: LogDestination, fmt: str = "text", *, reactor=None):
        self.destination = destination
        self.format = fmt
        self._format = event_as_json if fmt == "json" else ClassicText()
        self._reactor = reactor
        self._pending: Any = None
        self._watching_shutdown = False

    def __call__(self, event: dict) -> None:
        text = self._format(event)
        if not text:
            return
        self.destination.write(text)
        if (
            event.get("log_namespace") == BUFFERED_NAMESPACE
            and threading.current_thread() is threading.main_thread()
        ):
            if self._pending is None:
                self._pending = self._clock().callLater(self.flush_delay, self.flush)
            return
        self.flush()

    def _clock(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        if not self._watching_shutdown:
            self._watching_shutdown = True
            self._reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        return self._reactor

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.active():
            pending.cancel()
        self.destination.flush()

    def reopen(self) -> None:
        self.flush()
        self.destination.reopen()


def make_observer(fmt: str, twistd_options: Any = None) -> CozydLogObserver | None:
    """The observer for ``[log] format``, writing where twistd was told to
    (``--logfile``; stdout with ``-n`` or ``--logfile -``), or None where
    twistd's own observer must stay (``--syslog``, ``--logger``)."""
    options = twistd_options if twistd_options is not None else {}
    get = getattr(options, "get", lambda key, default=None: default)
    if get("syslog") or get("logger"):
        return None
    logfile = get("logfile")
    if not logfile:
        if not get("nodaemon", True):
            logfile = "twistd.log"  # twistd's default when it daemonizes
        else:
            logfile = "-"
    if logfile == "-":
        return CozydLogObserver(LogDestination(stream=sys.stdout), fmt)
    return CozydLogObserver(LogDestination(path=os.path.abspath(logfile)), fmt)
