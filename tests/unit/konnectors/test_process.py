"""The konnector's process: JSON lines, stderr, the time limit (TERM, then
KILL), cancellation, and exactly the environment given — real processes,
run by ``run_process`` on the real reactor of a child Python process."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from cozyd.konnectors import process
from tests.support.konnectors import run_process_child

PY = sys.executable


def py(code: str) -> list[str]:
    # As the sandbox's command line: its own process group first.
    return ["/usr/bin/setsid", PY, "-c", code]


def test_lines():
    assert process.parse_line(
        b'{"type":"critical","message":"LOGIN_FAILED","no_retry":true}'
    ) == process.Message("critical", "LOGIN_FAILED", True)
    assert process.parse_line(b"Error: at node:internal") is None
    assert process.parse_line(b"[1, 2]") is None
    assert process.parse_line(b'{"message":"no type"}') is None
    long = process.parse_line(json.dumps({"type": "info", "message": "x" * 9000}).encode())
    assert len(long.message) == process.MAX_MESSAGE


def test_outcome_process_error():
    assert process.Outcome(0, None).process_error is None
    assert process.Outcome(3, None).process_error == "exit status 3"
    assert process.Outcome(None, signal.SIGKILL).process_error == "signal: killed"


def test_protocol_splits_lines_and_skips_long_ones():
    seen = []
    proto = process.KonnectorProtocol(seen.append)
    proto.outReceived(b'{"type":"info","message":"a"}\n{"type":"err')
    proto.outReceived(b'or","message":"b"}\n' + b"y" * (process.MAX_LINE + 10))
    proto.outReceived(b'still the long line\n{"type":"critical","message":"c"}\n')
    assert [m.message for m in seen] == ["a", "b", "c"]
    assert (proto.error, proto.critical) == ("b", "c")
    proto.errReceived(b"z" * (process.MAX_STDERR + 100))
    assert len(proto.stderr) == process.MAX_STDERR


def test_messages_and_errors():
    code = (
        "import json,sys\n"
        "print(json.dumps({'type':'info','message':'hello'}))\n"
        "print('not json')\n"
        "print(json.dumps({'type':'error','message':'first error'}))\n"
        "print(json.dumps({'type':'critical','message':'VENDOR_DOWN','no_retry':True}))\n"
        "sys.stdout.write('x'*(70*1024)+'\\n')\n"
        "print(json.dumps({'type':'error','message':'last error'}))\n"
        "sys.stderr.write('trace\\n')\n"
        "sys.exit(2)\n"
    )
    result = run_process_child({"argv": py(code)})
    assert [m["type"] for m in result["messages"]] == ["info", "error", "critical", "error"]
    assert result["critical"] == "VENDOR_DOWN"
    assert result["error"] == "last error"
    assert result["no_retry"] is True
    assert result["process_error"] == "exit status 2"
    assert result["stderr"] == "trace\n"


def test_exactly_the_environment_given():
    code = "import json,os; print(json.dumps({'type':'info','message':json.dumps(dict(os.environ))}))"
    result = run_process_child({"argv": py(code), "env": {"COZY_URL": "http://a/"}})
    env = json.loads(result["messages"][0]["message"])
    env.pop("LC_CTYPE", None)  # Python's own locale coercion
    assert env == {"COZY_URL": "http://a/"}


def test_time_limit_term_then_kill():
    # It ignores TERM: KILL comes after the grace delay; its child dies too.
    code = (
        "import signal,subprocess,sys,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"child = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        'print(\'{"type":"info","message":"%d"}\' % child.pid, flush=True)\n'
        "time.sleep(60)\n"
    )
    result = run_process_child({"argv": py(code), "time_limit": 1, "kill_grace": 0.5})
    assert result["timed_out"] is True
    assert result["signal"] == signal.SIGKILL
    assert result["seconds"] < 10
    child = int(result["messages"][0]["message"])
    time.sleep(0.2)
    assert not _alive(child), "the konnector's child survived"


def test_time_limit_term_is_enough():
    result = run_process_child(
        {"argv": py("import time; time.sleep(60)"), "time_limit": 0.5, "kill_grace": 10}
    )
    assert result["timed_out"] is True
    assert result["signal"] == signal.SIGTERM
    assert result["seconds"] < 5


def test_cancellation_stops_it_and_waits():
    code = (
        "import signal,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        'print(\'{"type":"info","message":"%d"}\' % __import__(\'os\').getpid(), flush=True)\n'
        "time.sleep(60)\n"
    )
    result = run_process_child(
        {"argv": py(code), "cancel_after": 1.0, "kill_grace": 0.5, "time_limit": 30}
    )
    assert result["cancelled"] is True
    # Cancelled only once the process had really ended (after TERM, KILL).
    assert 1.4 < result["seconds"] < 10
    assert not _alive(int(result["messages"][0]["message"]))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")
