"""One run of a konnector's process, through a Twisted ``ProcessProtocol``.

The protocol reads the konnector's stdout as JSON lines (``{"type",
"message", "no_retry"}``, a line at most 64 KiB, a message cut at 4000
characters, other lines ignored), keeps the last 256 KiB of its stderr,
and reports how it ended. ``run_process`` starts it with exactly the
environment given (nothing of the daemon's), in its own process group,
and stops it — TERM to the group, KILL after ``kill_grace`` seconds — at
its time limit or when its Deferred is cancelled (the job system's
timeout).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()

MAX_LINE = 64 * 1024
MAX_MESSAGE = 4000
MAX_STDERR = 256 * 1024
MESSAGE_TYPES = ("debug", "info", "warning", "warn", "error", "critical")


@attrs.define
class Message:
    type: str
    message: str
    no_retry: bool = False


@attrs.define
class Outcome:
    """How a run ended."""

    #: Exit status, or None when killed by a signal.
    exit_code: int | None
    signal: int | None
    #: True when cozyd stopped it (time limit or cancellation).
    stopped: bool = False
    timed_out: bool = False
    stderr: bytes = b""
    #: The last ``critical`` / ``error`` messages and whether one said no_retry.
    critical: str | None = None
    error: str | None = None
    no_retry: bool = False

    @property
    def process_error(self) -> str | None:
        """As Go's ``exec`` says it: ``exit status N``, ``signal: killed``."""
        if self.exit_code == 0 and self.signal is None:
            return None
        if self.signal is not None:
            name = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated"}.get(
                self.signal, f"signal {self.signal}"
            )
            return f"signal: {name}"
        return f"exit status {self.exit_code}"


def parse_line(line: bytes) -> Message | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    text = value.get("message")
    if not isinstance(kind, str):
        return None
    if not isinstance(text, str):
        text = "" if text is None else json.dumps(text)
    return Message(kind, text[:MAX_MESSAGE], value.get("no_retry") is True)


class KonnectorProtocol(protocol.ProcessProtocol):
    def __init__(self, on_message: Callable[[Message], None] | None = None):
        self.on_message = on_message
        #: Called when the process itself has exited (its pipes may live on).
        self.on_exit: Callable[[], None] | None = None
        self.ended: defer.Deferred = defer.Deferred()
        self.exited = False
        self._buffer = b""
        self._skipping = False  # inside a line longer than MAX_LINE
        self._stderr = bytearray()
        self.critical: str | None = None
        self.error: str | None = None
        self.no_retry = False
        self.messages = 0

    # -- stdout -----------------------------------------------------------------
    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > MAX_LINE:
                    self._buffer = b""
                    self._skipping = True
                return
            self._buffer = rest
            if self._skipping:
                self._skipping = False
                continue
            if len(line) <= MAX_LINE:
                self._line(line)

    def _line(self, line: bytes) -> None:
        message = parse_line(line)
        if message is None:
            log.debug("konnector: not a JSON line on stdout")
            return
        self.messages += 1
        if message.type == "error":
            self.error = message.message
        elif message.type == "critical":
            self.critical = message.message
            if message.no_retry:
                self.no_retry = True
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:
                log.failure("konnector message handler")

    # -- stderr -----------------------------------------------------------------
    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        if len(self._stderr) > MAX_STDERR:
            del self._stderr[: len(self._stderr) - MAX_STDERR]

    @property
    def stderr(self) -> bytes:
        return bytes(self._stderr)

    # -- end --------------------------------------------------------------------
    def processExited(self, reason) -> None:
        self.exited = True
        if self.on_exit is not None:
            self.on_exit()

    def processEnded(self, reason) -> None:
        self.exited = True
        if self._buffer and not self._skipping:
            self._line(self._buffer)
            self._buffer = b""
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if isinstance(value, error.ProcessDone):
            code, sig = 0, None
        self.ended.callback((code, sig))


class Run:
    """A started run: ``wait()`` for its ``Outcome``; ``stop()`` it."""

    def __init__(self, reactor, proto: KonnectorProtocol, transport, kill_grace: float):
        self._reactor = reactor
        self.protocol = proto
        self.transport = transport
        self.pid: int = transport.pid
        self._kill_grace = kill_grace
        self._stopping = False
        self.stopped = False
        self.timed_out = False
        self._kill_call = None
        self._close_call = None
        proto.on_exit = self._after_exit
        proto.ended.addBoth(self._after_end)

    def _after_exit(self) -> None:
        # Whatever it left behind in its group goes with it; a process that
        # escaped the group and still holds the pipes is cut off from them.
        self._signal_group(signal.SIGKILL)
        self._close_call = self._reactor.callLater(1.0, self._close_pipes)

    def _close_pipes(self) -> None:
        if not self.protocol.ended.called:
            self.transport.loseConnection()

    def _after_end(self, result):
        for call in (self._kill_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        return result

    def _signal_group(self, sig: int) -> None:
        # The sandbox's command line starts with setsid: the run leads its
        # own process group, and the group gets the signal; the process
        # itself too (a command that is not a group leader).
        kills = [(os.killpg, self.pid)]
        if not self.protocol.exited:
            kills.append((os.kill, self.pid))
        for kill, target in kills:
            try:
                kill(target, sig)
            except OSError:
                pass

    def stop(self) -> None:
        """TERM to the whole group now, KILL after the grace delay."""
        if self._stopping or self.protocol.ended.called:
            return
        self._stopping = True
        self.stopped = True
        self._signal_group(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(
            self._kill_grace, self._signal_group, signal.SIGKILL
        )

    async def wait(self) -> Outcome:
        code, sig = await _uncancellable(self.protocol.ended)
        proto = self.protocol
        return Outcome(
            exit_code=code,
            signal=sig,
            stopped=self.stopped,
            timed_out=self.timed_out,
            stderr=proto.stderr,
            critical=proto.critical,
            error=proto.error,
            no_retry=proto.no_retry,
        )


def _uncancellable(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires with ``d``'s result; cancelling it leaves ``d``."""
    out: defer.Deferred = defer.Deferred()

    def forward(result):
        if not out.called:
            out.callback(result)
        return result

    d.addBoth(forward)
    return out


def start(
    reactor,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    on_message: Callable[[Message], None] | None = None,
    kill_grace: float = 5.0,
) -> Run:
    proto = KonnectorProtocol(on_message)
    transport = reactor.spawnProcess(
        proto,
        argv[0],
        list(argv),
        env=dict(env),  # exactly these: nothing of the daemon's
        path=cwd,
        childFDs={0: "w", 1: "r", 2: "r"},
    )
    transport.closeStdin()
    return Run(reactor, proto, transport, kill_grace)


async def run_process(
    reactor,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    time_limit: float,
    on_message: Callable[[Message], None] | None = None,
    kill_grace: float = 5.0,
) -> Outcome:
    """Run to the end, or stop at ``time_limit`` seconds; cancelled (the
    job's timeout), it stops the process, waits for it to end, and raises
    ``CancelledError``."""
    run = start(
        reactor, argv, env=env, cwd=cwd, on_message=on_message, kill_grace=kill_grace
    )

    def time_up() -> None:
        run.timed_out = True
        run.stop()

    timer = reactor.callLater(time_limit, time_up)
    try:
        # Cancelling this wait leaves the process's own end untouched.
        return await run.wait()
    except defer.CancelledError:
        run.stop()
        await run.wait()  # never leave it running behind us
        raise
    finally:
        if timer.active():
            timer.cancel()
